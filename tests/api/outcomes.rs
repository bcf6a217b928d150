//! Outcomes nobody heard (issue 22): a script whose reply is late or lost, or whose request went
//! away mid-call, has often run. Each test puts a proxy between the service and Redis that holds
//! the replies (the script ran, its answer came late) or the requests (Redis froze) from the
//! moment the service sends one script, and checks that every unit is where its owner can see
//! it: a hold is in its cart, a checkout's lines are back in the cart, a buy-now's unit is back.

use std::time::Duration;

use flashsale::domain::Sku;
use flashsale::store::redis::{
    ConvertOutcome, Deadline, PlacementNote, ReserveMode, ReserveOutcome, ReserveRequest, Rid,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    Held, app_behind_proxy, eventually, held_in_redis, script_sha, spawn_app_with,
};

/// Cart adds of 30 customers (limit 1) while the first reservation call's reply (or request) is
/// held past the service's Redis timeout: every customer's cart shows exactly what Redis holds
/// for them, a 503 that says nothing was changed changed nothing, and a retry answers by what
/// the cart shows (409 `limit_exceeded` with the unit in the cart, or 200).
async fn cart_adds_while_redis_stalls(held: Held) {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(30, Some(1)).await;
    let users: Vec<u64> = (0..30).map(|i| 9_100 + i).collect();
    // The first call is held a little (the others gather in its sku's lane meanwhile), the
    // next one, a batch of the rest, past the timeout.
    proxy.arm(
        &script_sha(|s| &s.reserve),
        Held::Replies,
        Duration::from_millis(150),
    );
    proxy.arm(
        &script_sha(|s| &s.reserve),
        held,
        Duration::from_millis(1_500),
    );
    let answers = futures::future::join_all(users.iter().map(|&u| {
        let (app, t) = (&app, app.customer_token(u));
        async move { app.try_cart_add(&t, sku, 1).await }
    }))
    .await;
    assert!(proxy.sprung(), "the trap never met a reserve call");
    let unheard = answers
        .iter()
        .filter(|r| r.code() == "outcome_unknown")
        .count();
    eprintln!(
        "{held:?}: {} answered 200, {unheard} outcome_unknown, {} unavailable",
        answers
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count(),
        answers.iter().filter(|r| r.code() == "unavailable").count()
    );
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    for (&u, answer) in users.iter().zip(&answers) {
        let t = app.customer_token(u);
        assert!(
            [200, 503].contains(&answer.status.as_u16()),
            "user {u}: {:?}",
            answer.body
        );
        // The background indexing after a lost reply has had its time.
        eventually(
            "the cart shows what Redis holds",
            Duration::from_secs(5),
            || async {
                let (hold, _) = held_in_redis(&app, u, sku).await;
                let shown = app.cart(&t).await.line(sku).map(|l| l.count as u32);
                shown == hold
            },
        )
        .await;
        let (hold, _) = held_in_redis(&app, u, sku).await;
        if answer.code() == "unavailable" {
            assert_eq!(
                hold, None,
                "user {u}: 503 'nothing was changed' but a unit is held"
            );
        }
        let retry = app.try_cart_add(&t, sku, 1).await;
        match hold {
            // Refused by the limit, or in process while this instance knows the sku sold out.
            Some(1) => assert!(
                retry.status == StatusCode::CONFLICT
                    && ["limit_exceeded", "out_of_stock"].contains(&retry.code()),
                "user {u}: {:?}",
                retry.body
            ),
            None => assert_eq!(retry.status, StatusCode::OK, "user {u}: {:?}", retry.body),
            other => panic!("user {u}: holds {other:?} after one add of 1"),
        }
        assert_eq!(app.cart(&t).await.line(sku).map(|l| l.count), Some(1));
    }
    // A batch met the held call (checked last: first what each customer sees).
    assert!(unheard > 1, "no batch met the held call: {unheard} unheard");
    app.assert_identity(sku).await;
}

#[tokio::test]
async fn cart_adds_whose_replies_come_late_are_in_their_carts() {
    cart_adds_while_redis_stalls(Held::Replies).await;
}

#[tokio::test]
async fn cart_adds_while_redis_freezes_are_in_their_carts() {
    cart_adds_while_redis_stalls(Held::Requests).await;
}

/// A customer whose client hangs up while the add's (batched) call is in flight: the call runs
/// to its end, and the cart shows the hold it made.
#[tokio::test]
async fn a_cart_add_whose_client_hung_up_mid_call_is_in_the_cart() {
    let (app, proxy) = app_behind_proxy(Duration::from_secs(5)).await;
    let sku = app.sale_product(10, Some(2)).await;
    let user = 9_200;
    let t = app.customer_token(user);
    proxy.arm(
        &script_sha(|s| &s.reserve),
        Held::Replies,
        Duration::from_millis(800),
    );
    let cut = app
        .client
        .post(format!("{}/v1/cart/items", app.addr))
        .bearer_auth(&t)
        .json(&json!({"sku": sku, "count": 1}))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(cut.is_err(), "the client was meant to give up: {cut:?}");
    assert!(proxy.sprung());
    eventually("the hold is made", Duration::from_secs(5), || async {
        held_in_redis(&app, user, sku).await.0 == Some(1)
    })
    .await;
    let cart = app.cart(&t).await;
    assert_eq!(
        cart.line(sku).map(|l| l.count),
        Some(1),
        "a unit held but not in the cart: {cart:?}"
    );
    app.assert_identity(sku).await;
}

/// A checkout whose `convert_hold` reply is late: the 503 leaves the cart as it was (both lines
/// back as holds, with their own `held_until`), no order, nothing reserved under an order.
async fn checkout_whose_convert_is_late(held: Held) {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let a = app.sale_product(10, None).await;
    let b = app.sale_product(10, None).await;
    let user = 9_300;
    let t = app.customer_token(user);
    app.cart_add(&t, a, 2).await;
    let before = app.cart_add(&t, b, 3).await;
    proxy.arm(
        &script_sha(|s| &s.convert_hold),
        held,
        Duration::from_millis(1_200),
    );
    let r = app.try_checkout(&t).await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(
        ["outcome_unknown", "unavailable"].contains(&r.code()),
        "{:?}",
        r.body
    );
    assert!(r.failed_order_id().is_none());
    eventually(
        "the checkout's lines are back in the cart",
        Duration::from_secs(10),
        || async {
            let (ha, la) = held_in_redis(&app, user, a).await;
            let (hb, lb) = held_in_redis(&app, user, b).await;
            (ha, hb) == (Some(2), Some(3)) && la.is_empty() && lb.is_empty()
        },
    )
    .await;
    let cart = app.cart(&t).await;
    assert_eq!(cart, before, "the cart after a 503 checkout");
    assert!(app.orders(&t, "").await.ids().is_empty());
    // And the checkout goes through now.
    let order = app.checkout(&t).await;
    assert_eq!(order.items.len(), 2);
    app.assert_identity(a).await;
    app.assert_identity(b).await;
}

#[tokio::test]
async fn a_checkout_whose_convert_reply_is_late_gives_its_lines_back() {
    checkout_whose_convert_is_late(Held::Replies).await;
}

#[tokio::test]
async fn a_checkout_while_redis_freezes_gives_its_lines_back() {
    checkout_whose_convert_is_late(Held::Requests).await;
}

/// A buy-now without an `Idempotency-Key` whose reserve reply is late: no unit stays reserved
/// under an order nobody recorded, and the customer's limit is theirs again.
#[tokio::test]
async fn a_buy_now_whose_reserve_reply_is_late_keeps_nothing() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(5, Some(1)).await;
    let user = 9_400;
    let t = app.customer_token(user);
    proxy.arm(
        &script_sha(|s| &s.reserve),
        Held::Replies,
        Duration::from_millis(1_200),
    );
    let r = app.try_buy_now(&t, sku, 1).await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(1_300)).await; // the replies flow again
    eventually(
        "nothing reserved for the customer",
        Duration::from_secs(10),
        || async { held_in_redis(&app, user, sku).await.1.is_empty() },
    )
    .await;
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.reserved), (5, 0));
    let order = app.buy_now(&t, sku, 1).await;
    assert_eq!(order.items[0].count, 1);
}

/// The fences that make a hand-back final, shown on the store with the calls put in the order a
/// lost reply can put them in (the hand-back first, the call it gave up arriving after it, as on
/// a connection Redis reads late): the late call is refused and changes nothing.
#[tokio::test]
async fn a_call_arriving_after_its_hand_back_is_refused() {
    let app = spawn_app_with(|_| {}).await;
    let sku = app.sale_product(10, None).await;
    let s = Sku::parse(sku).unwrap();
    let redis = &app.state.redis;
    let (user, order) = (9_500, 77_001);
    let t = app.customer_token(user);
    let before = app.cart_add(&t, sku, 2).await;
    let fence = Duration::from_secs(60);

    // Checkout line: the hand-back finds no line and fences it; the late convert is refused.
    assert_eq!(
        redis.return_to_cart(s, user, order, fence).await.unwrap(),
        flashsale::store::redis::Returned::None
    );
    let deadline = redis.now_ms().await.unwrap() + 600_000;
    assert_eq!(
        redis.convert_hold(s, user, order, deadline).await.unwrap(),
        ConvertOutcome::Fenced
    );
    assert_eq!(app.cart(&t).await, before, "the hold stays the cart's");

    // Buy-now line: the release finds nothing and fences it; the late reserve is refused.
    let other = 77_002;
    assert_eq!(redis.release_fenced(s, other, fence).await.unwrap(), 0);
    let late = redis
        .reserve(flashsale::store::redis::ReserveRequest {
            sku: s,
            user_id: user,
            count: 1,
            rid: Rid::OrderLine { order_id: other },
            deadline: flashsale::store::redis::Deadline::At(deadline),
            mode: ReserveMode::Once,
        })
        .await
        .unwrap();
    assert_eq!(late, ReserveOutcome::Fenced);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.held, b.reserved), (8, 2, 0));

    // A release of a line that exists gives it back and fences it too: the next call of a
    // request still at work (a placement the sweeper settled under it) is refused.
    let third = 77_003;
    let reserve_third = || {
        redis.reserve(flashsale::store::redis::ReserveRequest {
            sku: s,
            user_id: user,
            count: 1,
            rid: Rid::OrderLine { order_id: third },
            deadline: flashsale::store::redis::Deadline::At(deadline),
            mode: ReserveMode::Once,
        })
    };
    let taken = reserve_third().await.unwrap();
    assert!(matches!(taken, ReserveOutcome::Reserved { units: 1, .. }));
    assert_eq!(redis.release_fenced(s, third, fence).await.unwrap(), 1);
    assert_eq!(reserve_third().await.unwrap(), ReserveOutcome::Fenced);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.held, b.reserved), (8, 2, 0));
}

/// A placement whose process died after taking its lines (no record, no hand-back task of its
/// own, its checkout lock left): once its note is due (`orders::PLACING_WINDOW` after its
/// start), the sweeper fences the order, gives the cart line back to the cart and the buy-now
/// line back to available, and lets go of the lock, so the customer checks out at once.
#[tokio::test]
async fn a_placement_whose_process_died_is_settled_by_the_sweeper() {
    let app = spawn_app_with(|_| {}).await;
    let (a, b) = (
        app.sale_product(5, None).await,
        app.sale_product(5, None).await,
    );
    let (sa, sb) = (Sku::parse(a).unwrap(), Sku::parse(b).unwrap());
    let user = 7_600;
    let token = app.customer_token(user);
    app.cart_add(&token, a, 2).await;
    let redis = &app.state.redis;
    let order_id = flashsale::service::order_ids::next(&app.state)
        .await
        .unwrap();
    let now = redis.now_ms().await.unwrap();
    let later = now + 600_000;
    // What a process does before it dies: lock, note, take both lines; no record.
    assert!(
        redis
            .lock_checkout(user, order_id, Duration::from_secs(30))
            .await
            .unwrap()
    );
    let note = PlacementNote {
        order_id,
        user_id: user,
        lines: vec![(sa, true), (sb, false)],
    };
    redis
        .note_placing(&note, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        redis.convert_hold(sa, user, order_id, later).await.unwrap(),
        ConvertOutcome::Converted { .. }
    ));
    let reserved = redis
        .reserve(ReserveRequest {
            sku: sb,
            user_id: user,
            count: 1,
            rid: Rid::OrderLine { order_id },
            deadline: Deadline::At(later),
            mode: ReserveMode::Once,
        })
        .await
        .unwrap();
    assert!(matches!(reserved, ReserveOutcome::Reserved { .. }));

    // Not yet due: a sweep leaves it to its request.
    app.sweep().await;
    assert_eq!(app.assert_identity(a).await.reserved, 2);
    assert_eq!(app.assert_identity(b).await.reserved, 1);

    // Due: settled.
    redis.note_placing(&note, Duration::ZERO).await.unwrap();
    app.sweep().await;
    let (ba, bb) = (app.assert_identity(a).await, app.assert_identity(b).await);
    assert_eq!(
        (ba.held, ba.reserved),
        (2, 0),
        "the cart line is a hold again"
    );
    assert_eq!(
        (bb.available, bb.reserved),
        (5, 0),
        "the buy-now unit is back"
    );
    let cart = app.cart(&token).await;
    assert_eq!(cart.line(a).map(|l| l.count), Some(2), "{cart:?}");
    // The order is fenced: never recorded, never listed.
    assert!(app.orders(&token, "").await.items.is_empty());
    // The lock went with it: the checkout is not refused with cart_changed.
    let placed = app.checkout(&token).await;
    assert_eq!(placed.items.len(), 1);
    assert_ne!(placed.order_id, order_id);
    // A late call of the dead process changes nothing: the fenced order's lines are refused.
    let late = redis
        .reserve(ReserveRequest {
            sku: sb,
            user_id: user,
            count: 1,
            rid: Rid::OrderLine { order_id },
            deadline: Deadline::At(later),
            mode: ReserveMode::Once,
        })
        .await
        .unwrap();
    assert_eq!(late, ReserveOutcome::Fenced);
    assert_eq!(app.assert_identity(b).await.available, 5);
}

/// A checkout whose lock call (SET NX) ran with its reply late: the 503 takes nothing, and the
/// lock it may have taken goes with it, so the customer's next checkout is not refused
/// `cart_changed` for the lock's 30 s lease (found by the soak: replies 1.2 s late, then 26 s
/// of refusals).
#[tokio::test]
async fn a_checkout_whose_lock_reply_was_late_leaves_no_lock() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(10, None).await;
    let user = 9_310;
    let t = app.customer_token(user);
    let before = app.cart_add(&t, sku, 2).await;
    proxy.arm(
        format!("{{user:{user}}}:checkout").as_bytes(),
        Held::Replies,
        Duration::from_millis(1_200),
    );
    let r = app.try_checkout(&t).await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.failed_order_id().is_none());
    eventually(
        "the lock the checkout may have taken is gone",
        Duration::from_secs(10),
        || async {
            app.state
                .redis
                .checkout_lock_token(user)
                .await
                .is_ok_and(|t| t.is_none())
        },
    )
    .await;
    assert_eq!(app.cart(&t).await, before);
    let order = app.checkout(&t).await;
    assert_eq!(order.items.len(), 1);
    app.assert_identity(sku).await;
}

/// A keyed request whose claim on its `Idempotency-Key` ran with its reply late: the 503 lets
/// go of the claim it may have made, so the key's retry is not kept waiting for the lease.
#[tokio::test]
async fn an_idempotency_claim_whose_reply_was_late_is_let_go() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(10, None).await;
    let user = 9_320;
    let t = app.customer_token(user);
    proxy.arm(
        &script_sha(|s| &s.claim_idempotency),
        Held::Replies,
        Duration::from_millis(1_200),
    );
    let r = app.try_buy_now_keyed(&t, "k-late-claim", sku, 1).await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let record = app
        .state
        .redis
        .keys
        .idempotency(user, "buy-now", "k-late-claim");
    eventually("the claim is let go", Duration::from_secs(10), || async {
        let owner: Option<String> =
            redis::AsyncCommands::hget(&mut app.state.redis.conn(), &record, "owner")
                .await
                .unwrap_or(Some("?".into()));
        owner.is_none()
    })
    .await;
    let again = app.try_buy_now_keyed(&t, "k-late-claim", sku, 1).await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    app.assert_identity(sku).await;
}
