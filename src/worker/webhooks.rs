//! The webhook sender: delivers the public order events (`<p>:order-events`, written by the
//! outbox writer once an order's change is in MySQL) to `FLASHSALE_WEBHOOK_URL`. It runs in a
//! task of its own, started only when that URL is set; nothing on the sale path waits for it.
//!
//! **Reading.** A consumer group `webhooks` on the stream (created from its start, `0`,
//! `MKSTREAM`; an existing group is kept), one consumer per instance (`AppState::instance`). A
//! sender first reads this consumer's own pending entries (the ones a crash or an error
//! interrupted), takes over entries left pending at another consumer for `claim_idle` (an
//! instance that died: instance names change at every start) every `claim_idle / 2`, and reads
//! new ones (`>`), as many as it has free delivery slots; with nothing under way it blocks up to
//! half a second for new ones on a connection of the dedicated pool, never on the shared
//! multiplexed one. The stream is shared with other readers, so delivered entries are only
//! acknowledged (XACK), never deleted.
//!
//! **Delivering.** Up to `webhook_concurrency` events are under way at once (default 16), so a
//! slow receiver answer holds up one slot, not the events behind it: the `event` field's JSON
//! verbatim as the body (`Content-Type: application/json`), with the headers
//! `X-Flashsale-Event-Id` (the event's `event_id`), `X-Flashsale-Timestamp` (unix seconds, taken
//! at each attempt) and `X-Flashsale-Signature: sha256=<hex>`, the HMAC-SHA256 of
//! `<timestamp>.<body>` under `FLASHSALE_WEBHOOK_SECRET` (see [`sign`]). Each request has
//! `webhook_timeout` (5 s); redirects are not followed. Events are not kept in stream order.
//!
//! **Retrying.** A 2xx answer acknowledges the entry. Any other answer, or a transport error,
//! schedules that event alone for another attempt after `webhook_retry`, the delay doubling after
//! each further failure (at most 60 s), while the other events go on; after
//! `webhook_max_attempts` attempts the event is set aside in `<p>:webhook-dead` (fields
//! `event_id`, `stream_id`, `event`, `error`, `attempts`), acknowledged and logged as an error.
//! Events waiting for a retry are held in memory (at most `MAX_WAITING`; past it no new entries
//! are read until some are settled: the stream keeps them) and their entries re-claimed now and
//! then, so another instance does not take them over as abandoned. The attempt count lives in
//! memory: a restart starts it again. An entry without a readable event (or trimmed from the
//! stream before delivery) is set aside at once.
//!
//! **At least once.** An entry is acknowledged only after its delivery (or setting aside), so a
//! crash, a Redis error or a shutdown in between means it is delivered again: receivers
//! deduplicate by `event_id`, and check that `X-Flashsale-Timestamp` is recent (a replay window,
//! e.g. 5 minutes) before trusting a signature. Events of one order may arrive out of order
//! (`at` tells their order). Waits and requests end at once on shutdown.
//!
//! **Metrics.** `flashsale_webhook_deliveries_total{outcome}`: `ok` (delivered), `failed` (each
//! failed attempt), `gave_up` (set aside).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::store::redis::events::DeadDelivery;
use crate::store::redis::streams::{StreamConsumer, StreamEntry};

/// The consumer group of the webhook senders on the order-events stream.
pub const GROUP: &str = "webhooks";
/// The longest delay between two attempts at one event.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Failed events waiting for their retry at most; past it no new entries are read (the
/// stream keeps them) until some are delivered or set aside.
const MAX_WAITING: usize = 1024;
/// How often a sender with deliveries under way looks for new entries.
const POLL: Duration = Duration::from_millis(200);
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

/// The part of an order event the sender reads; the body goes out as it is.
#[derive(serde::Deserialize)]
struct EventHead {
    event_id: String,
}

/// One event to deliver: its stream entry, its event id, the body, and the attempts made.
struct Job {
    id: String,
    event_id: String,
    body: String,
    attempts: u32,
}

pub struct Webhooks {
    state: AppState,
    /// The consumer `webhooks` on the order-events stream (the only stream: index 0).
    stream: StreamConsumer,
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
            .webhooks
            .webhook_url
            .clone()
            .ok_or_else(|| AppError::internal("no webhook URL configured"))?;
        let secret = state
            .cfg
            .webhooks
            .webhook_secret
            .clone()
            .unwrap_or_default()
            .into_bytes();
        let client = reqwest::Client::builder()
            .timeout(state.cfg.webhooks.webhook_timeout)
            .connect_timeout(state.cfg.webhooks.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flashsale/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AppError::internal(format!("webhook client: {e}")))?;
        let stream = StreamConsumer::new(
            &state.redis,
            vec![state.redis.keys.order_events()],
            GROUP,
            consumer,
        );
        Ok(Webhooks {
            state,
            stream,
            client,
            url,
            secret,
        })
    }

    /// Creates the consumer group (from the start of the stream) unless it exists.
    pub async fn ensure_group(&self) -> AppResult<()> {
        self.stream.ensure_group().await
    }

    /// Delivers what is there now without waiting for new entries: this consumer's pending
    /// entries, entries idle at other consumers past `claim_idle`, then new ones (retries and
    /// their delays included). Returns early when `stop` turns true. What tests call.
    pub async fn run_once(&self, stop: &mut watch::Receiver<bool>) -> AppResult<DeliveryStats> {
        self.ensure_group().await?;
        let mut d = Dispatch::new(self);
        d.drive(stop, false).await?;
        Ok(d.stats)
    }

    /// Takes over up to `count` entries that sat unacknowledged at any consumer for
    /// `claim_idle`.
    async fn claim(&self, count: usize) -> AppResult<Vec<StreamEntry>> {
        let claimed = self
            .stream
            .claim_idle(self.state.cfg.outbox.claim_idle, count)
            .await?;
        if !claimed.is_empty() {
            tracing::info!(
                events = claimed.len(),
                "took over webhook deliveries left by another instance"
            );
        }
        Ok(claimed)
    }

    /// Reads an entry into a delivery job; an entry without a readable event is set aside at
    /// once (None).
    async fn job(&self, entry: StreamEntry) -> AppResult<Option<Job>> {
        let Some(body) = entry.field("event") else {
            let why = if entry.is_empty() {
                "the entry left the stream before it was delivered"
            } else {
                "the entry has no `event` field"
            };
            self.give_up(&entry.id, "", "", why, 0).await?;
            return Ok(None);
        };
        match serde_json::from_str::<EventHead>(&body) {
            Ok(h) => Ok(Some(Job {
                id: entry.id,
                event_id: h.event_id,
                body,
                attempts: 0,
            })),
            Err(e) => {
                let why = format!("not an order event: {e}");
                self.give_up(&entry.id, "", &body, &why, 0).await?;
                Ok(None)
            }
        }
    }

    /// One attempt at a job, counted; gives the job back with the outcome.
    async fn attempt(&self, mut job: Job) -> (Job, Result<(), String>) {
        job.attempts += 1;
        let r = self.post(&job.event_id, &job.body).await;
        (job, r)
    }

    /// Acknowledges a delivered entry.
    async fn ack(&self, id: &str) -> AppResult<()> {
        self.stream.ack(&[(0, id)]).await
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
            // Without the URL: it may carry a token, and this text goes to the logs and to
            // webhook-dead.
            Err(e) => Err(error_chain(&e.without_url())),
        }
    }

    /// Sets an entry aside in `<p>:webhook-dead`, then acknowledges it (a crash in between
    /// repeats the dead letter, never loses the event).
    async fn give_up(
        &self,
        stream_id: &str,
        event_id: &str,
        body: &str,
        why: &str,
        attempts: u32,
    ) -> AppResult<()> {
        if attempts == 0 {
            tracing::error!(stream.id = %stream_id, error = %why, "unreadable order event set aside in webhook-dead");
        }
        let dead = DeadDelivery {
            stream_id,
            event_id,
            body,
            error: why,
            attempts,
        };
        self.state.redis.set_aside_delivery(GROUP, &dead).await?;
        metrics::counter!("flashsale_webhook_deliveries_total", "outcome" => "gave_up")
            .increment(1);
        Ok(())
    }

    fn keep_every(&self) -> Duration {
        (self.state.cfg.outbox.claim_idle / 3).max(Duration::from_millis(100))
    }

    /// Re-claims the entries this consumer holds (under way or waiting for a retry),
    /// resetting their idle time, so that a long retry does not look like a dead instance to
    /// the others. Best effort: a miss only risks a duplicate delivery.
    async fn keep_held(&self, ids: &[&str]) {
        for chunk in ids.chunks(500) {
            if let Err(e) = self.stream.keep(0, chunk).await {
                tracing::warn!(error = %e, "could not re-claim the webhook deliveries under way");
            }
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

type Attempt<'a> = Pin<Box<dyn Future<Output = (Job, Result<(), String>)> + Send + 'a>>;

/// What a wait in [`Dispatch::drive`] ended with.
enum Woke {
    Done(Job, Result<(), String>),
    Timer,
    Stop,
}

/// The deliveries of one sender: up to `webhook_concurrency` attempts under way, failed events
/// waiting for their own retry time (the others go on meanwhile), and where reading stands.
struct Dispatch<'a> {
    hooks: &'a Webhooks,
    in_flight: FuturesUnordered<Attempt<'a>>,
    /// Failed events by retry time (and arrival, to keep keys apart).
    waiting: BTreeMap<(Instant, u64), Job>,
    seq: u64,
    /// Stream ids under way or waiting: re-claimed now and then, never read twice.
    held: HashSet<String>,
    /// This consumer's pending entries not read yet: read after this id (None: all read).
    pending_after: Option<String>,
    last_claim: Option<Instant>,
    touched: Instant,
    stats: DeliveryStats,
}

impl<'a> Dispatch<'a> {
    fn new(hooks: &'a Webhooks) -> Self {
        Dispatch {
            hooks,
            in_flight: FuturesUnordered::new(),
            waiting: BTreeMap::new(),
            seq: 0,
            held: HashSet::new(),
            pending_after: Some("0".into()),
            last_claim: None,
            touched: Instant::now(),
            stats: DeliveryStats::default(),
        }
    }

    fn concurrency(&self) -> usize {
        self.hooks.state.cfg.webhooks.webhook_concurrency.max(1)
    }

    fn start(&mut self, job: Job) {
        self.held.insert(job.id.clone());
        self.in_flight.push(Box::pin(self.hooks.attempt(job)));
    }

    /// Fills the free slots: retries that are due first, then entries read (this consumer's
    /// pending ones, then abandoned ones now and then, then new ones; `block`: wait for new
    /// ones when nothing is under way). Returns the entries read.
    async fn fill(&mut self, block: bool) -> AppResult<usize> {
        let now = Instant::now();
        while self.in_flight.len() < self.concurrency() {
            let Some(first) = self.waiting.first_entry() else {
                break;
            };
            if first.key().0 > now {
                break;
            }
            let job = first.remove();
            self.start(job);
        }
        let free = self.concurrency() - self.in_flight.len();
        if free == 0 || self.waiting.len() >= MAX_WAITING {
            return Ok(0);
        }
        let hooks = self.hooks;
        let mut entries = Vec::new();
        if let Some(after) = self.pending_after.take() {
            entries = hooks.stream.read_pending(&after, free).await?;
            self.pending_after = entries.last().map(|e| e.id.clone());
        } else if self
            .last_claim
            .is_none_or(|t| t.elapsed() >= hooks.state.cfg.outbox.claim_idle / 2)
        {
            self.last_claim = Some(Instant::now());
            entries = hooks.claim(free).await?;
        }
        if entries.is_empty() && self.pending_after.is_none() {
            let idle = self.in_flight.is_empty() && self.waiting.is_empty();
            entries = hooks
                .stream
                .read_new(free, (block && idle).then_some(BLOCK))
                .await?;
        }
        let read = entries.len();
        for entry in entries {
            if self.held.contains(&entry.id) {
                continue;
            }
            match hooks.job(entry).await? {
                Some(job) => self.start(job),
                None => self.stats.gave_up += 1,
            }
        }
        Ok(read)
    }

    /// Follows up an attempt: acknowledge, schedule its retry, or set it aside.
    async fn finish(&mut self, job: Job, result: Result<(), String>) -> AppResult<()> {
        let hooks = self.hooks;
        let why = match result {
            Ok(()) => {
                hooks.ack(&job.id).await?;
                self.held.remove(&job.id);
                self.stats.delivered += 1;
                metrics::counter!("flashsale_webhook_deliveries_total", "outcome" => "ok")
                    .increment(1);
                tracing::debug!(event.id = %job.event_id, attempt = job.attempts, "webhook delivered");
                return Ok(());
            }
            Err(why) => why,
        };
        metrics::counter!("flashsale_webhook_deliveries_total", "outcome" => "failed").increment(1);
        if job.attempts >= hooks.state.cfg.webhooks.webhook_max_attempts.max(1) {
            tracing::error!(event.id = %job.event_id, attempts = job.attempts, error = %why, "webhook delivery failed every attempt; the event is set aside in webhook-dead");
            hooks
                .give_up(&job.id, &job.event_id, &job.body, &why, job.attempts)
                .await?;
            self.held.remove(&job.id);
            self.stats.gave_up += 1;
            return Ok(());
        }
        let delay = retry_delay(hooks.state.cfg.webhooks.webhook_retry, job.attempts);
        tracing::warn!(event.id = %job.event_id, attempt = job.attempts, error = %why, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed; will retry");
        self.seq += 1;
        self.waiting.insert((Instant::now() + delay, self.seq), job);
        Ok(())
    }

    async fn keep_held(&mut self) {
        if self.held.is_empty() || self.touched.elapsed() < self.hooks.keep_every() {
            return;
        }
        self.touched = Instant::now();
        let ids: Vec<&str> = self.held.iter().map(String::as_str).collect();
        self.hooks.keep_held(&ids).await;
    }

    /// Delivers until `stop` (Ok(false): what is under way stays pending) or, unless `block`,
    /// until nothing is left to deliver or retry (Ok(true)). `block`: run for good, waiting
    /// for new entries.
    async fn drive(&mut self, stop: &mut watch::Receiver<bool>, block: bool) -> AppResult<bool> {
        loop {
            if *stop.borrow() {
                return Ok(false);
            }
            let read = self.fill(block).await?;
            self.keep_held().await;
            if self.in_flight.is_empty() && self.waiting.is_empty() {
                let drained =
                    read == 0 && self.pending_after.is_none() && self.last_claim.is_some();
                if drained && !block {
                    return Ok(true);
                }
                continue;
            }
            if read > 0 && self.in_flight.len() < self.concurrency() {
                continue; // there may be more to read right away
            }
            let mut wake = (Instant::now() + POLL).min(self.touched + self.hooks.keep_every());
            if let Some((at, _)) = self.waiting.keys().next() {
                wake = wake.min(*at);
            }
            let woke = tokio::select! {
                Some((job, r)) = self.in_flight.next(), if !self.in_flight.is_empty() => Woke::Done(job, r),
                _ = tokio::time::sleep_until(wake) => Woke::Timer,
                _ = stopped(stop) => Woke::Stop,
            };
            match woke {
                Woke::Done(job, r) => self.finish(job, r).await?,
                Woke::Timer => {}
                Woke::Stop => return Ok(false),
            }
        }
    }
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
    let mut stats = DeliveryStats::default();
    while !*stop.borrow() {
        let mut d = Dispatch::new(&hooks);
        let r = match hooks.ensure_group().await {
            Ok(()) => d.drive(&mut stop, true).await,
            Err(e) => Err(e),
        };
        stats.delivered += d.stats.delivered;
        stats.gave_up += d.stats.gave_up;
        match r {
            Ok(_) => break,
            Err(e) => {
                // A Redis that lost its data lost the consumer group too; the deliveries under
                // way are dropped and stay pending (read again, delivered at least once).
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "webhook sender: Redis failed; the events stay pending");
                drop(d);
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
