//! The webhook sender: delivers the public order events (`<p>:order-events`, written by the
//! outbox writer once an order's change is in MySQL) to `FLASHSALE_WEBHOOK_URL`. It runs in a
//! task of its own, started only when that URL is set; nothing on the sale path waits for it.
//!
//! **Reading.** A consumer group `webhooks` on the stream (created from its start, `0`,
//! `MKSTREAM`; an existing group is kept), one consumer per instance (`AppState::instance`). Each
//! round it first re-reads this consumer's own pending entries (id `0`: the ones an error
//! interrupted), then takes over entries left pending at another consumer for `claim_idle` (an
//! instance that died: instance names change at every start), then blocks up to half a second
//! for new ones (`>`) on a connection of the dedicated pool, never on the shared multiplexed one.
//! The stream is shared with other readers, so delivered entries are only acknowledged (XACK),
//! never deleted.
//!
//! **Delivering.** Entries are posted one at a time, in stream order: the `event` field's JSON
//! verbatim as the body (`Content-Type: application/json`), with the headers
//! `X-Flashsale-Event-Id` (the event's `event_id`), `X-Flashsale-Timestamp` (unix seconds, taken
//! at each attempt) and `X-Flashsale-Signature: sha256=<hex>`, the HMAC-SHA256 of
//! `<timestamp>.<body>` under `FLASHSALE_WEBHOOK_SECRET` (see [`sign`]). Each request has 5 s;
//! redirects are not followed.
//!
//! **Retrying.** A 2xx answer acknowledges the entry. Any other answer, or a transport error, is
//! retried after `webhook_retry`, the delay doubling after each further failure (at most 60 s),
//! until `webhook_max_attempts` attempts were made; then the event is set aside in
//! `<p>:webhook-dead` (fields `event_id`, `stream_id`, `event`, `error`, `attempts`), acknowledged
//! and logged as an error, and the next event goes. An event blocks the ones behind it while it
//! is retried (order is kept per instance). While it waits, this consumer re-claims the entries it
//! still holds now and then, so another instance does not take them over as abandoned. The
//! attempt count lives in memory: a restart starts it again. An entry without a readable event (or
//! trimmed from the stream before delivery) is set aside at once.
//!
//! **At least once.** An entry is acknowledged only after its delivery (or setting aside), so a
//! crash, a Redis error or a shutdown in between means it is delivered again: receivers
//! deduplicate by `event_id`. With several instances, or after a takeover, events of one order
//! may arrive out of order (`at` tells their order). Waits and requests end at once on shutdown.
//!
//! **Metrics.** `flashsale_webhook_deliveries_total{outcome}`: `ok` (delivered), `failed` (each
//! failed attempt), `gave_up` (set aside).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::AppState;
use crate::error::{AppError, AppResult};

/// The consumer group of the webhook senders on the order-events stream.
pub const GROUP: &str = "webhooks";
/// Deadline of one delivery request (connecting included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest delay between two attempts at one event.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Entries read at a time.
const BATCH: usize = 64;
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_millis(500);

/// `sha256=<hex>`: the HMAC-SHA256 of `<timestamp>.<body>` under `secret`, as sent in
/// `X-Flashsale-Signature`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).expect("HMAC-SHA256 takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait after the `failed`-th failed attempt at an event: `first`, doubled for each failure
/// after the first, at most 60 s.
pub fn retry_delay(first: Duration, failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Events delivered (answered 2xx).
    pub delivered: usize,
    /// Events set aside in `<p>:webhook-dead`.
    pub gave_up: usize,
}

enum Outcome {
    Delivered,
    GaveUp,
    Stopped,
}

/// The part of an order event the sender reads; the body goes out as it is.
#[derive(serde::Deserialize)]
struct EventHead {
    event_id: String,
}

/// The entries of one read still held by this consumer, and when they were last re-claimed.
struct Held {
    ids: Vec<String>,
    touched: Instant,
}

pub struct Webhooks {
    state: AppState,
    consumer: String,
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
}

impl Webhooks {
    /// The sender of this instance; fails when no webhook URL is configured.
    pub fn new(state: AppState) -> AppResult<Self> {
        let consumer = state.instance.to_string();
        Self::named(state, &consumer)
    }

    /// A sender with another consumer name (tests: a second instance).
    pub fn named(state: AppState, consumer: &str) -> AppResult<Self> {
        let url = state
            .cfg
            .webhook_url
            .clone()
            .ok_or_else(|| AppError::internal("no webhook URL configured"))?;
        let secret = state
            .cfg
            .webhook_secret
            .clone()
            .unwrap_or_default()
            .into_bytes();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flashsale/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AppError::internal(format!("webhook client: {e}")))?;
        Ok(Webhooks {
            state,
            consumer: consumer.to_string(),
            client,
            url,
            secret,
        })
    }

    fn stream(&self) -> String {
        self.state.redis.keys.order_events()
    }

    fn dead_stream(&self) -> String {
        format!("{}:webhook-dead", self.state.redis.keys.prefix())
    }

    /// Creates the consumer group (from the start of the stream) unless it exists.
    pub async fn ensure_group(&self) -> AppResult<()> {
        let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.state.redis.conn())
            .await;
        match r {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Delivers what is there now without waiting for new entries: this consumer's pending
    /// entries, entries idle at other consumers past `claim_idle`, then new ones (retries and
    /// their delays included). Returns early when `stop` turns true. What tests call.
    pub async fn run_once(&self, stop: &mut watch::Receiver<bool>) -> AppResult<DeliveryStats> {
        self.ensure_group().await?;
        let mut stats = DeliveryStats::default();
        loop {
            let mut entries = self.read("0", None).await?;
            if entries.is_empty() {
                entries = self.claim().await?;
            }
            if entries.is_empty() {
                entries = self.read(">", None).await?;
            }
            if entries.is_empty() || !self.deliver_all(entries, &mut stats, stop).await? {
                return Ok(stats);
            }
        }
    }

    /// Reads up to a batch: `id` "0" for this consumer's pending entries, ">" for new ones;
    /// `block` waits for new ones on a pooled connection of its own.
    async fn read(&self, id: &str, block: Option<Duration>) -> AppResult<Vec<StreamId>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(BATCH);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.stream()).arg(id);
        let reply: Option<StreamReadReply> = match block {
            Some(b) => {
                let pooled = self
                    .state
                    .blocking
                    .get()
                    .await
                    .map_err(|e| AppError::Unavailable(format!("redis pool: {e}")))?;
                // A handle on the same socket whose response timeout outlasts the BLOCK (the
                // pool's connections give up after half a second by default).
                let mut conn = (*pooled).clone();
                conn.set_response_timeout(b + self.state.cfg.redis_timeout);
                cmd.query_async(&mut conn).await?
            }
            None => cmd.query_async(&mut self.state.redis.conn()).await?,
        };
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Takes over entries that sat unacknowledged at any consumer for `claim_idle`.
    async fn claim(&self) -> AppResult<Vec<StreamId>> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.stream())
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.state.cfg.claim_idle.as_millis() as u64)
            .arg("0")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut self.state.redis.conn())
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(
                events = reply.claimed.len(),
                "took over webhook deliveries left by another instance"
            );
        }
        Ok(reply.claimed)
    }

    /// Delivers entries in order; false when `stop` interrupted (the rest stay pending).
    async fn deliver_all(
        &self,
        entries: Vec<StreamId>,
        stats: &mut DeliveryStats,
        stop: &mut watch::Receiver<bool>,
    ) -> AppResult<bool> {
        let mut held = Held {
            ids: entries.iter().rev().map(|e| e.id.clone()).collect(),
            touched: Instant::now(),
        };
        for entry in &entries {
            match self.deliver(entry, &mut held, stop).await? {
                Outcome::Delivered => stats.delivered += 1,
                Outcome::GaveUp => stats.gave_up += 1,
                Outcome::Stopped => return Ok(false),
            }
            held.ids.pop();
        }
        Ok(true)
    }

    /// Delivers one entry, retrying until it succeeds, is given up, or `stop` turns true.
    async fn deliver(
        &self,
        entry: &StreamId,
        held: &mut Held,
        stop: &mut watch::Receiver<bool>,
    ) -> AppResult<Outcome> {
        let Some(body) = entry.get::<String>("event") else {
            let why = if entry.map.is_empty() {
                "the entry left the stream before it was delivered"
            } else {
                "the entry has no `event` field"
            };
            self.give_up(entry, "", "", why, 0).await?;
            return Ok(Outcome::GaveUp);
        };
        let event_id = match serde_json::from_str::<EventHead>(&body) {
            Ok(h) => h.event_id,
            Err(e) => {
                let why = format!("not an order event: {e}");
                self.give_up(entry, "", &body, &why, 0).await?;
                return Ok(Outcome::GaveUp);
            }
        };
        let max_attempts = self.state.cfg.webhook_max_attempts.max(1);
        let mut attempt = 0;
        loop {
            if *stop.borrow() {
                return Ok(Outcome::Stopped);
            }
            attempt += 1;
            self.keep_held(held).await;
            let result = tokio::select! {
                r = self.post(&event_id, &body) => r,
                _ = stopped(stop) => return Ok(Outcome::Stopped),
            };
            let why = match result {
                Ok(()) => {
                    let _: () = redis::cmd("XACK")
                        .arg(self.stream())
                        .arg(GROUP)
                        .arg(&entry.id)
                        .query_async(&mut self.state.redis.conn())
                        .await?;
                    metrics::counter!("flashsale_webhook_deliveries_total", "outcome" => "ok")
                        .increment(1);
                    tracing::debug!(event.id = %event_id, attempt, "webhook delivered");
                    return Ok(Outcome::Delivered);
                }
                Err(why) => why,
            };
            metrics::counter!("flashsale_webhook_deliveries_total", "outcome" => "failed")
                .increment(1);
            if attempt >= max_attempts {
                tracing::error!(event.id = %event_id, attempts = attempt, error = %why, "webhook delivery failed every attempt; the event is set aside in webhook-dead");
                self.give_up(entry, &event_id, &body, &why, attempt).await?;
                return Ok(Outcome::GaveUp);
            }
            let delay = retry_delay(self.state.cfg.webhook_retry, attempt);
            tracing::warn!(event.id = %event_id, attempt, error = %why, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed; will retry");
            if !self.wait(delay, held, stop).await {
                return Ok(Outcome::Stopped);
            }
        }
    }

    /// One attempt: Ok on a 2xx answer, else what went wrong.
    async fn post(&self, event_id: &str, body: &str) -> Result<(), String> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signature = sign(&self.secret, timestamp, body.as_bytes());
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Flashsale-Event-Id", event_id)
            .header("X-Flashsale-Timestamp", timestamp.to_string())
            .header("X-Flashsale-Signature", signature)
            .body(body.to_owned())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("answered HTTP {}", resp.status())),
            Err(e) => Err(error_chain(&e)),
        }
    }

    /// Sets an entry aside in `<p>:webhook-dead`, then acknowledges it (a crash in between
    /// repeats the dead letter, never loses the event).
    async fn give_up(
        &self,
        entry: &StreamId,
        event_id: &str,
        body: &str,
        why: &str,
        attempts: u32,
    ) -> AppResult<()> {
        if attempts == 0 {
            tracing::error!(stream.id = %entry.id, error = %why, "unreadable order event set aside in webhook-dead");
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(self.dead_stream())
            .arg("*")
            .arg("event_id")
            .arg(event_id)
            .arg("stream_id")
            .arg(&entry.id)
            .arg("event")
            .arg(body)
            .arg("error")
            .arg(why)
            .arg("attempts")
            .arg(attempts)
            .ignore();
        pipe.cmd("XACK")
            .arg(self.stream())
            .arg(GROUP)
            .arg(&entry.id)
            .ignore();
        let _: () = pipe.query_async(&mut self.state.redis.conn()).await?;
        metrics::counter!("flashsale_webhook_deliveries_total", "outcome" => "gave_up")
            .increment(1);
        Ok(())
    }

    /// Waits `delay` (re-claiming the held entries meanwhile); false when `stop` turned true.
    async fn wait(
        &self,
        delay: Duration,
        held: &mut Held,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            let slice = (deadline - now).min(self.keep_every());
            tokio::select! {
                _ = tokio::time::sleep(slice) => {}
                _ = stopped(stop) => return false,
            }
            self.keep_held(held).await;
        }
    }

    fn keep_every(&self) -> Duration {
        (self.state.cfg.claim_idle / 3).max(Duration::from_millis(100))
    }

    /// Re-claims the entries this consumer still holds when due, resetting their idle time, so
    /// that a long retry does not look like a dead instance to the others. Best effort: a miss
    /// only risks a duplicate delivery.
    async fn keep_held(&self, held: &mut Held) {
        if held.ids.is_empty() || held.touched.elapsed() < self.keep_every() {
            return;
        }
        held.touched = Instant::now();
        let r: Result<Vec<String>, redis::RedisError> = redis::cmd("XCLAIM")
            .arg(self.stream())
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(&held.ids)
            .arg("JUSTID")
            .query_async(&mut self.state.redis.conn())
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not re-claim the webhook deliveries under way");
        }
    }
}

/// Completes when `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// An error with its causes: reqwest's own message rarely says what failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Delivers order events until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let hooks = match Webhooks::new(state.clone()) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "webhook sender not started");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut group_ready = false;
    let mut last_claim: Option<Instant> = None;
    let mut stats = DeliveryStats::default();
    while !*stop.borrow() {
        let step = async {
            if !group_ready {
                hooks.ensure_group().await?;
                group_ready = true;
            }
            let mut entries = hooks.read("0", None).await?;
            if entries.is_empty()
                && last_claim.is_none_or(|t| t.elapsed() >= state.cfg.claim_idle / 2)
            {
                last_claim = Some(Instant::now());
                entries = hooks.claim().await?;
            }
            if entries.is_empty() {
                entries = hooks.read(">", Some(BLOCK)).await?;
            }
            hooks.deliver_all(entries, &mut stats, &mut stop).await
        };
        match step.await {
            Ok(true) => backoff = Duration::from_millis(100),
            Ok(false) => break,
            Err(e) => {
                // A Redis that lost its data lost the consumer group too.
                group_ready = false;
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "webhook sender: Redis failed; the events stay pending");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut stop) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::debug!(
        delivered = stats.delivered,
        gave_up = stats.gave_up,
        "webhook sender stopped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference values from `openssl dgst -sha256 -hmac <secret>` over `<timestamp>.<body>`.
        assert_eq!(
            sign(
                b"whsec-test",
                1_700_000_000,
                br#"{"event_id":"1-2-0","type":"paid"}"#
            ),
            "sha256=1b9ab2fe8514d69828c6fbc61ae0988ee3b24b9a24cb0d7451959eca1493cc24"
        );
        assert_eq!(
            sign(b"k", 1_700_000_000, b""),
            "sha256=5c2999a43333a6877f49c8003f235c4f6de40f85b1b7414b70bd470a8db53d97"
        );
        assert_ne!(
            sign(b"k", 1_700_000_001, b""),
            sign(b"k", 1_700_000_000, b"")
        );
    }

    #[test]
    fn retry_delays_double_up_to_a_minute() {
        let first = Duration::from_millis(500);
        let delays: Vec<u64> = (1..=10)
            .map(|n| retry_delay(first, n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [
                500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000
            ]
        );
        assert_eq!(retry_delay(first, u32::MAX), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(Duration::from_secs(3600), 1), MAX_RETRY_DELAY);
    }
}
