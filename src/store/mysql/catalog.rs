//! The `products`, `warehouses`, `stock` and `sales` tables.

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use super::error::{DbError, DbResult, OnDuplicate};
use crate::domain::{Price, ProductName, SaleWindow, Sku, WarehouseName};

/// A product with its sale window, if one is set.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProductRow {
    pub sku: u32,
    pub name: String,
    pub price: u64,
    pub sale_price: Option<u64>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub per_customer_limit: Option<u32>,
}

impl ProductRow {
    pub fn sale(&self) -> Option<SaleWindow> {
        Some(SaleWindow {
            sale_price: Price::parse(self.sale_price?).ok()?,
            starts_at: self.starts_at?,
            ends_at: self.ends_at?,
            per_customer_limit: self.per_customer_limit,
        })
    }
}

macro_rules! select_product {
    ($tail:literal) => {
        concat!(
            "SELECT p.sku, p.name, p.price, s.sale_price, s.starts_at, s.ends_at, ",
            "s.per_customer_limit FROM products p LEFT JOIN sales s ON s.sku = p.sku ",
            $tail
        )
    };
}

/// Inserts a product with the given sku, or with one assigned: the next after the highest
/// (AUTO_INCREMENT) or, once a product has the largest sku (4294967295) and the counter has
/// nowhere to go, the lowest free one.
#[tracing::instrument(skip(pool))]
pub async fn insert_product(
    pool: &MySqlPool,
    sku: Option<Sku>,
    name: &ProductName,
    price: Price,
) -> DbResult<Sku> {
    let insert = |sku: Option<u32>| {
        sqlx::query("INSERT INTO products (sku, name, price) VALUES (?, ?, ?)")
            .bind(sku)
            .bind(name.as_str())
            .bind(price.get())
            .execute(pool)
    };
    if let Some(sku) = sku {
        let r = insert(Some(sku.get()))
            .await
            .on_duplicate(|| format!("sku {sku} exists"))?;
        return assigned_sku(r.last_insert_id());
    }
    match insert(None).await {
        Ok(r) => return assigned_sku(r.last_insert_id()),
        Err(e) if !auto_increment_exhausted(&e) => return Err(e.into()),
        Err(_) => {}
    }
    // Each lost race means another product took the free sku: try the next lowest.
    for _ in 0..20 {
        let free: Option<u64> = sqlx::query_scalar(
            "SELECT CAST(CASE \
               WHEN NOT EXISTS (SELECT 1 FROM products WHERE sku = 1) THEN 1 \
               ELSE (SELECT MIN(p.sku) + 1 FROM products p WHERE p.sku < 4294967295 \
                     AND NOT EXISTS (SELECT 1 FROM products q WHERE q.sku = p.sku + 1)) \
             END AS UNSIGNED)",
        )
        .fetch_one(pool)
        .await?;
        let Some(free) = free else {
            return Err(DbError::AlreadyExists("every sku is taken".into()));
        };
        let free = assigned_sku(free)?;
        match insert(Some(free.get())).await {
            Ok(_) => return Ok(free),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DbError::AlreadyExists(
        "other products took every free sku found; retry".into(),
    ))
}

/// A sku MySQL chose: the column (INT UNSIGNED, never 0) keeps it within `Sku`'s range.
fn assigned_sku(id: u64) -> DbResult<Sku> {
    Sku::parse(id).map_err(|e| DbError::Inconsistent(format!("an assigned sku: {e}")))
}

/// The AUTO_INCREMENT counter is past the column's range: MariaDB answers "out of range"
/// (167, SQLSTATE 22003), MySQL "failed to read auto-increment value" (1467) or a duplicate of
/// the largest value.
fn auto_increment_exhausted(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let number = db
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number());
    db.is_unique_violation()
        || db.code().as_deref() == Some("22003")
        || matches!(number, Some(167 | 1467))
}

#[tracing::instrument(skip(db))]
pub async fn get_product<'e, E>(db: E, sku: Sku) -> DbResult<Option<ProductRow>>
where
    E: sqlx::Executor<'e, Database = sqlx::MySql>,
{
    Ok(
        sqlx::query_as::<_, ProductRow>(select_product!("WHERE p.sku = ?"))
            .bind(sku.get())
            .fetch_optional(db)
            .await?,
    )
}

#[tracing::instrument(skip(pool))]
pub async fn list_products(
    pool: &MySqlPool,
    after_sku: u32,
    limit: u32,
) -> DbResult<Vec<ProductRow>> {
    Ok(
        sqlx::query_as::<_, ProductRow>(select_product!("WHERE p.sku > ? ORDER BY p.sku LIMIT ?"))
            .bind(after_sku)
            .bind(limit)
            .fetch_all(pool)
            .await?,
    )
}

/// Products whose sale has not ended at `now` (open or upcoming), soonest start first: the live
/// sales stream's list.
#[tracing::instrument(skip(pool))]
pub async fn unfinished_sales(
    pool: &MySqlPool,
    now: DateTime<Utc>,
    limit: u32,
) -> DbResult<Vec<ProductRow>> {
    Ok(sqlx::query_as::<_, ProductRow>(select_product!(
        "WHERE s.ends_at > ? ORDER BY s.starts_at, p.sku LIMIT ?"
    ))
    .bind(now.naive_utc())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Skus whose sale window is open at `now` (for the live views and the seed).
#[tracing::instrument(skip(pool))]
pub async fn active_sale_skus(pool: &MySqlPool, now: DateTime<Utc>) -> DbResult<Vec<u32>> {
    Ok(sqlx::query_scalar::<_, u32>(
        "SELECT sku FROM sales WHERE starts_at <= ? AND ends_at > ? ORDER BY sku",
    )
    .bind(now.naive_utc())
    .bind(now.naive_utc())
    .fetch_all(pool)
    .await?)
}

/// Locks the product row for the rest of the transaction: every stock or catalog change of one
/// sku goes through this lock, so loading Redis from MySQL never races a change.
pub async fn lock_product(conn: &mut MySqlConnection, sku: Sku) -> DbResult<Option<ProductRow>> {
    Ok(
        sqlx::query_as::<_, ProductRow>(select_product!("WHERE p.sku = ? FOR UPDATE"))
            .bind(sku.get())
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn update_product(
    conn: &mut MySqlConnection,
    sku: Sku,
    name: Option<&ProductName>,
    price: Option<Price>,
) -> DbResult<()> {
    sqlx::query(
        "UPDATE products SET name = COALESCE(?, name), price = COALESCE(?, price) WHERE sku = ?",
    )
    .bind(name.map(ProductName::as_str))
    .bind(price.map(Price::get))
    .bind(sku.get())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn put_sale(conn: &mut MySqlConnection, sku: Sku, sale: &SaleWindow) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO sales (sku, sale_price, starts_at, ends_at, per_customer_limit) \
         VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE sale_price = VALUES(sale_price), \
         starts_at = VALUES(starts_at), ends_at = VALUES(ends_at), \
         per_customer_limit = VALUES(per_customer_limit)",
    )
    .bind(sku.get())
    .bind(sale.sale_price.get())
    // Bound as DATETIME (naive UTC): a DateTime<Utc> goes over the wire as a TIMESTAMP, which
    // MySQL cannot hold past 2038.
    .bind(sale.starts_at.naive_utc())
    .bind(sale.ends_at.naive_utc())
    .bind(sale.per_customer_limit)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_sale(conn: &mut MySqlConnection, sku: Sku) -> DbResult<bool> {
    let r = sqlx::query("DELETE FROM sales WHERE sku = ?")
        .bind(sku.get())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

#[tracing::instrument(skip(pool))]
pub async fn insert_warehouse(pool: &MySqlPool, name: &WarehouseName) -> DbResult<u32> {
    let r = sqlx::query("INSERT INTO warehouses (name) VALUES (?)")
        .bind(name.as_str())
        .execute(pool)
        .await
        .on_duplicate(|| format!("warehouse {:?} exists", name.as_str()))?;
    Ok(r.last_insert_id() as u32)
}

pub async fn warehouse_exists(conn: &mut MySqlConnection, id: u32) -> DbResult<bool> {
    Ok(
        sqlx::query_scalar::<_, u32>("SELECT id FROM warehouses WHERE id = ?")
            .bind(id)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// (warehouse_id, on_hand) of a sku, ascending by warehouse.
pub async fn stock_of(conn: &mut MySqlConnection, sku: Sku) -> DbResult<Vec<(u32, u64)>> {
    Ok(sqlx::query_as::<_, (u32, u64)>(
        "SELECT warehouse_id, on_hand FROM stock WHERE sku = ? ORDER BY warehouse_id",
    )
    .bind(sku.get())
    .fetch_all(conn)
    .await?)
}

/// Changes a sku's on-hand units in one warehouse by `delta`, relative to what the row holds
/// when the change is applied (the row is created when missing), never to a value read before:
/// the write-back lowers the same row concurrently, and an absolute write would erase its
/// decrement. A removal never takes on_hand below zero: `None` when the row has fewer than
/// `-delta` units. Returns the row's on_hand after the change (the row stays locked by the
/// caller's transaction).
pub async fn add_on_hand(
    conn: &mut MySqlConnection,
    sku: Sku,
    warehouse_id: u32,
    delta: i64,
) -> DbResult<Option<u64>> {
    let changed = if delta >= 0 {
        sqlx::query(
            "INSERT INTO stock (sku, warehouse_id, on_hand) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE on_hand = on_hand + VALUES(on_hand)",
        )
        .bind(sku.get())
        .bind(warehouse_id)
        .bind(delta.unsigned_abs())
        .execute(&mut *conn)
        .await?;
        true
    } else {
        let units = delta.unsigned_abs();
        sqlx::query(
            "UPDATE stock SET on_hand = on_hand - ? \
             WHERE sku = ? AND warehouse_id = ? AND on_hand >= ?",
        )
        .bind(units)
        .bind(sku.get())
        .bind(warehouse_id)
        .bind(units)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1
    };
    if !changed {
        return Ok(None);
    }
    // A locking read is a current read: it sees the row as this transaction left it.
    Ok(Some(
        sqlx::query_scalar::<_, u64>(
            "SELECT on_hand FROM stock WHERE sku = ? AND warehouse_id = ? FOR UPDATE",
        )
        .bind(sku.get())
        .bind(warehouse_id)
        .fetch_one(&mut *conn)
        .await?,
    ))
}

/// Notes an admin stock change under its token, in the transaction that makes it.
pub async fn note_adjustment(
    conn: &mut MySqlConnection,
    token: u64,
    sku: Sku,
    warehouse_id: u32,
    delta: i64,
    on_hand_after: u64,
) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO stock_adjustments (token, sku, warehouse_id, delta, on_hand_after) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(token)
    .bind(sku.get())
    .bind(warehouse_id)
    .bind(delta)
    .bind(on_hand_after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the stock change noted under `token` was committed. Takes the product's row lock
/// first: while the transaction that made the change is still open on the server (its client
/// gone), it holds that lock, and its outcome is not decided yet.
pub async fn adjustment_committed(pool: &MySqlPool, sku: Sku, token: u64) -> DbResult<bool> {
    let mut tx = pool.begin().await?;
    lock_product(&mut tx, sku).await?;
    let found = token_noted(&mut tx, token).await?;
    tx.rollback().await?;
    Ok(found)
}

/// Whether the stock change noted under `token` was committed, for the sweeper, which must not
/// wait on a lock: `None` while the product's row lock is taken (`FOR UPDATE NOWAIT`; the
/// transaction that made the change may still be open, its outcome not decided).
pub async fn adjustment_committed_now(
    pool: &MySqlPool,
    sku: Sku,
    token: u64,
) -> DbResult<Option<bool>> {
    let mut tx = pool.begin().await?;
    let locked = sqlx::query("SELECT sku FROM products WHERE sku = ? FOR UPDATE NOWAIT")
        .bind(sku.get())
        .fetch_optional(&mut *tx)
        .await;
    match locked {
        Ok(_) => {}
        Err(e) if lock_taken(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let found = token_noted(&mut tx, token).await?;
    tx.rollback().await?;
    Ok(Some(found))
}

/// Whether `token`'s note is there: a locking read, the latest committed row, not a snapshot.
async fn token_noted(tx: &mut sqlx::MySqlConnection, token: u64) -> DbResult<bool> {
    let found = sqlx::query_scalar::<_, u64>(
        "SELECT token FROM stock_adjustments WHERE token = ? FOR UPDATE",
    )
    .bind(token)
    .fetch_optional(tx)
    .await?;
    Ok(found.is_some())
}

/// A `NOWAIT` locking read that met a lock: MySQL answers 3572 (`ER_LOCK_NOWAIT`), MariaDB a
/// lock wait timeout (1205).
fn lock_taken(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    matches!(
        db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        Some(3572 | 1205)
    )
}

/// Deletes up to `limit` notes of stock changes made more than `older_than` ago, oldest first
/// (by `ix_stock_adjustments_created`); returns how many went.
pub async fn prune_adjustments(
    pool: &MySqlPool,
    older_than: std::time::Duration,
    limit: u32,
) -> DbResult<u64> {
    Ok(sqlx::query(
        "DELETE FROM stock_adjustments \
         WHERE created_at < NOW(3) - INTERVAL ? SECOND ORDER BY created_at LIMIT ?",
    )
    .bind(older_than.as_secs())
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The largest order id MySQL knows (0 when none): the floor of the Redis id sequence.
pub async fn max_order_id(pool: &MySqlPool) -> DbResult<u64> {
    Ok(
        sqlx::query_scalar::<_, Option<u64>>("SELECT MAX(id) FROM orders")
            .fetch_one(pool)
            .await?
            .unwrap_or(0),
    )
}

/// The order id high-water mark: every id Redis ever handed out is at or below it.
#[tracing::instrument(skip(pool))]
pub async fn order_id_mark(pool: &MySqlPool) -> DbResult<u64> {
    Ok(
        sqlx::query_scalar::<_, Option<u64>>("SELECT MAX(v) FROM order_id_mark")
            .fetch_one(pool)
            .await?
            .unwrap_or(0),
    )
}

/// Raises the order id mark to at least `to` (never lowers it) and returns the mark.
#[tracing::instrument(skip(pool))]
pub async fn raise_order_id_mark(pool: &MySqlPool, to: u64) -> DbResult<u64> {
    sqlx::query(
        "INSERT INTO order_id_mark (id, v) VALUES (1, ?) \
         ON DUPLICATE KEY UPDATE v = GREATEST(v, ?)",
    )
    .bind(to)
    .bind(to)
    .execute(pool)
    .await?;
    order_id_mark(pool).await
}
