use clap::Parser;

use flashsale::app::{AppState, Application};
use flashsale::config::{Cli, Command};
use flashsale::{seed, store, telemetry};

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
    }
}
