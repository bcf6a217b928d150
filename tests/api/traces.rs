//! Traces: the service binary, started with `OTEL_EXPORTER_OTLP_ENDPOINT`, sends its spans over
//! OTLP/HTTP (protobuf) to a receiver run by the test; without it (or with the OTel switches
//! off) nothing is sent. The binary runs as a child process: the tracing subscriber is global to
//! a process, and this is how the service really starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode as AxStatus;
use flashsale::config::Config;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;
use crate::helpers::{OwnRedis, Service, eventually, free_port, start_service_env};
use crate::metrics::repo_file;

/// One span as received, with its resource's service name.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    kind: i32,
    start_ns: u64,
    end_ns: u64,
    attrs: HashMap<String, String>,
    /// The span's status: 2 is error.
    status: i32,
}

impl Got {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kv: &[KeyValue]) -> HashMap<String, String> {
    kv.iter().map(|k| (k.key.clone(), text(&k.value))).collect()
}

/// A local OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, decoded and kept.
/// `hang` makes it accept requests and never answer (a collector that is stuck).
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// Requests that arrived, answered or not.
    arrived: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(hang: bool) -> Receiver {
        let requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
        let arrived: Arc<AtomicUsize> = Arc::default();
        let (kept, count) = (requests.clone(), arrived.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let (kept, count) = (kept.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    assert_eq!(
                        headers.get("content-type").unwrap(),
                        "application/x-protobuf"
                    );
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    kept.lock().unwrap().push(req);
                    (
                        AxStatus::OK,
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            requests,
            arrived,
            task,
        }
    }

    fn spans(&self) -> Vec<Got> {
        let mut out = Vec::new();
        for req in self.requests.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .map(|r| attrs(&r.attributes))
                    .and_then(|a| a.get("service.name").cloned())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(Got {
                            service: service.clone(),
                            trace_id: s.trace_id.clone(),
                            span_id: s.span_id.clone(),
                            parent: s.parent_span_id.clone(),
                            name: s.name.clone(),
                            kind: s.kind,
                            start_ns: s.start_time_unix_nano,
                            end_ns: s.end_time_unix_nano,
                            attrs: attrs(&s.attributes),
                            status: s.status.as_ref().map_or(0, |st| st.code),
                        });
                    }
                }
            }
        }
        out
    }

    fn request_count(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The binary on a fresh database and prefix, with the OTEL_* variables of `otel`.
async fn start_traced(otel: &[(&str, String)]) -> (Service, TestApp) {
    start_traced_with(|_| {}, otel).await
}

async fn start_traced_with(
    tweak: impl FnOnce(&mut Config),
    otel: &[(&str, String)],
) -> (Service, TestApp) {
    let (svc, app, _) = start_service_env(tweak, otel).await;
    (svc, app)
}

/// SIGTERM, then waits for the exit (the graceful shutdown flushes the spans) and checks it
/// was a clean one.
async fn stop(svc: &mut Service, within: Duration) {
    svc.signal("-TERM");
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = svc.child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not exit after SIGTERM: {}",
            std::fs::read_to_string(&svc.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn order_status(app: &TestApp, order_id: u64) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = ?")
        .bind(order_id)
        .fetch_optional(&app.state.db)
        .await
        .unwrap()
}

/// `root` and what descends from it, as an indented text tree (docs/OPERATIONS.md's sample).
fn render(spans: &[Got], root: &Got) -> String {
    fn walk(spans: &[Got], s: &Got, depth: usize, t0: u64, out: &mut String) {
        let mut keys: Vec<_> = s
            .attrs
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "code.file.path"
                        | "code.line.number"
                        | "thread.id"
                        | "thread.name"
                        | "code.module.name"
                        | "target"
                        | "busy_ns"
                        | "idle_ns"
                )
            })
            .collect();
        keys.sort();
        let attrs: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "{:>7.3} ms +{:>7.3} ms  {}{}  [{}]\n",
            (s.start_ns - t0) as f64 / 1e6,
            (s.end_ns - s.start_ns) as f64 / 1e6,
            "  ".repeat(depth),
            s.name,
            attrs.join(" ")
        ));
        let mut kids: Vec<&Got> = spans
            .iter()
            .filter(|c| c.parent == s.span_id && c.trace_id == s.trace_id)
            .collect();
        kids.sort_by_key(|c| c.start_ns);
        for c in kids {
            walk(spans, c, depth + 1, t0, out);
        }
    }
    let mut out = format!("trace {}\n", hex(&root.trace_id));
    walk(spans, root, 0, root.start_ns, &mut out);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The spans of `trace` that descend from `root` (itself included).
fn descendants<'a>(spans: &'a [Got], root: &Got) -> Vec<&'a Got> {
    let mut ids = vec![root.span_id.clone()];
    let mut out: Vec<&Got> = Vec::new();
    loop {
        let more: Vec<&Got> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id && ids.contains(&s.parent))
            .filter(|s| !out.iter().any(|o| o.span_id == s.span_id))
            .collect();
        if more.is_empty() {
            return out;
        }
        ids.extend(more.iter().map(|s| s.span_id.clone()));
        out.extend(more);
    }
}

#[tokio::test]
async fn a_buy_now_sends_its_http_redis_and_mysql_spans_to_the_otlp_endpoint() {
    let rx = Receiver::start(false).await;
    let (mut svc, app) = start_traced(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url.clone()),
        ("OTEL_SERVICE_NAME", "flashsale-under-test".into()),
        // Logs at info: the debug-level script and transaction spans are exported anyway.
        ("RUST_LOG", "info".into()),
    ])
    .await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(901);
    let r = app.try_buy_now(&t, sku, 2).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let order_id = r.body["order_id"].as_u64().unwrap();
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let r = app
        .post(
            &format!("/v1/orders/{order_id}/pay"),
            Some(&t),
            json!({"payment_ref": "psp-trace"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // The write-back (the child's own worker) runs its MySQL transaction.
    eventually(
        "the paid order's write-back",
        Duration::from_secs(30),
        || async { order_status(&app, order_id).await.as_deref() == Some("paid") },
    )
    .await;
    assert_eq!(app.available(sku).await, 3);
    app.assert_identity(sku).await;
    stop(&mut svc, Duration::from_secs(30)).await;

    let spans = rx.spans();
    assert!(!spans.is_empty(), "no span arrived");
    assert!(
        spans.iter().all(|s| s.service == "flashsale-under-test"),
        "OTEL_SERVICE_NAME names the resource"
    );
    // The HTTP request: a server span named by route, with the request id and the status.
    let http = spans
        .iter()
        .find(|s| s.attr("request.id") == Some(request_id.as_str()))
        .unwrap_or_else(|| panic!("no span with request.id {request_id}: {spans:#?}"));
    assert_eq!(http.name, "POST /v1/orders/buy-now");
    assert_eq!(http.kind, SpanKind::Server as i32);
    assert_eq!(http.attr("http.request.method"), Some("POST"));
    assert_eq!(http.attr("http.route"), Some("/v1/orders/buy-now"));
    assert_eq!(http.attr("http.response.status_code"), Some("201"));
    assert!(http.parent.is_empty(), "the request span is a root");
    // FLASHSALE_TRACE_SAMPLE=<file>: the trace as text, for the docs.
    if let Ok(path) = std::env::var("FLASHSALE_TRACE_SAMPLE") {
        let mut text = render(&spans, http);
        for pay in spans.iter().filter(|s| s.name.ends_with("/pay")) {
            text.push_str(&render(&spans, pay));
        }
        for b in spans.iter().filter(|s| s.name == "outbox.write_back") {
            text.push_str(&render(&spans, b));
        }
        std::fs::write(path, text).unwrap();
    }
    // Its Lua script calls, in the same trace, under it.
    let under = descendants(&spans, http);
    let scripts: Vec<&str> = under
        .iter()
        .filter(|s| s.name == "redis.script")
        .map(|s| {
            assert_eq!(s.attr("db.system"), Some("redis"));
            assert_eq!(s.kind, SpanKind::Client as i32);
            s.attr("script").unwrap_or("")
        })
        .collect();
    assert!(
        scripts.contains(&"reserve") && scripts.contains(&"create_order"),
        "the buy-now's scripts under its request span: {scripts:?}; {under:#?}"
    );
    // The payment: its decision and its follow-up, under its request span.
    let pay = spans
        .iter()
        .find(|s| s.attr("http.route") == Some("/v1/orders/{order_id}/pay"))
        .expect("the payment's request span");
    let mut under = descendants(&spans, pay);
    under.sort_by_key(|s| s.start_ns);
    let scripts: Vec<&str> = under.iter().filter_map(|s| s.attr("script")).collect();
    assert_eq!(scripts, ["decide_order", "commit_sold"]);
    // The write-back's MySQL transaction, which wrote this order.
    let tx = spans
        .iter()
        .find(|s| {
            s.name == "mysql.transaction" && s.attr("db.operation.name") == Some("write_back")
        })
        .unwrap_or_else(|| panic!("no write-back transaction span: {spans:#?}"));
    assert_eq!(tx.attr("db.system"), Some("mysql"));
    // Under its batch's span; the paid order's batch has its Redis steps beside it.
    let batch = spans
        .iter()
        .find(|s| s.span_id == tx.parent)
        .expect("the write-back's span");
    assert_eq!(batch.name, "outbox.write_back");
    let paid_batch = spans
        .iter()
        .filter(|s| s.name == "outbox.write_back")
        .find(|b| {
            descendants(&spans, b)
                .iter()
                .any(|s| s.attr("script") == Some("mark_written"))
        })
        .expect("the paid order's batch with its Redis follow-up");
    let steps: Vec<&str> = descendants(&spans, paid_batch)
        .iter()
        .map(|s| s.attr("script").unwrap_or(&s.name))
        .collect();
    assert!(
        steps.contains(&"commit_sold") && steps.contains(&"mysql.transaction"),
        "{steps:?}"
    );
    // The admin's stock change: its MySQL transaction under its request span.
    let stock = spans
        .iter()
        .find(|s| s.attr("http.route") == Some("/v1/products/{sku}/stock"))
        .expect("the stock change's request span");
    let under = descendants(&spans, stock);
    assert!(
        under.iter().any(|s| s.name == "mysql.transaction"
            && s.attr("db.operation.name") == Some("adjust_stock")
            && s.attr("db.system") == Some("mysql")),
        "{under:#?}"
    );
}

#[tokio::test]
async fn spans_go_out_in_batches_while_the_service_runs() {
    let rx = Receiver::start(false).await;
    let (mut svc, app) = start_traced(&[
        // A base URL with credentials and a trailing slash, and the batch delay short.
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("{}/", rx.url.replace("http://", "http://user:s3cret@")),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ])
    .await;
    let r = app.get("/v1/products", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    // No shutdown: the batch goes out by itself.
    eventually("the request's span", Duration::from_secs(30), || {
        let found = rx
            .spans()
            .iter()
            .any(|s| s.attr("request.id") == Some(request_id.as_str()));
        async move { found }
    })
    .await;
    let spans = rx.spans();
    let s = spans
        .iter()
        .find(|s| s.attr("request.id") == Some(request_id.as_str()))
        .unwrap();
    assert_eq!(s.name, "GET /v1/products");
    assert_eq!(s.service, "flashsale", "the default service name");
    stop(&mut svc, Duration::from_secs(30)).await;
    // The start log names the endpoint, not its credentials.
    let log = std::fs::read_to_string(&svc.log).unwrap();
    assert!(log.contains("exporting traces"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

#[tokio::test]
async fn nothing_is_sent_when_traces_are_switched_off() {
    let rx = Receiver::start(false).await;
    for off in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_SDK_DISABLED", "TRUE"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let (mut svc, app) = start_traced(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "10".into()),
            (off.0, off.1.into()),
        ])
        .await;
        let sku = app.sale_product(1, None).await;
        let t = app.customer_token(902);
        let r = app.try_buy_now(&t, sku, 1).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        stop(&mut svc, Duration::from_secs(30)).await;
        assert_eq!(rx.request_count(), 0, "{off:?}: something was exported");
    }
}

#[tokio::test]
async fn a_collector_that_never_answers_slows_no_request_and_holds_no_shutdown() {
    let rx = Receiver::start(true).await;
    let (mut svc, app) = start_traced(&[
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", rx.url),
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "10".into()),
        // A small queue, filled at once: the spans that do not fit are dropped.
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4".into()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4".into()),
    ])
    .await;
    let sku = app.sale_product(30, None).await;
    let t = app.customer_token(903);
    for _ in 0..30 {
        let r = app.try_buy_now(&t, sku, 1).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    assert_eq!(app.available(sku).await, 0);
    // The exporter is stuck on the receiver, which saw the export arrive.
    eventually("an export attempt", Duration::from_secs(30), || {
        let n = rx.request_count();
        async move { n > 0 }
    })
    .await;
    // The flush at shutdown gives up after the export timeout: the process still exits.
    stop(&mut svc, Duration::from_secs(30)).await;
}

#[test]
fn the_compose_stack_sends_traces_to_jaeger_and_grafana_reads_them() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("docker-compose.yml")).unwrap();
    let s = &compose["services"];
    assert_eq!(
        s["app"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://jaeger:4318"
    );
    assert!(
        s["jaeger"]["image"]
            .as_str()
            .unwrap()
            .starts_with("jaegertracing/all-in-one:")
    );
    assert_eq!(s["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"], "true");
    let ds: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("grafana/provisioning/datasources/jaeger.yml")).unwrap();
    let ds = &ds["datasources"][0];
    assert_eq!(ds["type"], "jaeger");
    assert_eq!(ds["url"], "http://jaeger:16686");
    let ports: Vec<&str> = s["jaeger"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(ports.contains(&"16686:16686"), "{ports:?}");
}

#[tokio::test]
async fn with_redis_down_the_request_and_script_spans_say_error() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("flashsale-redis-{port}"));
    let mut redis_server = OwnRedis::start(port, &dir).await;
    let url = redis_server.url();
    let rx = Receiver::start(false).await;
    let (mut svc, app) = start_traced_with(
        |c| c.stores.redis_url = url.clone(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url.clone()),
            ("FLASHSALE_REDIS_TIMEOUT", "300ms".into()),
            // The rate limiter's script is the request's first Redis call.
            ("FLASHSALE_RATE_LIMITS", "true".into()),
        ],
    )
    .await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(904);
    redis_server.kill();
    let r = app.try_buy_now(&t, sku, 1).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    stop(&mut svc, Duration::from_secs(60)).await;

    let spans = rx.spans();
    let http = spans
        .iter()
        .find(|s| s.attr("request.id") == Some(request_id.as_str()))
        .expect("the request's span");
    assert_eq!(http.attr("http.response.status_code"), Some("503"));
    assert_eq!(http.status, 2, "a 5xx is an error span");
    let failed: Vec<&str> = descendants(&spans, http)
        .iter()
        .filter(|s| s.name == "redis.script" && s.status == 2)
        .filter_map(|s| s.attr("script"))
        .collect();
    assert!(failed.contains(&"rate_limit"), "{failed:?}");
}
