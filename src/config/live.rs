//! Live stock streams settings.

use std::time::Duration;

use clap::Args;

use super::{above_zero, parse_duration};

/// The live stock streams (Server-Sent Events) and their in-process hub.
#[derive(Debug, Clone, Args)]
pub struct LiveConfig {
    /// Live stock streams: changes are gathered and sent at most once per this interval per sku.
    #[arg(long, env = "FLASHSALE_LIVE_TICK", default_value = "250ms", value_parser = parse_duration, global = true)]
    pub live_tick: Duration,

    /// Live stock streams: a heartbeat comment after this much silence, so proxies do not close a
    /// quiet stream.
    #[arg(long, env = "FLASHSALE_LIVE_HEARTBEAT", default_value = "15s", value_parser = parse_duration, global = true)]
    pub live_heartbeat: Duration,

    /// Live stock streams: how often the watched skus' counts (and the list of sales) are read
    /// afresh, in case a change announcement was lost.
    #[arg(long, env = "FLASHSALE_LIVE_RESYNC", default_value = "5s", value_parser = parse_duration, global = true)]
    pub live_resync: Duration,

    /// Live stock streams open at once in this process; more answer 503 `unavailable`.
    #[arg(
        long,
        env = "FLASHSALE_LIVE_MAX_WATCHERS",
        default_value_t = 20_000,
        global = true
    )]
    pub live_max_watchers: usize,

    /// Live stock streams open at once from one client address (an IPv6 address counts by its
    /// /64); more answer 429 `rate_limited`. Shoppers behind one NAT share it.
    #[arg(
        long,
        env = "FLASHSALE_LIVE_MAX_PER_CLIENT",
        default_value_t = 64,
        global = true
    )]
    pub live_max_per_client: usize,
}

impl LiveConfig {
    pub fn validate(&self) -> Result<(), String> {
        above_zero(&[
            ("live tick", self.live_tick),
            ("live heartbeat", self.live_heartbeat),
            ("live resync", self.live_resync),
        ])?;
        if self.live_max_per_client == 0 {
            return Err("FLASHSALE_LIVE_MAX_PER_CLIENT must be at least 1".into());
        }
        Ok(())
    }
}
