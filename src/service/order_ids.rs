//! Order ids: handed out by a Redis counter, never twice, whatever Redis forgets or rolls back.
//!
//! * Blocks: no id is handed out above the order id mark MySQL holds (`order_id_mark`); the
//!   counter reaching it raises the mark by [`BLOCK`] first
//!   (and every metrics tick raises it ahead of the counter). Every id ever handed out (taken by
//!   an order, or burned by a refused attempt) is therefore at or below the mark.
//! * A missing counter where ids existed (Redis lost its data: a flush, a restart without
//!   persistence) stops sales like a counter gone back (below) until `flashsale rebuild-cache`
//!   restored the counters and open orders and raised the counter to max(MySQL's largest order
//!   id, the mark). A missing counter with no id ever handed out is a new deployment: raised.
//! * A counter below an id already handed out (this instance's floor) or below MySQL's largest
//!   order id means Redis came back from older persistence (`appendfsync everysec` after a
//!   host crash): its stock counters are behind MySQL too. Every stock and order script is then
//!   refused with 503 until `flashsale rebuild-cache` ran (src/store/redis/mod.rs).

use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::store::mysql::{DbError, catalog};
use crate::store::redis::NextId;

/// Ids reserved in MySQL's mark at a time. Every metrics tick raises the mark a block ahead
/// once the counter is within half a block of it, so requests rarely wait for MySQL, and a
/// MySQL outage stops orders only after at least half a block of ids (12.5 s at 40,000
/// attempts a second, refused ones included; far longer at usual rates).
pub const BLOCK: u64 = 1_000_000;

/// Ids a lost counter skips beyond MySQL's largest when MySQL holds no mark yet (a database
/// from before the mark existed: ids handed out then are covered by no mark).
pub const MARGIN_WITHOUT_MARK: u64 = 1_000_000;

/// The next order id. 503 `unavailable` while MySQL cannot record a new mark or tell the
/// largest id after a loss, and while Redis is behind MySQL.
pub async fn next(state: &AppState) -> AppResult<u64> {
    for _ in 0..4 {
        let (floor, limit) = state.redis.id_bounds();
        match state.redis.next_order_id(floor, limit).await? {
            NextId::Id(id) => {
                state.redis.raise_id_bounds(id, 0);
                return Ok(id);
            }
            NextId::Lost => {
                raise(state, true, false).await?;
            }
            NextId::Block(counter) => {
                let mark = catalog::raise_order_id_mark(&state.db, counter.saturating_add(BLOCK))
                    .await
                    .map_err(|e| {
                        AppError::Unavailable(format!(
                            "order ids: MySQL cannot record the order id mark ({e})"
                        ))
                    })?;
                state.redis.raise_id_bounds(0, mark);
            }
            NextId::Behind(counter) => {
                return Err(state
                    .redis
                    .mark_behind(format!(
                        "the order id counter is {counter}, below id {floor} already handed out"
                    ))
                    .await);
            }
        }
    }
    Err(AppError::Unavailable(
        "order ids: the id counter keeps vanishing from Redis".into(),
    ))
}

/// Looks whether Redis went back (every metrics tick and at start): a counter below MySQL's
/// largest order id, or below an id this instance saw handed out, stops sales until
/// `flashsale rebuild-cache` ran. Also refreshes this instance's floor and mark.
pub async fn watch(state: &AppState) -> AppResult<()> {
    let max_id = catalog::max_order_id(&state.db).await?;
    let mark = catalog::order_id_mark(&state.db).await?;
    state.redis.raise_id_bounds(max_id, mark);
    let (floor, _) = state.redis.id_bounds();
    let counter = state.redis.order_seq().await?;
    if let Some(counter) = counter
        && counter >= floor
        && counter.saturating_add(BLOCK / 2) > mark
    {
        let mark = catalog::raise_order_id_mark(&state.db, counter.saturating_add(BLOCK)).await?;
        state.redis.raise_id_bounds(0, mark);
    }
    if counter.is_none() && (floor > 0 || mark > 0) {
        state
            .redis
            .mark_behind(format!(
                "Redis lost its data (the order id counter is missing; ids up to {floor} exist)"
            ))
            .await;
    }
    if let Some(counter) = counter
        && counter < floor
    {
        state
            .redis
            .mark_behind(format!(
                "the order id counter is {counter}, below id {floor} already handed out or in \
                 MySQL"
            ))
            .await;
    }
    // Another instance found it (ids handed out there).
    if state.redis.behind_flagged().await? {
        state
            .redis
            .mark_behind("another instance found the order id counter behind".into())
            .await;
    }
    // Resumes by itself once a rebuild ran.
    state.redis.behind_refusal().await?;
    Ok(())
}

/// Raises the counter to at least max(MySQL's largest order id, the mark): a missing counter
/// is set there (plus [`MARGIN_WITHOUT_MARK`] when MySQL has no mark yet and the loss is known
/// or MySQL holds orders). A counter that exists below that floor is Redis gone back: unless
/// `repair` (rebuild-cache, which reloads everything), it is left alone and sales stop.
/// `lost`: the counter was found missing while the service ran. Returns the counter.
pub async fn raise(state: &AppState, lost: bool, repair: bool) -> AppResult<u64> {
    let unavailable = |e: DbError| {
        let e = AppError::from(e);
        AppError::Unavailable(format!(
            "order ids: Redis lost the id counter and MySQL cannot tell the largest id ({e})"
        ))
    };
    let max_id = catalog::max_order_id(&state.db)
        .await
        .map_err(unavailable)?;
    let mark = catalog::order_id_mark(&state.db)
        .await
        .map_err(unavailable)?;
    state.redis.raise_id_bounds(max_id, mark);
    // Ids known to exist (handed out here, or in MySQL), and the raise target: the mark covers
    // every id ever handed out, refused attempts' included, so a lost counter restarts there.
    let seen = max_id.max(state.redis.id_bounds().0);
    let floor = seen.max(mark);
    let margin = if mark == 0 && (lost || floor > 0) {
        MARGIN_WITHOUT_MARK
    } else {
        0
    };
    if !repair {
        match state.redis.order_seq().await? {
            Some(counter) if counter < seen => {
                return Err(state
                    .redis
                    .mark_behind(format!(
                        "the order id counter is {counter}, below id {seen} already handed out \
                         or in MySQL"
                    ))
                    .await);
            }
            // Redis lost its data while ids existed: its stock counters, open orders and the
            // limits' memory went with it. Selling on counters reloaded from MySQL alone would
            // sell open orders' units again: stop until rebuild-cache restored them.
            None if seen > 0 || mark > 0 => {
                return Err(state
                    .redis
                    .mark_behind(format!(
                        "Redis lost its data (the order id counter is missing; ids up to {floor} \
                         exist)"
                    ))
                    .await);
            }
            _ => {}
        }
    }
    let (counter, was_missing) = state.redis.raise_order_seq(floor, margin).await?;
    if was_missing && (lost || floor > 0) {
        metrics::counter!("flashsale_order_ids_restored_total").increment(1);
        tracing::warn!(
            mysql.max_order_id = max_id,
            mysql.order_id_mark = mark,
            counter,
            "the order id counter was missing from Redis (Redis lost its data): raised above \
             every id handed out; run `flashsale rebuild-cache` if the counters are gone too"
        );
    }
    Ok(counter)
}
