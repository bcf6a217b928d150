//! Admin stock changes whose MySQL commit or Redis call broke off. The model-based soak found
//! Redis holding two units more than MySQL after a change whose COMMIT reached MySQL while the
//! connection broke: the service took it for a failure and took Redis's part back.

use reqwest::StatusCode;

use crate::helpers::spawn_app_with;
use crate::model::faults::{Trap, app_through_proxy};

#[tokio::test]
async fn a_stock_change_committed_while_its_connection_broke_stays_in_redis() {
    let (app, proxy) = app_through_proxy().await;
    let w = app.warehouse("w").await;
    let sku = app.product("p", 100).await;
    assert_eq!(app.add_stock(sku, w, 10).await.status, StatusCode::OK);

    let mut expected = 10;
    for delta in [-2i64, 3, -1] {
        proxy.arm(Trap::AnswerLost);
        let r = app.add_stock(sku, w, delta).await;
        assert!(!proxy.armed(), "the change's COMMIT went through the trap");
        // MySQL committed: the change happened, and the answer says so.
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        expected += delta;
        assert_eq!(r.body["on_hand"], expected, "{:?}", r.body);
        assert_eq!(r.body["available"], expected, "{:?}", r.body);
        let b = app.assert_identity(sku).await;
        assert_eq!((b.on_hand, b.available), (expected, expected));
    }
}

/// lua/adjust_stock.lua by token: applying or taking back a change twice does it once, and a
/// change taken back before it was applied never applies (its call's answer may have been lost,
/// and the call itself still on its way).
#[tokio::test]
async fn a_stock_change_applies_and_is_taken_back_at_most_once() {
    use flashsale::domain::Sku;
    use flashsale::store::redis::AdjustOutcome;

    let app = spawn_app_with(|_| {}).await;
    let w = app.warehouse("w").await;
    let sku_n = app.product("p", 100).await;
    assert_eq!(app.add_stock(sku_n, w, 10).await.status, StatusCode::OK);
    let (redis, sku, w32) = (&app.state.redis, Sku::parse(sku_n).unwrap(), w as u32);
    let avail = |o: AdjustOutcome| match o {
        AdjustOutcome::Adjusted { available, .. } => Some(available),
        AdjustOutcome::Same => None,
        other => panic!("unexpected {other:?}"),
    };

    let t = 0x1234_5678;
    assert_eq!(
        avail(redis.adjust_stock(sku, w32, 5, t, false).await.unwrap()),
        Some(15)
    );
    assert_eq!(
        avail(redis.adjust_stock(sku, w32, 5, t, false).await.unwrap()),
        None
    );
    assert_eq!(
        avail(redis.adjust_stock(sku, w32, 5, t, true).await.unwrap()),
        Some(10)
    );
    assert_eq!(
        avail(redis.adjust_stock(sku, w32, 5, t, true).await.unwrap()),
        None
    );
    assert_eq!(
        avail(redis.adjust_stock(sku, w32, 5, t, false).await.unwrap()),
        None
    );

    let u = 0x9abc_def0;
    assert_eq!(
        avail(redis.adjust_stock(sku, w32, -4, u, true).await.unwrap()),
        None
    );
    assert_eq!(
        avail(redis.adjust_stock(sku, w32, -4, u, false).await.unwrap()),
        None
    );
    assert_eq!(app.available(sku_n).await, 10);
    app.assert_identity(sku_n).await;
}

/// The same for a catalog change (price, sale window): Redis's entry is what MySQL committed,
/// not the entry from before the change.
#[tokio::test]
async fn a_price_change_committed_while_its_connection_broke_is_what_redis_sells_at() {
    use flashsale::domain::Sku;

    let (app, proxy) = app_through_proxy().await;
    let sku = app.product("p", 100).await;

    proxy.arm(Trap::AnswerLost);
    let path = format!("/v1/products/{sku}");
    let r = app
        .patch(
            &path,
            Some(&app.admin_token),
            serde_json::json!({"price": 250}),
        )
        .await;
    assert!(!proxy.armed(), "the change's COMMIT went through the trap");
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["price"], 250, "{:?}", r.body);
    let metas = app
        .state
        .redis
        .metas(&[Sku::parse(sku).unwrap()])
        .await
        .unwrap();
    let meta = metas[0].clone().expect("the catalog entry is in Redis");
    assert_eq!(meta.price, 250, "Redis sells at the committed price");
}
