//! `flashsale migrate`: creates the database if missing and applies the migrations.

use std::process::ExitCode;

use flashsale::config::Config;
use flashsale::store::mysql;

pub async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    mysql::connect_and_migrate(&cfg.stores).await?;
    tracing::info!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
