//! This process's memory of accounts read for token checks (src/service/tokens.rs): each
//! answer trusted for a short time, memory bounded. Kept apart from the checks, which need the
//! app's state, so that the state can hold it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::Account;

/// Accounts remembered at most (two generations of half as many each): a few MB.
pub const CHECKS_MAX: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Entry {
    account: Account,
    read_at: Instant,
}

/// Accounts read lately, each trusted for `ttl` after it was read: two generations, the older
/// dropped whole when the newer is `ttl` old or holds half of [`CHECKS_MAX`]. O(1) lookups and
/// inserts under one short lock; memory is bounded.
struct Generations {
    current: HashMap<u64, Entry>,
    previous: HashMap<u64, Entry>,
    started: Instant,
}

pub struct TokenChecks {
    ttl: Duration,
    max: usize,
    seen: Mutex<Generations>,
}

impl TokenChecks {
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, CHECKS_MAX)
    }

    fn with_capacity(ttl: Duration, max: usize) -> Self {
        TokenChecks {
            ttl,
            max: max.max(2),
            seen: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                started: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account as read less than `ttl` ago, if it was.
    pub(super) fn get(&self, user_id: u64) -> Option<Account> {
        let now = Instant::now();
        let g = self.lock();
        g.current
            .get(&user_id)
            .or_else(|| g.previous.get(&user_id))
            .filter(|e| now.saturating_duration_since(e.read_at) < self.ttl)
            .map(|e| e.account)
    }

    /// Remembers the account as read at `read_at` (taken before the read began, so the entry
    /// never outlives what it saw by more than `ttl`).
    pub(super) fn put(&self, user_id: u64, account: Account, read_at: Instant) {
        let now = Instant::now();
        let mut g = self.lock();
        let age = now.saturating_duration_since(g.started);
        if age >= self.ttl || g.current.len() >= self.max / 2 {
            g.previous = std::mem::take(&mut g.current);
            g.started = now;
        }
        if let Some(e) = g.current.get(&user_id).or_else(|| g.previous.get(&user_id))
            && e.read_at > read_at
        {
            // A newer read (or this instance's own change) is there already.
            return;
        }
        g.current.insert(user_id, Entry { account, read_at });
    }

    /// After a change made here: this instance knows the account at once.
    pub fn changed(&self, user_id: u64, account: Account) {
        let mut g = self.lock();
        g.previous.remove(&user_id);
        g.current.insert(
            user_id,
            Entry {
                account,
                read_at: Instant::now(),
            },
        );
    }

    /// Accounts remembered now (fresh or not), for tests.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    fn live(version: u32) -> Account {
        Account::Live {
            version,
            role: Role::Customer,
        }
    }

    #[test]
    fn an_account_is_trusted_for_the_ttl_only() {
        let c = TokenChecks::new(Duration::from_millis(50));
        assert_eq!(c.get(1), None);
        c.put(1, live(3), Instant::now());
        assert_eq!(c.get(1), Some(live(3)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(1), None, "stale after the ttl");
        // Read before the ttl began: never fresh.
        c.put(2, live(1), Instant::now() - Duration::from_millis(60));
        assert_eq!(c.get(2), None);
    }

    #[test]
    fn an_older_read_does_not_replace_a_newer_one() {
        let c = TokenChecks::new(Duration::from_secs(10));
        let before = Instant::now();
        c.changed(1, Account::Gone);
        c.put(1, live(0), before);
        assert_eq!(c.get(1), Some(Account::Gone));
    }

    #[test]
    fn memory_is_bounded() {
        let c = TokenChecks::with_capacity(Duration::from_secs(60), 100);
        for id in 0..10_000 {
            c.put(id, live(0), Instant::now());
        }
        assert!(c.len() <= 100, "{}", c.len());
        assert_eq!(c.get(9_999), Some(live(0)), "the newest are kept");
    }
}
