//! Tracing (text or JSON logs) and the Prometheus metrics recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Logs to stderr; `RUST_LOG` filters (default: info, sqlx quieter).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide metrics recorder (installed once; later calls share it).
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let lua = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("flashsale_http_request_duration_seconds".into()),
                    &latency,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("flashsale_lua_duration_seconds".into()),
                        &lua,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Prefix("flashsale_outbox_".into()), &latency)
                })
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist already (a test harness); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            register_series();
            handle
        })
        .clone()
}

/// Series that exist from the start at zero, so dashboards and `rate()` see them before the
/// first event (labels are the closed sets the code uses).
fn register_series() {
    for kind in ["cart", "order"] {
        for outcome in [
            "reserved",
            "out_of_stock",
            "limit_exceeded",
            "sale_not_active",
        ] {
            metrics::counter!("flashsale_reservations_total", "kind" => kind, "outcome" => outcome)
                .increment(0);
        }
    }
    for reason in [
        "cart_remove",
        "hold_expired",
        "cancelled",
        "expired",
        "failed",
    ] {
        metrics::counter!("flashsale_units_released_total", "reason" => reason).increment(0);
    }
    for status in [
        "new",
        "awaiting_payment",
        "paid",
        "cancelled",
        "expired",
        "failed",
    ] {
        metrics::counter!("flashsale_orders_total", "status" => status).increment(0);
    }
    for outcome in ["ok", "failed", "gave_up"] {
        metrics::counter!("flashsale_webhook_deliveries_total", "outcome" => outcome).increment(0);
    }
    for scope in [
        "ip",
        "customer",
        "login_ip",
        "login_user_address",
        "login_user",
    ] {
        metrics::counter!("flashsale_rate_limited_total", "scope" => scope).increment(0);
    }
    for step in ["renew", "bind", "answer"] {
        metrics::counter!("flashsale_idempotency_lease_lost_total", "step" => step).increment(0);
    }
    for kind in crate::worker::writer::RETRY_KINDS {
        metrics::counter!("flashsale_outbox_retries_total", "error" => kind).increment(0);
    }
    for reason in ["unparseable", "collision"] {
        metrics::counter!("flashsale_outbox_set_aside_total", "reason" => reason).increment(0);
    }
    metrics::gauge!("flashsale_outbox_failing_events").set(0.0);
    for name in [
        "flashsale_rate_limit_errors_total",
        "flashsale_http_overloaded_total",
        "flashsale_http_internal_errors_total",
        "flashsale_outbox_claimed_total",
        "flashsale_order_id_collisions_total",
        "flashsale_order_ids_restored_total",
        "flashsale_stock_adjustments_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "flashsale_http_requests_total",
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        "flashsale_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency, by method and route"
    );
    describe_histogram!(
        "flashsale_lua_duration_seconds",
        metrics::Unit::Seconds,
        "Round trip of one Lua script call, by script"
    );
    describe_counter!(
        "flashsale_lua_errors_total",
        "Lua script calls that failed (Redis down, script error), by script"
    );
    describe_counter!(
        "flashsale_reservations_total",
        "Reservation attempts by kind (cart, order) and outcome"
    );
    describe_counter!(
        "flashsale_orders_total",
        "Order status transitions, by the status reached"
    );
    describe_counter!(
        "flashsale_units_released_total",
        "Units given back to available, by reason"
    );
    describe_counter!(
        "flashsale_http_internal_errors_total",
        "Answers with status 500"
    );
    describe_counter!("flashsale_logins_total", "Token requests, by outcome");
    describe_counter!(
        "flashsale_rate_limited_total",
        "Requests refused with 429 rate_limited, by the bucket that refused them"
    );
    describe_counter!(
        "flashsale_rate_limit_errors_total",
        "Rate-limit checks that could not ask Redis (sale routes: let through; logins and \
         sign-ups: refused with 503)"
    );
    describe_counter!(
        "flashsale_idempotency_lease_lost_total",
        "Idempotency-Key leases found taken by another request while their holder still worked, \
         by the step that found it (renew, bind, answer)"
    );
    describe_counter!(
        "flashsale_http_overloaded_total",
        "Requests refused with 503 because the in-flight cap was reached"
    );
    describe_counter!(
        "flashsale_stock_adjustments_total",
        "Admin stock changes applied"
    );
    describe_gauge!(
        "flashsale_stock_units",
        "Units of skus whose sale is open, by bucket (available, held, reserved, sold)"
    );
    describe_gauge!(
        "flashsale_outbox_length",
        "Outbox events not yet written to MySQL"
    );
    describe_gauge!(
        "flashsale_outbox_pending",
        "Outbox events delivered to a writer and not yet acknowledged"
    );
    describe_gauge!(
        "flashsale_outbox_oldest_age_seconds",
        "Age of the oldest outbox event not yet written"
    );
    describe_histogram!(
        "flashsale_outbox_lag_seconds",
        metrics::Unit::Seconds,
        "From an order decision in Redis to its row in MySQL"
    );
    describe_histogram!(
        "flashsale_outbox_write_duration_seconds",
        metrics::Unit::Seconds,
        "One write-back transaction"
    );
    describe_counter!(
        "flashsale_outbox_events_written_total",
        "Events written back, by type"
    );
    describe_counter!(
        "flashsale_outbox_retries_total",
        "Write-back attempts that failed and will be retried, by error kind"
    );
    describe_gauge!(
        "flashsale_outbox_failing_events",
        "Events of this instance that failed on their own and wait for their next attempt"
    );
    describe_counter!(
        "flashsale_outbox_set_aside_total",
        "Events set aside because they can never be written, by reason"
    );
    describe_gauge!(
        "flashsale_outbox_set_aside",
        "Events in the set-aside streams, waiting for an operator (flashsale outbox-dead)"
    );
    describe_counter!(
        "flashsale_order_id_collisions_total",
        "Outbox events whose order id MySQL holds for another order (set aside, not merged)"
    );
    describe_counter!(
        "flashsale_order_ids_restored_total",
        "Times the order id counter was found missing (Redis lost data) and raised from MySQL"
    );
    describe_counter!(
        "flashsale_outbox_claimed_total",
        "Events taken over from a consumer that stopped"
    );
    describe_gauge!(
        "flashsale_mysql_pool_connections",
        "MySQL pool connections, by state"
    );
    describe_gauge!(
        "flashsale_mysql_pool_max_connections",
        "MySQL pool size limit"
    );
    describe_gauge!(
        "flashsale_redis_pool_connections",
        "Dedicated Redis connections (stream readers), by state"
    );
    describe_gauge!(
        "flashsale_redis_pool_max_connections",
        "Dedicated Redis pool size limit"
    );
    describe_counter!(
        "flashsale_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome"
    );
    describe_gauge!(
        "flashsale_live_max_watchers",
        "Live stock streams an instance accepts (FLASHSALE_LIVE_MAX_WATCHERS)"
    );
}
