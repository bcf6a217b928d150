//! Logs and metrics settings.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs and the metrics' state gauges (traces: `OtelConfig`).
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log format, `text` or `json`. Logs go to stderr; `RUST_LOG` filters them.
    #[arg(long, env = "FLASHSALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// How often state gauges (outbox backlog, pools, stock of open sales) are refreshed.
    #[arg(long, env = "FLASHSALE_METRICS_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub metrics_interval: Duration,
}
