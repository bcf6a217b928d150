//! Order routes: checkout, buy-now, pay, cancel, expiry, listing, idempotency, privacy.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn checkout_then_pay() {
    let app = spawn_app().await;
    let a = app.sale_product(10, None).await;
    let b = app.sale_product(10, None).await;
    let t = app.customer_token(601);
    app.try_cart_add(&t, a, 2).await;
    app.try_cart_add(&t, b, 1).await;

    let r = app.try_checkout(&t).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let o = r.body.clone();
    assert_eq!(o["status"], "awaiting_payment");
    assert_eq!(o["user_id"], 601);
    assert_eq!(o["total_price"], 15_000);
    assert_eq!(o["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        o["items"][0],
        json!({"sku": a, "name": "Flash item", "count": 2, "unit_price": 5_000})
    );
    assert!(o["paid_at"].is_null() && o["cancelled_at"].is_null() && o["cancel_reason"].is_null());
    let created: chrono::DateTime<chrono::Utc> = o["created_at"].as_str().unwrap().parse().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = o["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        (expires - created).num_seconds(),
        600,
        "the default payment window is 10 minutes"
    );
    let id = o["order_id"].as_u64().unwrap();

    assert_eq!(
        app.get("/v1/cart", Some(&t)).await.body["items"],
        json!([]),
        "checkout empties the cart"
    );
    let bk = app.assert_identity(a).await;
    assert_eq!((bk.held, bk.reserved, bk.available), (0, 2, 8));

    let r = app.try_order(&t, id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, o);

    let r = app
        .post(
            &format!("/v1/orders/{id}/pay"),
            Some(&t),
            json!({"payment_ref": "psp-123"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "paid");
    assert!(r.body["paid_at"].is_string());
    let again = app.try_pay(&t, id).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "paying twice answers the paid order"
    );
    assert_eq!(again.body["paid_at"], r.body["paid_at"]);
    let bk = app.assert_identity(a).await;
    assert_eq!((bk.reserved, bk.sold, bk.available), (0, 2, 8));

    let r = app.try_cancel(&t, id).await;
    r.assert_error(StatusCode::CONFLICT, "order_not_cancellable", "");
    app.assert_identity(b).await;
}

#[tokio::test]
async fn cancel_gives_units_back_and_cannot_be_paid() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, Some(3)).await;
    let t = app.customer_token(602);
    let id = app.buy_now(&t, sku, 3).await.order_id;
    assert_eq!(app.available(sku).await, 2);
    // The limit counts reserved units.
    let r = app.try_cart_add(&t, sku, 1).await;
    assert_eq!(r.code(), "limit_exceeded");

    let r = app.try_cancel(&t, id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["cancel_reason"], "customer");
    assert!(r.body["cancelled_at"].is_string());
    assert_eq!(app.available(sku).await, 5);
    let again = app.try_cancel(&t, id).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "cancelling twice answers the cancelled order"
    );
    let r = app.try_pay(&t, id).await;
    r.assert_error(StatusCode::CONFLICT, "order_not_payable", "");
    // Cancelled units no longer count against the limit.
    app.cart_add(&t, sku, 3).await;
    let b = app.assert_identity(sku).await;
    assert_eq!((b.held, b.reserved, b.sold), (3, 0, 0));
}

#[tokio::test]
async fn bought_units_count_against_the_limit() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, Some(2)).await;
    let t = app.customer_token(603);
    let id = app.buy_now(&t, sku, 2).await.order_id;
    app.pay(&t, id).await;
    let r = app.try_buy_now(&t, sku, 1).await;
    r.assert_error(StatusCode::CONFLICT, "limit_exceeded", "");
    assert!(
        r.body["error"]["order_id"].is_null(),
        "a refusal before anything was reserved records no order"
    );
    app.assert_identity(sku).await;
}

#[tokio::test]
async fn failed_orders_are_recorded_and_listed() {
    let app = spawn_app().await;
    let sku = app.sale_product(2, None).await;
    let t = app.customer_token(604);
    let r = app.try_buy_now(&t, sku, 3).await;
    r.assert_error(StatusCode::CONFLICT, "out_of_stock", "");
    assert!(
        r.body["error"]["order_id"].is_null(),
        "nothing was reserved: no order recorded"
    );
    // A checkout that took a line and was then refused on another is recorded as failed.
    let failed = app.failed_order(604, sku, 2).await;
    let o = app.try_order(&t, failed).await;
    assert_eq!(o.status, StatusCode::OK);
    assert_eq!(o.body["status"], "failed");
    assert_eq!(o.body["cancel_reason"], "failed");
    assert_eq!(
        o.body["items"].as_array().unwrap().len(),
        2,
        "the failed order shows what was asked"
    );
    assert_eq!(o.body["items"][0]["count"], 2);
    assert_eq!(app.available(sku).await, 2, "a failed order holds nothing");

    // A cart line whose hold expired (and was swept, its units bought by another customer) is
    // not ordered: checkout orders what the cart shows.
    let other = app.sale_product(5, None).await;
    app.try_cart_add(&t, other, 2).await;
    app.try_cart_add(&t, sku, 2).await;
    let keys = app
        .state
        .redis
        .keys
        .sku(flashsale::domain::Sku::parse(sku).unwrap());
    let mut conn = app.state.redis.conn();
    // Expire the hold now: its TTL key gone, its deadline passed.
    let rid = flashsale::store::redis::Rid::Hold { user_id: 604 };
    let _: () = redis::AsyncCommands::del(&mut conn, keys.ttl(&rid))
        .await
        .unwrap();
    let _: () = redis::AsyncCommands::zadd(&mut conn, keys.exp(), rid.to_string(), 1)
        .await
        .unwrap();
    app.sweep().await;
    let r2 = app
        .post(
            "/v1/cart/items",
            Some(&app.customer_token(605)),
            json!({"sku": sku, "count": 2}),
        )
        .await;
    assert_eq!(r2.status, StatusCode::OK);
    let r = app.try_checkout(&t).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);

    let r = app.try_checkout(&t).await;
    r.assert_error(StatusCode::CONFLICT, "cart_empty", "");

    let list = app.get("/v1/orders?status=failed", Some(&t)).await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<u64> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![failed]);
    for s in [sku, other] {
        app.assert_identity(s).await;
    }
}

#[tokio::test]
async fn unpaid_orders_expire_and_give_units_back() {
    let app = spawn_app_with(|c| {
        c.sale.payment_ttl = Duration::from_millis(500);
        c.sweeper.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let sku = app.sale_product(4, None).await;
    let t = app.customer_token(606);
    let id = app.buy_now(&t, sku, 3).await.order_id;
    let id2 = app.buy_now(&t, sku, 1).await.order_id;
    assert_eq!(app.available(sku).await, 0);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Reading an order past its window settles it.
    let o = app.try_order(&t, id).await;
    assert_eq!(o.body["status"], "cancelled");
    assert_eq!(o.body["cancel_reason"], "expired");
    assert_eq!(app.available(sku).await, 3);
    // The sweeper settles the other one.
    app.sweep().await;
    assert_eq!(app.available(sku).await, 4);
    let r = app.try_pay(&t, id2).await;
    r.assert_error(StatusCode::CONFLICT, "order_not_payable", "");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.reserved, b.sold, b.available), (0, 0, 4));
}

#[tokio::test]
async fn another_customers_order_is_not_found() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let owner = app.customer_token(607);
    let other = app.customer_token(608);
    let r = app.try_buy_now(&owner, sku, 1).await;
    let id = r.body["order_id"].as_u64().unwrap();
    for r in [
        app.try_order(&other, id).await,
        app.try_pay(&other, id).await,
        app.try_cancel(&other, id).await,
        app.get("/v1/orders/987654321", Some(&owner)).await,
    ] {
        r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    }
    assert_eq!(
        app.get("/v1/orders", Some(&other)).await.body["items"],
        json!([])
    );
    assert_eq!(
        app.try_order(&owner, id).await.body["status"],
        "awaiting_payment"
    );
    assert_eq!(
        app.get(&format!("/v1/orders/{id}"), None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn order_input_errors() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(609);
    for bad in [
        json!({"sku": sku, "count": 0}),
        json!({"sku": sku}),
        json!({"sku": "x", "count": 1}),
    ] {
        let r = app.post("/v1/orders/buy-now", Some(&t), bad.clone()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", &bad);
    }
    let r = app.try_buy_now(&t, 4_000_000, 1).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    let r = app
        .post_raw("/v1/orders/1/pay", Some(&t), "application/json", "{nope")
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_json", "");
    for q in ["status=shipped", "limit=0", "limit=101", "before_id=x"] {
        let r = app.get(&format!("/v1/orders?{q}"), Some(&t)).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", q);
    }
    let r = app.post_empty("/v1/orders", None).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", "");
    assert_eq!(app.available(sku).await, 5);
}

/// `payment_ref` is limited to 128 characters, as documented (`maxLength` counts characters),
/// not 128 bytes.
#[tokio::test]
async fn payment_ref_counts_characters() {
    let app = spawn_app().await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(611);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(app.buy_now(&t, sku, 1).await.order_id);
    }
    let r = app
        .post(
            &format!("/v1/orders/{}/pay", ids[0]),
            Some(&t),
            json!({"payment_ref": "é".repeat(129)}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    let r = app
        .post(
            &format!("/v1/orders/{}/pay", ids[1]),
            Some(&t),
            json!({"payment_ref": "é".repeat(128)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "paid");
}

#[tokio::test]
async fn listing_is_newest_first_and_pages() {
    let app = spawn_app().await;
    let sku = app.sale_product(50, None).await;
    let t = app.customer_token(610);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.buy_now(&t, sku, 1).await.order_id);
    }
    app.try_pay(&t, ids[1]).await;
    ids.reverse();
    let p1 = app.get("/v1/orders?limit=2", Some(&t)).await;
    let got: Vec<u64> = p1.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, ids[..2]);
    let next = p1.body["next_before_id"].as_u64().unwrap();
    let p2 = app
        .get(&format!("/v1/orders?limit=2&before_id={next}"), Some(&t))
        .await;
    let got2: Vec<u64> = p2.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_u64().unwrap())
        .collect();
    assert_eq!(got2, ids[2..4]);
    let p3 = app
        .get(
            &format!("/v1/orders?limit=2&before_id={}", p2.body["next_before_id"]),
            Some(&t),
        )
        .await;
    assert_eq!(p3.body["items"].as_array().unwrap().len(), 1);
    assert!(p3.body["next_before_id"].is_null());
    let paid = app.get("/v1/orders?status=paid", Some(&t)).await;
    assert_eq!(paid.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(paid.body["items"][0]["order_id"], ids[3]);
}

#[tokio::test]
async fn idempotent_checkout_makes_one_order() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let t = app.customer_token(611);
    app.try_cart_add(&t, sku, 2).await;
    let sends = (0..20).map(|_| {
        app.client
            .post(format!("{}/v1/orders", app.addr))
            .bearer_auth(&t)
            .header("Idempotency-Key", "checkout-1")
            .send()
    });
    let mut bodies = Vec::new();
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        bodies.push(r.json::<serde_json::Value>().await.unwrap());
    }
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "every repeat answers the first order"
    );
    let list = app.get("/v1/orders", Some(&t)).await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        1,
        "one order made"
    );
    let b = app.assert_identity(sku).await;
    assert_eq!((b.reserved, b.available), (2, 8));

    // The same key on buy-now with a different body is refused; with the same body, replayed.
    let send = |count: u64| {
        app.client
            .post(format!("{}/v1/orders/buy-now", app.addr))
            .bearer_auth(&t)
            .header("Idempotency-Key", "bn-1")
            .json(&json!({"sku": sku, "count": count}))
            .send()
    };
    let first = send(1).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let replay = send(1).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let other = send(2).await.unwrap();
    assert_eq!(other.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.available(sku).await, 7);
    // A replayed pay of the same order: one payment.
    let id = bodies[0]["order_id"].as_u64().unwrap();
    for _ in 0..3 {
        let r = app
            .client
            .post(format!("{}/v1/orders/{id}/pay", app.addr))
            .bearer_auth(&t)
            .header("Idempotency-Key", "pay-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let b = app.assert_identity(sku).await;
    assert_eq!(b.sold, 2);
    let r = app
        .client
        .post(format!("{}/v1/orders", app.addr))
        .bearer_auth(&t)
        .header("Idempotency-Key", "")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "an empty key is refused"
    );
}
