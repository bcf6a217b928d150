//! `flashsale outbox-dead list|show ID|replay ID`: the outbox events the writer set aside, as the
//! operator reads them (src/service/outbox_dead.rs finds and replays them). Exit codes: 0 done,
//! 1 nothing done, 2 a malformed id.

use std::process::ExitCode;

use clap::Subcommand;
use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::service::outbox_dead::{self, Replayed, SetAside, SetAsideId};

#[derive(Debug, Clone, Subcommand)]
pub enum OutboxDeadAction {
    /// One line per set-aside event: id, when, reason, type, order, error.
    List {
        /// At most this many per partition.
        #[arg(long, default_value_t = 1_000)]
        limit: usize,
    },
    /// One set-aside event in full (JSON), with the event's own fields.
    Show {
        /// The id `list` shows (`<partition>-<ms>-<seq>`).
        id: String,
    },
    /// Put a set-aside event back into its outbox, once; a running writer then writes it.
    Replay {
        /// The id `list` shows.
        id: String,
    },
}

pub async fn run(cfg: Config, action: OutboxDeadAction) -> anyhow::Result<ExitCode> {
    let state = AppState::connect(cfg).await?;
    let (out, code) = answer(&state, &action).await?;
    print!("{out}");
    Ok(ExitCode::from(code))
}

/// What to print and the exit code.
async fn answer(state: &AppState, action: &OutboxDeadAction) -> anyhow::Result<(String, u8)> {
    let parse = |id: &str| SetAsideId::parse(id).map_err(|e| (format!("{e}\n"), 2));
    Ok(match action {
        OutboxDeadAction::List { limit } => (list(&outbox_dead::list(state, *limit).await?), 0),
        OutboxDeadAction::Show { id } => match parse(id) {
            Err(bad) => bad,
            Ok(id) => match outbox_dead::show(state, &id).await? {
                Some(e) => (format!("{}\n", serde_json::to_string_pretty(&e)?), 0),
                None => (format!("no set-aside event {id}\n"), 1),
            },
        },
        OutboxDeadAction::Replay { id } => match parse(id) {
            Err(bad) => bad,
            Ok(id) => match outbox_dead::replay(state, &id).await? {
                Replayed::Requeued(new_id) => (
                    format!(
                        "replayed {id}: back in its outbox as {new_id}; the writer writes it \
                         next (if it cannot, it is set aside again: see `list`)\n"
                    ),
                    0,
                ),
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
            },
        },
    })
}

/// One line per entry, then a count.
fn list(all: &[SetAside]) -> String {
    let mut s = format!(
        "{:<26} {:<24} {:<12} {:<10} {:>12}  {}\n",
        "id", "set aside at", "reason", "type", "order", "error"
    );
    for e in all {
        let at = e
            .set_aside_at_ms
            .map(|ms| {
                flashsale::service::from_ms(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
