//! The caller's cart.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::Deserialize;

use super::extract::{AuthUser, Json, Path, Query};
use crate::app::AppState;
use crate::domain::{Count, Sku};
use crate::error::AppResult;
use crate::service::cart::{self, CartView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/cart", get(get_cart).delete(clear_cart))
        .route("/v1/cart/items", post(add_cart_item))
        .route("/v1/cart/items/{sku}", delete(remove_cart_item))
}

async fn get_cart(
    State(state): State<AppState>,
    user: AuthUser,
) -> AppResult<axum::Json<CartView>> {
    Ok(axum::Json(cart::view(&state, user.user_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddItemRequest {
    sku: u64,
    count: u64,
}

async fn add_cart_item(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<AddItemRequest>,
) -> AppResult<axum::Json<CartView>> {
    let sku = Sku::parse(body.sku)?;
    let count = Count::parse(body.count)?;
    Ok(axum::Json(
        cart::add_item(&state, user.user_id, sku, count).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    count: Option<u64>,
}

async fn remove_cart_item(
    State(state): State<AppState>,
    user: AuthUser,
    Path(raw): Path<u64>,
    Query(q): Query<RemoveParams>,
) -> AppResult<axum::Json<CartView>> {
    let sku = Sku::parse(raw)?;
    let count = q.count.map(Count::parse).transpose()?;
    Ok(axum::Json(
        cart::remove_item(&state, user.user_id, sku, count).await?,
    ))
}

async fn clear_cart(State(state): State<AppState>, user: AuthUser) -> AppResult<StatusCode> {
    cart::clear(&state, user.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
