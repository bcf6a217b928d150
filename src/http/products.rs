//! Catalog, warehouses, stock and sale windows.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminUser, Json, Path, Query};
use super::openapi::{
    E400_BODY, E400_SKU, E401, E403, E404_SKU, E413, ErrorEnvelope, Internal, Unavailable,
};
use super::responses::{
    ProductResponse, SaleResponse, SalesReportResponse, StockAdjustedResponse, WarehouseResponse,
    WarehouseStockResponse,
};
use crate::app::AppState;
use crate::domain::{Price, ProductName, SaleWindow, Sku, StockDelta, WarehouseName};
use crate::error::{AppError, AppResult};
use crate::service::catalog;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(create_product, list_products))
        .routes(routes!(get_product, update_product))
        .routes(routes!(create_warehouse))
        .routes(routes!(adjust_stock))
        .routes(routes!(get_stocks))
        .routes(routes!(put_sale, delete_sale))
        .routes(routes!(get_sales_report))
}

fn sku(raw: u64) -> AppResult<Sku> {
    Ok(Sku::parse(raw)?)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"sku": 1002, "name": "Headphones", "price": 20000})))]
pub struct CreateProductRequest {
    /// The sku to use (1..=4294967295); assigned when absent or null.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    sku: Option<u64>,
    /// 1..=200 characters once surrounding whitespace is trimmed (and stored trimmed), at least
    /// one of them visible; no control, bidirectional-control, zero-width-space or filler
    /// characters (docs/API.md lists them).
    /// (No `maxLength`: the limit is on the trimmed name.)
    #[schema(min_length = 1)]
    name: String,
    /// The regular price in minor units, 0..=10^13.
    #[schema(maximum = 10000000000000_u64)]
    price: u64,
}

/// Create a product
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`). The product starts with
/// no stock and no sale window.
#[utoipa::path(
    post,
    path = "/v1/products",
    tag = "Catalog and stock",
    security(("bearer" = [])),
    request_body(
        content = CreateProductRequest,
        description = "The product; omit `sku` to have one assigned.",
        example = json!({"sku": 1002, "name": "Headphones", "price": 20000})
    ),
    responses(
        (status = 201, description = "The product was created.", body = ProductResponse,
            example = json!({"sku": 1002, "name": "Headphones", "price": 20000, "available": 0,
                "sale": null})),
        (status = 400, description = E400_BODY, body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = E403, body = ErrorEnvelope),
        (status = 409, description = "`already_exists`: a product has that sku.",
            body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn create_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(body): Json<CreateProductRequest>,
) -> AppResult<(StatusCode, axum::Json<ProductResponse>)> {
    let sku = body.sku.map(Sku::parse).transpose()?;
    let name = ProductName::parse(&body.name)?;
    let price = Price::parse(body.price)?;
    let p = catalog::create_product(&state, sku, &name, price).await?;
    Ok((StatusCode::CREATED, axum::Json(p.into())))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// List the products with a sku above this one (the previous page's `next_after_sku`).
    #[param(maximum = 4294967295_u64, example = 1002)]
    after_sku: Option<u32>,
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200, example = 50)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
#[schema(examples(json!({
    "items": [{"sku": 1002, "name": "Headphones", "price": 20000, "available": 37, "sale": null}],
    "next_after_sku": null
})))]
pub struct ProductPage {
    /// Products by ascending sku.
    items: Vec<ProductResponse>,
    /// Pass as `after_sku` for the next page; null on the last page.
    #[schema(required = true)]
    next_after_sku: Option<u32>,
}

/// List products
///
/// No auth. Pages by ascending sku.
#[utoipa::path(
    get,
    path = "/v1/products",
    tag = "Catalog and stock",
    params(ListParams),
    responses(
        (status = 200, description = "A page of products.", body = ProductPage),
        (status = 400, description = "`invalid_request`: `limit` outside 1..=200, a parameter \
            that is not a number, or an unknown parameter.", body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
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
        items: items.into_iter().map(ProductResponse::from).collect(),
        next_after_sku,
    }))
}

/// A product
///
/// No auth.
#[utoipa::path(
    get,
    path = "/v1/products/{sku}",
    tag = "Catalog and stock",
    params(
        ("sku" = u32, Path, minimum = 1, maximum = 4294967295_u64, example = 1002,
            description = "The product's sku (1..=4294967295)."),
    ),
    responses(
        (status = 200, description = "The product.", body = ProductResponse),
        (status = 400, description = E400_SKU, body = ErrorEnvelope),
        (status = 404, description = E404_SKU, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn get_product(
    State(state): State<AppState>,
    Path(raw): Path<u64>,
) -> AppResult<axum::Json<ProductResponse>> {
    Ok(axum::Json(
        catalog::get_product(&state, sku(raw)?).await?.into(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"name": "Headphones Pro", "price": 22000})))]
pub struct UpdateProductRequest {
    /// The new name: 1..=200 characters once surrounding whitespace is trimmed (and stored
    /// trimmed), at least one of them visible; no control, bidirectional-control,
    /// zero-width-space or filler characters (docs/API.md lists them). (No `maxLength`: the
    /// limit is on the trimmed name.)
    #[schema(min_length = 1)]
    name: Option<String>,
    /// The new regular price in minor units, 0..=10^13.
    #[schema(maximum = 10000000000000_u64)]
    price: Option<u64>,
}

/// Rename or reprice a product
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`). Give `name`, `price` or
/// both.
#[utoipa::path(
    patch,
    path = "/v1/products/{sku}",
    tag = "Catalog and stock",
    security(("bearer" = [])),
    params(
        ("sku" = u32, Path, minimum = 1, maximum = 4294967295_u64, example = 1002,
            description = "The product's sku (1..=4294967295)."),
    ),
    request_body(
        content = UpdateProductRequest,
        description = "What changes: `name`, `price` or both.",
        example = json!({"price": 22000})
    ),
    responses(
        (status = 200, description = "The changed product.", body = ProductResponse),
        (status = 400, description = "`invalid_json`: the body is not JSON or not sent as \
            `Content-Type: application/json`; `invalid_request`: the sku is not a number in \
            1..=4294967295, or a field is missing, unknown, out of range or malformed, or the body \
            is not a JSON object. Neither `name` nor `price` given is \
            `invalid_request` too.", body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = E403, body = ErrorEnvelope),
        (status = 404, description = E404_SKU, body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn update_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
    Json(body): Json<UpdateProductRequest>,
) -> AppResult<axum::Json<ProductResponse>> {
    let sku = sku(raw)?;
    let name = body.name.as_deref().map(ProductName::parse).transpose()?;
    let price = body.price.map(Price::parse).transpose()?;
    if name.is_none() && price.is_none() {
        return Err(AppError::InvalidRequest("give name, price or both".into()));
    }
    Ok(axum::Json(
        catalog::update_product(&state, sku, name, price)
            .await?
            .into(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"name": "Berlin North"})))]
pub struct CreateWarehouseRequest {
    /// 1..=100 characters once surrounding whitespace is trimmed (and stored trimmed), at least
    /// one of them visible; no control, bidirectional-control, zero-width-space or filler
    /// characters (docs/API.md lists them); unique. (No `maxLength`: the limit is on the
    /// trimmed name.)
    #[schema(min_length = 1)]
    name: String,
}

/// Create a warehouse
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`).
#[utoipa::path(
    post,
    path = "/v1/warehouses",
    tag = "Catalog and stock",
    security(("bearer" = [])),
    request_body(
        content = CreateWarehouseRequest,
        description = "The warehouse.",
        example = json!({"name": "Berlin North"})
    ),
    responses(
        (status = 201, description = "The warehouse was created.", body = WarehouseResponse),
        (status = 400, description = E400_BODY, body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = E403, body = ErrorEnvelope),
        (status = 409, description = "`already_exists`: a warehouse has that name.",
            body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn create_warehouse(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(body): Json<CreateWarehouseRequest>,
) -> AppResult<(StatusCode, axum::Json<WarehouseResponse>)> {
    let name = WarehouseName::parse(&body.name)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(catalog::create_warehouse(&state, name).await?.into()),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"warehouse_id": 3, "delta": 100})))]
pub struct AdjustStockRequest {
    #[schema(maximum = 4294967295_u64)]
    warehouse_id: u32,
    /// Units to add (positive) or remove (negative): non-zero, within ±10^9. Only available
    /// units can be removed.
    #[schema(minimum = -1000000000_i64, maximum = 1000000000_i64, examples(100, -5))]
    delta: i64,
}

/// Add or remove on-hand stock in one warehouse
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`). Only available units can
/// be removed: held, reserved and sold units stay. Answers with that warehouse's counts.
#[utoipa::path(
    post,
    path = "/v1/products/{sku}/stock",
    tag = "Catalog and stock",
    security(("bearer" = [])),
    params(
        ("sku" = u32, Path, minimum = 1, maximum = 4294967295_u64, example = 1002,
            description = "The product's sku (1..=4294967295)."),
    ),
    request_body(
        content = AdjustStockRequest,
        description = "The warehouse and the change.",
        example = json!({"warehouse_id": 3, "delta": 100})
    ),
    responses(
        (status = 200, description = "The warehouse's stock of the product after the change.",
            body = StockAdjustedResponse),
        (status = 400, description = "`invalid_json`: the body is not JSON or not sent as \
            `Content-Type: application/json`; `invalid_request`: the sku is not a number in \
            1..=4294967295, or a field is missing, unknown, out of range or malformed, or the body \
            is not a JSON object. A `delta` of 0 or beyond ±10^9 is `invalid_request` \
            too.", body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = E403, body = ErrorEnvelope),
        (status = 404, description = "`not_found`: no product with that sku, or no such warehouse.",
            body = ErrorEnvelope),
        (status = 409, description = "`out_of_stock`: the removal asks for more units than are \
            available in that warehouse; nothing changed.", body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn adjust_stock(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
    Json(body): Json<AdjustStockRequest>,
) -> AppResult<axum::Json<StockAdjustedResponse>> {
    let sku = sku(raw)?;
    let delta = StockDelta::parse(body.delta)?;
    Ok(axum::Json(
        catalog::adjust_stock(&state, sku, body.warehouse_id, delta)
            .await?
            .into(),
    ))
}

#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"sku": 1002, "stocks": [{"warehouse_id": 3, "count": 100}]})))]
pub struct Stocks {
    sku: u32,
    /// Units that can still be bought, per warehouse.
    stocks: Vec<WarehouseStockResponse>,
}

/// Units that can still be bought, per warehouse
///
/// No auth.
#[utoipa::path(
    get,
    path = "/v1/products/{sku}/stocks",
    tag = "Catalog and stock",
    params(
        ("sku" = u32, Path, minimum = 1, maximum = 4294967295_u64, example = 1002,
            description = "The product's sku (1..=4294967295)."),
    ),
    responses(
        (status = 200, description = "Available units per warehouse.", body = Stocks),
        (status = 400, description = E400_SKU, body = ErrorEnvelope),
        (status = 404, description = E404_SKU, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn get_stocks(
    State(state): State<AppState>,
    Path(raw): Path<u64>,
) -> AppResult<axum::Json<Stocks>> {
    let sku = sku(raw)?;
    Ok(axum::Json(Stocks {
        sku: sku.get(),
        stocks: catalog::stocks(&state, sku)
            .await?
            .into_iter()
            .map(WarehouseStockResponse::from)
            .collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "sale_price": 15000,
    "starts_at": "2026-11-22T20:00:00Z",
    "ends_at": "2026-11-22T22:00:00Z",
    "per_customer_limit": 2
})))]
pub struct PutSaleRequest {
    /// The price charged inside the window, in minor units, 0..=10^13.
    #[schema(maximum = 10000000000000_u64)]
    sale_price: u64,
    /// The window opens (kept to the millisecond), within
    /// 1970-01-01T00:00:00Z..=9999-12-31T23:59:59.999Z.
    starts_at: DateTime<Utc>,
    /// The window closes: after `starts_at`, at the latest 9999-12-31T23:59:59.999Z.
    ends_at: DateTime<Utc>,
    /// Units one customer may buy, 1..=65535; absent or null: no limit.
    #[schema(minimum = 1, maximum = 65535)]
    per_customer_limit: Option<u64>,
}

/// Set the product's sale window
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`). Replaces any window the
/// product had. Inside the window `sale_price` is charged; outside it the product cannot be bought.
#[utoipa::path(
    put,
    path = "/v1/products/{sku}/sale",
    tag = "Catalog and stock",
    security(("bearer" = [])),
    params(
        ("sku" = u32, Path, minimum = 1, maximum = 4294967295_u64, example = 1002,
            description = "The product's sku (1..=4294967295)."),
    ),
    request_body(
        content = PutSaleRequest,
        description = "The sale window.",
        example = json!({
            "sale_price": 15000,
            "starts_at": "2026-11-22T20:00:00Z",
            "ends_at": "2026-11-22T22:00:00Z",
            "per_customer_limit": 2
        })
    ),
    responses(
        (status = 200, description = "The sale window as set.", body = SaleResponse),
        (status = 400, description = "`invalid_json`: the body is not JSON or not sent as \
            `Content-Type: application/json`; `invalid_request`: the sku is not a number in \
            1..=4294967295, or a field is missing, unknown, out of range or malformed, or the body \
            is not a JSON object. `ends_at` not after `starts_at`, a time before \
            1970-01-01T00:00:00Z or after 9999-12-31T23:59:59.999Z, or a \
            `per_customer_limit` outside 1..=65535 is `invalid_request` too.",
            body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = E403, body = ErrorEnvelope),
        (status = 404, description = E404_SKU, body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn put_sale(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
    Json(body): Json<PutSaleRequest>,
) -> AppResult<axum::Json<SaleResponse>> {
    let sku = sku(raw)?;
    let window = SaleWindow::parse(
        body.sale_price,
        body.starts_at,
        body.ends_at,
        body.per_customer_limit,
    )?;
    Ok(axum::Json(
        catalog::put_sale(&state, sku, window).await?.into(),
    ))
}

/// Remove the product's sale window
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`). Answers 204 also when
/// there was none.
#[utoipa::path(
    delete,
    path = "/v1/products/{sku}/sale",
    tag = "Catalog and stock",
    security(("bearer" = [])),
    params(
        ("sku" = u32, Path, minimum = 1, maximum = 4294967295_u64, example = 1002,
            description = "The product's sku (1..=4294967295)."),
    ),
    responses(
        (status = 204, description = "The product has no sale window now."),
        (status = 400, description = E400_SKU, body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = E403, body = ErrorEnvelope),
        (status = 404, description = E404_SKU, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn delete_sale(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
) -> AppResult<StatusCode> {
    catalog::delete_sale(&state, sku(raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The product's stock buckets and sales
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`). `on_hand = available +
/// held + reserved + sold`, where `sold` is sold and not yet written back to `on_hand`;
/// `sold_total` counts every unit sold since the counters were loaded.
#[utoipa::path(
    get,
    path = "/v1/products/{sku}/sales-report",
    tag = "Catalog and stock",
    security(("bearer" = [])),
    params(
        ("sku" = u32, Path, minimum = 1, maximum = 4294967295_u64, example = 1002,
            description = "The product's sku (1..=4294967295)."),
    ),
    responses(
        (status = 200, description = "The product's buckets.", body = SalesReportResponse),
        (status = 400, description = E400_SKU, body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = E403, body = ErrorEnvelope),
        (status = 404, description = E404_SKU, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn get_sales_report(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(raw): Path<u64>,
) -> AppResult<axum::Json<SalesReportResponse>> {
    Ok(axum::Json(
        catalog::sales_report(&state, sku(raw)?).await?.into(),
    ))
}
