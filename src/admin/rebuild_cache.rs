//! `flashsale rebuild-cache`: Redis rebuilt from MySQL after it lost its data
//! (src/service/reconcile.rs); exit 1 when a sku or an order could not be restored.

use std::process::ExitCode;

use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::service::reconcile;

pub async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let state = AppState::connect(cfg).await?;
    let r = reconcile::rebuild_cache(&state).await?;
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
