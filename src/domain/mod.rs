//! Domain types and rules: validated newtypes, no I/O. Handlers parse raw input into these, so a
//! value of one of these types is valid by construction.

mod catalog;
mod event;
mod order;
mod user;

pub use catalog::{
    Count, Price, ProductName, SaleMeta, SaleWindow, Sku, SkuMeta, StockDelta, WarehouseName,
};
pub use event::OutboxEvent;
pub use order::{
    CancelReason, MAX_LINE_UNITS, MAX_ORDER_TOTAL, OrderEventKind, OrderItem, OrderStatus,
    order_total,
};
pub use user::{Password, Role, Username};

use crate::error::AppError;

fn invalid(msg: impl Into<String>) -> AppError {
    AppError::InvalidRequest(msg.into())
}
