use clap::Parser;

use flashsale::app::{AppState, Application};
use flashsale::config::{Cli, Command};
use flashsale::{auth, domain::Role, outbox_dead, reconcile, seed, simulate, store, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing(cli.config.log_format);
    cli.config.validate().map_err(|e| anyhow::anyhow!(e))?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => Application::build(cli.config).await?.run().await,
        Command::Migrate => {
            store::mysql::connect_and_migrate(&cli.config).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Seed => {
            let state = AppState::connect(cli.config).await?;
            seed::run(&state).await
        }
        Command::Reconcile => {
            let state = AppState::connect(cli.config).await?;
            let checks = reconcile::check(&state).await?;
            print!("{}", reconcile::table(&checks));
            let bad = checks.iter().filter(|c| !c.ok()).count();
            if bad > 0 {
                eprintln!("{bad} sku(s) do not reconcile");
                std::process::exit(1);
            }
            println!("all {} sku(s) reconcile", checks.len());
            Ok(())
        }
        Command::OutboxDead { action } => {
            let state = AppState::connect(cli.config).await?;
            let (out, code) = outbox_dead::run(&state, &action).await?;
            print!("{out}");
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Simulate(args) => {
            let json = args.json;
            let report = simulate::run(cli.config, args).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                simulate::print(&report);
            }
            if report.oversold_units > 0
                || !report.identity_ok
                || report.reconcile_ok == Some(false)
            {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::MintTokens {
            count,
            first_user_id,
        } => {
            let secret = cli
                .config
                .jwt_secret
                .ok_or_else(|| anyhow::anyhow!("mint-tokens needs FLASHSALE_JWT_SECRET"))?;
            let jwt = auth::Jwt::new(secret.as_bytes(), cli.config.token_ttl);
            let mut out = String::new();
            for id in first_user_id..first_user_id + count {
                out.push_str(&jwt.issue(id, Role::Customer)?);
                out.push('\n');
            }
            print!("{out}");
            Ok(())
        }
        Command::RebuildCache => {
            let state = AppState::connect(cli.config).await?;
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
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
