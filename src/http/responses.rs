//! The JSON the API answers with, and its OpenAPI schemas. The service hands back views
//! (`service::catalog::ProductView`, `service::orders::OrderView`, ...); the handlers answer with
//! these, built from them by `From`. Each keeps its view's name in the document (`as = ...`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain;
use crate::service::cart::{CartLine, CartView};
use crate::service::catalog::{
    ProductView, SaleView, SalesReport, StockAdjusted, WarehouseStock, WarehouseView,
};
use crate::service::orders::OrderView;

/// A product as the catalog shows it: `available` counts the units that can still be bought.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProductView, examples(json!({
    "sku": 1002,
    "name": "Headphones",
    "price": 20000,
    "available": 37,
    "sale": {
        "sale_price": 15000,
        "starts_at": "2026-11-22T20:00:00Z",
        "ends_at": "2026-11-22T22:00:00Z",
        "per_customer_limit": 2,
        "active": true
    }
})))]
pub struct ProductResponse {
    #[schema(minimum = 1)]
    sku: u32,
    name: String,
    /// The regular price, in minor units.
    price: u64,
    available: i64,
    /// The sale window, or null when the product has none.
    #[schema(required = true)]
    sale: Option<SaleResponse>,
}

impl From<ProductView> for ProductResponse {
    fn from(v: ProductView) -> Self {
        ProductResponse {
            sku: v.sku,
            name: v.name,
            price: v.price,
            available: v.available,
            sale: v.sale.map(SaleResponse::from),
        }
    }
}

/// A product's sale window: `sale_price` is charged in [`starts_at`, `ends_at`), and the product
/// can be bought only inside the window.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SaleView, examples(json!({
    "sale_price": 15000,
    "starts_at": "2026-11-22T20:00:00Z",
    "ends_at": "2026-11-22T22:00:00Z",
    "per_customer_limit": 2,
    "active": true
})))]
pub struct SaleResponse {
    sale_price: u64,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    /// Units one customer may buy of this product (null: no limit).
    #[schema(required = true, minimum = 1, maximum = 65535)]
    per_customer_limit: Option<u32>,
    /// Whether the window is open now.
    active: bool,
}

impl From<SaleView> for SaleResponse {
    fn from(v: SaleView) -> Self {
        SaleResponse {
            sale_price: v.sale_price,
            starts_at: v.starts_at,
            ends_at: v.ends_at,
            per_customer_limit: v.per_customer_limit,
            active: v.active,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WarehouseView, examples(json!({"warehouse_id": 3, "name": "Berlin North"})))]
pub struct WarehouseResponse {
    warehouse_id: u32,
    name: String,
}

impl From<WarehouseView> for WarehouseResponse {
    fn from(v: WarehouseView) -> Self {
        WarehouseResponse {
            warehouse_id: v.warehouse_id,
            name: v.name,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StockAdjusted,
    examples(json!({"sku": 1002, "warehouse_id": 3, "on_hand": 120, "available": 100})))]
pub struct StockAdjustedResponse {
    sku: u32,
    warehouse_id: u32,
    /// On-hand units in that warehouse (MySQL).
    on_hand: u64,
    /// Units of that warehouse that can still be bought (Redis).
    available: i64,
}

impl From<StockAdjusted> for StockAdjustedResponse {
    fn from(v: StockAdjusted) -> Self {
        StockAdjustedResponse {
            sku: v.sku,
            warehouse_id: v.warehouse_id,
            on_hand: v.on_hand,
            available: v.available,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WarehouseStock, examples(json!({"warehouse_id": 3, "count": 100})))]
pub struct WarehouseStockResponse {
    warehouse_id: u32,
    count: i64,
}

impl From<WarehouseStock> for WarehouseStockResponse {
    fn from(v: WarehouseStock) -> Self {
        WarehouseStockResponse {
            warehouse_id: v.warehouse_id,
            count: v.count,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SalesReport, examples(json!({
    "sku": 1002, "on_hand": 120, "available": 100, "held": 6, "reserved": 4, "sold": 10,
    "sold_total": 25
})))]
pub struct SalesReportResponse {
    sku: u32,
    on_hand: u64,
    available: i64,
    held: i64,
    reserved: i64,
    /// Sold and not yet written back to `on_hand`: on_hand = available + held + reserved + sold.
    sold: i64,
    /// Sold since the counters were loaded into Redis.
    sold_total: i64,
}

impl From<SalesReport> for SalesReportResponse {
    fn from(v: SalesReport) -> Self {
        SalesReportResponse {
            sku: v.sku,
            on_hand: v.on_hand,
            available: v.available,
            held: v.held,
            reserved: v.reserved,
            sold: v.sold,
            sold_total: v.sold_total,
        }
    }
}

/// The caller's cart, with the catalog's current names and prices.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CartView, examples(json!({
    "items": [{
        "sku": 1002,
        "name": "Headphones",
        "count": 2,
        "unit_price": 15000,
        "line_price": 30000,
        "held_until": "2026-11-22T21:30:00.123Z"
    }],
    "total_price": 30000
})))]
pub struct CartResponse {
    items: Vec<CartLineResponse>,
    total_price: u64,
}

impl From<CartView> for CartResponse {
    fn from(v: CartView) -> Self {
        CartResponse {
            items: v.items.into_iter().map(CartLineResponse::from).collect(),
            total_price: v.total_price,
        }
    }
}

/// One held line of the cart; the hold lapses at `held_until`, fixed when the line was first
/// added (adding to it or removing from it keeps it).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CartLine)]
pub struct CartLineResponse {
    sku: u32,
    name: String,
    count: u32,
    unit_price: u64,
    line_price: u64,
    held_until: DateTime<Utc>,
}

impl From<CartLine> for CartLineResponse {
    fn from(v: CartLine) -> Self {
        CartLineResponse {
            sku: v.sku,
            name: v.name,
            count: v.count,
            unit_price: v.unit_price,
            line_price: v.line_price,
            held_until: v.held_until,
        }
    }
}

/// An order of the caller's; unpaid at `expires_at`, it is cancelled with reason `expired`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderView, examples(json!({
    "order_id": 17,
    "user_id": 42,
    "status": "awaiting_payment",
    "items": [{"sku": 1002, "name": "Headphones", "count": 2, "unit_price": 15000}],
    "total_price": 30000,
    "created_at": "2026-11-22T21:20:00.123Z",
    "expires_at": "2026-11-22T21:30:00.123Z",
    "paid_at": null,
    "cancelled_at": null,
    "cancel_reason": null
})))]
pub struct OrderResponse {
    order_id: u64,
    user_id: u64,
    status: OrderStatus,
    items: Vec<OrderItemResponse>,
    total_price: u64,
    created_at: DateTime<Utc>,
    /// The end of the payment window.
    expires_at: DateTime<Utc>,
    #[schema(required = true)]
    paid_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    cancelled_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    cancel_reason: Option<CancelReason>,
}

impl From<OrderView> for OrderResponse {
    fn from(v: OrderView) -> Self {
        OrderResponse {
            order_id: v.order_id,
            user_id: v.user_id,
            status: v.status.into(),
            items: v.items.into_iter().map(OrderItemResponse::from).collect(),
            total_price: v.total_price,
            created_at: v.created_at,
            expires_at: v.expires_at,
            paid_at: v.paid_at,
            cancelled_at: v.cancelled_at,
            cancel_reason: v.cancel_reason.map(CancelReason::from),
        }
    }
}

/// One line of an order: what was bought, at which unit price.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderItem,
    examples(json!({"sku": 1002, "name": "Headphones", "count": 2, "unit_price": 15000})))]
pub struct OrderItemResponse {
    sku: u32,
    name: String,
    count: u32,
    unit_price: u64,
}

impl From<domain::OrderItem> for OrderItemResponse {
    fn from(i: domain::OrderItem) -> Self {
        OrderItemResponse {
            sku: i.sku,
            name: i.name,
            count: i.count,
            unit_price: i.unit_price,
        }
    }
}

/// An order's status. `new` lives only while checkout reserves its lines.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    New,
    AwaitingPayment,
    Failed,
    Paid,
    Cancelled,
}

impl From<domain::OrderStatus> for OrderStatus {
    fn from(s: domain::OrderStatus) -> Self {
        match s {
            domain::OrderStatus::New => OrderStatus::New,
            domain::OrderStatus::AwaitingPayment => OrderStatus::AwaitingPayment,
            domain::OrderStatus::Failed => OrderStatus::Failed,
            domain::OrderStatus::Paid => OrderStatus::Paid,
            domain::OrderStatus::Cancelled => OrderStatus::Cancelled,
        }
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    Customer,
    Expired,
    Failed,
}

impl From<domain::CancelReason> for CancelReason {
    fn from(r: domain::CancelReason) -> Self {
        match r {
            domain::CancelReason::Customer => CancelReason::Customer,
            domain::CancelReason::Expired => CancelReason::Expired,
            domain::CancelReason::Failed => CancelReason::Failed,
        }
    }
}

/// A user's role: `admin` manages the catalog; `customer` buys.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Admin,
}

impl From<domain::Role> for Role {
    fn from(r: domain::Role) -> Self {
        match r {
            domain::Role::Customer => Role::Customer,
            domain::Role::Admin => Role::Admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API's enums are spelled as the domain spells them (`as_str`, also kept in Redis and
    /// MySQL); a new domain variant needs its API spelling (the `From`s match exhaustively).
    #[test]
    fn the_enums_serialize_as_the_domain_does() {
        use domain::{CancelReason as C, OrderStatus as S, Role as R};
        for s in [S::New, S::AwaitingPayment, S::Failed, S::Paid, S::Cancelled] {
            assert_eq!(
                serde_json::to_value(OrderStatus::from(s)).unwrap(),
                s.as_str()
            );
        }
        for c in [C::Customer, C::Expired, C::Failed] {
            assert_eq!(
                serde_json::to_value(CancelReason::from(c)).unwrap(),
                c.as_str()
            );
        }
        for r in [R::Customer, R::Admin] {
            assert_eq!(serde_json::to_value(Role::from(r)).unwrap(), r.as_str());
        }
    }
}
