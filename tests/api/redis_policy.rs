//! Redis's maxmemory-policy: anything but `noeviction` may evict stock counters, ledgers and
//! order records (oversell, reused ids, lost orders), so the service refuses to start, /readyz
//! fails and sales answer 503 while Redis may evict keys. Each test runs a Redis of its own.

use std::time::Duration;

use flashsale::startup::Application;
use reqwest::StatusCode;

use crate::helpers::{OwnRedis, eventually, free_port};
use crate::helpers::{drop_database, spawn_app_with, test_config, test_names};

async fn own_redis() -> OwnRedis {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("flashsale-policy-{port}"));
    OwnRedis::start(port, &dir).await
}

async fn set_policy(url: &str, policy: &str) {
    set_config(url, "maxmemory-policy", policy).await;
}

async fn set_config(url: &str, name: &str, value: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_service_refuses_to_start_on_a_redis_that_may_evict() {
    let redis_server = own_redis().await;
    set_policy(&redis_server.url(), "allkeys-lru").await;
    let (db_name, prefix) = test_names();
    let mut cfg = test_config(&db_name, &prefix);
    cfg.stores.redis_url = redis_server.url();
    let err = match Application::build(cfg).await {
        Ok(_) => panic!("the service started on a Redis with allkeys-lru"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("allkeys-lru"), "{err}");
    assert!(err.contains("noeviction"), "{err}");
    // The database it made while starting is the test's to drop.
    drop_database(&db_name).await;
}

#[tokio::test]
async fn a_policy_changed_at_run_time_stops_sales_and_readiness_until_it_is_noeviction() {
    let redis_server = own_redis().await;
    let url = redis_server.url();
    let app = spawn_app_with(|c| {
        c.stores.redis_url = url.clone();
        c.telemetry.metrics_interval = Duration::from_millis(100);
    })
    .await;
    let sku = app.sale_product(10, None).await;
    let token = app.customer_token(7);
    let add = |n: u32| app.try_cart_add(&token, sku, u64::from(n));
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    assert_eq!(add(1).await.status, StatusCode::OK);

    set_policy(&url, "volatile-lru").await;
    // /readyz looks itself; the sale routes learn it within a metrics interval.
    // The API's says whether; the operators' listener also says why.
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let public = r.body["error"]["message"].as_str().unwrap();
    assert!(!public.contains("volatile-lru"), "{public}");
    let r = app.ops_get("/readyz").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let why = r.text().await.unwrap();
    assert!(why.contains("volatile-lru"), "{why}");
    eventually("sales refused", Duration::from_secs(5), || async {
        add(1).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let before = app.assert_identity(sku).await;
    for _ in 0..3 {
        let r = add(1).await;
        r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
        let r = app.try_buy_now(&token, sku, 1).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    }
    assert_eq!(
        app.assert_identity(sku).await,
        before,
        "a refused sale changed stock"
    );
    assert!(
        app.metrics_text()
            .await
            .contains("flashsale_redis_eviction_safe 0"),
        "the gauge shows the unsafe policy"
    );

    set_policy(&url, "noeviction").await;
    eventually("sales again", Duration::from_secs(5), || async {
        add(1).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    app.assert_identity(sku).await;
}

#[tokio::test]
async fn a_full_redis_answers_503_and_changes_nothing() {
    let redis_server = own_redis().await;
    let url = redis_server.url();
    let app = spawn_app_with(|c| c.stores.redis_url = url.clone()).await;
    let sku = app.sale_product(10, None).await;
    let token = app.customer_token(8);
    let buy = || app.try_buy_now(&token, sku, 1);
    assert_eq!(buy().await.status, StatusCode::CREATED);
    let before = app.assert_identity(sku).await;

    // noeviction with no room left: Redis refuses every write with OOM.
    set_config(&url, "maxmemory", "1").await;
    for _ in 0..3 {
        let r = buy().await;
        r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
    }
    set_config(&url, "maxmemory", "0").await;
    assert_eq!(
        app.assert_identity(sku).await,
        before,
        "a refused sale changed stock"
    );
    assert_eq!(buy().await.status, StatusCode::CREATED);
    app.assert_identity(sku).await;
}
