//! The caller's orders. Every POST accepts an `Idempotency-Key`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::openapi::{RefOr, Required};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::extract::{AuthUser, IdempotencyKey, Json, Path, Query};
use super::idempotency;
use super::openapi::{E401, E413, ErrorEnvelope, Internal, RateLimited, Unavailable};
use super::responses::{OrderResponse, OrderStatus as OrderStatusSchema};
use crate::app::AppState;
use crate::domain::{Count, OrderStatus, Sku};
use crate::error::{AppError, AppResult};
use crate::service::orders::{self, OrderView, Placing, Resumed};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(buy_now))
        .routes(routes!(get_order))
        .routes(optional_body(routes!(pay_order)))
        .routes(routes!(cancel_order))
}

/// Marks the registered operations' request bodies optional: the body may be left out, but when
/// sent it must be the JSON object (`Option<T>` would document a JSON `null`, which is refused).
fn optional_body(mut routes: UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    for item in routes.1.paths.values_mut() {
        for op in [&mut item.post, &mut item.put, &mut item.patch]
            .into_iter()
            .flatten()
        {
            if let Some(RefOr::T(body)) = op.request_body.as_mut() {
                body.required = Some(Required::False);
            }
        }
    }
    routes
}

fn json_of(
    status: StatusCode,
    order: OrderView,
) -> Result<(StatusCode, serde_json::Value), AppError> {
    serde_json::to_value(OrderResponse::from(order))
        .map(|v| (status, v))
        .map_err(|e| AppError::internal(format!("serializing an order: {e}")))
}

/// Check out the whole cart
///
/// Auth: a bearer token of any signed-in user (customer or admin); only the caller's own orders.
/// The cart's holds become the order's reservations; the order awaits payment for `payment_ttl`
/// (default 10 min). No body.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "Orders",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$",
            example = "3f0c9a4e-checkout-1",
            description = "Optional, 1..=128 visible ASCII characters. A repeat with the same key \
                on the same route returns the first answer (with `Idempotent-Replayed: true`) and \
                changes nothing; a repeat sent while the first runs waits for its answer; the same \
                key with a different request is 400 `invalid_request`. Answers are kept 24 hours; \
                a 503 or 500 is not kept, so a retry runs again. A request cut off (408, a \
                client hang-up) still runs to its end: its retry gets that answer. The key is \
                claimed only while a request works on it (a lease of `idempotency_lease`, 5 s, \
                renewed meanwhile), so a key whose server died is free again within it."),
    ),
    responses(
        (status = 201, description = "The order, `awaiting_payment`.", body = OrderResponse,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when this is the stored answer to an earlier request with \
                    the same `Idempotency-Key`.")),
            example = json!({
                "order_id": 17, "user_id": 42, "status": "awaiting_payment",
                "items": [{"sku": 1002, "name": "Headphones", "count": 2, "unit_price": 15000}],
                "total_price": 30000,
                "created_at": "2026-11-22T21:20:00.123Z",
                "expires_at": "2026-11-22T21:30:00.123Z",
                "paid_at": null, "cancelled_at": null, "cancel_reason": null
            })),
        (status = 400, description = "`invalid_request`: a malformed `Idempotency-Key`, a key \
            reused with a different request, or the order's total would pass 2^53 - 1 (the cart \
            is unchanged).", body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 409, description = "`out_of_stock`, `limit_exceeded` or `sale_not_active`: a \
            line could not be reserved (a sale line outside its window also gives its units \
            back); when other lines had been reserved they were given back, the order was \
            recorded as `failed` and the error names it in `order_id`; `cart_empty`: the cart \
            has no live line; `cart_changed`: another checkout of this cart is running or took \
            its lines (one cart, one order); `request_in_progress`: a repeat of an \
            `Idempotency-Key` whose first request is still running after 15 s.",
            body = ErrorEnvelope,
            example = json!({"error": {"code": "out_of_stock",
                "message": "sku 1003: 0 available, 2 requested; order 17 failed and holds nothing",
                "order_id": 17}})),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
async fn create_order(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
) -> Response {
    idempotency::once(&state, user.user_id, "checkout", key, String::new(), {
        let state = state.clone();
        move |progress| async move {
            let vanished = progress.resume_order;
            let order = match resumed(&state, user.user_id, &progress, Placing::Checkout).await? {
                Resumed::Answer(order) => order,
                Resumed::Continue(_) => {
                    orders::checkout(&state, user.user_id, &progress, vanished, true).await?
                }
                Resumed::Afresh => {
                    orders::checkout(&state, user.user_id, &progress, vanished, false).await?
                }
            };
            json_of(StatusCode::CREATED, order)
        }
    })
    .await
}

/// The order an earlier request with the same key was creating when it vanished, if there is
/// one to answer with (see `orders::resume`).
async fn resumed(
    state: &AppState,
    user_id: u64,
    progress: &idempotency::Progress,
    placing: Placing,
) -> AppResult<Resumed> {
    match progress.resume_order {
        Some(order_id) => orders::resume(state, user_id, order_id, placing).await,
        None => Ok(Resumed::Afresh),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"sku": 1002, "count": 1})))]
pub struct BuyNowRequest {
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    sku: u64,
    /// Units to buy, 1..=65535.
    #[schema(minimum = 1, maximum = 65535)]
    count: u64,
}

/// Buy one sku at once, without the cart
///
/// Auth: a bearer token of any signed-in user (customer or admin); only the caller's own orders.
#[utoipa::path(
    post,
    path = "/v1/orders/buy-now",
    tag = "Orders",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$",
            example = "3f0c9a4e-checkout-1",
            description = "Optional, 1..=128 visible ASCII characters. A repeat with the same key \
                on the same route returns the first answer (with `Idempotent-Replayed: true`) and \
                changes nothing; a repeat sent while the first runs waits for its answer; the same \
                key with a different request is 400 `invalid_request`. Answers are kept 24 hours; \
                a 503 or 500 is not kept, so a retry runs again. A request cut off (408, a \
                client hang-up) still runs to its end: its retry gets that answer. The key is \
                claimed only while a request works on it (a lease of `idempotency_lease`, 5 s, \
                renewed meanwhile), so a key whose server died is free again within it."),
    ),
    request_body(
        content = BuyNowRequest,
        description = "The sku and how many units.",
        example = json!({"sku": 1002, "count": 1})
    ),
    responses(
        (status = 201, description = "The order, `awaiting_payment`.", body = OrderResponse,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when this is the stored answer to an earlier request with \
                    the same `Idempotency-Key`."))),
        (status = 400, description = "`invalid_json`: the body is not JSON or not sent as \
            `Content-Type: application/json`; `invalid_request`: a field is missing, unknown or \
            out of range, the body is not a JSON object, a malformed `Idempotency-Key`, a key \
            reused with a different request, or a total above 2^53 - 1.", body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 404, description = "`not_found`: no product with that sku.",
            body = ErrorEnvelope),
        (status = 409, description = "`out_of_stock`, `limit_exceeded` or `sale_not_active`: the \
            units could not be reserved; nothing was recorded; `request_in_progress`: a repeat of \
            an `Idempotency-Key` whose first request is still running after 15 s.",
            body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
async fn buy_now(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<BuyNowRequest>,
) -> AppResult<Response> {
    let sku = Sku::parse(body.sku)?;
    let count = Count::parse(body.count)?;
    let fingerprint = format!("{sku}x{}", count.get());
    Ok(
        idempotency::once(&state, user.user_id, "buy-now", key, fingerprint, {
            let state = state.clone();
            move |progress| async move {
                let order =
                    match resumed(&state, user.user_id, &progress, Placing::BuyNow(sku)).await? {
                        Resumed::Answer(order) => order,
                        // A buy-now order is never continued: `resume` gave it up.
                        Resumed::Continue(_) | Resumed::Afresh => {
                            orders::buy_now(&state, user.user_id, sku, count, &progress).await?
                        }
                    };
                json_of(StatusCode::CREATED, order)
            }
        })
        .await,
    )
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only orders with this status.
    #[param(value_type = Option<OrderStatusSchema>, example = "paid")]
    status: Option<String>,
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100, example = 20)]
    limit: Option<usize>,
    /// Only orders with a smaller id (the previous page's `next_before_id`).
    #[param(example = 17)]
    before_id: Option<u64>,
}

#[derive(Serialize, ToSchema)]
#[schema(examples(json!({
    "items": [{
        "order_id": 17, "user_id": 42, "status": "paid",
        "items": [{"sku": 1002, "name": "Headphones", "count": 2, "unit_price": 15000}],
        "total_price": 30000,
        "created_at": "2026-11-22T21:20:00.123Z",
        "expires_at": "2026-11-22T21:30:00.123Z",
        "paid_at": "2026-11-22T21:21:40.500Z", "cancelled_at": null, "cancel_reason": null
    }],
    "next_before_id": null
})))]
pub struct OrderPage {
    /// The caller's orders, newest first.
    items: Vec<OrderResponse>,
    /// Pass as `before_id` for the next page; null on the last page.
    #[schema(required = true)]
    next_before_id: Option<u64>,
}

/// The caller's orders, newest first
///
/// Auth: a bearer token of any signed-in user (customer or admin); only the caller's own orders.
#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "Orders",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of the caller's orders.", body = OrderPage),
        (status = 400, description = "`invalid_request`: an unknown `status`, `limit` outside \
            1..=100, a parameter that is not a number, or an unknown parameter.",
            body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
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
        items: items.into_iter().map(OrderResponse::from).collect(),
        next_before_id,
    }))
}

/// One of the caller's orders
///
/// Auth: a bearer token of any signed-in user (customer or admin); only the caller's own orders. An
/// unpaid order past its payment window shows as `cancelled` with reason `expired`.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}",
    tag = "Orders",
    security(("bearer" = [])),
    params(
        ("order_id" = u64, Path, description = "The order's id.", example = 17),
    ),
    responses(
        (status = 200, description = "The order.", body = OrderResponse,
            example = json!({
                "order_id": 17, "user_id": 42, "status": "awaiting_payment",
                "items": [{"sku": 1002, "name": "Headphones", "count": 2, "unit_price": 15000}],
                "total_price": 30000,
                "created_at": "2026-11-22T21:20:00.123Z",
                "expires_at": "2026-11-22T21:30:00.123Z",
                "paid_at": null, "cancelled_at": null, "cancel_reason": null
            })),
        (status = 400, description = "`invalid_request`: the order id is not a number.",
            body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 404, description = "`not_found`: no such order of the caller's (another \
            customer's order is not found either).", body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_id): Path<u64>,
) -> AppResult<axum::Json<OrderResponse>> {
    Ok(axum::Json(
        orders::get(&state, user.user_id, order_id).await?.into(),
    ))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"payment_ref": "psp-7f3a21"})))]
pub struct PayRequest {
    /// The payment provider's reference: at most 128 characters, no control characters.
    #[schema(max_length = 128)]
    payment_ref: Option<String>,
}

/// Pay an order
///
/// Auth: a bearer token of any signed-in user (customer or admin); only the caller's own orders.
/// The body is optional: none, or `{"payment_ref": "..."}`. Paying a paid order again answers 200
/// with it, unchanged.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/pay",
    tag = "Orders",
    security(("bearer" = [])),
    params(
        ("order_id" = u64, Path, description = "The order's id.", example = 17),
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$",
            example = "3f0c9a4e-checkout-1",
            description = "Optional, 1..=128 visible ASCII characters. A repeat with the same key \
                on the same route returns the first answer (with `Idempotent-Replayed: true`) and \
                changes nothing; a repeat sent while the first runs waits for its answer; the same \
                key with a different request is 400 `invalid_request`. Answers are kept 24 hours; \
                a 503 or 500 is not kept, so a retry runs again. A request cut off (408, a \
                client hang-up) still runs to its end: its retry gets that answer. The key is \
                claimed only while a request works on it (a lease of `idempotency_lease`, 5 s, \
                renewed meanwhile), so a key whose server died is free again within it."),
    ),
    request_body(
        content = PayRequest,
        description = "Optional: the payment reference.",
        example = json!({"payment_ref": "psp-7f3a21"})
    ),
    responses(
        (status = 200, description = "The order, `paid` (also on a repeat).", body = OrderResponse,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when this is the stored answer to an earlier request with \
                    the same `Idempotency-Key`.")),
            example = json!({
                "order_id": 17, "user_id": 42, "status": "paid",
                "items": [{"sku": 1002, "name": "Headphones", "count": 2, "unit_price": 15000}],
                "total_price": 30000,
                "created_at": "2026-11-22T21:20:00.123Z",
                "expires_at": "2026-11-22T21:30:00.123Z",
                "paid_at": "2026-11-22T21:21:40.500Z", "cancelled_at": null, "cancel_reason": null
            })),
        (status = 400, description = "`invalid_json`: the body is not JSON; \
            `invalid_request`: the order id is not a number, an unknown field, a `payment_ref` \
            over 128 characters or with control characters, a malformed `Idempotency-Key`, or a \
            key reused with a different request.",
            body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 404, description = "`not_found`: no such order of the caller's (another \
            customer's order is not found either).", body = ErrorEnvelope),
        (status = 409, description = "`order_not_payable`: the order is cancelled, expired or \
            failed, or still `new` (its checkout still runs); `request_in_progress`: a repeat of \
            an `Idempotency-Key` whose first request is still running after 15 s.",
            body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
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
    if payment_ref.chars().count() > 128 || payment_ref.chars().any(char::is_control) {
        return Err(AppError::InvalidRequest(
            "payment_ref must be at most 128 characters, without control characters".into(),
        ));
    }
    let scope = format!("pay:{order_id}");
    Ok(
        idempotency::once(&state, user.user_id, &scope, key, payment_ref.clone(), {
            let state = state.clone();
            move |_progress| async move {
                let order = orders::pay(&state, user.user_id, order_id, &payment_ref).await?;
                json_of(StatusCode::OK, order)
            }
        })
        .await,
    )
}

/// Cancel an order
///
/// Auth: a bearer token of any signed-in user (customer or admin); only the caller's own orders.
/// Its units become available again. Cancelling a cancelled order again answers 200 with it,
/// unchanged. No body.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/cancel",
    tag = "Orders",
    security(("bearer" = [])),
    params(
        ("order_id" = u64, Path, description = "The order's id.", example = 17),
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$",
            example = "3f0c9a4e-checkout-1",
            description = "Optional, 1..=128 visible ASCII characters. A repeat with the same key \
                on the same route returns the first answer (with `Idempotent-Replayed: true`) and \
                changes nothing; a repeat sent while the first runs waits for its answer; the same \
                key with a different request is 400 `invalid_request`. Answers are kept 24 hours; \
                a 503 or 500 is not kept, so a retry runs again. A request cut off (408, a \
                client hang-up) still runs to its end: its retry gets that answer. The key is \
                claimed only while a request works on it (a lease of `idempotency_lease`, 5 s, \
                renewed meanwhile), so a key whose server died is free again within it."),
    ),
    responses(
        (status = 200, description = "The order, `cancelled` (also on a repeat).",
            body = OrderResponse, headers(("Idempotent-Replayed" = String,
                description = "`true` when this is the stored answer to an earlier request with \
                    the same `Idempotency-Key`.")),
            example = json!({
                "order_id": 17, "user_id": 42, "status": "cancelled",
                "items": [{"sku": 1002, "name": "Headphones", "count": 2, "unit_price": 15000}],
                "total_price": 30000,
                "created_at": "2026-11-22T21:20:00.123Z",
                "expires_at": "2026-11-22T21:30:00.123Z",
                "paid_at": null, "cancelled_at": "2026-11-22T21:22:10.000Z",
                "cancel_reason": "customer"
            })),
        (status = 400, description = "`invalid_request`: the order id is not a number, a \
            malformed `Idempotency-Key`, or a key reused with a different request.",
            body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 404, description = "`not_found`: no such order of the caller's (another \
            customer's order is not found either).", body = ErrorEnvelope),
        (status = 409, description = "`order_not_cancellable`: the order is paid or failed; \
            `request_in_progress`: a repeat of an `Idempotency-Key` whose first request is still \
            running after 15 s.", body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Path(order_id): Path<u64>,
) -> Response {
    let scope = format!("cancel:{order_id}");
    let work = {
        let state = state.clone();
        move |_progress| async move {
            let order = orders::cancel(&state, user.user_id, order_id).await?;
            json_of(StatusCode::OK, order)
        }
    };
    idempotency::once(&state, user.user_id, &scope, key, String::new(), work).await
}
