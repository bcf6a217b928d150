//! Every setting, from flags and `FLASHSALE_*` environment variables, with defaults that work on
//! a developer machine (MariaDB/MySQL and Redis on localhost).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "flashsale",
    version,
    about = "A flash-sale back end that cannot oversell"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the HTTP API and its background workers (the default).
    Serve,
    /// Create the database if missing and apply the migrations, then exit.
    Migrate,
    /// Load a demo 12.12 catalog: products, two warehouses, stock, a sale window opening now.
    Seed,
    /// Compare Redis with MySQL per sku; exits 1 on a mismatch.
    Reconcile,
    /// Rebuild Redis from MySQL after Redis lost its data (before the service takes traffic).
    RebuildCache,
    /// Outbox events set aside because they can never be written (unparseable, or an order id
    /// MySQL holds for another order): list, show, replay exactly once.
    OutboxDead {
        #[command(subcommand)]
        action: OutboxDeadAction,
    },
    /// A 12.12 sale from the buyers' side, with a report (against --url, or a service of its own).
    Simulate(crate::simulate::SimulateArgs),
    /// Print customer access tokens signed with FLASHSALE_JWT_SECRET, one a line (load tests).
    MintTokens {
        /// How many.
        #[arg(long, default_value_t = 1_000)]
        count: u64,
        /// The first customer id; the others follow.
        #[arg(long, default_value_t = 1_000_000)]
        first_user_id: u64,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum OutboxDeadAction {
    /// One line per set-aside event: id, when, reason, type, order, error.
    List {
        /// At most this many per partition.
        #[arg(long, default_value_t = 1_000)]
        limit: usize,
    },
    /// One set-aside event in full (JSON), with the event's own fields.
    Show {
        /// The id `list` shows (`<partition>-<ms>-<seq>`).
        id: String,
    },
    /// Put a set-aside event back into its outbox, once; a running writer then writes it.
    Replay {
        /// The id `list` shows.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// MySQL/MariaDB URL; the database is created at start-up when missing.
    #[arg(
        long,
        env = "FLASHSALE_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306/flashsale",
        global = true
    )]
    pub mysql_url: String,

    /// Redis URL.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis key, so several deployments (or tests) share one Redis.
    #[arg(
        long,
        env = "FLASHSALE_REDIS_PREFIX",
        default_value = "fs",
        global = true
    )]
    pub redis_prefix: String,

    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "FLASHSALE_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Production mode: refuses to start without a JWT secret and an admin password.
    #[arg(long, env = "FLASHSALE_PRODUCTION", global = true)]
    pub production: bool,

    /// HS256 secret for access tokens (at least 32 bytes). Generated per run in dev mode.
    #[arg(
        long,
        env = "FLASHSALE_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// How long an access token is valid.
    #[arg(long, env = "FLASHSALE_TOKEN_TTL", default_value = "1h", value_parser = parse_duration, global = true)]
    pub token_ttl: Duration,

    /// Username of the admin account created at start-up when missing.
    #[arg(
        long,
        env = "FLASHSALE_ADMIN_USERNAME",
        default_value = "admin",
        global = true
    )]
    pub admin_username: String,

    /// Password of that admin account. Dev mode falls back to `admin-dev-password`.
    #[arg(
        long,
        env = "FLASHSALE_ADMIN_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub admin_password: Option<String>,

    /// How long a cart line holds its units, from when it was first added (never renewed).
    #[arg(long, env = "FLASHSALE_CART_HOLD_TTL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub cart_hold_ttl: Duration,

    /// How long an order waits for payment before it is cancelled and its units come back.
    #[arg(long, env = "FLASHSALE_PAYMENT_TTL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub payment_ttl: Duration,

    /// How often the sweeper looks for expired reservations.
    #[arg(long, env = "FLASHSALE_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration, global = true)]
    pub sweep_interval: Duration,

    /// How often the sweeper audits its due index against every loaded sku (cheap reads; puts
    /// back what a crash between a reservation and its note left out).
    #[arg(long, env = "FLASHSALE_SWEEP_AUDIT_INTERVAL", default_value = "1m", value_parser = parse_duration, global = true)]
    pub sweep_audit_interval: Duration,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "FLASHSALE_BODY_LIMIT", default_value_t = 16 * 1024, global = true)]
    pub body_limit: usize,

    /// Deadline of one Redis command; past it the request answers 503 `unavailable`.
    #[arg(long, env = "FLASHSALE_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration, global = true)]
    pub redis_timeout: Duration,

    /// Size of the MySQL connection pool.
    #[arg(
        long,
        env = "FLASHSALE_MYSQL_POOL",
        default_value_t = 16,
        global = true
    )]
    pub mysql_pool: u32,

    /// How long a request waits for a MySQL connection before answering 503.
    #[arg(long, env = "FLASHSALE_MYSQL_TIMEOUT", default_value = "3s", value_parser = parse_duration, global = true)]
    pub mysql_timeout: Duration,

    /// Argon2 memory cost in KiB (the OWASP minimum, 19 MiB, by default).
    #[arg(long, env = "FLASHSALE_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024, global = true)]
    pub argon2_memory_kib: u32,

    /// Run the outbox worker (write-back to MySQL) in this serve process.
    #[arg(long, env = "FLASHSALE_WORKER", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub worker: bool,

    /// Outbox events written to MySQL per transaction.
    #[arg(
        long,
        env = "FLASHSALE_WORKER_BATCH",
        default_value_t = 256,
        global = true
    )]
    pub worker_batch: usize,

    /// Outbox events pending this long at another consumer (a crashed instance) are claimed.
    #[arg(long, env = "FLASHSALE_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration, global = true)]
    pub claim_idle: Duration,

    /// How long Redis keeps a finished order's record after it reached MySQL (reads then come
    /// from MySQL).
    #[arg(long, env = "FLASHSALE_ORDER_CACHE_TTL", default_value = "1h", value_parser = parse_duration, global = true)]
    pub order_cache_ttl: Duration,

    /// Entries the public order-events stream keeps (about; whole stream nodes are trimmed):
    /// its memory bound. A consumer further behind than this misses the oldest events.
    #[arg(
        long,
        env = "FLASHSALE_EVENTS_MAX_LEN",
        default_value_t = 100_000,
        global = true
    )]
    pub events_max_len: u64,

    /// Deliver order events to this URL (POST, JSON, HMAC-SHA256 signed). Off when unset.
    #[arg(long, env = "FLASHSALE_WEBHOOK_URL", global = true)]
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

    /// How often state gauges (outbox backlog, pools, stock of open sales) are refreshed.
    #[arg(long, env = "FLASHSALE_METRICS_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub metrics_interval: Duration,

    /// Rate limiting of the sale routes and of logins (token buckets in Redis). Off: no limits.
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
    /// `login_failures_per_min`: reaching it refuses the owner too).
    #[arg(
        long,
        env = "FLASHSALE_LOGIN_USER_FAILURES_PER_MIN",
        default_value_t = 200.0,
        global = true
    )]
    pub login_user_failures_per_min: f64,

    /// Take the client address from the last `X-Forwarded-For` entry (the one your proxy
    /// appended) instead of the TCP peer. Only behind a proxy that sets it.
    #[arg(long, env = "FLASHSALE_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub trust_forwarded_for: bool,

    /// How long an `Idempotency-Key` stays claimed by a request that stops renewing it (its
    /// process died); renewed every third of it while the request works.
    #[arg(long, env = "FLASHSALE_IDEMPOTENCY_LEASE", default_value = "5s", value_parser = parse_duration, global = true)]
    pub idempotency_lease: Duration,

    /// Deadline of a whole request, body included; past it the answer is 408 `request_timeout`.
    #[arg(long, env = "FLASHSALE_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration, global = true)]
    pub request_timeout: Duration,

    /// Requests handled at once; more answer 503 `unavailable` at once (Server-Sent Event
    /// streams do not count).
    #[arg(
        long,
        env = "FLASHSALE_MAX_IN_FLIGHT",
        default_value_t = 4096,
        global = true
    )]
    pub max_in_flight: usize,

    /// Open client connections; beyond it new ones wait in the listen queue.
    #[arg(
        long,
        env = "FLASHSALE_MAX_CONNECTIONS",
        default_value_t = 25_000,
        global = true
    )]
    pub max_connections: usize,

    /// Largest request head (request line and headers) in bytes; larger ones get 431. At least
    /// 8192.
    #[arg(long, env = "FLASHSALE_HEADER_LIMIT", default_value_t = 16 * 1024, global = true)]
    pub header_limit: usize,

    /// How long a client may take to send the request head (slow-client protection).
    #[arg(long, env = "FLASHSALE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub header_timeout: Duration,

    /// Distinct skus in one cart; adding another answers 409 `cart_full`.
    #[arg(
        long,
        env = "FLASHSALE_MAX_CART_LINES",
        default_value_t = 20,
        global = true
    )]
    pub max_cart_lines: usize,

    /// On shutdown, how long in-flight requests and open streams get before they are cut.
    #[arg(long, env = "FLASHSALE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// Origins allowed to call the API from a browser (CORS), comma-separated, each exactly as
    /// browsers send it (`https://shop.example`, `http://localhost:3000`), or `*` for any.
    /// Empty (the default): no CORS headers at all.
    #[arg(
        long,
        env = "FLASHSALE_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,

    /// How long browsers may cache a CORS preflight answer.
    #[arg(long, env = "FLASHSALE_CORS_MAX_AGE", default_value = "1h", value_parser = parse_duration, global = true)]
    pub cors_max_age: Duration,

    /// Live stock streams: changes are gathered and sent at most once per this interval per sku.
    #[arg(long, env = "FLASHSALE_LIVE_TICK", default_value = "250ms", value_parser = parse_duration, global = true)]
    pub live_tick: Duration,

    /// Live stock streams: a heartbeat comment after this much silence.
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

    /// How long a sku MySQL does not know is remembered as unknown (its lookups then cost no
    /// MySQL work). A product created on another instance is found here at most twice this
    /// long after its creation; one created on this instance at once.
    #[arg(long, env = "FLASHSALE_UNKNOWN_SKU_TTL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub unknown_sku_ttl: Duration,

    /// The API's origin when the storefront page (`/`) is served from another origin than the
    /// API (e.g. `https://api.shop.example`); empty (the default): the page calls its own
    /// origin. Fixed at deploy time: the page never takes it from its URL.
    #[arg(
        long,
        env = "FLASHSALE_STOREFRONT_API_ORIGIN",
        default_value = "",
        global = true
    )]
    pub storefront_api_origin: String,

    /// Log format.
    #[arg(long, env = "FLASHSALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Dev fallback for the admin password; never accepted with `--production`.
pub const DEV_ADMIN_PASSWORD: &str = "admin-dev-password";

impl Config {
    /// Settings as the defaults give them, for tests and tools that build a config in code.
    pub fn defaults() -> Self {
        Cli::parse_from(["flashsale"]).config
    }

    /// Checks the settings that must hold before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.production {
            match &self.jwt_secret {
                None => return Err("--production needs FLASHSALE_JWT_SECRET".into()),
                Some(s) if s.len() < 32 => {
                    return Err("FLASHSALE_JWT_SECRET must be at least 32 bytes".into());
                }
                Some(_) => {}
            }
            if self.admin_password.is_none() {
                return Err("--production needs FLASHSALE_ADMIN_PASSWORD".into());
            }
        }
        if self.webhook_url.is_some() && self.webhook_secret.as_deref().is_none_or(str::is_empty) {
            return Err("FLASHSALE_WEBHOOK_URL needs FLASHSALE_WEBHOOK_SECRET".into());
        }
        let rates = [
            self.rate_customer_per_sec,
            self.rate_ip_per_sec,
            self.login_ip_per_min,
            self.login_failures_per_min,
            self.login_user_failures_per_min,
        ];
        if rates.iter().any(|r| !r.is_finite() || *r <= 0.0) {
            return Err("rate limits must be positive numbers (turn them off with FLASHSALE_RATE_LIMITS=false)".into());
        }
        if self.rate_customer_burst == 0 || self.rate_ip_burst == 0 {
            return Err("rate-limit bursts must be at least 1".into());
        }
        if self.header_limit < 8192 {
            return Err("FLASHSALE_HEADER_LIMIT must be at least 8192".into());
        }
        if self.max_in_flight == 0 || self.max_connections == 0 || self.max_cart_lines == 0 {
            return Err(
                "max in-flight requests, connections and cart lines must be at least 1".into(),
            );
        }
        if self.webhook_concurrency == 0 || self.webhook_concurrency > 1024 {
            return Err("FLASHSALE_WEBHOOK_CONCURRENCY must be between 1 and 1024".into());
        }
        if self.idempotency_lease < Duration::from_millis(100) {
            return Err("FLASHSALE_IDEMPOTENCY_LEASE must be at least 100ms".into());
        }
        if self.events_max_len == 0 {
            return Err("FLASHSALE_EVENTS_MAX_LEN must be at least 1".into());
        }
        if self.worker_batch == 0 {
            return Err("the worker batch must be at least 1".into());
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}', ' ']) {
            return Err("the Redis prefix must be non-empty, without braces or spaces".into());
        }
        for (name, d) in [
            ("cart hold ttl", self.cart_hold_ttl),
            ("payment ttl", self.payment_ttl),
            ("sweep interval", self.sweep_interval),
            ("sweep audit interval", self.sweep_audit_interval),
            ("webhook timeout", self.webhook_timeout),
            ("live tick", self.live_tick),
            ("live heartbeat", self.live_heartbeat),
            ("live resync", self.live_resync),
        ] {
            if d.is_zero() {
                return Err(format!("the {name} must be above zero"));
            }
        }
        for origin in self.cors_origins() {
            check_cors_origin(origin)?;
        }
        if self.live_max_per_client == 0 {
            return Err("FLASHSALE_LIVE_MAX_PER_CLIENT must be at least 1".into());
        }
        if self.unknown_sku_ttl.is_zero() {
            return Err("FLASHSALE_UNKNOWN_SKU_TTL must be above zero".into());
        }
        if !self.storefront_api_origin.is_empty() {
            check_api_origin(&self.storefront_api_origin)?;
        }
        Ok(())
    }

    /// The CORS origins, trimmed, without empty entries.
    pub fn cors_origins(&self) -> impl Iterator<Item = &str> {
        self.cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
    }
}

/// `*`, or an origin as browsers send it: `http(s)://host[:port]`, no path, query or slash.
fn check_cors_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "FLASHSALE_CORS_ORIGINS: {origin:?} {why} (expected `*` or an origin like https://shop.example)"
        ))
    };
    if axum::http::HeaderValue::from_str(origin).is_err() {
        return bad("is not a valid header value");
    }
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return bad("is not http:// or https://");
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return bad(
            "must be a scheme and a host (and port) only, without a path or trailing slash",
        );
    }
    match origin.parse::<axum::http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => bad("does not parse as an origin"),
    }
}

/// An origin the storefront page may call (it goes into the page and its Content-Security-
/// Policy): `http(s)://host[:port]`, the host letters, digits, dots and dashes or a bracketed
/// IPv6 address, nothing else.
fn check_api_origin(origin: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "FLASHSALE_STOREFRONT_API_ORIGIN: {origin:?} is not an origin like https://api.shop.example"
        ))
    };
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return bad();
    };
    let port = match rest.strip_prefix('[') {
        Some(v6) => {
            let Some((addr, after)) = v6.split_once(']') else {
                return bad();
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad();
            }
            after
        }
        None => {
            let (host, after) = rest.split_at(rest.find(':').unwrap_or(rest.len()));
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !host_ok {
                return bad();
            }
            after
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
        });
    if port_ok { Ok(()) } else { bad() }
}

/// Parses `500ms`, `30s`, `10m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally() {
        let c = Config::defaults();
        assert_eq!(c.mysql_url, "mysql://root@127.0.0.1:3306/flashsale");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.payment_ttl, Duration::from_secs(600));
        assert_eq!(c.cart_hold_ttl, Duration::from_secs(600));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn production_needs_secrets() {
        let mut c = Config::defaults();
        c.production = true;
        assert!(c.validate().is_err());
        c.jwt_secret = Some("short".into());
        c.admin_password = Some("x".repeat(12));
        assert!(c.validate().is_err());
        c.jwt_secret = Some("k".repeat(32));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cors_origins_are_checked() {
        let mut c = Config::defaults();
        assert!(c.cors_origins.is_empty());
        assert_eq!(c.cors_max_age, Duration::from_secs(3600));
        for ok in [
            "*",
            "https://shop.example",
            "http://localhost:3000",
            " https://a.example ",
        ] {
            c.cors_origins = vec![ok.into()];
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [
            "shop.example",
            "https://shop.example/",
            "https://shop.example/app",
            "ftp://shop.example",
            "https://",
            "https://a.example?x=1",
            "https://*.example",
        ] {
            c.cors_origins = vec![bad.into()];
            assert!(c.validate().is_err(), "{bad}");
        }
        let c = Cli::parse_from([
            "flashsale",
            "--cors-origins",
            "https://a.example,https://b.example",
        ])
        .config;
        assert_eq!(c.cors_origins, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn the_storefront_api_origin_is_an_origin_only() {
        let mut c = Config::defaults();
        for ok in [
            "",
            "https://api.shop.example",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
        ] {
            c.storefront_api_origin = ok.into();
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [
            "*",
            "api.shop.example",
            "https://api.shop.example/",
            "https://a.example/x",
            "https://a.example\"><script>",
            "https://a.example; script-src *",
            "https://a.example:99999",
            "https://a.example:",
            "javascript:alert(1)",
            "https://user@a.example",
            "http://[::1",
            "http://[::1]x",
        ] {
            c.storefront_api_origin = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_without_braces() {
        let mut c = Config::defaults();
        c.redis_prefix = "a{b".into();
        assert!(c.validate().is_err());
    }
}
