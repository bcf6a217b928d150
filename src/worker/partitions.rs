//! Which outbox partitions this instance reads, and their readers. The 16 partitions' streams
//! (`<p>:{ord:K}:outbox`) are shared out between the instances that run the writer: each is read
//! by one instance at a time, the holder of its lease (`<p>:{ord:K}:reader`, in the partition's
//! own slot: lua/hold_lease.lua). Every second (every `reader_lease / 3` if that is shorter) an
//! instance notes itself in the writers' heartbeat (`<p>:outbox-readers`, lua/note_reader.lua), which also tells it how many
//! writers are alive, and so its fair share ([`fair_share`]: 16 over 2 instances is 8 each);
//! renews the leases it holds; lets go of partitions beyond its share (its reader finishes the
//! batch under way first, then the lease is deleted) and takes free ones up to it. An instance
//! that dies without stopping is forgotten by the heartbeat and its leases run out after
//! `reader_lease`; the others' shares grow and they take its partitions at their next tick, and
//! their readers take over its pending entries (XAUTOCLAIM) once idle past `claim_idle`. An
//! instance that stops lets go of its leases and leaves the heartbeat at once.
//!
//! Each partition held has a reader of its own, whose reads block (up to a quarter second) on a
//! connection of the dedicated pool: on a Redis Cluster the partitions are in 16 slots, and one
//! command cannot read several. The readers hand their entries to one write loop per instance,
//! which writes entries of several partitions together, up to `worker_batch`, one MySQL
//! transaction at a time (as one reader of every partition did): 16 concurrent write-backs would
//! only contend for the same stock rows. A reader waits until its entries are written before it
//! reads again, so no entry is read twice while it is under way.
//!
//! A lease decides who reads, not what is written: the write-back is idempotent, so an instance
//! that still writes a batch after its lease ran out (a stall longer than the lease) does no harm.
//!
//! The holder of a partition also deletes the `writers` group's consumers of its stream that
//! have been idle for an hour with nothing pending (instances gone: their names change at every
//! start); the holder of partition 0 does the same for the `webhooks` group on the order-events
//! stream. A consumer with pending entries is never deleted (lua/drop_idle_consumers.lua).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::writer::{Fault, Writer};
use crate::error::AppResult;
use crate::store::redis::keys::ORDER_PARTITIONS;
use crate::store::redis::streams::{StreamConsumer, StreamEntry};

/// How long a reader's read waits for new entries: a stop or a release is seen within it.
const BLOCK: Duration = Duration::from_millis(250);
/// Consumers idle this long with nothing pending are deleted.
pub const STALE_CONSUMER: Duration = Duration::from_secs(3600);
/// How often a holder looks for stale consumers.
const TIDY_EVERY: Duration = Duration::from_secs(600);
/// How often an instance looks at its leases at most (a shorter lease, a third of it): a
/// partition let go of is taken by another within it.
const TICK: Duration = Duration::from_secs(1);
/// The first pause after a failed read or write, doubling up to `PAUSE_MAX`.
const PAUSE_FIRST: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);

/// How many of `partitions` the instance `me` reads when the writers `live` are alive (`me`
/// counted whether listed or not): an equal share, the first `partitions % n` instances (in name
/// order) one more. The shares of all add up to `partitions`.
pub fn fair_share(partitions: u64, live: &[String], me: &str) -> usize {
    let (rank, n) = rank_of(live, me);
    (partitions / n + u64::from(rank < partitions % n)) as usize
}

/// The partitions in the order `me` prefers them: from its own place (`rank * partitions / n`)
/// onwards, wrapping. Instances take free partitions in this order and let go of the last ones
/// first, so each settles on a run of its own and two rarely reach for the same one.
pub fn preference(partitions: u64, live: &[String], me: &str) -> Vec<u64> {
    let (rank, n) = rank_of(live, me);
    let start = rank * partitions / n;
    (start..partitions).chain(0..start).collect()
}

/// `me`'s place among the live writers (name order) and how many they are, `me` included.
fn rank_of(live: &[String], me: &str) -> (u64, u64) {
    let mut all: Vec<&str> = live.iter().map(String::as_str).collect();
    all.push(me);
    all.sort_unstable();
    all.dedup();
    let rank = all.iter().position(|i| *i == me).unwrap_or(0);
    (rank as u64, all.len() as u64)
}

/// Which of the partitions read now (`active`) to let go of so that `target` are left: the last
/// ones in `order`.
pub fn to_release(order: &[u64], active: &[u64], target: usize) -> Vec<u64> {
    let extra = active.len().saturating_sub(target);
    order
        .iter()
        .rev()
        .filter(|p| active.contains(p))
        .take(extra)
        .copied()
        .collect()
}

/// Which partitions to take, `need` at most, first in `order`: those nobody holds (`holders`, by
/// partition) or `me` holds without reading them, and not among `busy` (read now, or being let
/// go of).
pub fn to_take(
    order: &[u64],
    holders: &[Option<String>],
    me: &str,
    busy: &[u64],
    need: usize,
) -> Vec<u64> {
    order
        .iter()
        .filter(|p| !busy.contains(p))
        .filter(|p| match holders.get(**p as usize) {
            Some(Some(h)) => h == me,
            _ => true,
        })
        .take(need)
        .copied()
        .collect()
}

/// Deletes the stale consumers this holder of `partitions` looks after: those of the `writers`
/// group on the partitions' streams and, with partition 0 among them, of the `webhooks` group on
/// the order-events stream, idle for `min_idle` with nothing pending (never `writer`'s own, never
/// one with pending entries). The (stream, consumer) pairs deleted.
pub async fn drop_stale_consumers(
    writer: &Writer,
    partitions: &[u64],
    min_idle: Duration,
) -> AppResult<Vec<(String, String)>> {
    let redis = &writer.state().redis;
    let mut dropped = Vec::new();
    for p in partitions {
        for name in writer.drop_stale_consumers(*p, min_idle).await? {
            dropped.push((redis.keys.outbox(*p), name));
        }
    }
    if partitions.contains(&0) {
        let events = StreamConsumer::new(
            redis,
            vec![redis.keys.order_events()],
            super::webhooks::GROUP,
            writer.consumer(),
        );
        for name in events.drop_idle_consumers(0, min_idle).await? {
            dropped.push((redis.keys.order_events(), name));
        }
    }
    Ok(dropped)
}

/// Entries a reader read, for the write loop; `done` tells the reader they were dealt with
/// (written, set aside, or left pending for another attempt).
struct Batch {
    entries: Vec<StreamEntry>,
    done: oneshot::Sender<()>,
}

/// A task aborted when its handle is dropped: the readers and the write loop end with [`run`]
/// however it ends (a task of a dropped `run` must not go on reading).
struct Task(JoinHandle<()>);

impl Task {
    fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Task(tokio::spawn(f))
    }

    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    async fn join(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reader of one partition held.
struct Reader {
    stop: watch::Sender<bool>,
    task: Task,
    /// Told to stop so that its lease can be let go of (beyond the fair share); the lease is
    /// renewed until the reader has finished.
    releasing: bool,
}

/// This instance's partitions: the leases it holds and their readers.
struct Partitions {
    writer: Arc<Writer>,
    me: String,
    lease: Duration,
    readers: BTreeMap<u64, Reader>,
    /// Readers whose lease was lost (another instance holds it): ending on their own.
    ending: Vec<Task>,
    tx: mpsc::Sender<Batch>,
    /// When every lease held was last renewed.
    renewed: Instant,
    tidied: Option<Instant>,
}

/// Reads the partitions this instance holds and writes their entries back until `stop` turns
/// true; then lets the readers finish their batches, lets go of the leases and leaves the
/// heartbeat. Dropped instead (the process killed), it leaves its leases to run out.
pub async fn run(writer: Arc<Writer>, mut stop: watch::Receiver<bool>) {
    let lease = writer.state().cfg.outbox.reader_lease;
    let (tx, rx) = mpsc::channel(ORDER_PARTITIONS as usize);
    let write_loop = Task::spawn(write_batches(writer.clone(), rx, stop.clone()));
    let mut parts = Partitions {
        me: writer.consumer().to_string(),
        writer,
        lease,
        readers: BTreeMap::new(),
        ending: Vec::new(),
        tx,
        renewed: Instant::now(),
        tidied: None,
    };
    loop {
        if *stop.borrow() {
            break;
        }
        if let Err(e) = parts.tick().await {
            parts.failed(e);
        }
        tokio::select! {
            _ = tokio::time::sleep((lease / 3).min(TICK)) => {}
            r = stop.changed() => if r.is_err() { break },
        }
    }
    parts.stop(write_loop).await;
}

impl Partitions {
    /// One round: heartbeat, renewals, partitions let go of and taken, now and then the tidying.
    async fn tick(&mut self) -> AppResult<()> {
        let redis = &self.writer.state().redis;
        let live = redis.note_reader(&self.me, self.lease, true).await?;
        let target = fair_share(ORDER_PARTITIONS, &live, &self.me);
        let order = preference(ORDER_PARTITIONS, &live, &self.me);

        // Every lease held is renewed, also those being let go of (until their reader ended).
        let held: Vec<u64> = self.readers.keys().copied().collect();
        if !held.is_empty() {
            let kept = redis.hold_partitions(&held, &self.me, self.lease).await?;
            for (p, kept) in held.into_iter().zip(kept) {
                if !kept && let Some(r) = self.readers.remove(&p) {
                    tracing::warn!(
                        partition = p,
                        "lost the lease of an outbox partition (renewed too late): another \
                         instance reads it now"
                    );
                    let _ = r.stop.send(true);
                    self.ending.push(r.task);
                }
            }
        }
        self.renewed = Instant::now();
        self.ending.retain(|t| !t.is_finished());

        // Readers told to stop that have: their leases are let go of.
        let finished: Vec<u64> = self
            .readers
            .iter()
            .filter(|(_, r)| r.releasing && r.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        if !finished.is_empty() {
            redis.release_partitions(&finished, &self.me).await?;
            for p in &finished {
                self.readers.remove(p);
            }
            tracing::info!(partitions = ?finished, "let go of outbox partitions (beyond this instance's share)");
        }

        let active = self.active();
        if active.len() > target {
            for p in to_release(&order, &active, target) {
                if let Some(r) = self.readers.get_mut(&p) {
                    r.releasing = true;
                    let _ = r.stop.send(true);
                }
            }
        } else if active.len() < target {
            let holders = redis.partition_readers().await?;
            let busy: Vec<u64> = self.readers.keys().copied().collect();
            let free = to_take(&order, &holders, &self.me, &busy, target - active.len());
            if !free.is_empty() {
                let got = redis.hold_partitions(&free, &self.me, self.lease).await?;
                let taken: Vec<u64> = free
                    .into_iter()
                    .zip(got)
                    .filter_map(|(p, got)| got.then_some(p))
                    .collect();
                for p in &taken {
                    self.start_reader(*p);
                }
                if !taken.is_empty() {
                    tracing::info!(partitions = ?taken, writers = live.len(), share = target, "took outbox partitions");
                }
            }
        }
        let active = self.active();
        metrics::gauge!("flashsale_outbox_partitions_held").set(active.len() as f64);

        if !active.is_empty() && self.tidied.is_none_or(|t| t.elapsed() >= TIDY_EVERY) {
            self.tidied = Some(Instant::now());
            match drop_stale_consumers(&self.writer, &active, STALE_CONSUMER).await {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(
                        consumers = dropped.len(),
                        "deleted stream consumers of instances gone (idle, nothing pending)"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not look for stale stream consumers"),
            }
        }
        Ok(())
    }

    /// The partitions read now (not being let go of).
    fn active(&self) -> Vec<u64> {
        self.readers
            .iter()
            .filter(|(_, r)| !r.releasing)
            .map(|(p, _)| *p)
            .collect()
    }

    /// A round failed (Redis unreachable): the leases may run out meanwhile. Once they surely
    /// have, the readers stop (another instance may read their partitions by then).
    fn failed(&mut self, e: crate::error::AppError) {
        tracing::warn!(error = %e, "could not renew or take the outbox partitions' leases");
        if self.renewed.elapsed() >= self.lease && !self.readers.is_empty() {
            tracing::warn!(
                partitions = self.readers.len(),
                "the outbox partitions' leases ran out unrenewed: their readers stop"
            );
            for (_, r) in std::mem::take(&mut self.readers) {
                let _ = r.stop.send(true);
                self.ending.push(r.task);
            }
            metrics::gauge!("flashsale_outbox_partitions_held").set(0.0);
        }
    }

    fn start_reader(&mut self, partition: u64) {
        let (stop, stopped) = watch::channel(false);
        let task = Task::spawn(read_partition(
            self.writer.clone(),
            partition,
            self.tx.clone(),
            stopped,
        ));
        self.readers.insert(
            partition,
            Reader {
                stop,
                task,
                releasing: false,
            },
        );
    }

    /// A clean stop: the readers finish the batch under way, the write loop writes what it
    /// was given, then the leases are let go of and the heartbeat left, so the other instances
    /// take the partitions at their next tick.
    async fn stop(self, write_loop: Task) {
        let Partitions {
            writer,
            me,
            readers,
            ending,
            tx,
            ..
        } = self;
        for r in readers.values() {
            let _ = r.stop.send(true);
        }
        let held: Vec<u64> = readers.keys().copied().collect();
        for (_, r) in readers {
            r.task.join().await;
        }
        for t in ending {
            t.join().await;
        }
        // The write loop ends once every sender is gone and it wrote what it had.
        drop(tx);
        write_loop.join().await;
        let redis = &writer.state().redis;
        if let Err(e) = redis.release_partitions(&held, &me).await {
            tracing::warn!(error = %e, "could not let go of the outbox partitions; they run out after FLASHSALE_READER_LEASE");
        }
        if let Err(e) = redis
            .note_reader(&me, writer.state().cfg.outbox.reader_lease, false)
            .await
        {
            tracing::debug!(error = %e, "could not leave the outbox writers' heartbeat");
        }
        metrics::gauge!("flashsale_outbox_partitions_held").set(0.0);
    }
}

/// Reads partition `partition` until told to stop: this consumer's pending entries that are due
/// (a batch cut short, events waiting for their next attempt), entries idle past `claim_idle` at
/// another consumer (an instance gone) at once and then every `claim_idle / 2`, then new ones,
/// blocking on a connection of its own. Each batch read goes to the write loop, and the next
/// read waits until it was dealt with.
async fn read_partition(
    writer: Arc<Writer>,
    partition: u64,
    tx: mpsc::Sender<Batch>,
    mut stop: watch::Receiver<bool>,
) {
    let claim_every = writer.state().cfg.outbox.claim_idle / 2;
    let mut last_claim: Option<Instant> = None;
    let mut group_ready = false;
    let mut pause = PAUSE_FIRST;
    while !*stop.borrow() {
        let read = async {
            if !group_ready {
                writer.ensure_group(partition).await?;
                group_ready = true;
            }
            let mut entries = writer.read_pending_in(partition).await?;
            entries.retain(|e| writer.due(e));
            if entries.is_empty() && last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
                last_claim = Some(Instant::now());
                entries = writer.claim_in(partition).await?;
                entries.retain(|e| writer.due(e));
            }
            if entries.is_empty() {
                entries = writer.read_new_in(partition, BLOCK).await?;
            }
            AppResult::Ok(entries)
        };
        let entries = match read.await {
            Ok(entries) => {
                pause = PAUSE_FIRST;
                entries
            }
            Err(e) => {
                // A Redis that lost its data lost the consumer groups too.
                group_ready = false;
                tracing::warn!(partition, error = %e, retry_in_ms = pause.as_millis() as u64, "could not read an outbox partition");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
                pause = (pause * 2).min(PAUSE_MAX);
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        let (done, dealt_with) = oneshot::channel();
        if tx.send(Batch { entries, done }).await.is_err() {
            break;
        }
        // Not read again while under way (a stop waits for it too).
        let _ = dealt_with.await;
    }
}

/// Writes the readers' batches back, several partitions' together up to `worker_batch`, one
/// transaction at a time, until every reader is gone. After a failure (MySQL or Redis down) it
/// pauses, 100 ms doubling up to 5 s, before the readers read again.
async fn write_batches(
    writer: Arc<Writer>,
    mut rx: mpsc::Receiver<Batch>,
    mut stop: watch::Receiver<bool>,
) {
    let max = writer.state().cfg.outbox.worker_batch.max(1);
    let db = writer.state().db.clone();
    let mut carried: Option<Batch> = None;
    let mut pause = PAUSE_FIRST;
    loop {
        let first = match carried.take() {
            Some(b) => b,
            None => match rx.recv().await {
                Some(b) => b,
                None => break,
            },
        };
        let mut n = first.entries.len();
        let mut batches = vec![first];
        while n < max {
            match rx.try_recv() {
                Ok(b) if n + b.entries.len() <= max => {
                    n += b.entries.len();
                    batches.push(b);
                }
                Ok(b) => {
                    carried = Some(b);
                    break;
                }
                Err(_) => break,
            }
        }
        let mut entries = Vec::with_capacity(n);
        let mut dones = Vec::with_capacity(batches.len());
        for b in batches {
            entries.extend(b.entries);
            dones.push(b.done);
        }
        match writer.process(&db, entries, Fault::None).await {
            Ok(_) => pause = PAUSE_FIRST,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "outbox write-back failed; the events stay pending");
                if !*stop.borrow() {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => {}
                    }
                }
                pause = (pause * 2).min(PAUSE_MAX);
            }
        }
        for done in dones {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-{i:02}")).collect()
    }

    #[test]
    fn shares_add_up_and_differ_by_one_at_most() {
        for n in 1..=40 {
            let live = names(n);
            let shares: Vec<usize> = live
                .iter()
                .map(|me| fair_share(ORDER_PARTITIONS, &live, me))
                .collect();
            assert_eq!(
                shares.iter().sum::<usize>(),
                16,
                "{n} instances: {shares:?}"
            );
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} instances: {shares:?}");
        }
    }

    #[test]
    fn shares_of_a_few_instances() {
        let share = |live: &[String], me: &str| fair_share(16, live, me);
        assert_eq!(share(&names(1), "host-00"), 16);
        assert_eq!(share(&[], "alone"), 16, "an instance counts itself");
        let two = names(2);
        assert_eq!((share(&two, "host-00"), share(&two, "host-01")), (8, 8));
        let three = names(3);
        assert_eq!(
            three.iter().map(|m| share(&three, m)).collect::<Vec<_>>(),
            [6, 5, 5]
        );
        let five = names(5);
        assert_eq!(
            five.iter().map(|m| share(&five, m)).collect::<Vec<_>>(),
            [4, 3, 3, 3, 3]
        );
        // More instances than partitions: some read none.
        let many = names(20);
        assert_eq!(share(&many, "host-15"), 1);
        assert_eq!(share(&many, "host-16"), 0);
        // Not yet in the heartbeat (its note was lost): counted all the same; listed twice: once.
        let mut one = names(1);
        assert_eq!(share(&one, "host-01"), 8);
        one.push("host-00".into());
        assert_eq!(share(&one, "host-00"), 16);
    }

    #[test]
    fn preferences_start_apart_and_cover_every_partition() {
        let live = names(4);
        let starts: Vec<u64> = live.iter().map(|me| preference(16, &live, me)[0]).collect();
        assert_eq!(starts, [0, 4, 8, 12]);
        for me in &live {
            let mut order = preference(16, &live, me);
            order.sort_unstable();
            assert_eq!(order, (0..16).collect::<Vec<_>>());
        }
    }

    #[test]
    fn releases_the_last_preferred_and_takes_the_first_free() {
        let order: Vec<u64> = (8..16).chain(0..8).collect();
        assert_eq!(to_release(&order, &[0, 1, 8, 9], 2), [1, 0]);
        assert!(to_release(&order, &[0, 1], 2).is_empty());
        let mut holders = vec![Some("other".to_string()); 16];
        holders[3] = None;
        holders[9] = Some("me".into());
        holders[10] = None;
        holders[12] = None;
        // 9 is held by me but not read (a lost reply of a take): taken again.
        assert_eq!(to_take(&order, &holders, "me", &[10], 2), [9, 12]);
        assert_eq!(to_take(&order, &holders, "me", &[], 9), [9, 10, 12, 3]);
        assert!(to_take(&order, &holders, "me", &[], 0).is_empty());
    }

    /// The instances' rounds, played against each other with leases as a map: from any start
    /// (one instance holding everything, a newcomer, one gone), every partition ends up held by
    /// exactly one live instance, each holding its fair share.
    #[test]
    fn rounds_settle_on_the_fair_shares() {
        fn settle(live: &[String], holders: &mut [Option<String>]) {
            for _round in 0..6 {
                for me in live {
                    let target = fair_share(16, live, me);
                    let order = preference(16, live, me);
                    let active: Vec<u64> = (0..16)
                        .filter(|p| holders[*p as usize].as_deref() == Some(me.as_str()))
                        .collect();
                    for p in to_release(&order, &active, target) {
                        holders[p as usize] = None;
                    }
                    let need = target.saturating_sub(active.len());
                    for p in to_take(&order, holders, me, &active, need) {
                        if holders[p as usize].is_none() {
                            holders[p as usize] = Some(me.clone());
                        }
                    }
                }
            }
        }
        let count = |holders: &[Option<String>], me: &str| {
            holders.iter().filter(|h| h.as_deref() == Some(me)).count()
        };
        let mut holders: Vec<Option<String>> = vec![None; 16];
        let one = names(1);
        settle(&one, &mut holders);
        assert_eq!(count(&holders, "host-00"), 16);
        // A second instance comes: 8 and 8.
        let two = names(2);
        settle(&two, &mut holders);
        assert_eq!(
            (count(&holders, "host-00"), count(&holders, "host-01")),
            (8, 8)
        );
        // A third: 6, 5, 5, every partition held.
        let three = names(3);
        settle(&three, &mut holders);
        assert_eq!(
            three.iter().map(|m| count(&holders, m)).collect::<Vec<_>>(),
            [6, 5, 5]
        );
        // host-01 dies: its leases run out, the other two share everything.
        for h in holders.iter_mut() {
            if h.as_deref() == Some("host-01") {
                *h = None;
            }
        }
        let left = vec!["host-00".to_string(), "host-02".to_string()];
        settle(&left, &mut holders);
        assert_eq!(
            (count(&holders, "host-00"), count(&holders, "host-02")),
            (8, 8)
        );
        assert!(holders.iter().all(Option::is_some));
    }
}
