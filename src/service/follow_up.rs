//! Follow-up work that must happen although the request that needed it is answered or gone (a
//! hand-back, a fence, an index line, an unlock): a task of its own tries an idempotent step
//! until it succeeds, for a bounded time.

use std::future::Future;
use std::time::Duration;

use tracing::Instrument as _;

use crate::app::AppState;
use crate::error::AppResult;

/// Runs `step` in a task of its own until it succeeds: after `first`, doubling to 2 s between
/// tries, for at most `within`; then it gives up with an error in the log naming `what` (the
/// caller's fallback takes over: the sweeper at the lines' deadline, a lease's end). The task
/// keeps the caller's span, so its log lines carry the request's fields.
pub fn until_done<F, Fut>(
    state: &AppState,
    what: &'static str,
    first: Duration,
    within: Duration,
    step: F,
) where
    F: Fn(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = AppResult<()>> + Send + 'static,
{
    let state = state.clone();
    tokio::spawn(
        async move {
            let started = tokio::time::Instant::now();
            let mut pause = first;
            loop {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                match step(state.clone()).await {
                    Ok(()) => return,
                    Err(e) if started.elapsed() >= within => {
                        tracing::error!(error = %e, step = what, "gave up a follow-up step");
                        return;
                    }
                    Err(_) => {}
                }
            }
        }
        .in_current_span(),
    );
}
