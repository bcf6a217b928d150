//! The sweeper: gives back the units of expired cart holds and settles orders whose payment
//! window passed. Key-space notifications are not reliable, so it keeps an index of its own.
//!
//! **What it visits.** The due index (`<p>:{due}:skus`, a sorted set sku -> a time at or before
//! that sku's earliest reservation deadline) names the skus with something held or reserved.
//! Every script that adds a deadline to a sku's `exp` is followed by a note, kept in memory
//! (the earliest per sku) and written at the start of each pass (lua/note_due.lua: `ZADD LT`
//! and a version bump, in the index's own slot). Each tick reads the skus due by
//! Redis's clock and sweeps only those: an idle catalog costs two cheap reads per tick, however
//! many skus are loaded. After sweeping a sku the sweeper moves its entry to the earliest
//! deadline left, or drops it (lua/settle_due.lua), unless a note came in the meantime.
//!
//! **Draining.** A sku is swept in bounded batches (`BATCH` due entries per script call, so no
//! call holds Redis for long) until nothing due is left, its due orders settled `SETTLE_AT_ONCE`
//! at a time: whatever is due goes back within a tick, whatever the number.
//!
//! **Pending admin stock changes.** An admin stock change is recorded as pending with its sku
//! (its `adjp` set, scored by when it is due: `catalog::SETTLE_PENDING_AFTER` after its Redis
//! part) and noted in the due index like a deadline. A sku's visit settles its due pending
//! changes from MySQL's token rows (`catalog::settle_pending`: never waiting for a row lock;
//! one whose transaction may still be open is put off): what a process that died mid-change
//! left, with no task of its own to finish it.
//!
//! **Audit.** A crash between a script and its note leaves a sku out of the index. Every
//! `sweep_audit_interval` (and at start) the sweeper reads the earliest deadline of every
//! loaded sku (its `exp` and its pending changes: SSCAN + pipelined ZRANGE, no scripts) and
//! notes those that hold something. At the same moment it prunes MySQL's notes of stock
//! changes past `catalog::ADJUSTMENT_NOTES_KEPT`, in bounded batches.
//!
//! Every step is idempotent: several instances may sweep at once.

use std::collections::HashSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::AppState;
use crate::domain::Sku;
use crate::error::AppResult;
use crate::service::{catalog, orders};
use crate::store::redis::keys::ORDER_PARTITIONS;

/// Due entries looked at per sweep script call.
pub const BATCH: u32 = 500;
/// Due skus read from the index at a time.
const SKUS_PER_READ: usize = 256;
/// Skus swept at once.
const SKUS_AT_ONCE: usize = 4;
/// Due orders settled at once (per sku).
const SETTLE_AT_ONCE: usize = 32;
/// Placements settled per order partition and pass at most (what is left goes at the next tick).
const PLACINGS_AT_ONCE: usize = 64;
/// Batches per sku and pass at most (what is left goes at the next tick).
const MAX_ROUNDS: usize = 400;
/// Skus per SSCAN / pipeline of the audit.
const AUDIT_CHUNK: usize = 500;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepStats {
    /// Skus swept (those the due index named).
    pub skus: usize,
    /// Sweep script calls made.
    pub calls: usize,
    pub holds_units_released: u64,
    pub orders_due: usize,
    /// Pending admin stock changes settled from MySQL's token rows.
    pub adjustments_settled: usize,
    /// Pending admin stock changes due but not settled (their transaction may still be open,
    /// or MySQL did not answer): looked at again later.
    pub adjustments_unsettled: usize,
    /// Placements their request left unsettled past `orders::PLACING_WINDOW`, settled.
    pub placings_settled: usize,
}

impl SweepStats {
    fn add(&mut self, o: SweepStats) {
        self.skus += o.skus;
        self.calls += o.calls;
        self.holds_units_released += o.holds_units_released;
        self.orders_due += o.orders_due;
        self.adjustments_settled += o.adjustments_settled;
        self.adjustments_unsettled += o.adjustments_unsettled;
        self.placings_settled += o.placings_settled;
    }
}

/// One pass over the skus with something due: what tests call to drain expiry deterministically.
pub async fn run_once(state: &AppState) -> AppResult<SweepStats> {
    state.redis.flush_due_notes().await?;
    let now = state.redis.now_ms().await?;
    let mut stats = SweepStats {
        placings_settled: settle_placings(state, now).await?,
        ..SweepStats::default()
    };
    let mut visited: HashSet<Sku> = HashSet::new();
    loop {
        // Skus swept in this pass may still be due (something could not be settled): read
        // past them.
        let asked = visited.len() + SKUS_PER_READ;
        let due = state.redis.due_skus(now, asked).await?;
        let all_read = due.len() < asked;
        let fresh: Vec<Sku> = due.into_iter().filter(|s| visited.insert(*s)).collect();
        if fresh.is_empty() {
            break;
        }
        let per_sku: Vec<SweepStats> = futures::stream::iter(fresh)
            .map(|sku| sweep_sku(state, sku, now))
            .buffer_unordered(SKUS_AT_ONCE)
            .try_collect()
            .await?;
        per_sku.into_iter().for_each(|s| stats.add(s));
        if all_read {
            break;
        }
    }
    metrics::counter!("flashsale_sweep_skus_total").increment(stats.skus as u64);
    Ok(stats)
}

/// Settles the placements due by `now` in every order partition (those whose request did not
/// settle them within `orders::PLACING_WINDOW`), `PLACINGS_AT_ONCE` per partition and pass.
async fn settle_placings(state: &AppState, now: i64) -> AppResult<usize> {
    let per_partition = futures::future::try_join_all(
        (0..ORDER_PARTITIONS).map(|p| state.redis.due_placings(p, now, PLACINGS_AT_ONCE)),
    )
    .await?;
    let due: Vec<_> = per_partition.into_iter().flatten().collect();
    let settled = due.len();
    futures::stream::iter(due)
        .map(|p| async move { orders::settle_placing(state, &p).await })
        .buffer_unordered(SETTLE_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(settled)
}

/// Sweeps one sku until nothing due is left in it, settles its pending admin stock changes
/// that are due, then moves its due-index entry.
async fn sweep_sku(state: &AppState, sku: Sku, now: i64) -> AppResult<SweepStats> {
    let seen = state.redis.due_version(sku).await?;
    let mut stats = SweepStats {
        skus: 1,
        ..SweepStats::default()
    };
    // Due orders already tried in this pass, and how many due entries to skip: those tried but
    // still there (not settled: an error, or an order that is still open) and live holds.
    let mut tried: HashSet<u64> = HashSet::new();
    let mut skip: u32 = 0;
    for _ in 0..MAX_ROUNDS {
        let b = state.redis.sweep(sku, BATCH, skip).await?;
        stats.calls += 1;
        stats.holds_units_released += b.released;
        if b.released > 0 {
            metrics::counter!("flashsale_units_released_total", "reason" => "hold_expired")
                .increment(b.released);
        }
        let fresh: Vec<u64> = b
            .orders
            .iter()
            .copied()
            .filter(|o| tried.insert(*o))
            .collect();
        skip += b.kept + (b.orders.len() - fresh.len()) as u32;
        stats.orders_due += fresh.len();
        futures::stream::iter(fresh)
            .for_each_concurrent(SETTLE_AT_ONCE, |order_id| async move {
                if let Err(e) = orders::expire_due(state, order_id, sku).await {
                    tracing::warn!(order.id = order_id, %sku, error = %e, "could not settle a due order; retrying next pass");
                }
            })
            .await;
        if b.looked_at < BATCH {
            break;
        }
    }
    let pending = catalog::settle_pending(state, sku, now).await?;
    stats.adjustments_settled = pending.settled;
    stats.adjustments_unsettled = pending.unsettled;
    let next = state
        .redis
        .earliest_deadlines(&[sku])
        .await?
        .pop()
        .flatten();
    state.redis.settle_due(sku, &seen, next).await?;
    Ok(stats)
}

/// Sweeps every `sweep_interval` until `stop` turns true; audits the due index at start and
/// every `sweep_audit_interval`. With several instances, the one holding the sweeper's lease
/// sweeps and audits; the others only write their own due notes.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.cfg.sweeper.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_audit: Option<Instant> = None;
    let life = lease_life(state.cfg.sweeper.sweep_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !super::my_turn(&state, "sweeper", life).await {
                    // The holder audits; this instance audits at once if the lease comes to it.
                    last_audit = None;
                    if let Err(e) = state.redis.flush_due_notes().await {
                        tracing::debug!(error = %e, "due notes not written; next tick");
                    }
                    continue;
                }
                if last_audit.is_none_or(|t| t.elapsed() >= state.cfg.sweeper.sweep_audit_interval) {
                    match state.redis.audit_due(AUDIT_CHUNK).await {
                        Ok((skus, noted)) => {
                            last_audit = Some(Instant::now());
                            tracing::debug!(skus, noted, "due index audited");
                        }
                        Err(e) => tracing::warn!(error = %e, "due index audit failed; retrying next tick"),
                    }
                    match catalog::prune_adjustment_notes(&state).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(notes = n, "old stock change notes pruned"),
                        Err(e) => tracing::warn!(error = %e, "could not prune old stock change notes; next audit"),
                    }
                }
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
    // Notes of this instance's last reservations go out before it stops (else the audit).
    if let Err(e) = state.redis.flush_due_notes().await {
        tracing::warn!(error = %e, "could not write the last due notes; the audit will");
    }
    super::end_turn(&state, "sweeper").await;
}

/// How long the sweeper's lease lives unrenewed: a few ticks, so one slow pass does not hand
/// it over, and at most a few seconds of sweeps are lost when its holder dies.
fn lease_life(interval: Duration) -> Duration {
    (interval * 5).clamp(Duration::from_secs(1), Duration::from_secs(30))
}
