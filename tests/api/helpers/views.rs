//! What the API answers, as the tests read it: the shapes of docs/API.md, deserialized from the
//! JSON. The API's own answers (`flashsale::http::responses`, named in the OpenAPI document after
//! the service's views `flashsale::service::*::*View`) only serialize, so these mirror them field
//! for field; an order's lines are the crate's own `OrderItem`.

use chrono::{DateTime, Utc};
use serde::Deserialize;

pub use flashsale::domain::OrderItem;

/// An order (`flashsale::service::orders::OrderView`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Order {
    pub order_id: u64,
    pub user_id: u64,
    /// `new`, `awaiting_payment`, `failed`, `paid` or `cancelled`.
    pub status: String,
    pub items: Vec<OrderItem>,
    pub total_price: u64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// `customer`, `expired` or `failed`.
    pub cancel_reason: Option<String>,
}

/// One page of `GET /v1/orders`.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderPage {
    pub items: Vec<Order>,
    pub next_before_id: Option<u64>,
}

impl OrderPage {
    pub fn ids(&self) -> Vec<u64> {
        self.items.iter().map(|o| o.order_id).collect()
    }
}

/// A product (`flashsale::service::catalog::ProductView`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Product {
    pub sku: u64,
    pub name: String,
    pub price: u64,
    pub available: i64,
    pub sale: Option<Sale>,
}

/// A product's sale window (`flashsale::service::catalog::SaleView`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Sale {
    pub sale_price: u64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub per_customer_limit: Option<u32>,
    pub active: bool,
}

/// A warehouse (`flashsale::service::catalog::WarehouseView`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Warehouse {
    pub warehouse_id: u64,
    pub name: String,
}

/// The answer to a stock change (`flashsale::service::catalog::StockAdjusted`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StockAdjusted {
    pub sku: u64,
    pub warehouse_id: u64,
    pub on_hand: u64,
    pub available: i64,
}

/// The caller's cart (`flashsale::service::cart::CartView`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Cart {
    pub items: Vec<CartLine>,
    pub total_price: u64,
}

impl Cart {
    /// The line of `sku`, if the cart has one.
    pub fn line(&self, sku: u64) -> Option<&CartLine> {
        self.items.iter().find(|l| l.sku == sku)
    }
}

/// One held line of a cart (`flashsale::service::cart::CartLine`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CartLine {
    pub sku: u64,
    pub name: String,
    pub count: u64,
    pub unit_price: u64,
    pub line_price: u64,
    pub held_until: DateTime<Utc>,
}

/// A sku's stock buckets: what `GET /v1/products/{sku}/sales-report` answers (besides the sku)
/// and what `TestApp::assert_identity` reads from the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Buckets {
    pub on_hand: i64,
    pub available: i64,
    pub held: i64,
    pub reserved: i64,
    pub sold: i64,
    pub sold_total: i64,
}
