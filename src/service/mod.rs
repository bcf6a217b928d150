//! The sale's operations: each one a sequence of single-slot Redis steps and MySQL writes,
//! decided in one place and followed up idempotently (DESIGN.md). Handlers call these.

pub mod accounts;
pub mod admin_account;
pub mod cart;
pub mod catalog;
pub mod follow_up;
pub mod live;
pub mod lookups;
pub mod order_ids;
pub mod orders;
pub mod outbox_dead;
pub mod reconcile;
pub mod sold_out;
pub mod token_cache;
pub mod tokens;

use chrono::{DateTime, Utc};

/// Unix ms to a UTC time (Redis keeps times as unix ms).
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
