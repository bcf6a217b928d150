//! Outbox write-back settings.

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// The outbox writer (src/worker/writer.rs): Redis's decisions written back to MySQL.
#[derive(Debug, Clone, Args)]
pub struct OutboxConfig {
    /// Run the outbox worker (write-back to MySQL) in this serve process.
    #[arg(long, env = "FLASHSALE_WORKER", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub worker: bool,

    /// Outbox events written to MySQL per transaction.
    #[arg(
        long,
        env = "FLASHSALE_WORKER_BATCH",
        default_value_t = 256,
        global = true
    )]
    pub worker_batch: usize,

    /// Outbox events pending this long at another consumer (a crashed instance) are claimed.
    #[arg(long, env = "FLASHSALE_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration, global = true)]
    pub claim_idle: Duration,

    /// How long an instance's hold on reading an outbox partition lasts unrenewed (renewed
    /// every second, or every third of it if shorter): the partitions of an instance that died without stopping are read by
    /// the others after about this (a stopping instance lets go of them at once).
    #[arg(long, env = "FLASHSALE_READER_LEASE", default_value = "10s", value_parser = parse_duration, global = true)]
    pub reader_lease: Duration,

    /// How long Redis keeps a finished order's record after it reached MySQL (reads then come
    /// from MySQL).
    #[arg(long, env = "FLASHSALE_ORDER_CACHE_TTL", default_value = "1h", value_parser = parse_duration, global = true)]
    pub order_cache_ttl: Duration,

    /// Entries the public order-events stream keeps (about; whole stream nodes are trimmed):
    /// its memory bound. A consumer further behind than this misses the oldest events.
    #[arg(
        long,
        env = "FLASHSALE_EVENTS_MAX_LEN",
        default_value_t = 100_000,
        global = true
    )]
    pub events_max_len: u64,
}

impl OutboxConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.events_max_len == 0 {
            return Err("FLASHSALE_EVENTS_MAX_LEN must be at least 1".into());
        }
        if self.reader_lease < Duration::from_millis(300) {
            return Err("FLASHSALE_READER_LEASE must be at least 300ms".into());
        }
        if self.worker_batch == 0 {
            return Err("the worker batch must be at least 1".into());
        }
        Ok(())
    }
}
