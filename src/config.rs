//! Every setting, from flags and `FLASHSALE_*` environment variables, with defaults that work on
//! a developer machine (MariaDB/MySQL and Redis on localhost).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

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

    /// Traces (OpenTelemetry), from the standard OTEL_* variables.
    #[command(flatten)]
    pub otel: OtelConfig,
}

/// The OpenTelemetry settings this service honours, by their standard variable names. Traces
/// are off unless an OTLP endpoint is set; `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none` turn them off again. Other OTEL_* variables (headers, batch
/// queue, sampler, resource attributes) are read by the OpenTelemetry SDK itself.
#[derive(Debug, Clone, Default, Args)]
pub struct OtelConfig {
    /// OTLP/HTTP base URL (e.g. http://collector:4318); traces go to `<it>/v1/traces`. Its
    /// value is never shown (it may carry credentials).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        hide_env_values = true,
        global = true
    )]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// OTLP/HTTP URL for traces, used as it is (wins over the base URL).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        hide_env_values = true,
        global = true
    )]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,

    /// OTLP protocol; only `http/protobuf` (the default) is supported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", global = true)]
    pub otel_exporter_otlp_protocol: Option<String>,

    /// OTLP protocol for traces (wins over OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", global = true)]
    pub otel_exporter_otlp_traces_protocol: Option<String>,

    /// Milliseconds one export may take (default 10000).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", global = true)]
    pub otel_exporter_otlp_timeout: Option<String>,

    /// Milliseconds one trace export may take (wins over OTEL_EXPORTER_OTLP_TIMEOUT).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", global = true)]
    pub otel_exporter_otlp_traces_timeout: Option<String>,

    /// `otlp` (the default) or `none`.
    #[arg(long, env = "OTEL_TRACES_EXPORTER", global = true)]
    pub otel_traces_exporter: Option<String>,

    /// `true` turns every OpenTelemetry export off.
    #[arg(long, env = "OTEL_SDK_DISABLED", global = true)]
    pub otel_sdk_disabled: Option<String>,

    /// The `service.name` of the spans.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "flashsale",
        global = true
    )]
    pub otel_service_name: String,
}

/// Where and how traces are exported (`OtelConfig::traces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceExport {
    /// The full OTLP/HTTP traces URL.
    pub endpoint: String,
    pub service_name: String,
    /// Bound of one export request.
    pub timeout: Duration,
    /// Settings ignored, to be logged once logging is up.
    pub warnings: Vec<String>,
}

impl TraceExport {
    /// The endpoint as the logs may show it: scheme, host, port and path, without credentials
    /// or query.
    pub fn endpoint_for_logs(&self) -> String {
        match self.endpoint.parse::<axum::http::Uri>() {
            Ok(uri) => format!(
                "{}://{}{}{}",
                uri.scheme_str().unwrap_or("?"),
                uri.host().unwrap_or("?"),
                uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default(),
                uri.path()
            ),
            Err(_) => "(unparsable)".into(),
        }
    }
}

impl OtelConfig {
    /// The trace export these settings ask for: `None` when traces are off; an error for a
    /// setting this service cannot honour (a gRPC or JSON protocol, an endpoint that is not an
    /// http(s) URL). Unknown exporter names and bad timeouts are ignored with a warning, as the
    /// OpenTelemetry specification says.
    pub fn traces(&self) -> Result<Option<TraceExport>, String> {
        // Empty variables count as unset, as the OpenTelemetry specification says.
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if set(&self.otel_sdk_disabled).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let mut warnings = Vec::new();
        if let Some(exporters) = set(&self.otel_traces_exporter) {
            let names: Vec<String> = exporters
                .split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .collect();
            if names.iter().any(|e| e == "none") {
                return Ok(None);
            }
            // Unknown values are ignored with a warning (the specification's rule for enums).
            for other in names.iter().filter(|e| *e != "otlp") {
                warnings.push(format!(
                    "OTEL_TRACES_EXPORTER={other:?} is not supported and is ignored (otlp or none)"
                ));
            }
        }
        let endpoint = match (
            set(&self.otel_exporter_otlp_traces_endpoint),
            set(&self.otel_exporter_otlp_endpoint),
        ) {
            (Some(traces), _) => traces,
            // The signal's path goes after the base's path, before any query.
            (None, Some(base)) => match base.split_once('?') {
                Some((path, query)) => {
                    format!("{}/v1/traces?{query}", path.trim_end_matches('/'))
                }
                None => format!("{}/v1/traces", base.trim_end_matches('/')),
            },
            (None, None) => return Ok(None),
        };
        // Never echo credentials (`user:pass@`) into a message.
        let shown = if endpoint.contains('@') {
            "(with credentials, not shown)".to_string()
        } else {
            format!("{endpoint:?}")
        };
        let uri: axum::http::Uri = endpoint
            .parse()
            .map_err(|e| format!("OTLP traces endpoint {shown}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "OTLP traces endpoint {shown} must be an http:// or https:// URL"
            ));
        }
        let protocol = set(&self.otel_exporter_otlp_traces_protocol)
            .or_else(|| set(&self.otel_exporter_otlp_protocol));
        if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
            return Err(format!(
                "OTLP protocol {p:?} is not supported: traces are sent as http/protobuf \
                 (a collector's port 4318)"
            ));
        }
        let timeout = match set(&self.otel_exporter_otlp_traces_timeout)
            .or_else(|| set(&self.otel_exporter_otlp_timeout))
        {
            None => Duration::from_secs(10),
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    warnings.push(format!(
                        "OTLP timeout {ms:?} is not a positive number of milliseconds; \
                         using 10000"
                    ));
                    Duration::from_secs(10)
                }
            },
        };
        let service_name = match self.otel_service_name.trim() {
            "" => "flashsale".to_string(),
            name => name.to_string(),
        };
        Ok(Some(TraceExport {
            endpoint,
            service_name,
            timeout,
            warnings,
        }))
    }
}

/// The settings alone, as a parser (the binary's command line flattens `Config` the same way).
#[derive(Debug, Parser)]
#[command(name = "flashsale")]
struct Settings {
    #[command(flatten)]
    config: Config,
}

/// Dev fallback for the admin password; never accepted with `--production`.
pub const DEV_ADMIN_PASSWORD: &str = "admin-dev-password";

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
        self.otel.traces()?;
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
        let c = Config::parse_from([
            "flashsale",
            "--cors-origins",
            "https://a.example,https://b.example",
        ]);
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

    fn otel(vars: &[(&str, &str)]) -> OtelConfig {
        let mut c = OtelConfig {
            otel_service_name: "flashsale".into(),
            ..OtelConfig::default()
        };
        for (k, v) in vars {
            let v = Some(v.to_string());
            match *k {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => c.otel_exporter_otlp_endpoint = v,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => c.otel_exporter_otlp_traces_endpoint = v,
                "OTEL_EXPORTER_OTLP_PROTOCOL" => c.otel_exporter_otlp_protocol = v,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => c.otel_exporter_otlp_traces_protocol = v,
                "OTEL_EXPORTER_OTLP_TIMEOUT" => c.otel_exporter_otlp_timeout = v,
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" => c.otel_exporter_otlp_traces_timeout = v,
                "OTEL_TRACES_EXPORTER" => c.otel_traces_exporter = v,
                "OTEL_SDK_DISABLED" => c.otel_sdk_disabled = v,
                other => panic!("{other}"),
            }
        }
        c
    }

    fn endpoint(vars: &[(&str, &str)]) -> Option<String> {
        otel(vars).traces().unwrap().map(|t| t.endpoint)
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        assert_eq!(endpoint(&[]), None);
        assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]), None);
        assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]), None);
        let c = Config::defaults();
        assert_eq!(c.otel.otel_service_name, "flashsale");
    }

    #[test]
    fn the_traces_endpoint_follows_the_otlp_conventions() {
        let base = "OTEL_EXPORTER_OTLP_ENDPOINT";
        let traces = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
        for (b, want) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otel.example/base",
                "https://otel.example/base/v1/traces",
            ),
            ("http://c:4318/?k=v", "http://c:4318/v1/traces?k=v"),
        ] {
            assert_eq!(endpoint(&[(base, b)]).as_deref(), Some(want), "{b}");
        }
        // The signal's own URL is used as it is, and wins over the base.
        assert_eq!(
            endpoint(&[(base, "http://a:4318"), (traces, "http://b:9999/custom")]).as_deref(),
            Some("http://b:9999/custom")
        );
        assert_eq!(
            endpoint(&[(base, ""), (traces, "http://b:4318")]).as_deref(),
            Some("http://b:4318")
        );
        for bad in ["collector:4318", "ftp://c/", "http://", "not a url"] {
            assert!(otel(&[(base, bad)]).traces().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_otel_switches_turn_traces_off() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_SDK_DISABLED", "True"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_TRACES_EXPORTER", "NONE"),
        ] {
            assert_eq!(endpoint(&[base, off]), None, "{off:?}");
        }
        for on in [
            ("OTEL_SDK_DISABLED", "false"),
            ("OTEL_SDK_DISABLED", ""),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ] {
            assert!(endpoint(&[base, on]).is_some(), "{on:?}");
        }
        // Unknown values are ignored with a warning, as the specification says.
        let t = otel(&[base, ("OTEL_TRACES_EXPORTER", "zipkin")])
            .traces()
            .unwrap()
            .unwrap();
        assert_eq!(t.warnings.len(), 1);
    }

    #[test]
    fn only_http_protobuf_is_spoken() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert!(endpoint(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_some());
        for p in ["grpc", "http/json"] {
            assert!(
                otel(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", p)])
                    .traces()
                    .is_err()
            );
            assert!(
                otel(&[base, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p)])
                    .traces()
                    .is_err()
            );
        }
        // The traces' own setting wins.
        assert!(
            otel(&[
                base,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ])
            .traces()
            .unwrap()
            .is_some()
        );
        // And a bad one stops the start (validate), rather than sending to the wrong port.
        let mut c = Config::defaults();
        c.otel = otel(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_export_timeout_is_in_milliseconds() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let timeout = |vars: &[(&str, &str)]| {
            let mut all = vec![base];
            all.extend_from_slice(vars);
            otel(&all).traces().unwrap().unwrap()
        };
        assert_eq!(timeout(&[]).timeout, Duration::from_secs(10));
        assert_eq!(
            timeout(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]).timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(
            timeout(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")
            ])
            .timeout,
            Duration::from_millis(700)
        );
        for bad in ["0", "-1", "10s", "18446744073709551616"] {
            let t = timeout(&[("OTEL_EXPORTER_OTLP_TIMEOUT", bad)]);
            assert_eq!(t.timeout, Duration::from_secs(10), "{bad}");
            assert_eq!(t.warnings.len(), 1, "{bad}");
        }
    }

    #[test]
    fn the_endpoint_is_logged_without_credentials() {
        let t = otel(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://user:s3cret@otel.example:4318/base?token=s3cret",
        )])
        .traces()
        .unwrap()
        .unwrap();
        assert_eq!(
            t.endpoint_for_logs(),
            "https://otel.example:4318/base/v1/traces"
        );
        let e = otel(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://user:s3cret@x")])
            .traces()
            .unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn an_empty_service_name_is_the_default() {
        let mut c = otel(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        c.otel_service_name = " ".into();
        assert_eq!(c.traces().unwrap().unwrap().service_name, "flashsale");
    }
}
