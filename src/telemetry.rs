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
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist already (a test harness); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_histogram};
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
}
