//! Cart routes: holds reserved at once, never renewed, released on remove, clear and expiry.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn add_remove_and_clear() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let t = app.customer_token(501);

    let r = app.get("/v1/cart", Some(&t)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"items": [], "total_price": 0}));

    let r = app.try_cart_add(&t, sku, 2).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let line = &r.body["items"][0];
    assert_eq!(line["sku"], sku);
    assert_eq!(line["count"], 2);
    assert_eq!(line["name"], "Flash item");
    assert_eq!(
        line["unit_price"], 5_000,
        "the sale price is charged while the sale is open"
    );
    assert_eq!(line["line_price"], 10_000);
    assert_eq!(r.body["total_price"], 10_000);
    let first_deadline = line["held_until"].as_str().unwrap().to_string();
    assert!(
        first_deadline
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            > chrono::Utc::now()
    );
    assert_eq!(app.available(sku).await, 8);

    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = app.try_cart_add(&t, sku, 3).await;
    assert_eq!(r.body["items"][0]["count"], 5);
    assert_eq!(
        r.body["items"][0]["held_until"], first_deadline,
        "adding to a live hold keeps its deadline (a hold's life is bounded from its creation)"
    );
    assert_eq!(app.available(sku).await, 5);

    let r = app
        .delete(&format!("/v1/cart/items/{sku}?count=2"), Some(&t))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"][0]["count"], 3);
    assert_eq!(app.available(sku).await, 7);
    app.assert_identity(sku).await;

    let r = app.delete(&format!("/v1/cart/items/{sku}"), Some(&t)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(app.available(sku).await, 10);

    app.try_cart_add(&t, sku, 4).await;
    let other = app.sale_product(3, None).await;
    app.try_cart_add(&t, other, 1).await;
    let r = app.get("/v1/cart", Some(&t)).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["total_price"], 25_000);
    let r = app.delete("/v1/cart", Some(&t)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/v1/cart", Some(&t)).await.body["items"], json!([]));
    assert_eq!(app.available(sku).await, 10);
    assert_eq!(app.available(other).await, 3);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.held, b.reserved, b.sold), (0, 0, 0));
}

#[tokio::test]
async fn every_cart_error_code_and_nothing_changes() {
    let app = spawn_app().await;
    let sku = app.sale_product(3, Some(2)).await;
    let t = app.customer_token(502);
    let add = |body| app.post("/v1/cart/items", Some(&t), body);

    assert_eq!(
        app.post("/v1/cart/items", None, json!({"sku": sku, "count": 1}))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = add(json!({"sku": 999_999, "count": 1})).await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found", "");
    for bad in [
        json!({"sku": sku, "count": 0}),
        json!({"sku": sku, "count": 65_536}),
        json!({"sku": 0, "count": 1}),
        json!({"sku": sku}),
        json!({"sku": sku, "count": 1, "extra": true}),
        json!({"sku": sku, "count": -1}),
    ] {
        let r = add(bad.clone()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", &bad);
    }
    let r = app
        .post_raw("/v1/cart/items", Some(&t), "application/json", "{\"sku\":")
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_json", "");

    let r = add(json!({"sku": sku, "count": 3})).await;
    r.assert_error(StatusCode::CONFLICT, "limit_exceeded", "");
    assert_eq!(
        add(json!({"sku": sku, "count": 2})).await.status,
        StatusCode::OK
    );
    let r = add(json!({"sku": sku, "count": 1})).await;
    r.assert_error(StatusCode::CONFLICT, "limit_exceeded", "");

    let t2 = app.customer_token(503);
    let r = app.try_cart_add(&t2, sku, 2).await;
    r.assert_error(StatusCode::CONFLICT, "out_of_stock", "");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 available")
    );
    assert_eq!(app.available(sku).await, 1, "rejections change nothing");

    // A sale that has not started yet.
    let later = app.product("Later", 1_000).await;
    let w = app.warehouse("later-wh").await;
    app.add_stock(later, w, 5).await;
    let now = chrono::Utc::now();
    let r = app
        .put(
            &format!("/v1/products/{later}/sale"),
            Some(&app.admin_token),
            json!({"sale_price": 500, "starts_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
                   "ends_at": (now + chrono::Duration::hours(2)).to_rfc3339(), "per_customer_limit": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = add(json!({"sku": later, "count": 1})).await;
    r.assert_error(StatusCode::CONFLICT, "sale_not_active", "");
    assert_eq!(app.available(later).await, 5);

    // A product without a sale window sells at its regular price, without a limit.
    let plain = app.product("Plain", 700).await;
    let w = app.warehouse("plain-wh").await;
    app.add_stock(plain, w, 5).await;
    let r = add(json!({"sku": plain, "count": 5})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let line = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["sku"] == plain)
        .unwrap()
        .clone();
    assert_eq!(line["unit_price"], 700);

    // Removing what is not in the cart releases nothing and answers the cart.
    let r = app
        .delete(&format!("/v1/cart/items/{later}"), Some(&t))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .delete(&format!("/v1/cart/items/{sku}?count=0"), Some(&t))
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    let r = app.delete("/v1/cart/items/abc", Some(&t)).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    for s in [sku, later, plain] {
        app.assert_identity(s).await;
    }
}

#[tokio::test]
async fn holds_expire_and_units_come_back() {
    let app = spawn_app_with(|c| c.sale.cart_hold_ttl = Duration::from_millis(600)).await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(504);
    app.cart_add(&t, sku, 4).await;
    assert_eq!(app.available(sku).await, 1);

    tokio::time::sleep(Duration::from_millis(800)).await;
    // The hold is gone for the customer at once, whether or not the sweeper ran yet.
    assert_eq!(app.get("/v1/cart", Some(&t)).await.body["items"], json!([]));
    app.sweep().await;
    assert_eq!(app.available(sku).await, 5);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.held, b.available), (0, 5));

    // An expired hold that was not swept yet is given back when its line changes again.
    let app2 = spawn_app_with(|c| {
        c.sale.cart_hold_ttl = Duration::from_millis(300);
        c.sweeper.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let sku2 = app2.sale_product(3, Some(3)).await;
    let t2 = app2.customer_token(505);
    app2.try_cart_add(&t2, sku2, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = app2.try_cart_add(&t2, sku2, 2).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body["items"][0]["count"], 2,
        "the expired 3 were released, 2 taken afresh"
    );
    assert_eq!(app2.available(sku2).await, 1);
    app2.assert_identity(sku2).await;

    // The same while the sku is known sold out in process (the hold took every unit): the
    // knowledge lasts only until the sku's earliest reservation deadline, so the owner of the
    // lapsed hold is answered by Redis, exactly as above.
    let app3 = spawn_app_with(|c| {
        c.sale.cart_hold_ttl = Duration::from_millis(300);
        c.sweeper.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let sku3 = app3.sale_product(3, Some(3)).await;
    let t3 = app3.customer_token(507);
    app3.cart_add(&t3, sku3, 3).await;
    let s3 = flashsale::domain::Sku::parse(sku3).unwrap();
    eventually("sold out known", Duration::from_secs(5), || async {
        app3.state.sold_out.is_known(s3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !app3.state.sold_out.is_known(s3),
        "trusted past the hold's deadline"
    );
    let r = app3.try_cart_add(&t3, sku3, 2).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["count"], 2);
    assert_eq!(app3.available(sku3).await, 1);
    app3.assert_identity(sku3).await;
}

#[tokio::test]
async fn units_come_from_warehouses_in_order_and_go_back_where_they_came_from() {
    let app = spawn_app().await;
    let sku = app.product("Two places", 1_000).await;
    let w1 = app.warehouse("north").await;
    let w2 = app.warehouse("south").await;
    app.add_stock(sku, w1, 2).await;
    app.add_stock(sku, w2, 2).await;
    app.open_sale(sku, 900, None).await;
    assert_eq!(app.stocks(sku).await, vec![(w1, 2), (w2, 2)]);
    let t = app.customer_token(506);
    app.try_cart_add(&t, sku, 3).await;
    assert_eq!(app.stocks(sku).await, vec![(w1, 0), (w2, 1)]);
    app.delete(&format!("/v1/cart/items/{sku}?count=1"), Some(&t))
        .await;
    assert_eq!(
        app.stocks(sku).await,
        vec![(w1, 0), (w2, 2)],
        "last taken, first given back"
    );
    app.delete(&format!("/v1/cart/items/{sku}"), Some(&t)).await;
    assert_eq!(app.stocks(sku).await, vec![(w1, 2), (w2, 2)]);
    app.assert_identity(sku).await;
}

/// A removal never extends a hold, and neither does an add: whatever the changes, a hold lapses
/// `cart_hold_ttl` after it was created, so one account cannot keep stock held indefinitely.
#[tokio::test]
async fn changes_of_a_line_never_extend_its_hold() {
    let app = spawn_app().await;
    let sku = app.sale_product(100, None).await;
    let t = app.customer_token(521);
    let r = app.try_cart_add(&t, sku, 10).await;
    assert_eq!(r.status, StatusCode::OK);
    let deadline = r.body["items"][0]["held_until"].clone();
    for step in 0..4 {
        // Let the clock move, so a renewal would show.
        tokio::time::sleep(Duration::from_millis(15)).await;
        let r = if step % 2 == 0 {
            app.delete(&format!("/v1/cart/items/{sku}?count=1"), Some(&t))
                .await
        } else {
            app.try_cart_add(&t, sku, 1).await
        };
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["items"][0]["held_until"], deadline, "step {step}");
    }
    let keys = app
        .state
        .redis
        .keys
        .sku(flashsale::domain::Sku::parse(sku).unwrap());
    let rid = flashsale::store::redis::Rid::Hold { user_id: 521 };
    let mut conn = app.state.redis.conn();
    let score: f64 = redis::AsyncCommands::zscore(&mut conn, keys.exp(), rid.to_string())
        .await
        .unwrap();
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(keys.ttl(&rid))
        .query_async(&mut conn)
        .await
        .unwrap();
    let held_until: chrono::DateTime<chrono::Utc> = deadline.as_str().unwrap().parse().unwrap();
    assert_eq!(
        score as i64,
        held_until.timestamp_millis(),
        "the sweeper's index agrees"
    );
    assert_eq!(at, held_until.timestamp_millis(), "the TTL key agrees");
    let bk = app.assert_identity(sku).await;
    assert_eq!(bk.held, 10);
}
