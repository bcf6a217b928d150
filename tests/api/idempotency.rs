//! `Idempotency-Key` claims are short leases held while the request really works: a request
//! cut off (408, the client hanging up) does not leave its key claimed for a day, and its
//! retry gets the one answer of the one operation, never a second order.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Executor;

use crate::helpers::{TestApp, spawn_app_with};

/// Drops the sku's Redis keys, as if Redis had lost them: the next buy-now loads the sku from
/// MySQL first, where the test can make it wait.
/// Makes `sku` one Redis never loaded (its keys and its entry in the set of loaded skus gone),
/// so that the next purchase loads it from MySQL. (Keys gone from a sku Redis had loaded are a
/// loss, refused until rebuild-cache: DESIGN, "Per-sku loss detection".)
async fn forget_sku_in_redis(app: &TestApp, sku: u64) {
    let mut conn = app.state.redis.conn();
    let keys: Vec<String> = conn
        .keys(format!("{}:{{sku:{sku}}}:*", app.prefix))
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = conn.del(keys).await.unwrap();
    let _: () = conn.srem(app.state.redis.keys.skus(), sku).await.unwrap();
}

async fn buy_now(
    app: &TestApp,
    token: &str,
    key: &str,
    sku: u64,
    timeout: Duration,
) -> Option<(StatusCode, reqwest::header::HeaderMap, Value)> {
    let r = app
        .client
        .post(format!("{}/v1/orders/buy-now", app.addr))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .timeout(timeout)
        .json(&json!({"sku": sku, "count": 1}))
        .send()
        .await
        .ok()?;
    let status = r.status();
    let headers = r.headers().clone();
    Some((status, headers, r.json().await.unwrap_or(Value::Null)))
}

/// Retries with the key until the answer is not "still running" (bounded).
async fn retry_until_answered(
    app: &TestApp,
    token: &str,
    key: &str,
    sku: u64,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, headers, body) = buy_now(app, token, key, sku, Duration::from_secs(30))
            .await
            .expect("answered");
        let still_running =
            status == StatusCode::REQUEST_TIMEOUT || body["error"]["code"] == "request_in_progress";
        if !still_running {
            return (status, headers, body);
        }
        assert!(
            Instant::now() < deadline,
            "the key is still claimed: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_request_cut_off_mid_way_leaves_one_order_and_its_retry_gets_it() {
    let app = spawn_app_with(|c| c.http.request_timeout = Duration::from_secs(1)).await;
    let t = app.customer_token(7_001);

    for (key, cut) in [("bn-408", "deadline"), ("bn-hangup", "hang-up")] {
        let sku = app.sale_product(10, None).await;
        forget_sku_in_redis(&app, sku).await;
        // Another session holds the products table: loading the sku waits for it.
        let mut lock = app.state.db.acquire().await.unwrap();
        lock.execute("LOCK TABLES products WRITE").await.unwrap();
        let first = match cut {
            "deadline" => buy_now(&app, &t, key, sku, Duration::from_secs(30)).await,
            _ => buy_now(&app, &t, key, sku, Duration::from_millis(300)).await,
        };
        match cut {
            "deadline" => {
                let (status, _, body) = first.expect("answered");
                assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
            }
            _ => assert!(first.is_none(), "the client hung up before an answer"),
        }
        lock.execute("UNLOCK TABLES").await.unwrap();
        drop(lock);

        let (status, headers, body) = retry_until_answered(&app, &t, key, sku).await;
        assert_eq!(status, StatusCode::CREATED, "{cut}: {body}");
        assert_eq!(
            headers["idempotent-replayed"], "true",
            "{cut}: the first request's answer"
        );
        // And again: the same stored answer.
        let (status2, _, body2) = buy_now(&app, &t, key, sku, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!((status2, &body2), (StatusCode::CREATED, &body), "{cut}");
        let list = app.get("/v1/orders", Some(&t)).await;
        let orders = list.body["items"].as_array().unwrap();
        let of_sku: Vec<_> = orders
            .iter()
            .filter(|o| o["items"][0]["sku"] == sku)
            .collect();
        assert_eq!(of_sku.len(), 1, "{cut}: one order: {orders:?}");
        assert_eq!(of_sku[0]["order_id"], body["order_id"], "{cut}");
        let b = app.assert_identity(sku).await;
        assert_eq!((b.reserved, b.available), (1, 9), "{cut}");
    }
}

/// What a request whose process died leaves behind: a claim with a lease nobody renews, and
/// maybe the order it bound. Returns the record's key.
async fn vanished_holder(
    app: &TestApp,
    user_id: u64,
    key: &str,
    sku: u64,
    bound: Option<u64>,
) -> String {
    use flashsale::store::redis::idempotency::{Claim, Settle};
    let record = app.state.redis.keys.idempotency(user_id, "buy-now", key);
    let claim = app
        .state
        .redis
        .claim_idempotency(
            &record,
            &format!("{sku}x1"),
            "dead-owner",
            Duration::from_millis(300),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert_eq!(claim, Claim::Claimed { resume_order: None });
    if let Some(order_id) = bound {
        assert!(
            app.state
                .redis
                .settle_idempotency(&record, "dead-owner", Settle::Bind(order_id))
                .await
                .unwrap()
        );
    }
    record
}

#[tokio::test]
async fn a_key_whose_holder_vanished_is_free_once_its_lease_runs_out() {
    let app = spawn_app_with(|c| c.sale.idempotency_lease = Duration::from_millis(300)).await;
    let sku = app.sale_product(10, None).await;
    let t = app.customer_token(7_002);
    vanished_holder(&app, 7_002, "k-free", sku, None).await;
    let started = Instant::now();
    let (status, headers, body) = buy_now(&app, &t, "k-free", sku, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(headers.get("idempotent-replayed").is_none(), "it ran");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the lease only"
    );
    let (status, headers, again) = buy_now(&app, &t, "k-free", sku, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((status, &again), (StatusCode::CREATED, &body));
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(app.orders(&t, "").await.ids().len(), 1);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.reserved, b.available), (1, 9));
}

#[tokio::test]
async fn a_retry_answers_the_order_a_vanished_request_placed() {
    let app = spawn_app_with(|c| c.sale.idempotency_lease = Duration::from_millis(300)).await;
    let sku = app.sale_product(10, None).await;
    let t = app.customer_token(7_003);
    // The vanished request had placed its order (awaiting payment) but stored no answer.
    let placed = app.try_buy_now(&t, sku, 1).await;
    assert_eq!(placed.status, StatusCode::CREATED);
    let order_id = placed.body["order_id"].as_u64().unwrap();
    vanished_holder(&app, 7_003, "k-placed", sku, Some(order_id)).await;

    let (status, _, body) = buy_now(&app, &t, "k-placed", sku, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["order_id"], order_id,
        "the same order, not a second one"
    );
    assert_eq!(body["status"], "awaiting_payment");
    assert_eq!(app.orders(&t, "").await.ids(), [order_id]);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.reserved, b.available), (1, 9));
}

#[tokio::test]
async fn a_retry_fails_a_half_made_order_and_places_one_afresh() {
    use flashsale::domain::Sku;
    use flashsale::store::redis::{Deadline, ReserveMode, ReserveRequest, Rid};
    let app = spawn_app_with(|c| c.sale.idempotency_lease = Duration::from_millis(300)).await;
    let sku = app.sale_product(10, None).await;
    let t = app.customer_token(7_004);
    // The vanished request had created its order and reserved its line, not activated it.
    let redis = &app.state.redis;
    let half = flashsale::service::order_ids::next(&app.state)
        .await
        .unwrap();
    vanished_holder(&app, 7_004, "k-half", sku, Some(half)).await;
    let items = json!([{"sku": sku, "name": "Flash item", "count": 1, "unit_price": 5000}]);
    // Lines first, then the record (as `place` does): the order is `new`, not yet activated.
    let created_at = chrono::Utc::now().timestamp_millis();
    let expires_at = created_at + 600_000;
    redis
        .reserve(ReserveRequest {
            sku: Sku::parse(sku).unwrap(),
            user_id: 7_004,
            count: 1,
            rid: Rid::OrderLine { order_id: half },
            deadline: Deadline::At(expires_at),
            mode: ReserveMode::Once,
        })
        .await
        .unwrap();
    redis
        .create_order(
            half,
            7_004,
            created_at,
            expires_at,
            &items.to_string(),
            5_000,
        )
        .await
        .unwrap();
    let b = app.assert_identity(sku).await;
    assert_eq!((b.reserved, b.available), (1, 9));

    let (status, _, body) = buy_now(&app, &t, "k-half", sku, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let fresh = body["order_id"].as_u64().unwrap();
    assert_ne!(fresh, half);
    // The half-made order failed and holds nothing: one unit reserved, the fresh order's.
    let old = app.try_order(&t, half).await;
    assert_eq!(old.body["status"], "failed", "{:?}", old.body);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.reserved, b.available), (1, 9));
    // The key now answers the fresh order.
    let (_, headers, again) = buy_now(&app, &t, "k-half", sku, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["order_id"], fresh);
}

/// Many repeats at once, while the first is cut off: still one order.
#[tokio::test]
async fn concurrent_repeats_of_a_cut_off_request_make_one_order() {
    let app = spawn_app_with(|c| c.http.request_timeout = Duration::from_secs(1)).await;
    let sku = app.sale_product(100, None).await;
    let t = app.customer_token(7_005);
    forget_sku_in_redis(&app, sku).await;
    let mut lock = app.state.db.acquire().await.unwrap();
    lock.execute("LOCK TABLES products WRITE").await.unwrap();
    let sends = (0..16).map(|_| buy_now(&app, &t, "k-many", sku, Duration::from_millis(500)));
    let answers = futures::future::join_all(sends).await;
    assert!(answers.iter().all(Option::is_none), "all cut off");
    lock.execute("UNLOCK TABLES").await.unwrap();
    drop(lock);
    let sends = (0..16).map(|_| retry_until_answered(&app, &t, "k-many", sku));
    let answers = futures::future::join_all(sends).await;
    for (status, _, body) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        assert_eq!(body, &answers[0].2);
    }
    assert_eq!(app.orders(&t, "").await.ids().len(), 1);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.reserved, b.available), (1, 99));
}

/// The lease is renewed while the request works: a repeat sent after several lease lengths
/// still waits for the first instead of running a second order.
#[tokio::test]
async fn a_slow_request_keeps_its_key_past_the_lease_length() {
    let app = spawn_app_with(|c| c.sale.idempotency_lease = Duration::from_millis(300)).await;
    let sku = app.sale_product(10, None).await;
    let t = app.customer_token(7_006);
    forget_sku_in_redis(&app, sku).await;
    let mut lock = app.state.db.acquire().await.unwrap();
    lock.execute("LOCK TABLES products WRITE").await.unwrap();
    let first = buy_now(&app, &t, "k-slow", sku, Duration::from_secs(30));
    let repeat = async {
        // Sent once the first has run for several lease lengths.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        buy_now(&app, &t, "k-slow", sku, Duration::from_secs(30)).await
    };
    let unlock = async {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        lock.execute("UNLOCK TABLES").await.unwrap();
    };
    let (first, repeat, ()) = tokio::join!(first, repeat, unlock);
    let (s1, _, b1) = first.unwrap();
    let (s2, h2, b2) = repeat.unwrap();
    assert_eq!(
        (s1, s2),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{b1} {b2}"
    );
    assert_eq!(b1, b2);
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(app.orders(&t, "").await.ids().len(), 1);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.reserved, b.available), (1, 9));
}

/// An operation that dies without an answer (a panic) gives its key back at once, through the
/// lease's guard: the retry runs, it does not wait for a lease of a minute to run out.
#[tokio::test]
async fn an_operation_that_panics_releases_its_key() {
    use flashsale::http::idempotency::once;
    let app = spawn_app_with(|c| c.sale.idempotency_lease = Duration::from_secs(60)).await;
    let state = &app.state;
    let r = once(
        state,
        7_007,
        "test",
        Some("k-panic".into()),
        "fp".into(),
        |_| async { panic!("the operation dies") },
    )
    .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let started = Instant::now();
    let r = loop {
        let r = once(
            state,
            7_007,
            "test",
            Some("k-panic".into()),
            "fp".into(),
            |_| async { Ok((axum::http::StatusCode::OK, json!({"ran": true}))) },
        )
        .await;
        // The release is sent by a task of its own: it may land a moment later.
        if r.status() != StatusCode::CONFLICT || started.elapsed() > Duration::from_secs(5) {
            break r;
        }
    };
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "released, not run out"
    );
}
