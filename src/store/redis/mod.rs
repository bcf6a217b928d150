//! Redis access, the one door: nothing outside this module sends a Redis command. One shared
//! multiplexed connection for every request (concurrent requests are pipelined onto it), a
//! small pool for blocking stream reads, the Lua scripts (scripts.rs: the registry and how a
//! script is called), and one file per script family with the typed outcomes of its calls:
//! stock.rs, reservations.rs (with lanes.rs, which gathers concurrent reservations of a sku into
//! one call), due.rs, orders.rs, order_ids.rs, rate_limit.rs, idempotency.rs,
//! outbox.rs, repair.rs, accounts.rs (the notes token checks read), leases.rs (which instance
//! reads which outbox partition); plus the plain commands of cart.rs, events.rs, streams.rs (the
//! consumer-group reader of the outbox writer and the webhook sender), live.rs (pub/sub) and
//! eviction.rs. The outcomes are re-exported here.

pub mod accounts;
pub mod cart;
pub mod conn;
pub mod due;
mod durability;
pub mod events;
pub mod eviction;
pub mod idempotency;
pub mod keys;
mod lanes;
pub mod leases;
pub mod live;
pub mod order_ids;
pub mod orders;
pub mod outbox;
pub mod rate_limit;
pub mod repair;
pub mod reservations;
pub mod scripts;
pub mod stock;
pub mod streams;

use std::collections::HashMap;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use conn::{Conn, SlotPipe};

use eviction::EvictionGuard;
pub use eviction::REQUIRED_POLICY;
pub use keys::{Keys, Rid, SkuKeys};
pub use order_ids::NextId;
pub use orders::{Created, Decision, OrderAction, OrderRecord, PlacementNote};
pub use rate_limit::{Bucket, BucketMode};
use repair::RollbackGuard;
pub use reservations::{
    Answer, Committed, ConvertOutcome, Deadline, ReserveMode, ReserveOutcome, ReserveRequest,
    Returned, SoldOutFor, SweepBatch, parse_alloc,
};
use scripts::Scripts;
pub use stock::{AdjustOutcome, AdjustStep, MetaWrite, PendingAdjustment, SkuLoad, StockSnapshot};

use crate::config::StoresConfig;
use crate::domain::Sku;
/// The catalog entry the stock scripts read (a domain type; re-exported for the callers that
/// load skus through this module).
pub use crate::domain::{SaleMeta, SkuMeta};
use crate::error::AppResult;

/// The one door to Redis: every command the service sends goes through a method of this
/// handle (cheap to clone: clones share the connections, the scripts and the guards).
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    /// The order writes' own connection (durability.rs): their WAIT for replicas holds up
    /// nothing but them.
    orders_conn: Conn,
    /// Connections that one task holds alone: blocking stream reads (the outbox writer, the
    /// webhook sender), which must not stall the shared multiplexed connection.
    blocking: Blocking,
    /// Which deployment, and what connections of their own are made from: the live stock
    /// subscription (shared: the state is cloned for every request).
    deployment: Arc<Deployment>,
    /// The response timeout of the shared connection.
    timeout: Duration,
    pub keys: Keys,
    scripts: Arc<Scripts>,
    eviction: Arc<EvictionGuard>,
    rollback: Arc<RollbackGuard>,
    /// A handle for `flashsale rebuild-cache`: its scripts run while sales are refused.
    repair: bool,
    /// Deadlines noted since the last flush, earliest per sku (see [`Redis::note_due`]).
    due_notes: Arc<Mutex<HashMap<Sku, i64>>>,
    /// Reservations waiting for their sku's call in flight (lanes.rs).
    lanes: Arc<lanes::Lanes>,
    /// Replicas an order write waits for, and for how long (durability.rs).
    wait_replicas: u32,
    wait_timeout: Duration,
    replicas: Arc<durability::Replicas>,
}

impl Redis {
    /// Connects lazily: the service starts while Redis is down and answers 503 until it is up.
    /// One server (`FLASHSALE_REDIS_URL`) or a cluster (`FLASHSALE_REDIS_CLUSTER_NODES`).
    pub fn connect(cfg: &StoresConfig) -> anyhow::Result<Self> {
        let (conn, orders_conn, blocking, deployment) = if cfg.redis_cluster_nodes.is_empty() {
            Self::single(cfg)?
        } else {
            Self::cluster(cfg)?
        };
        Ok(Redis {
            conn,
            orders_conn,
            blocking,
            deployment: Arc::new(deployment),
            timeout: cfg.redis_timeout,
            keys: Keys::new(&cfg.redis_prefix),
            scripts: Arc::new(Scripts::new()),
            eviction: Arc::new(EvictionGuard {
                state: AtomicU8::new(EvictionGuard::UNKNOWN),
                policy: std::sync::Mutex::new(String::new()),
            }),
            rollback: Arc::default(),
            repair: false,
            due_notes: Arc::default(),
            lanes: Arc::new(lanes::Lanes::new(cfg.redis_reserve_batch)),
            wait_replicas: cfg.redis_wait_replicas,
            wait_timeout: cfg.redis_wait_timeout,
            replicas: Arc::default(),
        })
    }

    fn single(cfg: &StoresConfig) -> anyhow::Result<(Conn, Conn, Blocking, Deployment)> {
        let url = cfg.redis_url_or_default();
        let client = redis::Client::open(url)?;
        let mgr = ConnectionManagerConfig::new()
            .set_response_timeout(Some(cfg.redis_timeout))
            .set_connection_timeout(Some(cfg.redis_timeout))
            // One connection attempt per call that finds the connection broken: retries (with
            // their backoff) made every request wait ~540 ms for its 503 while Redis was down,
            // and a failed order twice that (its line, then its hand-back). A client retries;
            // the service answers at once.
            .set_number_of_retries(0)
            .set_max_delay(std::time::Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), mgr.clone())?;
        let orders = ConnectionManager::new_lazy_with_config(client.clone(), mgr)?;
        let blocking = deadpool_redis::Config::from_url(url)
            .builder()
            .map_err(|e| anyhow::anyhow!("redis pool: {e}"))?
            .max_size(BLOCKING_POOL)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| anyhow::anyhow!("redis pool: {e}"))?;
        Ok((
            Conn::Single(conn),
            Conn::Single(orders),
            Blocking::Single(blocking),
            Deployment::Single(client),
        ))
    }

    fn cluster(cfg: &StoresConfig) -> anyhow::Result<(Conn, Conn, Blocking, Deployment)> {
        let nodes = cfg.redis_cluster_nodes.clone();
        // No retries of the client's own (conn.rs says why); one attempt per node per call,
        // each within the Redis timeout.
        let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
            .retries(0)
            .connection_timeout(cfg.redis_timeout)
            .response_timeout(cfg.redis_timeout)
            .build()?;
        // The blocking readers' connections: no response timeout (a read blocks for its BLOCK
        // time); a reader that finds its connection broken takes another.
        let blocking = deadpool_redis::cluster::Config::from_urls(nodes.clone())
            .builder()
            .map_err(|e| anyhow::anyhow!("redis cluster pool: {e}"))?
            .max_size(BLOCKING_POOL)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| anyhow::anyhow!("redis cluster pool: {e}"))?;
        Ok((
            Conn::Cluster(conn::LazyCluster::new(client.clone())),
            Conn::Cluster(conn::LazyCluster::new(client)),
            Blocking::Cluster(blocking),
            Deployment::Cluster(nodes),
        ))
    }

    /// A handle on the shared connection (cheap: clones share the sockets). For the store's
    /// own methods, and for tests that set up or inspect keys directly.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Runs `cmd`, which blocks up to `block` (XREADGROUP ... BLOCK), on a pooled connection
    /// of its own, never on the shared one.
    pub(super) async fn blocking_query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        block: Duration,
    ) -> AppResult<T> {
        let unavailable =
            |e: String| crate::error::AppError::Unavailable(format!("redis pool: {e}"));
        match &self.blocking {
            Blocking::Single(pool) => {
                let pooled = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
                // A handle on the same socket whose response timeout outlasts the BLOCK (the
                // pool's connections give up after half a second by default).
                let mut conn = (*pooled).clone();
                conn.set_response_timeout(block + self.timeout);
                Ok(cmd.query_async(&mut conn).await?)
            }
            Blocking::Cluster(pool) => {
                let mut pooled = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
                let r =
                    tokio::time::timeout(block + self.timeout, cmd.query_async(&mut *pooled)).await;
                match r {
                    Ok(r) => Ok(r?),
                    Err(_) => {
                        // A read that outlived its BLOCK: its connection is not trusted again.
                        let _ = deadpool_redis::cluster::Connection::take(pooled);
                        Err(crate::error::AppError::Unavailable(
                            "redis: a blocking read timed out".into(),
                        ))
                    }
                }
            }
        }
    }

    /// Whether this is a Redis Cluster deployment.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.deployment, Deployment::Cluster(_))
    }

    /// The dedicated pool's connections as they stand (the `flashsale_redis_pool_*` gauges).
    pub fn pool_status(&self) -> PoolStatus {
        let s = match &self.blocking {
            Blocking::Single(p) => p.status(),
            Blocking::Cluster(p) => p.status(),
        };
        PoolStatus {
            in_use: s.size.saturating_sub(s.available),
            idle: s.available,
            max: s.max_size,
        }
    }

    /// Redis's clock (unix ms): the one every deadline is measured by.
    pub async fn now_ms(&self) -> AppResult<i64> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        Ok(secs * 1000 + micros / 1000)
    }
}

/// Most connections of the dedicated pool (blocking stream reads): one per outbox partition
/// (an instance reads each partition it holds on a connection of its own, and may hold them
/// all), one for the webhook sender, and one for a partition's new reader whose predecessor's
/// read has not ended yet. Made only when used: an instance holding 8 partitions opens about 9.
const BLOCKING_POOL: usize = keys::ORDER_PARTITIONS as usize + 2;

/// The dedicated pools of either deployment.
#[derive(Clone)]
enum Blocking {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// The deployment, with what connections of their own are made from.
pub(crate) enum Deployment {
    Single(redis::Client),
    /// The seed nodes.
    Cluster(Vec<String>),
}

/// The dedicated pool of connections (blocking stream reads).
#[derive(Debug, Clone, Copy)]
pub struct PoolStatus {
    pub in_use: usize,
    pub idle: usize,
    pub max: usize,
}

/// Whether an internal error is a Redis error (a server error such as OOM, READONLY or
/// LOADING, which every write meets alike).
pub fn is_redis_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<redis::RedisError>().is_some()
}
