//! The `orders`, `order_items`, `order_status_history` and `stock_movements` tables: written
//! by the outbox worker, idempotently; read when Redis no longer holds an order.

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use super::error::{DbError, DbResult};
use crate::domain::{OrderItem, OutboxEvent, Sku};

fn naive(ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

/// Placeholders for `rows` rows of `cols` columns: "(?, ?), (?, ?)".
fn rows_of(rows: usize, cols: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(", "));
    vec![one; rows].join(", ")
}

/// Writes what a batch of events says, in a few multi-row statements: the order rows (a final
/// status is never overwritten, so events may arrive in any order or twice), their items, and
/// each event in the history. An event whose order id MySQL already holds for another order
/// (another customer, or another creation time: ids handed out twice) changes nothing of that
/// row; its id is returned, and the caller must roll back. Empty: all written.
pub async fn apply_events(
    conn: &mut MySqlConnection,
    events: &[&OutboxEvent],
) -> DbResult<Vec<u64>> {
    // Only the row of the same order may be updated: user and creation time never change.
    let same = "(user_id = VALUES(user_id) AND created_at = VALUES(created_at))";
    for chunk in events.chunks(200) {
        let sql = format!(
            "INSERT INTO orders (id, user_id, status, total_price, created_at, expires_at, paid_at, \
             cancelled_at, cancel_reason, payment_ref, written_at) VALUES {} \
             ON DUPLICATE KEY UPDATE \
             paid_at = IF({same}, COALESCE(paid_at, VALUES(paid_at)), paid_at), \
             cancelled_at = IF({same}, COALESCE(cancelled_at, VALUES(cancelled_at)), cancelled_at), \
             cancel_reason = IF({same}, COALESCE(cancel_reason, VALUES(cancel_reason)), cancel_reason), \
             payment_ref = IF({same}, COALESCE(payment_ref, VALUES(payment_ref)), payment_ref), \
             written_at = IF({same}, VALUES(written_at), written_at), \
             status = IF({same} AND status NOT IN ('paid', 'cancelled', 'failed'), VALUES(status), status)",
            rows_of(chunk.len(), 11)
        );
        let now = Utc::now().naive_utc();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ev in chunk {
            q = q
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
                .bind(now);
        }
        q.execute(&mut *conn).await?;

        // Every row is locked by this transaction now (inserted or upserted): a current read
        // of their owners takes no new locks.
        let sql = format!(
            "SELECT id, user_id, created_at FROM orders WHERE id IN ({}) FOR UPDATE",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut q = sqlx::query_as::<_, (u64, u64, NaiveDateTime)>(sqlx::AssertSqlSafe(sql));
        for ev in chunk {
            q = q.bind(ev.order_id);
        }
        let owners: std::collections::HashMap<u64, (u64, NaiveDateTime)> = q
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|(id, user, created)| (id, (user, created)))
            .collect();
        let mut collisions: Vec<u64> = chunk
            .iter()
            .filter(|ev| owners.get(&ev.order_id) != Some(&(ev.user_id, naive(ev.created_at_ms))))
            .map(|ev| ev.order_id)
            .collect();
        if !collisions.is_empty() {
            collisions.sort_unstable();
            collisions.dedup();
            return Ok(collisions);
        }

        let items: Vec<(u64, &OrderItem)> = chunk
            .iter()
            .flat_map(|ev| ev.items.iter().map(|i| (ev.order_id, i)))
            .collect();
        for part in items.chunks(500) {
            let sql = format!(
                "INSERT IGNORE INTO order_items (order_id, sku, name, count, unit_price) VALUES {}",
                rows_of(part.len(), 5)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (order_id, i) in part {
                q = q
                    .bind(order_id)
                    .bind(i.sku)
                    .bind(&i.name)
                    .bind(i.count)
                    .bind(i.unit_price);
            }
            q.execute(&mut *conn).await?;
        }

        let sql = format!(
            "INSERT IGNORE INTO order_status_history (order_id, event, status, at, event_id) VALUES {}",
            rows_of(chunk.len(), 5)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ev in chunk {
            q = q
                .bind(ev.order_id)
                .bind(ev.kind.as_str())
                .bind(ev.status.as_str())
                .bind(naive(ev.at_ms))
                .bind(&ev.event_id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(Vec::new())
}

/// One paid order line, to be taken off on_hand once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidLine {
    pub order_id: u64,
    pub sku: Sku,
    /// The line's units (the event's count).
    pub units: u32,
    /// Where they came from: (warehouse_id, units). Empty: unknown (an event without an
    /// allocation whose line Redis no longer holds); MySQL then takes them from the sku's
    /// warehouses in ascending id order, as `take_units` in lua/lib.lua would.
    pub alloc: Vec<(u32, u32)>,
}

/// One paid order line's units taken from one warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Movement {
    order_id: u64,
    sku: u32,
    warehouse_id: u32,
    units: u32,
}

/// Lowers on_hand by the units paid order lines took, once per (order, sku): a line with any
/// movement recorded is skipped whole (its movements are written in one transaction, so a line
/// is either all recorded or not at all, whichever warehouses a later attempt names); a
/// concurrent writer recording the same line makes this transaction fail (primary key) rather
/// than count it twice. Returns the units applied now.
pub async fn apply_paid_lines(conn: &mut MySqlConnection, lines: &[PaidLine]) -> DbResult<u64> {
    if lines.is_empty() {
        return Ok(0);
    }
    let mut orders: Vec<u64> = lines.iter().map(|l| l.order_id).collect();
    orders.sort_unstable();
    orders.dedup();
    let sql = format!(
        "SELECT DISTINCT order_id, sku FROM stock_movements WHERE order_id IN ({})",
        vec!["?"; orders.len()].join(", ")
    );
    let mut q = sqlx::query_as::<_, (u64, u32)>(sqlx::AssertSqlSafe(sql));
    for o in &orders {
        q = q.bind(o);
    }
    let mut done: std::collections::HashSet<(u64, u32)> =
        q.fetch_all(&mut *conn).await?.into_iter().collect();
    let mut new: Vec<Movement> = Vec::new();
    let mut unknown: Vec<&PaidLine> = Vec::new();
    for l in lines {
        // Once per line, also when a batch names it twice.
        if l.units == 0 || !done.insert((l.order_id, l.sku.get())) {
            continue;
        }
        if l.alloc.is_empty() {
            unknown.push(l);
            continue;
        }
        new.extend(l.alloc.iter().map(|(w, n)| Movement {
            order_id: l.order_id,
            sku: l.sku.get(),
            warehouse_id: *w,
            units: *n,
        }));
    }
    if !unknown.is_empty() {
        new.extend(allocate(conn, &new, &unknown).await?);
    }
    new.retain(|m| m.units > 0);
    if new.is_empty() {
        return Ok(0);
    }
    for part in new.chunks(500) {
        let sql = format!(
            "INSERT INTO stock_movements (order_id, sku, warehouse_id, units) VALUES {}",
            rows_of(part.len(), 4)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for m in part {
            q = q
                .bind(m.order_id)
                .bind(m.sku)
                .bind(m.warehouse_id)
                .bind(m.units);
        }
        q.execute(&mut *conn).await?;
    }
    // One update per (sku, warehouse), in a stable order across writers.
    let mut sums: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
    for m in &new {
        *sums.entry((m.sku, m.warehouse_id)).or_default() += u64::from(m.units);
    }
    let mut applied = 0;
    for ((sku, warehouse_id), units) in sums {
        let updated = sqlx::query(
            "UPDATE stock SET on_hand = on_hand - ? WHERE sku = ? AND warehouse_id = ? AND on_hand >= ?",
        )
        .bind(units)
        .bind(sku)
        .bind(warehouse_id)
        .bind(units)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(DbError::Inconsistent(format!(
                "sku {sku} warehouse {warehouse_id} has less on hand than the {units} sold"
            )));
        }
        applied += units;
    }
    Ok(applied)
}

/// Warehouses for lines whose allocation nobody knows: each line's units from the sku's
/// warehouses in ascending id order, from what is on hand after the batch's known movements.
/// The rows are read locked (the updates that follow take them anyway).
async fn allocate(
    conn: &mut MySqlConnection,
    known: &[Movement],
    lines: &[&PaidLine],
) -> DbResult<Vec<Movement>> {
    let mut skus: Vec<u32> = lines.iter().map(|l| l.sku.get()).collect();
    skus.sort_unstable();
    skus.dedup();
    let mut out = Vec::new();
    for sku in skus {
        let mut left: Vec<(u32, u64)> = sqlx::query_as::<_, (u32, u64)>(
            "SELECT warehouse_id, on_hand FROM stock WHERE sku = ? ORDER BY warehouse_id FOR UPDATE",
        )
        .bind(sku)
        .fetch_all(&mut *conn)
        .await?;
        for m in known.iter().filter(|m| m.sku == sku) {
            if let Some(w) = left.iter_mut().find(|(w, _)| *w == m.warehouse_id) {
                w.1 = w.1.saturating_sub(u64::from(m.units));
            }
        }
        for l in lines.iter().filter(|l| l.sku.get() == sku) {
            let mut need = u64::from(l.units);
            for (w, on_hand) in left.iter_mut() {
                if need == 0 {
                    break;
                }
                let t = need.min(*on_hand);
                if t > 0 {
                    *on_hand -= t;
                    need -= t;
                    out.push(Movement {
                        order_id: l.order_id,
                        sku,
                        warehouse_id: *w,
                        units: t as u32,
                    });
                }
            }
            if need > 0 {
                return Err(DbError::Inconsistent(format!(
                    "sku {sku} has less on hand than the {} units order {} bought",
                    l.units, l.order_id
                )));
            }
        }
    }
    Ok(out)
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
) -> DbResult<Option<(OrderRow, Vec<OrderItem>)>> {
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
) -> DbResult<Vec<(OrderRow, Vec<OrderItem>)>> {
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
    with_items(pool, rows).await
}

/// Each order row with its items.
async fn with_items(
    pool: &MySqlPool,
    rows: Vec<OrderRow>,
) -> DbResult<Vec<(OrderRow, Vec<OrderItem>)>> {
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
) -> DbResult<std::collections::HashMap<u64, Vec<OrderItem>>> {
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
pub async fn written_back(pool: &MySqlPool, sku: Sku, order_ids: &[u64]) -> DbResult<Vec<u64>> {
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

/// Orders still waiting for payment in MySQL: what a rebuilt Redis must reserve again (or
/// expire, when their window passed while Redis had lost them).
pub async fn open_orders(pool: &MySqlPool) -> DbResult<Vec<(OrderRow, Vec<OrderItem>)>> {
    let rows = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE status = 'awaiting_payment' ORDER BY id"
    )))
    .fetch_all(pool)
    .await?;
    with_items(pool, rows).await
}

/// Units each customer bought of a sku (paid orders written back): the per-customer limit's
/// memory.
pub async fn bought_units(conn: &mut MySqlConnection, sku: Sku) -> DbResult<Vec<(u64, u64)>> {
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
pub async fn sold_units(conn: &mut MySqlConnection, sku: Sku) -> DbResult<u64> {
    Ok(sqlx::query_scalar::<_, Option<u64>>(
        "SELECT CAST(SUM(units) AS UNSIGNED) FROM stock_movements WHERE sku = ?",
    )
    .bind(sku.get())
    .fetch_one(conn)
    .await?
    .unwrap_or(0))
}

/// What MySQL knows to be out of a sku's available units that a load from on_hand would not
/// see: units of open orders (`awaiting_payment`), and units of paid lines not taken off
/// on_hand yet (paid units beyond the stock movements recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitsOut {
    pub open: u64,
    pub paid_unwritten: u64,
}

impl UnitsOut {
    pub fn any(&self) -> bool {
        self.open > 0 || self.paid_unwritten > 0
    }
}

/// Units of a sku in open orders (`awaiting_payment`): from the open orders (the status index),
/// each line looked up by its key, so it costs what is open, not what was ever sold.
pub async fn open_units(conn: &mut MySqlConnection, sku: Sku) -> DbResult<u64> {
    Ok(sqlx::query_scalar::<_, Option<u64>>(
        "SELECT CAST(SUM(i.count) AS UNSIGNED) FROM orders o \
         JOIN order_items i ON i.order_id = o.id AND i.sku = ? \
         WHERE o.status = 'awaiting_payment'",
    )
    .bind(sku.get())
    .fetch_one(conn)
    .await?
    .unwrap_or(0))
}

/// Paid lines of a sku whose units were never taken off on_hand (no stock movement), the
/// first 100 by order id: a discrepancy `reconcile` reports, as the write-back takes a paid
/// line's units in the same transaction that writes it `paid`.
pub async fn paid_without_movements(
    conn: &mut MySqlConnection,
    sku: Sku,
) -> DbResult<Vec<(u64, u32)>> {
    Ok(sqlx::query_as::<_, (u64, u32)>(
        "SELECT o.id, i.count FROM order_items i JOIN orders o ON o.id = i.order_id \
         WHERE i.sku = ? AND o.status = 'paid' AND NOT EXISTS \
           (SELECT 1 FROM stock_movements m WHERE m.order_id = o.id AND m.sku = i.sku) \
         ORDER BY o.id LIMIT 100",
    )
    .bind(sku.get())
    .fetch_all(conn)
    .await?)
}
