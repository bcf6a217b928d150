//! The caller's cart.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AuthUser, Json, Path, Query};
use super::openapi::{E401, E413, ErrorEnvelope, Internal, RateLimited, Unavailable};
use super::responses::CartResponse;
use crate::app::AppState;
use crate::domain::{Count, Sku};
use crate::error::AppResult;
use crate::service::cart;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(get_cart, clear_cart))
        .routes(routes!(add_cart_item))
        .routes(routes!(remove_cart_item))
}

/// The caller's cart
///
/// Auth: a bearer token of any signed-in user (customer or admin); the cart is the caller's own. A
/// line whose hold expired is gone at once.
#[utoipa::path(
    get,
    path = "/v1/cart",
    tag = "Cart",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cart, with the catalog's current names and prices.",
            body = CartResponse),
        (status = 401, description = E401, body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
async fn get_cart(
    State(state): State<AppState>,
    user: AuthUser,
) -> AppResult<axum::Json<CartResponse>> {
    Ok(axum::Json(cart::view(&state, user.user_id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"sku": 1002, "count": 2})))]
pub struct AddItemRequest {
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    sku: u64,
    /// Units to add to the line, 1..=65535.
    #[schema(minimum = 1, maximum = 65535)]
    count: u64,
}

/// Add units to the cart, reserving them at once
///
/// Auth: a bearer token of any signed-in user (customer or admin); the cart is the caller's own.
/// The line's hold lasts `cart_hold_ttl` (default 10 min) from when the line was first added;
/// adding to the line keeps that deadline.
#[utoipa::path(
    post,
    path = "/v1/cart/items",
    tag = "Cart",
    security(("bearer" = [])),
    request_body(
        content = AddItemRequest,
        description = "The sku and how many units to add.",
        example = json!({"sku": 1002, "count": 2})
    ),
    responses(
        (status = 200, description = "The cart after the change.", body = CartResponse),
        (status = 400, description = "`invalid_json`: the body is not JSON or not sent as \
            `Content-Type: application/json`; `invalid_request`: a field is missing, unknown, out \
            of range or malformed, the body is not a JSON object, or the line would hold more \
            than 65,535 units or total more than 2^53 - 1.", body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 404, description = "`not_found`: no product with that sku.",
            body = ErrorEnvelope),
        (status = 409, description = "`out_of_stock`: fewer units available than asked; \
            `limit_exceeded`: the sale's per-customer limit would be passed (units in the cart, \
            in open orders and bought count); `sale_not_active`: the product has a sale window \
            and it is not open now; `cart_full`: the cart already holds the most different \
            products allowed (`max_cart_lines`, default 20). Nothing was reserved.", body = ErrorEnvelope,
            example = json!({"error": {"code": "out_of_stock",
                "message": "sku 1002: 0 available, 2 requested"}})),
        (status = 413, description = E413, body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
async fn add_cart_item(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<AddItemRequest>,
) -> AppResult<axum::Json<CartResponse>> {
    let sku = Sku::parse(body.sku)?;
    let count = Count::parse(body.count)?;
    Ok(axum::Json(
        cart::add_item(&state, user.user_id, sku, count)
            .await?
            .into(),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveParams {
    /// Units to release, 1..=65535; all of the line when absent or above the line's count.
    #[param(minimum = 1, maximum = 65535, example = 1)]
    count: Option<u64>,
}

/// Release units of a cart line
///
/// Auth: a bearer token of any signed-in user (customer or admin); the cart is the caller's own.
/// Answers 200 with the cart (unchanged) when the sku is not in the cart.
#[utoipa::path(
    delete,
    path = "/v1/cart/items/{sku}",
    tag = "Cart",
    security(("bearer" = [])),
    params(
        ("sku" = u32, Path, minimum = 1, maximum = 4294967295_u64, description = "The line's sku.", example = 1002),
        RemoveParams,
    ),
    responses(
        (status = 200, description = "The cart after the release.", body = CartResponse),
        (status = 400, description = "`invalid_request`: the sku is not a number in \
            1..=4294967295, `count` outside 1..=65535, or an unknown parameter.",
            body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
async fn remove_cart_item(
    State(state): State<AppState>,
    user: AuthUser,
    Path(raw): Path<u64>,
    Query(q): Query<RemoveParams>,
) -> AppResult<axum::Json<CartResponse>> {
    let sku = Sku::parse(raw)?;
    let count = q.count.map(Count::parse).transpose()?;
    Ok(axum::Json(
        cart::remove_item(&state, user.user_id, sku, count)
            .await?
            .into(),
    ))
}

/// Empty the cart
///
/// Auth: a bearer token of any signed-in user (customer or admin); the cart is the caller's own.
/// Every hold is released.
#[utoipa::path(
    delete,
    path = "/v1/cart",
    tag = "Cart",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The cart is empty; every hold was released."),
        (status = 401, description = E401, body = ErrorEnvelope),
        RateLimited,
        Internal,
        Unavailable,
    )
)]
async fn clear_cart(State(state): State<AppState>, user: AuthUser) -> AppResult<StatusCode> {
    cart::clear(&state, user.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
