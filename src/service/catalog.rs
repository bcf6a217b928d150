//! Products, warehouses, stock and sale windows: MySQL first, mirrored into Redis under the
//! product's row lock so the two never disagree about what an admin changed.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::MySqlConnection;

use crate::app::AppState;
use crate::domain::{Price, ProductName, SaleWindow, Sku, StockDelta, WarehouseName};
use crate::domain::{SaleMeta, SkuMeta};
use crate::error::{AppError, AppResult};
use crate::store::mysql::DbResult;
use crate::store::mysql::catalog::{self as db, ProductRow};
use crate::store::mysql::orders as orders_db;
use crate::store::redis::{AdjustOutcome, SkuLoad, StockSnapshot};

/// A product as the catalog shows it: `available` counts the units that can still be bought.
#[derive(Debug, Clone)]
pub struct ProductView {
    pub sku: u32,
    pub name: String,
    /// The regular price, in minor units.
    pub price: u64,
    pub available: i64,
    /// The sale window, or null when the product has none.
    pub sale: Option<SaleView>,
}

/// A product's sale window: `sale_price` is charged in [`starts_at`, `ends_at`), and the product
/// can be bought only inside the window.
#[derive(Debug, Clone)]
pub struct SaleView {
    pub sale_price: u64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Units one customer may buy of this product (null: no limit).
    pub per_customer_limit: Option<u32>,
    /// Whether the window is open now.
    pub active: bool,
}

impl SaleView {
    fn of(w: &SaleWindow) -> Self {
        SaleView {
            sale_price: w.sale_price.get(),
            starts_at: w.starts_at,
            ends_at: w.ends_at,
            per_customer_limit: w.per_customer_limit,
            active: w.is_active(Utc::now()),
        }
    }
}

/// A product row as the catalog shows it, with its available count.
pub fn view(row: &ProductRow, available: i64) -> ProductView {
    ProductView {
        sku: row.sku,
        name: row.name.clone(),
        price: row.price,
        available,
        sale: row.sale().as_ref().map(SaleView::of),
    }
}

/// What the scripts need to know of a product.
pub fn meta_of(row: &ProductRow) -> SkuMeta {
    SkuMeta {
        name: row.name.clone(),
        price: row.price,
        sale: row.sale().map(|w| SaleMeta {
            sale_price: w.sale_price.get(),
            start_ms: w.starts_at.timestamp_millis(),
            end_ms: w.ends_at.timestamp_millis(),
            limit: w.per_customer_limit.unwrap_or(0),
        }),
    }
}

fn no_product(sku: Sku) -> AppError {
    AppError::NotFound(format!("no product with sku {sku}"))
}

/// What MySQL knows of a sku's stock: on hand, sold, bought per customer.
pub async fn sku_load(conn: &mut MySqlConnection, sku: Sku) -> AppResult<SkuLoad> {
    Ok(SkuLoad {
        stock: db::stock_of(conn, sku).await?,
        sold_total: orders_db::sold_units(conn, sku).await?,
        bought: orders_db::bought_units(conn, sku).await?,
    })
}

/// Loads a sku into Redis from MySQL where Redis lacks it. `false`: no such product.
///
/// One pooled connection at most, released before Redis is written; a sku MySQL did not know
/// lately answers `false` without asking it again (`state.lookups`); concurrent loads of one
/// sku are done once (the others wait, then find it loaded), and loads take at most half of the
/// pool (503 `unavailable` after `mysql_timeout` of waiting).
pub async fn ensure_loaded(state: &AppState, sku: Sku) -> AppResult<bool> {
    let lookups = &state.lookups;
    if lookups.is_unknown(sku.get()) {
        return Ok(false);
    }
    let _turn = lookups.turn(sku.get()).await?;
    // Done by the request we waited for?
    if lookups.is_unknown(sku.get()) {
        return Ok(false);
    }
    if state.redis.stock(sku).await?.is_some() {
        return Ok(true);
    }
    let (row, load, out) = {
        let _slot = lookups.slot(sku.get()).await?;
        let epoch = lookups.epoch();
        let mut conn = state.db.acquire().await?;
        let Some(row) = db::get_product(&mut *conn, sku).await? else {
            lookups.mark_unknown(sku.get(), epoch);
            return Ok(false);
        };
        let load = sku_load(&mut conn, sku).await?;
        // Paid units beyond the units taken off on_hand: payments not written back yet.
        let paid: u64 = load.bought.iter().map(|(_, n)| n).sum();
        let out = orders_db::UnitsOut {
            open: orders_db::open_units(&mut conn, sku).await?,
            paid_unwritten: paid.saturating_sub(load.sold_total),
        };
        (row, load, out)
    };
    // A sku Redis had loaded, or one MySQL knows units out of, lost its counters: a load from
    // on_hand would sell again what open orders, unwritten payments and reservations Redis
    // lost hold. Refused (nothing changed) until rebuild-cache.
    let known = state.redis.was_loaded(sku).await?;
    if known || out.any() {
        // Noted before the last look, so a rebuild-cache that loads it after that look also
        // clears the note (it does so last).
        let noted = match state.redis.mark_lost(sku).await {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!(sku = %sku, error = %e, "could not note the lost sku");
                false
            }
        };
        // Loaded meanwhile (by another instance's load, or rebuild-cache): that load stands.
        if state.redis.stock(sku).await?.is_some() {
            if noted {
                state.redis.unmark_lost(sku).await?;
            }
            return Ok(true);
        }
        return Err(lost(sku, known, out));
    }
    state.redis.load_sku(sku, &meta_of(&row), &load).await?;
    if state.redis.is_lost(sku).await? {
        // Refused before, loaded now that nothing of it is out: no longer lost.
        state.redis.unmark_lost(sku).await?;
    }
    Ok(true)
}

/// The refusal of a sku whose Redis counters were lost (see DESIGN.md, "Per-sku loss
/// detection"; the caller noted it in `<p>:lost` for the gauge `flashsale_skus_lost`, alert
/// FlashsaleSkuCountersLost): logged, counted.
fn lost(sku: Sku, known: bool, out: orders_db::UnitsOut) -> AppError {
    let why = match (known, out.any()) {
        (true, false) => "Redis had it loaded".to_string(),
        (k, _) => format!(
            "{}MySQL knows {} unit(s) of open orders and {} paid unit(s) not yet taken off \
             on_hand",
            if k { "Redis had it loaded; " } else { "" },
            out.open,
            out.paid_unwritten
        ),
    };
    metrics::counter!("flashsale_sku_loss_refusals_total").increment(1);
    tracing::error!(sku = %sku, reason = %why,
        "a sku's Redis counters are gone although units of it are out: not reloaded from MySQL \
         (it would sell them again); its sales stop until `flashsale rebuild-cache` ran");
    AppError::Unavailable(format!(
        "sku {sku}: Redis lost its stock counters ({why}); it is not sold until `flashsale \
         rebuild-cache` ran"
    ))
}

/// The sku's Redis counters, loading them from MySQL first when missing.
pub async fn counters(state: &AppState, sku: Sku) -> AppResult<StockSnapshot> {
    if let Some(s) = state.redis.stock(sku).await? {
        return Ok(s);
    }
    if !ensure_loaded(state, sku).await? {
        return Err(no_product(sku));
    }
    state
        .redis
        .stock(sku)
        .await?
        .ok_or_else(|| AppError::internal(format!("sku {sku}: counters vanished after loading")))
}

/// A sku's available count (see [`counters`]).
pub async fn available(state: &AppState, sku: Sku) -> AppResult<i64> {
    Ok(counters(state, sku).await?.available)
}

pub async fn create_product(
    state: &AppState,
    sku: Option<Sku>,
    name: &ProductName,
    price: Price,
) -> AppResult<ProductView> {
    let sku = db::insert_product(&state.db, sku, name, price).await?;
    state.lookups.forget_unknown(sku.get());
    get_product(state, sku).await
}

/// The counters first: they answer an unknown sku (404) without MySQL when it is known to be
/// unknown, and load a known one once however many ask at the same moment.
pub async fn get_product(state: &AppState, sku: Sku) -> AppResult<ProductView> {
    let c = counters(state, sku).await?;
    let row = db::get_product(&state.db, sku)
        .await?
        .ok_or_else(|| no_product(sku))?;
    Ok(view(&row, c.available))
}

/// A page of products by ascending sku; the next page starts after `next_after_sku`.
pub async fn list_products(
    state: &AppState,
    after_sku: u32,
    limit: u32,
) -> AppResult<(Vec<ProductView>, Option<u32>)> {
    let rows = db::list_products(&state.db, after_sku, limit + 1).await?;
    let more = rows.len() > limit as usize;
    let mut items = Vec::with_capacity(limit as usize);
    for row in rows.iter().take(limit as usize) {
        let sku = Sku::parse(u64::from(row.sku))?;
        let available = match counters(state, sku).await {
            Ok(c) => c.available,
            // A sku whose counters were lost is listed with nothing available while its sales
            // are refused; the others are listed as usual.
            Err(AppError::Unavailable(_)) if state.redis.is_lost(sku).await.unwrap_or(false) => 0,
            Err(e) => return Err(e),
        };
        items.push(view(row, available));
    }
    let next = if more {
        items.last().map(|p| p.sku)
    } else {
        None
    };
    Ok((items, next))
}

/// Runs `change` on a sku inside a MySQL transaction that holds the product's row lock, then
/// mirrors the product's new catalog entry into Redis before committing. If the Redis call fails,
/// MySQL rolls back; as the call may still have run (a timeout: its answer lost, the call itself
/// on its way), Redis then gets what MySQL holds once the rollback is through. If the commit
/// fails (or seems to: its answer may be lost), Redis likewise gets what MySQL holds once that
/// transaction is over.
#[tracing::instrument(name = "mysql.transaction", level = "debug", skip_all,
    fields(otel.kind = "client", db.system = "mysql", db.operation.name = "change_product",
        sku = %sku))]
async fn change_product<F>(state: &AppState, sku: Sku, change: F) -> AppResult<ProductRow>
where
    F: for<'c> FnOnce(
        &'c mut MySqlConnection,
    ) -> std::pin::Pin<Box<dyn Future<Output = DbResult<()>> + Send + 'c>>,
{
    let mut tx = state.db.begin().await?;
    db::lock_product(&mut tx, sku)
        .await?
        .ok_or_else(|| no_product(sku))?;
    change(&mut tx).await?;
    let new = db::lock_product(&mut tx, sku)
        .await?
        .ok_or_else(|| no_product(sku))?;
    if let Err(e) = state.redis.set_meta(sku, &meta_of(&new)).await {
        // Rolled back (the transaction is dropped unsent): the change did not happen, whatever
        // the wait below gives. The entry Redis may still get (a timeout: the call on its way)
        // is overwritten with MySQL's once the row lock is free; a call refused before it was
        // sent (sales refused) left nothing to overwrite.
        drop(tx);
        if state.redis.eviction_refusal().is_none() && !state.redis.is_behind() {
            mirror_catalog_entry(state, sku).await;
        }
        return Err(e);
    }
    if let Err(e) = tx.commit().await {
        // The commit may have gone through with its answer lost: once the broken transaction
        // is over (its row lock free), Redis gets what MySQL holds.
        let e = AppError::from(e);
        return match mirror_catalog_entry(state, sku).await {
            Some(Some(row)) if row == new => Ok(new),
            Some(_) => Err(e),
            None => Err(not_known_yet(sku, "catalog change", &e, true)),
        };
    }
    Ok(new)
}

/// Gives Redis the catalog entry MySQL holds, under the product's row lock (so once a broken
/// transaction on it is over), in the background; `None`: not done within [`SETTLE_WAIT`].
async fn mirror_catalog_entry(state: &AppState, sku: Sku) -> Option<Option<ProductRow>> {
    let state = state.clone();
    settle_in_background(sku, "catalog change", move || {
        let state = state.clone();
        async move {
            let mut tx = state.db.begin().await?;
            let row = db::lock_product(&mut tx, sku).await?;
            if let Some(row) = &row {
                state.redis.set_meta(sku, &meta_of(row)).await?;
            }
            tx.rollback().await?;
            AppResult::Ok(row)
        }
    })
    .await
}

pub async fn update_product(
    state: &AppState,
    sku: Sku,
    name: Option<ProductName>,
    price: Option<Price>,
) -> AppResult<ProductView> {
    let row = change_product(state, sku, |c| {
        Box::pin(async move { db::update_product(c, sku, name.as_ref(), price).await })
    })
    .await?;
    Ok(view(&row, counters(state, sku).await?.available))
}

pub async fn put_sale(state: &AppState, sku: Sku, sale: SaleWindow) -> AppResult<SaleView> {
    let row = change_product(state, sku, |c| {
        Box::pin(async move { db::put_sale(c, sku, &sale).await })
    })
    .await?;
    row.sale()
        .as_ref()
        .map(SaleView::of)
        .ok_or_else(|| AppError::internal("sale missing after it was written"))
}

pub async fn delete_sale(state: &AppState, sku: Sku) -> AppResult<()> {
    change_product(state, sku, |c| {
        Box::pin(async move { db::delete_sale(c, sku).await.map(|_| ()) })
    })
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct WarehouseView {
    pub warehouse_id: u32,
    pub name: String,
}

pub async fn create_warehouse(state: &AppState, name: WarehouseName) -> AppResult<WarehouseView> {
    let id = db::insert_warehouse(&state.db, &name).await?;
    Ok(WarehouseView {
        warehouse_id: id,
        name: name.as_str().to_string(),
    })
}

#[derive(Debug, Clone)]
pub struct StockAdjusted {
    pub sku: u32,
    pub warehouse_id: u32,
    /// On-hand units in that warehouse (MySQL).
    pub on_hand: u64,
    /// Units of that warehouse that can still be bought (Redis).
    pub available: i64,
}

/// Adds or removes on-hand units. Only available units can be removed: what is held, reserved
/// or sold stays, so stock never goes below what is spoken for. One MySQL transaction from start
/// to end (its span: `mysql.transaction`).
#[tracing::instrument(name = "mysql.transaction", level = "debug", skip_all,
    fields(otel.kind = "client", db.system = "mysql", db.operation.name = "adjust_stock",
        sku = %sku, warehouse_id))]
pub async fn adjust_stock(
    state: &AppState,
    sku: Sku,
    warehouse_id: u32,
    delta: StockDelta,
) -> AppResult<StockAdjusted> {
    let mut tx = state.db.begin().await?;
    let row = db::lock_product(&mut tx, sku)
        .await?
        .ok_or_else(|| no_product(sku))?;
    if !db::warehouse_exists(&mut tx, warehouse_id).await? {
        return Err(AppError::NotFound(format!("no warehouse {warehouse_id}")));
    }
    let load = sku_load(&mut tx, sku).await?;
    let d = delta.get();
    state.redis.load_sku(sku, &meta_of(&row), &load).await?;
    // MySQL's row first, relative to the row as it is when this statement runs (the write-back
    // may have lowered it since `load` was read), so no concurrent change is lost; and it is
    // locked by this transaction from here to the commit, a round trip after Redis's change.
    // Redis second: units added there are sellable at once, so a MySQL statement that waited
    // for the row and then failed (lock wait timeout, deadlock, lost connection) after they
    // were sold could not be undone: Redis would have sold units MySQL never had.
    let on_hand = match db::add_on_hand(&mut tx, sku, warehouse_id, d).await? {
        Some(n) => n,
        // Fewer on hand than the removal: fewer available too (rolled back on return).
        None => {
            return Err(AppError::OutOfStock(format!(
                "sku {sku}, warehouse {warehouse_id}: fewer than {} units on hand, cannot \
                 remove them; held, reserved and sold units stay",
                -d
            )));
        }
    };
    // Noted under a token of its own, in the same transaction: a commit whose answer is lost
    // can then be told from one that did not happen.
    let change = Change {
        sku,
        warehouse_id,
        delta: d,
        token: rand::random(),
    };
    db::note_adjustment(&mut tx, change.token, sku, warehouse_id, d, on_hand).await?;
    let here = match state
        .redis
        .adjust_stock(sku, warehouse_id, d, change.token, false)
        .await
    {
        Ok(AdjustOutcome::Adjusted { here, .. }) => here,
        Ok(AdjustOutcome::Short { available_here }) => {
            return Err(AppError::OutOfStock(format!(
                "sku {sku}, warehouse {warehouse_id}: {available_here} available units, \
                 cannot remove {}; held, reserved and sold units stay",
                -d
            )));
        }
        Ok(AdjustOutcome::NotLoaded) => {
            return Err(AppError::Unavailable(format!(
                "sku {sku}: Redis lost its counters during the change"
            )));
        }
        Ok(AdjustOutcome::Same) => {
            return Err(AppError::internal(
                "a new stock change's token was used before",
            ));
        }
        Err(e) => {
            // The script may have run with its answer lost. MySQL's part is rolled back (the
            // transaction is dropped unsent); Redis's is taken back if it happened.
            drop(tx);
            return Err(settle_change(state, change, Some(false), e)
                .await
                .err()
                .unwrap_or_else(|| {
                    AppError::internal("a stock change never committed was settled as committed")
                }));
        }
    };
    if let Err(e) = tx.commit().await {
        // The connection may have broken after MySQL committed: its token row says.
        return settle_change(state, change, None, e.into())
            .await
            .map(|()| StockAdjusted {
                sku: sku.get(),
                warehouse_id,
                on_hand,
                available: here,
            });
    }
    metrics::counter!("flashsale_stock_adjustments_total").increment(1);
    Ok(StockAdjusted {
        sku: sku.get(),
        warehouse_id,
        on_hand,
        available: here,
    })
}

/// An admin stock change whose MySQL commit or Redis call broke off.
#[derive(Debug, Clone)]
struct Change {
    sku: Sku,
    warehouse_id: u32,
    delta: i64,
    token: u64,
}

/// Settles a broken-off change: MySQL (its token row, once the transaction is over) says
/// whether it happened; when it did not, Redis's part is taken back (lua/adjust_stock.lua: only
/// if it was applied to the counters Redis holds now, at most once; counters rebuild-cache
/// loaded since came from MySQL and are left alone). `Ok(())`: the change was committed after
/// all.
async fn settle_change(
    state: &AppState,
    change: Change,
    committed: Option<bool>,
    e: AppError,
) -> AppResult<()> {
    let (state2, sku) = (state.clone(), change.sku);
    let done = settle_in_background(sku, "stock change", move || {
        let (state, change) = (state2.clone(), change.clone());
        async move { settle_once(&state, &change, committed).await }
    });
    match done.await {
        Some(true) => {
            metrics::counter!("flashsale_stock_adjustments_total").increment(1);
            Ok(())
        }
        Some(false) => Err(e),
        // Whether the commit went through is not known yet: `committed` is known only when the
        // change never reached its commit (MySQL rolled back; Redis's part is taken back).
        None => Err(not_known_yet(sku, "stock change", &e, committed.is_none())),
    }
}

/// What a request answers when its broken-off change is still being settled. `may_have_happened`:
/// its commit's answer was lost, so it may have been committed ([`AppError::OutcomeUnknown`]: no
/// "nothing was changed", no `Retry-After`); otherwise MySQL rolled it back and only Redis's part
/// is still being put right (503 `unavailable`).
fn not_known_yet(sku: Sku, what: &str, e: &AppError, may_have_happened: bool) -> AppError {
    let m = format!(
        "sku {sku}: the {what}'s outcome is not known yet ({e}); it is settled in the \
         background: read it again before repeating it"
    );
    if may_have_happened {
        AppError::OutcomeUnknown(m)
    } else {
        AppError::Unavailable(m)
    }
}

/// How long a request waits for its broken-off change to be settled.
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// Runs `step` in a task of its own until it succeeds (ten minutes at most, then an error to
/// run reconcile), so it finishes even when the request is gone; the request waits for it
/// [`SETTLE_WAIT`] (`None`: not settled yet).
async fn settle_in_background<T, F, Fut>(sku: Sku, what: &'static str, step: F) -> Option<T>
where
    T: Send + 'static,
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = AppResult<T>> + Send,
{
    let task = tokio::spawn(async move {
        let give_up = Instant::now() + Duration::from_secs(600);
        let mut pause = Duration::from_millis(100);
        loop {
            match step().await {
                Ok(done) => return Some(done),
                Err(e) if Instant::now() < give_up => {
                    tracing::warn!(%sku, error = %e, "{what} not settled yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(%sku, error = %e, "gave up settling a {what}; run reconcile");
                    return None;
                }
            }
        }
    });
    tokio::time::timeout(SETTLE_WAIT, task)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

async fn settle_once(state: &AppState, c: &Change, committed: Option<bool>) -> AppResult<bool> {
    let committed = match committed {
        Some(known) => known,
        None => db::adjustment_committed(&state.db, c.sku, c.token).await?,
    };
    if committed {
        return Ok(true);
    }
    if let AdjustOutcome::Short { available_here } = state
        .redis
        .adjust_stock(c.sku, c.warehouse_id, c.delta, c.token, true)
        .await?
    {
        tracing::error!(sku = %c.sku, warehouse_id = c.warehouse_id, delta = c.delta,
            available_here, "units of a stock change MySQL did not take were sold before \
            they could be taken back; run reconcile");
    }
    Ok(false)
}

#[derive(Debug, Clone)]
pub struct WarehouseStock {
    pub warehouse_id: u32,
    pub count: i64,
}

/// Units that can still be bought, per warehouse.
pub async fn stocks(state: &AppState, sku: Sku) -> AppResult<Vec<WarehouseStock>> {
    let c = counters(state, sku).await?;
    Ok(c.warehouses
        .into_iter()
        .map(|(warehouse_id, count)| WarehouseStock {
            warehouse_id,
            count,
        })
        .collect())
}

#[derive(Debug, Clone)]
pub struct SalesReport {
    pub sku: u32,
    pub on_hand: u64,
    pub available: i64,
    pub held: i64,
    pub reserved: i64,
    /// Sold and not yet written back to `on_hand`: on_hand = available + held + reserved + sold.
    pub sold: i64,
    /// Sold since the counters were loaded into Redis.
    pub sold_total: i64,
}

pub async fn sales_report(state: &AppState, sku: Sku) -> AppResult<SalesReport> {
    let c = counters(state, sku).await?;
    let mut conn = state.db.acquire().await?;
    let on_hand = db::stock_of(&mut conn, sku)
        .await?
        .iter()
        .map(|(_, n)| *n)
        .sum();
    Ok(SalesReport {
        sku: sku.get(),
        on_hand,
        available: c.available,
        held: c.held,
        reserved: c.reserved,
        sold: c.sold,
        sold_total: c.sold_total,
    })
}
