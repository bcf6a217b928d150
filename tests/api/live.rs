//! Live stock over Server-Sent Events: the scripts announce changes, one subscriber per process
//! gathers them, and the streams push them coalesced.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// One event of a stream (a comment-only block has `event == "comment"`).
#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: Value,
}

/// A tiny SSE reader over a reqwest response.
struct SseClient {
    resp: reqwest::Response,
    buf: String,
}

impl SseClient {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> SseClient {
        let r = Self::try_open(app, path, last_event_id).await;
        match r {
            Ok(c) => c,
            Err((status, body)) => panic!("GET {path}: {status} {body}"),
        }
    }

    async fn try_open(
        app: &TestApp,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, (StatusCode, Value)> {
        let client = reqwest::Client::new();
        let mut req = client.get(format!("{}{path}", app.addr));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("stream opened");
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Ok(SseClient {
            resp,
            buf: String::new(),
        })
    }

    /// The next event (or comment), or None when none comes within `within`.
    async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut e = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut comment = true;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        e.event = v.trim().into();
                        comment = false;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        e.id = Some(v.trim().into());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                        comment = false;
                    }
                }
                if comment {
                    e.event = "comment".into();
                    e.data = Value::String(block.trim().into());
                } else {
                    e.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                }
                return Some(e);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?
                .expect("stream read")?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `stock` event (skipping comments), or None within `within`.
    async fn next_stock(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let e = self.next(left).await?;
            if e.event == "stock" {
                return Some(e);
            }
        }
    }

    /// Stock events until one says `available == want`; returns how many came.
    async fn until_available(&mut self, sku: u64, want: i64, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut n = 0;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("sku {sku}: no event with available {want}"));
            let e = self
                .next_stock(left)
                .await
                .unwrap_or_else(|| panic!("sku {sku}: no event with available {want}"));
            if e.data["sku"] == sku {
                n += 1;
                if e.data["available"] == want {
                    return n;
                }
            }
        }
    }
}

async fn buy_now(app: &TestApp, token: &str, sku: u64, count: u64) {
    let r = app.try_buy_now(token, sku, count).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

fn fast(c: &mut flashsale::config::Config) {
    c.live.live_tick = Duration::from_millis(50);
    c.live.live_resync = Duration::from_millis(500);
}

#[tokio::test]
async fn a_sku_stream_starts_with_the_count_and_follows_purchases_and_restocks() {
    let app = spawn_app_with(fast).await;
    let sku = app.sale_product(10, None).await;
    let mut s = SseClient::open(&app, &format!("/v1/products/{sku}/stock/stream"), None).await;
    let first = s.next_stock(Duration::from_secs(5)).await.expect("first");
    assert_eq!(first.data, json!({"sku": sku, "available": 10}));
    assert!(first.id.is_some(), "events have ids");

    let started = Instant::now();
    buy_now(&app, &app.customer_token(1), sku, 3).await;
    let e = s
        .next_stock(Duration::from_secs(2))
        .await
        .expect("an update");
    assert_eq!(e.data, json!({"sku": sku, "available": 7}));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // An admin's restock is announced too.
    let w = app.warehouse("more").await;
    assert_eq!(app.add_stock(sku, w, 5).await.status, StatusCode::OK);
    s.until_available(sku, 12, Duration::from_secs(2)).await;
    // And units coming back from a cancelled order.
    let token = app.customer_token(2);
    let order = app.buy_now(&token, sku, 2).await.order_id;
    s.until_available(sku, 10, Duration::from_secs(2)).await;
    let r = app.try_cancel(&token, order).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    s.until_available(sku, 12, Duration::from_secs(2)).await;
}

/// A RESP3 connection of the test's own to `url` and the pushes it receives (sharded pub/sub
/// has no RESP2 subscriber type in the redis crate).
async fn subscriber(
    url: &str,
) -> (
    redis::aio::MultiplexedConnection,
    tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let info = redis::Client::open(url)
        .unwrap()
        .get_connection_info()
        .clone();
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3)).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .unwrap();
    (conn, rx)
}

/// The messages that arrive within `quiet` of each other: (channel, payload).
async fn messages(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    quiet: Duration,
) -> Vec<(String, String)> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("{other:?}"),
    };
    let mut got = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(quiet, rx.recv()).await {
        if matches!(p.kind, redis::PushKind::Message | redis::PushKind::SMessage) {
            got.push((text(&p.data[0]), text(&p.data[1])));
        }
    }
    got
}

/// The sku's live channel (keys.rs).
fn channel(app: &TestApp, sku: u64) -> String {
    format!("{}:{{sku:{sku}}}:live", app.prefix)
}

#[tokio::test]
async fn each_script_call_that_changes_stock_announces_once_on_its_skus_channel() {
    if skip_on_cluster("subscribes on the one server (the cluster's case is its own test below)") {
        return;
    }
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let other = app.sale_product(10, None).await;
    let (mut conn, mut pushes) = subscriber(&app.state.cfg.stores.redis_url).await;
    redis::cmd("SSUBSCRIBE")
        .arg(channel(&app, sku))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // The deployment-wide channel of earlier versions carries nothing any more.
    redis::cmd("SUBSCRIBE")
        .arg(format!("{}:stock-live", app.prefix))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let token = app.customer_token(5);
    let cart = |sku: u64, count: u64| app.try_cart_add(&token, sku, count);
    assert_eq!(cart(sku, 2).await.status, StatusCode::OK);
    assert_eq!(cart(sku, 1).await.status, StatusCode::OK);
    // Another sku's changes are on its own channel, not subscribed here.
    assert_eq!(cart(other, 4).await.status, StatusCode::OK);
    assert_eq!(
        app.delete(&format!("/v1/cart/items/{sku}?count=1"), Some(&token))
            .await
            .status,
        StatusCode::OK
    );
    // A refused add changes nothing and announces nothing.
    assert_eq!(cart(sku, 100).await.code(), "out_of_stock");
    assert_eq!(cart(sku, 1).await.status, StatusCode::OK);
    let got = messages(&mut pushes, Duration::from_millis(500)).await;
    let ch = channel(&app, sku);
    assert_eq!(
        got,
        vec![
            (ch.clone(), format!("{sku} 8")),
            (ch.clone(), format!("{sku} 7")),
            (ch.clone(), format!("{sku} 8")),
            (ch, format!("{sku} 7")),
        ]
    );
}

#[tokio::test]
async fn rapid_purchases_are_coalesced_into_few_events() {
    let app = spawn_app_with(|c| c.live.live_tick = Duration::from_millis(250)).await;
    let sku = app.sale_product(1_000, None).await;
    let mut s = SseClient::open(&app, &format!("/v1/products/{sku}/stock/stream"), None).await;
    assert_eq!(
        s.next_stock(Duration::from_secs(5)).await.unwrap().data["available"],
        1_000
    );
    let buys = futures::stream::iter(0..200u64)
        .map(|i| {
            let app = &app;
            async move {
                let r = app
                    .post(
                        "/v1/cart/items",
                        Some(&app.customer_token(100 + i)),
                        json!({"sku": sku, "count": 1}),
                    )
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let started = Instant::now();
    let (_, events) = tokio::join!(buys, s.until_available(sku, 800, Duration::from_secs(30)));
    let ticks = started.elapsed().as_millis() / 250 + 2;
    assert!(
        events as u128 <= ticks && events < 50,
        "200 purchases in {:?} gave {events} events",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_quiet_stream_sends_heartbeats() {
    let app = spawn_app_with(|c| c.live.live_heartbeat = Duration::from_millis(200)).await;
    let sku = app.sale_product(3, None).await;
    let mut s = SseClient::open(&app, &format!("/v1/products/{sku}/stock/stream"), None).await;
    assert_eq!(s.next(Duration::from_secs(5)).await.unwrap().event, "stock");
    let e = s.next(Duration::from_secs(2)).await.expect("a heartbeat");
    assert_eq!(e.event, "comment");
    assert_eq!(e.data, ": heartbeat");
    let e = s.next(Duration::from_secs(2)).await.expect("another");
    assert_eq!(e.event, "comment");
}

#[tokio::test]
async fn the_live_sales_stream_lists_open_and_upcoming_sales_then_follows_them() {
    let app = spawn_app_with(fast).await;
    let open = app.sale_product(10, Some(2)).await;
    let upcoming = app.product("Next drop", 30_000).await;
    let w = app.warehouse("upcoming").await;
    app.add_stock(upcoming, w, 4).await;
    let now = chrono::Utc::now();
    let r = app
        .put(
            &format!("/v1/products/{upcoming}/sale"),
            Some(&app.admin_token),
            json!({
                "sale_price": 20_000,
                "starts_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
                "ends_at": (now + chrono::Duration::hours(2)).to_rfc3339(),
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let _plain = app.product("Not on sale", 100).await;

    let mut s = SseClient::open(&app, "/v1/sales/live", None).await;
    let snap = s.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(snap.event, "snapshot");
    assert!(snap.data["server_time"].is_string(), "{:?}", snap.data);
    let sales = snap.data["sales"].as_array().unwrap();
    let skus: Vec<u64> = sales.iter().map(|p| p["sku"].as_u64().unwrap()).collect();
    assert_eq!(skus, vec![open, upcoming], "soonest start first");
    assert_eq!(sales[0]["available"], 10);
    assert_eq!(sales[0]["sale"]["active"], true);
    assert_eq!(sales[0]["sale"]["per_customer_limit"], 2);
    assert_eq!(sales[1]["available"], 4);
    assert_eq!(sales[1]["sale"]["active"], false);
    assert_eq!(sales[1]["name"], "Next drop");

    buy_now(&app, &app.customer_token(1), open, 2).await;
    let e = s.next_stock(Duration::from_secs(2)).await.expect("stock");
    assert_eq!(e.data, json!({"sku": open, "available": 8}));

    // A sale added while watching: a new snapshot within the resync interval.
    let later = app.sale_product(6, None).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("a new snapshot");
        let e = s.next(left).await.expect("a new snapshot");
        if e.event == "snapshot" {
            let skus: Vec<u64> = e.data["sales"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["sku"].as_u64().unwrap())
                .collect();
            assert!(skus.contains(&later), "{skus:?}");
            break;
        }
    }
    buy_now(&app, &app.customer_token(2), later, 1).await;
    s.until_available(later, 5, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn unknown_and_malformed_skus_are_refused() {
    let app = spawn_app().await;
    let r = app.get("/v1/products/424242/stock/stream", None).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    let r = app.get("/v1/products/0/stock/stream", None).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    // Nothing stays counted as watching.
    assert_eq!(app.state.live.watchers(), 0);
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_the_current_count_first() {
    let app = spawn_app_with(fast).await;
    let sku = app.sale_product(10, None).await;
    let path = format!("/v1/products/{sku}/stock/stream");
    let mut s = SseClient::open(&app, &path, None).await;
    s.next_stock(Duration::from_secs(5)).await.unwrap();
    buy_now(&app, &app.customer_token(1), sku, 1).await;
    let e = s.next_stock(Duration::from_secs(2)).await.unwrap();
    assert_eq!(e.data["available"], 9);
    let last_id = e.id.clone().unwrap();
    drop(s);
    // Missed while away.
    buy_now(&app, &app.customer_token(2), sku, 2).await;
    buy_now(&app, &app.customer_token(3), sku, 3).await;
    let mut s = SseClient::open(&app, &path, Some(&last_id)).await;
    let e = s.next_stock(Duration::from_secs(2)).await.unwrap();
    assert_eq!(e.data, json!({"sku": sku, "available": 4}));
    let id: u64 = e.id.unwrap().parse().unwrap();
    assert!(id >= last_id.parse::<u64>().unwrap(), "ids do not go back");
}

#[tokio::test]
async fn streams_beyond_the_cap_are_refused_with_503() {
    let app = spawn_app_with(|c| c.live.live_max_watchers = 2).await;
    let sku = app.sale_product(3, None).await;
    let path = format!("/v1/products/{sku}/stock/stream");
    let a = SseClient::open(&app, &path, None).await;
    let _b = SseClient::open(&app, "/v1/sales/live", None).await;
    let Err((status, body)) = SseClient::try_open(&app, &path, None).await else {
        panic!("a third stream was let in");
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "unavailable");
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.state.live.watchers() > 1 {
        assert!(
            Instant::now() < deadline,
            "the closed stream is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = SseClient::open(&app, &path, None).await;
    assert_eq!(
        c.next_stock(Duration::from_secs(5)).await.unwrap().data["available"],
        3
    );
}

#[tokio::test]
async fn streams_carry_cors_headers_for_allowed_origins() {
    let app = spawn_app_with(|c| c.http.cors_origins = vec!["https://shop.example".into()]).await;
    let sku = app.sale_product(3, None).await;
    for path in [
        format!("/v1/products/{sku}/stock/stream"),
        "/v1/sales/live".into(),
    ] {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", app.addr))
            .header("origin", "https://shop.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://shop.example",
            "{path}"
        );
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams_at_once() {
    let app = spawn_app().await;
    let sku = app.sale_product(3, None).await;
    // A second instance on the same stores, whose shutdown this test drives.
    let mut cfg = (*app.state.cfg).clone();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.http.shutdown_grace = Duration::from_secs(30);
    let server = flashsale::startup::Application::build(cfg).await.unwrap();
    let addr = format!("http://127.0.0.1:{}", server.port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until(async {
        let _ = rx.await;
    }));
    let mut resp = reqwest::Client::new()
        .get(format!("{addr}/v1/products/{sku}/stock/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(
        std::str::from_utf8(&first)
            .unwrap()
            .contains("event: stock")
    );
    let started = Instant::now();
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the shutdown does not wait for the stream's grace period")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    // The stream ended cleanly.
    let rest = tokio::time::timeout(Duration::from_secs(2), resp.chunk()).await;
    assert!(matches!(rest, Ok(Ok(None)) | Ok(Err(_))), "{rest:?}");
}

/// Opens a stream as the client at `ip` (the app trusts X-Forwarded-For in these tests).
async fn open_as(app: &TestApp, path: &str, ip: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", app.addr))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .expect("answered")
}

#[tokio::test]
async fn one_address_cannot_take_every_stream_slot() {
    let app = spawn_app_with(|c| {
        fast(c);
        c.live.live_max_watchers = 6;
        c.live.live_max_per_client = 3;
        c.http.trust_forwarded_for = true;
    })
    .await;
    let sku = app.sale_product(3, None).await;
    let sku_path = format!("/v1/products/{sku}/stock/stream");
    // The greedy client tries to take every slot of the instance.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..6 {
        let path = if i % 2 == 0 {
            sku_path.as_str()
        } else {
            "/v1/sales/live"
        };
        let r = open_as(&app, path, "10.9.9.9").await;
        match r.status() {
            StatusCode::OK => held.push(r),
            StatusCode::TOO_MANY_REQUESTS => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited");
                refused += 1;
            }
            other => panic!("{path}: {other}"),
        }
    }
    assert_eq!((held.len(), refused), (3, 3));
    assert_eq!(
        app.state.live.watchers(),
        3,
        "refused streams are not counted"
    );
    // Everyone else still gets the live sales page, with the product.
    let r = open_as(&app, "/v1/sales/live", "10.8.8.8").await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut other = SseClient {
        resp: r,
        buf: String::new(),
    };
    let snap = other
        .next(Duration::from_secs(5))
        .await
        .expect("a snapshot");
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.data["sales"][0]["sku"], sku);
    // A stream closed by the greedy client frees its place for it.
    drop(held.pop());
    let ip: std::net::IpAddr = "10.9.9.9".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.state.live.client_watchers(ip) > 2 {
        assert!(
            Instant::now() < deadline,
            "the closed stream is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        open_as(&app, &sku_path, "10.9.9.9").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn opening_streams_takes_from_the_address_rate_bucket() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.limits.rate_ip_burst = 3;
        c.limits.rate_ip_per_sec = 0.01;
    })
    .await;
    let sku = app.sale_product(3, None).await;
    for path in [
        "/v1/sales/live".to_string(),
        format!("/v1/products/{sku}/stock/stream"),
        "/v1/sales/live".to_string(),
    ] {
        // Opened and closed at once: reconnect loops are what the bucket is for.
        let r = app.get(&path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    let r = app.get("/v1/sales/live", None).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "");
    assert!(r.headers.contains_key("retry-after"));
    // Unknown skus are no way around it.
    let r = app.get("/v1/products/4000000000/stock/stream", None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
}

#[tokio::test]
async fn an_open_stream_outlives_the_request_deadline() {
    let app = spawn_app_with(|c| {
        fast(c);
        c.http.request_timeout = Duration::from_secs(1);
    })
    .await;
    let sku = app.sale_product(5, None).await;
    let mut s = SseClient::open(&app, &format!("/v1/products/{sku}/stock/stream"), None).await;
    assert_eq!(
        s.next_stock(Duration::from_secs(5)).await.unwrap().data["available"],
        5
    );
    // Past the per-request deadline, the stream still follows purchases.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, token) = app.register("late-buyer").await;
    buy_now(&app, &token, sku, 1).await;
    s.until_available(sku, 4, Duration::from_secs(5)).await;
}

/// The Redis servers a deployment's subscribers may be on: the one server, or every node of
/// the cluster.
fn servers(app: &TestApp) -> Vec<String> {
    let stores = &app.state.cfg.stores;
    if stores.redis_cluster_nodes.is_empty() {
        vec![stores.redis_url.clone()]
    } else {
        cluster_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

/// The test cluster's six ports (scripts/redis-cluster: 3 masters, 3 replicas): from the first
/// seed of FLASHSALE_TEST_REDIS_CLUSTER, else the script's default first port.
fn cluster_ports() -> Vec<u16> {
    let first = cluster_nodes()
        .and_then(|n| {
            n.first()?
                .rsplit(':')
                .next()?
                .trim_end_matches('/')
                .parse()
                .ok()
        })
        .unwrap_or(7101u16);
    (first..first + 6).collect()
}

/// The first seed of the test cluster.
fn cluster_seed() -> String {
    format!("redis://127.0.0.1:{}", cluster_ports()[0])
}

async fn server(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Subscribers of the sku's channel, on every server of the deployment.
async fn subscribers(app: &TestApp, sku: u64) -> u64 {
    let mut n = 0;
    for url in servers(app) {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel(app, sku))
            .query_async(&mut server(&url).await)
            .await
            .unwrap();
        n += count;
    }
    n
}

/// The live feed's connections (`CLIENT LIST` name `flashsale-live:<prefix>`): (server, id).
async fn feed_connections(app: &TestApp) -> Vec<(String, u64)> {
    let name = format!("name=flashsale-live:{} ", app.prefix);
    let mut found = Vec::new();
    for url in servers(app) {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut server(&url).await)
            .await
            .unwrap();
        for line in list.lines().filter(|l| l.contains(&name)) {
            let id = line
                .split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .unwrap()
                .parse()
                .unwrap();
            found.push((url.clone(), id));
        }
    }
    found
}

/// An instance subscribes the channels of the skus it follows, and only those: a sku's stream
/// opened subscribes it, closed lets it go; a sku nobody here watches costs this instance
/// nothing of its changes until it is seen sold out.
async fn subscribes_only_what_it_follows(app: &TestApp) {
    let watched = app.sale_product(10, None).await;
    let unwatched = app.sale_product(10, None).await;
    let mut s = SseClient::open(app, &format!("/v1/products/{watched}/stock/stream"), None).await;
    assert_eq!(
        s.next_stock(Duration::from_secs(5)).await.unwrap().data["available"],
        10
    );
    eventually(
        "the watched sku subscribed",
        Duration::from_secs(5),
        || async { subscribers(app, watched).await == 1 },
    )
    .await;
    buy_now(app, &app.customer_token(1), unwatched, 2).await;
    buy_now(app, &app.customer_token(2), watched, 3).await;
    s.until_available(watched, 7, Duration::from_secs(5)).await;
    assert_eq!(
        subscribers(app, unwatched).await,
        0,
        "a sku nobody watches here is not subscribed"
    );
    drop(s);
    eventually(
        "the closed stream's sku let go",
        Duration::from_secs(5),
        || async { subscribers(app, watched).await == 0 },
    )
    .await;
    // Seen sold out (the last units taken here): subscribed for the sold-out knowledge, which
    // trusts it once the subscription is confirmed and the count read.
    let s = flashsale::domain::Sku::parse(unwatched).unwrap();
    app.cart_add(&app.customer_token(3), unwatched, 8).await;
    eventually("the sold-out sku known", Duration::from_secs(5), || async {
        app.state.sold_out.is_known(s)
    })
    .await;
    assert_eq!(subscribers(app, unwatched).await, 1);
}

#[tokio::test]
async fn an_instance_subscribes_only_the_skus_it_follows() {
    if skip_on_cluster(
        "checks one instance's subscriptions, and the harness runs two there; it runs in the single-Redis pass (the cluster's own case against the test cluster)",
    ) {
        return;
    }
    let app = spawn_app_with(fast).await;
    subscribes_only_what_it_follows(&app).await;
}

/// A sku learnt sold out from a reservation's reply before its channel was subscribed: a unit
/// given back between that reply and the subscription was announced to nobody here, so the
/// reply is not trusted; the count read after the subscription's confirmation is what teaches.
/// (Here the stale reply is handed to the knowledge directly, as a request that asked before
/// the subscription would have.)
#[tokio::test]
async fn sold_out_knowledge_is_not_trusted_before_its_subscription() {
    let app = spawn_app_with(|c| c.sale.sold_out_trust = Duration::from_secs(60)).await;
    let sku = app.sale_product(1, None).await;
    let s = flashsale::domain::Sku::parse(sku).unwrap();
    let sold_out = &app.state.sold_out;
    assert_eq!(subscribers(&app, sku).await, 0);
    let flashsale::service::sold_out::Check::Ask(asked) = sold_out.check(s) else {
        panic!("refused before anything was known");
    };
    // Redis answered "none left" a moment ago; the unit has come back since.
    sold_out.reply(
        s,
        asked,
        0,
        Some(flashsale::store::redis::SoldOutFor::Unbounded),
    );
    assert!(!sold_out.is_known(s), "trusted before its subscription");
    // The reply made the sku wanted: subscribed, confirmed and read (one unit).
    eventually("the sku subscribed", Duration::from_secs(5), || async {
        subscribers(&app, sku).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !sold_out.is_known(s),
        "the read after the confirmation saw the unit"
    );
    let token = app.customer_token(11);
    let r = app.try_cart_add(&token, sku, 1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Sold out under the subscription: trusted from the reply (or its announcement) on.
    eventually("sold out known", Duration::from_secs(5), || async {
        sold_out.is_known(s)
    })
    .await;
    let before = sold_out.refused();
    app.try_cart_add(&app.customer_token(12), sku, 1)
        .await
        .assert_error(StatusCode::CONFLICT, "out_of_stock", "sold out");
    assert_eq!(sold_out.refused() - before, 1, "answered in process");
}

/// A unit put straight into Redis, announced to nobody (as an announcement lost would leave
/// it): the instance cannot know, and keeps refusing within its trust window.
async fn unit_unannounced(app: &TestApp, sku: u64) {
    let stock = format!("{}:{{sku:{sku}}}:stock", app.prefix);
    let mut conn = app.state.redis.conn();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&stock)
        .query_async(&mut conn)
        .await
        .unwrap();
    let w = fields.iter().find(|f| f.starts_with('w')).unwrap();
    redis::pipe()
        .hincr(&stock, w, 1)
        .hincr(&stock, "avail", 1)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// The live feed's connection is cut: what the instance knew of its skus is forgotten (the
/// announcements made meanwhile are lost), and the new subscription reads each sku afresh.
/// With a trust window and a resync interval of a minute, only that can end a zero the
/// instance never heard ended.
async fn a_lost_subscription_forgets_and_resyncs(app: &TestApp) {
    let sku = app.sale_product(1, None).await;
    let s = flashsale::domain::Sku::parse(sku).unwrap();
    let mut stream = SseClient::open(app, &format!("/v1/products/{sku}/stock/stream"), None).await;
    assert_eq!(
        stream
            .next_stock(Duration::from_secs(5))
            .await
            .unwrap()
            .data["available"],
        1
    );
    app.cart_add(&app.customer_token(21), sku, 1).await;
    stream.until_available(sku, 0, Duration::from_secs(5)).await;
    eventually("sold out known", Duration::from_secs(5), || async {
        app.state.sold_out.is_known(s)
    })
    .await;
    unit_unannounced(app, sku).await;
    let buyer = app.customer_token(22);
    app.try_cart_add(&buyer, sku, 1).await.assert_error(
        StatusCode::CONFLICT,
        "out_of_stock",
        "not heard: still known",
    );
    // Cut the feed's connection (on a cluster, the one to the sku's node), as a dropped
    // connection or a Redis restart would.
    let cut = feed_connections(app).await;
    assert!(!cut.is_empty(), "the feed's connection is named");
    for (url, id) in &cut {
        let _: Result<(), _> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut server(url).await)
            .await;
    }
    // The new subscription's read finds the unit: the stream shows it, and the knowledge
    // (read by the same read, trusted for a minute before) sells it at once.
    let started = Instant::now();
    stream
        .until_available(sku, 1, Duration::from_secs(10))
        .await;
    println!("read afresh {:?} after the cut", started.elapsed());
    let r = app.try_cart_add(&buyer, sku, 1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    stream.until_available(sku, 0, Duration::from_secs(5)).await;
    let now = feed_connections(app).await;
    assert!(
        now.iter().all(|c| !cut.contains(c)),
        "a new connection: {cut:?} -> {now:?}"
    );
    assert_eq!(subscribers(app, sku).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_forgets_what_it_knew_and_reads_afresh() {
    if skip_on_cluster(
        "checks one instance's subscriptions, and the harness runs two there; it runs in the single-Redis pass (the cluster's own case against the test cluster)",
    ) {
        return;
    }
    let app = spawn_app_with(|c| {
        fast(c);
        c.live.live_resync = Duration::from_secs(60);
        c.sale.sold_out_trust = Duration::from_secs(60);
    })
    .await;
    a_lost_subscription_forgets_and_resyncs(&app).await;
}

/// Whether the test cluster answers (scripts/redis-cluster starts it).
async fn cluster_up() -> bool {
    let Ok(client) = redis::Client::open(cluster_seed()) else {
        return false;
    };
    let info = async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async::<String>(&mut c)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), info).await,
        Ok(Some(i)) if i.contains("cluster_state:ok")
    )
}

/// Deletes the test's keys from every master of the test cluster (the test app's drop cleans
/// the one-server Redis only).
async fn drop_cluster_keys(prefix: &str) {
    // Every node: a master after a failover may be any of them (a replica refuses the DEL).
    for port in cluster_ports() {
        let mut c = server(&format!("redis://127.0.0.1:{port}")).await;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .unwrap_or((0, Vec::new()));
            for k in keys {
                let _: Result<(), _> = redis::cmd("DEL").arg(k).query_async(&mut c).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// The same on a Redis Cluster: per-sku channels on the sku's shard, subscribed only for what
/// the instance follows, announcements into the streams and the sold-out knowledge, and a cut
/// connection forgotten and made afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stock_follows_per_sku_channels_on_a_redis_cluster() {
    if skip_on_cluster(
        "checks one instance's subscriptions, and the harness runs two there; it runs in the single-Redis pass (the cluster's own case against the test cluster)",
    ) {
        return;
    }
    if !cluster_up().await {
        eprintln!(
            "SKIPPED without a Redis Cluster: no cluster at {} (scripts/redis-cluster start)",
            cluster_seed()
        );
        return;
    }
    let app = spawn_app_with(|c| {
        fast(c);
        c.live.live_resync = Duration::from_secs(60);
        c.sale.sold_out_trust = Duration::from_secs(60);
        c.stores.redis_cluster_nodes = vec![cluster_seed()];
        c.stores.redis_url = String::new();
    })
    .await;
    subscribes_only_what_it_follows(&app).await;
    a_lost_subscription_forgets_and_resyncs(&app).await;
    let prefix = app.prefix.clone();
    drop(app);
    drop_cluster_keys(&prefix).await;
}

/// A Redis Cluster of the test's own (3 masters, 3 replicas, on free loopback ports, nothing
/// kept on disk), for the failovers a test may not inflict on a shared cluster. Its processes
/// are killed on drop.
struct OwnCluster {
    nodes: Vec<(u16, std::process::Child)>,
    dir: std::path::PathBuf,
}

impl OwnCluster {
    async fn start() -> OwnCluster {
        let dir = std::env::temp_dir().join(format!("fs-cluster-{}", test_names().1));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let (port, bus) = (free_port(), free_port());
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-node-timeout", "1500"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--repl-diskless-sync-delay",
                    "0",
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            nodes.push((port, child));
        }
        let cluster = OwnCluster { nodes, dir };
        for port in cluster.ports() {
            eventually("a node up", Duration::from_secs(10), || async {
                let Ok(c) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                    return false;
                };
                c.get_multiplexed_async_connection().await.is_ok()
            })
            .await;
        }
        let created = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(created.success(), "redis-cli --cluster create");
        for port in cluster.ports() {
            eventually("the cluster formed", Duration::from_secs(20), || async {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut server(&format!("redis://127.0.0.1:{port}")).await)
                    .await
                    .unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
            })
            .await;
            // A replica takes over only with its master's data (its first sync done).
            eventually("replicas in sync", Duration::from_secs(20), || async {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut server(&format!("redis://127.0.0.1:{port}")).await)
                    .await
                    .unwrap_or_default();
                info.contains("role:master") || info.contains("master_link_status:up")
            })
            .await;
        }
        cluster
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    fn seeds(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// SIGKILLs the node on `port`.
    fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Subscribers of `channel` on each node that answers: (port, count).
    async fn subscribers(&self, channel: &str) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for port in self.ports() {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let conn = tokio::time::timeout(
                Duration::from_millis(500),
                client.get_multiplexed_async_connection(),
            )
            .await;
            if let Ok(Ok(mut c)) = conn
                && let Ok((_, n)) = redis::cmd("PUBSUB")
                    .arg("SHARDNUMSUB")
                    .arg(channel)
                    .query_async::<(String, u64)>(&mut c)
                    .await
            {
                out.push((port, n));
            }
        }
        out
    }

    /// The node whose subscriber count of `channel` is 1 (the feed subscribes one node).
    async fn subscribed_on(&self, channel: &str) -> Option<u16> {
        let on: Vec<u16> = self
            .subscribers(channel)
            .await
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(p, _)| p)
            .collect();
        assert!(on.len() <= 1, "subscribed on several nodes: {on:?}");
        on.first().copied()
    }

    /// The port of a replica of the master on `port` (as that master sees it, within a few
    /// seconds: a demoted master shows up as its new master's replica once it has switched).
    async fn replica_of(&self, port: u16) -> u16 {
        let started = Instant::now();
        loop {
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut server(&format!("redis://127.0.0.1:{port}")).await)
                .await
                .unwrap();
            let id = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .and_then(|l| l.split(' ').next())
                .unwrap()
                .to_string();
            let replica = nodes
                .lines()
                .find(|l| l.contains(&format!(" slave {id} ")) && !l.contains("fail"))
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|a| a.split('@').next()?.rsplit(':').next()?.parse().ok());
            if let Some(r) = replica {
                return r;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no replica of {port}: {nodes}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Failovers on a cluster of the test's own: a graceful failover of a sold-out sku's shard
/// (Redis drops the channel on the demoted master: the sku is forgotten and subscribed on the
/// new master), then the new master SIGKILLed (its connection drops: everything known is
/// forgotten at once; the sku is subscribed again on the promoted replica once the failover
/// is done). After each, a unit given back reaches the stream and sells at once. The feed's
/// subscription is on one node throughout: the node that serves the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open (issue 24): passed on its branch, fails after the merge into main waiting for \
            the graceful failover's sku to be forgotten; not yet explained"]
async fn live_stock_follows_a_sku_across_failovers() {
    let mut cluster = OwnCluster::start().await;
    let app = spawn_app_with(|c| {
        fast(c);
        c.live.live_resync = Duration::from_secs(60);
        c.sale.sold_out_trust = Duration::from_secs(60);
        c.stores.redis_cluster_nodes = cluster.seeds();
        c.stores.redis_url = String::new();
    })
    .await;
    let sku = app.sale_product(2, None).await;
    let s = flashsale::domain::Sku::parse(sku).unwrap();
    let ch = channel(&app, sku);
    let mut stream = SseClient::open(&app, &format!("/v1/products/{sku}/stock/stream"), None).await;
    stream.next_stock(Duration::from_secs(5)).await.unwrap();
    let (holder, buyer) = (app.customer_token(41), app.customer_token(42));
    app.cart_add(&holder, sku, 2).await;
    eventually("sold out known", Duration::from_secs(5), || async {
        app.state.sold_out.is_known(s)
    })
    .await;
    let first = cluster.subscribed_on(&ch).await.expect("subscribed");

    // A graceful failover of the shard: its replica takes over.
    let second = cluster.replica_of(first).await;
    let started = Instant::now();
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut server(&format!("redis://127.0.0.1:{second}")).await)
        .await
        .unwrap();
    eventually("forgotten", Duration::from_secs(15), || async {
        !app.state.sold_out.is_known(s)
    })
    .await;
    eventually(
        "subscribed on the new master",
        Duration::from_secs(15),
        || async { cluster.subscribed_on(&ch).await == Some(second) },
    )
    .await;
    println!(
        "subscribed on {second} {:?} after the failover began",
        started.elapsed()
    );
    app.cart_remove(&holder, sku, None).await;
    stream.until_available(sku, 2, Duration::from_secs(5)).await;
    let r = app.try_cart_add(&buyer, sku, 2).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    stream.until_available(sku, 0, Duration::from_secs(5)).await;
    eventually("sold out known again", Duration::from_secs(5), || async {
        app.state.sold_out.is_known(s)
    })
    .await;

    // The new master is SIGKILLed; the demoted one, its replica now, takes over.
    assert_eq!(cluster.replica_of(second).await, first);
    eventually("the replica in sync", Duration::from_secs(15), || async {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut server(&format!("redis://127.0.0.1:{first}")).await)
            .await
            .unwrap_or_default();
        info.contains("master_link_status:up")
    })
    .await;
    let started = Instant::now();
    cluster.kill(second);
    eventually("forgotten at once", Duration::from_secs(2), || async {
        !app.state.sold_out.is_known(s)
    })
    .await;
    println!("forgotten {:?} after the kill", started.elapsed());
    eventually(
        "subscribed on the promoted replica",
        Duration::from_secs(30),
        || async { cluster.subscribed_on(&ch).await == Some(first) },
    )
    .await;
    println!(
        "subscribed on {first} {:?} after the kill",
        started.elapsed()
    );
    // The buyer gives the units back (Redis answers again once the failover is done).
    eventually("the line removed", Duration::from_secs(20), || async {
        app.delete(&format!("/v1/cart/items/{sku}"), Some(&buyer))
            .await
            .status
            == StatusCode::OK
    })
    .await;
    stream.until_available(sku, 2, Duration::from_secs(5)).await;
    let r = app.try_cart_add(&app.customer_token(43), sku, 1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}
