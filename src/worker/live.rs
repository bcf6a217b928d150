//! The live stock feed: one task per process follows the scripts' announcements of every
//! change of a sku's `avail` into the hub (src/service/live.rs) and the sold-out knowledge
//! (src/service/sold_out.rs), has the hub broadcast what changed every `live_tick`, and every
//! `live_resync` reads the watched skus afresh, as announcements can be lost, and refreshes the
//! live sales list.
//!
//! Each sku announces on a sharded channel of its own (src/store/redis/live.rs), so the feed
//! subscribes only the skus this instance has a use for: those the hub follows (streams open)
//! and those the sold-out knowledge wants (seen sold out lately), adding and dropping channels
//! as those sets change. A sku's announcements are trusted from Redis's confirmation of its
//! subscription on, and the sku's count is read afresh right after that confirmation (what
//! changed before it was announced to nobody here). A lost connection (on a cluster, any of
//! its connections to the masters) forgets everything known, and the feed makes its
//! connections and every subscription afresh.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::AppState;
use crate::domain::Sku;
use crate::error::AppResult;
use crate::service::catalog;
use crate::service::sold_out::Asked;
use crate::store::redis::live::{LiveEvent, StockFeed};

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

/// Skus whose subscription Redis just confirmed, to read afresh: with the hub's version and
/// the sold-out knowledge's [`Asked`] as they were at the confirmation.
type Confirmed = Vec<(u32, Option<u64>, Asked)>;

/// Reads the confirmed skus' counts (one pipeline per slot) and applies them to the hub and
/// the sold-out knowledge, unless an announcement of the sku came in meanwhile.
async fn read_confirmed(state: &AppState, confirmed: &Confirmed) -> AppResult<()> {
    if confirmed.is_empty() {
        return Ok(());
    }
    let skus = confirmed
        .iter()
        .map(|(sku, _, _)| Sku::parse(u64::from(*sku)))
        .collect::<Result<Vec<_>, _>>()?;
    let counts = state.redis.counts_with_bounds(&skus).await?;
    for ((sku, (_, version, asked)), count) in skus.into_iter().zip(confirmed).zip(counts) {
        if let Some((available, holds)) = count {
            if let Some(version) = version {
                state.live.apply_read(sku.get(), available, *version);
            }
            state.sold_out.reply(sku, *asked, available, holds);
        }
    }
    Ok(())
}

/// The feed's channels on its current connection.
struct Channels {
    /// Skus whose channel was asked for (`SSUBSCRIBE` sent, whether or not it answered) and
    /// not let go since.
    asked: HashSet<u32>,
    /// Of those, the ones Redis confirmed.
    confirmed: HashSet<u32>,
    /// When to send again the subscriptions asked for and not confirmed (after a failure).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Since when subscription commands fail (None: the last ones were made).
    failing_since: Option<Instant>,
    /// Confirmed skus whose read failed (Redis busy, a failover under way): read again with
    /// the retries (the hub's version and the [`Asked`] of their confirmation stay right:
    /// what was announced since makes the read stale, and it is then not applied).
    unread: Confirmed,
}

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(5);
/// Subscriptions failing this long make the connection afresh (on a cluster, from the seed
/// nodes: the connection's own view of the cluster may be what is wrong).
const REMAKE_AFTER: Duration = Duration::from_secs(30);

impl Channels {
    fn new() -> Self {
        Channels {
            asked: HashSet::new(),
            confirmed: HashSet::new(),
            retry_at: None,
            backoff: RETRY_FIRST,
            failing_since: None,
            unread: Confirmed::new(),
        }
    }

    /// Subscribes what is wanted and not asked for, lets go of what is asked for and not
    /// wanted, and, when `retry`, sends again what is asked for and not confirmed.
    async fn sync(&mut self, state: &AppState, feed: &StockFeed, retry: bool) {
        let mut wanted: HashSet<u32> = state.live.skus().into_iter().collect();
        wanted.extend(state.sold_out.wanted());
        let gone: Vec<u32> = self.asked.difference(&wanted).copied().collect();
        for sku in &gone {
            // Forgotten before the command: from it on, the sku's changes go unheard.
            self.asked.remove(sku);
            self.confirmed.remove(sku);
            state.sold_out.channel_unsubscribed(*sku);
        }
        // A failure leaves a channel nobody follows: its messages are ignored, and the
        // connection's end takes it.
        feed.unsubscribe(&gone).await;
        let mut send: Vec<u32> = wanted.difference(&self.asked).copied().collect();
        self.asked.extend(send.iter().copied());
        if retry {
            // The retry is this one (a failure below schedules the next).
            self.retry_at = None;
            send.extend(self.asked.difference(&self.confirmed).copied());
            send.sort_unstable();
            send.dedup();
        }
        if send.is_empty() {
            return;
        }
        let failed = feed.subscribe(&send).await;
        if failed.is_empty() {
            if retry {
                self.backoff = RETRY_FIRST;
                self.failing_since = None;
            }
        } else {
            tracing::warn!(
                skus = failed.len(),
                "live stock: subscriptions not made; retrying"
            );
            self.failing_since.get_or_insert_with(Instant::now);
            self.retry_later();
        }
    }

    /// Has the retries run after the current backoff (unless they are due already).
    fn retry_later(&mut self) {
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(RETRY_MOST);
        }
    }
}

/// What the event loop does after an event.
enum Next {
    Continue,
    /// A connection is lost: make the connections afresh.
    Reconnect,
}

/// Applies one event of the feed's connection.
fn on_event(
    state: &AppState,
    channels: &mut Channels,
    confirmed: &mut Confirmed,
    resubscribe: &mut bool,
    event: Option<LiveEvent>,
) -> Next {
    match event {
        Some(LiveEvent::Announced((sku, avail, holds))) => {
            state.sold_out.announce(sku, avail, holds);
            state.live.announce(sku, avail);
        }
        Some(LiveEvent::Subscribed(sku)) => {
            // A confirmation of a channel let go since is stale (its unsubscription follows).
            if channels.asked.contains(&sku) {
                channels.confirmed.insert(sku);
                let asked = state.sold_out.channel_subscribed(sku);
                confirmed.push((sku, state.live.version(sku), asked));
            }
        }
        Some(LiveEvent::Unsubscribed(sku)) => {
            // Not one the feed let go (it forgot those when it did): Redis dropped it, e.g. its
            // slot moved. Subscribed again (on a cluster, on the slot's new master).
            if channels.asked.contains(&sku) {
                channels.confirmed.remove(&sku);
                state.sold_out.channel_unsubscribed(sku);
                *resubscribe = true;
            }
        }
        Some(LiveEvent::Lost) | None => return Next::Reconnect,
    }
    Next::Continue
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
        metrics::gauge!("flashsale_live_channels").set(0.0);
        let connected = tokio::select! {
            r = tokio::time::timeout(cfg.stores.redis_timeout, state.redis.stock_feed()) => r,
            _ = stop.changed() => break 'connect,
        };
        let mut feed = match connected {
            Ok(Ok(f)) => f,
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
        // A new connection: nothing of before is trusted (each sku is again from its
        // confirmation, and read afresh then).
        state.sold_out.forget_all();
        tracing::debug!(connection = feed.name(), "live stock: connected");
        let mut channels = Channels::new();
        channels.sync(&state, &feed, false).await;
        loop {
            let mut confirmed = Confirmed::new();
            let mut resubscribe = false;
            let mut retried = false;
            let retry_at = channels.retry_at;
            let next = tokio::select! {
                e = feed.next() => {
                    let mut next = on_event(
                        &state,
                        &mut channels,
                        &mut confirmed,
                        &mut resubscribe,
                        e,
                    );
                    // What arrived with it, handled together (one read for the confirmations).
                    while matches!(next, Next::Continue)
                        && let Some(e) = feed.try_next()
                    {
                        next = on_event(
                            &state,
                            &mut channels,
                            &mut confirmed,
                            &mut resubscribe,
                            Some(e),
                        );
                    }
                    next
                }
                _ = hub.skus_changed() => {
                    channels.sync(&state, &feed, false).await;
                    Next::Continue
                }
                _ = state.sold_out.wanted_changed() => {
                    channels.sync(&state, &feed, false).await;
                    Next::Continue
                }
                _ = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    channels.sync(&state, &feed, true).await;
                    retried = true;
                    Next::Continue
                }
                _ = tick.tick() => {
                    hub.flush();
                    Next::Continue
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
                    // Also lets go of the skus no longer seen sold out.
                    channels.sync(&state, &feed, false).await;
                    if let Err(e) = resync(&state).await {
                        tracing::debug!(error = %e, "live stock: resync failed");
                    }
                    Next::Continue
                }
                _ = stop.changed() => break 'connect,
            };
            if let Next::Reconnect = next {
                state.sold_out.forget_all();
                tracing::warn!("live stock: the subscription was lost; resubscribing");
                continue 'connect;
            }
            if resubscribe {
                channels.sync(&state, &feed, true).await;
            }
            if channels
                .failing_since
                .is_some_and(|t| t.elapsed() >= REMAKE_AFTER)
            {
                state.sold_out.forget_all();
                tracing::warn!("live stock: subscriptions keep failing; connecting afresh");
                continue 'connect;
            }
            if retried {
                confirmed.append(&mut channels.unread);
                confirmed.retain(|(sku, _, _)| channels.confirmed.contains(sku));
            }
            if let Err(e) = read_confirmed(&state, &confirmed).await {
                tracing::debug!(error = %e, "live stock: confirmed skus not read; retrying");
                channels.unread.append(&mut confirmed);
                channels.retry_later();
            }
            metrics::gauge!("flashsale_live_channels").set(channels.confirmed.len() as f64);
        }
    }
    state.sold_out.forget_all();
    metrics::gauge!("flashsale_live_channels").set(0.0);
    hub.close();
}
