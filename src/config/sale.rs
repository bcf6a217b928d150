//! Sale settings.

use std::time::Duration;

use clap::Args;

use super::{above_zero, parse_duration};

/// The sale's windows and bounds: cart holds, payment windows, carts, idempotency, lookups.
#[derive(Debug, Clone, Args)]
pub struct SaleConfig {
    /// How long a cart line holds its units, from when it was first added (never renewed).
    #[arg(long, env = "FLASHSALE_CART_HOLD_TTL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub cart_hold_ttl: Duration,

    /// How long an order waits for payment (its payment window) before it is cancelled and its
    /// units come back.
    #[arg(long, env = "FLASHSALE_PAYMENT_TTL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub payment_ttl: Duration,

    /// Distinct skus in one cart; adding another answers 409 `cart_full`.
    #[arg(
        long,
        env = "FLASHSALE_MAX_CART_LINES",
        default_value_t = 20,
        global = true
    )]
    pub max_cart_lines: usize,

    /// How long an `Idempotency-Key` stays claimed by a request that stops renewing it (its
    /// process died); renewed every third of it while the request works.
    #[arg(long, env = "FLASHSALE_IDEMPOTENCY_LEASE", default_value = "5s", value_parser = parse_duration, global = true)]
    pub idempotency_lease: Duration,

    /// How long a sku MySQL does not know is remembered as unknown (its lookups then answer 404
    /// without MySQL work). A product created on another instance is found here at most twice this
    /// long after its creation; one created on this instance at once.
    #[arg(long, env = "FLASHSALE_UNKNOWN_SKU_TTL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub unknown_sku_ttl: Duration,

    /// How long this instance trusts that a sku is sold out (announced, or answered by Redis)
    /// and answers 409 `out_of_stock` without asking Redis; any announcement of units coming back
    /// ends it at once. 0: always ask Redis.
    #[arg(long, env = "FLASHSALE_SOLD_OUT_TRUST", default_value = "1s", value_parser = parse_duration, global = true)]
    pub sold_out_trust: Duration,
}

impl SaleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_cart_lines == 0 {
            return Err(
                "max in-flight requests, connections and cart lines must be at least 1".into(),
            );
        }
        if self.idempotency_lease < Duration::from_millis(100) {
            return Err("FLASHSALE_IDEMPOTENCY_LEASE must be at least 100ms".into());
        }
        above_zero(&[
            ("cart hold ttl", self.cart_hold_ttl),
            ("payment ttl", self.payment_ttl),
        ])?;
        if self.unknown_sku_ttl.is_zero() {
            return Err("FLASHSALE_UNKNOWN_SKU_TTL must be above zero".into());
        }
        Ok(())
    }
}
