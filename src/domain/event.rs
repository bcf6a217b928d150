//! The decisions about orders, as the outbox carries them to MySQL and the webhooks.

use serde::Serialize;

use super::{OrderEventKind, OrderItem, OrderStatus};

/// One decision about an order, with a snapshot of its record at that moment.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEvent {
    /// `<partition>-<stream id>`: unique, and the key that makes every write-back step idempotent.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: OrderEventKind,
    pub order_id: u64,
    pub user_id: u64,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_price: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub paid_at_ms: Option<i64>,
    pub cancelled_at_ms: Option<i64>,
    pub cancel_reason: Option<String>,
    pub payment_ref: Option<String>,
    /// When the decision was made (unix ms, from the stream id).
    pub at_ms: i64,
    /// Where each line's units came from, by sku: (warehouse_id, units), as the line was
    /// reserved (the record's `alloc`, written with it). Empty for events of records without
    /// one (older versions, orders rebuild-cache restored): the write-back then takes it from
    /// Redis's ledger, or lets MySQL allocate. Not part of any public shape.
    #[serde(skip)]
    pub alloc: std::collections::BTreeMap<u32, Vec<(u32, u32)>>,
}

impl OutboxEvent {
    /// The allocation the event carries for its line of `sku` (empty: none).
    pub fn alloc_of(&self, sku: u32) -> &[(u32, u32)] {
        self.alloc.get(&sku).map(Vec::as_slice).unwrap_or(&[])
    }
}
