//! Background work of the serve process.

pub mod gauges;
pub mod live;
pub mod partitions;
pub mod sweeper;
pub mod webhooks;
pub mod writer;

use std::time::Duration;

use crate::app::AppState;

/// Whether this instance does the shared `work` now: it holds the work's lease in Redis (taken
/// when free, renewed while held, for `life`), so with several instances one of them does it,
/// and another takes over within `life` of its holder stopping. Not knowing (Redis down) is
/// not holding. `flashsale_shared_work{work}` is 1 on the holder.
pub(crate) async fn my_turn(state: &AppState, work: &'static str, life: Duration) -> bool {
    let mine = match state.redis.take_lease(work, &state.instance, life).await {
        Ok(mine) => mine,
        Err(e) => {
            tracing::debug!(work, error = %e, "lease of shared work not taken");
            false
        }
    };
    metrics::gauge!("flashsale_shared_work", "work" => work).set(if mine { 1.0 } else { 0.0 });
    mine
}

/// Lets go of `work`'s lease at a clean stop, so another instance takes it at once.
pub(crate) async fn end_turn(state: &AppState, work: &'static str) {
    if let Err(e) = state.redis.drop_lease(work, &state.instance).await {
        tracing::debug!(work, error = %e, "lease of shared work not let go; it runs out");
    }
}
