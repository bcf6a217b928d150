//! `Idempotency-Key`: the first answer to a (customer, route, key) is stored for 24 hours and
//! replayed to every repeat; a repeat that arrives while the first is still running waits for it.
//!
//! A request claims its key with a short lease (`idempotency_lease`), renewed while it works.
//! The work runs in a task of its own, to its end: a request cut off by its deadline (408) or by
//! the client hanging up no longer drops the operation half-way, so its retry waits for and
//! gets the one answer instead of running it a second time. If the task ends without an answer
//! (a panic, the runtime stopping), a guard releases the lease; if the whole process dies, the
//! lease runs out by itself within `idempotency_lease`, and the retry runs: an order the
//! vanished request was creating is bound to the key first, so the retry resumes it
//! (`Progress::resume_order`) instead of making a second one.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::app::AppState;
use crate::error::AppError;
use crate::store::redis::idempotency::{Claim, Settle};

const KEEP: Duration = Duration::from_secs(24 * 3600);
const WAIT_STEP: Duration = Duration::from_millis(25);
const WAIT_MAX: Duration = Duration::from_secs(15);

/// What the operation's answer is.
pub type Outcome = Result<(StatusCode, serde_json::Value), AppError>;

/// What the operation may tell its key while it runs, and what it should resume.
pub struct Progress {
    holder: Option<(AppState, String, String)>,
    /// The order a request with this key was creating when it vanished (its process died): the
    /// operation resumes it rather than making another.
    pub resume_order: Option<u64>,
}

impl crate::service::orders::BindOrder for Progress {
    /// Binds the order this request is about to create to its key, before it reserves anything.
    /// A request whose lease ran out (a retry took the key over, or answered it) stops here,
    /// having reserved nothing: the key's one order is the retry's.
    async fn bind_order(&self, order_id: u64) -> Result<(), AppError> {
        let Some((state, record, owner)) = &self.holder else {
            return Ok(());
        };
        if !state
            .redis
            .settle_idempotency(record, owner, Settle::Bind(order_id))
            .await?
        {
            lease_lost("bind");
            return Err(AppError::RequestInProgress(
                "this request's claim on its Idempotency-Key ran out and another request with \
                 the key took over; nothing was reserved: repeat the request to get its answer"
                    .into(),
            ));
        }
        Ok(())
    }

    fn keyed(&self) -> bool {
        self.holder.is_some()
    }
}

fn lease_lost(what: &'static str) {
    metrics::counter!("flashsale_idempotency_lease_lost_total", "step" => what).increment(1);
    tracing::warn!(
        step = what,
        "an Idempotency-Key lease ran out while its request still worked"
    );
}

/// Holds the lease of a running operation; dropped without `finish` (a panic, the runtime
/// stopping), it releases the lease at once in a task of its own.
struct Holder {
    state: AppState,
    record: String,
    owner: String,
    done: bool,
}

impl Holder {
    async fn renew(&self) {
        let lease = self.state.cfg.sale.idempotency_lease;
        match self
            .state
            .redis
            .settle_idempotency(&self.record, &self.owner, Settle::Renew(lease))
            .await
        {
            Ok(true) => {}
            Ok(false) => lease_lost("renew"),
            Err(e) => tracing::warn!(error = %e, "could not renew an Idempotency-Key lease"),
        }
    }

    /// Stores the answer, or (nothing was changed: 503, 500; or not known yet: 503
    /// `outcome_unknown`) releases the key so that a retry runs again (and resumes the order
    /// the key bound, if any).
    async fn finish(mut self, result: &Outcome) {
        self.done = true;
        let stored = match result {
            Ok((status, body)) => Some((status.as_u16(), body.to_string())),
            Err(AppError::Unavailable(_) | AppError::OutcomeUnknown(_) | AppError::Internal(_)) => {
                None
            }
            Err(e) => Some((e.status().as_u16(), e.to_body().to_string())),
        };
        let action = match &stored {
            Some((status, body)) => Settle::Answer {
                status: *status,
                body,
                keep: KEEP,
            },
            None => Settle::Release,
        };
        match self
            .state
            .redis
            .settle_idempotency(&self.record, &self.owner, action)
            .await
        {
            Ok(true) => {}
            Ok(false) => lease_lost("answer"),
            Err(e) => {
                // The lease runs out by itself; the retry then runs (and resumes a bound order).
                tracing::warn!(error = %e, "could not store an idempotent answer");
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (state, record, owner) = (
            self.state.clone(),
            std::mem::take(&mut self.record),
            std::mem::take(&mut self.owner),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = state
                    .redis
                    .settle_idempotency(&record, &owner, Settle::Release)
                    .await
                {
                    tracing::warn!(error = %e, "could not release an Idempotency-Key lease");
                }
            });
        }
    }
}

/// Runs `f` at most once per key (without a key, just runs it), to its end even if the request
/// is cut off.
pub async fn once<F, Fut>(
    state: &AppState,
    user_id: u64,
    scope: &str,
    key: Option<String>,
    fingerprint: String,
    f: F,
) -> Response
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let Some(key) = key else {
        let work = f(Progress {
            holder: None,
            resume_order: None,
        });
        return respond(tokio::spawn(work.in_current_span()).await);
    };
    let record = state.redis.keys.idempotency(user_id, scope, &key);
    let owner = crate::auth::generate_secret();
    let lease = state.cfg.sale.idempotency_lease;
    let started = Instant::now();
    let resume_order = loop {
        match state
            .redis
            .claim_idempotency(&record, &fingerprint, &owner, lease, KEEP)
            .await
        {
            Ok(Claim::Claimed { resume_order }) => break resume_order,
            Ok(Claim::Done { status, body }) => return replay(status, &body),
            Ok(Claim::Busy { .. }) => {}
            Ok(Claim::Mismatch) => {
                return AppError::InvalidRequest(
                    "this Idempotency-Key was used for a different request".into(),
                )
                .into_response();
            }
            Err(e) => {
                // The claim may have run, its reply lost: let go of it (only if this request
                // owns it), so the retry is not kept waiting for the lease.
                drop(Holder {
                    state: state.clone(),
                    record: record.clone(),
                    owner: owner.clone(),
                    done: false,
                });
                return e.into_response();
            }
        }
        if started.elapsed() > WAIT_MAX {
            return AppError::RequestInProgress(
                "the first request with this Idempotency-Key is still running".into(),
            )
            .into_response();
        }
        tokio::time::sleep(WAIT_STEP).await;
    };
    let holder = Holder {
        state: state.clone(),
        record: record.clone(),
        owner: owner.clone(),
        done: false,
    };
    let progress = Progress {
        holder: Some((state.clone(), record, owner)),
        resume_order,
    };
    let task = tokio::spawn(
        async move {
            let work = f(progress);
            tokio::pin!(work);
            let mut renew = tokio::time::interval(lease / 3);
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            renew.tick().await;
            let result = loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = renew.tick() => holder.renew().await,
                }
            };
            holder.finish(&result).await;
            result
        }
        .in_current_span(),
    );
    respond(task.await)
}

fn respond(result: Result<Outcome, tokio::task::JoinError>) -> Response {
    match result {
        Ok(Ok((status, body))) => (status, axum::Json(body)).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => AppError::internal(format!("the request's task failed: {e}")).into_response(),
    }
}

/// The stored answer, marked as a replay.
fn replay(status: u16, body: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    resp
}
