use serde::{Deserialize, Serialize};

/// One line of an order: what was bought, at which unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub sku: u32,
    pub name: String,
    pub count: u32,
    pub unit_price: u64,
}

/// The largest total price of an order line or a whole order: 2^53 - 1, so every total is an
/// exact integer in Lua's doubles (lua/lib.lua has the same bound), in JSON clients and in
/// MySQL's BIGINT UNSIGNED.
pub const MAX_ORDER_TOTAL: u64 = (1 << 53) - 1;

/// The most units one order line (or cart line) holds: lua/lib.lua's `MAX_LINE_UNITS`.
pub const MAX_LINE_UNITS: u32 = crate::domain::Count::MAX;

/// The total price of `items`, or `None` when it passes [`MAX_ORDER_TOTAL`] (no wrapping).
pub fn order_total(items: &[OrderItem]) -> Option<u64> {
    items
        .iter()
        .try_fold(0u64, |sum, i| {
            i.unit_price
                .checked_mul(u64::from(i.count))
                .and_then(|line| sum.checked_add(line))
        })
        .filter(|t| *t <= MAX_ORDER_TOTAL)
}

/// What an outbox event says happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderEventKind {
    Created,
    Failed,
    Paid,
    Cancelled,
    Expired,
}

impl OrderEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderEventKind::Created => "created",
            OrderEventKind::Failed => "failed",
            OrderEventKind::Paid => "paid",
            OrderEventKind::Cancelled => "cancelled",
            OrderEventKind::Expired => "expired",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => OrderEventKind::Created,
            "failed" => OrderEventKind::Failed,
            "paid" => OrderEventKind::Paid,
            "cancelled" => OrderEventKind::Cancelled,
            "expired" => OrderEventKind::Expired,
            _ => return None,
        })
    }
}

/// An order's status. `new` lives only while checkout reserves its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    New,
    AwaitingPayment,
    Failed,
    Paid,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::New => "new",
            OrderStatus::AwaitingPayment => "awaiting_payment",
            OrderStatus::Failed => "failed",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "new" => OrderStatus::New,
            "awaiting_payment" => OrderStatus::AwaitingPayment,
            "failed" => OrderStatus::Failed,
            "paid" => OrderStatus::Paid,
            "cancelled" => OrderStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the order still holds reserved units that pay, cancel or expiry will settle.
    pub fn is_open(self) -> bool {
        matches!(self, OrderStatus::New | OrderStatus::AwaitingPayment)
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    Customer,
    Expired,
    Failed,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Customer => "customer",
            CancelReason::Expired => "expired",
            CancelReason::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "customer" => CancelReason::Customer,
            "expired" => CancelReason::Expired,
            "failed" => CancelReason::Failed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(count: u32, unit_price: u64) -> OrderItem {
        OrderItem {
            sku: 1,
            name: "x".into(),
            count,
            unit_price,
        }
    }

    #[test]
    fn order_totals_are_exact_or_refused() {
        assert_eq!(order_total(&[]), Some(0));
        assert_eq!(order_total(&[item(2, 5), item(3, 7)]), Some(31));
        assert_eq!(
            order_total(&[item(1, MAX_ORDER_TOTAL)]),
            Some(MAX_ORDER_TOTAL)
        );
        assert_eq!(order_total(&[item(1, MAX_ORDER_TOTAL), item(1, 1)]), None);
        // 15 lines of 65,535 units at the largest price: past i64::MAX, never wrapped to 0.
        let big = vec![item(65_535, 10_000_000_000_000); 15];
        assert_eq!(order_total(&big), None);
        assert_eq!(order_total(&[item(u32::MAX, u64::MAX)]), None);
    }

    #[test]
    fn the_bounds_match_lua() {
        let lib = include_str!("../../lua/lib.lua");
        assert!(lib.contains(&format!("local MAX_TOTAL = {MAX_ORDER_TOTAL}\n")));
        assert!(lib.contains(&format!("local MAX_LINE_UNITS = {MAX_LINE_UNITS}\n")));
    }

    #[test]
    fn status_round_trips() {
        for s in [
            OrderStatus::New,
            OrderStatus::AwaitingPayment,
            OrderStatus::Failed,
            OrderStatus::Paid,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("shipped"), None);
        assert!(OrderStatus::AwaitingPayment.is_open());
        assert!(!OrderStatus::Paid.is_open());
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in ["created", "failed", "paid", "cancelled", "expired"] {
            assert_eq!(OrderEventKind::parse(k).unwrap().as_str(), k);
        }
        assert!(OrderEventKind::parse("shipped").is_none());
    }

    #[test]
    fn reasons_parse() {
        assert_eq!(CancelReason::parse("expired"), Some(CancelReason::Expired));
        assert_eq!(CancelReason::parse("other"), None);
    }
}
