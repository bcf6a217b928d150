//! `flashsale outbox-dead list|show ID|replay ID`: the operator's view of the outbox events the
//! writer set aside (src/worker/writer.rs) because they can never be written: unparseable
//! entries, and events whose order id MySQL holds for another order. Each is kept whole in its
//! partition's set-aside stream; a replay puts it back into its outbox in one atomic step, so
//! replaying twice, or two operators at once, replays it once (and the write-back is idempotent
//! besides).

use crate::app::AppState;
use crate::config::OutboxDeadAction;
use crate::store::redis::outbox::{Replayed, SetAside, SetAsideId};

/// Runs the command; returns what to print and the exit code (0 done, 1 nothing done, 2 bad id).
pub async fn run(state: &AppState, action: &OutboxDeadAction) -> anyhow::Result<(String, i32)> {
    let redis = &state.redis;
    Ok(match action {
        OutboxDeadAction::List { limit } => {
            let all = redis.list_set_aside(*limit).await?;
            (list(&all), 0)
        }
        OutboxDeadAction::Show { id } => {
            let id = match SetAsideId::parse(id) {
                Ok(id) => id,
                Err(e) => return Ok((format!("{e}\n"), 2)),
            };
            match redis.get_set_aside(&id).await? {
                Some(e) => (format!("{}\n", serde_json::to_string_pretty(&e)?), 0),
                None => (format!("no set-aside event {id}\n"), 1),
            }
        }
        OutboxDeadAction::Replay { id } => {
            let id = match SetAsideId::parse(id) {
                Ok(id) => id,
                Err(e) => return Ok((format!("{e}\n"), 2)),
            };
            match redis.replay_set_aside(&id).await? {
                Replayed::Requeued(new_id) => {
                    tracing::info!(set_aside.id = %id, stream.id = %new_id, "set-aside event replayed");
                    (
                        format!(
                            "replayed {id}: back in its outbox as {new_id}; the writer writes it \
                             next (if it cannot, it is set aside again: see `list`)\n"
                        ),
                        0,
                    )
                }
                Replayed::Gone => (
                    format!("no set-aside event {id}: replayed before, or never set aside\n"),
                    1,
                ),
                Replayed::NoPayload => (
                    format!(
                        "{id} is a reference left by an older version, without the event: \
                         nothing to replay\n"
                    ),
                    1,
                ),
            }
        }
    })
}

/// One line per entry, then a count.
pub fn list(all: &[SetAside]) -> String {
    let mut s = format!(
        "{:<26} {:<24} {:<12} {:<10} {:>12}  {}\n",
        "id", "set aside at", "reason", "type", "order", "error"
    );
    for e in all {
        let at = e
            .set_aside_at_ms
            .map(|ms| {
                crate::service::from_ms(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .unwrap_or_else(|| "-".into());
        let field = |f: &str| e.event.get(f).cloned().unwrap_or_else(|| "-".into());
        s += &format!(
            "{:<26} {:<24} {:<12} {:<10} {:>12}  {}\n",
            e.id,
            at,
            e.reason,
            field("type"),
            field("order_id"),
            e.error
        );
    }
    s += &format!("{} set-aside event(s)\n", all.len());
    s
}
