//! Logs and metrics settings.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs, the metrics' listener and state gauges (traces: `OtelConfig`).
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log format, `text` or `json`. Logs go to stderr; `RUST_LOG` filters them.
    #[arg(long, env = "FLASHSALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// How often state gauges (outbox backlog, pools, stock of open sales) are refreshed.
    #[arg(long, env = "FLASHSALE_METRICS_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub metrics_interval: Duration,

    /// Address of the operators' listener, apart from the API's: `GET /metrics` (Prometheus
    /// text) and `GET /readyz` with the reason when not ready (the API's `/readyz` leaves it
    /// out). Loopback by default; open it to your Prometheus only, never to the internet
    /// (docs/OPERATIONS.md, "Metrics"). Port 0 picks a free port.
    #[arg(
        long,
        env = "FLASHSALE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub metrics_listen: SocketAddr,
}
