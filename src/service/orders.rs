//! Orders: checkout, buy-now, pay, cancel and expiry. An order's fate is decided by its record
//! (lua/decide_order.lua); what follows (units sold or given back) is idempotent per sku line
//! and is finished by the sweeper if a crash interrupts it.

use chrono::{DateTime, Utc};

use super::cart::{self, rejection, reserve_loading, too_large};
use super::{catalog, follow_up, from_ms};
use crate::app::AppState;
pub use crate::domain::OrderItem;
use crate::domain::{CancelReason, Count, MAX_ORDER_TOTAL, OrderStatus, Sku, order_total};
use crate::error::{AppError, AppResult};
use crate::store::mysql::orders as mysql_orders;
use crate::store::redis::{
    ConvertOutcome, Created, Deadline, Decision, OrderAction, OrderRecord, PlacementNote,
    ReserveMode, ReserveOutcome, ReserveRequest, Returned, Rid,
};

/// An order of the caller's; unpaid at `expires_at`, it is cancelled with reason `expired`.
#[derive(Debug, Clone)]
pub struct OrderView {
    pub order_id: u64,
    pub user_id: u64,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_price: u64,
    pub created_at: DateTime<Utc>,
    /// The end of the payment window.
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<CancelReason>,
}

fn items_of(rec: &OrderRecord) -> AppResult<Vec<OrderItem>> {
    serde_json::from_str(&rec.items_json)
        .map_err(|e| AppError::internal(format!("order {}: items unreadable: {e}", rec.order_id)))
}

impl OrderView {
    fn of(rec: &OrderRecord) -> AppResult<Self> {
        Ok(OrderView {
            order_id: rec.order_id,
            user_id: rec.user_id,
            status: rec.status,
            items: items_of(rec)?,
            total_price: rec.total,
            created_at: from_ms(rec.created_at_ms),
            expires_at: from_ms(rec.expires_at_ms),
            paid_at: rec.paid_at_ms.map(from_ms),
            cancelled_at: rec.cancelled_at_ms.map(from_ms),
            cancel_reason: rec.cancel_reason.as_deref().and_then(CancelReason::parse),
        })
    }
}

impl OrderView {
    fn of_row(
        row: crate::store::mysql::orders::OrderRow,
        items: Vec<OrderItem>,
    ) -> AppResult<Self> {
        Ok(OrderView {
            order_id: row.id,
            user_id: row.user_id,
            status: OrderStatus::parse(&row.status).ok_or_else(|| {
                AppError::internal(format!(
                    "order {}: bad status {:?} in MySQL",
                    row.id, row.status
                ))
            })?,
            items,
            total_price: row.total_price,
            created_at: row.created_at,
            expires_at: row.expires_at,
            paid_at: row.paid_at,
            cancelled_at: row.cancelled_at,
            cancel_reason: row.cancel_reason.as_deref().and_then(CancelReason::parse),
        })
    }
}

/// The order's total, or 400 when it cannot be represented exactly (see `MAX_ORDER_TOTAL`).
fn total(items: &[OrderItem]) -> AppResult<u64> {
    order_total(items).ok_or_else(|| {
        AppError::InvalidRequest(format!(
            "an order totals at most {MAX_ORDER_TOTAL} (minor units); split it into smaller orders"
        ))
    })
}

fn to_json(items: &[OrderItem]) -> AppResult<String> {
    serde_json::to_string(items).map_err(|e| AppError::internal(format!("items: {e}")))
}

fn not_found(order_id: u64) -> AppError {
    AppError::NotFound(format!("no order {order_id}"))
}

/// One line the customer asks for.
struct Want {
    sku: Sku,
    count: u32,
    name: String,
    unit_price: u64,
    /// Convert the customer's cart hold (checkout) rather than reserve afresh (buy-now).
    from_cart: bool,
}

/// Told an order's id before the order exists: an `Idempotency-Key` binds it, so that a retry
/// after its request vanished resumes that order (`resume`) rather than making a second one.
pub trait BindOrder: Sync {
    fn bind_order(&self, order_id: u64) -> impl Future<Output = AppResult<()>> + Send;
    /// Whether an `Idempotency-Key` binds the order (a retry may then know its id).
    fn keyed(&self) -> bool {
        false
    }
}

/// No key: nothing to bind.
impl BindOrder for () {
    async fn bind_order(&self, _order_id: u64) -> AppResult<()> {
        Ok(())
    }
}

/// What a retry with an `Idempotency-Key` does about the order the key's earlier request bound
/// before it vanished (its process died, or its lease ran out while it stalled).
#[derive(Debug)]
pub enum Resumed {
    /// That order was placed (awaiting payment, or decided since): the answer it would have
    /// given.
    Answer(OrderView),
    /// A checkout's order, not placed yet: continue it under its id. Its lines are the cart's
    /// holds, taken once per order id (lua/convert_hold.lua answers a line the order has
    /// already), so the retry and a holder still alive converge on this one order.
    Continue(u64),
    /// Nothing to resume (never placed, failed, or a buy-now order fenced off here): place an
    /// order afresh.
    Afresh,
}

/// What the request with the key places.
#[derive(Debug, Clone, Copy)]
pub enum Placing {
    Checkout,
    /// A buy-now of this sku (the key's fingerprint names it).
    BuyNow(Sku),
}

/// How long a fence (lua/fence_order.lua) outlives any deadline its order's lines can have: a
/// holder takes its `created_at` before it binds the order id, so its lines' deadline is at
/// most `payment_ttl` after any fence set once the id was bound.
fn fence_keep(state: &AppState) -> std::time::Duration {
    state.cfg.sale.payment_ttl + std::time::Duration::from_secs(60)
}

/// The order a request with the same `Idempotency-Key` was creating when it vanished: see
/// `Resumed`. A buy-now order not yet activated is given up: a `new` one is failed (exactly one
/// decision wins, so a holder still alive cannot activate it after this), an unrecorded one is
/// fenced (it can never be recorded), and its line goes back; the retry reserves afresh. A
/// checkout cannot do that (the cart's holds were its lines): it continues the order instead.
pub async fn resume(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    placing: Placing,
) -> AppResult<Resumed> {
    let rec = match state.redis.order_record(order_id).await? {
        Some(rec) => rec,
        None => {
            // Finished and gone to MySQL, or never recorded.
            match mysql_orders::get_order(&state.db, order_id).await? {
                Some((row, items)) if row.user_id == user_id && row.status != "failed" => {
                    return Ok(Resumed::Answer(OrderView::of_row(row, items)?));
                }
                Some(_) => return Ok(Resumed::Afresh),
                None => {}
            }
            let Placing::BuyNow(sku) = placing else {
                return Ok(Resumed::Continue(order_id));
            };
            if state
                .redis
                .fence_order(order_id, user_id, fence_keep(state))
                .await?
                .is_none()
            {
                release_line(state, sku, order_id, "failed").await?;
                return Ok(Resumed::Afresh);
            }
            // Recorded meanwhile: decide below.
            match state.redis.order_record(order_id).await? {
                Some(rec) => rec,
                None => return Ok(Resumed::Afresh),
            }
        }
    };
    if rec.user_id != user_id {
        return Ok(Resumed::Afresh);
    }
    if rec.status == OrderStatus::New {
        if let Placing::Checkout = placing {
            return Ok(Resumed::Continue(order_id));
        }
        let decision = state
            .redis
            .decide_order(
                order_id,
                OrderAction::Fail {
                    items_json: &rec.items_json,
                    total: rec.total,
                },
            )
            .await?;
        if let Decision::Moved(_) = decision {
            metrics::counter!("flashsale_orders_total", "status" => "failed").increment(1);
        }
        settle(state, order_id).await?;
    }
    let Some(rec) = state.redis.order_record(order_id).await? else {
        return Ok(Resumed::Afresh);
    };
    match rec.status {
        OrderStatus::New => Ok(Resumed::Afresh),
        OrderStatus::Failed => {
            // Fenced (or failed) while the request that bound it was giving it up: its lines,
            // which that request may not have been able to hand back (Redis did not answer),
            // go back now. Idempotent; each is fenced where it is missing.
            let lines: Vec<Back> = match placing {
                Placing::BuyNow(sku) => vec![Back {
                    sku,
                    from_cart: false,
                }],
                Placing::Checkout => cart::lines_of_order(state, user_id, order_id)
                    .await?
                    .into_iter()
                    .map(|(sku, _, _)| Back {
                        sku,
                        from_cart: true,
                    })
                    .collect(),
            };
            hand_back_all(state, user_id, order_id, &lines).await?;
            Ok(Resumed::Afresh)
        }
        _ => Ok(Resumed::Answer(OrderView::of(
            &expire_if_due(state, rec).await?,
        )?)),
    }
}

/// How long a checkout may hold its cart's lock: past it (a crashed instance), the cart can be
/// checked out again. Longer than any request may run.
const CHECKOUT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// Checkout of the caller's whole cart: one cart, one order. Concurrent checkouts of the same
/// cart are refused with `cart_changed` while one runs (a lock per customer), and a cart line
/// whose hold is gone by the time it is converted is never reserved afresh.
///
/// `vanished`: the order id an earlier request with the same `Idempotency-Key` bound before it
/// vanished (its lease ran out; see `resume`). Its checkout lock (token = that id) is this
/// request's to inherit: without it the retry was refused by the dead request's own lock.
/// `continuing`: this request continues that order (`Resumed::Continue`) rather than placing a
/// new one.
pub async fn checkout(
    state: &AppState,
    user_id: u64,
    binder: &impl BindOrder,
    vanished: Option<u64>,
    continuing: bool,
) -> AppResult<OrderView> {
    let order_id = match vanished {
        Some(v) if continuing => v,
        _ => super::order_ids::next(state).await?,
    };
    let locked = match state
        .redis
        .lock_checkout(user_id, order_id, CHECKOUT_LEASE)
        .await
    {
        Ok(locked) => locked,
        Err(e) => {
            // The lock may have been taken, its reply lost: let go of it (only if this
            // checkout's), or the customer's next checkout is refused `cart_changed` for the
            // lease (found by the model-based soak: replies 1.2 s late).
            unlock(state, user_id, order_id).await;
            return Err(e);
        }
    };
    let token = if locked {
        order_id
    } else {
        match vanished {
            Some(v) if state.redis.checkout_lock_token(user_id).await? == Some(v) => v,
            _ => {
                return Err(AppError::CartChanged(
                    "another checkout of this cart is running; see your orders".into(),
                ));
            }
        }
    };
    let lock = CheckoutLock {
        state: state.clone(),
        user_id,
        token,
        held: true,
    };
    let placed = checkout_locked(state, user_id, order_id, binder, continuing).await;
    lock.release().await;
    placed
}

/// A customer's checkout lock: let go once the checkout answered, or when the checkout is
/// abandoned half-way (the request timed out) by a task of its own; the lease ends it anyway.
struct CheckoutLock {
    state: AppState,
    user_id: u64,
    token: u64,
    held: bool,
}

impl CheckoutLock {
    async fn release(mut self) {
        self.held = false;
        unlock(&self.state, self.user_id, self.token).await;
    }
}

impl Drop for CheckoutLock {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let (state, user_id, token) = (self.state.clone(), self.user_id, self.token);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { unlock(&state, user_id, token).await });
        }
    }
}

/// Lets go of the lock; when Redis cannot be asked now (an outage, a restart), a task of its own
/// keeps trying for the lease's length, so that a Redis hiccup does not refuse the customer's
/// next checkout with `cart_changed` until the lease ends (found by the model-based test).
async fn unlock(state: &AppState, user_id: u64, token: u64) {
    if state.redis.unlock_checkout(user_id, token).await.is_ok() {
        return;
    }
    follow_up::until_done(
        state,
        "release the checkout lock (its lease ends it)",
        std::time::Duration::from_millis(100),
        CHECKOUT_LEASE,
        move |state| async move {
            state
                .redis
                .unlock_checkout(user_id, token)
                .await
                .map(|_| ())
        },
    );
}

/// The lines of a checkout: the cart's live holds; when continuing `order_id`, first the lines
/// it has already (its record's items once recorded, else the cart's skus holding a line of
/// it), in the cart's order, so that every worker on the order takes its first line first.
async fn checkout_locked(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    binder: &impl BindOrder,
    continuing: bool,
) -> AppResult<OrderView> {
    let now = Utc::now().timestamp_millis();
    let mut wants: Vec<Want> = Vec::new();
    if continuing {
        match state.redis.order_record(order_id).await? {
            Some(rec) if rec.user_id == user_id && rec.status == OrderStatus::New => {
                // Recorded: all its lines were taken.
                for item in items_of(&rec)? {
                    wants.push(Want {
                        sku: Sku::parse(u64::from(item.sku))?,
                        count: item.count,
                        name: item.name,
                        unit_price: item.unit_price,
                        from_cart: true,
                    });
                }
                return place(state, user_id, order_id, wants, binder).await;
            }
            _ => {
                for (sku, count, meta) in cart::lines_of_order(state, user_id, order_id).await? {
                    wants.push(Want {
                        sku,
                        count,
                        unit_price: meta.price_at(now),
                        name: meta.name,
                        from_cart: true,
                    });
                }
            }
        }
    }
    for l in cart::live_lines(state, user_id).await? {
        if wants.iter().any(|w| w.sku == l.sku) {
            continue;
        }
        wants.push(Want {
            sku: l.sku,
            count: l.count,
            unit_price: l.meta.price_at(now),
            name: l.meta.name,
            from_cart: true,
        });
    }
    if wants.is_empty() {
        return Err(AppError::CartEmpty("the cart is empty".into()));
    }
    place(state, user_id, order_id, wants, binder).await
}

/// An order of one sku, without touching the cart.
pub async fn buy_now(
    state: &AppState,
    user_id: u64,
    sku: Sku,
    count: Count,
    binder: &impl BindOrder,
) -> AppResult<OrderView> {
    let mut meta = state.redis.metas(&[sku]).await?.pop().flatten();
    if meta.is_none() {
        if !catalog::ensure_loaded(state, sku).await? {
            return Err(AppError::NotFound(format!("no product with sku {sku}")));
        }
        meta = state.redis.metas(&[sku]).await?.pop().flatten();
    }
    let meta = meta.ok_or_else(|| AppError::Unavailable(format!("sku {sku}: not in Redis")))?;
    let want = Want {
        sku,
        count: count.get(),
        unit_price: meta.price_at(Utc::now().timestamp_millis()),
        name: meta.name,
        from_cart: false,
    };
    let order_id = super::order_ids::next(state).await?;
    place(state, user_id, order_id, vec![want], binder).await
}

/// A line taken: its units, unit price and deadline.
type Taken<'a> = (&'a Want, (u32, u64, i64));

/// The answer to a request whose `Idempotency-Key` a retry took over.
fn taken_over() -> AppError {
    AppError::RequestInProgress(
        "this request's claim on its Idempotency-Key ran out and a retry with the key took \
         over; repeat the request to get the key's answer"
            .into(),
    )
}

/// How long a placement is left to its request: past it, the sweeper settles it as its request's
/// process were gone ([`settle_placing`]). Far longer than a placement takes (a few script
/// calls); one that does take longer (Redis stalled throughout) finds its order fenced and
/// hands its lines back.
pub const PLACING_WINDOW: std::time::Duration = std::time::Duration::from_secs(20);

/// Reserves each line (one sku slot at a time) under the pre-allocated order id, then records
/// the order and activates it. A refusal before any line was taken costs nothing: no record, no
/// event. If a later line is refused, the order is recorded as `failed` and the lines taken are
/// handed back. Every step is idempotent per order id, so a retry continuing the order (a
/// checkout's `Resumed::Continue`) and a holder still alive converge on one order: the lines
/// are taken once (the first taken fixes the order's deadline; the record's `expires_at` is the
/// earliest of its lines'), the record is created once (`exists`: the other's) and activated
/// once.
///
/// Before the first line is sent, the placement is noted in Redis with the lines it will send
/// ([`PlacementNote`]); the note goes once the order is placed or given up with everything handed
/// back. A note left behind (the process died mid-way, or a follow-up of this request is still
/// at work) is settled by the sweeper [`PLACING_WINDOW`] after the start: the order fenced,
/// its lines handed back. So no line of a placement whose request died stays unseen until its
/// deadline.
async fn place(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    wants: Vec<Want>,
    binder: &impl BindOrder,
) -> AppResult<OrderView> {
    // Nothing is taken before the note is heard; one written with its reply lost (or left by
    // a bind that fails below) is settled by the sweeper: an order id nobody uses is fenced,
    // nothing to hand back (a key's retry continuing the order notes it afresh). The note's
    // time is the order's start, taken before the bind: a fence set by a retry after the bind
    // outlives this order's deadline.
    let note = PlacementNote {
        order_id,
        user_id,
        lines: wants.iter().map(|w| (w.sku, w.from_cart)).collect(),
    };
    let (started_at, earlier) = state.redis.note_placing(&note, PLACING_WINDOW).await?;
    binder.bind_order(order_id).await?;
    // A key's retry continuing the order of a request that vanished: a line that request sent
    // and this one does not take (the customer removed it from the cart meanwhile) is handed
    // back and fenced, so that the vanished request's call of it, still on its way, cannot
    // take a cart hold into an order that does not list it.
    let dropped: Vec<Back> = earlier
        .iter()
        .filter(|(sku, _)| !note.lines.iter().any(|(s, _)| s == sku))
        .map(|&(sku, from_cart)| Back { sku, from_cart })
        .collect();
    if !dropped.is_empty() && !hand_back(state, user_id, order_id, &dropped).await {
        return Err(AppError::Unavailable(format!(
            "order {order_id}: lines an earlier request with this key sent could not be handed \
             back yet; nothing was taken, retry shortly"
        )));
    }
    let (placed, settled) = place_noted(state, user_id, order_id, started_at, wants, binder).await;
    if settled && let Err(e) = state.redis.placing_done(order_id).await {
        tracing::debug!(order.id = order_id, error = %e, "placement note left to the sweeper");
    }
    placed
}

/// [`place`] once its note is written; with whether the placement is settled (the note may go).
async fn place_noted(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    started_at: i64,
    wants: Vec<Want>,
    binder: &impl BindOrder,
) -> (AppResult<OrderView>, bool) {
    match place_lines(state, user_id, order_id, started_at, wants, binder).await {
        Ok(view) => (Ok(view), true),
        Err(Unsettled::Settled(e)) => (Err(e), true),
        Err(Unsettled::LeftToSweeper(e)) => (Err(e), false),
    }
}

/// A placement's error, and whether anything it sent may still be out.
enum Unsettled {
    /// Nothing left out: handed back, or never taken.
    Settled(AppError),
    /// Some of it may be out (a follow-up at work, a failed order's lines): the sweeper
    /// settles the note.
    LeftToSweeper(AppError),
}

impl From<AppError> for Unsettled {
    fn from(e: AppError) -> Self {
        Unsettled::LeftToSweeper(e)
    }
}

async fn place_lines(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    started_at: i64,
    wants: Vec<Want>,
    binder: &impl BindOrder,
) -> Result<OrderView, Unsettled> {
    let keyed = binder.keyed();
    let requested: Vec<OrderItem> = wants
        .iter()
        .map(|w| OrderItem {
            sku: w.sku.get(),
            name: w.name.clone(),
            count: w.count,
            unit_price: w.unit_price,
        })
        .collect();
    // At the catalog's prices; checked again at the prices the lines are taken at.
    total(&requested)?;
    let payment_ms = state.cfg.sale.payment_ttl.as_millis() as i64;
    let mut expires_at = started_at + payment_ms;

    let mut taken: Vec<Taken> = Vec::with_capacity(wants.len());
    let mut unheard: Option<&Want> = None;
    let mut failure = None;
    for w in &wants {
        match take_line(state, user_id, order_id, expires_at, w).await {
            Ok(Ok(line)) => {
                // A line the order had already keeps its deadline: the order adopts it.
                expires_at = expires_at.min(line.2);
                taken.push((w, line));
            }
            Ok(Err(rejected)) => {
                failure = Some(rejected);
                break;
            }
            Err(e) => {
                // Its reply was not heard: the line may be taken (or be taken late). It goes
                // back with the others, and its hand-back fences it.
                if matches!(e, AppError::OutcomeUnknown(_)) {
                    unheard = Some(w);
                }
                failure = Some(e);
                break;
            }
        }
    }
    let created_at = expires_at - payment_ms;
    let items: Vec<OrderItem> = taken
        .iter()
        .map(|(w, (count, unit_price, _))| OrderItem {
            sku: w.sku.get(),
            name: w.name.clone(),
            count: *count,
            unit_price: *unit_price,
        })
        .collect();
    let failure = failure.or_else(|| total(&items).err());

    if let Some(err) = failure {
        let is_rejection = matches!(
            err,
            AppError::OutOfStock(_) | AppError::LimitExceeded(_) | AppError::SaleNotActive(_)
        );
        if !is_rejection || taken.is_empty() {
            // Nothing to record (or the request itself is at fault): no order, no event. Every
            // line this request sent goes back, the one whose reply was not heard too.
            let lines = backs(&taken, unheard);
            let resolved = abandon(state, user_id, order_id, &lines, keyed, Reached::Lines).await;
            let err = resolved_error(err, resolved);
            return Err(if resolved {
                Unsettled::Settled(err)
            } else {
                Unsettled::LeftToSweeper(err)
            });
        }
        // Lines were reserved: the order is recorded as failed (which also keeps anyone from
        // recording it otherwise), then the lines are handed back.
        let requested_json = to_json(&requested)?;
        let failed_total = order_total(&requested).unwrap_or(0);
        let recorded = state
            .redis
            .create_order(
                order_id,
                user_id,
                created_at,
                expires_at,
                &requested_json,
                failed_total,
            )
            .await;
        match recorded {
            Ok(Created::Recorded) => {}
            Ok(Created::Late) => {
                // Past the lines' deadline: nobody can record it; no record to name.
                hand_back(state, user_id, order_id, &backs(&taken, None)).await;
                return Err(Unsettled::from(err));
            }
            Ok(Created::Exists) => {
                // Another worker on this order recorded it: its lines stay, unless it failed.
                if let Ok(Some(rec)) = state.redis.order_record(order_id).await
                    && rec.status == OrderStatus::Failed
                {
                    release_taken(state, order_id, &taken).await;
                }
                return Err(Unsettled::from(err));
            }
            Err(_) => {
                let lines = backs(&taken, None);
                abandon(state, user_id, order_id, &lines, keyed, Reached::Record).await;
                return Err(Unsettled::from(err));
            }
        }
        let failed = state
            .redis
            .decide_order(
                order_id,
                OrderAction::Fail {
                    items_json: &requested_json,
                    total: failed_total,
                },
            )
            .await;
        if let Err(e) = failed {
            // Failed or not: the fence makes sure (a `new` record is failed), then its lines go
            // back to available; by a task of its own if Redis cannot answer now.
            let skus: Vec<Sku> = taken.iter().map(|(w, _)| w.sku).collect();
            return Err(Unsettled::from(
                match fence(state, user_id, order_id).await {
                    Ok(true) => {
                        release_failed(state, order_id, skus).await;
                        AppError::CheckoutFailed {
                            code: err.code(),
                            message: format!("{err}; order {order_id} failed and holds nothing"),
                            order_id,
                        }
                    }
                    Ok(false) => AppError::internal(format!(
                        "order {order_id}: recorded as failed, then found placed"
                    )),
                    Err(_) => {
                        until_done(state, order_id, "fail and release", move |state| {
                            let skus = skus.clone();
                            async move {
                                if fence(&state, user_id, order_id).await? {
                                    release_failed(&state, order_id, skus).await;
                                }
                                Ok(())
                            }
                        });
                        AppError::OutcomeUnknown(format!(
                            "{err}; order {order_id} is being failed and its lines given back ({e})"
                        ))
                    }
                },
            ));
        }
        metrics::counter!("flashsale_orders_total", "status" => "failed").increment(1);
        // A failed order holds nothing: its lines, cart lines too, go back to available.
        release_taken(state, order_id, &taken).await;
        return Err(Unsettled::from(AppError::CheckoutFailed {
            code: err.code(),
            message: format!("{err}; order {order_id} failed and holds nothing"),
            order_id,
        }));
    }

    let mut items_json = to_json(&items)?;
    let mut order_total = total(&items)?;
    // Still this request's order? If its key's lease ran out while the lines were being taken,
    // a retry took the key over: a checkout's retry continues this very order (its lines stay
    // under it), a buy-now's fences it off and places its own (the lines go back).
    if let Err(e) = binder.bind_order(order_id).await {
        if !wants.iter().any(|w| w.from_cart) {
            let lines = backs(&taken, None);
            abandon(state, user_id, order_id, &lines, true, Reached::Lines).await;
        }
        return Err(Unsettled::from(e));
    }
    let created = match state
        .redis
        .create_order(
            order_id,
            user_id,
            created_at,
            expires_at,
            &items_json,
            order_total,
        )
        .await
    {
        Ok(created) => created,
        Err(e) => {
            // Recorded or not: fence it (a record written before the error is failed), then
            // the lines go back.
            let lines = backs(&taken, None);
            let settled = abandon(state, user_id, order_id, &lines, keyed, Reached::Record).await;
            return Err(Unsettled::from(resolved_error(e, settled)));
        }
    };
    match created {
        Created::Recorded => {
            metrics::counter!("flashsale_orders_total", "status" => "new").increment(1);
        }
        Created::Exists => match state.redis.order_record(order_id).await? {
            // Recorded by another worker on this order (a retry continuing it, or the request
            // that vanished): activate it as recorded.
            Some(rec) if rec.user_id == user_id && rec.status == OrderStatus::New => {
                items_json = rec.items_json;
                order_total = rec.total;
            }
            Some(rec) if rec.user_id == user_id && rec.status == OrderStatus::Failed => {
                // Fenced or failed by the key's retry, or by the sweeper: its lines go back.
                hand_back(state, user_id, order_id, &backs(&taken, None)).await;
                return Err(Unsettled::from(given_up_meanwhile(binder, order_id).await));
            }
            // Placed by another worker on this order: its answer.
            Some(rec) if rec.user_id == user_id => {
                return finish(state, user_id, order_id, &wants, keyed)
                    .await
                    .map_err(Unsettled::from);
            }
            _ => {
                hand_back(state, user_id, order_id, &backs(&taken, None)).await;
                return Err(Unsettled::from(AppError::internal(format!(
                    "order {order_id}: a record with this id exists already"
                ))));
            }
        },
        Created::Late => {
            hand_back(state, user_id, order_id, &backs(&taken, None)).await;
            return Err(Unsettled::from(AppError::Unavailable(format!(
                "order {order_id}: reserving its lines took longer than the payment window"
            ))));
        }
    }
    let decision = match state
        .redis
        .decide_order(
            order_id,
            OrderAction::Activate {
                items_json: &items_json,
                total: order_total,
            },
        )
        .await
    {
        Ok(decision) => decision,
        Err(e) => {
            // Activated or not: the fence tells (a `new` record is failed, its lines go back;
            // one activated after all keeps them, and the next read shows it).
            let lines = backs(&taken, None);
            let settled =
                abandon(state, user_id, order_id, &lines, keyed, Reached::Activation).await;
            return Err(Unsettled::from(resolved_error(e, settled)));
        }
    };
    match decision {
        Decision::Moved(_) => {
            metrics::counter!("flashsale_orders_total", "status" => "awaiting_payment").increment(1)
        }
        // Failed (fenced by a request giving it up) while its lines were being taken: they go
        // back where they came from, cart lines to the cart (the request that fenced it hands
        // them back too: the same, idempotent).
        Decision::Rejected(OrderStatus::Failed) | Decision::Same(OrderStatus::Failed) => {
            hand_back(state, user_id, order_id, &backs(&taken, None)).await;
            return Err(Unsettled::from(given_up_meanwhile(binder, order_id).await));
        }
        // Cancelled or expired meanwhile: give them back. (Activated by another worker on this
        // order: nothing to do.)
        _ => settle(state, order_id).await?,
    }
    finish(state, user_id, order_id, &wants, keyed)
        .await
        .map_err(Unsettled::from)
}

/// The error of a request that found its order failed or fenced by someone else while it placed
/// it: a retry that took its `Idempotency-Key` over (the key's answer is the retry's), or the
/// sweeper settling a placement that outlasted [`PLACING_WINDOW`] (then the key is still this
/// request's, and the 503 lets it go, so that its retry runs again rather than replaying an
/// answer that names no order).
async fn given_up_meanwhile(binder: &impl BindOrder, order_id: u64) -> AppError {
    match binder.bind_order(order_id).await {
        Err(taken) => taken,
        Ok(()) => AppError::Unavailable(format!(
            "order {order_id}: placing it took longer than {} s, so it was given up and its \
             lines handed back; nothing was kept",
            PLACING_WINDOW.as_secs()
        )),
    }
}

/// The placed order's answer; the cart forgets the lines it took.
async fn finish(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    wants: &[Want],
    keyed: bool,
) -> AppResult<OrderView> {
    let from_cart: Vec<Sku> = wants
        .iter()
        .filter(|w| w.from_cart)
        .map(|w| w.sku)
        .collect();
    // The order is placed: an error from here on must not say "nothing was changed".
    let placed = |e: AppError| {
        AppError::OutcomeUnknown(format!(
            "order {order_id} was placed, but its answer could not be read ({e}); see your orders"
        ))
    };
    cart::forget_lines(state, user_id, &from_cart)
        .await
        .map_err(placed)?;
    let rec = state
        .redis
        .order_record(order_id)
        .await
        .map_err(placed)?
        .ok_or_else(|| not_found(order_id))?;
    if keyed && rec.status == OrderStatus::Failed {
        // Failed by the key's retry, which places the key's order.
        return Err(taken_over());
    }
    OrderView::of(&rec)
}

/// How far an order that a request gives up may have got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// No record call was made: only lines.
    Lines,
    /// A `create_order` call failed: it may have written a `new` record.
    Record,
    /// The activation failed: the order may be awaiting payment.
    Activation,
}

/// This request will not record `order_id`, and its lines go back. The order is fenced first
/// (never recorded from here on; a `new` record is failed) when a retry with the request's
/// `Idempotency-Key` knows the id (`keyed`) or the activation may have happened: a record
/// decided otherwise is another worker's order (or this one's, activated after all) and its
/// lines stay. If Redis cannot say, a task of its own fences and hands back once Redis answers
/// (with a key, the key's retry may resolve it first: `resume` continues the order, or hands
/// back the lines of one that was fenced). Without a key nobody else knows the id: the lines go back at
/// once (each fenced where it is missing), and a record call that failed (`Reached::Record`: it
/// may have written a `new` record) is fenced after, by a task of its own if Redis cannot
/// answer now. Whether it is all settled now: `false` when some of it could not be told yet.
async fn abandon(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    lines: &[Back],
    keyed: bool,
    reached: Reached,
) -> bool {
    if keyed || reached == Reached::Activation {
        match fence(state, user_id, order_id).await {
            Ok(true) => {}
            // Recorded and placed (by another worker on this order, or by this request's own
            // call whose reply was lost): not this request's to take back.
            Ok(false) => return false,
            Err(e) => {
                // With a key, the key's retry may resolve it first (`resume`: it continues the
                // order, or hands back the lines of one fenced); whichever comes first, the
                // other finds it done. (A retry continuing the order that this task fences
                // between its record and its activation gets its lines back to the cart:
                // `place`'s activation that finds the order failed hands them back.)
                tracing::warn!(order.id = order_id, error = %e, "could not fence an abandoned order; retried in the background");
                let lines = lines.to_vec();
                until_done(state, order_id, "fence and hand back", move |state| {
                    let lines = lines.clone();
                    async move {
                        if fence(&state, user_id, order_id).await? {
                            hand_back_all(&state, user_id, order_id, &lines).await?;
                        }
                        Ok(())
                    }
                });
                return false;
            }
        }
    }
    let handed = hand_back(state, user_id, order_id, lines).await;
    if !keyed
        && reached == Reached::Record
        && let Err(e) = fence(state, user_id, order_id).await
    {
        tracing::warn!(order.id = order_id, error = %e, "could not fence an abandoned order; retried in the background");
        until_done(state, order_id, "fence", move |state| async move {
            fence(&state, user_id, order_id).await.map(|_| ())
        });
        return false;
    }
    handed
}

/// [`follow_up::until_done`] for an order's follow-up: for as long as a fence lasts; then the
/// sweeper settles what is left at the lines' deadline.
fn until_done<F, Fut>(state: &AppState, order_id: u64, what: &'static str, step: F)
where
    F: Fn(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = AppResult<()>> + Send + 'static,
{
    let span = tracing::warn_span!("order.follow_up", order.id = order_id);
    let _entered = span.enter();
    follow_up::until_done(
        state,
        what,
        std::time::Duration::from_millis(100),
        fence_keep(state),
        step,
    );
}

/// The error a request answers once it gave its lines back: a line whose reply was not heard
/// leaves the outcome unknown only while its hand-back is not settled; once it is (the line
/// handed back, or fenced so that the late call is refused), nothing was kept after all.
fn resolved_error(err: AppError, settled: bool) -> AppError {
    match err {
        AppError::OutcomeUnknown(m) if settled => {
            AppError::Unavailable(format!("{m}; the request's lines were handed back"))
        }
        AppError::OutcomeUnknown(m) => AppError::OutcomeUnknown(format!(
            "{m}; the lines it may have taken are being handed back: read your cart and orders \
             before repeating it"
        )),
        other => other,
    }
}

/// Makes sure `order_id` is never recorded from here on: `true` when it is fenced or failed
/// (its lines may go), `false` when another worker recorded and placed it.
async fn fence(state: &AppState, user_id: u64, order_id: u64) -> AppResult<bool> {
    match state
        .redis
        .fence_order(order_id, user_id, fence_keep(state))
        .await?
    {
        None => Ok(true),
        Some(status) if status == OrderStatus::New.as_str() => {
            fail_recorded(state, order_id).await?;
            Ok(true)
        }
        Some(status) => Ok(status == OrderStatus::Failed.as_str()),
    }
}

/// Fails a `new` record as recorded (its lines are handed back by the caller).
async fn fail_recorded(state: &AppState, order_id: u64) -> AppResult<()> {
    let Some(rec) = state.redis.order_record(order_id).await? else {
        return Ok(());
    };
    if let Decision::Moved(_) = state
        .redis
        .decide_order(
            order_id,
            OrderAction::Fail {
                items_json: &rec.items_json,
                total: rec.total,
            },
        )
        .await?
    {
        metrics::counter!("flashsale_orders_total", "status" => "failed").increment(1);
    }
    Ok(())
}

/// Gives back to available the lines of an order recorded as failed; what Redis cannot answer
/// now, a task of its own gives back once it does.
async fn release_taken(state: &AppState, order_id: u64, taken: &[Taken<'_>]) {
    let skus: Vec<Sku> = taken.iter().map(|(w, _)| w.sku).collect();
    release_failed(state, order_id, skus).await;
}

async fn release_failed(state: &AppState, order_id: u64, skus: Vec<Sku>) {
    let mut left = Vec::new();
    for sku in skus {
        if let Err(e) = release_line(state, sku, order_id, "failed").await {
            tracing::warn!(order.id = order_id, %sku, error = %e, "release after a failed order; retried in the background");
            left.push(sku);
        }
    }
    if !left.is_empty() {
        until_done(
            state,
            order_id,
            "release a failed order's lines",
            move |state| {
                let left = left.clone();
                async move {
                    for sku in left {
                        release_line(&state, sku, order_id, "failed").await?;
                    }
                    Ok(())
                }
            },
        );
    }
}

/// A line an order sent and will not keep: its sku, and whether it came from the cart.
#[derive(Debug, Clone, Copy)]
struct Back {
    sku: Sku,
    from_cart: bool,
}

/// The lines to hand back: those taken, and the one whose reply was not heard.
fn backs(taken: &[Taken<'_>], unheard: Option<&Want>) -> Vec<Back> {
    taken
        .iter()
        .map(|(w, _)| *w)
        .chain(unheard)
        .map(|w| Back {
            sku: w.sku,
            from_cart: w.from_cart,
        })
        .collect()
}

/// Hands back the lines an order sent and will not keep: a cart line becomes the customer's
/// hold again, with the hold's own deadline (lua/return_to_cart.lua); a buy-now line goes back
/// to available. A line not there (its call never ran, or has not run yet) is fenced, so that
/// the call, should it arrive late, changes nothing. What Redis does not answer now is handed
/// back by a task of its own once it does: `false` then.
async fn hand_back(state: &AppState, user_id: u64, order_id: u64, lines: &[Back]) -> bool {
    let mut left = Vec::new();
    for &line in lines {
        if let Err(e) = hand_back_line(state, user_id, order_id, line).await {
            tracing::warn!(order.id = order_id, sku = %line.sku, error = %e, "hand back after a failed order; retried in the background");
            left.push(line);
        }
    }
    if left.is_empty() {
        return true;
    }
    until_done(state, order_id, "hand back", move |state| {
        let left = left.clone();
        async move { hand_back_all(&state, user_id, order_id, &left).await }
    });
    false
}

async fn hand_back_all(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    lines: &[Back],
) -> AppResult<()> {
    for &line in lines {
        hand_back_line(state, user_id, order_id, line).await?;
    }
    Ok(())
}

async fn hand_back_line(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    line: Back,
) -> AppResult<()> {
    if line.from_cart {
        let returned = state
            .redis
            .return_to_cart(line.sku, user_id, order_id, fence_keep(state))
            .await?;
        if let Returned::Released(n) = returned {
            metrics::counter!("flashsale_units_released_total", "reason" => "hold_expired")
                .increment(u64::from(n));
        }
        // The cart index names the sku if it is held (again, or still: a retry of this step
        // after its index write failed finds `None` here). A cart read meanwhile may have
        // forgotten it.
        cart::index_if_held(state, user_id, line.sku).await?;
    } else {
        let released = state
            .redis
            .release_fenced(line.sku, order_id, fence_keep(state))
            .await?;
        if released > 0 {
            metrics::counter!("flashsale_units_released_total", "reason" => "failed")
                .increment(u64::from(released));
        }
    }
    Ok(())
}

/// Reserves one line for the order: (units, unit price, deadline), or the rejection.
async fn take_line(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    expires_at: i64,
    w: &Want,
) -> AppResult<Result<(u32, u64, i64), AppError>> {
    if w.from_cart {
        match state
            .redis
            .convert_hold(w.sku, user_id, order_id, expires_at)
            .await?
        {
            ConvertOutcome::Converted {
                units,
                unit_price,
                deadline_ms,
            } => return Ok(Ok((units, unit_price, deadline_ms))),
            ConvertOutcome::SaleNotActive { released } => {
                if released > 0 {
                    metrics::counter!("flashsale_units_released_total", "reason" => "sale_ended")
                        .increment(u64::from(released));
                }
                return Ok(Err(rejection(
                    w.sku,
                    w.count,
                    &ReserveOutcome::SaleNotActive,
                )));
            }
            ConvertOutcome::TooLarge { units, unit_price } => {
                return Ok(Err(too_large(w.sku, units, unit_price)));
            }
            // Another checkout took the hold, or it lapsed after the cart was read: the cart is
            // not what was checked out. Never reserve a cart line afresh (one cart, one order).
            ConvertOutcome::NoHold => {
                return Ok(Err(AppError::CartChanged(format!(
                    "sku {}: the cart's hold is gone (another checkout took it, or it lapsed); \
                     see your cart and orders",
                    w.sku
                ))));
            }
            // Redis lost the sku's counters (and the hold with them): reserve the line afresh.
            ConvertOutcome::NotLoaded => {}
            ConvertOutcome::Fenced => return Err(given_up(w.sku, order_id)),
        }
    }
    let outcome = reserve_loading(
        state,
        || ReserveRequest {
            sku: w.sku,
            user_id,
            count: w.count,
            rid: Rid::OrderLine { order_id },
            deadline: Deadline::At(expires_at),
            mode: ReserveMode::Once,
        },
        std::future::ready(Ok(())),
    )
    .await?;
    cart::record("order", &outcome);
    if outcome == ReserveOutcome::Fenced {
        return Err(given_up(w.sku, order_id));
    }
    Ok(match outcome {
        ReserveOutcome::Reserved {
            units,
            unit_price,
            deadline_ms,
            ..
        } => Ok((units, unit_price, deadline_ms)),
        other => Err(rejection(w.sku, w.count, &other)),
    })
}

/// A line of an order whose request gave it up (its hand-back fenced it) before this call: only
/// a late duplicate of that request's own call meets it.
fn given_up(sku: Sku, order_id: u64) -> AppError {
    AppError::Unavailable(format!(
        "sku {sku}: order {order_id}'s line was given up by its request"
    ))
}

async fn release_line(
    state: &AppState,
    sku: Sku,
    order_id: u64,
    reason: &'static str,
) -> AppResult<()> {
    let (released, _) = state
        .redis
        .release(sku, Rid::OrderLine { order_id }, None)
        .await?;
    if released > 0 {
        metrics::counter!("flashsale_units_released_total", "reason" => reason)
            .increment(u64::from(released));
    }
    Ok(())
}

/// Follows up an order's decided status on every line: paid lines become sold, lines of a
/// cancelled or failed order go back to available. Idempotent; an open order is left alone.
pub async fn settle(state: &AppState, order_id: u64) -> AppResult<()> {
    let Some(rec) = state.redis.order_record(order_id).await? else {
        return Ok(());
    };
    for item in items_of(&rec)? {
        let sku = Sku::parse(u64::from(item.sku))?;
        settle_line(state, &rec, sku).await?;
    }
    Ok(())
}

async fn settle_line(state: &AppState, rec: &OrderRecord, sku: Sku) -> AppResult<()> {
    match rec.status {
        OrderStatus::Paid => {
            // Sold in Redis at once; the write-back worker lowers MySQL's on_hand after.
            state.redis.commit_sold(sku, rec.order_id).await?;
        }
        OrderStatus::Cancelled | OrderStatus::Failed => {
            let reason = match rec.cancel_reason.as_deref() {
                Some("expired") => "expired",
                Some("customer") => "cancelled",
                _ => "failed",
            };
            release_line(state, sku, rec.order_id, reason).await?;
        }
        OrderStatus::New | OrderStatus::AwaitingPayment => {}
    }
    Ok(())
}

/// The sweeper found the order's line on `sku` past its deadline: let the record decide.
pub async fn expire_due(state: &AppState, order_id: u64, sku: Sku) -> AppResult<()> {
    match state
        .redis
        .decide_order(order_id, OrderAction::Expire)
        .await?
    {
        // No record: nothing can ever pay for this line.
        Decision::Missing => release_line(state, sku, order_id, "expired").await,
        decision => {
            // Counted by the call that expired it: the sweeper visits each of its sku lines,
            // and retries a pass that failed half-way.
            if let Decision::Moved(_) = decision {
                metrics::counter!("flashsale_orders_total", "status" => "expired").increment(1);
            }
            let Some(rec) = state.redis.order_record(order_id).await? else {
                return Ok(());
            };
            if rec.status.is_open() {
                return Ok(());
            }
            settle(state, order_id).await?;
            settle_line(state, &rec, sku).await
        }
    }
}

/// The sweeper's part of a placement its request did not settle within [`PLACING_WINDOW`]
/// (its process gone, or a follow-up of its own still at work: the same steps, each
/// idempotent): an order placed keeps its lines; otherwise the order is fenced (a `new` record
/// failed) and every line the request sent is handed back, cart lines to the cart. The
/// customer's checkout lock goes too if it is this order's, so the next checkout is not refused
/// for the rest of the lock's lease.
pub async fn settle_placing(state: &AppState, p: &PlacementNote) -> AppResult<()> {
    let placed = match state.redis.order_record(p.order_id).await? {
        Some(rec) => !matches!(rec.status, OrderStatus::New | OrderStatus::Failed),
        None => false,
    };
    if !placed && fence(state, p.user_id, p.order_id).await? {
        let lines: Vec<Back> = p
            .lines
            .iter()
            .map(|&(sku, from_cart)| Back { sku, from_cart })
            .collect();
        hand_back_all(state, p.user_id, p.order_id, &lines).await?;
        metrics::counter!("flashsale_placements_settled_total").increment(1);
    }
    state.redis.unlock_checkout(p.user_id, p.order_id).await?;
    state.redis.placing_done(p.order_id).await
}

/// The caller's own order record (another customer's is "not found").
async fn own_record(state: &AppState, user_id: u64, order_id: u64) -> AppResult<OrderRecord> {
    match state.redis.order_record(order_id).await? {
        Some(rec) if rec.user_id == user_id => Ok(rec),
        _ => Err(not_found(order_id)),
    }
}

/// An order that Redis no longer holds, from MySQL (finished and written back).
async fn from_mysql(state: &AppState, user_id: u64, order_id: u64) -> AppResult<OrderView> {
    match mysql_orders::get_order(&state.db, order_id).await? {
        Some((row, items)) if row.user_id == user_id => OrderView::of_row(row, items),
        _ => Err(not_found(order_id)),
    }
}

async fn load_view(state: &AppState, order_id: u64) -> AppResult<OrderView> {
    let rec = state
        .redis
        .order_record(order_id)
        .await?
        .ok_or_else(|| not_found(order_id))?;
    OrderView::of(&rec)
}

/// An open order past its payment window is expired on read, so nobody sees a stale status.
async fn expire_if_due(state: &AppState, rec: OrderRecord) -> AppResult<OrderRecord> {
    if rec.status.is_open() && Utc::now().timestamp_millis() >= rec.expires_at_ms {
        if let Decision::Moved(_) = state
            .redis
            .decide_order(rec.order_id, OrderAction::Expire)
            .await?
        {
            metrics::counter!("flashsale_orders_total", "status" => "expired").increment(1);
        }
        settle(state, rec.order_id).await?;
        return state
            .redis
            .order_record(rec.order_id)
            .await?
            .ok_or_else(|| not_found(rec.order_id));
    }
    Ok(rec)
}

/// Redis's record while it has one (the freshest), else MySQL's row.
pub async fn get(state: &AppState, user_id: u64, order_id: u64) -> AppResult<OrderView> {
    match state.redis.order_record(order_id).await? {
        Some(rec) if rec.user_id == user_id => OrderView::of(&expire_if_due(state, rec).await?),
        Some(_) => Err(not_found(order_id)),
        None => from_mysql(state, user_id, order_id).await,
    }
}

/// The caller's orders, newest first, optionally of one status: Redis's records for what is in
/// flight, MySQL's rows for what Redis no longer holds (so history survives a flushed Redis).
pub async fn list(
    state: &AppState,
    user_id: u64,
    status: Option<OrderStatus>,
    limit: usize,
    before_id: Option<u64>,
) -> AppResult<(Vec<OrderView>, Option<u64>)> {
    const BATCH: usize = 100;
    const MAX_SCANNED: usize = 1_000;
    let mut found: std::collections::BTreeMap<u64, OrderView> = Default::default();
    // From Redis: scan the customer's index.
    let mut cursor = before_id;
    let mut scanned = 0;
    let mut redis_exhausted = false;
    while found.len() <= limit && scanned < MAX_SCANNED {
        let ids = state.redis.user_order_ids(user_id, cursor, BATCH).await?;
        scanned += ids.len();
        let batch_full = ids.len() == BATCH;
        cursor = ids.last().copied().or(cursor);
        for rec in state.redis.order_records(&ids).await?.into_iter().flatten() {
            let rec = expire_if_due(state, rec).await?;
            if status.is_none_or(|s| s == rec.status) {
                found.insert(rec.order_id, OrderView::of(&rec)?);
            }
        }
        if !batch_full {
            redis_exhausted = true;
            break;
        }
    }
    // From MySQL: rows of the same window, where Redis has no record (any more).
    let rows = mysql_orders::user_orders(
        &state.db,
        user_id,
        before_id,
        status.map(OrderStatus::as_str),
        (limit + 1) as u32,
    )
    .await?;
    for (row, items) in rows {
        if let std::collections::btree_map::Entry::Vacant(slot) = found.entry(row.id) {
            slot.insert(OrderView::of_row(row, items)?);
        }
    }
    let mut items: Vec<OrderView> = found.into_values().rev().collect();
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(|o| o.order_id);
        return Ok((items, next));
    }
    if !redis_exhausted {
        // A selective filter: hand back a cursor instead of scanning on.
        return Ok((items, cursor));
    }
    Ok((items, None))
}

/// An order that only MySQL still holds is finished; what pay or cancel of it answers.
async fn settled_elsewhere(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    wanted: OrderStatus,
) -> AppResult<OrderView> {
    let view = from_mysql(state, user_id, order_id).await?;
    if view.status == wanted {
        return Ok(view);
    }
    if view.status.is_open() {
        // MySQL says open, Redis has no record: Redis lost its data and awaits rebuild-cache.
        return Err(AppError::Unavailable(format!(
            "order {order_id} is being restored"
        )));
    }
    let s = view.status.as_str();
    Err(match wanted {
        OrderStatus::Paid => AppError::OrderNotPayable(format!("order {order_id} is {s}")),
        _ => AppError::OrderNotCancellable(format!("order {order_id} is {s}")),
    })
}

pub async fn pay(
    state: &AppState,
    user_id: u64,
    order_id: u64,
    payment_ref: &str,
) -> AppResult<OrderView> {
    match own_record(state, user_id, order_id).await {
        Ok(_) => {}
        Err(AppError::NotFound(_)) => {
            return settled_elsewhere(state, user_id, order_id, OrderStatus::Paid).await;
        }
        Err(e) => return Err(e),
    }
    let decision = state
        .redis
        .decide_order(order_id, OrderAction::Pay { payment_ref })
        .await
        .inspect_err(|e| follow_up_unheard(state, order_id, e))?;
    // Decided: from here on an error must not say "nothing was changed". (The Redis follow-up
    // is finished by the write-back or the sweeper when it fails here.)
    let decided = |e: AppError| decided_but_unread(order_id, &decision, e);
    settle(state, order_id).await.map_err(decided)?;
    match decision {
        Decision::Moved(OrderStatus::Paid) => {
            metrics::counter!("flashsale_orders_total", "status" => "paid").increment(1);
        }
        Decision::Same(OrderStatus::Paid) => {}
        Decision::Missing => return Err(not_found(order_id)),
        Decision::Moved(s) | Decision::Same(s) | Decision::Rejected(s) => {
            return Err(AppError::OrderNotPayable(format!(
                "order {order_id} is {}{}",
                s.as_str(),
                if s == OrderStatus::New {
                    " (checkout in progress)"
                } else {
                    ""
                }
            )));
        }
    }
    load_view(state, order_id).await.map_err(decided)
}

/// After a decision whose reply was not heard: if it was made, its Redis follow-up (the lines
/// sold or given back) is done by a task of its own, not left to the write-back (which waits
/// for MySQL) or the lines' deadline. `settle` leaves an open order alone, so this is safe
/// whichever way it went.
fn follow_up_unheard(state: &AppState, order_id: u64, e: &AppError) {
    if matches!(e, AppError::OutcomeUnknown(_)) {
        until_done(state, order_id, "settle", move |state| async move {
            settle(&state, order_id).await
        });
    }
}

/// An error after an order's decision was made: the decision stands, only its answer is
/// missing.
fn decided_but_unread(order_id: u64, decision: &Decision, e: AppError) -> AppError {
    AppError::OutcomeUnknown(format!(
        "order {order_id}: decided ({decision:?}), but its answer could not be read ({e}); read \
         the order"
    ))
}

pub async fn cancel(state: &AppState, user_id: u64, order_id: u64) -> AppResult<OrderView> {
    match own_record(state, user_id, order_id).await {
        Ok(_) => {}
        Err(AppError::NotFound(_)) => {
            return settled_elsewhere(state, user_id, order_id, OrderStatus::Cancelled).await;
        }
        Err(e) => return Err(e),
    }
    let decision = state
        .redis
        .decide_order(order_id, OrderAction::Cancel)
        .await
        .inspect_err(|e| follow_up_unheard(state, order_id, e))?;
    // Decided: from here on an error must not say "nothing was changed". (The Redis follow-up
    // is finished by the write-back or the sweeper when it fails here.)
    let decided = |e: AppError| decided_but_unread(order_id, &decision, e);
    settle(state, order_id).await.map_err(decided)?;
    match decision {
        Decision::Moved(OrderStatus::Cancelled) => {
            metrics::counter!("flashsale_orders_total", "status" => "cancelled").increment(1);
        }
        Decision::Same(OrderStatus::Cancelled) => {}
        Decision::Missing => return Err(not_found(order_id)),
        Decision::Moved(s) | Decision::Same(s) | Decision::Rejected(s) => {
            return Err(AppError::OrderNotCancellable(format!(
                "order {order_id} is {}",
                s.as_str()
            )));
        }
    }
    load_view(state, order_id).await.map_err(decided)
}
