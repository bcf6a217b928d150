//! Operations: liveness, readiness, metrics, the OpenAPI document.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
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
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
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
/// `noeviction`, else 503 `unavailable`. No auth.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "Operations",
    responses(
        (status = 200, description = "Redis and MySQL answer.", body = Readiness),
        Internal,
        (status = 503, description = "`unavailable`: Redis, MySQL or both did not answer \
            within a second (the message names which), or Redis may evict keys (its \
            maxmemory-policy is not noeviction), or Redis came back behind MySQL and \
            `flashsale rebuild-cache` has not run yet.", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1.")),
            example = json!({"error": {"code": "unavailable",
                "message": "not ready: redis down; nothing was changed, retry shortly"}})),
    )
)]
async fn readyz(State(state): State<AppState>) -> AppResult<axum::Json<serde_json::Value>> {
    let limit = Duration::from_secs(1);
    // INFO answers like PING and also tells the eviction policy, which must be noeviction.
    let redis = tokio::time::timeout(limit, state.redis.check_eviction_policy()).await;
    if let Ok(Err(e)) = &redis
        && state.redis.eviction_refusal().is_some()
    {
        return Err(AppError::Unavailable(format!("not ready: {e}")));
    }
    // Redis came back behind MySQL: not ready until `flashsale rebuild-cache` ran.
    if let Ok(Ok(Some(e))) = tokio::time::timeout(limit, state.redis.behind_refusal()).await {
        return Err(AppError::Unavailable(format!("not ready: {e}")));
    }
    let mysql = tokio::time::timeout(
        limit,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db),
    )
    .await;
    let redis_ok = matches!(redis, Ok(Ok(())));
    let mysql_ok = matches!(mysql, Ok(Ok(_)));
    if redis_ok && mysql_ok {
        return Ok(axum::Json(
            json!({"status": "ready", "redis": "ok", "mysql": "ok"}),
        ));
    }
    let down: Vec<&str> = [("redis", redis_ok), ("mysql", mysql_ok)]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n)
        .collect();
    Err(AppError::Unavailable(format!(
        "not ready: {} down",
        down.join(" and ")
    )))
}

/// Prometheus metrics
///
/// The Prometheus text exposition format. No auth.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Operations",
    responses(
        (status = 200, description = "Metrics in the Prometheus text format.", body = String,
            content_type = "text/plain; version=0.0.4",
            example = "# TYPE flashsale_http_requests_total counter\n\
                flashsale_http_requests_total\
                {method=\"GET\",route=\"/healthz\",status=\"200\"} 1\n"),
        Internal,
    )
)]
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
