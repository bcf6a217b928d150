//! The operator's view of the outbox events the writer set aside (src/worker/writer.rs) because
//! they can never be written: unparseable entries, and events whose order id MySQL holds for
//! another order. Each is kept whole in its partition's set-aside stream; a replay puts it back
//! into its outbox in one atomic step, so replaying twice, or two operators at once, replays it
//! once (and the write-back is idempotent besides). The `flashsale outbox-dead` command
//! (src/admin/outbox_dead.rs) prints what these return.

use crate::app::AppState;
use crate::error::AppResult;
pub use crate::store::redis::outbox::{Replayed, SetAside, SetAsideId};

/// Every set-aside event, at most `limit` per partition.
pub async fn list(state: &AppState, limit: usize) -> AppResult<Vec<SetAside>> {
    state.redis.list_set_aside(limit).await
}

/// One set-aside event in full; `None` when there is none with that id.
pub async fn show(state: &AppState, id: &SetAsideId) -> AppResult<Option<SetAside>> {
    state.redis.get_set_aside(id).await
}

/// Puts a set-aside event back into its outbox, once; a running writer then writes it.
pub async fn replay(state: &AppState, id: &SetAsideId) -> AppResult<Replayed> {
    let replayed = state.redis.replay_set_aside(id).await?;
    if let Replayed::Requeued(new_id) = &replayed {
        tracing::info!(set_aside.id = %id, stream.id = %new_id, "set-aside event replayed");
    }
    Ok(replayed)
}
