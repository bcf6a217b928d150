//! A third attacker's findings on admin stock and catalog changes broken off mid-way: a Redis
//! call that timed out and still ran, a COMMIT that never reached MySQL while the connection's
//! server side stayed open, and `flashsale rebuild-cache` running beside a change or its settle.
//! Each test stages its fault with a redis-server or a TCP proxy of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::domain::Sku;
use reqwest::StatusCode;

use crate::helpers::{TestApp, eventually, mysql_base, spawn_app_with};
use crate::model::faults::{Proxy, RedisProc, ServiceProc, Trap, app_through_proxy};

/// A pool straight to the test's database (not through the proxy).
async fn direct_pool(app: &TestApp) -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&format!("{}/{}", mysql_base(), app.db_name))
        .await
        .unwrap()
}

/// Redis's available count of a sku, straight from its stock hash.
async fn redis_avail(app: &TestApp, sku: u64) -> i64 {
    app.state
        .redis
        .stock(Sku::parse(sku).unwrap())
        .await
        .unwrap()
        .map(|s| s.available)
        .unwrap_or(-1)
}

/// MySQL's on-hand units of a sku, all warehouses.
async fn mysql_on_hand(app: &TestApp, sku: u64) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT CAST(SUM(on_hand) AS SIGNED) FROM stock WHERE sku = ?",
    )
    .bind(sku as u32)
    .fetch_one(&app.state.db)
    .await
    .unwrap()
    .unwrap_or(0)
}

/// Keeps a redis-server busy for `busy` with a script that loops (commands sent meanwhile wait
/// and run after it, as on a Redis stalled by a slow command or a fork).
fn stall_redis(url: String, busy: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let script = "local t0 = redis.call('TIME') \
            local stop = tonumber(t0[1]) * 1000000 + tonumber(t0[2]) + tonumber(ARGV[1]) \
            while true do \
              local t = redis.call('TIME') \
              if tonumber(t[1]) * 1000000 + tonumber(t[2]) >= stop then break end \
            end return 1";
        let _: Result<i64, _> = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg(busy.as_micros() as u64)
            .query_async(&mut c)
            .await;
    })
}

/// An app on a redis-server of its own, with a short Redis response timeout.
async fn app_on_own_redis() -> (TestApp, RedisProc) {
    let port = 21_000 + (rand::random::<u16>() % 8_000);
    let redis = RedisProc::start(port).await;
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.stores.redis_url = url;
        c.stores.redis_timeout = Duration::from_millis(300);
    })
    .await;
    (app, redis)
}

/// A price change whose Redis call timed out while Redis was stalled: MySQL rolled the change
/// back, and the call still ran once Redis was free. Redis must not be left selling at a price
/// MySQL never committed (reconcile does not compare catalog entries).
#[tokio::test]
async fn a_price_change_whose_redis_call_timed_out_leaves_redis_at_mysqls_price() {
    let (app, redis) = app_on_own_redis().await;
    let sku = app.product("p", 100).await;
    let s = Sku::parse(sku).unwrap();
    // Loaded into Redis (the catalog entry too).
    app.get_product(sku).await;

    let stall = stall_redis(redis.url(), Duration::from_millis(1_500));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app
        .patch(
            &format!("/v1/products/{sku}"),
            Some(&app.admin_token),
            serde_json::json!({"price": 1}),
        )
        .await;
    stall.await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_500)).await;

    let mysql_price: u64 = sqlx::query_scalar("SELECT price FROM products WHERE sku = ?")
        .bind(sku as u32)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let redis_price = app.state.redis.metas(&[s]).await.unwrap()[0]
        .clone()
        .expect("a catalog entry")
        .price;
    assert_eq!(
        redis_price, mysql_price,
        "answer {} {:?}: Redis sells at {redis_price}, MySQL holds {mysql_price}",
        r.status, r.body
    );
    if r.status == StatusCode::OK {
        assert_eq!(
            mysql_price, 1,
            "answered 200 but the change is not in MySQL"
        );
    }
}

/// The same for a stock change, its Redis call stalled after MySQL's part (held up: the token
/// in lua/adjust_stock.lua makes the late call and its undo meet once, in either order).
#[tokio::test]
async fn a_stock_change_whose_redis_call_timed_out_leaves_redis_at_mysqls_stock() {
    let (app, redis) = app_on_own_redis().await;
    let direct = direct_pool(&app).await;
    let w = app.warehouse("w").await;
    let sku = app.product("p", 100).await;
    app.restock(sku, w, 10).await;

    // The change waits at its note in stock_adjustments (a third session holds the table's
    // gap), after its Redis reads; Redis stalls; the note goes in; the Redis call times out.
    let mut holder = direct.begin().await.unwrap();
    sqlx::query("SELECT token FROM stock_adjustments FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let admin = {
        let (addr, client, token) = (
            app.addr.clone(),
            app.client.clone(),
            app.admin_token.clone(),
        );
        tokio::spawn(async move {
            let r = client
                .post(format!("{addr}/v1/products/{sku}/stock"))
                .bearer_auth(token)
                .json(&serde_json::json!({"warehouse_id": w, "delta": 5}))
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stall = stall_redis(redis.url(), Duration::from_millis(1_500));
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.rollback().await.unwrap();
    let (status, body) = admin.await.unwrap();
    stall.await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (on_hand, avail) = (mysql_on_hand(&app, sku).await, redis_avail(&app, sku).await);
    assert_eq!(
        avail, on_hand,
        "answer {status} {body}: Redis has {avail} available, MySQL {on_hand} on hand"
    );
    assert_eq!(
        on_hand,
        if status == StatusCode::OK { 15 } else { 10 },
        "{status} {body}"
    );
    app.assert_identity(sku).await;
}

/// An addition whose COMMIT never reached MySQL, the connection's server side still open (its
/// row locks held until MySQL notices): Redis's part was sellable at once, and customers bought
/// it before the settle could take it back. MySQL then rolls back: the units sold never existed.
/// An addition now reaches Redis only once MySQL's outcome is known.
#[tokio::test]
async fn an_addition_whose_commit_never_arrived_is_not_sold() {
    let (app, proxy) = app_through_proxy().await;
    let w = app.warehouse("w").await;
    let sku = app.product("p", 100).await;
    app.open_sale(sku, 50, None).await;
    assert_eq!(redis_avail(&app, sku).await, 0);

    proxy.arm(Trap::Drop(Duration::from_millis(2_000)));
    let admin = {
        let (addr, client, token) = (
            app.addr.clone(),
            app.client.clone(),
            app.admin_token.clone(),
        );
        tokio::spawn(async move {
            client
                .post(format!("{addr}/v1/products/{sku}/stock"))
                .bearer_auth(token)
                .json(&serde_json::json!({"warehouse_id": w, "delta": 3}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // The COMMIT sent (and dropped): MySQL's outcome is not known until its side of the
    // connection closes, two seconds on. A customer asks for the three units meanwhile.
    eventually("the addition's COMMIT", Duration::from_secs(10), || async {
        !proxy.armed()
    })
    .await;
    let seen = redis_avail(&app, sku).await;
    let t = app.customer_token(7);
    let bought = app.try_buy_now(&t, sku, 3).await;
    let status = admin.await.unwrap();
    // The settle has run once MySQL rolled back (the request waits up to 3 s for it).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let on_hand = mysql_on_hand(&app, sku).await;
    assert_eq!(on_hand, 0, "MySQL rolled the addition back");
    assert_ne!(
        bought.status,
        StatusCode::CREATED,
        "admin answered {status}; a customer bought 3 units of an addition MySQL never \
         committed (Redis showed {seen} available while the COMMIT was under way; on hand \
         {on_hand}, Redis available now {}): oversold",
        redis_avail(&app, sku).await
    );
    assert_eq!(seen, 0, "Redis sold an addition whose COMMIT was under way");
    assert_ne!(status, StatusCode::OK, "the addition was never committed");
    assert_eq!(redis_avail(&app, sku).await, 0);
    app.assert_identity(sku).await;
}

/// `flashsale rebuild-cache` running while a removal is between its Redis part and its COMMIT:
/// the rebuild reloads the sku from MySQL without the uncommitted removal, then the COMMIT goes
/// through. Redis must not keep the removed units.
#[tokio::test]
async fn a_rebuild_during_a_removal_does_not_put_the_removed_units_back() {
    let (app, proxy) = app_through_proxy().await;
    let w = app.warehouse("w").await;
    let sku = app.product("p", 100).await;
    app.restock(sku, w, 10).await;

    proxy.arm(Trap::Delay(Duration::from_millis(1_500)));
    let admin = {
        let (addr, client, token) = (
            app.addr.clone(),
            app.client.clone(),
            app.admin_token.clone(),
        );
        tokio::spawn(async move {
            client
                .post(format!("{addr}/v1/products/{sku}/stock"))
                .bearer_auth(token)
                .json(&serde_json::json!({"warehouse_id": w, "delta": -5}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    eventually(
        "Redis's part of the removal",
        Duration::from_secs(10),
        || async { redis_avail(&app, sku).await == 5 },
    )
    .await;
    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(admin.await.unwrap(), StatusCode::OK);
    let (on_hand, avail) = (mysql_on_hand(&app, sku).await, redis_avail(&app, sku).await);
    assert_eq!(on_hand, 5);
    assert_eq!(
        avail, on_hand,
        "after the rebuild Redis sells {avail} units, MySQL has {on_hand}"
    );
}

/// A removal broken off at its COMMIT (never committed) is settled while `rebuild-cache` is
/// under way: the rebuild already reloaded the sku from MySQL (which never took the removal)
/// but has not written its marker yet, so the settle takes the removal back a second time.
#[tokio::test]
async fn a_settle_during_a_rebuild_does_not_take_a_change_back_twice() {
    let (app, proxy) = app_through_proxy().await;
    let direct = direct_pool(&app).await;
    let w = app.warehouse("w").await;
    let sku = app.product("a", 100).await;
    let later = app.product("b", 100).await;
    assert!(later > sku);
    app.restock(sku, w, 10).await;

    // The removal's COMMIT held, then the link cut: never committed; the service's settle
    // cannot reach MySQL until `restore`.
    proxy.arm(Trap::Delay(Duration::from_secs(30)));
    let admin = {
        let (addr, client, token) = (
            app.addr.clone(),
            app.client.clone(),
            app.admin_token.clone(),
        );
        tokio::spawn(async move {
            client
                .post(format!("{addr}/v1/products/{sku}/stock"))
                .bearer_auth(token)
                .json(&serde_json::json!({"warehouse_id": w, "delta": -5}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    eventually(
        "Redis's part of the removal",
        Duration::from_secs(10),
        || async { redis_avail(&app, sku).await == 5 },
    )
    .await;
    proxy.cut();
    let status = admin.await.unwrap();
    assert_ne!(status, StatusCode::OK, "the removal was never committed");

    // rebuild-cache, run by an operator on a link of its own, is slow past this sku: the next
    // product's row is held by a third session.
    let mut holder = direct.begin().await.unwrap();
    sqlx::query("SELECT sku FROM products WHERE sku = ? FOR UPDATE")
        .bind(later as u32)
        .execute(&mut *holder)
        .await
        .unwrap();
    let rebuild = {
        let state = flashsale::app::AppState {
            db: direct.clone(),
            ..app.state.clone()
        };
        tokio::spawn(async move { flashsale::service::reconcile::rebuild_cache(&state).await })
    };
    eventually(
        "the rebuild's reload of the sku",
        Duration::from_secs(10),
        || async { redis_avail(&app, sku).await == 10 },
    )
    .await;

    // MySQL reachable again: the settle (retrying with a growing pause) finds the removal
    // never committed.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline && redis_avail(&app, sku).await == 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.rollback().await.unwrap();
    let report = rebuild.await.unwrap().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (on_hand, avail) = (mysql_on_hand(&app, sku).await, redis_avail(&app, sku).await);
    assert_eq!(on_hand, 10, "MySQL never took the removal");
    assert_eq!(
        avail, on_hand,
        "Redis sells {avail} units, MySQL has {on_hand}: the removal was taken back twice"
    );
}

/// A stock change whose COMMIT went through while its answer was lost, and MySQL then out of
/// reach for longer than the request waits for the settle: the 503 says the outcome is not known
/// yet. It must not also say "nothing was changed, retry shortly" with a `Retry-After` (what
/// every other 503 says): an admin or a client retrying on it adds the units twice.
#[tokio::test]
async fn a_stock_change_of_unknown_outcome_does_not_answer_nothing_was_changed() {
    let (app, proxy) = app_through_proxy().await;
    let w = app.warehouse("w").await;
    let sku = app.product("p", 100).await;
    app.restock(sku, w, 10).await;

    proxy.arm(Trap::Swallow);
    let admin = {
        let (addr, client, token) = (
            app.addr.clone(),
            app.client.clone(),
            app.admin_token.clone(),
        );
        tokio::spawn(async move {
            let r = client
                .post(format!("{addr}/v1/products/{sku}/stock"))
                .bearer_auth(token)
                .json(&serde_json::json!({"warehouse_id": w, "delta": 5}))
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").cloned();
            (r.status(), retry_after, r.text().await.unwrap())
        })
    };
    let swallowed = proxy.swallowed.clone();
    eventually("the COMMIT passed on", Duration::from_secs(10), || {
        let s = swallowed.clone();
        async move { s.load(std::sync::atomic::Ordering::SeqCst) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    let (status, retry_after, body) = admin.await.unwrap();
    proxy.restore();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    eventually(
        "the committed change in MySQL",
        Duration::from_secs(10),
        || async { mysql_on_hand(&app, sku).await == 15 },
    )
    .await;
    assert!(
        !body.contains("nothing was changed") && retry_after.is_none(),
        "the change was committed, and the answer says: {body} (Retry-After: {retry_after:?})"
    );
    // Once the outcome is known, Redis sells the committed units (applied once).
    eventually(
        "the committed change in Redis",
        Duration::from_secs(15),
        || async { redis_avail(&app, sku).await == 15 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(redis_avail(&app, sku).await, 15);
}

/// The service as a process of its own (so it can be SIGKILLed) whose MySQL connections go
/// through `proxy`; the test's handle reaches MySQL straight.
async fn service_through_proxy() -> (ServiceProc, Arc<Proxy>, TestApp) {
    let host = mysql_base().trim_start_matches("mysql://root@").to_string();
    let proxy = Arc::new(Proxy::start(host.clone()).await);
    let through = format!("127.0.0.1:{}", proxy.port);
    let (db_name, prefix) = crate::helpers::test_names();
    let direct_cfg = crate::helpers::test_config(&db_name, &prefix);
    let mut cfg = direct_cfg.clone();
    cfg.stores.mysql_url = cfg.stores.mysql_url.replace(&host, &through);
    let service = ServiceProc::start(&cfg).await;
    let state = flashsale::app::AppState::connect(direct_cfg).await.unwrap();
    let app = TestApp::attach(service.addr(), state, db_name, prefix).await;
    (service, proxy, app)
}

/// An admin stock change sent in a task of its own (its answer may never come).
fn send_stock_change(
    app: &TestApp,
    sku: u64,
    w: u64,
    delta: i64,
) -> tokio::task::JoinHandle<Result<StatusCode, reqwest::Error>> {
    let (addr, client, token) = (
        app.addr.clone(),
        app.client.clone(),
        app.admin_token.clone(),
    );
    tokio::spawn(async move {
        client
            .post(format!("{addr}/v1/products/{sku}/stock"))
            .bearer_auth(token)
            .json(&serde_json::json!({"warehouse_id": w, "delta": delta}))
            .send()
            .await
            .map(|r| r.status())
    })
}

/// SIGKILL; the service's MySQL connections then drop (MySQL rolls back what it did not commit)
/// and the service comes back, with nothing in memory of what it was doing.
async fn kill_and_restart(service: &ServiceProc, proxy: &Arc<Proxy>) {
    let p = proxy.clone();
    let cutter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.cut();
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.restore();
    });
    service.kill_and_restart(Duration::from_millis(500)).await;
    cutter.await.unwrap();
}

/// The service killed while a stock change's COMMIT is under way (a crash, a deploy's SIGKILL,
/// an OOM kill): MySQL rolls the change back when the connection dies, and nothing was left to
/// settle it: the settle task lived in the process. Redis kept the five units of an addition
/// MySQL never had, after the restart too. An addition now reaches Redis only once MySQL's
/// outcome is known (and a pending change is settled by the sweeper: the tests below).
#[tokio::test]
async fn a_stock_change_in_flight_when_the_service_dies_is_settled_after_the_restart() {
    let (service, proxy, app) = service_through_proxy().await;
    let w = app.warehouse("w").await;
    let sku = app.product("p", 100).await;
    app.restock(sku, w, 10).await;

    proxy.arm(Trap::Delay(Duration::from_secs(60)));
    let admin = send_stock_change(&app, sku, w, 5);
    eventually("the addition's COMMIT", Duration::from_secs(10), || async {
        !proxy.armed()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill_and_restart(&service, &proxy).await;
    let _ = admin.await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let (on_hand, avail) = (mysql_on_hand(&app, sku).await, redis_avail(&app, sku).await);
    assert_eq!(on_hand, 10, "MySQL rolled the addition back");
    assert_eq!(
        avail,
        on_hand,
        "after the restart Redis sells {avail} units, MySQL has {on_hand}: oversold by {}",
        avail - on_hand
    );
}

/// A removal's units leave Redis before its COMMIT (so Redis never sells what MySQL may have
/// lost). The service killed while that COMMIT is held: MySQL rolls the removal back, and the
/// five units stayed out of Redis for good (nothing in the new process knew of the change). The
/// change is recorded as pending with the sku, and the restarted service's sweeper settles it
/// from MySQL's token row, with no task of the old process.
#[tokio::test]
async fn a_removal_in_flight_when_the_service_dies_is_given_back_after_the_restart() {
    let (service, proxy, app) = service_through_proxy().await;
    let w = app.warehouse("w").await;
    let sku = app.product("p", 100).await;
    app.restock(sku, w, 10).await;

    proxy.arm(Trap::Delay(Duration::from_secs(60)));
    let admin = send_stock_change(&app, sku, w, -5);
    eventually("the removal's COMMIT", Duration::from_secs(10), || async {
        !proxy.armed()
    })
    .await;
    assert_eq!(
        redis_avail(&app, sku).await,
        5,
        "the removal leaves Redis first"
    );
    kill_and_restart(&service, &proxy).await;
    let _ = admin.await.unwrap();
    assert_eq!(
        mysql_on_hand(&app, sku).await,
        10,
        "MySQL rolled the removal back"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && redis_avail(&app, sku).await != 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        redis_avail(&app, sku).await,
        10,
        "20 s after the restart Redis still hides the 5 units MySQL kept"
    );
    app.assert_identity(sku).await;
}

/// An addition committed by MySQL while its answer was lost, and the service killed before it
/// learnt the outcome: the addition never reached Redis (it goes there only once MySQL's
/// outcome is known), so nothing of the old process can put it there. The restarted service's
/// sweeper finds the pending change, reads MySQL's token row and applies it, once.
#[tokio::test]
async fn an_addition_committed_when_the_service_died_reaches_redis_after_the_restart() {
    let (service, proxy, app) = service_through_proxy().await;
    let w = app.warehouse("w").await;
    let sku = app.product("p", 100).await;
    app.restock(sku, w, 10).await;

    proxy.arm(Trap::Swallow);
    let admin = send_stock_change(&app, sku, w, 5);
    let swallowed = proxy.swallowed.clone();
    eventually("the COMMIT passed on", Duration::from_secs(10), || {
        let s = swallowed.clone();
        async move { s.load(std::sync::atomic::Ordering::SeqCst) }
    })
    .await;
    eventually(
        "the committed addition",
        Duration::from_secs(10),
        || async { mysql_on_hand(&app, sku).await == 15 },
    )
    .await;
    kill_and_restart(&service, &proxy).await;
    let _ = admin.await.unwrap();

    eventually(
        "the addition in Redis after the restart",
        Duration::from_secs(20),
        || async { redis_avail(&app, sku).await == 15 },
    )
    .await;
    // Once: further passes leave it alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(redis_avail(&app, sku).await, 15);
    assert_eq!(mysql_on_hand(&app, sku).await, 15);
    app.assert_identity(sku).await;
}

/// A catalog entry in Redis that MySQL does not hold (what a timed-out price change left before
/// it was fixed): reconcile does not compare catalog entries, and rebuild-cache kept an existing
/// entry, so nothing an operator runs put it right. rebuild-cache now writes MySQL's.
#[tokio::test]
async fn rebuild_cache_puts_a_stale_catalog_entry_right() {
    use redis::AsyncCommands;

    let app = spawn_app_with(|_| {}).await;
    let sku = app.product("p", 100).await;
    let s = Sku::parse(sku).unwrap();
    app.get_product(sku).await;
    let meta_key = app.state.redis.keys.sku(s).meta();
    let _: () = app
        .state
        .redis
        .conn()
        .hset(&meta_key, "price", 1)
        .await
        .unwrap();
    let report = flashsale::service::reconcile::rebuild_cache(&app.state)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let meta = app.state.redis.metas(&[s]).await.unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(
        meta.price, 100,
        "Redis still sells at the price MySQL never held"
    );
}

/// The fence of a given-up catalog change, with the calls in the order a stalled Redis may run
/// them (the put-right first, the late change after it, as on two connections read in either
/// order): the late change writes nothing; a change of another token still does.
#[tokio::test]
async fn a_late_catalog_change_after_its_put_right_writes_nothing() {
    use flashsale::store::redis::MetaWrite;
    let app = spawn_app_with(|_| {}).await;
    let sku = app.product("p", 100).await;
    let s = Sku::parse(sku).unwrap();
    app.get_product(sku).await;
    let redis = &app.state.redis;
    let entry = redis.metas(&[s]).await.unwrap()[0].clone().unwrap();
    let mut changed = entry.clone();
    changed.price = 1;

    assert!(
        redis
            .set_meta(s, &entry, MetaWrite::Fence(41))
            .await
            .unwrap()
    );
    assert!(
        !redis
            .set_meta(s, &changed, MetaWrite::Change(41))
            .await
            .unwrap()
    );
    assert_eq!(
        redis.metas(&[s]).await.unwrap()[0].clone().unwrap().price,
        100
    );

    assert!(
        redis
            .set_meta(s, &changed, MetaWrite::Change(42))
            .await
            .unwrap()
    );
    assert_eq!(
        redis.metas(&[s]).await.unwrap()[0].clone().unwrap().price,
        1
    );
}
