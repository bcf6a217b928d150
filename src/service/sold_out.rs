//! Sold-out answered in process: this instance's knowledge of which skus have nothing available,
//! so the crowd that arrives after a hot sku is gone costs Redis nothing.
//!
//! What it knows comes from two places: the scripts' announcements of every change of a sku's
//! `avail` (the live stock feed, src/worker/live.rs, delivers them in Redis's order), and the
//! replies of reservation calls (an `out_of_stock`, or the last unit taken). Both say, with a
//! zero count, how long Redis can tell it holds: until the sku's earliest reservation deadline.
//! A cart hold past its deadline and not yet given back (the sweeper does so within its
//! interval) is still its owner's to take again: Redis grants that customer's add though nothing
//! is available to anyone else, so no zero count is trusted past the next deadline, nor at all
//! while a reservation past its deadline waits for the sweeper. A sku is refused here only while
//! - the feed is subscribed (a lost subscription forgets everything: announcements made while it
//!   was down are lost), and
//! - its zero count was announced or confirmed by a reply within `sold_out_trust`, and before
//!   the deadline that announcement or reply named; past that the next request asks Redis
//!   again, and its answer renews or ends the knowledge. So a count that somehow never reached
//!   this instance refuses for at most `sold_out_trust`.
//!
//! Any announcement of units coming back (a cancel, an expiry, a restock, a reload) ends the
//! knowledge at once. A reply is applied only if no announcement of that sku came in since its
//! request asked (the announcement is at least as new), nor did the subscription change.
//! Redis still decides every success: this only refuses what Redis would refuse a moment earlier
//! or later.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::domain::Sku;
use crate::store::redis::SoldOutFor;

#[derive(Default)]
struct Inner {
    /// Bumped on every change of the subscription (lost or made).
    epoch: u64,
    subscribed: bool,
    /// Counts every announcement received.
    seq: u64,
    skus: HashMap<u32, Known>,
    /// `seq` when entries without a zero count were last dropped (to bound the map): a reply
    /// to a request that asked before it, of a sku without an entry, is not applied.
    pruned: u64,
}

/// Skus remembered before the ones not known sold out are dropped.
const MAX_REMEMBERED: usize = 4096;

#[derive(Default)]
struct Known {
    /// `seq` at this sku's latest announcement.
    announced: u64,
    /// Until when its count is known to be zero (None: not known to be).
    zero_until: Option<Instant>,
}

/// What a request saw when it asked, to apply its reply with (see [`SoldOut::check`]).
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    epoch: u64,
    seq: u64,
    /// When it asked: before Redis answered, so a deadline counted from here is not passed.
    at: Instant,
}

/// The answer of [`SoldOut::check`].
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// Known sold out (within the trust window): refuse without asking Redis.
    SoldOut,
    /// Ask Redis; hand its reply to [`SoldOut::reply`].
    Ask(Asked),
}

pub struct SoldOut {
    trust: Duration,
    inner: Mutex<Inner>,
    /// Requests refused here.
    refused: AtomicU64,
}

impl SoldOut {
    /// `trust` zero turns the in-process answer off.
    pub fn new(trust: Duration) -> Self {
        metrics::counter!("flashsale_sold_out_in_process_total").increment(0);
        SoldOut {
            trust,
            inner: Mutex::default(),
            refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `sku` is known sold out now; otherwise what to apply Redis's reply with.
    pub fn check(&self, sku: Sku) -> Check {
        let g = self.lock();
        if self.known(&g, sku) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flashsale_sold_out_in_process_total").increment(1);
            return Check::SoldOut;
        }
        Check::Ask(Asked {
            epoch: g.epoch,
            seq: g.seq,
            at: Instant::now(),
        })
    }

    fn known(&self, g: &Inner, sku: Sku) -> bool {
        g.subscribed
            && !self.trust.is_zero()
            && g.skus
                .get(&sku.get())
                .and_then(|k| k.zero_until)
                .is_some_and(|until| Instant::now() < until)
    }

    /// Whether `sku` is known sold out now (as [`SoldOut::check`], without counting a refusal).
    pub fn is_known(&self, sku: Sku) -> bool {
        self.known(&self.lock(), sku)
    }

    /// Requests this instance refused without asking Redis, since it started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Until when a zero count said at `from` to hold `holds` is trusted (`None`: not at all).
    fn until(&self, from: Instant, holds: SoldOutFor) -> Option<Instant> {
        let trusted = Instant::now() + self.trust;
        match holds {
            SoldOutFor::Unbounded => Some(trusted),
            SoldOutFor::Ms(ms) if ms > 0 => {
                Some(trusted.min(from + Duration::from_millis(ms as u64)))
            }
            // A reservation past its deadline waits for the sweeper: its owner may take it
            // again now, so Redis must be asked (and what was known before is not so any more).
            SoldOutFor::Ms(_) => None,
        }
    }

    /// Redis's reply to a request that asked with `asked`: `available` units of `sku` were left
    /// (an `out_of_stock`'s count, or the count after a reservation), and, with none left, how
    /// long that holds at most (`None`: not said; nothing learnt).
    pub fn reply(&self, sku: Sku, asked: Asked, available: i64, holds: Option<SoldOutFor>) {
        let mut g = self.lock();
        if available > 0 {
            // Nothing to learn: a zero count is ended by announcements, which come in order.
            return;
        }
        let Some(holds) = holds else { return };
        if !g.subscribed || g.epoch != asked.epoch {
            return;
        }
        // Counted from the asking, which came before Redis answered.
        let until = self.until(asked.at, holds);
        let pruned = g.pruned;
        match g.skus.get_mut(&sku.get()) {
            Some(k) if k.announced > asked.seq => {}
            Some(k) => k.zero_until = until,
            None if asked.seq < pruned || until.is_none() => {}
            None => {
                g.skus.insert(
                    sku.get(),
                    Known {
                        announced: 0,
                        zero_until: until,
                    },
                );
            }
        }
    }

    /// A script announced `sku`'s new available count (in Redis's order) and, with none
    /// available, how long that holds at most (`None`: not said, an older publisher's message;
    /// nothing learnt, but older replies are stale all the same).
    pub fn announce(&self, sku: u32, available: i64, holds: Option<SoldOutFor>) {
        let mut g = self.lock();
        g.seq += 1;
        let seq = g.seq;
        let until = if available > 0 {
            None
        } else {
            holds.map(|h| self.until(Instant::now(), h))
        };
        let k = g.skus.entry(sku).or_default();
        k.announced = seq;
        match until {
            Some(until) => k.zero_until = until,
            None if available > 0 => k.zero_until = None,
            None => {}
        }
        if g.skus.len() > MAX_REMEMBERED {
            let now = Instant::now();
            g.skus
                .retain(|_, k| k.zero_until.is_some_and(|until| now < until));
            g.pruned = seq;
        }
    }

    /// This instance gave units of `sku` back to Redis itself (an admin's addition): whatever
    /// zero it knew ends now, without waiting for the announcement's delivery (which the
    /// instance's next add could otherwise beat, refused for up to the trust window). Always
    /// safe: it only sends the next add to Redis, which decides; replies to requests made
    /// before are not applied.
    pub fn units_back(&self, sku: Sku) {
        let mut g = self.lock();
        g.seq += 1;
        let seq = g.seq;
        // An entry even when none was known: a zero reply to a request that asked before this
        // must not teach it afterwards.
        let k = g.skus.entry(sku.get()).or_default();
        k.announced = seq;
        k.zero_until = None;
    }

    /// The feed subscribed (`true`) or lost its subscription (`false`): either way what was
    /// known before may be stale, and replies to requests made before are not applied.
    pub fn subscribed(&self, on: bool) {
        let mut g = self.lock();
        g.epoch += 1;
        g.subscribed = on;
        g.skus.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNBOUNDED: Option<SoldOutFor> = Some(SoldOutFor::Unbounded);

    fn sku(n: u32) -> Sku {
        Sku::parse(u64::from(n)).unwrap()
    }

    fn asked(s: &SoldOut, n: u32) -> Asked {
        match s.check(sku(n)) {
            Check::Ask(a) => a,
            Check::SoldOut => panic!("sku {n} refused"),
        }
    }

    #[test]
    fn nothing_is_known_without_the_subscription() {
        let s = SoldOut::new(Duration::from_secs(60));
        let a = asked(&s, 1);
        s.reply(sku(1), a, 0, UNBOUNDED);
        s.announce(1, 0, UNBOUNDED);
        assert!(!s.is_known(sku(1)), "not subscribed: nothing is trusted");
        s.subscribed(true);
        s.announce(1, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)));
        assert!(matches!(s.check(sku(1)), Check::SoldOut));
        assert_eq!(s.refused(), 1);
        s.subscribed(false);
        assert!(!s.is_known(sku(1)), "a lost subscription forgets");
        s.subscribed(true);
        assert!(!s.is_known(sku(1)), "and a new one starts from nothing");
    }

    #[test]
    fn units_coming_back_end_it_at_once() {
        let s = SoldOut::new(Duration::from_secs(60));
        s.subscribed(true);
        s.announce(7, 0, UNBOUNDED);
        assert!(s.is_known(sku(7)));
        s.announce(7, 1, None);
        assert!(!s.is_known(sku(7)));
        assert!(!s.is_known(sku(8)), "other skus are not touched");
    }

    #[test]
    fn units_given_back_here_end_it_before_their_announcement() {
        let s = SoldOut::new(Duration::from_secs(60));
        s.subscribed(true);
        s.announce(5, 0, UNBOUNDED);
        assert!(s.is_known(sku(5)));
        s.units_back(sku(5));
        assert!(!s.is_known(sku(5)));
        // A zero reply to a request that asked before the units came is stale (nothing was
        // known of the sku before).
        let a = asked(&s, 6);
        s.units_back(sku(6));
        s.reply(sku(6), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(6)));
    }

    #[test]
    fn a_reply_older_than_an_announcement_is_not_applied() {
        let s = SoldOut::new(Duration::from_secs(60));
        s.subscribed(true);
        // Asked; then a unit came back (announced) before the zero reply was handled.
        let a = asked(&s, 3);
        s.announce(3, 1, None);
        s.reply(sku(3), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(3)));
        // The same with no entry for the sku before the announcement.
        let a = asked(&s, 4);
        s.announce(4, 2, None);
        s.reply(sku(4), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(4)));
        // Announcements of other skus do not stop a reply.
        let a = asked(&s, 5);
        s.announce(6, 2, None);
        s.reply(sku(5), a, 0, UNBOUNDED);
        assert!(s.is_known(sku(5)));
        // A reply to a request that asked before the subscription changed is not applied.
        let a = asked(&s, 9);
        s.subscribed(false);
        s.subscribed(true);
        s.reply(sku(9), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(9)));
    }

    #[test]
    fn a_reply_with_units_left_teaches_nothing() {
        let s = SoldOut::new(Duration::from_secs(60));
        s.subscribed(true);
        let a = asked(&s, 2);
        s.reply(sku(2), a, 3, UNBOUNDED);
        assert!(!s.is_known(sku(2)));
    }

    #[test]
    fn knowledge_lapses_after_the_trust_window() {
        let s = SoldOut::new(Duration::from_millis(30));
        s.subscribed(true);
        s.announce(1, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!s.is_known(sku(1)), "past the window Redis is asked again");
        let a = asked(&s, 1);
        s.reply(sku(1), a, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)), "and its answer renews it");
        let off = SoldOut::new(Duration::ZERO);
        off.subscribed(true);
        off.announce(1, 0, UNBOUNDED);
        assert!(!off.is_known(sku(1)), "a zero window turns it off");
    }

    #[test]
    fn the_map_stays_bounded_and_pruning_keeps_replies_safe() {
        let s = SoldOut::new(Duration::from_secs(60));
        s.subscribed(true);
        let a = asked(&s, 1);
        for n in 10..(10 + MAX_REMEMBERED as u32 + 10) {
            s.announce(n, 5, None);
        }
        assert!(s.lock().skus.len() <= MAX_REMEMBERED);
        // Sku 1 was never announced, but a reply that asked before the pruning cannot know.
        s.reply(sku(1), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(1)));
        let a = asked(&s, 1);
        s.reply(sku(1), a, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)));
    }

    /// A cart hold past its deadline, not yet given back, is its owner's to take again (Redis
    /// grants that add): no zero is trusted past the sku's next reservation deadline, nor while
    /// one is past, whether announced or replied.
    #[test]
    fn the_next_reservation_deadline_bounds_what_is_known() {
        let s = SoldOut::new(Duration::from_secs(60));
        s.subscribed(true);
        s.announce(1, 0, Some(SoldOutFor::Ms(30)));
        assert!(s.is_known(sku(1)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            !s.is_known(sku(1)),
            "past the earliest reservation deadline Redis is asked again"
        );
        s.announce(1, 0, Some(SoldOutFor::Ms(0)));
        assert!(!s.is_known(sku(1)), "a reservation past its deadline: ask");
        s.announce(1, 0, None);
        assert!(!s.is_known(sku(1)), "no bound said: nothing learnt");
        let a = asked(&s, 1);
        s.reply(sku(1), a, 0, None);
        assert!(!s.is_known(sku(1)), "nor from a reply");
        let a = asked(&s, 1);
        s.reply(sku(1), a, 0, Some(SoldOutFor::Ms(30)));
        assert!(s.is_known(sku(1)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!s.is_known(sku(1)));
        // Two requests asked; one answer knows no lapse, the later one saw a lapsed hold.
        let (a, b) = (asked(&s, 1), asked(&s, 1));
        s.reply(sku(1), a, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)));
        s.reply(sku(1), b, 0, Some(SoldOutFor::Ms(-5)));
        assert!(
            !s.is_known(sku(1)),
            "a reply that saw a lapsed hold ends it"
        );
        s.announce(1, 0, UNBOUNDED);
        s.announce(1, 0, None);
        assert!(
            s.is_known(sku(1)),
            "an announcement that says no bound keeps what was known"
        );
    }
}
