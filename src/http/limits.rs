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
use crate::domain::{ClientKey, Role, Username};
use crate::error::AppError;
use crate::store::redis::{Bucket, BucketMode};

use super::extract::authenticate;

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
            state.cfg.http.trust_forwarded_for,
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

/// What a check does when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// Let the request through: the sale routes' own Redis work answers 503 then, so the
    /// limiter is never by itself the reason a sale stops.
    LetThrough,
    /// Answer 503 `unavailable`: logins and sign-ups need only MySQL, so letting them through
    /// would turn password guessing loose (and argon2 with it) for as long as Redis is down.
    Refuse,
}

/// Runs the checks in one round trip. Refused when any bucket refuses, with the longest wait as
/// `Retry-After`; the tokens that the refused request took from buckets that let it through are
/// given back when `refund` says so. When Redis cannot be asked, `outage` decides.
async fn enforce(
    state: &AppState,
    checks: Vec<Check>,
    outage: Outage,
    refund: impl Fn(&Check) -> bool,
) -> Result<(), AppError> {
    if checks.is_empty() {
        return Ok(());
    }
    let calls: Vec<_> = checks
        .iter()
        .map(|c| (c.key.clone(), c.bucket, c.mode))
        .collect();
    let waits = match state.redis.rate_limit(&calls).await {
        Ok(waits) => waits,
        Err(e) => {
            metrics::counter!("flashsale_rate_limit_errors_total").increment(1);
            return match outage {
                Outage::LetThrough => {
                    tracing::warn!(error = %e, "rate limiter unavailable; request let through");
                    Ok(())
                }
                Outage::Refuse => {
                    tracing::warn!(error = %e, "login limiter unavailable; attempt refused");
                    Err(AppError::Unavailable(
                        "sign-in attempts cannot be counted right now; retry shortly".into(),
                    ))
                }
            };
        }
    };
    let Some((c, wait)) = checks
        .iter()
        .zip(&waits)
        .filter_map(|(c, w)| w.map(|w| (c, w)))
        .max_by_key(|(_, w)| *w)
    else {
        return Ok(());
    };
    let refused = rate_limited(c.scope, wait, c.refusal);
    let refunds: Vec<_> = checks
        .iter()
        .zip(&waits)
        .filter(|(c, w)| w.is_none() && c.mode == BucketMode::Take && refund(c))
        .map(|(c, _)| (c.key.clone(), c.bucket, BucketMode::Refund))
        .collect();
    if !refunds.is_empty()
        && let Err(e) = state.redis.rate_limit(&refunds).await
    {
        tracing::warn!(error = %e, "could not give back a refused request's tokens");
    }
    Err(refused)
}

/// The cart and order routes (`/v1/cart*`, `/v1/orders*`) and the opening of a live stream: one
/// bucket per client address and one per customer (when a token comes along). Admins are not limited. An invalid token only meets the address's bucket
/// (the route answers 401). The checked caller is handed on to the `AuthUser` extractor, so
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
    if !cfg.limits.rate_limits || !sale_route {
        return next.run(req).await;
    }
    // A token refused (or whose account cannot be read now) only meets the address's bucket;
    // the route's own check answers it.
    let caller = authenticate(&state, req.headers()).await.ok();
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
            key: keys.rate_bucket("ip", &ClientKey::of(ip).to_string()),
            bucket: Bucket {
                per_second: cfg.limits.rate_ip_per_sec,
                burst: cfg.limits.rate_ip_burst,
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
                per_second: cfg.limits.rate_customer_per_sec,
                burst: cfg.limits.rate_customer_burst,
            },
            mode: BucketMode::Take,
        });
    }
    if let Err(refused) = enforce(&state, checks, Outage::LetThrough, |_| false).await {
        return refused.into_response();
    }
    next.run(req).await
}

/// The failed-login buckets of a username: one per (username, client address), so guesses from
/// elsewhere never lock the owner out, and one per username with a much higher rate, the ceiling
/// on guessing spread over many addresses. The username is the normalised one (lower case), so
/// `Alice` and `alice` share their buckets as they share their account.
fn failure_buckets(
    state: &AppState,
    ip: Option<IpAddr>,
    username: &Username,
    mode: BucketMode,
) -> Vec<Check> {
    let username = username.as_str();
    let cfg = &state.cfg;
    let keys = &state.redis.keys;
    let mut checks = Vec::with_capacity(2);
    if let Some(ip) = ip {
        checks.push(Check {
            scope: "login_user_address",
            refusal: "too many failed sign-ins for this username from this address",
            key: keys.rate_bucket("login-fail", &format!("{}|{username}", ClientKey::of(ip))),
            bucket: per_minute(cfg.limits.login_failures_per_min),
            mode,
        });
    }
    checks.push(Check {
        scope: "login_user",
        refusal: "too many failed sign-ins for this username",
        key: keys.rate_bucket("login-user", username),
        bucket: per_minute(cfg.limits.login_user_failures_per_min),
        mode,
    });
    checks
}

/// A login: before the password is looked at, the address's attempt bucket (every attempt
/// takes a token) and, when the username is well-formed, the username's failure buckets: the
/// attempt takes a token of each while its password is checked (so guesses sent at once cannot
/// all pass a bucket that holds fewer), and `refund_login` gives them back unless the password
/// was wrong. When Redis cannot be asked the attempt is refused (503): see [`Outage::Refuse`].
pub async fn check_login(
    state: &AppState,
    ip: Option<IpAddr>,
    username: Option<&Username>,
) -> Result<(), AppError> {
    if !state.cfg.limits.rate_limits {
        return Ok(());
    }
    let mut checks: Vec<Check> = attempt_bucket(state, ip).into_iter().collect();
    if let Some(name) = username {
        checks.extend(failure_buckets(state, ip, name, BucketMode::Take));
    }
    // A refused attempt checks no password: it gives back what it took of the username's
    // failure buckets (the address's attempt bucket counts every attempt).
    enforce(state, checks, Outage::Refuse, |c| c.scope != "login_ip").await
}

/// The address's bucket of login and sign-up attempts (one bucket for both: each costs a
/// password hash).
fn attempt_bucket(state: &AppState, ip: Option<IpAddr>) -> Option<Check> {
    ip.map(|ip| Check {
        scope: "login_ip",
        refusal: "too many sign-in attempts from this address",
        key: state
            .redis
            .keys
            .rate_bucket("login-ip", &ClientKey::of(ip).to_string()),
        bucket: per_minute(state.cfg.limits.login_ip_per_min),
        mode: BucketMode::Take,
    })
}

/// The address's bucket of sign-ups that found their username taken: what bounds how fast one
/// address learns which usernames exist.
fn taken_bucket(state: &AppState, ip: Option<IpAddr>, mode: BucketMode) -> Option<Check> {
    ip.map(|ip| Check {
        scope: "signup_taken",
        refusal: "too many sign-ups from this address",
        key: state
            .redis
            .keys
            .rate_bucket("signup-taken", &ClientKey::of(ip).to_string()),
        bucket: per_minute(state.cfg.limits.signup_taken_per_min),
        mode,
    })
}

/// A sign-up: the address's attempt bucket (shared with logins) and its bucket of taken names.
/// The sign-up holds a token of the latter until its answer is known; `refund_signup` gives it
/// back unless the name was taken. Once that bucket is empty every sign-up from the address is
/// refused, one for a free name too, so neither a refusal nor its timing tells a taken name
/// from a free one. Fails closed when Redis cannot be asked, like logins.
pub async fn check_signup(state: &AppState, ip: Option<IpAddr>) -> Result<(), AppError> {
    if !state.cfg.limits.rate_limits {
        return Ok(());
    }
    let checks = attempt_bucket(state, ip)
        .into_iter()
        .chain(taken_bucket(state, ip, BucketMode::Take))
        .collect();
    enforce(state, checks, Outage::Refuse, |c| c.scope != "login_ip").await
}

/// A sign-up that did not find its name taken (created, refused as malformed, failed) gives
/// back the token `check_signup` took of the address's taken bucket.
pub async fn refund_signup(state: &AppState, ip: Option<IpAddr>) {
    if !state.cfg.limits.rate_limits {
        return;
    }
    let Some(c) = taken_bucket(state, ip, BucketMode::Refund) else {
        return;
    };
    if let Err(e) = state.redis.rate_limit(&[(c.key, c.bucket, c.mode)]).await {
        tracing::warn!(error = %e, "could not give back a sign-up's token");
    }
}

/// A login that was not a wrong password (right, or not decided: an error) gives back the
/// tokens `check_login` took from the username's failure buckets; a wrong one keeps them spent.
pub async fn refund_login(state: &AppState, ip: Option<IpAddr>, username: &Username) {
    if !state.cfg.limits.rate_limits {
        return;
    }
    let calls: Vec<_> = failure_buckets(state, ip, username, BucketMode::Refund)
        .into_iter()
        .map(|c| (c.key, c.bucket, c.mode))
        .collect();
    if let Err(e) = state.redis.rate_limit(&calls).await {
        tracing::warn!(error = %e, "could not give back a login's tokens");
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
