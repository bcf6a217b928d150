//! What one client may take: rate limits (token buckets in Redis, shared by every instance),
//! the cap on requests in flight, and the deadline of a request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::app::AppState;
use crate::domain::Role;
use crate::error::AppError;
use crate::store::redis::{Bucket, BucketMode};

use super::extract::{AuthUser, bearer_token};

/// Long-lived streams (Server-Sent Events). The deadline and the in-flight cap cover the request
/// that opens one until its answer's head is sent (the stream itself is not timed out nor
/// counted); opening one takes a token from the rate limits like a sale request.
fn is_stream(path: &str) -> bool {
    path.ends_with("/stream") || path == "/v1/sales/live"
}

/// The caller's address (see `server::client_ip`); `None` when the request did not come
/// through the server loop (in-process calls).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(crate::server::client_ip(
            parts,
            state.cfg.trust_forwarded_for,
        )))
    }
}

fn rate_limited(scope: &'static str, wait: Duration, what: &str) -> AppError {
    metrics::counter!("flashsale_rate_limited_total", "scope" => scope).increment(1);
    AppError::RateLimited {
        message: format!("{what}; retry in {} ms", wait.as_millis()),
        retry_after_secs: wait.as_millis().div_ceil(1000).max(1) as u64,
    }
}

/// One bucket a request must get through: the limit's scope (the metric label), how a refusal
/// reads, and the bucket itself.
struct Check {
    scope: &'static str,
    refusal: &'static str,
    key: String,
    bucket: Bucket,
    mode: BucketMode,
}

/// Runs the checks in one round trip. Refused when any bucket refuses, with the longest wait as
/// `Retry-After`. When Redis cannot be asked the request is let through: the limiter never takes
/// the sale down by itself (the route's own Redis work answers 503).
async fn enforce(state: &AppState, checks: Vec<Check>) -> Result<(), AppError> {
    if checks.is_empty() {
        return Ok(());
    }
    let calls: Vec<_> = checks
        .iter()
        .map(|c| (c.key.clone(), c.bucket, c.mode))
        .collect();
    match state.redis.rate_limit(&calls).await {
        Ok(waits) => match checks
            .iter()
            .zip(waits)
            .filter_map(|(c, w)| w.map(|w| (c, w)))
            .max_by_key(|(_, w)| *w)
        {
            Some((c, wait)) => Err(rate_limited(c.scope, wait, c.refusal)),
            None => Ok(()),
        },
        Err(e) => {
            metrics::counter!("flashsale_rate_limit_errors_total").increment(1);
            tracing::warn!(error = %e, "rate limiter unavailable; request let through");
            Ok(())
        }
    }
}

/// The cart and order routes (`/v1/cart*`, `/v1/orders*`) and the opening of a live stream: one
/// bucket per client address and one per customer (when a token comes along). Admins are not limited. An invalid token only meets the address's bucket
/// (the route answers 401). The verified caller is handed on to the `AuthUser` extractor, so
/// the token is checked once.
pub async fn sale_rate_limit(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    mut req: Request,
    next: Next,
) -> Response {
    let cfg = &state.cfg;
    let path = req.uri().path();
    let sale_route =
        path.starts_with("/v1/cart") || path.starts_with("/v1/orders") || is_stream(path);
    if !cfg.rate_limits || !sale_route {
        return next.run(req).await;
    }
    let caller = bearer_token(req.headers())
        .and_then(|t| state.jwt.verify(t))
        .ok()
        .map(|(user_id, role)| AuthUser { user_id, role });
    if let Some(user) = caller {
        req.extensions_mut().insert(user);
        if user.role == Role::Admin {
            return next.run(req).await;
        }
    }
    let keys = &state.redis.keys;
    let mut checks = Vec::with_capacity(2);
    if let Some(ip) = ip {
        checks.push(Check {
            scope: "ip",
            refusal: "too many requests from this address",
            key: keys.rate_bucket("ip", &ip.to_string()),
            bucket: Bucket {
                per_second: cfg.rate_ip_per_sec,
                burst: cfg.rate_ip_burst,
            },
            mode: BucketMode::Take,
        });
    }
    if let Some(user) = caller {
        checks.push(Check {
            scope: "customer",
            refusal: "too many requests from this customer",
            key: keys.rate_bucket("customer", &user.user_id.to_string()),
            bucket: Bucket {
                per_second: cfg.rate_customer_per_sec,
                burst: cfg.rate_customer_burst,
            },
            mode: BucketMode::Take,
        });
    }
    if let Err(refused) = enforce(&state, checks).await {
        return refused.into_response();
    }
    next.run(req).await
}

/// Login and sign-up: before the password is looked at, the address's bucket (every attempt
/// takes a token) and, for a login, the username's bucket of failures (looked at, not taken).
pub async fn check_login(
    state: &AppState,
    ip: Option<IpAddr>,
    username: Option<&str>,
) -> Result<(), AppError> {
    let cfg = &state.cfg;
    if !cfg.rate_limits {
        return Ok(());
    }
    let keys = &state.redis.keys;
    let mut checks = Vec::with_capacity(2);
    if let Some(ip) = ip {
        checks.push(Check {
            scope: "login_ip",
            refusal: "too many sign-in attempts from this address",
            key: keys.rate_bucket("login-ip", &ip.to_string()),
            bucket: per_minute(cfg.login_ip_per_min),
            mode: BucketMode::Take,
        });
    }
    if let Some(name) = username {
        checks.push(Check {
            scope: "login_user",
            refusal: "too many failed sign-ins for this username",
            key: keys.rate_bucket("login-user", &name.to_ascii_lowercase()),
            bucket: per_minute(cfg.login_failures_per_min),
            mode: BucketMode::Peek,
        });
    }
    enforce(state, checks).await
}

/// A failed login costs its username one token.
pub async fn charge_failed_login(state: &AppState, username: &str) {
    if !state.cfg.rate_limits {
        return;
    }
    let check = (
        state
            .redis
            .keys
            .rate_bucket("login-user", &username.to_ascii_lowercase()),
        per_minute(state.cfg.login_failures_per_min),
        BucketMode::Charge,
    );
    if let Err(e) = state.redis.rate_limit(&[check]).await {
        tracing::warn!(error = %e, "could not count a failed login");
    }
}

/// `n` a minute, with a burst of `n` (at least 1).
fn per_minute(n: f64) -> Bucket {
    Bucket {
        per_second: n / 60.0,
        burst: n.ceil().max(1.0) as u32,
    }
}

/// Answers 503 `unavailable` at once when `max` requests are already in flight.
pub async fn in_flight_cap(
    State(slots): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    match slots.try_acquire() {
        Ok(_slot) => next.run(req).await,
        Err(_) => {
            metrics::counter!("flashsale_http_overloaded_total").increment(1);
            AppError::Unavailable("the server is at its limit of requests in flight".into())
                .into_response()
        }
    }
}

/// Answers 408 `request_timeout` when a request (its body included) is not done in time.
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => AppError::RequestTimeout(format!(
            "the request was not complete within {limit:?}; if it was a POST with an \
             Idempotency-Key, repeating it with the same key is safe"
        ))
        .into_response(),
    }
}
