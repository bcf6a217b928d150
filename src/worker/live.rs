//! The live stock feed: one task per process follows the scripts' announcements of every
//! change of a sku's `avail` (one Redis pub/sub channel per deployment, see
//! src/store/redis/live.rs) into the hub (src/service/live.rs), has the hub broadcast what
//! changed every `live_tick`, and every `live_resync` (and on every (re)subscription) reads the
//! watched skus afresh, as announcements can be lost, and refreshes the live sales list.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::app::AppState;
use crate::domain::Sku;
use crate::error::AppResult;
use crate::service::catalog;

/// Reads every watched sku's count from Redis (one pipeline) and applies it.
async fn resync(state: &AppState) -> AppResult<()> {
    let hub = &state.live;
    let watched = hub.watched();
    if watched.is_empty() {
        return Ok(());
    }
    let skus = watched
        .iter()
        .map(|(sku, _)| Sku::parse(u64::from(*sku)))
        .collect::<Result<Vec<_>, _>>()?;
    let counts = state.redis.available_counts(&skus).await?;
    for ((sku, version), count) in watched.into_iter().zip(counts) {
        if let Some(v) = count {
            hub.apply_read(sku, v, version);
        }
    }
    Ok(())
}

/// The feed: follows the announcements until `stop` turns true, then ends every stream.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let hub = state.live.clone();
    let cfg = state.cfg.clone();
    let mut tick = tokio::time::interval(cfg.live.live_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut resync_tick = tokio::time::interval(cfg.live.live_resync);
    resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        let connected = tokio::select! {
            r = tokio::time::timeout(cfg.stores.redis_timeout, state.redis.subscribe_stock()) => r,
            _ = stop.changed() => break 'connect,
        };
        let mut announcements = match connected {
            Ok(Ok(a)) => a,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                tracing::warn!(error = %why, "live stock: cannot subscribe; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break 'connect,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        state.sold_out.subscribed(true);
        tracing::debug!(channel = %state.redis.keys.stock_live(), "live stock: subscribed");
        // Announcements made while unsubscribed are lost: read the watched skus afresh.
        if let Err(e) = resync(&state).await {
            tracing::debug!(error = %e, "live stock: resync failed");
        }
        loop {
            tokio::select! {
                a = announcements.next() => match a {
                    Some((sku, avail, holds)) => {
                        state.sold_out.announce(sku, avail, holds);
                        hub.announce(sku, avail);
                    }
                    None => {
                        state.sold_out.subscribed(false);
                        tracing::warn!("live stock: the subscription was lost; resubscribing");
                        continue 'connect;
                    }
                },
                _ = tick.tick() => {
                    hub.flush();
                }
                _ = resync_tick.tick() => {
                    if hub.sales_watched() {
                        let count = |sku| catalog::available(&state, sku);
                        if let Err(e) = hub.refresh_sales(&state.db, count).await {
                            tracing::debug!(error = %e, "live stock: sales list not refreshed");
                        }
                    } else {
                        hub.unpin_if_unwatched();
                    }
                    if let Err(e) = resync(&state).await {
                        tracing::debug!(error = %e, "live stock: resync failed");
                    }
                }
                _ = stop.changed() => break 'connect,
            }
        }
    }
    state.sold_out.subscribed(false);
    hub.close();
}
