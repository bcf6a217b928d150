//! Redis going back in time (restarted from older persistence) and `flashsale rebuild-cache`:
//! the refusal of sales until a rebuild ran, the rebuild's marker, and the rebuild's own writes
//! (lua/restore_order.lua).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redis::AsyncCommands;

use super::Redis;
use super::stock::{PendingAdjustment, StockSnapshot};
use crate::domain::Sku;
use crate::error::{AppError, AppResult};

/// What this instance knows about Redis going back in time (restarted from older persistence):
/// the ids it saw handed out, the order id mark MySQL holds, and whether sales are refused until
/// `flashsale rebuild-cache` ran.
#[derive(Default)]
pub(super) struct RollbackGuard {
    /// No id at or below it may be handed out again (the largest id seen, or MySQL's largest).
    pub(super) floor: AtomicU64,
    /// The order id mark last read from MySQL: no id above it may be handed out.
    pub(super) limit: AtomicU64,
    behind: AtomicBool,
    /// Why sales stop, and the rebuild marker seen then (`None`: not read yet).
    why: std::sync::Mutex<(String, Option<Option<String>>)>,
}

fn behind_refusal(why: &str) -> AppError {
    AppError::Unavailable(format!(
        "redis came back behind MySQL ({why}): nothing is sold until `flashsale rebuild-cache` ran"
    ))
}

impl Redis {
    /// The same Redis for `flashsale rebuild-cache`: its scripts run while this instance refuses
    /// sales because Redis went back. Its reservations go in calls of their own (lanes of its
    /// own): a call of this handle skips the refusal, so it must not carry a customer's
    /// reservation, nor a customer's call (refused) the rebuild's.
    pub fn for_repair(&self) -> Redis {
        Redis {
            repair: true,
            lanes: std::sync::Arc::new(self.lanes.fresh()),
            ..self.clone()
        }
    }

    /// Starts refusing every stock and order script (503) because Redis went back: it lost
    /// decisions MySQL already holds. Sales resume once `flashsale rebuild-cache` wrote its
    /// marker. Returns the refusal.
    pub async fn mark_behind(&self, why: String) -> AppError {
        let marker = self.rebuild_marker().await.ok();
        let (first, refusal) = {
            let mut g = self.rollback.why.lock().unwrap_or_else(|p| p.into_inner());
            let first = !self.rollback.behind.swap(true, Ordering::SeqCst);
            if first {
                *g = (why, marker);
            }
            (first, behind_refusal(&g.0))
        };
        if first {
            metrics::counter!("flashsale_redis_rollbacks_total").increment(1);
            metrics::gauge!("flashsale_redis_behind").set(1.0);
            tracing::error!(
                reason = %refusal,
                "Redis went back in time (restarted from older persistence): it lacks decisions \
                 MySQL holds; refusing every sale until `flashsale rebuild-cache` ran"
            );
            // The other instances' ticks find it here (they may hand out no id to notice).
            let set: Result<(), _> = self.conn().set(self.keys.behind(), 1).await;
            if let Err(e) = set {
                tracing::warn!(error = %e, "could not tell the other instances Redis is behind");
            }
        }
        refusal
    }

    /// The 503 to answer while Redis is behind MySQL and no rebuild ran since; `None` once
    /// `flashsale rebuild-cache` wrote a new marker (checked here: one GET while refusing).
    pub async fn behind_refusal(&self) -> AppResult<Option<AppError>> {
        if !self.rollback.behind.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let now = self.rebuild_marker().await?;
        let mut g = self.rollback.why.lock().unwrap_or_else(|p| p.into_inner());
        if !self.rollback.behind.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match &g.1 {
            None => g.1 = Some(now),
            Some(seen) if *seen != now => {
                self.rollback.behind.store(false, Ordering::SeqCst);
                metrics::gauge!("flashsale_redis_behind").set(0.0);
                tracing::warn!(
                    "`flashsale rebuild-cache` ran after Redis went back: selling again"
                );
                return Ok(None);
            }
            Some(_) => {}
        }
        Ok(Some(behind_refusal(&g.0)))
    }

    /// Whether this instance refuses sales because Redis went back (as last seen).
    pub fn is_behind(&self) -> bool {
        self.rollback.behind.load(Ordering::SeqCst)
    }

    /// Written last by `flashsale rebuild-cache`: instances refusing sales resume when it changes.
    pub async fn rebuild_marker(&self) -> AppResult<Option<String>> {
        Ok(self.conn().get(self.keys.rebuilt()).await?)
    }

    /// Whether an instance found Redis behind MySQL and no rebuild ran since.
    pub async fn behind_flagged(&self) -> AppResult<bool> {
        Ok(self.conn().exists(self.keys.behind()).await?)
    }

    /// Clears the flag, then writes the marker (rebuild-cache's last step).
    pub async fn write_rebuild_marker(&self) -> AppResult<()> {
        let _: () = self.conn().del(self.keys.behind()).await?;
        let token = format!(
            "{}-{:016x}",
            chrono::Utc::now().timestamp_millis(),
            rand::random::<u64>()
        );
        let _: () = self.conn().set(self.keys.rebuilt(), token).await?;
        Ok(())
    }

    /// Whether Redis loaded this sku before (`<p>:skus`, written by every load and never
    /// emptied): a known sku without counters lost them.
    pub async fn was_loaded(&self, sku: Sku) -> AppResult<bool> {
        Ok(self.conn().sismember(self.keys.skus(), sku.get()).await?)
    }

    /// Notes a sku whose counters were lost (for the gauge and the alert; rebuild-cache
    /// clears it); `true` when it was not noted yet.
    pub async fn mark_lost(&self, sku: Sku) -> AppResult<bool> {
        let added: u64 = self.conn().sadd(self.keys.lost(), sku.get()).await?;
        Ok(added == 1)
    }

    /// A sku noted lost was loaded since (nothing of it was out any more).
    pub async fn unmark_lost(&self, sku: Sku) -> AppResult<()> {
        let _: () = self.conn().srem(self.keys.lost(), sku.get()).await?;
        Ok(())
    }

    /// Whether this sku is noted lost.
    pub async fn is_lost(&self, sku: Sku) -> AppResult<bool> {
        Ok(self.conn().sismember(self.keys.lost(), sku.get()).await?)
    }

    /// How many skus are noted lost.
    pub async fn lost_count(&self) -> AppResult<u64> {
        Ok(self.conn().scard(self.keys.lost()).await?)
    }

    /// The skus noted lost and not rebuilt since.
    pub async fn lost_skus(&self) -> AppResult<Vec<u32>> {
        let mut v: Vec<u32> = self.conn().smembers(self.keys.lost()).await?;
        v.sort_unstable();
        Ok(v)
    }

    /// rebuild-cache reloaded every sku: none is lost any more.
    pub async fn clear_lost(&self) -> AppResult<()> {
        let _: () = self.conn().del(self.keys.lost()).await?;
        Ok(())
    }

    /// Drops a sku's stock counters and ledgers (rebuild-cache's forced reload, before it loads
    /// them again from MySQL): stock, holds and order lines, unwritten sold lines, buyers, and
    /// each reservation's TTL key. Its catalog entry stays.
    pub async fn drop_sku_counters(&self, sku: Sku) -> AppResult<()> {
        let k = self.keys.sku(sku);
        let mut conn = self.conn();
        let rids: Vec<String> = conn.hkeys(k.res()).await?;
        let mut keys = vec![k.stock(), k.res(), k.exp(), k.sold(), k.users()];
        for chunk in rids.chunks(1_000) {
            let ttl: Vec<String> = chunk
                .iter()
                .map(|r| format!("{}{r}", k.ttl_base()))
                .collect();
            let _: () = conn.del(ttl).await?;
        }
        keys.dedup();
        let _: () = conn.del(keys).await?;
        Ok(())
    }

    /// Puts back an open order's record (rebuild-cache); `false` when one exists.
    pub async fn restore_order(&self, order_id: u64, fields: &[(&str, String)]) -> AppResult<bool> {
        let mut args = Vec::new();
        for (f, v) in fields {
            args.push(f.to_string());
            args.push(v.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = self
            .eval(
                "restore_order",
                &self.scripts.restore_order,
                &[&self.keys.order(order_id)],
                &args,
            )
            .await?;
        Ok(r.int(0)? == 1)
    }

    /// The sku's counters with its ledgers (reservations, unwritten sold lines), read in one
    /// atomic step: a sweep or a sale between separate reads would show counters and ledgers
    /// apart though each script keeps them together. `None` when not loaded.
    pub async fn stock_with_ledgers(
        &self,
        sku: Sku,
    ) -> AppResult<Option<(StockSnapshot, SkuLedgers)>> {
        let k = self.keys.sku(sku);
        type Fields = HashMap<String, String>;
        type Scored = Vec<(String, f64)>;
        let (flat, res, sold, pending): (Vec<(String, i64)>, Fields, Fields, Scored) =
            redis::pipe()
                .atomic()
                .hgetall(k.stock())
                .hgetall(k.res())
                .hgetall(k.sold())
                .zrange_withscores(k.adjustments_pending(), 0, -1)
                .query_async(&mut self.conn())
                .await?;
        if flat.is_empty() {
            return Ok(None);
        }
        let pending = pending
            .into_iter()
            .filter_map(|(m, at)| Some((PendingAdjustment::parse(&m)?, at as i64)))
            .collect();
        Ok(Some((
            StockSnapshot::from_fields(flat),
            SkuLedgers { res, sold, pending },
        )))
    }

    /// Deletes every key under this handle's prefix, best effort (a throwaway prefix: the
    /// simulation's clean-up). KEYS: never on a prefix in use.
    pub async fn delete_all_keys(&self) {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(self.keys.pattern())
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
        }
    }
}

/// A sku's ledgers: `res` (rid -> `user|count|alloc`), `sold` (paid lines not yet written).
#[derive(Debug, Clone, Default)]
pub struct SkuLedgers {
    pub res: HashMap<String, String>,
    pub sold: HashMap<String, String>,
    /// Admin stock changes whose MySQL outcome Redis has not settled yet, each with when the
    /// sweeper settles it (unix ms).
    pub pending: Vec<(PendingAdjustment, i64)>,
}
