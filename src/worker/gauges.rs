//! Gauges that describe state rather than events, refreshed every `metrics_interval`: the
//! outbox backlog and its age, connection pool use, and the stock of skus whose sale is open.
//!
//! Two kinds. This instance's own (its pools, its view of Redis being behind): every instance
//! reports them, and Prometheus's `instance` label tells them apart. The deployment's, read from
//! Redis (the outbox, the set-aside entries, lost skus, the stock of open sales): the same for
//! every instance, so with several instances the holder of the `gauges` lease reads them and the
//! others report 0 (read them with `max()`, as the dashboard and the alerts do).

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::AppState;
use crate::domain::Sku;
use crate::error::AppResult;
use crate::store::mysql::catalog;
use crate::worker::writer::Writer;

/// At most this many skus get per-sku gauges (bounded label cardinality).
const MAX_SKU_GAUGES: usize = 50;

/// Refreshes every gauge, this instance's and the deployment's, whoever holds the lease (tests).
pub async fn refresh(state: &AppState) -> AppResult<()> {
    refresh_own(state);
    refresh_deployment(state, &mut HashSet::new()).await
}

/// This instance's own gauges.
fn refresh_own(state: &AppState) {
    // Exposed from the start, so the alert on it has a series to read.
    metrics::gauge!("flashsale_redis_behind").set(if state.redis.is_behind() { 1.0 } else { 0.0 });
    metrics::counter!("flashsale_redis_rollbacks_total").increment(0);
    let size = state.db.size() as f64;
    let idle = state.db.num_idle() as f64;
    metrics::gauge!("flashsale_mysql_pool_connections", "state" => "in_use").set(size - idle);
    metrics::gauge!("flashsale_mysql_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("flashsale_mysql_pool_max_connections")
        .set(f64::from(state.cfg.stores.mysql_pool));
    let s = state.redis.pool_status();
    metrics::gauge!("flashsale_redis_pool_connections", "state" => "in_use").set(s.in_use as f64);
    metrics::gauge!("flashsale_redis_pool_connections", "state" => "idle").set(s.idle as f64);
    metrics::gauge!("flashsale_redis_pool_max_connections").set(s.max as f64);
    // The cap beside the count, so an alert can say "near the cap" whatever it is set to.
    metrics::gauge!("flashsale_live_max_watchers").set(state.cfg.live.live_max_watchers as f64);
}

/// The deployment's gauges, read from Redis and MySQL; the skus given stock gauges are added to
/// `stock_skus`.
async fn refresh_deployment(state: &AppState, stock_skus: &mut HashSet<String>) -> AppResult<()> {
    let writer = Writer::new(state.clone());
    let (len, pending) = writer.backlog().await?;
    metrics::gauge!("flashsale_outbox_length").set(len as f64);
    metrics::gauge!("flashsale_outbox_pending").set(pending as f64);
    metrics::gauge!("flashsale_outbox_oldest_age_seconds")
        .set(writer.oldest_age().await?.as_secs_f64());
    metrics::gauge!("flashsale_outbox_set_aside").set(state.redis.set_aside_count().await? as f64);
    // Skus whose counters Redis lost while units of them were out: refused until rebuild-cache.
    metrics::gauge!("flashsale_skus_lost").set(state.redis.lost_count().await? as f64);

    let now = chrono::Utc::now();
    for sku in catalog::active_sale_skus(&state.db, now)
        .await?
        .into_iter()
        .take(MAX_SKU_GAUGES)
    {
        let Some(c) = state.redis.stock(Sku::parse(u64::from(sku))?).await? else {
            continue;
        };
        let sku = sku.to_string();
        stock_skus.insert(sku.clone());
        for (bucket, v) in [
            ("available", c.available),
            ("held", c.held),
            ("reserved", c.reserved),
            ("sold", c.sold_total),
        ] {
            metrics::gauge!("flashsale_stock_units", "sku" => sku.clone(), "bucket" => bucket)
                .set(v as f64);
        }
    }
    Ok(())
}

/// Redis's maxmemory-policy can be changed at run time (CONFIG SET, a restart with another
/// config): looked at on every tick; sales stop with 503 while it lets Redis evict keys.
async fn watch_eviction_policy(state: &AppState) {
    let was_refusing = state.redis.eviction_refusal().is_some();
    match state.redis.check_eviction_policy().await {
        Err(e) if state.redis.eviction_refusal().is_some() => {
            if !was_refusing {
                tracing::error!(error = %e, "Redis may evict keys: refusing sales until it may not");
            }
        }
        Err(e) => tracing::debug!(error = %e, "Redis's maxmemory-policy not read"),
        Ok(()) if was_refusing => {
            tracing::warn!("Redis's maxmemory-policy is noeviction again: selling")
        }
        Ok(()) => {}
    }
}

/// The deployment's gauges at 0: this instance stopped reading them (another holds the lease).
fn zero_deployment(stock_skus: &mut HashSet<String>) {
    for name in [
        "flashsale_outbox_length",
        "flashsale_outbox_pending",
        "flashsale_outbox_oldest_age_seconds",
        "flashsale_outbox_set_aside",
        "flashsale_skus_lost",
    ] {
        metrics::gauge!(name).set(0.0);
    }
    for sku in stock_skus.drain() {
        for bucket in ["available", "held", "reserved", "sold"] {
            metrics::gauge!("flashsale_stock_units", "sku" => sku.clone(), "bucket" => bucket)
                .set(0.0);
        }
    }
}

/// Refreshes the gauges until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let interval = state
        .cfg
        .telemetry
        .metrics_interval
        .max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // A lease that outlives a couple of missed ticks.
    let life = (interval * 3).max(Duration::from_secs(1));
    let mut stock_skus = HashSet::new();
    // As if it had been ours: an instance that never reads them reports them at 0 from the
    // start, not absent.
    let mut was_mine = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                watch_eviction_policy(&state).await;
                if let Err(e) = crate::service::order_ids::watch(&state).await {
                    tracing::debug!(error = %e, "Redis not checked for going back");
                }
                refresh_own(&state);
                let mine = super::my_turn(&state, "gauges", life).await;
                if mine {
                    if let Err(e) = refresh_deployment(&state, &mut stock_skus).await {
                        tracing::debug!(error = %e, "gauges not refreshed");
                    }
                } else if was_mine {
                    zero_deployment(&mut stock_skus);
                }
                was_mine = mine;
            }
            _ = stop.changed() => break,
        }
    }
    super::end_turn(&state, "gauges").await;
}
