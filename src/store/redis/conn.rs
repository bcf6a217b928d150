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
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
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

/// Where a refusal said to send the command instead.
enum Redirect {
    /// MOVED: the slot is at that node now (the client's slot map is being read again).
    Moved(SingleNodeRoutingInfo),
    /// ASK: the slot is being moved there; the command goes after ASKING.
    Ask(SingleNodeRoutingInfo),
}

impl Redirect {
    fn of(e: &RedisError) -> Option<Redirect> {
        let (addr, _slot) = e.redirect_node()?;
        let (host, port) = addr.rsplit_once(':')?;
        let to = SingleNodeRoutingInfo::ByAddress {
            host: host.to_string(),
            port: port.parse().ok()?,
        };
        Some(if e.code() == Some("ASK") {
            Redirect::Ask(to)
        } else {
            Redirect::Moved(to)
        })
    }
}

/// The first of a pipeline's replies that the cluster refused without running, if any.
fn refused_in(values: &[Value]) -> Option<RedisError> {
    values.iter().find_map(|v| match v {
        Value::ServerError(e)
            if matches!(
                e.code(),
                "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN"
            ) =>
        {
            Some(RedisError::from(e.clone()))
        }
        _ => None,
    })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                let mut attempt = 1;
                // Where the cluster said the slot is (MOVED) or is moving to (ASK).
                let mut redirected: Option<Redirect> = None;
                loop {
                    let r = match &redirected {
                        None => c.req_packed_command(cmd).await,
                        Some(Redirect::Moved(to)) => {
                            c.route_command(cmd.clone(), RoutingInfo::SingleNode(to.clone()))
                                .await
                        }
                        Some(Redirect::Ask(to)) => {
                            // ASKING then the command, on the target's connection.
                            let mut p = redis::pipe();
                            p.cmd("ASKING").add_command(cmd.clone());
                            c.route_pipeline(p, 0, 2, to.clone())
                                .await
                                .map(|mut v| v.pop().unwrap_or(Value::Nil))
                        }
                    };
                    match r {
                        Err(e) if attempt < CLUSTER_ATTEMPTS && not_run(&e) => {
                            metrics::counter!("flashsale_redis_cluster_resent_total").increment(1);
                            redirected = Redirect::of(&e);
                            if redirected.is_none() {
                                tokio::time::sleep(CLUSTER_WAIT * attempt).await;
                            }
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
                // A slot that moved is followed; one being moved (ASK) is waited for.
                let mut moved_to: Option<SingleNodeRoutingInfo> = None;
                loop {
                    let r = match &moved_to {
                        None => c.req_packed_commands(pipeline, offset, count).await,
                        Some(to) => {
                            c.route_pipeline(pipeline.clone(), offset, count, to.clone())
                                .await
                        }
                    };
                    let refusal = match r {
                        Err(e) if attempt < CLUSTER_ATTEMPTS && not_run(&e) => e,
                        Ok(v) if attempt < CLUSTER_ATTEMPTS => match refused_in(&v) {
                            Some(e) => e,
                            None => return Ok(v),
                        },
                        r => return r,
                    };
                    metrics::counter!("flashsale_redis_cluster_resent_total").increment(1);
                    moved_to = match Redirect::of(&refusal) {
                        Some(Redirect::Moved(to)) => Some(to),
                        _ => None,
                    };
                    if moved_to.is_none() {
                        tokio::time::sleep(CLUSTER_WAIT * attempt).await;
                    }
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

/// The number of a key's hash slot (CRC16/XMODEM of its `{tag}`, or of the whole key, modulo
/// 16384), to find it in the ranges CLUSTER SHARDS names.
pub fn slot_number(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b.iter().position(|c| *c == b'{').and_then(|open| {
        let close = b[open + 1..].iter().position(|c| *c == b'}')?;
        (close > 0).then(|| &b[open + 1..open + 1 + close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(b)) % 16384
}

impl Conn {
    /// WAIT for `replicas` replicas of the master of `key`'s slot to have every write sent
    /// before it on this connection, for at most `timeout`; how many had them.
    pub async fn wait_replicas(
        &self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<i64, RedisError> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis().max(1) as u64);
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(lazy) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                // The same node's connection as the script before it: WAIT counts the writes of
                // the connection it is sent on.
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key.as_bytes(), SlotAddr::Master),
                ));
                let v = lazy.get().await?.route_command(cmd, route).await?;
                match v {
                    Value::Int(n) => Ok(n),
                    other => Err(RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "WAIT answered",
                        format!("{other:?}"),
                    ))),
                }
            }
        }
    }
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
        for key in [
            "foo",
            "fs:{sku:7}:stock",
            "a{}b",
            "{}",
            "x{y",
            "{a}{b}",
            "fs:{ord:15}:outbox",
        ] {
            assert_eq!(Slot::new(slot_number(key)), Some(slot_of(key)), "{key}");
        }
        assert_eq!(
            slot_of("{user1000}.following"),
            slot_of("{user1000}.followers")
        );
        assert_eq!(slot_of("fs:{sku:7}:stock"), slot_of("fs:{sku:7}:holds"));
    }
}
