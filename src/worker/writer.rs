//! The outbox worker: reads decision events from the order partitions' streams with a consumer
//! group, writes orders, items, history and stock movements to MySQL in one transaction per
//! batch, then does the Redis follow-up (units sold or given back, written-back marks), publishes
//! the public order events, and only then acknowledges. Every step is idempotent, so a crash
//! anywhere means a redelivery, never a loss or a double count. Entries a crashed consumer left
//! pending are claimed by a live one after `claim_idle`. In the service, each partition is read
//! by one instance at a time, the holder of its lease (src/worker/partitions.rs).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::app::AppState;
use crate::domain::{OrderEventKind, OutboxEvent, Sku};
use crate::error::{AppError, AppResult};
use crate::store::mysql::orders as db;
use crate::store::redis::events::Published;
use crate::store::redis::keys::ORDER_PARTITIONS;
use crate::store::redis::outbox::{SetAsideReason, parse_event};
use crate::store::redis::streams::{StreamConsumer, StreamEntry};

pub const GROUP: &str = "writers";
/// A failing event is tried again after this, doubling per failure up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A fault to inject, for the crash tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Stop right after the MySQL commit: no Redis follow-up, no acknowledgement.
    AfterCommit,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Events written to MySQL.
    pub events: usize,
    /// Events set aside: they can never be written (unparseable, or their order id belongs to
    /// another order in MySQL). Kept whole for `flashsale outbox-dead`.
    pub set_aside: usize,
    /// Events that failed on their own this time and stay in the outbox, retried later.
    pub failing: usize,
}

/// Why a write-back failed, and so what happens to its events.
#[derive(Debug)]
enum Failure {
    /// MySQL or Redis cannot take writes now (down, deadlock, lock wait timeout, read-only,
    /// shutting down, a table missing, ...): every event waits in the outbox and the batch is
    /// tried again after a pause, for as long as it takes.
    Outage(AppError),
    /// This event failed on its own data: it is tried again alone, later, without holding the
    /// others back; never given up.
    Event(AppError),
    /// MySQL holds another order under the event's order id: set aside, never merged.
    Collision(String),
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Self {
        if error_kind(&e).1 {
            Failure::Outage(e)
        } else {
            Failure::Event(e)
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        AppError::from(e).into()
    }
}

/// MySQL errors about one event's data: trying the same event again gives the same answer, so
/// it is tried alone (after a pause) while the others go on.
const DATA_ERRORS: &[u16] = &[
    1048, // column cannot be null
    1062, // duplicate key
    1264, // out of range value
    1292, // incorrect datetime value
    1366, // incorrect string value
    1406, // data too long
    1452, // foreign key
    1690, // value out of range
    3819, // check constraint (MySQL)
    4025, // check constraint (MariaDB)
];

/// The label of a failed write-back attempt in `flashsale_outbox_retries_total`, and whether it
/// is an outage (nothing can be written now) rather than one event's problem.
fn error_kind(e: &AppError) -> (&'static str, bool) {
    let AppError::Internal(inner) = e else {
        return match e {
            // A transient MySQL server error (crate::error::mysql_transient) keeps its label.
            AppError::Unavailable(m) => (
                RETRY_KINDS
                    .iter()
                    .copied()
                    .find(|k| {
                        m.strip_prefix("mysql ")
                            .is_some_and(|r| r.starts_with(&format!("{k}:")))
                    })
                    .unwrap_or("unavailable"),
                true,
            ),
            _ => ("event", false),
        };
    };
    if crate::store::redis::is_redis_error(inner) {
        // A Redis server error (OOM, READONLY, LOADING, ...): every event meets it.
        return ("redis", true);
    }
    let Some(sqlx::Error::Database(db)) = inner.downcast_ref::<sqlx::Error>() else {
        return match inner.downcast_ref::<sqlx::Error>() {
            // Row decoding and the like: about the data at hand.
            Some(_) => ("event", false),
            // Our own checks (a paid line with less on hand than sold, ...).
            None => ("event", false),
        };
    };
    let number = db
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number());
    match number {
        Some(1213) => ("deadlock", true),
        Some(1205) => ("lock_wait_timeout", true),
        Some(1290 | 1836) => ("read_only", true),
        Some(1053) => ("server_shutdown", true),
        Some(1146) => ("missing_table", true),
        Some(n) if DATA_ERRORS.contains(&n) => ("event", false),
        // Any other server error is the server's trouble, not the event's: wait it out.
        _ => ("mysql", true),
    }
}

/// The labels of `flashsale_outbox_retries_total`.
pub const RETRY_KINDS: [&str; 9] = [
    "unavailable",
    "deadlock",
    "lock_wait_timeout",
    "read_only",
    "server_shutdown",
    "missing_table",
    "mysql",
    "redis",
    "event",
];

#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    next: Instant,
}

pub struct Writer {
    state: AppState,
    /// The consumer `writers` on every partition's stream (stream index = partition).
    stream: StreamConsumer,
    /// Events that failed on their own (`Failure::Event`), by event id: when to try again.
    retries: std::sync::Mutex<HashMap<String, Retry>>,
}

impl Writer {
    pub fn new(state: AppState) -> Self {
        let consumer = state.instance.to_string();
        Writer::named(state, &consumer)
    }

    /// A writer with another consumer name (tests: a second instance).
    pub fn named(state: AppState, consumer: &str) -> Self {
        let partitions = (0..ORDER_PARTITIONS)
            .map(|p| state.redis.keys.outbox(p))
            .collect();
        Writer {
            stream: StreamConsumer::new(&state.redis, partitions, GROUP, consumer),
            state,
            retries: Default::default(),
        }
    }

    fn retries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Retry>> {
        self.retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn state(&self) -> &AppState {
        &self.state
    }

    /// This writer's consumer name (the instance's): also the name its partition leases and
    /// its heartbeat go by.
    pub fn consumer(&self) -> &str {
        self.stream.consumer()
    }

    /// Whether an entry may be tried now: not an event waiting for its next attempt.
    pub(super) fn due(&self, e: &StreamEntry) -> bool {
        let key = format!("{}-{}", e.stream, e.id);
        let retries = self.retries();
        // A replayed event is known by its first id, but it is a new entry: due at once.
        retries.get(&key).is_none_or(|r| r.next <= Instant::now())
    }

    /// Notes a failed attempt at one event; it is tried again after a doubling pause.
    fn defer(&self, (p, id, ev): &(u64, String, OutboxEvent), e: &AppError) {
        let mut retries = self.retries();
        if retries.len() > 100_000 {
            // Entries of events another instance took over: they are simply due again.
            retries.clear();
        }
        let r = retries.entry(format!("{p}-{id}")).or_insert(Retry {
            attempts: 0,
            next: Instant::now(),
        });
        r.attempts += 1;
        let pause = RETRY_FIRST
            .saturating_mul(1 << (r.attempts - 1).min(16))
            .min(RETRY_MAX);
        r.next = Instant::now() + pause;
        let attempts = r.attempts;
        metrics::gauge!("flashsale_outbox_failing_events").set(retries.len() as f64);
        drop(retries);
        if attempts >= 10 {
            tracing::error!(order.id = ev.order_id, event.id = %ev.event_id, attempts, error = %e,
                "outbox event keeps failing; it stays in the outbox and is retried");
        } else {
            tracing::warn!(order.id = ev.order_id, event.id = %ev.event_id, attempts, error = %e,
                retry_in_ms = pause.as_millis() as u64, "outbox event failed; will retry");
        }
    }

    fn forget(&self, events: &[(u64, String, OutboxEvent)]) {
        let mut retries = self.retries();
        if retries.is_empty() {
            return;
        }
        for (p, id, _) in events {
            retries.remove(&format!("{p}-{id}"));
        }
        metrics::gauge!("flashsale_outbox_failing_events").set(retries.len() as f64);
    }

    /// Creates the consumer group on every partition (from the start of each stream).
    pub async fn ensure_groups(&self) -> AppResult<()> {
        self.stream.ensure_group().await
    }

    /// Creates the consumer group on partition `partition`'s stream.
    pub(super) async fn ensure_group(&self, partition: u64) -> AppResult<()> {
        self.stream.ensure_group_in(partition as usize).await
    }

    /// Drains what is there now in every partition, without blocking: this consumer's pending
    /// entries, entries idle at other consumers past `claim_idle`, then new ones. It takes no
    /// lease: what tests, `rebuild-cache` (which must drain every partition) and `simulate`
    /// call; the service's writer ([`run`]) reads only the partitions it holds.
    pub async fn run_once(&self, db: &MySqlPool, fault: Fault) -> AppResult<WriteStats> {
        self.ensure_groups().await?;
        let mut total = WriteStats::default();
        loop {
            let mut entries = self.read_pending().await?;
            entries.retain(|e| self.due(e));
            if entries.is_empty() {
                entries = self.claim(self.state.cfg.outbox.claim_idle).await?;
                entries.retain(|e| self.due(e));
            }
            if entries.is_empty() {
                entries = self.read_new().await?;
            }
            if entries.is_empty() {
                return Ok(total);
            }
            let s = self.process(db, entries, fault).await?;
            total.events += s.events;
            total.set_aside += s.set_aside;
            total.failing += s.failing;
        }
    }

    /// This consumer's pending entries, up to a batch from every partition.
    async fn read_pending(&self) -> AppResult<Vec<StreamEntry>> {
        self.stream
            .read_pending("0", self.state.cfg.outbox.worker_batch)
            .await
    }

    /// This consumer's pending entries in partition `partition`, up to a batch.
    pub(super) async fn read_pending_in(&self, partition: u64) -> AppResult<Vec<StreamEntry>> {
        self.stream
            .read_pending_in(partition as usize, "0", self.state.cfg.outbox.worker_batch)
            .await
    }

    /// New entries, up to a batch from every partition, without waiting.
    async fn read_new(&self) -> AppResult<Vec<StreamEntry>> {
        self.stream
            .read_new(self.state.cfg.outbox.worker_batch, None)
            .await
    }

    /// New entries of partition `partition`, up to a batch, waiting up to `block` for some on
    /// a connection of its own.
    pub(super) async fn read_new_in(
        &self,
        partition: u64,
        block: Duration,
    ) -> AppResult<Vec<StreamEntry>> {
        self.stream
            .read_new_in(
                partition as usize,
                self.state.cfg.outbox.worker_batch,
                Some(block),
            )
            .await
    }

    /// Takes over entries that sat unacknowledged at any consumer for `min_idle`, in every
    /// partition.
    async fn claim(&self, min_idle: Duration) -> AppResult<Vec<StreamEntry>> {
        let claimed = self
            .stream
            .claim_idle(min_idle, self.state.cfg.outbox.worker_batch)
            .await?;
        Ok(counted_claims(claimed))
    }

    /// Takes over entries of partition `partition` that sat unacknowledged at any consumer for
    /// `claim_idle` (a stopped instance's).
    pub(super) async fn claim_in(&self, partition: u64) -> AppResult<Vec<StreamEntry>> {
        let claimed = self
            .stream
            .claim_idle_in(
                partition as usize,
                self.state.cfg.outbox.claim_idle,
                self.state.cfg.outbox.worker_batch,
            )
            .await?;
        Ok(counted_claims(claimed))
    }

    /// Deletes the consumers of the `writers` group on partition `partition`'s stream that
    /// hold no pending entry and have been idle for `min_idle` (instances gone; never this
    /// one, never one with pending entries). Their names.
    pub async fn drop_stale_consumers(
        &self,
        partition: u64,
        min_idle: Duration,
    ) -> AppResult<Vec<String>> {
        self.stream
            .drop_idle_consumers(partition as usize, min_idle)
            .await
    }

    pub(super) async fn process(
        &self,
        db: &MySqlPool,
        entries: Vec<StreamEntry>,
        fault: Fault,
    ) -> AppResult<WriteStats> {
        let mut stats = WriteStats::default();
        let mut events = Vec::with_capacity(entries.len());
        for e in entries {
            let p = e.stream as u64;
            match parse_event(p, &e) {
                Ok(ev) => events.push((p, e.id, ev)),
                Err(why) => {
                    tracing::error!(partition = p, stream.id = %e.id, error = %why,
                        "unparseable outbox event; set aside for an operator (flashsale outbox-dead)");
                    if self
                        .set_aside(p, &e.id, SetAsideReason::Unparseable, &why)
                        .await?
                    {
                        stats.set_aside += 1;
                    }
                }
            }
        }
        if events.is_empty() {
            return Ok(stats);
        }
        let failure = match self.write(db, &events, fault).await {
            Ok(()) => {
                self.done(&events).await?;
                stats.events += events.len();
                return Ok(stats);
            }
            Err(f) => f,
        };
        let one_by_one = match failure {
            Failure::Outage(e) => return Err(self.outage(e, events.len())),
            _ if fault != Fault::None => {
                return Err(AppError::internal(format!("{failure:?}")));
            }
            f if events.len() == 1 => {
                self.settle(&events[0], f, &mut stats).await?;
                return Ok(stats);
            }
            Failure::Event(e) => e.to_string(),
            Failure::Collision(m) => m,
        };
        // One event's problem must not hold the others back: write them one by one.
        tracing::warn!(error = %one_by_one, events = events.len(), "outbox batch failed; writing its events one by one");
        for (i, one) in events.iter().enumerate() {
            match self.write(db, std::slice::from_ref(one), fault).await {
                Ok(()) => {
                    self.done(std::slice::from_ref(one)).await?;
                    stats.events += 1;
                }
                Err(Failure::Outage(e)) => {
                    return Err(self.outage(e, events.len() - i));
                }
                Err(f) => self.settle(one, f, &mut stats).await?,
            }
        }
        Ok(stats)
    }

    /// The batch waits in the outbox (not acknowledged): counted, and returned for the caller
    /// to pause before the next attempt.
    fn outage(&self, e: AppError, events: usize) -> AppError {
        let (kind, _) = error_kind(&e);
        metrics::counter!("flashsale_outbox_retries_total", "error" => kind).increment(1);
        tracing::warn!(error = %e, error.kind = kind, events, "outbox write-back failed; the events stay in the outbox");
        e
    }

    /// What becomes of one event that failed alone: set aside (collision) or retried later.
    async fn settle(
        &self,
        one: &(u64, String, OutboxEvent),
        failure: Failure,
        stats: &mut WriteStats,
    ) -> AppResult<()> {
        match failure {
            Failure::Collision(why) => {
                let ev = &one.2;
                tracing::error!(order.id = ev.order_id, user.id = ev.user_id, event.id = %ev.event_id, error = %why,
                    "order id collision: MySQL holds another order under this id; event set aside, not merged");
                metrics::counter!("flashsale_order_id_collisions_total").increment(1);
                if self
                    .set_aside(one.0, &one.1, SetAsideReason::Collision, &why)
                    .await?
                {
                    stats.set_aside += 1;
                }
                self.forget(std::slice::from_ref(one));
            }
            Failure::Event(e) => {
                let (kind, _) = error_kind(&e);
                metrics::counter!("flashsale_outbox_retries_total", "error" => kind).increment(1);
                self.defer(one, &e);
                stats.failing += 1;
            }
            Failure::Outage(e) => return Err(self.outage(e, 1)),
        }
        Ok(())
    }

    async fn set_aside(
        &self,
        partition: u64,
        id: &str,
        reason: SetAsideReason,
        why: &str,
    ) -> AppResult<bool> {
        let moved = self
            .state
            .redis
            .set_aside(partition, id, GROUP, reason, why)
            .await?;
        if moved {
            metrics::counter!("flashsale_outbox_set_aside_total", "reason" => reason.as_str())
                .increment(1);
        }
        Ok(moved)
    }

    /// Written: acknowledged and deleted.
    async fn done(&self, events: &[(u64, String, OutboxEvent)]) -> AppResult<()> {
        self.forget(events);
        let acks: Vec<(u64, String)> = events.iter().map(|(p, id, _)| (*p, id.clone())).collect();
        self.ack(&acks).await
    }

    /// The write-back of a batch: Redis pre-steps, one MySQL transaction, Redis follow-up,
    /// public events. Safe to repeat from any point.
    #[tracing::instrument(name = "outbox.write_back", level = "debug", skip_all,
        fields(events = events.len()))]
    async fn write(
        &self,
        db: &MySqlPool,
        events: &[(u64, String, OutboxEvent)],
        fault: Fault,
    ) -> Result<(), Failure> {
        let redis = &self.state.redis;
        let mut paid_lines: Vec<(Sku, u64)> = Vec::new();
        let mut paid: Vec<db::PaidLine> = Vec::new();
        let mut dropped_lines: Vec<(Sku, u64)> = Vec::new();
        for (_, _, ev) in events {
            for item in &ev.items {
                let sku = Sku::parse(u64::from(item.sku)).map_err(AppError::from)?;
                let line = (sku, ev.order_id);
                match ev.kind {
                    OrderEventKind::Paid => {
                        paid_lines.push(line);
                        paid.push(db::PaidLine {
                            order_id: ev.order_id,
                            sku,
                            units: item.count,
                            alloc: ev.alloc_of(item.sku).to_vec(),
                        });
                    }
                    OrderEventKind::Cancelled
                    | OrderEventKind::Expired
                    | OrderEventKind::Failed => dropped_lines.push(line),
                    OrderEventKind::Created => {}
                }
            }
        }
        // Redis first (idempotent): paid lines sold (the Redis side's bookkeeping); lines of
        // cancelled orders given back (the request or the sweeper usually did it already).
        // MySQL's figures come from the event alone: its lines and units, and where the units
        // came from. While Redis still holds a line, its ledger's warehouses are used (the same
        // as the event's, except for a line rebuild-cache reserved again: Redis's counters took
        // the ledger's); a line Redis no longer holds (written back before, or its sku's keys
        // lost) keeps the event's, or MySQL allocates it. Each line is applied once, keyed in
        // MySQL: a ledger missing in Redis changes nothing in MySQL's figures.
        for (line, c) in paid
            .iter_mut()
            .zip(redis.commit_sold_many(&paid_lines).await?)
        {
            if !c.alloc().is_empty() {
                line.alloc = c.alloc().to_vec();
            }
        }
        redis.release_lines(&dropped_lines).await?;

        let started = Instant::now();
        let tx_span = tracing::debug_span!(
            "mysql.transaction",
            otel.kind = "client",
            db.system = "mysql",
            db.operation.name = "write_back",
            otel.status_code = tracing::field::Empty,
            events = events.len(),
        );
        let written = async {
            let mut tx = db.begin().await?;
            let evs: Vec<&OutboxEvent> = events.iter().map(|(_, _, ev)| ev).collect();
            let collisions = db::apply_events(&mut tx, &evs).await?;
            if !collisions.is_empty() {
                // Rolled back: nothing of these events is written under another order's id.
                drop(tx);
                return AppResult::Ok(collisions);
            }
            db::apply_paid_lines(&mut tx, &paid).await?;
            tx.commit().await?;
            AppResult::Ok(collisions)
        }
        .instrument(tx_span.clone())
        .await;
        if written.is_err() {
            tx_span.record("otel.status_code", "error");
        }
        let collisions = written?;
        if !collisions.is_empty() {
            return Err(Failure::Collision(format!(
                "MySQL holds other orders under order ids {collisions:?} (another customer or \
                 creation time): not merged"
            )));
        }
        metrics::histogram!("flashsale_outbox_write_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if fault == Fault::AfterCommit {
            return Err(Failure::Outage(AppError::internal(
                "injected fault: stopped after the MySQL commit",
            )));
        }

        // Then Redis again: the written-back units leave `sold`; finished records get a TTL
        // (reads fall back to MySQL after); the public events go out.
        redis.mark_written_many(&paid_lines).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let ttl = self.state.cfg.outbox.order_cache_ttl.as_secs().max(1) as i64;
        let mut published = Vec::with_capacity(events.len());
        for (_, _, ev) in events {
            let payload = serde_json::to_string(&PublicEvent::of(ev))
                .map_err(|e| Failure::Event(AppError::internal(format!("event json: {e}"))))?;
            published.push(Published {
                order_id: ev.order_id,
                user_id: ev.user_id,
                finished: !ev.status.is_open(),
                payload,
            });
            metrics::counter!("flashsale_outbox_events_written_total", "type" => ev.kind.as_str())
                .increment(1);
            metrics::histogram!("flashsale_outbox_lag_seconds")
                .record((now_ms - ev.at_ms).max(0) as f64 / 1000.0);
        }
        redis
            .publish_written(&published, ttl, self.state.cfg.outbox.events_max_len)
            .await?;
        Ok(())
    }

    /// Acknowledges and deletes written entries, so a stream's length is its backlog.
    async fn ack(&self, acks: &[(u64, String)]) -> AppResult<()> {
        let entries: Vec<(usize, &str)> = acks
            .iter()
            .map(|(p, id)| (*p as usize, id.as_str()))
            .collect();
        self.stream.ack_and_delete(&entries).await
    }

    /// Age of the oldest event not yet written back (0 when the outbox is empty): the worker's
    /// lag as it stands, whatever the reason.
    pub async fn oldest_age(&self) -> AppResult<Duration> {
        self.state.redis.outbox_oldest_age().await
    }

    /// Outbox backlog (entries not yet written) and entries delivered but not acknowledged.
    pub async fn backlog(&self) -> AppResult<(u64, u64)> {
        self.state.redis.outbox_backlog(GROUP).await
    }
}

/// The stable shape of an order event for other systems (the `order-events` stream and the
/// webhooks). Consumers deduplicate by `event_id`: delivery is at least once.
#[derive(serde::Serialize)]
pub struct PublicEvent<'a> {
    pub event_id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub order_id: u64,
    pub user_id: u64,
    pub status: &'static str,
    pub total_price: u64,
    pub items: &'a [crate::domain::OrderItem],
    pub cancel_reason: Option<&'a str>,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl<'a> PublicEvent<'a> {
    pub fn of(ev: &'a OutboxEvent) -> Self {
        PublicEvent {
            event_id: &ev.event_id,
            kind: ev.kind.as_str(),
            order_id: ev.order_id,
            user_id: ev.user_id,
            status: ev.status.as_str(),
            total_price: ev.total_price,
            items: &ev.items,
            cancel_reason: ev.cancel_reason.as_deref(),
            at: crate::service::from_ms(ev.at_ms),
        }
    }
}

/// Writes back until `stop` turns true: the partitions this instance holds, each read by a
/// reader of its own (src/worker/partitions.rs), their entries written here.
pub async fn run(state: AppState, stop: watch::Receiver<bool>) {
    super::partitions::run(std::sync::Arc::new(Writer::new(state)), stop).await
}

/// Counts entries taken over from other consumers.
fn counted_claims(claimed: Vec<StreamEntry>) -> Vec<StreamEntry> {
    if !claimed.is_empty() {
        metrics::counter!("flashsale_outbox_claimed_total").increment(claimed.len() as u64);
    }
    claimed
}
