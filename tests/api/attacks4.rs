//! Attacks on the batched reservations (src/store/redis/lanes.rs) and the sold-out answered in
//! process (src/service/sold_out.rs): each test shows one defect found by review, against the
//! real Redis and MySQL.

use std::time::{Duration, Instant};

use flashsale::domain::{Sku, SkuMeta};
use flashsale::error::AppError;
use flashsale::store::redis::{
    Deadline, Redis, ReserveMode, ReserveOutcome, ReserveRequest, Rid, SkuLoad,
};
use futures::FutureExt as _;

use crate::helpers::*;

fn add(sku: Sku, user_id: u64) -> ReserveRequest {
    ReserveRequest {
        sku,
        user_id,
        count: 1,
        rid: Rid::Hold { user_id },
        deadline: Deadline::In(Duration::from_secs(600)),
        mode: ReserveMode::Add,
    }
}

/// A sale product of `units`, loaded into Redis.
async fn loaded(app: &TestApp, units: i64) -> Sku {
    let sku = app.sale_product(units, None).await;
    let s = Sku::parse(sku).unwrap();
    assert!(
        flashsale::service::catalog::ensure_loaded(&app.state, s)
            .await
            .unwrap()
    );
    s
}

/// A reservation whose request went away while it waited for its sku's call in flight (its
/// client hung up, its request deadline answered 408) was still sent in the next call: a hold
/// (or an order line) nobody will ever see, counted against the customer's limit and taking a
/// unit from everyone else until its deadline. Before the lanes, a request dropped before its
/// call was sent reserved nothing.
#[tokio::test]
async fn a_request_gone_before_its_call_was_sent_reserves_nothing() {
    let app = spawn_app().await;
    let s = loaded(&app, 5).await;
    let redis = app.state.redis.clone();
    // On this single-threaded runtime the sku's call starts only when the test yields: the
    // first request starts the lane, the second waits in it and is dropped before any call.
    let mut first = Box::pin(redis.reserve(add(s, 1)));
    assert!((&mut first).now_or_never().is_none());
    let mut gone = Box::pin(redis.reserve(add(s, 2)));
    assert!((&mut gone).now_or_never().is_none());
    drop(gone);
    let r = first.await.unwrap();
    assert!(matches!(r, ReserveOutcome::Reserved { .. }), "{r:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let holds = redis.holds(2, &[s]).await.unwrap();
    assert_eq!(
        holds,
        vec![None],
        "customer 2's request was dropped before its call was sent, yet it holds a unit"
    );
    assert_eq!(app.available(u64::from(s.get())).await, 4);
    app.assert_identity(u64::from(s.get())).await;
}

/// `for_repair()` (rebuild-cache's handle, exempt from the refusal while Redis is behind MySQL)
/// shared the lanes of the handle it came from: a customer's add that joined a call started by
/// the repair handle was reserved while every sale must be refused (Redis is behind MySQL: its
/// counters may be stale, selling from them oversells); and rebuild-cache's own restore that
/// joined a customer's call was refused, which stops the rebuild.
#[tokio::test]
async fn the_repair_handle_and_the_customers_never_share_a_call() {
    let app = spawn_app().await;
    let s = loaded(&app, 5).await;
    let redis = app.state.redis.clone();
    let repair = redis.for_repair();
    let _ = redis.mark_behind("test: Redis went back".into()).await;
    let now = redis.now_ms().await.unwrap();
    let restore = |order_id: u64| ReserveRequest {
        sku: s,
        user_id: 50,
        count: 1,
        rid: Rid::OrderLine { order_id },
        deadline: Deadline::At(now + 600_000),
        mode: ReserveMode::Restore,
    };

    // The rebuild's call first; a customer's add arrives while it is in flight.
    let mut rebuilt = Box::pin(repair.reserve(restore(70)));
    assert!((&mut rebuilt).now_or_never().is_none());
    let sold = redis.reserve(add(s, 3)).await;
    assert!(
        matches!(sold, Err(AppError::Unavailable(_))),
        "a customer's add was reserved while Redis is behind MySQL: {sold:?}"
    );
    let r = rebuilt.await;
    assert!(matches!(r, Ok(ReserveOutcome::Reserved { .. })), "{r:?}");

    // A customer's call first; the rebuild's restore arrives while it is in flight.
    let mut refused = Box::pin(redis.reserve(add(s, 4)));
    assert!((&mut refused).now_or_never().is_none());
    let r = repair.reserve(restore(71)).await;
    assert!(
        matches!(r, Ok(ReserveOutcome::Reserved { .. })),
        "rebuild-cache's restore was refused as a customer's sale: {r:?}"
    );
    let r = refused.await;
    assert!(matches!(r, Err(AppError::Unavailable(_))), "{r:?}");
}

/// A lane's driver task dropped before it ever ran (its runtime shut down) left the lane in
/// place: every later reservation of that sku joined it and waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_never_ran_does_not_strand_its_sku() {
    let app = spawn_app().await;
    let s = loaded(&app, 5).await;
    let redis = app.state.redis.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The request starts the lane and its driver task, then the runtime goes away before
        // the task ran.
        rt.block_on(async {
            let mut f = Box::pin(redis.reserve(add(s, 1)));
            assert!((&mut f).now_or_never().is_none());
        });
        drop(rt);
    })
    .join()
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), app.state.redis.reserve(add(s, 2))).await;
    assert!(
        matches!(r, Ok(Ok(ReserveOutcome::Reserved { .. }))),
        "a reservation of the sku never got an answer: {r:?}"
    );
}

/// While Redis does not answer (a stall: a fork, a slow command, a network blip), each call
/// of a sku waits out the response timeout, and a request waiting in the lane waits for every
/// call ahead of it: the n-th call's waiters wait n timeouts (here 2 a call, 16 requests: up
/// to 1.8 s at 200 ms; with the default 64 a call and thousands of requests in flight, past the
/// 15 s request deadline, and all sent once Redis answers again), where before the lanes every
/// request got its 503 after one timeout. A request waits at most about two timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_answers_every_waiter_within_about_two_timeouts() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("flashsale-attacks4-{port}"));
    let own = OwnRedis::start(port, &dir).await;
    let (_, prefix) = test_names();
    let mut cfg = test_config("unused", &prefix).stores;
    cfg.redis_url = own.url();
    cfg.redis_timeout = Duration::from_millis(200);
    cfg.redis_reserve_batch = 2;
    let redis = Redis::connect(&cfg).unwrap();
    redis.load_scripts().await.unwrap();
    let s = Sku::parse(4_242).unwrap();
    let meta = SkuMeta {
        name: "stalled".into(),
        price: 100,
        sale: None,
    };
    let load = SkuLoad {
        stock: vec![(1, 100)],
        sold_total: 0,
        bought: vec![],
    };
    redis.load_sku(s, &meta, &load).await.unwrap();

    let client = redis::Client::open(own.url()).unwrap();
    let mut pauser = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2_500)
        .arg("ALL")
        .query_async(&mut pauser)
        .await
        .unwrap();
    let started = Instant::now();
    let answers = futures::future::join_all((0..16u64).map(|user| {
        let redis = redis.clone();
        async move {
            let r = redis.reserve(add(s, 100 + user)).await;
            (started.elapsed(), r)
        }
    }))
    .await;
    for (took, r) in &answers {
        assert!(
            // Sent (its reply not heard) or answered unsent after waiting one timeout.
            matches!(
                r,
                Err(AppError::Unavailable(_) | AppError::OutcomeUnknown(_))
            ),
            "Redis was paused: {r:?}"
        );
        assert!(
            *took < Duration::from_millis(900),
            "a reservation waited {took:?} for a Redis that did not answer (timeout 200 ms): \
             {:?}",
            answers.iter().map(|(t, _)| *t).collect::<Vec<_>>()
        );
    }
    // The pause ends; the sku sells again.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let r = redis.reserve(add(s, 1)).await;
    assert!(matches!(r, Ok(ReserveOutcome::Reserved { .. })), "{r:?}");
    drop(own);
}

/// A TCP proxy that hands every byte on `delay` after it arrived, in order, both ways: a Redis
/// one round trip of 2 × `delay` away. Returns its Redis URL.
async fn delaying_proxy(target: &'static str, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0
                    || tx
                        .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((at, bytes)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if to.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
    }
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(target).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            pump(cr, sw, delay);
            pump(sr, cw, delay);
        }
    });
    format!("redis://127.0.0.1:{port}")
}

/// `FLASHSALE_REDIS_RESERVE_BATCH=1` ("one call each") still put a sku's reservations in one
/// lane, one call in flight at a time: a hot sku's reservations went one round trip after
/// another, where before the lanes they were pipelined on the shared connection. 64 concurrent
/// reservations through a Redis 20 ms away took 64 round trips (1.3 s) instead of about one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_one_is_no_lane_at_all() {
    let (_, prefix) = test_names();
    let mut cfg = test_config("unused", &prefix).stores;
    cfg.redis_url = delaying_proxy("127.0.0.1:6379", Duration::from_millis(10)).await;
    cfg.redis_reserve_batch = 1;
    let redis = Redis::connect(&cfg).unwrap();
    redis.load_scripts().await.unwrap();
    let s = Sku::parse(4_343).unwrap();
    let meta = SkuMeta {
        name: "far".into(),
        price: 100,
        sale: None,
    };
    let load = SkuLoad {
        stock: vec![(1, 1_000)],
        sold_total: 0,
        bought: vec![],
    };
    redis.load_sku(s, &meta, &load).await.unwrap();
    let started = Instant::now();
    let answers =
        futures::future::join_all((0..64u64).map(|user| redis.reserve(add(s, user)))).await;
    let took = started.elapsed();
    for r in &answers {
        assert!(matches!(r, Ok(ReserveOutcome::Reserved { .. })), "{r:?}");
    }
    let b = redis.stock(s).await.unwrap().unwrap();
    assert_eq!((b.available, b.held), (1_000 - 64, 64));
    redis.delete_all_keys().await;
    assert!(
        took < Duration::from_millis(500),
        "64 reservations of one sku, 20 ms round trip, batch 1: {took:?} (one round trip after \
         another)"
    );
}

/// The largest batch allowed (1,000 entries in one call): every entry its own outcome, the
/// units add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_a_thousand_entries_adds_up() {
    let app = spawn_app().await;
    let s = loaded(&app, 600).await;
    let reqs: Vec<ReserveRequest> = (0..1_000u64).map(|u| add(s, 10_000 + u)).collect();
    let out = app.state.redis.reserve_together(s, &reqs).await.unwrap();
    assert_eq!(out.len(), 1_000);
    let ok = out
        .iter()
        .filter(|r| matches!(r, Ok(ReserveOutcome::Reserved { .. })))
        .count();
    let refused = out
        .iter()
        .filter(|r| matches!(r, Ok(ReserveOutcome::OutOfStock { available: 0 })))
        .count();
    assert_eq!((ok, refused), (600, 400));
    let b = app.assert_identity(u64::from(s.get())).await;
    assert_eq!((b.available, b.held), (0, 600));
}

/// A cart hold past its deadline and not yet swept is its owner's to take again: Redis grants
/// that customer's add though nothing is available to anyone else (cart::holds_expire_and_
/// units_come_back). The sold-out answered in process refused it with 409 `out_of_stock` for as
/// long as other customers' refusals kept renewing what the instance knew (until the sweeper
/// gave the hold back), here with the crowd asking every 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_hold_is_its_owners_again_though_the_crowd_keeps_the_sku_known_sold_out() {
    let app = spawn_app_with(|c| {
        c.sale.cart_hold_ttl = Duration::from_millis(400);
        c.sweeper.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let sku = app.sale_product(2, None).await;
    let (owner, crowd) = (app.customer_token(601), app.customer_token(602));
    app.cart_add(&owner, sku, 2).await;
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        app.try_cart_add(&crowd, sku, 1).await.assert_error(
            reqwest::StatusCode::CONFLICT,
            "out_of_stock",
            "the crowd",
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The owner's hold lapsed a second ago, the sweeper is off: Redis gives it back to them.
    let r = app.try_cart_add(&owner, sku, 1).await;
    assert_eq!(
        r.status,
        reqwest::StatusCode::OK,
        "the owner of a lapsed, unswept hold re-adds: {:?}",
        r.body
    );
    assert_eq!(r.body["items"][0]["count"], 1);
    assert_eq!(app.available(sku).await, 1);
    app.assert_identity(sku).await;
}

/// While Redis is refused for sales (here: behind MySQL), an add of a sku known sold out asks
/// Redis and answers its 503; it was counted as refused in process all the same
/// (`flashsale_sold_out_in_process_total`, `SoldOut::refused`) though nothing was answered here.
#[tokio::test]
async fn an_add_refused_by_redis_is_not_counted_as_answered_in_process() {
    let app = spawn_app().await;
    let sku = app.sale_product(1, None).await;
    let s = Sku::parse(sku).unwrap();
    app.cart_add(&app.customer_token(701), sku, 1).await;
    let crowd = app.customer_token(703);
    eventually("the sku known sold out", Duration::from_secs(5), || async {
        // Taught by Redis's answers (once the live feed is subscribed).
        let _ = app.try_cart_add(&crowd, sku, 1).await;
        app.state.sold_out.is_known(s)
    })
    .await;
    let _ = app.state.redis.mark_behind("test".into()).await;
    let before = app.state.sold_out.refused();
    app.try_cart_add(&app.customer_token(702), sku, 1)
        .await
        .assert_error(
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "behind",
        );
    assert_eq!(
        app.state.sold_out.refused() - before,
        0,
        "Redis answered (503): nothing was refused in process"
    );
}

/// `reserve_together` (for tests and tools) with a request of another sku: that request would
/// be reserved on the call's sku (its keys), in a release build; a debug build stopped on a
/// `debug_assert`. It is refused, and nothing changes.
#[tokio::test]
async fn a_call_refuses_a_request_of_another_sku() {
    let app = spawn_app().await;
    let (a, b) = (loaded(&app, 3).await, loaded(&app, 3).await);
    let r = app
        .state
        .redis
        .reserve_together(a, &[add(a, 1), add(b, 2)])
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(app.available(u64::from(a.get())).await, 3);
    assert_eq!(app.available(u64::from(b.get())).await, 3);
}
