//! Rate limits settings.

use clap::Args;

/// What one customer, one client address and one username may do per second or minute.
#[derive(Debug, Clone, Args)]
pub struct RateLimitsConfig {
    /// Rate limiting of the sale routes and of logins (token buckets in Redis). Off: no limits.
    /// docs/API.md ("Limits") says what each limit answers.
    #[arg(long, env = "FLASHSALE_RATE_LIMITS", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub rate_limits: bool,

    /// Requests per second one customer may make on the cart and order routes, sustained.
    #[arg(
        long,
        env = "FLASHSALE_RATE_CUSTOMER_PER_SEC",
        default_value_t = 5.0,
        global = true
    )]
    pub rate_customer_per_sec: f64,

    /// Requests one customer may make at once on those routes before the rate applies.
    #[arg(
        long,
        env = "FLASHSALE_RATE_CUSTOMER_BURST",
        default_value_t = 20,
        global = true
    )]
    pub rate_customer_burst: u32,

    /// Requests per second one client address may make on the cart and order routes (shoppers
    /// behind one NAT share it: keep it well above the customer rate).
    #[arg(
        long,
        env = "FLASHSALE_RATE_IP_PER_SEC",
        default_value_t = 200.0,
        global = true
    )]
    pub rate_ip_per_sec: f64,

    /// Burst of one client address on those routes.
    #[arg(
        long,
        env = "FLASHSALE_RATE_IP_BURST",
        default_value_t = 400,
        global = true
    )]
    pub rate_ip_burst: u32,

    /// Login and sign-up attempts per minute from one client address (password hashing is
    /// costly: this also bounds the CPU one address can take).
    #[arg(
        long,
        env = "FLASHSALE_LOGIN_IP_PER_MIN",
        default_value_t = 60.0,
        global = true
    )]
    pub login_ip_per_min: f64,

    /// Failed logins per minute for one username from one client address (an IPv6 address
    /// counts by its /64), after a burst of as many. Guesses from one place never lock the
    /// account out elsewhere.
    #[arg(
        long,
        env = "FLASHSALE_LOGIN_FAILURES_PER_MIN",
        default_value_t = 10.0,
        global = true
    )]
    pub login_failures_per_min: f64,

    /// Failed logins per minute for one username from all addresses together, after a burst of
    /// as many: the ceiling on guessing spread over many addresses (keep it well above
    /// FLASHSALE_LOGIN_FAILURES_PER_MIN: reaching it refuses the owner too).
    #[arg(
        long,
        env = "FLASHSALE_LOGIN_USER_FAILURES_PER_MIN",
        default_value_t = 200.0,
        global = true
    )]
    pub login_user_failures_per_min: f64,

    /// Sign-ups per minute from one client address that find their username taken, after a
    /// burst of as many; past it every sign-up from that address is refused (429), one for a
    /// free name too. Bounds how fast one address learns which usernames exist
    /// (docs/DESIGN.md, "Sign-up and username enumeration").
    #[arg(
        long,
        env = "FLASHSALE_SIGNUP_TAKEN_PER_MIN",
        default_value_t = 10.0,
        global = true
    )]
    pub signup_taken_per_min: f64,
}

impl RateLimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            self.rate_customer_per_sec,
            self.rate_ip_per_sec,
            self.login_ip_per_min,
            self.login_failures_per_min,
            self.login_user_failures_per_min,
            self.signup_taken_per_min,
        ];
        if rates.iter().any(|r| !r.is_finite() || *r <= 0.0) {
            return Err("rate limits must be positive numbers (turn them off with FLASHSALE_RATE_LIMITS=false)".into());
        }
        if self.rate_customer_burst == 0 || self.rate_ip_burst == 0 {
            return Err("rate-limit bursts must be at least 1".into());
        }
        Ok(())
    }
}
