//! Order writes that survive a failover. Redis replicates asynchronously: a master killed right
//! after a script ran may have answered it without its replica having it, and the promoted
//! replica then lacks a paid order the customer was told about. So after a script that places,
//! decides or hands back an order (`DURABLE`), the service asks the script's master to WAIT for
//! `FLASHSALE_REDIS_WAIT_REPLICAS` replicas to have it, for at most
//! `FLASHSALE_REDIS_WAIT_TIMEOUT`, before it answers.
//!
//! WAIT waits for nothing when there is no replica to wait for, and a master left without one
//! (after a failover, before the old master came back as its replica) would make every such
//! call wait the whole timeout. So the number asked is capped by the replicas online of that
//! slot's master, as the deployment last told: CLUSTER SHARDS on a cluster, INFO replication on
//! one server, read again every few seconds and at once after a WAIT fell short.
//!
//! A WAIT that fell short still answers the request as done (the master has the write; only its
//! survival of a failover in the next moments is not assured): counted in
//! `flashsale_redis_unreplicated_total`. A WAIT not answered at all (the master died or was cut
//! off right after the script) leaves the write's fate unknown: the call fails as a lost reply
//! does (`outcome_unknown`), and the write-back, whose follow-up calls these are too, does it
//! again rather than acknowledge an event whose Redis side a failover may have lost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Value;

use super::Redis;
use super::conn::{Conn, slot_number};
use crate::error::{AppError, AppResult};

/// The scripts whose effect must survive a failover before the request is answered: orders
/// placed (their id, their lines), decided (paid, cancelled, expired), units given back or
/// sold, orders handed back, fenced,
/// restored, set aside; admin stock changes.
const DURABLE: [&str; 11] = [
    "release",
    "next_order_id",
    "create_order",
    "convert_hold",
    "decide_order",
    "commit_sold",
    "fence_order",
    "restore_order",
    "set_aside",
    "replay_set_aside",
    "adjust_stock",
];

/// How long what the deployment said about its replicas is used before it is read again.
const REFRESH_EVERY: Duration = Duration::from_secs(3);

/// (first slot, last slot, replicas online of its master).
type SlotReplicas = Vec<(u16, u16, u32)>;

/// The replicas online of each slot range's master, as last read.
#[derive(Default)]
pub(super) struct Replicas {
    /// (first slot, last slot, replicas online), and when it was read.
    table: Mutex<Option<(Instant, SlotReplicas)>>,
    /// A read is under way (one at a time).
    reading: AtomicBool,
}

impl Replicas {
    /// The replicas online of `slot`'s master; `None` when never read (or not covered).
    fn online(&self, slot: u16) -> Option<u32> {
        let g = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (_, table) = g.as_ref()?;
        table
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, n)| *n)
    }

    /// Whether any master had a replica online at the last read (none read yet: no).
    fn any_online(&self) -> bool {
        let g = self.table.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .is_some_and(|(_, table)| table.iter().any(|(_, _, n)| *n > 0))
    }

    fn is_stale(&self) -> bool {
        let g = self.table.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= REFRESH_EVERY)
    }

    fn forget(&self) {
        *self.table.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Redis {
    /// After `script` ran on the slot of `key`: waits for its replication when the script is
    /// one of `DURABLE` (see the module's description). A WAIT that was not answered (its
    /// master died or was cut off meanwhile) leaves the script's fate unknown: it ran, and may
    /// be lost with its master; that is the error (`outcome_unknown`, or for an order id,
    /// which nobody needs back, `unavailable`). A WAIT that fell short is not an error.
    pub(super) async fn after_durable(&self, script: &'static str, key: &str) -> AppResult<()> {
        if self.wait_replicas == 0 || !DURABLE.contains(&script) {
            return Ok(());
        }
        let slot = slot_number(key);
        if self.replicas.is_stale() {
            self.read_replicas_soon();
        }
        // Never read yet (the first calls after start): no wait, rather than one held up for
        // the whole timeout by a master without replicas; the read is under way.
        let want = self
            .replicas
            .online(slot)
            .unwrap_or(0)
            .min(self.wait_replicas);
        if want == 0 {
            return Ok(());
        }
        let r = self
            .orders_conn
            .wait_replicas(key, want, self.wait_timeout)
            .await;
        if matches!(r, Ok(n) if n >= i64::from(want)) {
            return Ok(());
        }
        metrics::counter!("flashsale_redis_unreplicated_total", "script" => script).increment(1);
        self.replicas.forget();
        self.read_replicas_soon();
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let why = format!(
                    "redis: the {script} script ran, but its master did not answer whether a \
                     replica has it ({e}); a failover may lose it"
                );
                Err(if script == "next_order_id" {
                    AppError::Unavailable(why)
                } else {
                    AppError::OutcomeUnknown(why)
                })
            }
        }
    }

    /// The connection `script` is sent on: the order writes' own when they may wait for
    /// replicas (their WAIT must follow them on one connection: some master had a replica at
    /// the last read), else the shared one. One server without replicas never uses it, so it
    /// never finds it broken after a restart the shared one has already come back from.
    pub(super) fn conn_for(&self, script: &'static str) -> Conn {
        if self.wait_replicas > 0 && DURABLE.contains(&script) && self.replicas.any_online() {
            self.orders_conn.clone()
        } else {
            self.conn()
        }
    }

    /// [`Redis::after_durable`] for calls on several slots (a pipeline of calls): one WAIT per
    /// slot, all at once.
    pub(super) async fn after_durable_many<'a>(
        &self,
        script: &'static str,
        keys: impl Iterator<Item = &'a String>,
    ) -> AppResult<()> {
        if self.wait_replicas == 0 || !DURABLE.contains(&script) {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::new();
        let waits = keys
            .filter(|k| seen.insert(slot_number(k)))
            .map(|k| self.after_durable(script, k));
        futures::future::try_join_all(waits).await.map(|_| ())
    }

    /// Reads the replicas online per slot range in the background (one read at a time).
    fn read_replicas_soon(&self) {
        if self.replicas.reading.swap(true, Ordering::AcqRel) {
            return;
        }
        let redis = self.clone();
        tokio::spawn(async move {
            let table = redis.read_replicas().await;
            if let Ok(table) = table {
                *redis
                    .replicas
                    .table
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), table));
            }
            redis.replicas.reading.store(false, Ordering::Release);
        });
    }

    async fn read_replicas(&self) -> Result<SlotReplicas, redis::RedisError> {
        let mut conn = self.conn();
        match &conn {
            Conn::Single(_) => {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await?;
                Ok(vec![(0, 16383, replicas_in_info(&info))])
            }
            Conn::Cluster(_) => {
                let shards: Value = redis::cmd("CLUSTER")
                    .arg("SHARDS")
                    .query_async(&mut conn)
                    .await?;
                Ok(replicas_in_shards(&shards))
            }
        }
    }
}

/// `connected_slaves` of INFO replication whose state is online.
fn replicas_in_info(info: &str) -> u32 {
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count() as u32
}

/// A RESP2 or RESP3 key/value list as pairs.
fn pairs(v: &Value) -> Vec<(String, &Value)> {
    let text = |k: &Value| match k {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    match v {
        Value::Array(items) => items
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (text(&c[0]), &c[1]))
            .collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), v)).collect(),
        _ => Vec::new(),
    }
}

/// CLUSTER SHARDS: each shard's slot ranges with its replicas whose health is online.
fn replicas_in_shards(shards: &Value) -> SlotReplicas {
    let Value::Array(shards) = shards else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for shard in shards {
        let fields = pairs(shard);
        let mut ranges = Vec::new();
        let mut online = 0;
        for (k, v) in &fields {
            match (k.as_str(), v) {
                ("slots", Value::Array(bounds)) => {
                    let nums: Vec<u16> = bounds
                        .iter()
                        .filter_map(|b| match b {
                            Value::Int(n) => u16::try_from(*n).ok(),
                            _ => None,
                        })
                        .collect();
                    ranges.extend(
                        nums.chunks(2)
                            .filter(|c| c.len() == 2)
                            .map(|c| (c[0], c[1])),
                    );
                }
                ("nodes", Value::Array(nodes)) => {
                    for node in nodes {
                        let f = pairs(node);
                        let is = |name: &str, want: &str| {
                            f.iter().any(|(k, v)| {
                                k == name
                                    && matches!(v, Value::BulkString(b) if b == want.as_bytes())
                            })
                        };
                        if is("role", "replica") && is("health", "online") {
                            online += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        out.extend(ranges.into_iter().map(|(a, b)| (a, b, online)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn shards_count_the_replicas_online() {
        let node = |role: &str, health: &str| {
            Value::Array(vec![
                bulk("port"),
                Value::Int(7001),
                bulk("role"),
                bulk(role),
                bulk("health"),
                bulk(health),
            ])
        };
        let shard = |slots: Vec<i64>, nodes: Vec<Value>| {
            Value::Array(vec![
                bulk("slots"),
                Value::Array(slots.into_iter().map(Value::Int).collect()),
                bulk("nodes"),
                Value::Array(nodes),
            ])
        };
        let shards = Value::Array(vec![
            shard(
                vec![0, 5460],
                vec![node("master", "online"), node("replica", "online")],
            ),
            shard(
                vec![5461, 6000, 7000, 10922],
                vec![node("master", "online"), node("replica", "fail")],
            ),
        ]);
        assert_eq!(
            replicas_in_shards(&shards),
            vec![(0, 5460, 1), (5461, 6000, 0), (7000, 10922, 0)]
        );
    }

    #[test]
    fn info_counts_online_replicas() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=127.0.0.1,port=7004,state=online,offset=1,lag=0\r\n\
                    slave1:ip=127.0.0.1,port=7005,state=wait_bgsave,offset=0,lag=0\r\n";
        assert_eq!(replicas_in_info(info), 1);
        assert_eq!(replicas_in_info("role:master\r\nconnected_slaves:0\r\n"), 0);
    }
}
