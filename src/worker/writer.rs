//! The outbox worker: reads decision events from the order partitions' streams with a consumer
//! group, writes orders, items, history and stock movements to MySQL in one transaction per
//! batch, then does the Redis follow-up (units sold or given back, written-back marks), publishes
//! the public order events, and only then acknowledges. Every step is idempotent, so a crash
//! anywhere means a redelivery, never a loss or a double count. Entries a crashed consumer left
//! pending are claimed by a live one after `claim_idle`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use sqlx::MySqlPool;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::app::AppState;
use crate::domain::{OrderEventKind, Sku};
use crate::error::{AppError, AppResult};
use crate::store::mysql::orders as db;
use crate::store::redis::keys::ORDER_PARTITIONS;
use crate::store::redis::outbox::OutboxEvent;

pub const GROUP: &str = "writers";
/// Failed attempts at one event before it is set aside in the dead-letter stream.
const MAX_ATTEMPTS: i64 = 5;

/// A fault to inject, for the crash tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Stop right after the MySQL commit: no Redis follow-up, no acknowledgement.
    AfterCommit,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub events: usize,
    pub dead_letters: usize,
}

type Entry = (u64, StreamId);

pub struct Writer {
    state: AppState,
    consumer: String,
}

impl Writer {
    pub fn new(state: AppState) -> Self {
        let consumer = state.instance.to_string();
        Writer { state, consumer }
    }

    /// A writer with another consumer name (tests: a second instance).
    pub fn named(state: AppState, consumer: &str) -> Self {
        Writer {
            state,
            consumer: consumer.to_string(),
        }
    }

    /// Creates the consumer group on every partition (from the start of each stream).
    pub async fn ensure_groups(&self) -> AppResult<()> {
        let mut conn = self.state.redis.conn();
        for p in 0..ORDER_PARTITIONS {
            let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.state.redis.keys.outbox(p))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Drains what is there now, without blocking: this consumer's pending entries, entries
    /// idle at other consumers past `claim_idle`, then new ones. What tests call.
    pub async fn run_once(&self, db: &MySqlPool, fault: Fault) -> AppResult<WriteStats> {
        self.ensure_groups().await?;
        let mut total = WriteStats::default();
        loop {
            let mut entries = self.read("0", None).await?;
            if entries.is_empty() {
                entries = self.claim(self.state.cfg.claim_idle).await?;
            }
            if entries.is_empty() {
                entries = self.read(">", None).await?;
            }
            if entries.is_empty() {
                return Ok(total);
            }
            let s = self.process(db, entries, fault).await?;
            total.events += s.events;
            total.dead_letters += s.dead_letters;
        }
    }

    /// Reads up to a batch from every partition: `id` "0" for this consumer's pending entries,
    /// ">" for new ones; `block` waits for new ones on a connection of its own.
    async fn read(&self, id: &str, block: Option<Duration>) -> AppResult<Vec<Entry>> {
        let keys: Vec<String> = (0..ORDER_PARTITIONS)
            .map(|p| self.state.redis.keys.outbox(p))
            .collect();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.state.cfg.worker_batch);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&keys);
        for _ in &keys {
            cmd.arg(id);
        }
        let reply: Option<StreamReadReply> = match block {
            Some(_) => {
                let mut conn = self
                    .state
                    .blocking
                    .get()
                    .await
                    .map_err(|e| AppError::Unavailable(format!("redis pool: {e}")))?;
                cmd.query_async(&mut *conn).await?
            }
            None => cmd.query_async(&mut self.state.redis.conn()).await?,
        };
        let index: HashMap<&str, u64> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i as u64))
            .collect();
        let mut out = Vec::new();
        for sk in reply.map(|r| r.keys).unwrap_or_default() {
            let p = index.get(sk.key.as_str()).copied().unwrap_or(0);
            out.extend(sk.ids.into_iter().map(|e| (p, e)));
        }
        Ok(out)
    }

    /// Takes over entries that sat unacknowledged at any consumer for `min_idle`.
    async fn claim(&self, min_idle: Duration) -> AppResult<Vec<Entry>> {
        let mut out = Vec::new();
        let mut conn = self.state.redis.conn();
        for p in 0..ORDER_PARTITIONS {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(self.state.redis.keys.outbox(p))
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(min_idle.as_millis() as u64)
                .arg("0")
                .arg("COUNT")
                .arg(self.state.cfg.worker_batch)
                .query_async(&mut conn)
                .await?;
            if !reply.claimed.is_empty() {
                metrics::counter!("flashsale_outbox_claimed_total")
                    .increment(reply.claimed.len() as u64);
            }
            out.extend(reply.claimed.into_iter().map(|e| (p, e)));
        }
        Ok(out)
    }

    async fn process(
        &self,
        db: &MySqlPool,
        entries: Vec<Entry>,
        fault: Fault,
    ) -> AppResult<WriteStats> {
        let mut stats = WriteStats::default();
        let mut events = Vec::with_capacity(entries.len());
        let mut acks: Vec<(u64, String)> = Vec::with_capacity(entries.len());
        for (p, e) in entries {
            match OutboxEvent::parse(p, &e.id, &e.map) {
                Ok(ev) => events.push((p, e.id, ev)),
                Err(why) => {
                    self.dead_letter(p, &e.id, &why).await?;
                    stats.dead_letters += 1;
                    acks.push((p, e.id));
                }
            }
        }
        if events.is_empty() {
            self.ack(&acks).await?;
            return Ok(stats);
        }
        match self.write(db, &events, fault).await {
            Ok(()) => {}
            Err(e @ AppError::Unavailable(_)) => return Err(e),
            Err(e) if fault != Fault::None => return Err(e),
            Err(e) if events.len() > 1 => {
                // One bad event must not hold the others back: write them one by one.
                tracing::warn!(error = %e, "outbox batch failed; writing its events one by one");
                for one in events {
                    match self.write(db, std::slice::from_ref(&one), fault).await {
                        Ok(()) => {
                            stats.events += 1;
                            acks.push((one.0, one.1));
                        }
                        Err(e @ AppError::Unavailable(_)) => {
                            self.ack(&acks).await?;
                            return Err(e);
                        }
                        Err(e) => {
                            if self.give_up(&one, &e).await? {
                                stats.dead_letters += 1;
                                acks.push((one.0, one.1));
                            }
                        }
                    }
                }
                self.ack(&acks).await?;
                return Ok(stats);
            }
            Err(e) => {
                let one = &events[0];
                if self.give_up(one, &e).await? {
                    stats.dead_letters += 1;
                    acks.push((one.0, one.1.clone()));
                    self.ack(&acks).await?;
                    return Ok(stats);
                }
                self.ack(&acks).await?;
                return Err(e);
            }
        }
        stats.events += events.len();
        acks.extend(events.into_iter().map(|(p, id, _)| (p, id)));
        self.ack(&acks).await?;
        Ok(stats)
    }

    /// Counts a failed attempt at an event; past MAX_ATTEMPTS sets it aside (true).
    async fn give_up(
        &self,
        (p, id, ev): &(u64, String, OutboxEvent),
        e: &AppError,
    ) -> AppResult<bool> {
        let key = format!("{}:outbox-attempts", self.state.redis.keys.prefix());
        let mut conn = self.state.redis.conn();
        let n: i64 = conn.hincr(&key, &ev.event_id, 1).await?;
        metrics::counter!("flashsale_outbox_retries_total").increment(1);
        if n < MAX_ATTEMPTS {
            tracing::warn!(order.id = ev.order_id, event.id = %ev.event_id, attempt = n, error = %e, "outbox event failed; will retry");
            return Ok(false);
        }
        tracing::error!(order.id = ev.order_id, event.id = %ev.event_id, error = %e, "outbox event failed {MAX_ATTEMPTS} times; set aside");
        self.dead_letter(*p, id, &e.to_string()).await?;
        let _: () = conn.hdel(&key, &ev.event_id).await?;
        Ok(true)
    }

    async fn dead_letter(&self, partition: u64, id: &str, why: &str) -> AppResult<()> {
        metrics::counter!("flashsale_outbox_dead_letters_total").increment(1);
        let mut conn = self.state.redis.conn();
        let _: String = conn
            .xadd(
                self.state.redis.keys.dead_letters(),
                "*",
                &[
                    ("partition", partition.to_string()),
                    ("stream_id", id.to_string()),
                    ("error", why.to_string()),
                ],
            )
            .await?;
        Ok(())
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
    ) -> AppResult<()> {
        let redis = &self.state.redis;
        let mut paid_lines: Vec<(Sku, u64)> = Vec::new();
        let mut dropped_lines: Vec<(Sku, u64)> = Vec::new();
        for (_, _, ev) in events {
            for item in &ev.items {
                let line = (Sku::parse(u64::from(item.sku))?, ev.order_id);
                match ev.kind {
                    OrderEventKind::Paid => paid_lines.push(line),
                    OrderEventKind::Cancelled
                    | OrderEventKind::Expired
                    | OrderEventKind::Failed => dropped_lines.push(line),
                    OrderEventKind::Created => {}
                }
            }
        }
        // Redis first (idempotent): paid lines sold, with where their units came from; lines of
        // cancelled orders given back (the request or the sweeper usually did it already).
        let mut movements: Vec<db::Movement> = Vec::new();
        for ((sku, order_id), c) in paid_lines
            .iter()
            .zip(redis.commit_sold_many(&paid_lines).await?)
        {
            movements.extend(c.alloc().iter().map(|(w, n)| db::Movement {
                order_id: *order_id,
                sku: *sku,
                warehouse_id: *w,
                units: *n,
            }));
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
            db::apply_events(&mut tx, &evs).await?;
            db::apply_movements(&mut tx, &movements).await?;
            tx.commit().await?;
            AppResult::Ok(())
        }
        .instrument(tx_span.clone())
        .await;
        if written.is_err() {
            tx_span.record("otel.status_code", "error");
        }
        written?;
        metrics::histogram!("flashsale_outbox_write_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if fault == Fault::AfterCommit {
            return Err(AppError::internal(
                "injected fault: stopped after the MySQL commit",
            ));
        }

        // Then Redis again: the written-back units leave `sold`; finished records get a TTL
        // (reads fall back to MySQL after); the public events go out.
        redis.mark_written_many(&paid_lines).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let ttl = self.state.cfg.order_cache_ttl.as_secs().max(1) as i64;
        let mut pipe = redis::pipe();
        for (_, _, ev) in events {
            if !ev.status.is_open() {
                pipe.expire(redis.keys.order(ev.order_id), ttl).ignore();
            }
            let payload = serde_json::to_string(&PublicEvent::of(ev))
                .map_err(|e| AppError::internal(format!("event json: {e}")))?;
            pipe.cmd("XADD")
                .arg(redis.keys.order_events())
                .arg("MAXLEN")
                .arg("~")
                .arg(1_000_000)
                .arg("*")
                .arg("event")
                .arg(payload)
                .ignore();
            metrics::counter!("flashsale_outbox_events_written_total", "type" => ev.kind.as_str())
                .increment(1);
            metrics::histogram!("flashsale_outbox_lag_seconds")
                .record((now_ms - ev.at_ms).max(0) as f64 / 1000.0);
        }
        let _: () = pipe.query_async(&mut redis.conn()).await?;
        Ok(())
    }

    /// Acknowledges and deletes written entries, so a stream's length is its backlog.
    async fn ack(&self, acks: &[(u64, String)]) -> AppResult<()> {
        if acks.is_empty() {
            return Ok(());
        }
        let mut by_partition: HashMap<u64, Vec<&str>> = HashMap::new();
        for (p, id) in acks {
            by_partition.entry(*p).or_default().push(id);
        }
        let mut pipe = redis::pipe();
        for (p, ids) in by_partition {
            let key = self.state.redis.keys.outbox(p);
            pipe.xack(&key, GROUP, &ids).ignore();
            pipe.xdel(&key, &ids).ignore();
        }
        let _: () = pipe.query_async(&mut self.state.redis.conn()).await?;
        Ok(())
    }

    /// Age of the oldest event not yet written back (0 when the outbox is empty): the worker's
    /// lag as it stands, whatever the reason.
    pub async fn oldest_age(&self) -> AppResult<Duration> {
        let mut pipe = redis::pipe();
        for p in 0..ORDER_PARTITIONS {
            pipe.cmd("XRANGE")
                .arg(self.state.redis.keys.outbox(p))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
        }
        let firsts: Vec<redis::streams::StreamRangeReply> =
            pipe.query_async(&mut self.state.redis.conn()).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let oldest = firsts
            .iter()
            .flat_map(|r| r.ids.first())
            .filter_map(|e| e.id.split_once('-')?.0.parse::<i64>().ok())
            .min();
        Ok(oldest.map_or(Duration::ZERO, |ms| {
            Duration::from_millis((now - ms).max(0) as u64)
        }))
    }

    /// Outbox backlog (entries not yet written) and entries delivered but not acknowledged.
    pub async fn backlog(&self) -> AppResult<(u64, u64)> {
        let mut pipe = redis::pipe();
        for p in 0..ORDER_PARTITIONS {
            let key = self.state.redis.keys.outbox(p);
            pipe.xlen(&key);
            pipe.cmd("XPENDING").arg(&key).arg(GROUP);
        }
        let raw: Vec<redis::Value> = pipe.query_async(&mut self.state.redis.conn()).await?;
        let (mut len, mut pending) = (0u64, 0u64);
        for pair in raw.chunks(2) {
            if let redis::Value::Int(n) = pair[0] {
                len += n as u64;
            }
            if let redis::Value::Array(items) = &pair[1]
                && let Some(redis::Value::Int(n)) = items.first()
            {
                pending += *n as u64;
            }
        }
        Ok((len, pending))
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

/// Writes back until `stop` turns true, blocking on the streams between batches.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let writer = Writer::new(state.clone());
    let mut backoff = Duration::from_millis(100);
    let mut last_claim = Instant::now();
    let mut groups_ready = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let step = async {
            if !groups_ready {
                writer.ensure_groups().await?;
                groups_ready = true;
            }
            let mut entries = writer.read("0", None).await?;
            if entries.is_empty() && last_claim.elapsed() >= state.cfg.claim_idle / 2 {
                last_claim = Instant::now();
                entries = writer.claim(state.cfg.claim_idle).await?;
            }
            if entries.is_empty() {
                // Below the 500 ms response timeout redis-rs gives a connection by default.
                entries = writer.read(">", Some(Duration::from_millis(250))).await?;
            }
            if !entries.is_empty() {
                writer.process(&state.db, entries, Fault::None).await?;
            }
            AppResult::Ok(())
        };
        // A batch under way is finished before stopping (reads block a quarter second at most).
        match step.await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                // A Redis that lost its data lost the consumer groups too.
                groups_ready = false;
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox write-back failed; the events stay pending");
                metrics::counter!("flashsale_outbox_retries_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
