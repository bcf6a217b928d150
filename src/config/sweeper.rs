//! Sweeper settings.

use std::time::Duration;

use clap::Args;

use super::{above_zero, parse_duration};

/// The sweeper (src/worker/sweeper.rs): expired reservations given back.
#[derive(Debug, Clone, Args)]
pub struct SweeperConfig {
    /// How often the sweeper looks for expired reservations and gives their units back.
    #[arg(long, env = "FLASHSALE_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration, global = true)]
    pub sweep_interval: Duration,

    /// How often the sweeper audits its due index against every loaded sku (cheap reads; puts
    /// back what a crash between a reservation and its note left out).
    #[arg(long, env = "FLASHSALE_SWEEP_AUDIT_INTERVAL", default_value = "1m", value_parser = parse_duration, global = true)]
    pub sweep_audit_interval: Duration,
}

impl SweeperConfig {
    pub fn validate(&self) -> Result<(), String> {
        above_zero(&[
            ("sweep interval", self.sweep_interval),
            ("sweep audit interval", self.sweep_audit_interval),
        ])
    }
}
