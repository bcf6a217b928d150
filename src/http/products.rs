//! Catalog, warehouses, stock and sale windows.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::extract::{AdminUser, Json, Path, Query};
use crate::app::AppState;
use crate::domain::{Price, ProductName, SaleWindow, Sku, StockDelta, WarehouseName};
use crate::error::{AppError, AppResult};
use crate::service::catalog::{
    self, ProductView, SaleView, SalesReport, StockAdjusted, WarehouseStock, WarehouseView,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/products", post(create_product).get(list_products))
        .route("/v1/products/{sku}", get(get_product).patch(update_product))
        .route("/v1/warehouses", post(create_warehouse))
        .route("/v1/products/{sku}/stock", post(adjust_stock))
        .route("/v1/products/{sku}/stocks", get(get_stocks))
        .route(
            "/v1/products/{sku}/sale",
            axum::routing::put(put_sale).delete(delete_sale),
        )
        .route("/v1/products/{sku}/sales-report", get(get_sales_report))
}

fn sku(raw: u64) -> AppResult<Sku> {
    Sku::parse(raw)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    sku: Option<u64>,
    name: String,
    price: u64,
}

async fn create_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(body): Json<CreateProductRequest>,
) -> AppResult<(StatusCode, axum::Json<ProductView>)> {
    let sku = body.sku.map(Sku::parse).transpose()?;
    let name = ProductName::parse(&body.name)?;
    let price = Price::parse(body.price)?;
    let p = catalog::create_product(&state, sku, &name, price).await?;
    Ok((StatusCode::CREATED, axum::Json(p)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    after_sku: Option<u32>,
    limit: Option<u32>,
}

#[derive(Serialize)]
pub struct ProductPage {
    items: Vec<ProductView>,
    next_after_sku: Option<u32>,
}

async fn list_products(
    State(state): State<AppState>,
    Query(q): Query<ListParams>,
) -> AppResult<axum::Json<ProductPage>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(AppError::InvalidRequest("limit must be 1..=200".into()));
    }
    let (items, next_after_sku) =
        catalog::list_products(&state, q.after_sku.unwrap_or(0), limit).await?;
    Ok(axum::Json(ProductPage {
        items,
        next_after_sku,
    }))
}

async fn get_product(
    State(state): State<AppState>,
    Path(raw): Path<u64>,
) -> AppResult<axum::Json<ProductView>> {
    Ok(axum::Json(catalog::get_product(&state, sku(raw)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductRequest {
    name: Option<String>,
    price: Option<u64>,
}

async fn update_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
    Json(body): Json<UpdateProductRequest>,
) -> AppResult<axum::Json<ProductView>> {
    let sku = sku(raw)?;
    let name = body.name.as_deref().map(ProductName::parse).transpose()?;
    let price = body.price.map(Price::parse).transpose()?;
    if name.is_none() && price.is_none() {
        return Err(AppError::InvalidRequest("give name, price or both".into()));
    }
    Ok(axum::Json(
        catalog::update_product(&state, sku, name, price).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWarehouseRequest {
    name: String,
}

async fn create_warehouse(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(body): Json<CreateWarehouseRequest>,
) -> AppResult<(StatusCode, axum::Json<WarehouseView>)> {
    let name = WarehouseName::parse(&body.name)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(catalog::create_warehouse(&state, name).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustStockRequest {
    warehouse_id: u32,
    delta: i64,
}

async fn adjust_stock(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
    Json(body): Json<AdjustStockRequest>,
) -> AppResult<axum::Json<StockAdjusted>> {
    let sku = sku(raw)?;
    let delta = StockDelta::parse(body.delta)?;
    Ok(axum::Json(
        catalog::adjust_stock(&state, sku, body.warehouse_id, delta).await?,
    ))
}

#[derive(Serialize)]
pub struct Stocks {
    sku: u32,
    stocks: Vec<WarehouseStock>,
}

async fn get_stocks(
    State(state): State<AppState>,
    Path(raw): Path<u64>,
) -> AppResult<axum::Json<Stocks>> {
    let sku = sku(raw)?;
    Ok(axum::Json(Stocks {
        sku: sku.get(),
        stocks: catalog::stocks(&state, sku).await?,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSaleRequest {
    sale_price: u64,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    per_customer_limit: Option<u64>,
}

async fn put_sale(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
    Json(body): Json<PutSaleRequest>,
) -> AppResult<axum::Json<SaleView>> {
    let sku = sku(raw)?;
    let window = SaleWindow::parse(
        body.sale_price,
        body.starts_at,
        body.ends_at,
        body.per_customer_limit,
    )?;
    Ok(axum::Json(catalog::put_sale(&state, sku, window).await?))
}

async fn delete_sale(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
) -> AppResult<StatusCode> {
    catalog::delete_sale(&state, sku(raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_sales_report(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
) -> AppResult<axum::Json<SalesReport>> {
    Ok(axum::Json(catalog::sales_report(&state, sku(raw)?).await?))
}
