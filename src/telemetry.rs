//! Tracing (text or JSON logs, and OpenTelemetry traces when an OTLP endpoint is set) and the
//! Prometheus metrics recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, OtelConfig, TelemetryConfig, TraceExport};

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"))
}

/// Logs to stderr; `RUST_LOG` filters (default: info, sqlx quieter). With an OTLP endpoint
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, see `OtelConfig`), spans are also exported as OpenTelemetry
/// traces; without one the subscriber is exactly the logging one, and the trace-only spans
/// (`redis.script`, `mysql.transaction`, at debug level) stay disabled at their call sites
/// (unless `RUST_LOG` asks for debug).
pub fn init_tracing(cfg: &TelemetryConfig, otel: &OtelConfig) -> anyhow::Result<()> {
    let Some(export) = otel.traces().map_err(anyhow::Error::msg)? else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .with_writer(std::io::stderr);
        let _ = match cfg.log_format {
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
            LogFormat::Text => builder.try_init(),
        };
        return Ok(());
    };
    let provider = trace_provider(&export)?;
    let logs = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("flashsale"))
        // Parents from the tracing span tree (the one the logs show), not from OpenTelemetry's
        // thread-local context: request handlers and workers share threads across awaits.
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false);
    let installed = tracing_subscriber::registry()
        .with(TraceAware(log_filter()))
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if !installed {
        // Another subscriber was there first (a test harness): nothing would reach ours.
        let _ = provider.shutdown();
        return Ok(());
    }
    let _ = TRACES.set(Traces {
        provider,
        timeout: export.timeout,
    });
    tracing::info!(endpoint = %export.endpoint_for_logs(), service.name = %export.service_name,
        "exporting traces (OTLP/HTTP)");
    for w in &export.warnings {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// The one filter of the traced subscriber: what `RUST_LOG` enables (logs, and the same events
/// and spans for the traces), plus the service's own spans from debug up (each Lua script call,
/// each MySQL transaction), which the logs only show as the context of their lines. One global
/// filter rather than one per layer: tracing-subscriber's per-layer filters lost spans here
/// (a request's or a write-back's span now and then missing from the export).
struct TraceAware(EnvFilter);

impl TraceAware {
    fn traced_span(m: &tracing::Metadata<'_>) -> bool {
        m.is_span() && m.target().starts_with("flashsale") && *m.level() <= tracing::Level::DEBUG
    }
}

impl<S> tracing_subscriber::Layer<S> for TraceAware
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        m: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if Self::traced_span(m) {
            return tracing::subscriber::Interest::always();
        }
        tracing_subscriber::Layer::<S>::register_callsite(&self.0, m)
    }

    fn enabled(
        &self,
        m: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        Self::traced_span(m) || tracing_subscriber::Layer::<S>::enabled(&self.0, m, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let logs = tracing_subscriber::Layer::<S>::max_level_hint(&self.0);
        Some(
            logs.map_or(tracing::level_filters::LevelFilter::TRACE, |l| {
                l.max(tracing::level_filters::LevelFilter::DEBUG)
            }),
        )
    }

    // The `EnvFilter` follows spans for its span-field directives.
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, ctx)
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_record(id, values, ctx)
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_enter(id, ctx)
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_exit(id, ctx)
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_close(id, ctx)
    }
}

struct Traces {
    provider: SdkTracerProvider,
    timeout: Duration,
}

static TRACES: OnceLock<Traces> = OnceLock::new();

/// Whether spans are exported (an OTLP endpoint is set and the exporter is installed).
pub fn traces_on() -> bool {
    TRACES.get().is_some()
}

/// Batch export (`OTEL_BSP_*`: a bounded queue, 2,048 spans by default; a full queue drops
/// spans rather than slow a request) to the OTLP/HTTP endpoint, in protobuf.
fn trace_provider(x: &TraceExport) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingHttp::new(x.timeout)?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(x.endpoint.clone())
        .with_timeout(x.timeout)
        .build()?;
    let resource = Resource::builder()
        .with_service_name(x.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Exports the spans still queued, waiting at most the export timeout; run at the end of the
/// graceful shutdown. Nothing when traces are off.
pub async fn flush_traces() {
    if let Some(t) = TRACES.get() {
        let provider = t.provider.clone();
        // A thread of its own: the flush blocks, and must not hold the runtime's exit if the
        // collector does not answer.
        run_detached(t.timeout, move || {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "could not export the last spans");
            }
        })
        .await;
    }
}

/// Stops the trace exporter (after `flush_traces`), waiting at most a second.
pub async fn shutdown_traces() {
    if let Some(t) = TRACES.get() {
        let provider = t.provider.clone();
        run_detached(Duration::from_secs(2), move || {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
        })
        .await;
    }
}

async fn run_detached(within: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("otel-flush".into())
        .spawn(move || {
            f();
            let _ = tx.send(());
        });
    if spawned.is_ok() && tokio::time::timeout(within, rx).await.is_err() {
        tracing::warn!("the trace exporter did not finish in time; the spans left are lost");
    }
}

/// The OTLP exporter's HTTP client: reqwest's blocking client (the batch exporter runs on a
/// thread of its own, outside the runtime), with the export timeout and a bounded answer.
#[derive(Debug)]
struct BlockingHttp(reqwest::blocking::Client);

impl BlockingHttp {
    fn new(timeout: Duration) -> anyhow::Result<Self> {
        // Built on a thread of its own: reqwest's blocking client starts a runtime, which
        // cannot be done from inside this one.
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))??;
        Ok(BlockingHttp(client))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        use std::io::Read;
        let (parts, body) = request.into_parts();
        let resp = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let status = resp.status();
        let headers = resp.headers().clone();
        // A collector answers with a few bytes; never hold more than 1 MiB of an answer.
        let mut answer = Vec::new();
        resp.take(1 << 20).read_to_end(&mut answer)?;
        let mut out = opentelemetry_http::Response::builder()
            .status(status)
            .body(opentelemetry_http::Bytes::from(answer))?;
        *out.headers_mut() = headers;
        Ok(out)
    }
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
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("flashsale_reserve_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1000.0],
                    )
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
    metrics::gauge!("flashsale_outbox_partitions_held").set(0.0);
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
    describe_histogram!(
        "flashsale_reserve_batch_size",
        "Reservations of one sku that went together in one script call"
    );
    describe_counter!(
        "flashsale_reserve_unsent_total",
        "Reservations answered without being sent to Redis, by why: gone (the request went away \
         while it waited for its sku's call in flight), waited (it waited the Redis timeout \
         already: 503)"
    );
    describe_counter!(
        "flashsale_sold_out_in_process_total",
        "Adds to cart refused 409 out_of_stock by this instance without asking Redis (the sku \
         known sold out)"
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
    describe_gauge!(
        "flashsale_outbox_partitions_held",
        "Outbox partitions this instance reads (holds the lease of); summed over the instances: 16"
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
