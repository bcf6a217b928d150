//! Domain types and rules: validated newtypes, no I/O. Handlers parse raw input into these, so a
//! value of one of these types is valid by construction.

mod catalog;
mod client;
mod event;
mod order;
mod user;

pub use catalog::{
    Count, Price, ProductName, SaleMeta, SaleWindow, Sku, SkuMeta, StockDelta, WarehouseName,
};
pub use client::ClientKey;
pub use event::OutboxEvent;
pub use order::{
    CancelReason, MAX_LINE_UNITS, MAX_ORDER_TOTAL, OrderEventKind, OrderItem, OrderStatus,
    order_total,
};
pub use user::{Account, Password, Role, Username};

/// Why a raw value is not a valid domain value. Its message says which rule it broke, for the
/// client to read (the HTTP layer answers it as `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(String);

fn invalid(msg: impl Into<String>) -> DomainError {
    DomainError(msg.into())
}
