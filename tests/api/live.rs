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
        // The first instance's (the one `app.state` is): on a Redis Cluster the purchases that
        // the stream follows go to both instances in turn.
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

#[tokio::test]
async fn each_script_call_that_changes_stock_announces_once() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    // The one server, or a node of the cluster (a PUBLISH reaches the subscribers of every
    // node; a sharded channel would need the sku's master).
    let url = match cluster_nodes() {
        Some(nodes) => nodes[0].clone(),
        None => app.state.cfg.stores.redis_url.clone(),
    };
    let client = redis::Client::open(url).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe(format!("{}:stock-live", app.prefix))
        .await
        .unwrap();
    let mut msgs = ps.into_on_message();
    let token = app.customer_token(5);
    let cart = |count: u64| app.try_cart_add(&token, sku, count);
    assert_eq!(cart(2).await.status, StatusCode::OK);
    assert_eq!(cart(1).await.status, StatusCode::OK);
    assert_eq!(
        app.delete(&format!("/v1/cart/items/{sku}?count=1"), Some(&token))
            .await
            .status,
        StatusCode::OK
    );
    // A refused add changes nothing and announces nothing.
    assert_eq!(cart(100).await.code(), "out_of_stock");
    assert_eq!(cart(1).await.status, StatusCode::OK);
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), msgs.next()).await {
        got.push(String::from_utf8(m.get_payload_bytes().to_vec()).unwrap());
    }
    assert_eq!(
        got,
        vec![
            format!("{sku} 8"),
            format!("{sku} 7"),
            format!("{sku} 8"),
            format!("{sku} 7")
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
