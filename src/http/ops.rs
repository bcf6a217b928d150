//! Operations: liveness, readiness, metrics.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::app::AppState;
use crate::error::{AppError, AppResult};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok"}))
}

/// 200 when Redis and MySQL both answer within a second, else 503 `unavailable`.
async fn readyz(State(state): State<AppState>) -> AppResult<axum::Json<serde_json::Value>> {
    let limit = Duration::from_secs(1);
    let redis = tokio::time::timeout(limit, state.redis.ping()).await;
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

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
