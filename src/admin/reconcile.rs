//! `flashsale reconcile`: Redis compared with MySQL per sku (src/service/reconcile.rs); a table,
//! and exit 1 on a mismatch.

use std::process::ExitCode;

use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::service::reconcile;

pub async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let state = AppState::connect(cfg).await?;
    let checks = reconcile::check(&state).await?;
    print!("{}", reconcile::table(&checks));
    let bad = checks.iter().filter(|c| !c.ok()).count();
    if bad > 0 {
        eprintln!("{bad} sku(s) do not reconcile");
        return Ok(ExitCode::FAILURE);
    }
    println!("all {} sku(s) reconcile", checks.len());
    Ok(ExitCode::SUCCESS)
}
