//! `flashsale rebuild-cache`: Redis rebuilt from MySQL after it lost its data, or some skus'
//! counters (src/service/reconcile.rs); exit 2 when the outbox could not be written back within
//! `--wait` (nothing was changed), 1 when a sku or an order could not be restored.

use std::process::ExitCode;
use std::time::Duration;

use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::service::reconcile;

pub async fn run(cfg: Config, wait: Option<Duration>) -> anyhow::Result<ExitCode> {
    let state = AppState::connect(cfg).await?;
    let wait = wait.unwrap_or_else(|| reconcile::default_outbox_wait(&state));
    let r = reconcile::rebuild_cache_waiting(&state, wait, &|m| eprintln!("{m}")).await?;
    if let Some(left) = &r.outbox_not_drained {
        eprintln!(
            "not rebuilt: the outbox still holds {left} after {:.0} s; nothing was changed. \
             Find out why they are not written (the writers' logs, MySQL), then run rebuild-cache \
             again",
            wait.as_secs_f64()
        );
        return Ok(ExitCode::from(2));
    }
    // The restored reservations' deadlines, for the sweeper's due index.
    state.redis.flush_due_notes().await?;
    println!(
        "loaded {} sku(s), restored {} open order(s) with {} unit(s)",
        r.skus_loaded, r.orders_restored, r.units_reserved
    );
    for p in &r.problems {
        eprintln!("problem: {p}");
    }
    if !r.problems.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
