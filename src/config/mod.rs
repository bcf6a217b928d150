//! Every setting, from flags and `FLASHSALE_*` environment variables, with defaults that work on
//! a developer machine (MariaDB/MySQL and Redis on localhost). One struct per concern, each
//! checking itself; `flashsale serve --help` (and docs/CONFIG.md, generated from it) lists them
//! under one heading each.

mod auth;
mod http;
mod limits;
mod live;
mod otel;
mod outbox;
mod production;
pub mod published;
mod sale;
mod stores;
mod sweeper;
mod telemetry;
mod url;
mod webhooks;

use std::time::Duration;

use clap::{Args, Parser};

pub use auth::{AuthConfig, DEV_ADMIN_PASSWORD};
pub use http::HttpConfig;
pub use limits::RateLimitsConfig;
pub use live::LiveConfig;
pub use otel::{OtelConfig, TraceExport};
pub use outbox::OutboxConfig;
pub use production::admin_password_problem;
pub use sale::SaleConfig;
pub use stores::StoresConfig;
pub use sweeper::SweeperConfig;
pub use telemetry::{LogFormat, TelemetryConfig};
pub use url::redact_url;
pub use webhooks::WebhooksConfig;

#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten, next_help_heading = "Stores")]
    pub stores: StoresConfig,

    #[command(flatten, next_help_heading = "HTTP")]
    pub http: HttpConfig,

    #[command(flatten, next_help_heading = "Accounts and tokens")]
    pub auth: AuthConfig,

    #[command(flatten, next_help_heading = "Sale")]
    pub sale: SaleConfig,

    #[command(flatten, next_help_heading = "Sweeper")]
    pub sweeper: SweeperConfig,

    #[command(flatten, next_help_heading = "Outbox write-back")]
    pub outbox: OutboxConfig,

    #[command(flatten, next_help_heading = "Webhooks")]
    pub webhooks: WebhooksConfig,

    #[command(flatten, next_help_heading = "Rate limits")]
    pub limits: RateLimitsConfig,

    #[command(flatten, next_help_heading = "Live stock streams")]
    pub live: LiveConfig,

    #[command(flatten, next_help_heading = "Logs and metrics")]
    pub telemetry: TelemetryConfig,

    #[command(flatten, next_help_heading = "Traces (OpenTelemetry)")]
    pub otel: OtelConfig,
}

/// The settings alone, as a parser (the binary's command line flattens `Config` the same way).
#[derive(Debug, Parser)]
#[command(name = "flashsale")]
struct Settings {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Settings as the defaults give them, for tests and tools that build a config in code.
    pub fn defaults() -> Self {
        Self::parse_from(["flashsale"])
    }

    /// Settings from these command-line arguments (the first is the program's name) and the
    /// environment, as the binary reads them.
    pub fn parse_from<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Settings::parse_from(args).config
    }

    /// Checks the settings that must hold before anything starts; each concern checks its own.
    pub fn validate(&self) -> Result<(), String> {
        production::check_production(self)?;
        self.auth.validate()?;
        self.webhooks.validate()?;
        self.limits.validate()?;
        self.http.validate()?;
        self.sale.validate()?;
        self.outbox.validate()?;
        self.stores.validate()?;
        self.sweeper.validate()?;
        self.live.validate()?;
        self.otel.traces()?;
        let (api, ops) = (self.http.listen, self.telemetry.metrics_listen);
        if api == ops && api.port() != 0 {
            return Err(format!(
                "FLASHSALE_METRICS_LISTEN ({ops}) must not be the API's address (FLASHSALE_LISTEN): \
                 the metrics are for operators only"
            ));
        }
        Ok(())
    }
}

/// Every one of these durations must be above zero (`name` says which in the message).
fn above_zero(durations: &[(&str, Duration)]) -> Result<(), String> {
    match durations.iter().find(|(_, d)| d.is_zero()) {
        Some((name, _)) => Err(format!("the {name} must be above zero")),
        None => Ok(()),
    }
}

/// Parses `500ms`, `30s`, `10m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// A random value of `n` hex digits, for unit tests: a value written out in src/ is published
/// (src/config/published.rs), so production refuses it.
#[cfg(test)]
pub(crate) fn unpublished_hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally() {
        let c = Config::defaults();
        assert_eq!(c.stores.mysql_url, "mysql://root@127.0.0.1:3306/flashsale");
        assert_eq!(c.stores.redis_url_or_default(), "redis://127.0.0.1:6379");
        assert!(c.stores.redis_cluster_nodes.is_empty());
        assert_eq!(c.sale.payment_ttl, Duration::from_secs(600));
        assert_eq!(c.sale.cart_hold_ttl, Duration::from_secs(600));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn production_needs_secrets() {
        let mut c = Config::defaults();
        c.auth.production = true;
        assert!(c.validate().is_err());
        c.auth.jwt_secret = Some("short".into());
        c.auth.admin_password = Some(format!("Pw-{}", unpublished_hex(12)));
        assert!(c.validate().is_err());
        c.auth.jwt_secret = Some("k".repeat(32));
        assert!(c.validate().is_err(), "one repeated byte");
        c.auth.jwt_secret = Some(unpublished_hex(32));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_previous_secret_needs_a_current_one() {
        let mut c = Config::defaults();
        c.auth.jwt_secret_previous = Some(unpublished_hex(32));
        assert!(c.validate().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn metrics_listen_apart_from_the_api() {
        let mut c = Config::defaults();
        assert_eq!(c.telemetry.metrics_listen.to_string(), "127.0.0.1:9464");
        assert!(c.telemetry.metrics_listen.ip().is_loopback());
        c.telemetry.metrics_listen = c.http.listen;
        assert!(c.validate().is_err());
    }

    #[test]
    fn prefix_without_braces() {
        let mut c = Config::defaults();
        c.stores.redis_prefix = "a{b".into();
        assert!(c.validate().is_err());
    }
}
