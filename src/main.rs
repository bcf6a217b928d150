//! The `flashsale` binary: parses the command line, sets up logging, runs the command. The
//! service is the library (src/lib.rs); the operators' commands are in src/admin/, one file each.

mod admin;
mod cli;

use std::process::ExitCode;

use clap::Parser;
use flashsale::startup::Application;
use flashsale::telemetry;

use crate::cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: under load glibc's spent a fifth of the service's CPU
/// (consolidating and unlinking freed chunks) and kept more memory (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    cli.config.validate().map_err(|e| anyhow::anyhow!(e))?;
    telemetry::init_tracing(&cli.config.telemetry, &cli.config.otel)?;
    let result = run(cli).await;
    telemetry::shutdown_traces().await;
    result
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            Application::build(cfg).await?.run().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => admin::migrate::run(cfg).await,
        Command::Seed => admin::seed::run(cfg).await,
        Command::Reconcile => admin::reconcile::run(cfg).await,
        Command::RebuildCache { wait } => admin::rebuild_cache::run(cfg, wait).await,
        Command::OutboxDead { action } => admin::outbox_dead::run(cfg, action).await,
        Command::AdminPassword { from_env } => admin::admin_password::run(cfg, from_env).await,
        Command::Simulate(args) => admin::simulate::run(cfg, args).await,
        Command::MintTokens {
            count,
            first_user_id,
        } => admin::mint_tokens::run(cfg, count, first_user_id).await,
    }
}
