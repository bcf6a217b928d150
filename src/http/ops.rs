//! Operations. On the API's port, for anyone: liveness, readiness (whether, not why), the OpenAPI
//! document. On the operators' listener (`FLASHSALE_METRICS_LISTEN`, apart from the API's port):
//! the metrics, and the readiness with its reason.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{ErrorEnvelope, Internal};
use crate::app::AppState;
use crate::error::{AppError, AppResult};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
}

/// The operators' listener: `GET /metrics`, `GET /readyz` with the reason when not ready,
/// `GET /healthz`. Not part of the API (nor of its OpenAPI document); nothing else is served.
pub fn operators_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz_with_reason))
        .route("/healthz", get(healthz))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            AppError::NotFound(format!("no route for {method} {}", uri.path()))
        })
        .with_state(state)
}

/// What `GET /healthz` answers (documentation only: the handler builds it as JSON).
#[derive(ToSchema)]
#[schema(examples(json!({"status": "ok"})))]
pub struct Health {
    /// Always `ok`.
    #[schema(examples("ok"))]
    pub status: String,
}

/// What `GET /readyz` answers when ready (documentation only).
#[derive(ToSchema)]
#[schema(examples(json!({"status": "ready", "redis": "ok", "mysql": "ok"})))]
pub struct Readiness {
    /// Always `ready`.
    pub status: String,
    /// Always `ok`.
    pub redis: String,
    /// Always `ok`.
    pub mysql: String,
}

/// Liveness
///
/// 200 while the process runs. No auth.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "Operations",
    responses(
        (status = 200, description = "The process runs.", body = Health),
        Internal,
    )
)]
async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness
///
/// 200 when Redis and MySQL both answer within a second and Redis's `maxmemory-policy` is
/// `noeviction`, else 503 `unavailable`. No auth. The answer says whether, not why: the reason
/// is for operators, on the operators' listener (`FLASHSALE_METRICS_LISTEN`, `GET /readyz`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "Operations",
    responses(
        (status = 200, description = "Redis and MySQL answer.", body = Readiness),
        Internal,
        (status = 503, description = "`unavailable`: Redis, MySQL or both did not answer \
            within a second, or Redis may evict keys (its maxmemory-policy is not \
            noeviction), or Redis came back behind MySQL and `flashsale rebuild-cache` has not \
            run yet. The message does not say which: the operators' listener does.",
            body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1.")),
            example = json!({"error": {"code": "unavailable",
                "message": "not ready; nothing was changed, retry shortly"}})),
    )
)]
async fn readyz(State(state): State<AppState>) -> AppResult<axum::Json<serde_json::Value>> {
    match readiness(&state).await {
        Ok(()) => Ok(ready()),
        Err(_) => Err(AppError::Unavailable("not ready".into())),
    }
}

/// `GET /readyz` of the operators' listener: as the API's, with the reason when not ready.
async fn readyz_with_reason(
    State(state): State<AppState>,
) -> AppResult<axum::Json<serde_json::Value>> {
    readiness(&state)
        .await
        .map(|()| ready())
        .map_err(|why| AppError::Unavailable(format!("not ready: {why}")))
}

fn ready() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ready", "redis": "ok", "mysql": "ok"}))
}

/// Ready, or why not: Redis or MySQL down (or too slow), Redis may evict keys, or Redis came
/// back behind MySQL.
async fn readiness(state: &AppState) -> Result<(), String> {
    let limit = Duration::from_secs(1);
    // INFO answers like PING and also tells the eviction policy, which must be noeviction.
    let redis = tokio::time::timeout(limit, state.redis.check_eviction_policy()).await;
    if let Ok(Err(e)) = &redis
        && state.redis.eviction_refusal().is_some()
    {
        return Err(e.to_string());
    }
    // Redis came back behind MySQL: not ready until `flashsale rebuild-cache` ran.
    if let Ok(Ok(Some(e))) = tokio::time::timeout(limit, state.redis.behind_refusal()).await {
        return Err(e.to_string());
    }
    let mysql = tokio::time::timeout(
        limit,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db),
    )
    .await;
    let redis_ok = matches!(redis, Ok(Ok(())));
    let mysql_ok = matches!(mysql, Ok(Ok(_)));
    if redis_ok && mysql_ok {
        return Ok(());
    }
    let down: Vec<&str> = [("redis", redis_ok), ("mysql", mysql_ok)]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n)
        .collect();
    Err(format!("{} down", down.join(" and ")))
}

/// `GET /metrics` of the operators' listener: the Prometheus text exposition format.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This OpenAPI document
///
/// Generated from the code: the same registrations build the router and this document. No auth.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "Operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object,
            content_type = "application/json"),
        Internal,
    )
)]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document_json(),
    )
}
