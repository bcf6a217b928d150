//! Redis access, the one door: nothing outside this module sends a Redis command. One shared
//! multiplexed connection for every request (concurrent requests are pipelined onto it), a
//! small pool for blocking stream reads, the Lua scripts (scripts.rs: the registry and how a
//! script is called), and one file per script family with the typed outcomes of its calls:
//! stock.rs, reservations.rs (with lanes.rs, which gathers concurrent reservations of a sku into
//! one call), due.rs, orders.rs, order_ids.rs, rate_limit.rs, idempotency.rs,
//! outbox.rs, repair.rs, accounts.rs (the notes token checks read); plus the plain commands of cart.rs, events.rs, streams.rs (the
//! consumer-group reader of the outbox writer and the webhook sender), live.rs (pub/sub) and
//! eviction.rs. The outcomes are re-exported here.

pub mod accounts;
pub mod cart;
pub mod due;
pub mod events;
pub mod eviction;
pub mod idempotency;
pub mod keys;
mod lanes;
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
    conn: ConnectionManager,
    /// Connections that one task holds alone: blocking stream reads (the outbox writer, the
    /// webhook sender), which must not stall the shared multiplexed connection.
    blocking: deadpool_redis::Pool,
    /// For connections of their own: the live stock subscription (shared: a client's clone
    /// copies its connection settings, and the state is cloned for every request).
    client: Arc<redis::Client>,
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
}

impl Redis {
    /// Connects lazily: the service starts while Redis is down and answers 503 until it is up.
    pub fn connect(cfg: &StoresConfig) -> anyhow::Result<Self> {
        let client = redis::Client::open(cfg.redis_url.as_str())?;
        let mgr = ConnectionManagerConfig::new()
            .set_response_timeout(Some(cfg.redis_timeout))
            .set_connection_timeout(Some(cfg.redis_timeout))
            // One connection attempt per call that finds the connection broken: retries (with
            // their backoff) made every request wait ~540 ms for its 503 while Redis was down,
            // and a failed order twice that (its line, then its hand-back). A client retries;
            // the service answers at once.
            .set_number_of_retries(0)
            .set_max_delay(std::time::Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), mgr)?;
        let blocking = deadpool_redis::Config::from_url(cfg.redis_url.clone())
            .builder()
            .map_err(|e| anyhow::anyhow!("redis pool: {e}"))?
            .max_size(4)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| anyhow::anyhow!("redis pool: {e}"))?;
        Ok(Redis {
            conn,
            blocking,
            client: Arc::new(client),
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
        })
    }

    /// A handle on the shared connection (cheap: clones share one socket). For the store's own
    /// methods, and for tests that set up or inspect keys directly.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The dedicated pool's connections as they stand (the `flashsale_redis_pool_*` gauges).
    pub fn pool_status(&self) -> PoolStatus {
        let s = self.blocking.status();
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
