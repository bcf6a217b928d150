//! Outbox events: what decide_order.lua appends to an order partition's stream.

use std::collections::HashMap;

use redis::Value;
use serde::Serialize;

use crate::domain::{OrderEventKind, OrderItem, OrderStatus};

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
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

impl OutboxEvent {
    /// Reads a stream entry; `Err` names what is wrong with a malformed one.
    pub fn parse(
        partition: u64,
        stream_id: &str,
        map: &HashMap<String, Value>,
    ) -> Result<Self, String> {
        let get = |f: &str| map.get(f).and_then(text);
        let num = |f: &str| get(f).and_then(|v| v.parse::<i64>().ok());
        let need = |f: &str| num(f).ok_or_else(|| format!("field {f} missing or not a number"));
        let kind = get("type")
            .and_then(|t| OrderEventKind::parse(&t))
            .ok_or("field type missing or unknown")?;
        let status = get("status")
            .and_then(|s| OrderStatus::parse(&s))
            .ok_or("field status missing or unknown")?;
        let items: Vec<OrderItem> = serde_json::from_str(&get("items").unwrap_or_default())
            .map_err(|e| format!("field items: {e}"))?;
        let at_ms = stream_id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse().ok())
            .ok_or("stream id without a time")?;
        Ok(OutboxEvent {
            event_id: format!("{partition}-{stream_id}"),
            kind,
            order_id: need("order_id")? as u64,
            user_id: need("user")? as u64,
            status,
            items,
            total_price: need("total")? as u64,
            created_at_ms: need("created_at")?,
            expires_at_ms: need("expires_at")?,
            paid_at_ms: num("paid_at"),
            cancelled_at_ms: num("cancelled_at"),
            cancel_reason: get("cancel_reason"),
            payment_ref: get("payment_ref").filter(|r| !r.is_empty()),
            at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_paid_event() {
        let mut m = HashMap::new();
        for (k, v) in [
            ("type", "paid"),
            ("order_id", "42"),
            ("user", "7"),
            ("status", "paid"),
            (
                "items",
                r#"[{"sku":1,"name":"TV","count":2,"unit_price":500}]"#,
            ),
            ("total", "1000"),
            ("created_at", "1700000000000"),
            ("expires_at", "1700000600000"),
            ("paid_at", "1700000001000"),
            ("payment_ref", ""),
        ] {
            m.insert(k.to_string(), bulk(v));
        }
        let e = OutboxEvent::parse(3, "1700000001000-0", &m).unwrap();
        assert_eq!(e.event_id, "3-1700000001000-0");
        assert_eq!(e.kind, OrderEventKind::Paid);
        assert_eq!((e.order_id, e.user_id, e.total_price), (42, 7, 1000));
        assert_eq!(e.items[0].count, 2);
        assert_eq!(e.paid_at_ms, Some(1_700_000_001_000));
        assert_eq!(e.payment_ref, None);
        assert_eq!(e.at_ms, 1_700_000_001_000);

        m.remove("status");
        assert!(OutboxEvent::parse(3, "1-0", &m).is_err());
    }
}
