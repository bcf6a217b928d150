//! Opportunistic batching of reservations: one lane per sku. A request whose sku has no call in
//! flight starts one at once (a lone request is never delayed); requests arriving while a call
//! for their sku is in flight wait, and go together in the next call, at most
//! `redis_reserve_batch` of them, in arrival order (1: no lanes, every request its own call at
//! once). lua/reserve.lua runs a call's entries one after another, each with its own outcome,
//! exactly as separate calls would; a failure of the whole call (a Redis error, a timeout, a
//! refusal) answers every entry of it with that error.
//!
//! Nothing is sent for a request that went away while it waited (its client hung up, its
//! request deadline passed): it reserves nothing, as before the lanes a request dropped before
//! its call was sent. Nor for one that waited in the lane for the response timeout already (a
//! Redis that does not answer makes each call wait the timeout out): it gets its 503 then, so a
//! request waits for Redis about two timeouts at most, whatever the number ahead of it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::Redis;
use super::reservations::{Answer, ReserveOutcome, ReserveRequest};
use crate::domain::Sku;
use crate::error::{AppError, AppResult};

/// Why a whole call failed; every entry of it gets its own copy.
#[derive(Debug)]
pub struct BatchError(pub AppError);

impl From<AppError> for BatchError {
    fn from(e: AppError) -> Self {
        BatchError(e)
    }
}

impl BatchError {
    /// The error of a call of one entry.
    pub(super) fn into_error(self) -> AppError {
        self.0
    }

    /// The error each of `n` entries answers with: a copy of the call's (a call that may have
    /// run leaves each of its entries' outcome unknown).
    pub(super) fn into_errors(self, n: usize) -> Vec<AppError> {
        let e = self.0;
        let message = e.to_string();
        let copy = || match &e {
            AppError::Unavailable(_) => AppError::Unavailable(message.clone()),
            AppError::OutcomeUnknown(_) => AppError::OutcomeUnknown(message.clone()),
            _ => AppError::internal(message.clone()),
        };
        let mut errors: Vec<AppError> = (1..n).map(|_| copy()).collect();
        errors.insert(0, e);
        errors
    }
}

struct Waiter {
    req: ReserveRequest,
    reply: oneshot::Sender<AppResult<Answer>>,
    /// When it joined the lane.
    since: Instant,
    /// The request's span: the call's spans go under the first waiter's (a span has one
    /// parent), so a request's trace shows the script call that answered it.
    span: tracing::Span,
}

/// The lanes of the skus with a call in flight (a sku is here exactly while its driver runs).
pub(super) struct Lanes {
    max_batch: usize,
    waiting: Mutex<HashMap<Sku, VecDeque<Waiter>>>,
}

impl Lanes {
    pub(super) fn new(max_batch: usize) -> Self {
        Lanes {
            max_batch: max_batch.max(1),
            waiting: Mutex::default(),
        }
    }

    /// Lanes of their own, with the same batch size (a handle whose calls must not carry
    /// another handle's requests: [`Redis::for_repair`]).
    pub(super) fn fresh(&self) -> Self {
        Lanes::new(self.max_batch)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sku, VecDeque<Waiter>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next call's entries off the lane, at most `max_batch`: a waiter that went away
    /// is dropped unsent, one that waited `timeout` already is answered 503 unsent. `None` (the
    /// lane removed) when nothing is left.
    fn next_batch(&self, sku: Sku, timeout: Duration) -> Option<Vec<Waiter>> {
        let mut lanes = self.lock();
        let lane = lanes.get_mut(&sku)?;
        let mut batch = Vec::new();
        while batch.len() < self.max_batch {
            let Some(w) = lane.pop_front() else { break };
            if w.reply.is_closed() {
                metrics::counter!("flashsale_reserve_unsent_total", "why" => "gone").increment(1);
                continue;
            }
            if w.since.elapsed() >= timeout {
                metrics::counter!("flashsale_reserve_unsent_total", "why" => "waited").increment(1);
                let _ = w.reply.send(Err(AppError::Unavailable(format!(
                    "redis: sku {sku}: the reservation waited {timeout:?} for the calls ahead \
                     of it; nothing was reserved"
                ))));
                continue;
            }
            batch.push(w);
        }
        if batch.is_empty() {
            lanes.remove(&sku);
            return None;
        }
        Some(batch)
    }
}

/// Ends a lane whose driver stopped without emptying it (a panic, the runtime shutting down,
/// also before the driver task ever ran: the guard is made with the task, not in it): its
/// waiters' answers are dropped, so they fail instead of waiting forever, and the next request
/// of the sku starts a new driver.
struct DriverGuard {
    lanes: Arc<Lanes>,
    sku: Sku,
    armed: bool,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if self.armed {
            self.lanes.lock().remove(&self.sku);
        }
    }
}

impl Redis {
    /// Reserves units of a sku (lua/reserve.lua), in one call with the other requests of that
    /// sku that arrived while its previous call was in flight.
    pub async fn reserve(&self, req: ReserveRequest) -> AppResult<ReserveOutcome> {
        self.reserve_answer(req).await.map(|(outcome, _)| outcome)
    }

    /// [`Redis::reserve`], with how long "sold out" holds when the answer left no unit.
    pub async fn reserve_answer(&self, req: ReserveRequest) -> AppResult<Answer> {
        let sku = req.sku;
        if self.lanes.max_batch == 1 {
            // One call each: no lane (one call in flight per sku would send a hot sku's
            // reservations one round trip after another); the calls are pipelined on the shared
            // connection, as before the lanes.
            return match self.reserve_now(sku, std::slice::from_ref(&req)).await {
                Ok(mut outcomes) => outcomes.remove(0),
                Err(e) => Err(e.into_error()),
            };
        }
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter {
            req,
            reply,
            since: Instant::now(),
            span: tracing::Span::current(),
        };
        let start = {
            let mut lanes = self.lanes.lock();
            match lanes.get_mut(&sku) {
                Some(lane) => {
                    lane.push_back(waiter);
                    false
                }
                None => {
                    lanes.insert(sku, VecDeque::from([waiter]));
                    true
                }
            }
        };
        if start {
            // Its own task: a request that goes away (its client hung up) must not take the
            // others' call with it.
            let guard = DriverGuard {
                lanes: self.lanes.clone(),
                sku,
                armed: true,
            };
            tokio::spawn(self.clone().drive(sku, guard));
        }
        answer.await.unwrap_or_else(|_| {
            Err(AppError::internal(format!(
                "sku {sku}: the reservation call ended without an answer"
            )))
        })
    }

    /// Runs the sku's calls until no request waits.
    async fn drive(self, sku: Sku, mut guard: DriverGuard) {
        loop {
            let Some(batch) = self.lanes.next_batch(sku, self.timeout) else {
                guard.armed = false;
                return;
            };
            metrics::histogram!("flashsale_reserve_batch_size").record(batch.len() as f64);
            let parent = batch[0].span.clone();
            let (reqs, replies): (Vec<ReserveRequest>, Vec<_>) =
                batch.into_iter().map(|w| (w.req, w.reply)).unzip();
            let outcomes = match self.reserve_now(sku, &reqs).instrument(parent).await {
                Ok(outcomes) => outcomes,
                Err(e) => e.into_errors(reqs.len()).into_iter().map(Err).collect(),
            };
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The request may have gone away; its units stay reserved, as they would have
                // had it waited (a hold lapses at its deadline).
                let _ = reply.send(outcome);
            }
        }
    }
}
