//! The caller's cart: one hold per sku, reserved at once in Redis and alive for `cart_hold_ttl`
//! from its creation (changes of the line never extend it).

use chrono::{DateTime, Utc};

use super::sold_out::Check;
use super::{catalog, follow_up, from_ms};
use crate::app::AppState;
use crate::domain::{Count, MAX_LINE_UNITS, MAX_ORDER_TOTAL, Sku, SkuMeta};
use crate::error::{AppError, AppResult};
use crate::store::redis::{Deadline, ReserveMode, ReserveOutcome, ReserveRequest, Rid};

/// The caller's cart, with the catalog's current names and prices.
#[derive(Debug, Clone)]
pub struct CartView {
    pub items: Vec<CartLine>,
    pub total_price: u64,
}

/// One held line of the cart; the hold lapses at `held_until`, fixed when the line was first
/// added (adding to it or removing from it keeps it).
#[derive(Debug, Clone)]
pub struct CartLine {
    pub sku: u32,
    pub name: String,
    pub count: u32,
    pub unit_price: u64,
    pub line_price: u64,
    pub held_until: DateTime<Utc>,
}

/// The error a rejected reservation answers with.
pub fn rejection(sku: Sku, requested: u32, outcome: &ReserveOutcome) -> AppError {
    match outcome {
        ReserveOutcome::OutOfStock { available } => AppError::OutOfStock(format!(
            "sku {sku}: {available} available, {requested} requested"
        )),
        ReserveOutcome::LimitExceeded { has, limit } => AppError::LimitExceeded(format!(
            "sku {sku}: at most {limit} per customer; you have {has}, {requested} requested"
        )),
        ReserveOutcome::SaleNotActive => {
            AppError::SaleNotActive(format!("sku {sku}: its sale is not open now"))
        }
        ReserveOutcome::TooLarge { units, unit_price } => too_large(sku, *units, *unit_price),
        ReserveOutcome::NotLoaded | ReserveOutcome::Reserved { .. } | ReserveOutcome::Fenced => {
            AppError::internal(format!(
                "sku {sku}: unexpected reservation outcome {outcome:?}"
            ))
        }
    }
}

/// A line past the bounds of one line: more than `MAX_LINE_UNITS` units, or a total that is not
/// an exact integer everywhere.
pub fn too_large(sku: Sku, units: i64, unit_price: u64) -> AppError {
    AppError::InvalidRequest(format!(
        "sku {sku}: a line holds at most {MAX_LINE_UNITS} units and totals at most \
         {MAX_ORDER_TOTAL}; {units} units at {unit_price} would not fit"
    ))
}

/// Reserves, loading the sku from MySQL once when Redis does not know it (404: no product).
/// A sku this instance knows to be sold out is refused without asking Redis
/// (src/service/sold_out.rs), unless Redis is refused for sales now (its 503 comes first).
/// `intent` is written before Redis is asked to reserve (not when the answer is known in
/// process): what must exist for a reservation never to be unseen (the cart index's line).
pub async fn reserve_loading(
    state: &AppState,
    req: impl Fn() -> ReserveRequest,
    intent: impl Future<Output = AppResult<()>>,
) -> AppResult<ReserveOutcome> {
    let first = req();
    let sku = first.sku;
    // Only for adds to a cart hold: an order line's retry is answered by its existing
    // reservation, which a sold-out sku still has.
    // Asked first whether Redis is refused for sales: its 503 is then the answer, and a request
    // that asks Redis is not counted as refused in process.
    let ask = || {
        if first.mode == ReserveMode::Add && !state.redis.refuses_sales() {
            match state.sold_out.check(sku) {
                Check::SoldOut => Err(ReserveOutcome::OutOfStock { available: 0 }),
                Check::Ask(asked) => Ok(Some(asked)),
            }
        } else {
            Ok(None)
        }
    };
    let mut asked = match ask() {
        Ok(asked) => asked,
        Err(refused) => return Ok(refused),
    };
    intent.await?;
    let mut answer = state.redis.reserve_answer(req()).await?;
    if answer.0 == ReserveOutcome::NotLoaded {
        if !catalog::ensure_loaded(state, sku).await? {
            return Err(AppError::NotFound(format!("no product with sku {sku}")));
        }
        // Asked again: the load announced the sku's count, which makes a reply to the first
        // asking stale (it would teach nothing).
        asked = ask().unwrap_or(None);
        answer = state.redis.reserve_answer(req()).await?;
    }
    let (outcome, holds) = answer;
    if let Some(asked) = asked
        && let ReserveOutcome::OutOfStock { available } | ReserveOutcome::Reserved { available, .. } =
            outcome
    {
        state.sold_out.reply(sku, asked, available, holds);
    }
    Ok(outcome)
}

/// Adds units to the caller's hold on `sku`. The cart index names the sku before the hold is
/// asked for (the intent first), so a hold whose reply is lost (a timeout, a request gone
/// mid-call, a reply that comes late) is never one the customer cannot see: a line without a
/// hold is forgotten by the next cart read. A reply not heard answers 503 `outcome_unknown`
/// (the cart shows what happened), and a task of its own makes sure the index names the hold
/// once Redis answers again.
pub async fn add_item(
    state: &AppState,
    user_id: u64,
    sku: Sku,
    count: Count,
) -> AppResult<CartView> {
    let keep = state.cfg.sale.cart_hold_ttl;
    let req = || ReserveRequest {
        sku,
        user_id,
        count: count.get(),
        rid: Rid::Hold { user_id },
        deadline: Deadline::In(keep),
        mode: ReserveMode::Add,
    };
    // Written only when Redis is asked (a refusal in process indexes nothing).
    let line = [sku.get()];
    let intent = state.redis.index_cart_lines(user_id, &line, keep);
    let outcome = match reserve_loading(state, req, intent).await {
        Ok(outcome) => outcome,
        Err(e @ AppError::OutcomeUnknown(_)) => {
            index_when_heard(state, user_id, sku);
            return Err(AppError::OutcomeUnknown(format!(
                "{e}; the add may have been made: read your cart before repeating it"
            )));
        }
        Err(e) => return Err(e),
    };
    record("cart", &outcome);
    let ReserveOutcome::Reserved {
        units,
        deadline_ms,
        unit_price,
        name,
        ..
    } = outcome
    else {
        return Err(rejection(sku, count.get(), &outcome));
    };
    // From here on the units are held: an error must not say "nothing was changed".
    let held = |e: AppError| match e {
        AppError::OutcomeUnknown(_) => e,
        e => AppError::OutcomeUnknown(format!(
            "sku {sku}: {} units were held, but the cart could not be read ({e}); read your cart",
            count.get()
        )),
    };
    // Indexed again after the hold exists (a cart read may have forgotten the line meanwhile,
    // see forget_lines), and the index read back in the same round trip. The index lives as
    // long as its newest hold can (holds are never renewed): a customer who walks away leaves
    // nothing behind.
    let members = state
        .redis
        .index_cart_line(user_id, sku, keep)
        .await
        .map_err(held)?;
    let max_lines = state.cfg.sale.max_cart_lines;
    if members.len() > max_lines && units == count.get() {
        // A new line past the limit (the index may still name lapsed lines: count live ones).
        let skus: Vec<Sku> = members
            .iter()
            .filter_map(|m| Sku::parse(u64::from(*m)).ok())
            .collect();
        let live = state.redis.holds(user_id, &skus).await.map_err(held)?;
        if live.iter().flatten().count() > max_lines {
            state
                .redis
                .release(sku, Rid::Hold { user_id }, Some(count.get()))
                .await
                .map_err(held)?;
            // Given back: a line left in the index is forgotten by the next cart read.
            if let Err(e) = forget_lines(state, user_id, &[sku]).await {
                tracing::warn!(user.id = user_id, %sku, error = %e, "cart index after a refused add");
            }
            return Err(AppError::CartFull(format!(
                "a cart holds at most {max_lines} different products; remove one first"
            )));
        }
    }
    if members == [sku.get()] {
        // The common case of a flash sale: one line, all known from the script's answer.
        let line_price = unit_price.saturating_mul(u64::from(units));
        return Ok(CartView {
            items: vec![CartLine {
                sku: sku.get(),
                name,
                count: units,
                unit_price,
                line_price,
                held_until: from_ms(deadline_ms),
            }],
            total_price: line_price,
        });
    }
    view(state, user_id).await.map_err(held)
}

/// After a cart add whose reply was not heard: once Redis answers again, the cart index names
/// the sku if the customer holds it (the add indexed it before asking, but a cart read meanwhile
/// may have forgotten it while the hold did not exist yet). For as long as a hold can live.
fn index_when_heard(state: &AppState, user_id: u64, sku: Sku) {
    // Sent on the same connection after the add, so answered after it ran (or never will):
    // then the hold is there or not for good.
    follow_up::until_done(
        state,
        "index a cart line after a lost reply",
        std::time::Duration::from_millis(50),
        state.cfg.sale.cart_hold_ttl,
        move |state| async move { index_if_held(&state, user_id, sku).await },
    );
}

/// Puts `sku` in the cart index if the customer holds it (only adds: a failure leaves the index
/// as it was).
pub async fn index_if_held(state: &AppState, user_id: u64, sku: Sku) -> AppResult<()> {
    if state.redis.holds(user_id, &[sku]).await?[0].is_some() {
        state
            .redis
            .index_cart_lines(user_id, &[sku.get()], state.cfg.sale.cart_hold_ttl)
            .await?;
    }
    Ok(())
}

/// Drops skus from the caller's cart index, then puts back any whose hold is live after all (a
/// concurrent add: it indexes after reserving, so one of the two steps always sees the other).
pub async fn forget_lines(state: &AppState, user_id: u64, skus: &[Sku]) -> AppResult<()> {
    if skus.is_empty() {
        return Ok(());
    }
    let raw: Vec<u32> = skus.iter().map(|s| s.get()).collect();
    state.redis.unindex_cart_lines(user_id, &raw).await?;
    let live: Vec<u32> = state
        .redis
        .holds(user_id, skus)
        .await?
        .iter()
        .zip(&raw)
        .filter_map(|(h, sku)| h.map(|_| *sku))
        .collect();
    if !live.is_empty() {
        state
            .redis
            .index_cart_lines(user_id, &live, state.cfg.sale.cart_hold_ttl)
            .await?;
    }
    Ok(())
}

/// Counts a reservation attempt by kind and outcome.
pub fn record(kind: &'static str, outcome: &ReserveOutcome) {
    let o = match outcome {
        ReserveOutcome::Reserved { .. } => "reserved",
        ReserveOutcome::OutOfStock { .. } => "out_of_stock",
        ReserveOutcome::LimitExceeded { .. } => "limit_exceeded",
        ReserveOutcome::SaleNotActive => "sale_not_active",
        ReserveOutcome::TooLarge { .. } => "too_large",
        ReserveOutcome::NotLoaded => "not_loaded",
        ReserveOutcome::Fenced => "fenced",
    };
    metrics::counter!("flashsale_reservations_total", "kind" => kind, "outcome" => o).increment(1);
}

/// Releases `count` units of the caller's line (all when `None`).
pub async fn remove_item(
    state: &AppState,
    user_id: u64,
    sku: Sku,
    count: Option<Count>,
) -> AppResult<CartView> {
    let (released, left) = state
        .redis
        .release(sku, Rid::Hold { user_id }, count.map(Count::get))
        .await?;
    if released > 0 {
        metrics::counter!("flashsale_units_released_total", "reason" => "cart_remove")
            .increment(u64::from(released));
    }
    // Released: an error from here on must not say "nothing was changed".
    let changed = |e: AppError| {
        if released == 0 {
            return e;
        }
        AppError::OutcomeUnknown(format!(
            "sku {sku}: {released} units were released, but the cart could not be read ({e}); \
             read your cart"
        ))
    };
    if left == 0 {
        forget_lines(state, user_id, &[sku])
            .await
            .map_err(changed)?;
    }
    view(state, user_id).await.map_err(changed)
}

/// Releases every hold of the caller.
pub async fn clear(state: &AppState, user_id: u64) -> AppResult<()> {
    let skus = cart_skus(state, user_id).await?;
    for (i, &sku) in skus.iter().enumerate() {
        let released = state.redis.release(sku, Rid::Hold { user_id }, None).await;
        let (released, _) = match released {
            Ok(r) => r,
            // Some lines released already: not "nothing was changed".
            Err(e) if i > 0 => {
                return Err(AppError::OutcomeUnknown(format!(
                    "the cart was emptied in part ({e}); read your cart"
                )));
            }
            Err(e) => return Err(e),
        };
        if released > 0 {
            metrics::counter!("flashsale_units_released_total", "reason" => "cart_remove")
                .increment(u64::from(released));
        }
    }
    forget_lines(state, user_id, &skus).await.map_err(|e| {
        AppError::OutcomeUnknown(format!(
            "the cart's lines were released, but its index could not be written ({e}); read \
             your cart"
        ))
    })
}

async fn cart_skus(state: &AppState, user_id: u64) -> AppResult<Vec<Sku>> {
    state.redis.cart_skus(user_id).await
}

/// A live cart line: a hold and the sku's catalog entry.
pub struct LiveLine {
    pub sku: Sku,
    pub count: u32,
    pub deadline_ms: i64,
    pub meta: SkuMeta,
}

/// The caller's live lines, ascending by sku; the index forgets lines whose hold expired.
pub async fn live_lines(state: &AppState, user_id: u64) -> AppResult<Vec<LiveLine>> {
    let skus = cart_skus(state, user_id).await?;
    let holds = state.redis.holds(user_id, &skus).await?;
    let metas = state.redis.metas(&skus).await?;
    let mut lines = Vec::new();
    let mut gone = Vec::new();
    for ((sku, hold), meta) in skus.iter().zip(holds).zip(metas) {
        match (hold, meta) {
            (Some((count, deadline_ms)), Some(meta)) => lines.push(LiveLine {
                sku: *sku,
                count,
                deadline_ms,
                meta,
            }),
            _ => gone.push(*sku),
        }
    }
    // Expired holds: the sweeper gives their units back; the index forgets them. Not a hold a
    // checkout in flight (or one that died holding the customer's lock) converted into its
    // order's line: a retry continuing that order finds its lines by the index.
    if !gone.is_empty()
        && let Some(order_id) = state.redis.checkout_lock_token(user_id).await?
    {
        let lines = state.redis.order_lines(order_id, &gone).await?;
        gone = gone
            .into_iter()
            .zip(lines)
            .filter_map(|(sku, line)| line.is_none().then_some(sku))
            .collect();
    }
    forget_lines(state, user_id, &gone).await?;
    Ok(lines)
}

/// The cart's skus whose hold became a line of `order_id` (a checkout of it that did not
/// finish: the cart index names them until the order is placed), with the line's units and
/// the sku's catalog entry. Read before `live_lines`, which forgets skus without a hold.
pub async fn lines_of_order(
    state: &AppState,
    user_id: u64,
    order_id: u64,
) -> AppResult<Vec<(Sku, u32, SkuMeta)>> {
    let skus = cart_skus(state, user_id).await?;
    let lines = state.redis.order_lines(order_id, &skus).await?;
    let metas = state.redis.metas(&skus).await?;
    Ok(skus
        .into_iter()
        .zip(lines)
        .zip(metas)
        .filter_map(|((sku, line), meta)| Some((sku, line?, meta?)))
        .collect())
}

/// The caller's cart with the catalog's current names and prices.
pub async fn view(state: &AppState, user_id: u64) -> AppResult<CartView> {
    let now = Utc::now().timestamp_millis();
    let items: Vec<CartLine> = live_lines(state, user_id)
        .await?
        .into_iter()
        .map(|l| {
            let unit_price = l.meta.price_at(now);
            CartLine {
                sku: l.sku.get(),
                name: l.meta.name,
                count: l.count,
                unit_price,
                // A price raised after the add may pass the bound: checkout refuses such a line.
                line_price: unit_price.saturating_mul(u64::from(l.count)),
                held_until: from_ms(l.deadline_ms),
            }
        })
        .collect();
    let total_price = items
        .iter()
        .fold(0u64, |sum, l| sum.saturating_add(l.line_price));
    Ok(CartView { items, total_price })
}
