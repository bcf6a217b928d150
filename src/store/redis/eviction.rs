//! The eviction guard: no script that keeps the sale's state runs while Redis may evict keys.

use std::sync::atomic::{AtomicU8, Ordering};

use super::Redis;
use crate::error::{AppError, AppResult};

/// The only `maxmemory-policy` under which Redis never drops a key by itself. Any other policy
/// may evict stock counters, ledgers or order records: oversell and lost orders.
pub const REQUIRED_POLICY: &str = "noeviction";

/// What this instance last saw of Redis's `maxmemory-policy`.
pub(super) struct EvictionGuard {
    /// 0: not seen yet, 1: `noeviction`, 2: another policy.
    pub(super) state: AtomicU8,
    pub(super) policy: std::sync::Mutex<String>,
}

impl EvictionGuard {
    pub(super) const UNKNOWN: u8 = 0;
    const SAFE: u8 = 1;
    const UNSAFE: u8 = 2;

    fn record(&self, policy: &str) {
        let safe = policy == REQUIRED_POLICY;
        if let Ok(mut p) = self.policy.lock() {
            p.clear();
            p.push_str(policy);
        }
        self.state.store(
            if safe { Self::SAFE } else { Self::UNSAFE },
            Ordering::Relaxed,
        );
        metrics::gauge!("flashsale_redis_eviction_safe").set(if safe { 1.0 } else { 0.0 });
    }

    /// The refusal while the last policy seen lets Redis evict keys.
    pub(super) fn refusal(&self) -> Option<AppError> {
        if self.state.load(Ordering::Relaxed) != Self::UNSAFE {
            return None;
        }
        let policy = self.policy.lock().map(|p| p.clone()).unwrap_or_default();
        Some(unsafe_policy(&policy))
    }
}

fn unsafe_policy(policy: &str) -> AppError {
    AppError::Unavailable(format!(
        "redis maxmemory-policy is {policy}: it may evict stock and orders, so nothing is sold \
         until it is {REQUIRED_POLICY}"
    ))
}

impl Redis {
    /// Reads Redis's `maxmemory-policy` (from INFO, which managed services that rename CONFIG
    /// still answer) and remembers it: while it is not `noeviction`, every script that changes
    /// stock or orders answers 503 without running. Err(Unavailable) names an unsafe policy.
    pub async fn check_eviction_policy(&self) -> AppResult<()> {
        let mut conn = self.conn();
        // One server's text, or on a cluster every node's (a map of node to text): one master
        // that may evict is enough to refuse.
        let info: redis::Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let mut texts = Vec::new();
        collect_texts(info, &mut texts);
        let policies: Vec<&str> = texts
            .iter()
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.trim().strip_prefix("maxmemory_policy:"))
            })
            .collect();
        let policy = policies
            .iter()
            .find(|p| **p != REQUIRED_POLICY)
            .or(policies.first())
            .ok_or_else(|| AppError::internal("redis INFO memory has no maxmemory_policy"))?;
        self.eviction.record(policy);
        match self.eviction.refusal() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The 503 to answer while Redis may evict keys (the last check saw another policy).
    pub fn eviction_refusal(&self) -> Option<AppError> {
        self.eviction.refusal()
    }
}

/// Every text in a reply (a node's INFO; on a cluster, the values of its map of nodes).
fn collect_texts(v: redis::Value, out: &mut Vec<String>) {
    match v {
        redis::Value::BulkString(b) => out.push(String::from_utf8_lossy(&b).into_owned()),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => out.push(s),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for i in items {
                collect_texts(i, out);
            }
        }
        redis::Value::Map(pairs) => {
            for (_, v) in pairs {
                collect_texts(v, out);
            }
        }
        _ => {}
    }
}
