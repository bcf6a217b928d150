//! The sweeper: gives back the units of expired cart holds and settles orders whose payment
//! window passed. Key-space notifications are not reliable, so it walks each sku's deadline
//! index instead. Every step is idempotent: several instances may sweep at once.

use redis::AsyncCommands;
use tokio::sync::watch;

use crate::app::AppState;
use crate::domain::Sku;
use crate::error::AppResult;
use crate::service::orders;

/// Due entries looked at per sku and pass.
const BATCH: u32 = 500;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepStats {
    pub skus: usize,
    pub holds_units_released: u64,
    pub orders_due: usize,
}

/// One pass over every sku: what tests call to drain expiry deterministically.
pub async fn run_once(state: &AppState) -> AppResult<SweepStats> {
    let raw: Vec<u64> = state.redis.conn().smembers(state.redis.keys.skus()).await?;
    let mut stats = SweepStats::default();
    for sku in raw.into_iter().filter_map(|n| Sku::parse(n).ok()) {
        stats.skus += 1;
        loop {
            let (released, due) = state.redis.sweep(sku, BATCH).await?;
            stats.holds_units_released += released;
            stats.orders_due += due.len();
            if released > 0 {
                metrics::counter!("flashsale_units_released_total", "reason" => "hold_expired")
                    .increment(released);
            }
            for order_id in &due {
                if let Err(e) = orders::expire_due(state, *order_id, sku).await {
                    tracing::warn!(order.id = order_id, %sku, error = %e, "could not settle a due order; retrying next pass");
                }
            }
            // A full batch of released holds may hide more behind it; due orders were settled.
            if released < u64::from(BATCH) || !due.is_empty() {
                break;
            }
        }
    }
    Ok(stats)
}

/// Sweeps every `sweep_interval` until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.cfg.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match run_once(&state).await {
                    Ok(s) if s.holds_units_released > 0 || s.orders_due > 0 => {
                        tracing::debug!(?s, "sweep");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep failed; retrying next tick"),
                }
            }
            _ = stop.changed() => break,
        }
    }
}
