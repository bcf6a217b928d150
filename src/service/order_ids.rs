//! Order ids: handed out by a Redis counter, never twice, whatever Redis forgets. The counter's
//! absence is the sign that Redis lost its data (a flush, a restart without persistence, while
//! the service runs or not): no id is handed out until it is raised above every id MySQL holds.

use crate::app::AppState;
use crate::error::{AppError, AppResult};
use crate::store::mysql::catalog;

/// Ids a lost counter skips beyond MySQL's largest: ids handed out before the loss whose orders
/// had not reached MySQL yet (the outbox backlog, a batch being written) lie above that largest
/// id, and must not be handed out again.
pub const MARGIN_AFTER_LOSS: u64 = 1_000_000;

/// The next order id. 503 `unavailable` while the counter is lost and MySQL cannot tell the
/// largest id it holds.
pub async fn next(state: &AppState) -> AppResult<u64> {
    for _ in 0..3 {
        if let Some(id) = state.redis.next_order_id().await? {
            return Ok(id);
        }
        raise(state, true).await?;
    }
    Err(AppError::Unavailable(
        "order ids: the id counter keeps vanishing from Redis".into(),
    ))
}

/// Raises the counter to MySQL's largest order id; a missing counter is set `MARGIN_AFTER_LOSS`
/// above it, unless MySQL holds no order and the loss is not known (the first start).
/// `lost`: the counter was found missing while the service ran. Returns the counter.
pub async fn raise(state: &AppState, lost: bool) -> AppResult<u64> {
    let floor = catalog::max_order_id(&state.db).await.map_err(|e| {
        AppError::Unavailable(format!(
            "order ids: Redis lost the id counter and MySQL cannot tell the largest id ({e})"
        ))
    })?;
    let margin = if lost || floor > 0 {
        MARGIN_AFTER_LOSS
    } else {
        0
    };
    let (counter, was_missing) = state.redis.raise_order_seq(floor, margin).await?;
    if was_missing && margin > 0 {
        metrics::counter!("flashsale_order_ids_restored_total").increment(1);
        tracing::warn!(
            mysql.max_order_id = floor,
            counter,
            "the order id counter was missing from Redis (Redis lost its data): raised above \
             MySQL's largest id; run `flashsale rebuild-cache` if the counters are gone too"
        );
    }
    Ok(counter)
}
