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
use crate::store::redis::{AdjustOutcome, AdjustStep, MetaWrite, SkuLoad, StockSnapshot};

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
        let out = units_out(&mut conn, sku, &load).await?;
        (row, load, out)
    };
    if !may_load(state, sku, out).await? {
        // Loaded meanwhile (by another instance's load, or rebuild-cache): that load stands.
        return Ok(true);
    }
    state.redis.load_sku(sku, &meta_of(&row), &load).await?;
    if state.redis.is_lost(sku).await? {
        // Refused before, loaded now that nothing of it is out: no longer lost.
        state.redis.unmark_lost(sku).await?;
    }
    Ok(true)
}

/// What MySQL knows to be out of a sku (units of open orders; paid units beyond the units taken
/// off on_hand: payments not written back yet), from the load just read.
async fn units_out(
    conn: &mut MySqlConnection,
    sku: Sku,
    load: &SkuLoad,
) -> AppResult<orders_db::UnitsOut> {
    let paid: u64 = load.bought.iter().map(|(_, n)| n).sum();
    Ok(orders_db::UnitsOut {
        open: orders_db::open_units(conn, sku).await?,
        paid_unwritten: paid.saturating_sub(load.sold_total),
    })
}

/// Whether a sku Redis has no counters for may be loaded from MySQL: `false` when it was loaded
/// meanwhile (that load stands). A sku Redis had loaded, or one MySQL knows units out of, lost
/// its counters: a load from on_hand would sell again what open orders, unwritten payments and
/// reservations Redis lost hold. Refused (nothing changed) until rebuild-cache, whoever asks
/// (a purchase, a product read, an admin's stock change).
async fn may_load(state: &AppState, sku: Sku, out: orders_db::UnitsOut) -> AppResult<bool> {
    let known = state.redis.was_loaded(sku).await?;
    if !known && !out.any() {
        return Ok(true);
    }
    // Noted before the last look, so a rebuild-cache that loads it after that look also clears
    // the note (it does so last).
    let noted = match state.redis.mark_lost(sku).await {
        Ok(new) => new,
        Err(e) => {
            tracing::warn!(sku = %sku, error = %e, "could not note the lost sku");
            false
        }
    };
    if state.redis.stock(sku).await?.is_some() {
        if noted {
            state.redis.unmark_lost(sku).await?;
        }
        return Ok(false);
    }
    Err(lost(sku, known, out))
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
/// MySQL rolls back; as the call may still have run or still be on its way (a timeout: its
/// answer lost), Redis then gets what MySQL holds once the rollback is through, with the change's
/// token fenced, so the late call writes nothing whichever arrives first (lua/set_meta.lua). If
/// the commit fails (or seems to: its answer may be lost), Redis likewise gets what MySQL holds
/// once that transaction is over.
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
    let token: u64 = rand::random();
    match state
        .redis
        .set_meta(sku, &meta_of(&new), MetaWrite::Change(token))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(AppError::internal(
                "a catalog change found its own token fenced",
            ));
        }
        Err(e) => {
            // Rolled back (the transaction is dropped unsent): the change did not happen,
            // whatever the wait below gives. The call may still land (a timeout: the call on
            // its way): MySQL's entry goes in under the change's fence once the row lock is
            // free. A call refused before it was sent (sales refused) left nothing to put right.
            drop(tx);
            if state.redis.eviction_refusal().is_none() && !state.redis.is_behind() {
                mirror_catalog_entry(state, sku, MetaWrite::Fence(token)).await;
            }
            return Err(e);
        }
    }
    if let Err(e) = tx.commit().await {
        // The commit may have gone through with its answer lost: once the broken transaction
        // is over (its row lock free), Redis gets what MySQL holds.
        let e = AppError::from(e);
        return match mirror_catalog_entry(state, sku, MetaWrite::Put).await {
            Some(Some(row)) if row == new => Ok(new),
            Some(_) => Err(e),
            None => Err(not_known_yet(sku, "catalog change", &e, true)),
        };
    }
    Ok(new)
}

/// Gives Redis the catalog entry MySQL holds (`how`: [`MetaWrite::Fence`] or
/// [`MetaWrite::Put`]), under the product's row lock (so once a broken transaction on it is
/// over), in the background; `None`: not done within [`SETTLE_WAIT`].
async fn mirror_catalog_entry(
    state: &AppState,
    sku: Sku,
    how: MetaWrite,
) -> Option<Option<ProductRow>> {
    let state = state.clone();
    settle_in_background(sku, "catalog change", move || {
        let state = state.clone();
        async move {
            let mut tx = state.db.begin().await?;
            let row = db::lock_product(&mut tx, sku).await?;
            if let Some(row) = &row {
                state.redis.set_meta(sku, &meta_of(row), how).await?;
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

/// How long after its Redis part a stock change is left to the request that makes it before
/// the sweeper settles it from MySQL's token row (a process that died leaves it pending). A
/// change on its normal path is settled one round trip after its commit.
pub const SETTLE_PENDING_AFTER: Duration = Duration::from_secs(5);

/// Adds or removes on-hand units. Only available units can be removed: what is held, reserved
/// or sold stays, so stock never goes below what is spoken for. One MySQL transaction from start
/// to end (its span: `mysql.transaction`).
///
/// At no instant can Redis sell a unit MySQL may not have: a removal leaves Redis before the
/// commit, an addition reaches it only once MySQL's outcome is known. Before the commit the
/// change is recorded in Redis as pending with the sku (lua/adjust_stock.lua's `pend`, in the
/// sku's slot); it is settled right after the commit, or, when the commit broke off, once
/// MySQL's token row says whether it happened: by a task of this request, and by the sweeper
/// of any instance should this process be gone ([`settle_pending`]).
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
    // Loaded where missing, unless the sku's counters were lost (the same refusal as a
    // purchase's: a reload would sell again what is out).
    if state.redis.stock(sku).await?.is_none() {
        let out = units_out(&mut tx, sku, &load).await?;
        may_load(state, sku, out).await?;
    }
    state.redis.load_sku(sku, &meta_of(&row), &load).await?;
    // MySQL's row first, relative to the row as it is when this statement runs (the write-back
    // may have lowered it since `load` was read), so no concurrent change is lost; and it is
    // locked by this transaction from here to the commit. Redis's part follows: a statement
    // that waited for the row and then failed (lock wait timeout, deadlock, lost connection)
    // leaves nothing in Redis to take back.
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
    // Should this request not settle the change (a step broke off: `pending_left`), the
    // sweeper does once it is due (the sku noted in the due index at its next pass; after a
    // crash, which loses that note, its audit finds the pending change).
    let settle_at_ms = Utc::now().timestamp_millis() + SETTLE_PENDING_AFTER.as_millis() as i64;
    let pending_left = || state.redis.note_due(sku, settle_at_ms);
    let before = match state
        .redis
        .adjust_stock(
            sku,
            warehouse_id,
            d,
            change.token,
            AdjustStep::Pend { settle_at_ms },
        )
        .await
    {
        // A removal's units are out of Redis now; an addition's wait for the commit.
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
            // transaction is dropped unsent, never to be committed); Redis's is taken back if
            // it happened, and can no longer happen if it did not.
            drop(tx);
            pending_left();
            return Err(match settle_change(state, change, Some(false)).await {
                Some(_) => e,
                None => not_known_yet(sku, "stock change", &e, false),
            });
        }
    };
    if let Err(e) = tx.commit().await {
        // The connection may have broken after MySQL committed: its token row says.
        let e = AppError::from(e);
        pending_left();
        return match settle_change(state, change, None).await {
            Some(Settled {
                committed: true,
                here,
            }) => {
                metrics::counter!("flashsale_stock_adjustments_total").increment(1);
                Ok(StockAdjusted {
                    sku: sku.get(),
                    warehouse_id,
                    on_hand,
                    available: here.unwrap_or(before),
                })
            }
            Some(_) => Err(e),
            None => Err(not_known_yet(sku, "stock change", &e, true)),
        };
    }
    metrics::counter!("flashsale_stock_adjustments_total").increment(1);
    let available = match state
        .redis
        .adjust_stock(sku, warehouse_id, d, change.token, AdjustStep::Commit)
        .await
    {
        Ok(AdjustOutcome::Adjusted { here, .. }) => {
            if d > 0 {
                // The admin's next add (or a shopper's) must not be refused in process for a
                // zero this instance learnt before the units came.
                state.sold_out.units_back(sku);
            }
            here
        }
        Ok(_) => before,
        Err(e) => {
            // Committed: the change happened, whatever Redis answers. Its Redis part (an
            // addition's units) follows in the background, or from the sweeper; until then
            // Redis sells what it had.
            tracing::warn!(%sku, warehouse_id, delta = d, error = %e,
                "a committed stock change is not in Redis yet; settling it in the background");
            pending_left();
            match settle_change(state, change, Some(true)).await {
                Some(Settled {
                    here: Some(here), ..
                }) => here,
                _ => before,
            }
        }
    };
    Ok(StockAdjusted {
        sku: sku.get(),
        warehouse_id,
        on_hand,
        available,
    })
}

/// An admin stock change whose MySQL commit or Redis call broke off, or one the sweeper found
/// pending.
#[derive(Debug, Clone)]
struct Change {
    sku: Sku,
    warehouse_id: u32,
    delta: i64,
    token: u64,
}

/// How a broken-off change was settled: whether MySQL committed it, and its warehouse's
/// available units in Redis after (`None`: not loaded, or settled before).
#[derive(Debug, Clone, Copy)]
struct Settled {
    committed: bool,
    here: Option<i64>,
}

/// Settles a broken-off change in a task of its own (so it finishes when the request is gone):
/// MySQL (its token row, once the transaction is over, unless `committed` is known) says
/// whether it happened; Redis's part then follows the outcome (lua/adjust_stock.lua: at most
/// once, and only on the counters it was made on). `None`: not settled within
/// [`SETTLE_WAIT`] (the task goes on, and the sweeper would settle it too).
async fn settle_change(
    state: &AppState,
    change: Change,
    committed: Option<bool>,
) -> Option<Settled> {
    let (state2, sku) = (state.clone(), change.sku);
    settle_in_background(sku, "stock change", move || {
        let (state, change) = (state2.clone(), change.clone());
        async move {
            let committed = match committed {
                Some(known) => known,
                None => db::adjustment_committed(&state.db, change.sku, change.token).await?,
            };
            settle_once(&state, &change, committed, "request").await
        }
    })
    .await
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

/// Redis's part of a change whose MySQL outcome is known: an addition's units go in if MySQL
/// committed it, a removal's come back if not (lua/adjust_stock.lua).
async fn settle_once(
    state: &AppState,
    c: &Change,
    committed: bool,
    by: &'static str,
) -> AppResult<Settled> {
    let step = if committed {
        AdjustStep::Commit
    } else {
        AdjustStep::Undo
    };
    let here = match state
        .redis
        .adjust_stock(c.sku, c.warehouse_id, c.delta, c.token, step)
        .await?
    {
        AdjustOutcome::Adjusted { here, .. } => {
            metrics::counter!("flashsale_stock_adjustments_settled_total",
                "by" => by,
                "outcome" => if committed { "committed" } else { "rolled_back" })
            .increment(1);
            Some(here)
        }
        _ => None,
    };
    Ok(Settled { committed, here })
}

/// Pending stock changes of one sku read per call of [`settle_pending`].
const PENDING_PER_PASS: usize = 64;
/// How long the sweeper waits for MySQL to tell a pending change's outcome (it sweeps holds
/// meanwhile: a MySQL outage must not hold that up for long).
const PENDING_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// What the sweeper's settling of a sku's pending stock changes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PendingSettled {
    pub settled: usize,
    /// Due but not settled: the change's transaction may still be open (the product's row
    /// lock is taken), or MySQL did not answer. Looked at again after [`SETTLE_PENDING_AFTER`].
    pub unsettled: usize,
}

/// Settles the sku's pending stock changes due by `now_ms` (Redis's clock) from MySQL's token
/// rows: what a process that died (or whose settle gave up) left pending. The sweeper calls it;
/// it never waits for a row lock (`NOWAIT`): a change whose transaction may still be open is
/// put off. Settling twice, or beside the request's own task, does it once.
pub async fn settle_pending(state: &AppState, sku: Sku, now_ms: i64) -> AppResult<PendingSettled> {
    let mut out = PendingSettled::default();
    for p in state
        .redis
        .due_adjustments(sku, now_ms, PENDING_PER_PASS)
        .await?
    {
        let c = Change {
            sku,
            warehouse_id: p.warehouse_id,
            delta: p.delta,
            token: p.token,
        };
        let outcome = tokio::time::timeout(
            PENDING_LOOKUP_TIMEOUT,
            db::adjustment_committed_now(&state.db, sku, p.token),
        )
        .await;
        let committed = match outcome {
            Ok(Ok(Some(known))) => Some(known),
            Ok(Ok(None)) => {
                tracing::debug!(%sku, token = p.token,
                    "a pending stock change's transaction may still be open; later");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(%sku, token = p.token, error = %e,
                    "could not read a pending stock change's outcome; later");
                None
            }
            Err(_) => {
                tracing::warn!(%sku, token = p.token,
                    "MySQL did not tell a pending stock change's outcome in time; later");
                None
            }
        };
        let Some(committed) = committed else {
            out.unsettled += 1;
            metrics::counter!("flashsale_stock_adjustments_deferred_total").increment(1);
            let later = now_ms + SETTLE_PENDING_AFTER.as_millis() as i64;
            state.redis.defer_adjustment(sku, &p, later).await?;
            continue;
        };
        settle_once(state, &c, committed, "sweeper").await?;
        tracing::info!(%sku, warehouse_id = p.warehouse_id, delta = p.delta, token = p.token,
            committed, "settled a pending stock change from MySQL's token row");
        out.settled += 1;
    }
    Ok(out)
}

/// How long MySQL keeps the note of an admin stock change (`stock_adjustments`): a week, far
/// beyond the day its Redis token key lives and the seconds a pending change waits for its
/// outcome (a change settled as "not committed" because its note was gone would be taken back).
pub const ADJUSTMENT_NOTES_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Notes deleted per statement, and statements per call of [`prune_adjustment_notes`].
const PRUNE_BATCH: u32 = 1_000;
const PRUNE_ROUNDS: usize = 10;

/// Deletes the notes of stock changes older than [`ADJUSTMENT_NOTES_KEPT`], in bounded batches
/// (oldest first); what is left goes at the next call. The sweeper calls it at every audit.
/// Returns the notes deleted.
pub async fn prune_adjustment_notes(state: &AppState) -> AppResult<u64> {
    let mut gone = 0;
    for _ in 0..PRUNE_ROUNDS {
        let n = db::prune_adjustments(&state.db, ADJUSTMENT_NOTES_KEPT, PRUNE_BATCH).await?;
        gone += n;
        if n < u64::from(PRUNE_BATCH) {
            break;
        }
    }
    Ok(gone)
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
