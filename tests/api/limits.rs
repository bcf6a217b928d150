//! What one client can take: rate limits, login limits, cart lines, request head size and
//! deadline, body deadline, the in-flight cap, an exhausted MySQL pool, graceful shutdown.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Resp, TestApp, partial_request, spawn_app_with};

fn retry_after(r: &crate::helpers::Resp) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After: {:?}", r.headers))
}

/// Reads what the server sends until it closes the connection or `within` passes.
async fn read_answer(s: &mut TcpStream, within: Duration) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                // One whole answer (head and a JSON body) is enough.
                let text = String::from_utf8_lossy(&buf);
                if let Some(i) = text.find("\r\n\r\n")
                    && text[i..].trim_end().ends_with('}')
                {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_burst_from_one_customer_gets_429_while_others_are_served() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.limits.rate_customer_per_sec = 1.0;
        c.limits.rate_customer_burst = 5;
    })
    .await;
    let sku = app.sale_product(1_000, None).await;
    let (_, greedy) = app.register("greedy").await;
    let (_, polite) = app.register("polite").await;

    let body = json!({"sku": sku, "count": 1});
    let answers = futures::future::join_all(
        (0..20).map(|_| app.post("/v1/cart/items", Some(&greedy), body.clone())),
    )
    .await;
    let ok = answers
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + limited.len(), 20, "only 200s and 429s");
    // The burst, plus at most a token or two refilled while the burst ran.
    assert!((5..=7).contains(&ok), "{ok} served of the burst");
    for r in &limited {
        assert_eq!(r.code(), "rate_limited", "{:?}", r.body);
        assert!(retry_after(r) >= 1);
    }
    // A refused request changed nothing: exactly the served units are held.
    assert_eq!(app.available(sku).await, 1_000 - ok as i64);
    // Another customer, same address, is served at once.
    let r = app
        .post("/v1/cart/items", Some(&polite), body.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Admins are not limited.
    for _ in 0..10 {
        let r = app
            .post("/v1/cart/items", Some(&app.admin_token), body.clone())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    // Public catalog reads are not on the sale limiter.
    for _ in 0..10 {
        let r = app.get(&format!("/v1/products/{sku}"), None).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // The bucket refills: after Retry-After the greedy customer is served again, and the cart
    // holds exactly the units of the served requests.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let cart = app.get("/v1/cart", Some(&greedy)).await;
    assert_eq!(cart.status, StatusCode::OK, "{:?}", cart.body);
    assert_eq!(cart.body["items"][0]["count"], ok as u64);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = app.post("/v1/cart/items", Some(&greedy), body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn one_address_is_limited_across_its_customers() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.limits.rate_ip_per_sec = 0.5;
        c.limits.rate_ip_burst = 3;
    })
    .await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.push(app.register(&format!("shopper{i}")).await.1);
    }
    let mut statuses = Vec::new();
    for t in tokens.iter().chain(tokens.iter()) {
        let r = app.get("/v1/cart", Some(t)).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.code(), "rate_limited");
            assert!(
                r.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("address")
            );
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Without a valid token the address bucket still applies (and is still empty).
    let r = app.get("/v1/cart", Some("not-a-token")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn failed_logins_are_limited_per_username_and_address_and_attempts_per_address() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.limits.login_failures_per_min = 3.0;
        c.limits.login_ip_per_min = 1_000.0;
    })
    .await;
    app.register("victim").await;
    app.register("bystander").await;
    let attempt = |user: &'static str, password: &'static str| {
        app.post(
            "/v1/auth/token",
            None,
            json!({"username": user, "password": password}),
        )
    };
    for _ in 0..3 {
        let r = attempt("victim", "wrong-password").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // The username's failures are used up: even the right password waits now.
    let r = attempt("victim", "victim-password").await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "");
    let wait = retry_after(&r);
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    // Usernames are case-insensitive: another spelling is the same account with the same
    // buckets, so changing case does not buy more guesses.
    for spelling in ["VICTIM", "Victim", "vIcTiM"] {
        let r = attempt(spelling, "wrong-password").await;
        r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", spelling);
    }
    // Other accounts are not affected.
    let r = attempt("bystander", "bystander-password").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // A successful login takes nothing from the username's bucket.
    for _ in 0..5 {
        assert_eq!(
            attempt("bystander", "bystander-password").await.status,
            StatusCode::OK
        );
    }

    // Attempts per address: sign-ups and logins share the bucket.
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.limits.login_ip_per_min = 4.0;
    })
    .await;
    // spawn_app's admin login took one token.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = app
            .post(
                "/v1/users",
                None,
                json!({"username": format!("bot{i}"), "password": "bot-password"}),
            )
            .await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 429]);
    let r = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "bot0", "password": "bot-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // The refused sign-up created nothing.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = 'bot3'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_cart_holds_at_most_max_cart_lines_products() {
    let app = spawn_app_with(|c| c.sale.max_cart_lines = 2).await;
    let skus = [
        app.sale_product(10, None).await,
        app.sale_product(10, None).await,
        app.sale_product(10, None).await,
    ];
    let (_, t) = app.register("collector").await;
    for sku in &skus[..2] {
        app.cart_add(&t, *sku, 1).await;
    }
    let r = app.try_cart_add(&t, skus[2], 3).await;
    r.assert_error(StatusCode::CONFLICT, "cart_full", "");
    assert_eq!(app.available(skus[2]).await, 10, "nothing stays reserved");
    let cart = app.get("/v1/cart", Some(&t)).await;
    assert_eq!(cart.body["items"].as_array().unwrap().len(), 2);
    app.assert_identity(skus[2]).await;
    // More units of a line already there are fine; after removing a line the third fits.
    app.cart_add(&t, skus[0], 2).await;
    app.delete(&format!("/v1/cart/items/{}", skus[1]), Some(&t))
        .await;
    app.cart_add(&t, skus[2], 3).await;
    assert_eq!(app.available(skus[2]).await, 7);
}

#[tokio::test]
async fn oversized_or_slow_request_heads_are_refused() {
    let app = spawn_app_with(|c| {
        c.http.header_limit = 8 * 1024;
        c.http.header_timeout = Duration::from_millis(300);
    })
    .await;
    let r = app
        .client
        .get(format!("{}/healthz", app.addr))
        .header("x-padding", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Normal requests still work.
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);

    // A head that never ends: the connection is closed after the header deadline.
    let port = app.addr.rsplit(':').next().unwrap();
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_answer(&mut s, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a slow head held its connection for {took:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_request_not_complete_in_time_gets_408_and_changes_nothing() {
    let app = spawn_app_with(|c| c.http.request_timeout = Duration::from_millis(400)).await;
    let sku = app.sale_product(10, None).await;
    let (_, t) = app.register("slowpoke").await;
    let body = format!("{{\"sku\": {sku}, \"count\": 1}}");
    let mut s = partial_request(
        &app,
        "POST /v1/cart/items",
        Some(&t),
        body.len(),
        &body.as_bytes()[..5],
    )
    .await;
    let answer = read_answer(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert_eq!(app.available(sku).await, 10);
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_get_503_at_once() {
    let app = spawn_app_with(|c| c.http.max_in_flight = 2).await;
    let body = br#"{"username": "slow-signup", "password": "slow-password"}"#;
    // Two requests whose bodies are still coming hold both slots.
    let mut a = partial_request(&app, "POST /v1/users", None, body.len(), &body[..10]).await;
    let mut b = partial_request(&app, "POST /v1/users", None, body.len(), &body[..10]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = app.get("/v1/products", None).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
    assert_eq!(r.headers["retry-after"], "1");
    // The held requests finish normally and free their slots.
    a.write_all(&body[10..]).await.unwrap();
    let answer = read_answer(&mut a, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    drop(b.shutdown().await);
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.get("/v1/products", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_exhausted_mysql_pool_answers_503_quickly_and_changes_nothing() {
    let app = spawn_app_with(|c| {
        c.stores.mysql_pool = 1;
        c.stores.mysql_timeout = Duration::from_millis(300);
    })
    .await;
    // The test holds the pool's only connection.
    let held = app.state.db.acquire().await.unwrap();
    let started = Instant::now();
    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "patient", "password": "patient-password"}),
        )
        .await;
    let took = started.elapsed();
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    drop(held);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = 'patient'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "the refused sign-up created nothing");
    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "patient", "password": "patient-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_requests_in_flight() {
    let mut app = spawn_app_with(|_| {}).await;
    let body = br#"{"username": "last-one", "password": "last-password"}"#;
    let mut s = partial_request(&app, "POST /v1/users", None, body.len(), &body[..10]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections...
    let port = app.addr.rsplit(':').next().unwrap().to_string();
    assert!(
        TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .is_err(),
        "the listener is closed"
    );
    assert!(!server.is_finished(), "a request is still in flight");
    // ...but the request in flight is answered in full.
    s.write_all(&body[10..]).await.unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the app stops after its last request")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// A request from the client at `ip` (the app trusts `X-Forwarded-For` in these tests).
async fn from(
    app: &TestApp,
    ip: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Resp {
    app.send(method, path, token, body, &[("x-forwarded-for", ip)])
        .await
}

/// The nth address of the IPv6 /64 `prefix` (`2001:db8:7:7`), its interface id all over the
/// place, as a client rotating through its /64 would use them.
fn in_64(prefix: &str, n: u32) -> String {
    format!(
        "{prefix}:{:x}:{:x}:{:x}:{:x}",
        n * 7919 % 65536,
        n,
        n ^ 0x5a5a,
        n + 1
    )
}

#[tokio::test]
async fn the_sale_routes_count_an_ipv6_64_as_one_address() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.rate_ip_per_sec = 1.0;
        c.limits.rate_ip_burst = 50;
        c.limits.rate_customer_per_sec = 1_000.0;
        c.limits.rate_customer_burst = 1_000;
    })
    .await;
    let (_, token) = app.register("roamer").await;
    let mut refused = 0;
    for i in 0..100 {
        let ip = in_64("2001:db8:7:7", i);
        let r = from(&app, &ip, Method::GET, "/v1/cart", Some(&token), None).await;
        match r.status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(
                    r.body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("address")
                );
                refused += 1;
            }
            other => panic!("{ip}: {other} {:?}", r.body),
        }
    }
    // The burst of 50 and the few tokens refilled while the 100 ran; the rest refused.
    assert!(
        refused >= 40,
        "{refused} of 100 requests from one /64 refused"
    );
    // The next /64 is another client; IPv4 clients count alone as before.
    for ip in ["2001:db8:7:8::1", "203.0.113.5"] {
        let r = from(&app, ip, Method::GET, "/v1/cart", Some(&token), None).await;
        assert_eq!(r.status, StatusCode::OK, "{ip}: {:?}", r.body);
    }
}

#[tokio::test]
async fn logins_and_sign_ups_count_an_ipv6_64_as_one_address() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_ip_per_min = 6.0;
        c.limits.login_failures_per_min = 1_000.0;
        c.limits.login_user_failures_per_min = 1_000.0;
    })
    .await;
    let login = json!({"username": "nobody", "password": "wrong-password"});
    let signup = |i: u32| json!({"username": format!("new{i}"), "password": "new-password"});
    // Six attempts of the /64's bucket, from six of its addresses: logins and sign-ups.
    for i in 0..3 {
        let ip = in_64("2001:db8:9:9", i);
        let r = from(
            &app,
            &ip,
            Method::POST,
            "/v1/auth/token",
            None,
            Some(login.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{ip}: {:?}", r.body);
        let ip = in_64("2001:db8:9:9", 10 + i);
        let r = from(&app, &ip, Method::POST, "/v1/users", None, Some(signup(i))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{ip}: {:?}", r.body);
    }
    // A seventh address of the /64 finds the bucket empty, for a login and for a sign-up.
    let ip = in_64("2001:db8:9:9", 99);
    let r = from(
        &app,
        &ip,
        Method::POST,
        "/v1/auth/token",
        None,
        Some(login.clone()),
    )
    .await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "login");
    let r = from(&app, &ip, Method::POST, "/v1/users", None, Some(signup(99))).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "sign-up");
    // Another /64 is another client.
    let r = from(
        &app,
        "2001:db8:9:a::1",
        Method::POST,
        "/v1/users",
        None,
        Some(signup(7)),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn live_streams_count_an_ipv6_64_as_one_client() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.live.live_max_per_client = 2;
        c.limits.rate_ip_per_sec = 0.01;
        c.limits.rate_ip_burst = 3;
    })
    .await;
    let url = format!("{}/v1/sales/live", app.addr);
    let open = |ip: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .header("x-forwarded-for", ip)
                .send()
                .await
                .expect("answered")
        }
    };
    let first = open(in_64("2001:db8:5:5", 1)).await;
    let second = open(in_64("2001:db8:5:5", 2)).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    // A third address of the /64: the client's two streams are open (the cap on streams).
    let third = open(in_64("2001:db8:5:5", 3)).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let message = third.json::<serde_json::Value>().await.unwrap()["error"]["message"].clone();
    assert!(
        message.as_str().unwrap().contains("live streams"),
        "{message}"
    );
    // One closed, the next address of the /64 meets the opening rate: its 3 tokens are spent.
    drop(first);
    let ip: std::net::IpAddr = in_64("2001:db8:5:5", 1).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.state.live.client_watchers(ip) > 1 {
        assert!(
            Instant::now() < deadline,
            "the closed stream is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fourth = open(in_64("2001:db8:5:5", 4)).await;
    assert_eq!(fourth.status(), StatusCode::TOO_MANY_REQUESTS);
    let message = fourth.json::<serde_json::Value>().await.unwrap()["error"]["message"].clone();
    assert!(message.as_str().unwrap().contains("address"), "{message}");
    // Another /64 is another client.
    let other = open("2001:db8:5:6::1".to_string()).await;
    assert_eq!(other.status(), StatusCode::OK);
    drop(second);
}
