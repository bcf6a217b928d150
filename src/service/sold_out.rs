//! Sold-out answered in process: this instance's knowledge of which skus have nothing available,
//! so the crowd that arrives after a hot sku is gone costs Redis nothing.
//!
//! What it knows comes from two places: the scripts' announcements of every change of a sku's
//! `avail` (each sku on a sharded channel of its own, which the live stock feed,
//! src/worker/live.rs, subscribes while this instance has a use for the sku, and delivers in
//! Redis's order), and the replies of reservation calls (an `out_of_stock`, or the last unit
//! taken), with the feed's own read of the sku's count once its subscription is confirmed.
//! Each says, with a zero count, how long Redis can tell it holds: until the sku's earliest
//! reservation deadline. A cart hold past its deadline and not yet given back (the sweeper does
//! so within its interval) is still its owner's to take again: Redis grants that customer's add
//! though nothing is available to anyone else, so no zero count is trusted past the next
//! deadline, nor at all while a reservation past its deadline waits for the sweeper. A sku is
//! refused here only while
//! - its channel is subscribed, as Redis confirmed (a subscription lost forgets what was known
//!   of its skus: announcements made while it was down are lost), and what is known of it was
//!   learnt after that confirmation: a reply to a request that asked before it is not applied
//!   (the announcements between that reply and the subscription were never heard), and
//! - its zero count was announced or confirmed by a reply within `sold_out_trust`, and before
//!   the deadline that announcement or reply named; past that the next request asks Redis
//!   again, and its answer renews or ends the knowledge. So a count that somehow never reached
//!   this instance refuses for at most `sold_out_trust`.
//!
//! A sku seen with nothing available (a reply, an announcement, a refusal here) is *wanted*:
//! the feed subscribes its channel (and, once Redis confirms, reads its count afresh: that read
//! is what first teaches the zero) and keeps it subscribed until no zero was seen of it for
//! [`KEEP_SUBSCRIBED`]; at most [`MAX_WANTED`] skus are wanted at once (beyond, Redis answers).
//!
//! Any announcement of units coming back (a cancel, an expiry, a restock, a reload) ends the
//! knowledge at once. A reply is applied only if no announcement of that sku came in since its
//! request asked (the announcement is at least as new), nor did its subscription change.
//! Redis still decides every success: this only refuses what Redis would refuse a moment earlier
//! or later.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::domain::Sku;
use crate::store::redis::SoldOutFor;

#[derive(Default)]
struct Inner {
    /// Bumped every time every subscription is forgotten (the feed's connection made or lost).
    epoch: u64,
    /// Counts every announcement, and every confirmation or loss of a sku's subscription.
    seq: u64,
    skus: HashMap<u32, Known>,
    /// `seq` when entries without a zero count were last dropped (to bound the map): a reply
    /// to a request that asked before it, of a sku without an entry, is not applied.
    pruned: u64,
    /// Skus whose channel Redis confirmed subscribed, not lost or unsubscribed since.
    subscribed: HashSet<u32>,
    /// Skus seen with nothing available, and when last: the feed keeps their channels
    /// subscribed.
    wanted: HashMap<u32, Instant>,
}

/// Skus remembered before the ones not known sold out are dropped.
const MAX_REMEMBERED: usize = 4096;

/// How long a sku seen sold out stays subscribed after the last time it was seen so: a crowd
/// that keeps asking keeps it, a sku nobody asks for any more lets its channel go.
pub const KEEP_SUBSCRIBED: Duration = Duration::from_secs(60);

/// Most skus subscribed for this knowledge at once (each a channel on the feed's connection).
pub const MAX_WANTED: usize = 1024;

#[derive(Default)]
struct Known {
    /// `seq` at this sku's latest announcement, or confirmation or loss of its subscription.
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
    /// Woken when a sku becomes wanted (the feed subscribes it).
    wanted_changed: Notify,
}

impl SoldOut {
    /// `trust` zero turns the in-process answer off (and with it the subscriptions it wants).
    pub fn new(trust: Duration) -> Self {
        metrics::counter!("flashsale_sold_out_in_process_total").increment(0);
        SoldOut {
            trust,
            inner: Mutex::default(),
            refused: AtomicU64::new(0),
            wanted_changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `sku` is known sold out now; otherwise what to apply Redis's reply with.
    pub fn check(&self, sku: Sku) -> Check {
        let mut g = self.lock();
        if self.known(&g, sku) {
            // Seen sold out (here): its channel stays subscribed while the crowd keeps coming.
            if let Some(seen) = g.wanted.get_mut(&sku.get()) {
                *seen = Instant::now();
            }
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flashsale_sold_out_in_process_total").increment(1);
            return Check::SoldOut;
        }
        Check::Ask(Self::asked(&g))
    }

    fn asked(g: &Inner) -> Asked {
        Asked {
            epoch: g.epoch,
            seq: g.seq,
            at: Instant::now(),
        }
    }

    fn known(&self, g: &Inner, sku: Sku) -> bool {
        !self.trust.is_zero()
            && g.subscribed.contains(&sku.get())
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

    /// Notes that `sku` was seen with nothing available: wanted (its channel subscribed) for
    /// [`KEEP_SUBSCRIBED`] from now, within [`MAX_WANTED`].
    fn want(&self, g: &mut Inner, sku: u32) {
        if self.trust.is_zero() {
            return;
        }
        let now = Instant::now();
        if let Some(seen) = g.wanted.get_mut(&sku) {
            *seen = now;
            return;
        }
        if g.wanted.len() >= MAX_WANTED {
            g.wanted
                .retain(|_, seen| now.duration_since(*seen) < KEEP_SUBSCRIBED);
            if g.wanted.len() >= MAX_WANTED {
                return;
            }
        }
        g.wanted.insert(sku, now);
        self.wanted_changed.notify_one();
    }

    /// The skus whose channels this knowledge wants subscribed (those seen sold out within
    /// [`KEEP_SUBSCRIBED`]; older ones are let go here).
    pub fn wanted(&self) -> Vec<u32> {
        let mut g = self.lock();
        let now = Instant::now();
        g.wanted
            .retain(|_, seen| now.duration_since(*seen) < KEEP_SUBSCRIBED);
        g.wanted.keys().copied().collect()
    }

    /// Resolves when a sku became wanted since the last time it resolved.
    pub async fn wanted_changed(&self) {
        self.wanted_changed.notified().await
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
        self.want(&mut g, sku.get());
        let Some(holds) = holds else { return };
        // Applied only while the sku's channel is subscribed, and (below) only if its request
        // asked after the subscription was confirmed: a change between the reply and the
        // subscription would be unheard.
        if !g.subscribed.contains(&sku.get()) || g.epoch != asked.epoch {
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

    /// A new event of `sku` (an announcement, or its subscription confirmed or lost): replies
    /// to requests that asked before it are stale. Returns its entry.
    fn bump<'a>(&self, g: &'a mut Inner, sku: u32) -> &'a mut Known {
        g.seq += 1;
        let seq = g.seq;
        if g.skus.len() >= MAX_REMEMBERED && !g.skus.contains_key(&sku) {
            let now = Instant::now();
            g.skus
                .retain(|_, k| k.zero_until.is_some_and(|until| now < until));
            g.pruned = seq;
        }
        let k = g.skus.entry(sku).or_default();
        k.announced = seq;
        k
    }

    /// A script announced `sku`'s new available count (in Redis's order) and, with none
    /// available, how long that holds at most (`None`: not said, an older publisher's message;
    /// nothing learnt, but older replies are stale all the same).
    pub fn announce(&self, sku: u32, available: i64, holds: Option<SoldOutFor>) {
        let mut g = self.lock();
        let until = if available > 0 {
            None
        } else {
            self.want(&mut g, sku);
            holds.map(|h| self.until(Instant::now(), h))
        };
        let k = self.bump(&mut g, sku);
        match until {
            Some(until) => k.zero_until = until,
            None if available > 0 => k.zero_until = None,
            None => {}
        }
    }

    /// This instance gave units of `sku` back to Redis itself (an admin's addition): whatever
    /// zero it knew ends now, without waiting for the announcement's delivery (which the
    /// instance's next add could otherwise beat, refused for up to the trust window). Always
    /// safe: it only sends the next add to Redis, which decides; replies to requests made
    /// before are not applied.
    pub fn units_back(&self, sku: Sku) {
        let mut g = self.lock();
        // An entry even when none was known: a zero reply to a request that asked before this
        // must not teach it afterwards.
        self.bump(&mut g, sku.get()).zero_until = None;
    }

    /// Redis confirmed the subscription of `sku`'s channel: every later change of the sku is
    /// announced here. Nothing known before is kept (it may have missed changes); returns what
    /// to apply a read of the sku's count made from now on with (see [`SoldOut::reply`]).
    pub fn channel_subscribed(&self, sku: u32) -> Asked {
        let mut g = self.lock();
        g.subscribed.insert(sku);
        self.bump(&mut g, sku).zero_until = None;
        Self::asked(&g)
    }

    /// `sku`'s channel is no longer subscribed (let go, or lost): what is known of it is
    /// forgotten, and replies to requests made before are not applied.
    pub fn channel_unsubscribed(&self, sku: u32) {
        let mut g = self.lock();
        g.subscribed.remove(&sku);
        self.bump(&mut g, sku).zero_until = None;
    }

    /// Every subscription is gone (the feed's connection was lost, or made afresh): everything
    /// known is forgotten, and replies to requests made before are not applied.
    pub fn forget_all(&self) {
        let mut g = self.lock();
        g.epoch += 1;
        g.subscribed.clear();
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

    /// Subscribed and confirmed, as the feed does for a sku it follows.
    fn subscribed(s: &SoldOut, n: u32) {
        s.channel_subscribed(n);
    }

    #[test]
    fn nothing_is_known_of_a_sku_without_its_subscription() {
        let s = SoldOut::new(Duration::from_secs(60));
        let a = asked(&s, 1);
        s.reply(sku(1), a, 0, UNBOUNDED);
        s.announce(1, 0, UNBOUNDED);
        assert!(!s.is_known(sku(1)), "not subscribed: nothing is trusted");
        subscribed(&s, 1);
        assert!(
            !s.is_known(sku(1)),
            "what was learnt before the confirmation is not kept"
        );
        s.announce(1, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)));
        assert!(matches!(s.check(sku(1)), Check::SoldOut));
        assert_eq!(s.refused(), 1);
        s.announce(2, 0, UNBOUNDED);
        assert!(
            !s.is_known(sku(2)),
            "another sku's subscription says nothing"
        );
        s.forget_all();
        assert!(!s.is_known(sku(1)), "a lost connection forgets");
        subscribed(&s, 1);
        assert!(!s.is_known(sku(1)), "and a new one starts from nothing");
        s.announce(1, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)));
        s.channel_unsubscribed(1);
        assert!(!s.is_known(sku(1)), "a sku's lost subscription forgets it");
    }

    /// The race the per-sku subscription opens: Redis answers a request "sold out", the sku is
    /// subscribed only afterwards, and a unit that came back in between was announced to
    /// nobody here. A reply to a request that asked before the subscription was confirmed
    /// teaches nothing; the feed's read after the confirmation (or the next request) does.
    #[test]
    fn a_reply_to_a_request_that_asked_before_the_subscription_is_not_trusted() {
        let s = SoldOut::new(Duration::from_secs(60));
        let before = asked(&s, 3);
        // (Redis: sold out; a unit comes back, announced to nobody; then the SSUBSCRIBE.)
        let read = s.channel_subscribed(3);
        s.reply(sku(3), before, 0, UNBOUNDED);
        assert!(!s.is_known(sku(3)), "a zero from before the subscription");
        // The feed's read after the confirmation sees the unit; nothing is learnt.
        s.reply(sku(3), read, 1, None);
        assert!(!s.is_known(sku(3)));
        // Sold out again, now under the subscription: a reply teaches it.
        let a = asked(&s, 3);
        s.reply(sku(3), a, 0, UNBOUNDED);
        assert!(s.is_known(sku(3)));
        // A reply of a request that asked before the sku was let go and subscribed again
        // teaches nothing either.
        s.announce(3, 1, None);
        let a = asked(&s, 3);
        s.channel_unsubscribed(3);
        s.channel_subscribed(3);
        s.reply(sku(3), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(3)));
    }

    #[test]
    fn a_sku_seen_sold_out_is_wanted_until_it_is_not_seen_so() {
        let s = SoldOut::new(Duration::from_secs(60));
        assert!(s.wanted().is_empty());
        let a = asked(&s, 4);
        s.reply(sku(4), a, 2, None);
        assert!(s.wanted().is_empty(), "units left: nothing to follow");
        let a = asked(&s, 4);
        s.reply(sku(4), a, 0, UNBOUNDED);
        s.announce(5, 0, UNBOUNDED);
        let mut w = s.wanted();
        w.sort_unstable();
        assert_eq!(w, vec![4, 5], "replies and announcements of a zero");
        // The feed is woken for it.
        let woken = futures::FutureExt::now_or_never(s.wanted_changed());
        assert!(woken.is_some());
        // Let go once not seen sold out for KEEP_SUBSCRIBED.
        s.lock().wanted.insert(4, Instant::now() - KEEP_SUBSCRIBED);
        assert_eq!(s.wanted(), vec![5]);
        // A refusal here is a sighting too: a crowd refused in process keeps it.
        subscribed(&s, 5);
        s.announce(5, 0, UNBOUNDED);
        s.lock().wanted.insert(5, Instant::now() - KEEP_SUBSCRIBED);
        assert!(matches!(s.check(sku(5)), Check::SoldOut));
        assert_eq!(s.wanted(), vec![5]);
        // Bounded.
        for n in 100..(100 + MAX_WANTED as u32 + 10) {
            s.announce(n, 0, UNBOUNDED);
        }
        assert_eq!(s.wanted().len(), MAX_WANTED);
        // Off with the in-process answer.
        let off = SoldOut::new(Duration::ZERO);
        off.announce(1, 0, UNBOUNDED);
        assert!(off.wanted().is_empty());
    }

    #[test]
    fn units_coming_back_end_it_at_once() {
        let s = SoldOut::new(Duration::from_secs(60));
        subscribed(&s, 7);
        subscribed(&s, 8);
        s.announce(7, 0, UNBOUNDED);
        assert!(s.is_known(sku(7)));
        s.announce(7, 1, None);
        assert!(!s.is_known(sku(7)));
        assert!(!s.is_known(sku(8)), "other skus are not touched");
    }

    #[test]
    fn units_given_back_here_end_it_before_their_announcement() {
        let s = SoldOut::new(Duration::from_secs(60));
        subscribed(&s, 5);
        subscribed(&s, 6);
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
        for n in [3, 4, 5, 9] {
            subscribed(&s, n);
        }
        // Asked; then a unit came back (announced) before the zero reply was handled.
        let a = asked(&s, 3);
        s.announce(3, 1, None);
        s.reply(sku(3), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(3)));
        // The same with no zero known of the sku before the announcement.
        let a = asked(&s, 4);
        s.announce(4, 2, None);
        s.reply(sku(4), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(4)));
        // Announcements of other skus do not stop a reply.
        let a = asked(&s, 5);
        s.announce(6, 2, None);
        s.reply(sku(5), a, 0, UNBOUNDED);
        assert!(s.is_known(sku(5)));
        // A reply to a request that asked before the connection changed is not applied.
        let a = asked(&s, 9);
        s.forget_all();
        subscribed(&s, 9);
        s.reply(sku(9), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(9)));
    }

    #[test]
    fn a_reply_with_units_left_teaches_nothing() {
        let s = SoldOut::new(Duration::from_secs(60));
        subscribed(&s, 2);
        let a = asked(&s, 2);
        s.reply(sku(2), a, 3, UNBOUNDED);
        assert!(!s.is_known(sku(2)));
    }

    #[test]
    fn knowledge_lapses_after_the_trust_window() {
        let s = SoldOut::new(Duration::from_millis(30));
        subscribed(&s, 1);
        s.announce(1, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!s.is_known(sku(1)), "past the window Redis is asked again");
        let a = asked(&s, 1);
        s.reply(sku(1), a, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)), "and its answer renews it");
        let off = SoldOut::new(Duration::ZERO);
        subscribed(&off, 1);
        off.announce(1, 0, UNBOUNDED);
        assert!(!off.is_known(sku(1)), "a zero window turns it off");
    }

    #[test]
    fn the_map_stays_bounded_and_pruning_keeps_replies_safe() {
        let s = SoldOut::new(Duration::from_secs(60));
        subscribed(&s, 1);
        let a = asked(&s, 1);
        for n in 10..(10 + MAX_REMEMBERED as u32 + 10) {
            s.announce(n, 5, None);
        }
        assert!(s.lock().skus.len() <= MAX_REMEMBERED);
        assert!(
            !s.lock().skus.contains_key(&1),
            "the confirmation's entry was dropped too"
        );
        // A reply that asked before the pruning cannot know what the dropped entry said.
        s.reply(sku(1), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(1)));
        let a = asked(&s, 1);
        s.reply(sku(1), a, 0, UNBOUNDED);
        assert!(s.is_known(sku(1)));
        // A subscription confirmed before the pruning still stales a reply that asked before
        // the confirmation.
        let s = SoldOut::new(Duration::from_secs(60));
        let a = asked(&s, 2);
        subscribed(&s, 2);
        for n in 10..(10 + MAX_REMEMBERED as u32 + 10) {
            s.announce(n, 5, None);
        }
        s.reply(sku(2), a, 0, UNBOUNDED);
        assert!(!s.is_known(sku(2)));
    }

    /// A cart hold past its deadline, not yet given back, is its owner's to take again (Redis
    /// grants that add): no zero is trusted past the sku's next reservation deadline, nor while
    /// one is past, whether announced or replied.
    #[test]
    fn the_next_reservation_deadline_bounds_what_is_known() {
        let s = SoldOut::new(Duration::from_secs(60));
        subscribed(&s, 1);
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
