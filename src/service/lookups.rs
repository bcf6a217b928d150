//! What keeps product lookups that reach MySQL cheap: skus MySQL said it does not know are
//! remembered for a while (in this process, bounded), concurrent loads of one sku are done
//! once, and the loads together take at most half of the MySQL pool, so a flood of lookups
//! never leaves the rest of the service (and `/readyz`) without a connection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedMutexGuard, Semaphore, SemaphorePermit};

use crate::error::{AppError, AppResult};

/// Unknown skus remembered at most (two generations of half as many each): about 2 MB.
pub const UNKNOWN_SKUS_MAX: usize = 65_536;

/// Skus MySQL did not know, for at most `2 * ttl` (usually at least `ttl`; less only when more
/// than half of [`UNKNOWN_SKUS_MAX`] new ones come within `ttl`): two generations, the older
/// dropped whole when the newer is `ttl` old or full. Lookups and inserts are O(1); memory is bounded.
struct Unknown {
    ttl: Duration,
    current: HashSet<u32>,
    previous: HashSet<u32>,
    started: Instant,
    /// Products created here so far: a lookup that began before one was created does not
    /// mark its sku unknown (it may have read MySQL before the insert).
    created: u64,
}

impl Unknown {
    fn rotate_if_due(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age >= self.ttl * 2 {
            self.previous.clear();
            self.current.clear();
            self.started = now;
        } else if age >= self.ttl {
            // Generations stay aligned to `ttl`: an entry is dropped at most `2 * ttl` after
            // its generation started, however rarely lookups come.
            self.previous = std::mem::take(&mut self.current);
            self.started += self.ttl;
        } else if self.current.len() >= UNKNOWN_SKUS_MAX / 2 {
            self.previous = std::mem::take(&mut self.current);
            self.started = now;
        }
    }
}

pub struct Lookups {
    unknown: Mutex<Unknown>,
    loading: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    loads: Semaphore,
    wait: Duration,
}

/// The right to load one sku: others loading the same sku wait for it.
pub struct LoadTurn<'a> {
    lookups: &'a Lookups,
    sku: u32,
    _turn: OwnedMutexGuard<()>,
}

impl Drop for LoadTurn<'_> {
    fn drop(&mut self) {
        let mut g = lock(&self.lookups.loading);
        // Ours and the map's: nobody else waits for this sku.
        if g.get(&self.sku).is_some_and(|m| Arc::strong_count(m) <= 2) {
            g.remove(&self.sku);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lookups {
    /// `ttl`: how long an unknown sku is remembered (at least; at most twice as long).
    /// `mysql_pool`: the pool's size (loads take at most half of it). `wait`: how long a load
    /// waits for its turn before answering 503.
    pub fn new(ttl: Duration, mysql_pool: u32, wait: Duration) -> Self {
        metrics::counter!("flashsale_unknown_sku_hits_total").increment(0);
        Lookups {
            unknown: Mutex::new(Unknown {
                ttl,
                current: HashSet::new(),
                previous: HashSet::new(),
                started: Instant::now(),
                created: 0,
            }),
            loading: Mutex::new(HashMap::new()),
            loads: Semaphore::new((mysql_pool as usize / 2).max(1)),
            wait,
        }
    }

    /// Whether MySQL said lately that it has no such sku.
    pub fn is_unknown(&self, sku: u32) -> bool {
        let mut g = lock(&self.unknown);
        g.rotate_if_due(Instant::now());
        let hit = g.current.contains(&sku) || g.previous.contains(&sku);
        if hit {
            metrics::counter!("flashsale_unknown_sku_hits_total").increment(1);
        }
        hit
    }

    /// Taken before asking MySQL, handed to [`Lookups::mark_unknown`].
    pub fn epoch(&self) -> u64 {
        lock(&self.unknown).created
    }

    /// MySQL said it has no `sku` (asked after `epoch` was taken).
    pub fn mark_unknown(&self, sku: u32, epoch: u64) {
        let mut g = lock(&self.unknown);
        if g.created != epoch {
            return;
        }
        g.rotate_if_due(Instant::now());
        g.current.insert(sku);
    }

    /// The product was created here: known from now on.
    pub fn forget_unknown(&self, sku: u32) {
        let mut g = lock(&self.unknown);
        g.created += 1;
        g.current.remove(&sku);
        g.previous.remove(&sku);
    }

    /// Waits until no other request loads `sku` (single flight).
    pub async fn turn(&self, sku: u32) -> AppResult<LoadTurn<'_>> {
        let m = lock(&self.loading).entry(sku).or_default().clone();
        let Ok(guard) = tokio::time::timeout(self.wait, m.lock_owned()).await else {
            // Gave up: drop the entries nobody holds or waits for any more.
            lock(&self.loading).retain(|_, m| Arc::strong_count(m) > 1);
            return Err(busy(sku));
        };
        Ok(LoadTurn {
            lookups: self,
            sku,
            _turn: guard,
        })
    }

    /// One of the load slots (half the MySQL pool), waited for at most `wait`.
    pub async fn slot(&self, sku: u32) -> AppResult<SemaphorePermit<'_>> {
        match tokio::time::timeout(self.wait, self.loads.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy(sku)),
        }
    }
}

fn busy(sku: u32) -> AppError {
    metrics::counter!("flashsale_sku_load_timeouts_total").increment(1);
    AppError::Unavailable(format!(
        "sku {sku}: too many products are being loaded from MySQL right now"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_skus_are_remembered_for_ttl_to_twice_ttl_and_forgotten_on_create() {
        let l = Lookups::new(Duration::from_millis(100), 4, Duration::from_secs(1));
        l.mark_unknown(1, l.epoch());
        assert!(l.is_unknown(1));
        assert!(!l.is_unknown(2));
        let before = l.epoch();
        l.forget_unknown(1);
        assert!(!l.is_unknown(1));
        l.mark_unknown(1, before);
        assert!(
            !l.is_unknown(1),
            "a lookup older than the creation does not count"
        );
        l.mark_unknown(3, l.epoch());
        let now = Instant::now();
        {
            let mut g = lock(&l.unknown);
            g.rotate_if_due(now + Duration::from_millis(150));
            assert!(g.previous.contains(&3), "one rotation keeps it");
            g.rotate_if_due(now + Duration::from_millis(300));
            assert!(!g.previous.contains(&3) && !g.current.contains(&3));
        }
    }

    #[test]
    fn the_unknown_set_is_bounded() {
        let l = Lookups::new(Duration::from_secs(3600), 4, Duration::from_secs(1));
        for sku in 0..(UNKNOWN_SKUS_MAX as u32 * 3) {
            l.mark_unknown(sku, 0);
        }
        let g = lock(&l.unknown);
        assert!(g.current.len() + g.previous.len() <= UNKNOWN_SKUS_MAX);
        assert!(g.current.contains(&(UNKNOWN_SKUS_MAX as u32 * 3 - 1)));
    }

    #[tokio::test]
    async fn one_load_per_sku_at_a_time_and_the_map_empties() {
        let l = Lookups::new(Duration::from_secs(1), 4, Duration::from_millis(50));
        let a = l.turn(7).await.unwrap();
        assert!(matches!(l.turn(7).await, Err(AppError::Unavailable(_))));
        let b = l.turn(8).await.unwrap();
        drop(a);
        drop(b);
        assert!(lock(&l.loading).is_empty());
        let _c = l.turn(7).await.unwrap();
        let _s1 = l.slot(7).await.unwrap();
        let _s2 = l.slot(8).await.unwrap();
        assert!(matches!(l.slot(9).await, Err(AppError::Unavailable(_))));
    }
}
