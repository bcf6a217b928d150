//! Stores settings.

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// Where the data lives: MySQL (the source of truth) and Redis (the sale's counters).
#[derive(Debug, Clone, Args)]
pub struct StoresConfig {
    /// MySQL/MariaDB URL; the database is created at start-up when missing, then migrated. Its
    /// value is never shown (it may carry a password); the logs show it without the password.
    #[arg(
        long,
        env = "FLASHSALE_MYSQL_URL",
        hide_env_values = true,
        default_value = "mysql://root@127.0.0.1:3306/flashsale",
        global = true
    )]
    pub mysql_url: String,

    /// Size of the MySQL connection pool.
    #[arg(
        long,
        env = "FLASHSALE_MYSQL_POOL",
        default_value_t = 16,
        global = true
    )]
    pub mysql_pool: u32,

    /// How long a request waits for a MySQL connection before answering 503.
    #[arg(long, env = "FLASHSALE_MYSQL_TIMEOUT", default_value = "3s", value_parser = parse_duration, global = true)]
    pub mysql_timeout: Duration,

    /// Redis URL of one server (`redis://127.0.0.1:6379` when neither it nor
    /// `FLASHSALE_REDIS_CLUSTER_NODES` is set; both set is an error). Its value is never shown
    /// (it may carry a password).
    #[arg(
        long,
        env = "FLASHSALE_REDIS_URL",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        global = true
    )]
    pub redis_url: String,

    /// A Redis Cluster instead of one server: comma-separated seed nodes
    /// (`redis://host:port,...`, a few of the cluster's masters; the rest are learned from
    /// them). Every key of a script or a pipeline shares one hash slot, so the service runs on
    /// the cluster as on one server. Values never shown (they may carry a password).
    #[arg(
        long,
        env = "FLASHSALE_REDIS_CLUSTER_NODES",
        hide_env_values = true,
        value_delimiter = ',',
        global = true
    )]
    pub redis_cluster_nodes: Vec<String>,

    /// Prefix of every Redis key, so several deployments (or tests) share one Redis.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_PREFIX",
        default_value = "fs",
        global = true
    )]
    pub redis_prefix: String,

    /// Deadline of one Redis command; past it the request answers 503 `unavailable`.
    #[arg(long, env = "FLASHSALE_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration, global = true)]
    pub redis_timeout: Duration,

    /// Most reservations of one sku that go in one script call: requests arriving while a call
    /// for their sku is in flight wait and go together in the next (1: one call each). One that
    /// waited `FLASHSALE_REDIS_TIMEOUT` for the calls ahead of it answers 503 without being sent.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_RESERVE_BATCH",
        default_value_t = 64,
        global = true
    )]
    pub redis_reserve_batch: usize,
}

/// The Redis of a deployment that names none.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

impl StoresConfig {
    /// The one server's URL: `FLASHSALE_REDIS_URL`, or the default when it is not set.
    pub fn redis_url_or_default(&self) -> &str {
        if self.redis_url.is_empty() {
            DEFAULT_REDIS_URL
        } else {
            &self.redis_url
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.redis_url.is_empty() && !self.redis_cluster_nodes.is_empty() {
            return Err(
                "FLASHSALE_REDIS_URL and FLASHSALE_REDIS_CLUSTER_NODES are both set: name one \
                 server or the cluster's seed nodes, not both"
                    .into(),
            );
        }
        for node in &self.redis_cluster_nodes {
            if redis::parse_redis_url(node).is_none() || !node.starts_with("redis") {
                return Err(format!(
                    "FLASHSALE_REDIS_CLUSTER_NODES: {:?} is not a redis://host:port URL",
                    crate::config::url::redact_url(node)
                ));
            }
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}', ' ']) {
            return Err("the Redis prefix must be non-empty, without braces or spaces".into());
        }
        if !(1..=1000).contains(&self.redis_reserve_batch) {
            return Err("FLASHSALE_REDIS_RESERVE_BATCH must be 1..=1000".into());
        }
        Ok(())
    }
}
