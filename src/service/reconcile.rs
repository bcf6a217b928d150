//! Redis checked against MySQL per sku, and Redis rebuilt from MySQL after it lost its data: what
//! the `flashsale reconcile` and `flashsale rebuild-cache` commands (src/admin/) run.

use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::domain::OrderStatus;
use crate::domain::Sku;
use crate::error::AppResult;
use crate::service::catalog::{meta_of, sku_load};
use crate::store::mysql::{catalog as catalog_db, orders as orders_db};
use crate::store::redis::outbox::OutboxLeft;
use crate::store::redis::{Deadline, MetaWrite, ReserveMode, ReserveOutcome, ReserveRequest, Rid};
use crate::worker::writer::{Fault, GROUP, Writer};

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
    /// Admin stock changes whose MySQL outcome Redis has not settled yet (the sweeper settles
    /// each [`crate::service::catalog::SETTLE_PENDING_AFTER`] after its start): each may leave
    /// MySQL its size above Redis until then (a removal rolled back, an addition committed).
    pub pending_changes: usize,
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
    // The write-back takes a paid line's units off on_hand in the transaction that writes it
    // `paid`: a paid line without a stock movement is units sold that MySQL still counts.
    let unmoved = orders_db::paid_without_movements(&mut conn, sku).await?;
    drop(conn);
    if !unmoved.is_empty() {
        let units: u64 = unmoved.iter().map(|(_, n)| u64::from(*n)).sum();
        let ids: Vec<u64> = unmoved.iter().map(|(o, _)| *o).take(10).collect();
        c.problems.push(format!(
            "{} paid line(s) ({units} unit(s){}) never taken off on_hand: orders {ids:?}",
            unmoved.len(),
            if unmoved.len() >= 100 { " or more" } else { "" }
        ));
    }
    if state.redis.is_lost(sku).await? {
        c.problems.push(
            "Redis lost its counters while units were out: not sold until rebuild-cache".into(),
        );
    }
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
    let now_ms = chrono::Utc::now().timestamp_millis();
    for (p, settle_at) in &ledgers.pending {
        if now_ms > settle_at + OVERDUE.as_millis() as i64 {
            problem(format!(
                "an admin stock change ({:+} in warehouse {}) pending {} s past its settle \
                 time: is any instance's sweeper running?",
                p.delta,
                p.warehouse_id,
                (now_ms - settle_at) / 1000
            ));
        }
    }
    c.pending_changes = ledgers.pending.len();
    let redis_total = stock.available + stock.held + stock.reserved + stock.sold;
    let gap = c.on_hand + c.in_flight - redis_total;
    let sizes: Vec<i64> = ledgers.pending.iter().map(|(p, _)| p.delta.abs()).collect();
    if !is_subset_sum(gap, &sizes) {
        problem(format!(
            "on_hand {} (+{} in flight) != available + held + reserved + sold = {redis_total}{}",
            c.on_hand,
            c.in_flight,
            if sizes.is_empty() {
                String::new()
            } else {
                format!(" (+ any of the pending changes {sizes:?})")
            }
        ));
    }
    Ok(c)
}

/// How long past its settle time a pending admin stock change is reported: the sweeper's tick
/// and a settle put off while the product's row was locked fit well within it.
const OVERDUE: Duration = Duration::from_secs(60);

/// Whether `gap` is the sum of some of `sizes` (each 0 or more; the empty sum is 0): which
/// pending changes MySQL holds is not known until they are settled.
/// Past 16 of them (2^16 sums at most) only the bounds are checked: the sums of many changes
/// of distinct sizes would take exponential time to list.
fn is_subset_sum(gap: i64, sizes: &[i64]) -> bool {
    if sizes.len() > 16 {
        return (0..=sizes.iter().sum::<i64>()).contains(&gap);
    }
    let mut reachable = std::collections::BTreeSet::from([0i64]);
    for &s in sizes {
        let next: Vec<i64> = reachable.iter().map(|r| r + s).collect();
        reachable.extend(next);
    }
    reachable.contains(&gap)
}

/// The table `flashsale reconcile` prints.
pub fn table(checks: &[SkuCheck]) -> String {
    let mut s = format!(
        "{:>8} {:>9} {:>9} {:>9} {:>6} {:>8} {:>6} {:>7} {:>9}  {}\n",
        "sku",
        "on_hand",
        "in_flight",
        "available",
        "held",
        "reserved",
        "sold",
        "pending",
        "identity",
        "problems"
    );
    for c in checks {
        if !c.loaded {
            s += &format!(
                "{:>8} {:>9} {:>9}  (not loaded in Redis){}\n",
                c.sku,
                c.on_hand,
                "-",
                if c.ok() {
                    String::new()
                } else {
                    format!("  MISMATCH  {}", c.problems.join("; "))
                }
            );
            continue;
        }
        s += &format!(
            "{:>8} {:>9} {:>9} {:>9} {:>6} {:>8} {:>6} {:>7} {:>9}  {}\n",
            c.sku,
            c.on_hand,
            c.in_flight,
            c.available,
            c.held,
            c.reserved,
            c.sold,
            c.pending_changes,
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
    /// Set when the rebuild gave up waiting for the outbox (what was still not written): then
    /// it changed nothing (no sku reloaded, no marker written); run it again once it drained.
    pub outbox_not_drained: Option<String>,
}

/// Writes the outbox back until every entry that was in it when this started is written (the
/// writer deletes what it wrote), whichever writer has it: this one's own pending entries and
/// new ones, entries idle past `claim_idle` at another (claimed), and, for those another
/// writer holds and still works on, waiting for it. `None`: drained; else what was left after
/// `wait`. Entries appended meanwhile are not waited for (see `rebuild_cache`'s restore of
/// orders Redis holds paid).
async fn drain_outbox(
    state: &AppState,
    writer: &Writer,
    wait: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> AppResult<Option<OutboxLeft>> {
    let tails = state.redis.outbox_tails().await?;
    let started = Instant::now();
    let mut said = None::<Instant>;
    loop {
        let error = match writer.run_once(&state.db, Fault::None).await {
            Ok(_) => None,
            // MySQL (or Redis) cannot take the write now: waited out like the rest.
            Err(e) => Some(e.to_string()),
        };
        let left = state.redis.outbox_left(GROUP, &tails).await?;
        if left.is_empty() {
            return Ok(None);
        }
        if started.elapsed() >= wait {
            return Ok(Some(left));
        }
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            said = Some(Instant::now());
            let why = error
                .map(|e| format!(" (last attempt here: {e})"))
                .unwrap_or_default();
            let msg = format!(
                "waiting for the outbox ({:.0} s of {:.0} s): {left}{why}",
                started.elapsed().as_secs_f64(),
                wait.as_secs_f64()
            );
            tracing::debug!("{msg}");
            progress(&msg);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    state
        .redis
        .set_meta(sku, &meta_of(&row), MetaWrite::Put)
        .await?;
    tx.rollback().await?;
    Ok(())
}

/// How long `rebuild_cache` waits for the outbox by default: past `claim_idle` twice, so
/// entries a stopped instance left pending are claimed and written within it.
pub fn default_outbox_wait(state: &AppState) -> Duration {
    (state.cfg.outbox.claim_idle * 2).max(Duration::from_secs(10))
}

/// [`rebuild_cache_waiting`] with [`default_outbox_wait`], saying nothing while it waits.
pub async fn rebuild_cache(state: &AppState) -> AppResult<RebuildReport> {
    rebuild_cache_waiting(state, default_outbox_wait(state), &|_| {}).await
}

/// Rebuilds Redis from MySQL after Redis lost its data or came back from older persistence
/// (behind MySQL), or lost some skus' counters. First the outbox is written back to MySQL,
/// every entry of it, also those pending at other instances' writers (so MySQL holds every
/// order and every payment Redis decided: a sku's ledgers are dropped below, and an unwritten
/// payment would otherwise be sold again), waiting for them at most `wait` and saying what it
/// waits for through `progress` every few seconds; if they are still there then, nothing else
/// is done and `outbox_not_drained` says what was left. Then the order id counter is raised
/// above every id handed out, every sku's counters are reloaded from on_hand and the customers'
/// bought units (even those Redis holds: they may be behind), and every open order (record
/// where missing, and its reservations) with its deadline. Cart holds are dropped (customers
/// add again). Written last: the lost skus' note cleared, and the marker that lets instances
/// refusing sales (Redis went back) sell again. Run it before the service takes traffic again.
/// A sku that cannot be loaded is listed in `problems` and the rebuild goes on (the command
/// then exits non-zero).
pub async fn rebuild_cache_waiting(
    state: &AppState,
    wait: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> AppResult<RebuildReport> {
    // This command's own scripts run while instances refuse sales.
    let state = &AppState {
        redis: state.redis.for_repair(),
        ..state.clone()
    };
    let mut report = RebuildReport::default();
    let writer = Writer::new(state.clone());
    writer.ensure_groups().await?;
    if let Some(left) = drain_outbox(state, &writer, wait, progress).await? {
        report.problems.push(format!(
            "gave up after {:.0} s waiting for the outbox: {left}; nothing was rebuilt (see the \
             writers' logs and MySQL; run rebuild-cache again once they are written)",
            wait.as_secs_f64()
        ));
        report.outbox_not_drained = Some(left.to_string());
        return Ok(report);
    }
    crate::service::order_ids::raise(state, false, true).await?;

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
        let mut paid_in_redis = false;
        if state.redis.restore_order(order.id, &fields).await? {
            report.orders_restored += 1;
        } else {
            match state.redis.order_record(order.id).await?.map(|r| r.status) {
                Some(OrderStatus::AwaitingPayment | OrderStatus::New) => {}
                // Paid in Redis since the outbox was drained, its event not written yet: its
                // units are out (the counters were loaded from an on_hand that does not know
                // them). Its lines are reserved again below, and the write-back sells them.
                Some(OrderStatus::Paid) => paid_in_redis = true,
                // Cancelled or failed: its event is on the way to MySQL, its units available.
                _ => continue,
            }
        }
        if order.expires_at <= chrono::Utc::now() && !paid_in_redis {
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
            if paid_in_redis
                && !orders_db::written_back(&state.db, sku, &[order.id])
                    .await?
                    .is_empty()
            {
                // Written back meanwhile: on_hand (read before) may not know it, but the line
                // is sold, not reserved.
                continue;
            }
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
    state.redis.clear_lost().await?;
    state.redis.write_rebuild_marker().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::is_subset_sum;

    #[test]
    fn a_gap_is_explained_only_by_some_of_the_pending_changes() {
        assert!(is_subset_sum(0, &[]));
        assert!(!is_subset_sum(1, &[]));
        assert!(!is_subset_sum(-2, &[2]));
        for gap in [0, 2, 3, 5] {
            assert!(is_subset_sum(gap, &[2, 3]), "{gap}");
        }
        for gap in [1, 4, 6] {
            assert!(!is_subset_sum(gap, &[2, 3]), "{gap}");
        }
        let many = vec![1; 65];
        assert!(is_subset_sum(65, &many) && !is_subset_sum(66, &many));
        let distinct: Vec<i64> = (0..40).map(|i| 1i64 << i).collect();
        assert!(is_subset_sum((1i64 << 40) - 1, &distinct));
        assert!(!is_subset_sum(1i64 << 40, &distinct));
    }
}
