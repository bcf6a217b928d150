//! MySQL/MariaDB access: pool, database creation, migrations, and queries by table.

pub mod catalog;
mod error;
pub mod orders;
pub mod users;

pub use error::{DbError, DbResult};

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{MySql, MySqlPool};

use crate::config::{StoresConfig, redact_url as redact};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database when missing, opens a pool (sessions in UTC), applies the migrations.
pub async fn connect_and_migrate(cfg: &StoresConfig) -> anyhow::Result<MySqlPool> {
    ensure_database(&cfg.mysql_url).await?;
    let pool = pool(cfg)?;
    MIGRATOR
        .run(&pool)
        .await
        .context("applying the MySQL migrations")?;
    Ok(pool)
}

/// Creates the database named in `url` when it does not exist.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let exists = MySql::database_exists(url)
        .await
        .with_context(|| format!("connecting to MySQL at {}", redact(url)))?;
    if !exists {
        MySql::create_database(url)
            .await
            .with_context(|| format!("creating the database of {}", redact(url)))?;
        tracing::info!(url = %redact(url), "created the MySQL database");
    }
    Ok(())
}

/// A lazily connecting pool: the service starts (and answers 503) while MySQL is down.
pub fn pool(cfg: &StoresConfig) -> anyhow::Result<MySqlPool> {
    let opts = MySqlConnectOptions::from_str(&cfg.mysql_url)
        .with_context(|| format!("parsing {}", redact(&cfg.mysql_url)))?
        .timezone(Some("+00:00".to_string()));
    Ok(MySqlPoolOptions::new()
        .max_connections(cfg.mysql_pool)
        .min_connections(0)
        .acquire_timeout(cfg.mysql_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(opts))
}
