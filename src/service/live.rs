//! Live stock for shoppers' pages: available counts pushed as they change (Server-Sent Events,
//! served by `http::live`).
//!
//! The [`Hub`] is the process's in-process state: the latest count of each *watched* sku, what
//! changed since the last tick, the streams open (per client), the live sales list. The feed
//! (src/worker/live.rs) follows the scripts' announcements into it and, every `live_tick`,
//! has it broadcast what changed as one [`Batch`]. Watchers (the SSE streams) only ever read
//! the hub: 10,000 watchers cost Redis one subscribed channel per watched sku (the feed
//! subscribes the skus the hub follows, told by [`Hub::skus_changed`]) and, every
//! `live_resync`, one read per watched sku (in case an announcement was lost, e.g. while a
//! subscription was down), never anything per watcher.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use tokio::sync::{Notify, broadcast, watch};

use crate::domain::{ClientKey, Sku};
use crate::error::{AppError, AppResult};
use crate::store::mysql::catalog::{self as db, ProductRow};

/// Batches kept for a slow watcher; one that falls further behind gets the current counts.
const BATCH_BUFFER: usize = 64;
/// At most this many sales on the live sales stream.
pub const MAX_LIVE_SALES: u32 = 100;
/// `Retry-After` of a stream refused because its client holds too many.
const PER_CLIENT_RETRY_SECS: u64 = 5;

/// What changed during one tick: (sku, available) pairs, each sku once.
#[derive(Debug)]
pub struct Batch {
    /// Increases by one per batch in this process (the SSE event id).
    pub seq: u64,
    pub changes: Vec<(u32, i64)>,
}

/// The sales that have not ended (active or upcoming), as the live sales stream shows them.
#[derive(Debug, PartialEq)]
pub struct SalesList {
    pub rows: Vec<ProductRow>,
}

impl SalesList {
    pub fn skus(&self) -> HashSet<u32> {
        self.rows.iter().map(|r| r.sku).collect()
    }
}

#[derive(Default)]
struct SkuState {
    /// Per-sku streams watching it.
    refs: usize,
    /// On the live sales list while someone watches that.
    pinned: bool,
    /// The newest count known (announced or read).
    latest: Option<i64>,
    /// The count last broadcast.
    sent: Option<i64>,
    /// Announcements received: a read that overlapped one is not applied (it may be older).
    version: u64,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    skus: HashMap<u32, SkuState>,
    dirty: HashSet<u32>,
    sales_watchers: usize,
    /// Streams open per client (see [`ClientKey`]); absent at zero.
    clients: HashMap<ClientKey, usize>,
}

impl Inner {
    /// Forgets `sku` if nothing follows it any more; whether it did.
    fn forget_if_unwatched(&mut self, sku: u32) -> bool {
        if self
            .skus
            .get(&sku)
            .is_some_and(|s| s.refs == 0 && !s.pinned)
        {
            self.skus.remove(&sku);
            self.dirty.remove(&sku);
            return true;
        }
        false
    }

    /// Unpins the pinned skus that `keep` rejects (the sales list no longer names them) and
    /// forgets those nobody watches; whether it forgot any.
    fn unpin_where(&mut self, keep: impl Fn(u32) -> bool) -> bool {
        let unpinned: Vec<u32> = self
            .skus
            .iter()
            .filter(|(sku, s)| s.pinned && !keep(**sku))
            .map(|(sku, _)| *sku)
            .collect();
        let mut forgot = false;
        for sku in unpinned {
            if let Some(s) = self.skus.get_mut(&sku) {
                s.pinned = false;
            }
            forgot |= self.forget_if_unwatched(sku);
        }
        forgot
    }
}

/// The process's live stock state, shared by the subscriber task and every stream.
pub struct Hub {
    inner: Mutex<Inner>,
    batches: broadcast::Sender<Arc<Batch>>,
    sales: watch::Sender<Arc<SalesList>>,
    /// When `sales` was last read from MySQL (None: never).
    sales_read: Mutex<Option<Instant>>,
    sales_refresh: tokio::sync::Mutex<()>,
    closed: watch::Sender<bool>,
    watchers: AtomicUsize,
    max_watchers: usize,
    max_per_client: usize,
    resync: Duration,
    /// Woken when the set of skus followed changes (the feed subscribes and unsubscribes
    /// their channels).
    skus_changed: Notify,
}

impl Hub {
    pub fn new(max_watchers: usize, max_per_client: usize, resync: Duration) -> Self {
        metrics::gauge!("flashsale_live_watchers").set(0.0);
        metrics::counter!("flashsale_live_events_total").increment(0);
        metrics::counter!("flashsale_live_announcements_total").increment(0);
        metrics::gauge!("flashsale_live_channels").set(0.0);
        Hub {
            inner: Mutex::new(Inner::default()),
            batches: broadcast::channel(BATCH_BUFFER).0,
            sales: watch::channel(Arc::new(SalesList { rows: Vec::new() })).0,
            sales_read: Mutex::new(None),
            sales_refresh: tokio::sync::Mutex::new(()),
            closed: watch::channel(false).0,
            watchers: AtomicUsize::new(0),
            max_watchers,
            max_per_client,
            resync,
            skus_changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams open now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Counts a new stream of `client` (None: an in-process call): 429 `rate_limited` beyond
    /// `live_max_per_client` for that client, 503 `unavailable` beyond `live_max_watchers`.
    /// Returns the client key the stream is counted under.
    fn admit(&self, g: &mut Inner, client: Option<IpAddr>) -> AppResult<Option<ClientKey>> {
        let key = client.map(ClientKey::of);
        if let Some(k) = key
            && g.clients.get(&k).copied().unwrap_or(0) >= self.max_per_client
        {
            metrics::counter!("flashsale_rate_limited_total", "scope" => "live_ip").increment(1);
            return Err(AppError::RateLimited {
                message: format!(
                    "{} live streams are open from this address, the most one client may \
                     hold; close one or retry in {PER_CLIENT_RETRY_SECS} s",
                    self.max_per_client
                ),
                retry_after_secs: PER_CLIENT_RETRY_SECS,
            });
        }
        if self.watchers.fetch_add(1, Ordering::AcqRel) >= self.max_watchers {
            self.watchers.fetch_sub(1, Ordering::AcqRel);
            return Err(AppError::Unavailable(format!(
                "{} live streams are open, the most this instance holds",
                self.max_watchers
            )));
        }
        if let Some(k) = key {
            *g.clients.entry(k).or_default() += 1;
        }
        metrics::gauge!("flashsale_live_watchers").increment(1.0);
        Ok(key)
    }

    /// Registers a stream of one sku for `client` (see [`Hub::admit`] for the caps).
    pub fn watch_sku(self: &Arc<Self>, sku: u32, client: Option<IpAddr>) -> AppResult<WatchGuard> {
        let mut g = self.lock();
        let client = self.admit(&mut g, client)?;
        let new = !g.skus.contains_key(&sku);
        g.skus.entry(sku).or_default().refs += 1;
        drop(g);
        if new {
            self.skus_changed.notify_one();
        }
        Ok(WatchGuard {
            hub: self.clone(),
            sku: Some(sku),
            client,
        })
    }

    /// Registers a stream of the live sales list for `client`.
    pub fn watch_sales(self: &Arc<Self>, client: Option<IpAddr>) -> AppResult<WatchGuard> {
        let mut g = self.lock();
        let client = self.admit(&mut g, client)?;
        g.sales_watchers += 1;
        Ok(WatchGuard {
            hub: self.clone(),
            sku: None,
            client,
        })
    }

    /// Streams open now from `client` (its key, see [`ClientKey`]).
    pub fn client_watchers(&self, client: IpAddr) -> usize {
        self.lock()
            .clients
            .get(&ClientKey::of(client))
            .copied()
            .unwrap_or(0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.batches.subscribe()
    }

    pub fn sales_changes(&self) -> watch::Receiver<Arc<SalesList>> {
        self.sales.subscribe()
    }

    /// Turns true when the service shuts down: streams end.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The id of the last batch sent.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// The count a watched sku's streams have (or are about to have) been told.
    pub fn current(&self, sku: u32) -> Option<i64> {
        let g = self.lock();
        let s = g.skus.get(&sku)?;
        s.sent.or(s.latest)
    }

    /// An announcement from the scripts (ignored for skus nobody watches).
    pub fn announce(&self, sku: u32, available: i64) {
        metrics::counter!("flashsale_live_announcements_total").increment(1);
        let mut g = self.lock();
        if let Some(s) = g.skus.get_mut(&sku) {
            s.version += 1;
            s.latest = Some(available);
            g.dirty.insert(sku);
        }
    }

    /// Resolves when the skus followed changed since the last time it resolved.
    pub async fn skus_changed(&self) {
        self.skus_changed.notified().await
    }

    /// The skus followed (watched by a stream, or on the live sales list while that is
    /// watched): the feed keeps their channels subscribed.
    pub fn skus(&self) -> Vec<u32> {
        self.lock().skus.keys().copied().collect()
    }

    /// The watched skus with their announcement version, before reading them afresh.
    pub fn watched(&self) -> Vec<(u32, u64)> {
        self.lock()
            .skus
            .iter()
            .map(|(sku, s)| (*sku, s.version))
            .collect()
    }

    /// A followed sku's announcement version (None: not followed), before reading it afresh.
    pub fn version(&self, sku: u32) -> Option<u64> {
        self.lock().skus.get(&sku).map(|s| s.version)
    }

    /// A count read from Redis when the sku's announcement version was `version`: applied
    /// unless an announcement came in meanwhile (which is at least as new).
    pub fn apply_read(&self, sku: u32, available: i64, version: u64) {
        let mut g = self.lock();
        let Some(s) = g.skus.get_mut(&sku) else {
            return;
        };
        if s.version != version {
            return;
        }
        s.latest = Some(available);
        if s.sent.is_none() {
            // The first count of a newly watched sku: its streams start with it.
            s.sent = Some(available);
        } else if s.sent != Some(available) {
            g.dirty.insert(sku);
        }
    }

    /// Broadcasts what changed since the last call, as one batch. Returns the changes sent.
    pub fn flush(&self) -> usize {
        let mut g = self.lock();
        if g.dirty.is_empty() {
            return 0;
        }
        let dirty: Vec<u32> = g.dirty.drain().collect();
        let mut changes = Vec::new();
        for sku in dirty {
            if let Some(s) = g.skus.get_mut(&sku)
                && let Some(v) = s.latest
                && s.sent != Some(v)
            {
                s.sent = Some(v);
                changes.push((sku, v));
            }
        }
        if changes.is_empty() {
            return 0;
        }
        changes.sort_unstable();
        g.seq += 1;
        let n = changes.len();
        let batch = Arc::new(Batch {
            seq: g.seq,
            changes,
        });
        drop(g);
        let _ = self.batches.send(batch);
        n
    }

    /// The current count of a sku for a stream that starts watching it: the hub's when it
    /// follows the sku already, else `read` (awaited only then: the count from Redis, loading
    /// the sku from MySQL if needed; 404 `not_found` for an unknown sku).
    pub async fn first_count(
        &self,
        sku: Sku,
        read: impl Future<Output = AppResult<i64>>,
    ) -> AppResult<i64> {
        if let Some(v) = self.current(sku.get()) {
            return Ok(v);
        }
        let version = self.version(sku.get()).unwrap_or(0);
        let v = read.await?;
        self.apply_read(sku.get(), v, version);
        Ok(self.current(sku.get()).unwrap_or(v))
    }

    /// The sales that have not ended, read from MySQL at most once per `live_resync` (however
    /// many streams start), with their skus followed while anyone watches the list; `count`
    /// reads the first count of a sku the hub does not follow yet (see [`Hub::first_count`]).
    pub async fn sales_list<F, Fut>(&self, db: &MySqlPool, count: F) -> AppResult<Arc<SalesList>>
    where
        F: Fn(Sku) -> Fut,
        Fut: Future<Output = AppResult<i64>>,
    {
        let fresh = |read: &Mutex<Option<Instant>>| {
            read.lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|t| t.elapsed() < self.resync)
        };
        if fresh(&self.sales_read) {
            return Ok(self.sales.borrow().clone());
        }
        let _one = self.sales_refresh.lock().await;
        if fresh(&self.sales_read) {
            return Ok(self.sales.borrow().clone());
        }
        self.refresh_sales(db, count).await
    }

    /// Reads the sales list from MySQL afresh (see [`Hub::sales_list`]).
    pub async fn refresh_sales<F, Fut>(&self, db: &MySqlPool, count: F) -> AppResult<Arc<SalesList>>
    where
        F: Fn(Sku) -> Fut,
        Fut: Future<Output = AppResult<i64>>,
    {
        let rows = db::unfinished_sales(db, chrono::Utc::now(), MAX_LIVE_SALES).await?;
        let list = SalesList { rows };
        let skus = list.skus();
        let changed = {
            let mut g = self.lock();
            let mut changed = g.unpin_where(|sku| skus.contains(&sku));
            for sku in &skus {
                changed |= !g.skus.contains_key(sku);
                g.skus.entry(*sku).or_default().pinned = true;
            }
            changed
        };
        if changed {
            self.skus_changed.notify_one();
        }
        for sku in &skus {
            if self.current(*sku).is_none() {
                let sku = Sku::parse(u64::from(*sku))?;
                self.first_count(sku, count(sku)).await?;
            }
        }
        *self.sales_read.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let list = Arc::new(list);
        self.sales.send_if_modified(|cur| {
            if **cur == *list {
                false
            } else {
                *cur = list.clone();
                true
            }
        });
        Ok(self.sales.borrow().clone())
    }

    /// Lets go of the sales list's skus when nobody watches it any more.
    pub fn unpin_if_unwatched(&self) {
        let mut g = self.lock();
        if g.sales_watchers > 0 {
            return;
        }
        let forgot = g.unpin_where(|_| false);
        drop(g);
        if forgot {
            self.skus_changed.notify_one();
        }
        *self.sales_read.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether a stream watches the live sales list.
    pub fn sales_watched(&self) -> bool {
        self.lock().sales_watchers > 0
    }
}

/// One open stream: counted while it lives, its sku followed.
pub struct WatchGuard {
    hub: Arc<Hub>,
    sku: Option<u32>,
    client: Option<ClientKey>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut g = self.hub.lock();
        let mut forgot = false;
        match self.sku {
            Some(sku) => {
                if let Some(s) = g.skus.get_mut(&sku) {
                    s.refs = s.refs.saturating_sub(1);
                }
                forgot = g.forget_if_unwatched(sku);
            }
            None => g.sales_watchers = g.sales_watchers.saturating_sub(1),
        }
        if let Some(k) = self.client
            && let Some(n) = g.clients.get_mut(&k)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.clients.remove(&k);
            }
        }
        drop(g);
        if forgot {
            self.hub.skus_changed.notify_one();
        }
        self.hub.watchers.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("flashsale_live_watchers").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_coalesced_per_tick_and_only_for_watched_skus() {
        let hub = Arc::new(Hub::new(10, 10, Duration::from_secs(5)));
        let mut rx = hub.subscribe();
        let guard = hub.watch_sku(7, None).unwrap();
        hub.apply_read(7, 100, 0);
        assert_eq!(hub.current(7), Some(100));
        for v in (90..100).rev() {
            hub.announce(7, v);
        }
        hub.announce(8, 5); // nobody watches 8
        assert_eq!(hub.flush(), 1);
        let b = rx.try_recv().unwrap();
        assert_eq!(b.changes, vec![(7, 90)]);
        assert_eq!(hub.flush(), 0, "nothing new");
        // A read that overlapped an announcement is not applied.
        let v = hub.watched()[0].1;
        hub.announce(7, 80);
        hub.apply_read(7, 85, v);
        hub.flush();
        assert_eq!(rx.try_recv().unwrap().changes, vec![(7, 80)]);
        drop(guard);
        assert!(hub.watched().is_empty(), "forgotten once unwatched");
        assert_eq!(hub.watchers(), 0);
    }

    #[test]
    fn the_feed_is_told_when_the_skus_followed_change() {
        let hub = Arc::new(Hub::new(10, 10, Duration::from_secs(5)));
        let woken = |hub: &Hub| futures::FutureExt::now_or_never(hub.skus_changed()).is_some();
        assert!(!woken(&hub));
        let a = hub.watch_sku(7, None).unwrap();
        assert!(woken(&hub), "a sku followed");
        let b = hub.watch_sku(7, None).unwrap();
        let _sales = hub.watch_sales(None).unwrap();
        assert!(!woken(&hub), "another stream of it changes nothing");
        assert_eq!(hub.skus(), vec![7]);
        drop(a);
        assert!(!woken(&hub), "still watched");
        drop(b);
        assert!(woken(&hub), "a sku let go");
        assert!(hub.skus().is_empty());
    }

    #[test]
    fn the_watcher_cap_holds() {
        let hub = Arc::new(Hub::new(2, 2, Duration::from_secs(5)));
        let a = hub.watch_sku(1, None).unwrap();
        let _b = hub.watch_sales(None).unwrap();
        assert!(matches!(
            hub.watch_sku(1, None),
            Err(AppError::Unavailable(_))
        ));
        drop(a);
        assert!(hub.watch_sku(1, None).is_ok());
    }

    #[test]
    fn one_client_holds_at_most_max_per_client_streams() {
        let hub = Arc::new(Hub::new(10, 2, Duration::from_secs(5)));
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let a = hub.watch_sku(1, ip("10.0.0.1")).unwrap();
        let _b = hub.watch_sales(ip("10.0.0.1")).unwrap();
        let refused = hub.watch_sales(ip("10.0.0.1"));
        assert!(matches!(
            refused,
            Err(AppError::RateLimited {
                retry_after_secs: 5,
                ..
            })
        ));
        assert_eq!(hub.watchers(), 2, "a refused stream is not counted");
        // Other clients are served; an IPv6 /64 is one client, its IPv4-mapped form too.
        let _c = hub.watch_sku(1, ip("10.0.0.2")).unwrap();
        let _d = hub.watch_sku(1, ip("2001:db8:1:2::1")).unwrap();
        let _e = hub.watch_sku(1, ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(hub.watch_sku(1, ip("2001:db8:1:2::77")).is_err());
        assert!(hub.watch_sku(1, ip("2001:db8:1:3::1")).is_ok());
        assert!(hub.watch_sku(1, ip("::ffff:10.0.0.1")).is_err());
        drop(a);
        assert_eq!(hub.client_watchers("10.0.0.1".parse().unwrap()), 1);
        assert!(hub.watch_sku(1, ip("10.0.0.1")).is_ok());
    }
}
