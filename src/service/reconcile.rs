//! Redis checked against MySQL per sku, and Redis rebuilt from MySQL after it lost its data: what
//! the `flashsale reconcile` and `flashsale rebuild-cache` commands (src/admin/) run.

use crate::app::AppState;
use crate::domain::OrderStatus;
use crate::domain::Sku;
use crate::error::AppResult;
use crate::service::catalog::{meta_of, sku_load};
use crate::store::mysql::{catalog as catalog_db, orders as orders_db};
use crate::store::redis::{Deadline, ReserveMode, ReserveOutcome, ReserveRequest, Rid};
use crate::worker::writer::{Fault, Writer};

/// One sku's buckets and what disagrees.
#[derive(Debug, Clone, Default)]
pub struct SkuCheck {
    pub sku: u32,
    pub loaded: bool,
    pub on_hand: i64,
    /// Sold units MySQL already took off on_hand that Redis still counts as sold (a write-back
    /// between its MySQL commit and its Redis mark).
    pub in_flight: i64,
    pub available: i64,
    pub held: i64,
    pub reserved: i64,
    pub sold: i64,
    pub problems: Vec<String>,
}

impl SkuCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn entry_count(v: &str) -> i64 {
    v.split('|')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Checks DESIGN.md's identity for every product, and Redis's counters against its ledgers.
pub async fn check(state: &AppState) -> AppResult<Vec<SkuCheck>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let rows = catalog_db::list_products(&state.db, after, 500).await?;
        let Some(last) = rows.last() else { break };
        after = last.sku;
        for row in rows {
            out.push(check_sku(state, Sku::parse(u64::from(row.sku))?).await?);
        }
    }
    Ok(out)
}

pub async fn check_sku(state: &AppState, sku: Sku) -> AppResult<SkuCheck> {
    let mut c = SkuCheck {
        sku: sku.get(),
        ..Default::default()
    };
    let mut conn = state.db.acquire().await?;
    c.on_hand = catalog_db::stock_of(&mut conn, sku)
        .await?
        .iter()
        .map(|(_, n)| *n as i64)
        .sum();
    drop(conn);
    let Some((stock, ledgers)) = state.redis.stock_with_ledgers(sku).await? else {
        return Ok(c);
    };
    c.loaded = true;
    c.available = stock.available;
    c.held = stock.held;
    c.reserved = stock.reserved;
    c.sold = stock.sold;
    let (ledger, sold_ledger) = (&ledgers.res, &ledgers.sold);
    let (mut held, mut reserved) = (0, 0);
    for (rid, v) in ledger {
        if rid.starts_with("h:") {
            held += entry_count(v);
        } else {
            reserved += entry_count(v);
        }
    }
    let sold: i64 = sold_ledger.values().map(|v| entry_count(v)).sum();
    let sold_orders: Vec<u64> = sold_ledger
        .keys()
        .filter_map(|rid| rid.strip_prefix("o:")?.parse().ok())
        .collect();
    let written = orders_db::written_back(&state.db, sku, &sold_orders).await?;
    c.in_flight = written
        .iter()
        .filter_map(|o| sold_ledger.get(&format!("o:{o}")))
        .map(|v| entry_count(v))
        .sum();
    let by_warehouse: i64 = stock.warehouses.iter().map(|(_, n)| n).sum();
    let mut problem = |p: String| c.problems.push(p);
    if stock.available < 0 || stock.held < 0 || stock.reserved < 0 || stock.sold < 0 {
        problem("a negative bucket".into());
    }
    if stock.warehouses.iter().any(|(_, n)| *n < 0) {
        problem("a warehouse below zero".into());
    }
    if by_warehouse != stock.available {
        problem(format!(
            "warehouses add up to {by_warehouse}, available is {}",
            stock.available
        ));
    }
    if held != stock.held {
        problem(format!(
            "cart holds add up to {held}, held is {}",
            stock.held
        ));
    }
    if reserved != stock.reserved {
        problem(format!(
            "order lines add up to {reserved}, reserved is {}",
            stock.reserved
        ));
    }
    if sold != stock.sold {
        problem(format!(
            "unwritten sold lines add up to {sold}, sold is {}",
            stock.sold
        ));
    }
    let redis_total = stock.available + stock.held + stock.reserved + stock.sold;
    if c.on_hand + c.in_flight != redis_total {
        problem(format!(
            "on_hand {} (+{} in flight) != available + held + reserved + sold = {redis_total}",
            c.on_hand, c.in_flight
        ));
    }
    Ok(c)
}

/// The table `flashsale reconcile` prints.
pub fn table(checks: &[SkuCheck]) -> String {
    let mut s = format!(
        "{:>8} {:>9} {:>9} {:>9} {:>6} {:>8} {:>6} {:>9}  {}\n",
        "sku",
        "on_hand",
        "in_flight",
        "available",
        "held",
        "reserved",
        "sold",
        "identity",
        "problems"
    );
    for c in checks {
        if !c.loaded {
            s += &format!(
                "{:>8} {:>9} {:>9}  (not loaded in Redis)\n",
                c.sku, c.on_hand, "-"
            );
            continue;
        }
        s += &format!(
            "{:>8} {:>9} {:>9} {:>9} {:>6} {:>8} {:>6} {:>9}  {}\n",
            c.sku,
            c.on_hand,
            c.in_flight,
            c.available,
            c.held,
            c.reserved,
            c.sold,
            if c.ok() { "ok" } else { "MISMATCH" },
            c.problems.join("; ")
        );
    }
    s
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub skus_loaded: usize,
    pub orders_restored: usize,
    pub units_reserved: u64,
    pub problems: Vec<String>,
}

/// Loads one sku's counters and catalog entry into Redis from MySQL, dropping the counters Redis
/// holds (they may be behind MySQL: Redis back from older persistence). A sku whose counters cannot be read is left
/// alone and reported. Under the product's row lock, as every admin change: a change holds it
/// from before its Redis part to its commit, so the reload sees it whole or not at all (a
/// reload between a removal's Redis part and its commit put the removed units back).
async fn rebuild_sku(state: &AppState, row: &catalog_db::ProductRow) -> AppResult<()> {
    let sku = Sku::parse(u64::from(row.sku))?;
    let mut tx = state.db.begin().await?;
    let Some(row) = catalog_db::lock_product(&mut tx, sku).await? else {
        // Gone since it was listed.
        return Ok(());
    };
    if state.redis.stock(sku).await?.is_some() {
        state.redis.drop_sku_counters(sku).await?;
    }
    // Read after the lock was granted: the first plain read sets the transaction's snapshot.
    let load = sku_load(&mut tx, sku).await?;
    state.redis.load_sku(sku, &meta_of(&row), &load).await?;
    // The catalog entry too (a load keeps an existing one): an entry MySQL rolled back (a change
    // whose Redis call timed out and still ran) is otherwise never put right.
    state.redis.set_meta(sku, &meta_of(&row)).await?;
    tx.rollback().await?;
    Ok(())
}

/// Rebuilds Redis from MySQL after Redis lost its data or came back from older persistence
/// (behind MySQL): the order id counter above every id handed out, the outbox written back
/// first (so MySQL holds every order Redis knows), then every sku's counters reloaded from
/// on_hand and the customers' bought units (even those Redis holds: they may be behind), and
/// every open order (record where missing, and its reservations) with its deadline. Cart holds
/// are dropped (customers add again). Written last: the marker that lets instances refusing
/// sales (Redis went back) sell again. Run it before the service takes traffic again. A sku
/// that cannot be loaded is listed in `problems` and the rebuild goes on (the command then
/// exits non-zero).
pub async fn rebuild_cache(state: &AppState) -> AppResult<RebuildReport> {
    // This command's own scripts run while instances refuse sales.
    let state = &AppState {
        redis: state.redis.for_repair(),
        ..state.clone()
    };
    let mut report = RebuildReport::default();
    crate::service::order_ids::raise(state, false, true).await?;
    let writer = Writer::new(state.clone());
    writer.ensure_groups().await?;
    let written = writer.run_once(&state.db, Fault::None).await?;
    if written.failing > 0 {
        report.problems.push(format!(
            "{} order events could not be written to MySQL yet (see `flashsale outbox-dead \
             list` and the writer's log): their orders' units are not reserved again",
            written.failing
        ));
    }

    let mut after = 0;
    loop {
        let rows = catalog_db::list_products(&state.db, after, 500).await?;
        let Some(last) = rows.last() else { break };
        after = last.sku;
        for row in rows {
            // One sku that cannot be loaded is reported; the others are still restored.
            match rebuild_sku(state, &row).await {
                Ok(()) => report.skus_loaded += 1,
                Err(e) => report
                    .problems
                    .push(format!("sku {}: could not be loaded: {e}", row.sku)),
            }
        }
    }

    for (order, items) in orders_db::open_orders(&state.db).await? {
        let items_json = serde_json::to_string(&items).unwrap_or_else(|_| "[]".into());
        let fields = [
            ("user", order.user_id.to_string()),
            ("status", "awaiting_payment".to_string()),
            (
                "created_at",
                order.created_at.timestamp_millis().to_string(),
            ),
            (
                "expires_at",
                order.expires_at.timestamp_millis().to_string(),
            ),
            ("items", items_json),
            ("total", order.total_price.to_string()),
        ];
        if state.redis.restore_order(order.id, &fields).await? {
            report.orders_restored += 1;
        } else if !matches!(
            state.redis.order_record(order.id).await?.map(|r| r.status),
            Some(OrderStatus::AwaitingPayment | OrderStatus::New)
        ) {
            // Redis decided it since (paid, cancelled): its event is on the way to MySQL.
            continue;
        }
        if order.expires_at <= chrono::Utc::now() {
            // Its payment window passed while Redis had lost it: nothing can pay for it now.
            // Expired by its record (the event takes the status to MySQL); no units to give
            // back, as the counters were just loaded from MySQL, which never took them.
            state
                .redis
                .decide_order(order.id, crate::store::redis::OrderAction::Expire)
                .await?;
            continue;
        }
        state
            .redis
            .index_user_order(order.user_id, order.id)
            .await?;
        for item in items {
            let sku = Sku::parse(u64::from(item.sku))?;
            let outcome = state
                .redis
                .reserve(ReserveRequest {
                    sku,
                    user_id: order.user_id,
                    count: item.count,
                    rid: Rid::OrderLine { order_id: order.id },
                    deadline: Deadline::At(order.expires_at.timestamp_millis()),
                    mode: ReserveMode::Restore,
                })
                .await?;
            match outcome {
                ReserveOutcome::Reserved { .. } => report.units_reserved += u64::from(item.count),
                other => report.problems.push(format!(
                    "order {}: sku {sku} could not be reserved again: {other:?}",
                    order.id
                )),
            }
        }
    }
    state.redis.write_rebuild_marker().await?;
    Ok(report)
}
