//! Redis back from older persistence (behind MySQL): detected, sales refused with 503 until
//! `flashsale rebuild-cache`, then resumed by themselves; order ids never repeat.

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

async fn mark(app: &TestApp) -> u64 {
    sqlx::query_scalar::<_, u64>("SELECT v FROM order_id_mark WHERE id = 1")
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

/// Every id handed out, refused attempts' too, is at or below the mark MySQL holds.
#[tokio::test]
async fn every_id_handed_out_is_covered_by_the_mysql_mark() {
    let app = spawn_app().await;
    let mut last = 0;
    for _ in 0..50 {
        last = flashsale::service::order_ids::next(&app.state)
            .await
            .unwrap();
        assert!(last <= mark(&app).await, "id {last} above the mark");
    }
    // The counter reaching the mark raises it first (a block), never hands out past it.
    let m = mark(&app).await;
    let _: () = app
        .state
        .redis
        .conn()
        .set(app.state.redis.keys.order_seq(), m)
        .await
        .unwrap();
    let id = flashsale::service::order_ids::next(&app.state)
        .await
        .unwrap();
    assert_eq!(id, m + 1);
    assert!(mark(&app).await >= id && id > last);
    // The metrics tick keeps the mark a block ahead of the counter.
    let m = mark(&app).await;
    let near = m - flashsale::service::order_ids::BLOCK / 2 + 1;
    let _: () = app
        .state
        .redis
        .conn()
        .set(app.state.redis.keys.order_seq(), near)
        .await
        .unwrap();
    flashsale::service::order_ids::watch(&app.state)
        .await
        .unwrap();
    assert_eq!(
        mark(&app).await,
        near + flashsale::service::order_ids::BLOCK
    );
    // Far from it, the tick writes nothing.
    flashsale::service::order_ids::watch(&app.state)
        .await
        .unwrap();
    assert_eq!(
        mark(&app).await,
        near + flashsale::service::order_ids::BLOCK
    );
}

/// The metrics tick (`order_ids::watch`) sees the counter below MySQL's largest order id (Redis
/// went back; this instance handed out no id since): readiness and every sale answer 503 and
/// change nothing; rebuild-cache reloads the counters from MySQL and sales resume by themselves.
#[tokio::test]
async fn a_counter_behind_mysql_stops_sales_until_rebuild_cache() {
    let app = spawn_app().await;
    let sku = app.sale_product(3, None).await;
    let ta = app.customer_token(7_601);
    let r = app.try_buy_now(&ta, sku, 3).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let a = r.body["order_id"].as_u64().unwrap();
    app.pay(&ta, a).await;
    app.write_back().await;
    // Redis goes back to before the sale (as a restart from an older AOF would): stock 3
    // available, the counter 0, A's order unknown.
    let mut conn = app.state.redis.conn();
    let k = app
        .state
        .redis
        .keys
        .sku(flashsale::domain::Sku::parse(sku).unwrap());
    let _: () = conn
        .hset_multiple(k.stock(), &[("avail", 3), ("sold", 0)])
        .await
        .unwrap();
    let ws: Vec<String> = conn.hkeys(k.stock()).await.unwrap();
    for w in ws.iter().filter(|f| f.starts_with('w')) {
        let _: () = conn.hset(k.stock(), w, 3).await.unwrap();
    }
    let _: () = conn.del(app.state.redis.keys.order(a)).await.unwrap();
    let _: () = conn.set(app.state.redis.keys.order_seq(), 0).await.unwrap();
    flashsale::service::order_ids::watch(&app.state)
        .await
        .unwrap();

    assert_eq!(app.get("/readyz", None).await.status, 503);
    let tb = app.customer_token(7_602);
    for _ in 0..2 {
        let r = app.try_buy_now(&tb, sku, 1).await;
        r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
    }
    let r = app.try_cart_add(&tb, sku, 1).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    // A still reads the paid order (from MySQL); nothing was sold or created.
    let r = app.try_order(&ta, a).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::OK, Some("paid"))
    );
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(orders, 1);
    // Another tick changes nothing: still refused.
    flashsale::service::order_ids::watch(&app.state)
        .await
        .unwrap();
    assert_eq!(app.try_buy_now(&tb, sku, 1).await.status, 503);

    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert_eq!(report.skus_loaded, 1, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    let r = app.try_buy_now(&tb, sku, 1).await;
    assert_eq!(r.code(), "out_of_stock", "{:?}", r.body);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.sold), (0, 0, 0));
    // New ids lie above every id handed out.
    let id = flashsale::service::order_ids::next(&app.state)
        .await
        .unwrap();
    assert!(id > a);
    app.assert_reconciles().await;
}

/// rebuild-cache on a Redis that is behind keeps the open orders Redis and MySQL know: the
/// outbox is written back first, then each open order's lines are reserved again.
#[tokio::test]
async fn rebuild_cache_keeps_open_orders_and_drops_cart_holds() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let t1 = app.customer_token(7_701);
    let written = app.try_buy_now(&t1, sku, 2).await.body["order_id"]
        .as_u64()
        .unwrap();
    app.write_back().await;
    // Not written back yet when rebuild-cache runs.
    let unwritten = app.try_buy_now(&t1, sku, 3).await.body["order_id"]
        .as_u64()
        .unwrap();
    let r = app
        .post(
            "/v1/cart/items",
            Some(&app.customer_token(7_702)),
            json!({"sku": sku, "count": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.units_reserved, 5, "{report:?}");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.held, b.reserved), (10, 5, 0, 5));
    // Both orders can be paid.
    for id in [written, unwritten] {
        let r = app.try_pay(&t1, id).await;
        assert_eq!(r.status, StatusCode::OK, "order {id}: {:?}", r.body);
    }
    app.write_back().await;
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.reserved), (5, 5, 0));
}

/// Two instances: the one that hands out an id finds Redis behind; the other, which handed out
/// none since, stops on its next tick (the shared flag); one rebuild-cache resumes both.
#[tokio::test]
async fn the_other_instances_stop_too_and_resume_after_one_rebuild() {
    let app = spawn_app().await;
    let other = flashsale::app::AppState {
        redis: flashsale::store::redis::Redis::connect(&app.state.cfg.stores).unwrap(),
        ..app.state.clone()
    };
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(7_801);
    let a = app.try_buy_now(&t, sku, 1).await.body["order_id"]
        .as_u64()
        .unwrap();
    // Redis goes back one id (the order record stays: only the counter matters here).
    let _: () = app
        .state
        .redis
        .conn()
        .set(app.state.redis.keys.order_seq(), a - 1)
        .await
        .unwrap();
    let r = app.try_buy_now(&t, sku, 1).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
    // The other instance: MySQL holds no order yet, so only the flag tells it.
    let before = flashsale::service::order_ids::next(&other).await;
    assert!(before.is_ok(), "{before:?}: not told yet (it has no floor)");
    flashsale::service::order_ids::watch(&other).await.unwrap();
    let e = flashsale::service::order_ids::next(&other)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unavailable");

    flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    let id = flashsale::service::order_ids::next(&other).await.unwrap();
    assert!(id > a);
    let r = app.try_buy_now(&t, sku, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(r.body["order_id"].as_u64().unwrap() > id);
}

/// An order open in MySQL whose payment window passed while Redis had lost it is expired by
/// the rebuild (found by the model-based test: it stayed awaiting_payment in MySQL for good and
/// its pay answered 503 "being restored" for ever).
#[tokio::test]
async fn rebuild_cache_expires_an_order_whose_window_passed_while_redis_was_lost() {
    let app = spawn_app_with(|c| c.sale.payment_ttl = std::time::Duration::from_secs(1)).await;
    let sku = app.sale_product(5, None).await;
    let t = app.customer_token(8_801);
    let r = app.try_buy_now(&t, sku, 2).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["order_id"].as_u64().unwrap();
    while app.write_back().await.events > 0 {}
    let mut conn = app.state.redis.conn();
    let keys: Vec<String> = conn.keys(app.state.redis.keys.pattern()).await.unwrap();
    let _: () = conn.del(keys).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;

    flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    while app.write_back().await.events > 0 {}
    app.sweep().await;
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = ?")
        .bind(id)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(status, "cancelled", "expired in MySQL");
    let r = app.try_order(&t, id).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["cancel_reason"], "expired");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.on_hand, b.available, b.reserved), (5, 5, 0));
}
