//! The caller's orders. Every POST accepts an `Idempotency-Key`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::extract::{AuthUser, IdempotencyKey, Json, Path, Query};
use super::idempotency;
use crate::app::AppState;
use crate::domain::{Count, OrderStatus, Sku};
use crate::error::{AppError, AppResult};
use crate::service::orders::{self, OrderView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orders", post(create_order).get(list_orders))
        .route("/v1/orders/buy-now", post(buy_now))
        .route("/v1/orders/{order_id}", get(get_order))
        .route("/v1/orders/{order_id}/pay", post(pay_order))
        .route("/v1/orders/{order_id}/cancel", post(cancel_order))
}

fn json_of(
    status: StatusCode,
    order: &OrderView,
) -> Result<(StatusCode, serde_json::Value), AppError> {
    serde_json::to_value(order)
        .map(|v| (status, v))
        .map_err(|e| AppError::internal(format!("serializing an order: {e}")))
}

async fn create_order(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
) -> Response {
    idempotency::once(
        &state,
        user.user_id,
        "checkout",
        key,
        String::new(),
        || async {
            let order = orders::checkout(&state, user.user_id).await?;
            json_of(StatusCode::CREATED, &order)
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuyNowRequest {
    sku: u64,
    count: u64,
}

async fn buy_now(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<BuyNowRequest>,
) -> AppResult<Response> {
    let sku = Sku::parse(body.sku)?;
    let count = Count::parse(body.count)?;
    let fingerprint = format!("{sku}x{}", count.get());
    Ok(idempotency::once(
        &state,
        user.user_id,
        "buy-now",
        key,
        fingerprint,
        || async {
            let order = orders::buy_now(&state, user.user_id, sku, count).await?;
            json_of(StatusCode::CREATED, &order)
        },
    )
    .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    before_id: Option<u64>,
}

#[derive(Serialize)]
pub struct OrderPage {
    items: Vec<OrderView>,
    next_before_id: Option<u64>,
}

async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<ListParams>,
) -> AppResult<axum::Json<OrderPage>> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            OrderStatus::parse(s).ok_or_else(|| {
                AppError::InvalidRequest(format!(
                    "status must be one of new, awaiting_payment, failed, paid, cancelled; got {s:?}"
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(AppError::InvalidRequest("limit must be 1..=100".into()));
    }
    let (items, next_before_id) =
        orders::list(&state, user.user_id, status, limit, q.before_id).await?;
    Ok(axum::Json(OrderPage {
        items,
        next_before_id,
    }))
}

async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_id): Path<u64>,
) -> AppResult<axum::Json<OrderView>> {
    Ok(axum::Json(
        orders::get(&state, user.user_id, order_id).await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    payment_ref: Option<String>,
}

async fn pay_order(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Path(order_id): Path<u64>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> AppResult<Response> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge("request body too large".into())
        } else {
            AppError::InvalidRequest(r.body_text())
        }
    })?;
    // The body is optional: none, or `{"payment_ref": "..."}`.
    let body: PayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => AppError::InvalidRequest(e.to_string()),
            _ => AppError::InvalidJson(e.to_string()),
        })?
    };
    let payment_ref = body.payment_ref.unwrap_or_default();
    if payment_ref.len() > 128 || payment_ref.chars().any(char::is_control) {
        return Err(AppError::InvalidRequest(
            "payment_ref must be at most 128 characters, without control characters".into(),
        ));
    }
    let scope = format!("pay:{order_id}");
    Ok(idempotency::once(
        &state,
        user.user_id,
        &scope,
        key,
        payment_ref.clone(),
        || async {
            let order = orders::pay(&state, user.user_id, order_id, &payment_ref).await?;
            json_of(StatusCode::OK, &order)
        },
    )
    .await)
}

async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Path(order_id): Path<u64>,
) -> Response {
    let scope = format!("cancel:{order_id}");
    idempotency::once(&state, user.user_id, &scope, key, String::new(), || async {
        let order = orders::cancel(&state, user.user_id, order_id).await?;
        json_of(StatusCode::OK, &order)
    })
    .await
}
