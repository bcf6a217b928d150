//! `Idempotency-Key`: the first answer to a (customer, route, key) is stored for 24 hours and
//! replayed to every repeat; a repeat that arrives while the first is still running waits for it.

use std::future::Future;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::AppError;

const KEEP_SECS: u64 = 24 * 3600;
const WAIT_STEP: Duration = Duration::from_millis(25);
const WAIT_MAX: Duration = Duration::from_secs(15);

#[derive(Serialize, Deserialize)]
struct Stored {
    /// What the request asked (route parameters and body), so a reused key with another
    /// request is refused instead of answered with the wrong thing.
    fingerprint: String,
    /// `None` while the first request runs.
    status: Option<u16>,
    body: Option<serde_json::Value>,
}

/// Runs `f` at most once per key; without a key, just runs it.
pub async fn once<F, Fut>(
    state: &AppState,
    user_id: u64,
    scope: &str,
    key: Option<String>,
    fingerprint: String,
    f: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), AppError>>,
{
    let Some(key) = key else {
        return respond(f().await);
    };
    let started = std::time::Instant::now();
    loop {
        match claim(state, user_id, scope, &key, &fingerprint).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return e.into_response(),
        }
        match stored_answer(state, user_id, scope, &key, &fingerprint).await {
            Ok(Some(resp)) => return resp,
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
        if started.elapsed() > WAIT_MAX {
            return AppError::RequestInProgress(
                "the first request with this Idempotency-Key is still running".into(),
            )
            .into_response();
        }
        tokio::time::sleep(WAIT_STEP).await;
    }
    let redis_key = state.redis.keys.idempotency(user_id, scope, &key);
    let result = f().await;
    let stored = match &result {
        Ok((status, body)) => Some((status.as_u16(), body.clone())),
        // Nothing was changed: the key is freed so that a retry can run.
        Err(AppError::Unavailable(_) | AppError::Internal(_)) => None,
        Err(e) => Some((e.status().as_u16(), e.to_body())),
    };
    let mut conn = state.redis.conn();
    let saved: Result<(), redis::RedisError> = match stored {
        Some((status, body)) => {
            let v = Stored {
                fingerprint,
                status: Some(status),
                body: Some(body),
            };
            conn.set_ex(
                &redis_key,
                serde_json::to_string(&v).unwrap_or_default(),
                KEEP_SECS,
            )
            .await
        }
        None => conn.del(&redis_key).await,
    };
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not store an idempotent answer");
    }
    respond(result)
}

fn respond(result: Result<(StatusCode, serde_json::Value), AppError>) -> Response {
    match result {
        Ok((status, body)) => (status, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `true`: this request runs; `false`: another one with the key ran or runs.
async fn claim(
    state: &AppState,
    user_id: u64,
    scope: &str,
    key: &str,
    fingerprint: &str,
) -> Result<bool, AppError> {
    let pending = Stored {
        fingerprint: fingerprint.to_string(),
        status: None,
        body: None,
    };
    let set: Option<String> = redis::cmd("SET")
        .arg(state.redis.keys.idempotency(user_id, scope, key))
        .arg(serde_json::to_string(&pending).unwrap_or_default())
        .arg("NX")
        .arg("EX")
        .arg(KEEP_SECS)
        .query_async(&mut state.redis.conn())
        .await?;
    Ok(set.is_some())
}

/// The stored answer for the key, if the first request finished (`None`: still running, or it
/// failed without an answer and freed the key, so the caller may claim it).
async fn stored_answer(
    state: &AppState,
    user_id: u64,
    scope: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Response>, AppError> {
    let raw: Option<String> = state
        .redis
        .conn()
        .get(state.redis.keys.idempotency(user_id, scope, key))
        .await?;
    match raw.and_then(|r| serde_json::from_str::<Stored>(&r).ok()) {
        Some(s) if s.fingerprint != fingerprint => Err(AppError::InvalidRequest(
            "this Idempotency-Key was used for a different request".into(),
        )),
        Some(Stored {
            status: Some(status),
            body: Some(body),
            ..
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = (status, axum::Json(body)).into_response();
            resp.headers_mut().insert(
                "idempotent-replayed",
                axum::http::HeaderValue::from_static("true"),
            );
            Ok(Some(resp))
        }
        _ => Ok(None),
    }
}
