//! Webhooks settings.

use std::time::Duration;

use clap::Args;

use super::{above_zero, parse_duration};

/// Order events delivered to a URL (src/worker/webhooks.rs).
#[derive(Debug, Clone, Args)]
pub struct WebhooksConfig {
    /// Deliver order events to this URL (POST, JSON, HMAC-SHA256 signed). Off when unset. Its
    /// value is never shown (it may carry a token).
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_URL",
        hide_env_values = true,
        global = true
    )]
    pub webhook_url: Option<String>,

    /// Secret of the webhook signature.
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub webhook_secret: Option<String>,

    /// Attempts per webhook delivery before the event is set aside.
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_MAX_ATTEMPTS",
        default_value_t = 8,
        global = true
    )]
    pub webhook_max_attempts: u32,

    /// Delay before the first webhook retry; doubled for each further one (at most 60 s).
    #[arg(long, env = "FLASHSALE_WEBHOOK_RETRY", default_value = "500ms", value_parser = parse_duration, global = true)]
    pub webhook_retry: Duration,

    /// Webhook deliveries under way at once per instance; a slow or failing event does not hold
    /// up the others.
    #[arg(
        long,
        env = "FLASHSALE_WEBHOOK_CONCURRENCY",
        default_value_t = 16,
        global = true
    )]
    pub webhook_concurrency: usize,

    /// Deadline of one webhook request (connecting included).
    #[arg(long, env = "FLASHSALE_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub webhook_timeout: Duration,
}

impl WebhooksConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.webhook_url.is_some() && self.webhook_secret.as_deref().is_none_or(str::is_empty) {
            return Err("FLASHSALE_WEBHOOK_URL needs FLASHSALE_WEBHOOK_SECRET".into());
        }
        if self.webhook_concurrency == 0 || self.webhook_concurrency > 1024 {
            return Err("FLASHSALE_WEBHOOK_CONCURRENCY must be between 1 and 1024".into());
        }
        above_zero(&[("webhook timeout", self.webhook_timeout)])
    }
}
