use serde::{Deserialize, Serialize};

/// One line of an order: what was bought, at which unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(examples(json!({"sku": 1002, "name": "Headphones", "count": 2, "unit_price": 15000})))]
pub struct OrderItem {
    pub sku: u32,
    pub name: String,
    pub count: u32,
    pub unit_price: u64,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
