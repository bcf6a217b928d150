//! The two deployments behind one connection type: one Redis server (a `ConnectionManager`,
//! reconnecting) or a Redis Cluster (the redis crate's cluster client, which keeps the slot map,
//! follows MOVED and reconnects to a promoted replica). The rest of the store sends commands
//! through [`Conn`] alike; what differs is that a cluster runs a multi-key pipeline only when
//! its keys share a slot, so every pipeline of the store goes through [`SlotPipe`], which
//! groups its commands by slot and runs the groups concurrently.
//!
//! The cluster client is built without retries of its own: after a dropped connection it would
//! send the same command again, and a script that ran on a master killed before its reply
//! would then run twice on the promoted replica. A command is sent again here only when the
//! server said it did not run it (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, MASTERDOWN) or no
//! connection to its node existed; a reply lost after sending stays unheard, and the callers'
//! "outcome unknown" rules (scripts.rs) apply as on one server.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use futures::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// A connection to either deployment (cheap to clone: clones share the sockets).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(LazyCluster),
}

/// The cluster connection, made on first use: the service starts while the cluster is down
/// and answers 503 until it is up, as with one server.
#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    cell: Arc<tokio::sync::OnceCell<ClusterConnection>>,
}

impl LazyCluster {
    pub fn new(client: ClusterClient) -> Self {
        LazyCluster {
            client: Arc::new(client),
            cell: Arc::default(),
        }
    }

    /// The connection (made now if it was not yet). A failure to make it is a refused
    /// connection: nothing was sent.
    pub async fn get(&self) -> Result<ClusterConnection, RedisError> {
        self.cell
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
            .map_err(|e| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("no connection to the Redis Cluster: {e}"),
                ))
            })
    }
}

/// How many times a command the cluster refused without running it is sent again, and the
/// wait before each (a failover's new master or a finished slot migration shows up within a
/// few of them; past them the caller answers 503).
const CLUSTER_ATTEMPTS: u32 = 4;
const CLUSTER_WAIT: Duration = Duration::from_millis(50);

/// Whether the cluster refused a command without running it (or it never left this process),
/// so sending it again cannot make it twice.
pub(super) fn not_run(e: &RedisError) -> bool {
    matches!(
        e.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN")
    ) || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || e.is_connection_refusal()
}

/// The first error of a pipeline's replies that the cluster refused without running.
fn refused_in(values: &[Value]) -> bool {
    values.iter().any(|v| match v {
        Value::ServerError(e) => matches!(
            e.code(),
            "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN"
        ),
        _ => false,
    })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                let mut attempt = 1;
                loop {
                    match c.req_packed_command(cmd).await {
                        Err(e) if attempt < CLUSTER_ATTEMPTS && not_run(&e) => {
                            metrics::counter!("flashsale_redis_cluster_resent_total").increment(1);
                            tokio::time::sleep(CLUSTER_WAIT * attempt).await;
                            attempt += 1;
                        }
                        r => return r,
                    }
                }
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                // A pipeline reaches one slot (SlotPipe); a refusal of one of its commands is a
                // refusal of them all (the slot moved, or its master is down), so the whole
                // pipeline is sent again, as a single command is. A MULTI pipeline's replies
                // are checked the same way: EXEC was refused when its slot was.
                let mut attempt = 1;
                loop {
                    match c.req_packed_commands(pipeline, offset, count).await {
                        Err(e) if attempt < CLUSTER_ATTEMPTS && not_run(&e) => {}
                        Ok(v) if attempt < CLUSTER_ATTEMPTS && refused_in(&v) => {}
                        r => return r,
                    }
                    metrics::counter!("flashsale_redis_cluster_resent_total").increment(1);
                    tokio::time::sleep(CLUSTER_WAIT * attempt).await;
                    attempt += 1;
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// The hash slot of a key (its `{tag}` when it has one), as Redis Cluster computes it.
pub fn slot_of(key: &str) -> Slot {
    Slot::for_key(key.as_bytes())
}

/// A pipeline whose commands may reach several slots. Each command names the key that places
/// it (every key of one command shares that key's slot: the key layout, keys.rs, guarantees
/// it). On one Redis server it is one pipeline; on a cluster, one pipeline per slot, run
/// concurrently. Replies come back in the order the commands were added.
#[derive(Default)]
pub struct SlotPipe {
    cmds: Vec<(Slot, Cmd)>,
    in_order: bool,
}

impl SlotPipe {
    pub fn new() -> Self {
        SlotPipe::default()
    }

    /// Adds `cmd`, placed by `key`.
    pub fn add(&mut self, key: &str, cmd: &Cmd) -> &mut Self {
        self.cmds.push((slot_of(key), cmd.clone()));
        self
    }

    /// On a cluster, runs the slots' pipelines one after another, in the order of their first
    /// command, each after the one before answered: for writes whose order matters (a dead
    /// letter before the acknowledgement that lets its entry go).
    pub fn in_order(&mut self) -> &mut Self {
        self.in_order = true;
        self
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// How many slots the commands reach (on a cluster: how many pipelines run).
    pub fn slot_count(&self) -> usize {
        let mut s: Vec<Slot> = Vec::new();
        for (slot, _) in &self.cmds {
            if !s.contains(slot) {
                s.push(*slot);
            }
        }
        s.len()
    }

    /// Runs the commands (see the type's description); every reply, in order.
    pub async fn run(&self, conn: &Conn) -> Result<Vec<Value>, RedisError> {
        if self.cmds.is_empty() {
            return Ok(Vec::new());
        }
        match conn {
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                for (_, cmd) in &self.cmds {
                    pipe.add_command(cmd.clone());
                }
                pipe.query_async(&mut conn.clone()).await
            }
            Conn::Cluster(_) => {
                let mut order: Vec<Slot> = Vec::new();
                let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
                for (i, (slot, _)) in self.cmds.iter().enumerate() {
                    if !groups.contains_key(slot) {
                        order.push(*slot);
                    }
                    groups.entry(*slot).or_default().push(i);
                }
                let runs = order.into_iter().map(|slot| {
                    let idx = groups.remove(&slot).unwrap_or_default();
                    let mut pipe = redis::pipe();
                    for i in &idx {
                        pipe.add_command(self.cmds[*i].1.clone());
                    }
                    let mut c = conn.clone();
                    async move {
                        let values: Vec<Value> = pipe.query_async(&mut c).await?;
                        Ok::<_, RedisError>(idx.into_iter().zip(values).collect::<Vec<_>>())
                    }
                });
                let mut out = vec![Value::Nil; self.cmds.len()];
                let done = if self.in_order {
                    let mut done = Vec::new();
                    for run in runs {
                        done.push(run.await?);
                    }
                    done
                } else {
                    try_join_all(runs).await?
                };
                for group in done {
                    for (i, v) in group {
                        out[i] = v;
                    }
                }
                Ok(out)
            }
        }
    }

    /// Runs the commands; their replies, in order, read as `T` (a tuple or a vector).
    pub async fn query<T: redis::FromRedisValue>(&self, conn: &Conn) -> Result<T, RedisError> {
        let values = self.run(conn).await?;
        if let Some(Value::ServerError(e)) =
            values.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            return Err(e.clone().into());
        }
        Ok(T::from_redis_value(Value::Array(values))?)
    }

    /// Runs the commands, their replies ignored (errors are still errors).
    pub async fn exec(&self, conn: &Conn) -> Result<(), RedisError> {
        let values = self.run(conn).await?;
        for v in values {
            if let Value::ServerError(e) = v {
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Redis Cluster's own examples (CLUSTER KEYSLOT).
        assert_eq!(Some(slot_of("foo")), Slot::new(12182));
        assert_eq!(
            slot_of("{user1000}.following"),
            slot_of("{user1000}.followers")
        );
        assert_eq!(slot_of("fs:{sku:7}:stock"), slot_of("fs:{sku:7}:holds"));
    }
}
