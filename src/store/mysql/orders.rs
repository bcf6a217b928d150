//! The `orders`, `order_items`, `order_status_history` and `stock_movements` tables: written
//! by the outbox worker, idempotently; read when Redis no longer holds an order.

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use crate::domain::{OrderItem, Sku};
use crate::error::{AppError, AppResult};
use crate::store::redis::outbox::OutboxEvent;

fn naive(ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

/// Writes what an event says: the order row (a final status is never overwritten, so events
/// may arrive in any order or twice), its items, and the event in the history.
pub async fn apply_event(conn: &mut MySqlConnection, ev: &OutboxEvent) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_price, created_at, expires_at, paid_at, \
         cancelled_at, cancel_reason, payment_ref, written_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP(3)) \
         ON DUPLICATE KEY UPDATE \
         paid_at = COALESCE(paid_at, VALUES(paid_at)), \
         cancelled_at = COALESCE(cancelled_at, VALUES(cancelled_at)), \
         cancel_reason = COALESCE(cancel_reason, VALUES(cancel_reason)), \
         payment_ref = COALESCE(payment_ref, VALUES(payment_ref)), \
         written_at = CURRENT_TIMESTAMP(3), \
         status = IF(status IN ('paid', 'cancelled', 'failed'), status, VALUES(status))",
    )
    .bind(ev.order_id)
    .bind(ev.user_id)
    .bind(ev.status.as_str())
    .bind(ev.total_price)
    .bind(naive(ev.created_at_ms))
    .bind(naive(ev.expires_at_ms))
    .bind(ev.paid_at_ms.map(naive))
    .bind(ev.cancelled_at_ms.map(naive))
    .bind(ev.cancel_reason.as_deref())
    .bind(ev.payment_ref.as_deref())
    .execute(&mut *conn)
    .await?;
    for item in &ev.items {
        sqlx::query(
            "INSERT IGNORE INTO order_items (order_id, sku, name, count, unit_price) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(ev.order_id)
        .bind(item.sku)
        .bind(&item.name)
        .bind(item.count)
        .bind(item.unit_price)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT IGNORE INTO order_status_history (order_id, event, status, at, event_id) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(ev.order_id)
    .bind(ev.kind.as_str())
    .bind(ev.status.as_str())
    .bind(naive(ev.at_ms))
    .bind(&ev.event_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Lowers on_hand by the units a paid order took from one warehouse, once per (order, sku,
/// warehouse). Returns whether this call applied it.
pub async fn apply_movement(
    conn: &mut MySqlConnection,
    order_id: u64,
    sku: Sku,
    warehouse_id: u32,
    units: u32,
) -> AppResult<bool> {
    let inserted = sqlx::query(
        "INSERT IGNORE INTO stock_movements (order_id, sku, warehouse_id, units) VALUES (?, ?, ?, ?)",
    )
    .bind(order_id)
    .bind(sku.get())
    .bind(warehouse_id)
    .bind(units)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    let updated = sqlx::query(
        "UPDATE stock SET on_hand = on_hand - ? WHERE sku = ? AND warehouse_id = ? AND on_hand >= ?",
    )
    .bind(units)
    .bind(sku.get())
    .bind(warehouse_id)
    .bind(units)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated != 1 {
        return Err(AppError::internal(format!(
            "order {order_id}: sku {sku} warehouse {warehouse_id} has less on hand than the {units} sold"
        )));
    }
    Ok(true)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: u64,
    pub user_id: u64,
    pub status: String,
    pub total_price: u64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
}

const ORDER_COLUMNS: &str = "id, user_id, status, total_price, created_at, expires_at, paid_at, \
                             cancelled_at, cancel_reason";

pub async fn get_order(
    pool: &MySqlPool,
    order_id: u64,
) -> AppResult<Option<(OrderRow, Vec<OrderItem>)>> {
    let row = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?"
    )))
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let items = items_of(pool, &[order_id])
        .await?
        .remove(&order_id)
        .unwrap_or_default();
    Ok(Some((row, items)))
}

/// A customer's orders below `before` (exclusive), newest first.
pub async fn user_orders(
    pool: &MySqlPool,
    user_id: u64,
    before: Option<u64>,
    status: Option<&str>,
    limit: u32,
) -> AppResult<Vec<(OrderRow, Vec<OrderItem>)>> {
    let rows = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ? AND id < ? \
         AND (? IS NULL OR status = ?) ORDER BY id DESC LIMIT ?"
    )))
    .bind(user_id)
    .bind(before.unwrap_or(u64::MAX))
    .bind(status)
    .bind(status)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    let mut items = items_of(pool, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let i = items.remove(&r.id).unwrap_or_default();
            (r, i)
        })
        .collect())
}

async fn items_of(
    pool: &MySqlPool,
    order_ids: &[u64],
) -> AppResult<std::collections::HashMap<u64, Vec<OrderItem>>> {
    let mut out: std::collections::HashMap<u64, Vec<OrderItem>> = Default::default();
    if order_ids.is_empty() {
        return Ok(out);
    }
    let marks = vec!["?"; order_ids.len()].join(", ");
    let sql = format!(
        "SELECT order_id, sku, name, count, unit_price FROM order_items WHERE order_id IN ({marks}) \
         ORDER BY order_id, sku"
    );
    let mut q = sqlx::query_as::<_, (u64, u32, String, u32, u64)>(sqlx::AssertSqlSafe(sql));
    for id in order_ids {
        q = q.bind(id);
    }
    for (order_id, sku, name, count, unit_price) in q.fetch_all(pool).await? {
        out.entry(order_id).or_default().push(OrderItem {
            sku,
            name,
            count,
            unit_price,
        });
    }
    Ok(out)
}

/// Which of `order_ids` had their units of `sku` written back (a stock movement exists).
pub async fn written_back(pool: &MySqlPool, sku: Sku, order_ids: &[u64]) -> AppResult<Vec<u64>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; order_ids.len()].join(", ");
    let sql = format!(
        "SELECT DISTINCT order_id FROM stock_movements WHERE sku = ? AND order_id IN ({marks})"
    );
    let mut q = sqlx::query_scalar::<_, u64>(sqlx::AssertSqlSafe(sql)).bind(sku.get());
    for id in order_ids {
        q = q.bind(id);
    }
    Ok(q.fetch_all(pool).await?)
}

/// Orders still waiting for payment whose window has not passed: what a rebuilt Redis must
/// reserve again.
pub async fn open_orders(pool: &MySqlPool) -> AppResult<Vec<(OrderRow, Vec<OrderItem>)>> {
    let rows = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE status = 'awaiting_payment' AND expires_at > ? ORDER BY id"
    )))
    .bind(Utc::now().naive_utc())
    .fetch_all(pool)
    .await?;
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    let mut items = items_of(pool, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let i = items.remove(&r.id).unwrap_or_default();
            (r, i)
        })
        .collect())
}

/// Units each customer bought of a sku (paid orders written back): the per-customer limit's
/// memory.
pub async fn bought_units(conn: &mut MySqlConnection, sku: Sku) -> AppResult<Vec<(u64, u64)>> {
    Ok(sqlx::query_as::<_, (u64, u64)>(
        "SELECT o.user_id, CAST(SUM(i.count) AS UNSIGNED) FROM orders o \
         JOIN order_items i ON i.order_id = o.id WHERE o.status = 'paid' AND i.sku = ? \
         GROUP BY o.user_id",
    )
    .bind(sku.get())
    .fetch_all(conn)
    .await?)
}

/// Units of a sku sold and taken off on_hand so far.
pub async fn sold_units(conn: &mut MySqlConnection, sku: Sku) -> AppResult<u64> {
    Ok(sqlx::query_scalar::<_, Option<u64>>(
        "SELECT CAST(SUM(units) AS UNSIGNED) FROM stock_movements WHERE sku = ?",
    )
    .bind(sku.get())
    .fetch_one(conn)
    .await?
    .unwrap_or(0))
}
