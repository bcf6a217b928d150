//! Review of issue 22's first half ("a call that did not answer is taken for a call that did not
//! run", commits fa66849 and c1937fc): attacks on the claims of docs/DESIGN.md "Outcomes nobody
//! heard" and docs/API.md's 503 row. Each test puts a [`HoldProxy`] between the service and the
//! shared Redis (the proxy holds replies, it never freezes or reconfigures Redis itself) and
//! checks one claim. Seven of them failed on c1937fc (a keyed buy-now or checkout whose fence
//! reply is late, a pay, a cart removal, a cart clear and a cart add whose follow-up read times
//! out, a create_order reply late) and pass since the fixes that followed it.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{
    Held, HoldProxy, TestApp, app_behind_proxy, eventually, held_in_redis, script_sha,
    spawn_app_with,
};

/// Reads `read` until `done` says so or `within` passed; the last reading.
async fn settles<T, Fut>(
    within: Duration,
    mut read: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
) -> T
where
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = read().await;
        if done(&v) || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Attack: a buy-now WITH an `Idempotency-Key` whose reserve reply is late, in a stall that
/// outlasts two Redis timeouts (reply held 1.5 s, timeout 400 ms). The reserve ran; the
/// request gives its line up with `abandon(keyed)`: it first fences the order
/// (`fence_order.lua`), whose reply is late too, and for a keyed request that error ends the
/// hand-back ("its lines wait for the key's retry or their deadline"): no task hands the unit
/// back, though DESIGN says a hand-back Redis cannot answer now is finished by a task of its
/// own. The fence did run (only its reply was late), so the key's retry meets a `failed`
/// record, `resume` answers `Afresh` without releasing the old line, and the retry reserves
/// afresh: with a limit of 1 it is refused 409 `limit_exceeded` by the customer's own invisible
/// unit, which stays reserved under a fenced order until the payment window ends (10 min).
#[tokio::test]
async fn a_keyed_buy_now_whose_replies_are_late_gives_its_unit_back_and_its_retry_buys() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(5, Some(1)).await;
    let user = 9_610;
    let t = app.customer_token(user);
    proxy.arm(
        &script_sha(|s| &s.reserve),
        Held::Replies,
        Duration::from_millis(1_500),
    );
    let r = app.try_buy_now_keyed(&t, "attack5-bn", sku, 1).await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    eprintln!("first answer: {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_600)).await; // the replies flow again
    // The customer does what API.md says: retries with the same key.
    let retry = app.try_buy_now_keyed(&t, "attack5-bn", sku, 1).await;
    assert_eq!(
        retry.status,
        StatusCode::CREATED,
        "the key's retry after a 503: {:?}; Redis holds for the customer: {:?}",
        retry.body,
        held_in_redis(&app, user, sku).await
    );
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.reserved), (4, 1), "one order, one unit");
}

/// Attack: the same stall on a keyed checkout. `convert_hold` ran (the cart's hold became the
/// order's line) but its reply is late; the keyed `abandon` meets a late fence reply and stops:
/// nothing returns the line to the cart. The customer's cart is empty (the line is pruned by
/// the next read once the checkout lock is gone), the key's retry places nothing (the fenced
/// order is `failed`: `Afresh`, and the cart is empty: 409 `cart_empty`), and the units go to
/// available only at the payment deadline, never back to the cart: against "a failed checkout
/// hands back every line it sent" and "the next read shows what happened".
#[tokio::test]
async fn a_keyed_checkout_whose_replies_are_late_gives_its_lines_back() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let a = app.sale_product(10, None).await;
    let user = 9_620;
    let t = app.customer_token(user);
    let before = app.cart_add(&t, a, 2).await;
    proxy.arm(
        &script_sha(|s| &s.convert_hold),
        Held::Replies,
        Duration::from_millis(1_500),
    );
    let r = app.try_checkout_keyed(&t, "attack5-co").await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    eprintln!("first answer: {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let seen = settles(
        Duration::from_secs(5),
        || held_in_redis(&app, user, a),
        |s| s.0 == Some(2),
    )
    .await;
    assert_eq!(
        seen.0,
        Some(2),
        "the checkout's line is not back in the cart 5 s after the stall: Redis holds \
         (cart hold, order lines) = {seen:?}; the cart shows {:?}",
        app.cart(&t).await
    );
    assert_eq!(app.cart(&t).await, before, "the cart after a 503 checkout");
    let retry = app.try_checkout_keyed(&t, "attack5-co").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{:?}", retry.body);
    app.assert_identity(a).await;
}

/// Attack (held, thanks to the write-back): a cancel whose `decide_order` reply is late. The
/// order is cancelled (the script ran), the answer is 503 `outcome_unknown`, and the next read
/// shows `cancelled`: the customer has no reason to repeat it. `settle` (the release of the
/// lines) was the request future's follow-up and never ran, and no task of the request owns
/// it; the units come back only because the write-back worker releases the lines of the
/// cancelled order's event (src/worker/writer.rs, `dropped_lines`; driven by hand here). Until
/// it does (the worker off, MySQL down) they stay reserved, up to the payment deadline
/// (10 min): seen on c1937fc without the write-back.
#[tokio::test]
async fn a_cancel_whose_reply_is_late_gives_its_units_back() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(5, None).await;
    let user = 9_630;
    let t = app.customer_token(user);
    let order = app.buy_now(&t, sku, 2).await;
    proxy.arm(
        &script_sha(|s| &s.decide_order),
        Held::Replies,
        Duration::from_millis(1_200),
    );
    let r = app.try_cancel(&t, order.order_id).await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.code(), "outcome_unknown", "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // The next read shows the truth about the order...
    let o = app.order(&t, order.order_id).await;
    assert_eq!(o.status, "cancelled");
    // ...and its units must be where the cancel put them.
    // The write-back, as the worker would run it (the tests drive it by hand).
    while app.write_back().await.events > 0 {}
    let seen = settles(
        Duration::from_secs(5),
        || held_in_redis(&app, user, sku),
        |s| s.1.is_empty(),
    )
    .await;
    assert!(
        seen.1.is_empty(),
        "5 s after a cancel the read shows as done, its order's lines are still reserved: {seen:?}"
    );
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.reserved), (5, 0));
}

/// Attack: an answer that lies. A payment whose `decide_order` reply is heard (the order is
/// paid) and whose next read (`settle`'s `order_record`, an HGETALL) has its reply lost answers
/// 503 `unavailable` "nothing was changed, retry shortly": the plain `AppError::from` mapping of
/// a read's timeout. The customer was charged and told nothing was changed. Any state change
/// followed by a plain read or write that can time out has the same lie (cart remove's and
/// cart clear's `forget_lines`, cancel's `settle`, the checkout's `Created::Exists` read).
#[tokio::test]
async fn a_pay_that_answers_unavailable_changed_nothing() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(5, None).await;
    let user = 9_640;
    let t = app.customer_token(user);
    let order = app.buy_now(&t, sku, 1).await;
    // The decide call goes through (a trap of no length), the next HGETALL's reply is late.
    proxy.arm(
        &script_sha(|s| &s.decide_order),
        Held::Replies,
        Duration::ZERO,
    );
    proxy.arm(b"HGETALL", Held::Replies, Duration::from_millis(1_200));
    let r = app.try_pay(&t, order.order_id).await;
    assert!(proxy.sprung(), "the traps did not both spring");
    eprintln!("pay answered {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let now = app.order(&t, order.order_id).await;
    if r.code() == "unavailable" {
        assert_eq!(
            now.status, "awaiting_payment",
            "503 unavailable ('nothing was changed') but the order is {}: {:?}",
            now.status, r.body
        );
    }
}

/// Attack: the same lie on a cart removal. `release` is heard (2 of 3 units go back), then the
/// cart view's first read (SMEMBERS) has its reply lost: 503 `unavailable` "nothing was
/// changed, retry shortly", with `Retry-After`. A client that retries as told removes 2 more
/// units than it asked for (here: the whole line).
#[tokio::test]
async fn a_cart_removal_that_answers_unavailable_changed_nothing() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(10, None).await;
    let user = 9_650;
    let t = app.customer_token(user);
    app.cart_add(&t, sku, 3).await;
    proxy.arm(&script_sha(|s| &s.release), Held::Replies, Duration::ZERO);
    proxy.arm(b"SMEMBERS", Held::Replies, Duration::from_millis(1_200));
    let r = app.try_cart_remove(&t, sku, Some(2)).await;
    assert!(proxy.sprung(), "the traps did not both spring");
    eprintln!("remove answered {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (hold, _) = held_in_redis(&app, user, sku).await;
    if r.code() == "unavailable" {
        assert_eq!(
            hold,
            Some(3),
            "503 unavailable ('nothing was changed') but the hold went from 3 to {hold:?}: {:?}",
            r.body
        );
    }
}

/// Attack (held, thanks to the write-back): a checkout of two lines whose second line is
/// refused (its sale closed after the add: `sale_not_active`) records the order `failed` and
/// then asks `decide_order` to fail it; that reply is late. `place` returns the decide error
/// with `?`: the line it took (the first cart line, converted) is neither handed back nor
/// released by the request, and no task of its own does it. The write-back worker releases it
/// when it writes the failed order's event (driven by hand here); until it does (the worker
/// off, MySQL down) the unit stays reserved under the failed order, up to the payment deadline
/// (seen on c1937fc without the write-back).
#[tokio::test]
async fn a_refused_checkout_whose_fail_reply_is_late_gives_its_lines_back() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let a = app.sale_product(10, None).await;
    let b = app.sale_product(10, None).await;
    let user = 9_660;
    let t = app.customer_token(user);
    app.cart_add(&t, a, 1).await;
    app.cart_add(&t, b, 1).await;
    app.close_sale(b).await;
    proxy.arm(
        &script_sha(|s| &s.decide_order),
        Held::Replies,
        Duration::from_millis(1_200),
    );
    let r = app.try_checkout(&t).await;
    assert!(proxy.sprung());
    eprintln!("checkout answered {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // The write-back, as the worker would run it (the tests drive it by hand).
    while app.write_back().await.events > 0 {}
    let seen = settles(
        Duration::from_secs(5),
        || held_in_redis(&app, user, a),
        |s| s.1.is_empty(),
    )
    .await;
    assert!(
        seen.1.is_empty(),
        "5 s after the refused checkout answered {}, its taken line is still reserved: {seen:?}; \
         orders: {:?}",
        r.status,
        app.orders(&t, "").await.items
    );
    app.assert_identity(a).await;
}

/// The order records Redis holds under the app's prefix: (key, status, PTTL in ms: -1 none).
async fn order_records(app: &TestApp) -> Vec<(String, String, i64)> {
    let mut direct = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:{{ord:*}}:o:*", app.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut direct)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut out = Vec::new();
    for k in keys {
        let status: Option<String> = redis::AsyncCommands::hget(&mut direct, &k, "status")
            .await
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut direct)
            .await
            .unwrap();
        out.push((k, status.unwrap_or_default(), pttl));
    }
    out
}

/// Attack: a checkout without a key whose `create_order` reply is late (held 1.5 s, timeout
/// 400 ms). The record was written (`new`, no TTL, in no customer's index); `abandon` with
/// `Reached::Record` hands the lines back first (its reply late too: a background task
/// finishes it) and then fences the order, whose reply is late as well: that error is only
/// logged ("could not fence an abandoned order") and, unlike every other hand-back, nothing
/// retries it. The `new` record is never failed: it holds no line (so the sweeper never meets
/// it), it is in no index (so no read expires it), and it has no TTL: a key that lives
/// forever, one per incident, against DESIGN's "a create_order whose reply is lost is resolved
/// by fencing the order first (a `new` record is failed)".
#[tokio::test]
async fn a_checkout_whose_record_reply_is_late_leaves_no_record_behind() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let a = app.sale_product(10, None).await;
    let user = 9_670;
    let t = app.customer_token(user);
    let before = app.cart_add(&t, a, 2).await;
    proxy.arm(
        &script_sha(|s| &s.create_order),
        Held::Replies,
        Duration::from_millis(1_500),
    );
    let r = app.try_checkout(&t).await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    eprintln!("checkout answered {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    eventually(
        "the checkout's line is back in the cart",
        Duration::from_secs(5),
        || async { held_in_redis(&app, user, a).await.0 == Some(2) },
    )
    .await;
    assert_eq!(app.cart(&t).await, before);
    let records = settles(
        Duration::from_secs(5),
        || order_records(&app),
        |recs| {
            !recs
                .iter()
                .any(|(_, status, pttl)| status == "new" && *pttl < 0)
        },
    )
    .await;
    assert!(
        !records
            .iter()
            .any(|(_, status, pttl)| status == "new" && *pttl < 0),
        "an order record left `new` without a TTL 5 s after the stall: {records:?}"
    );
    app.assert_identity(a).await;
}

/// Attack: issue 22's own first defect, through another door. A cart add to a cart that has
/// another line: the reserve is heard (the unit is held), the index is written and read back,
/// and then the cart view's read (`live_lines`' SMEMBERS) has its reply lost: the answer is 503
/// `unavailable` "nothing was changed, retry shortly" with `Retry-After`, the plain mapping of a
/// read's timeout. The unit is held. A client that retries as told holds 2 units for one add
/// of 1 (the limit, 2, lets it): exactly the "with limit 2 the retry answers 200 with 2 units
/// for a customer who asked for 1 once" of the issue.
#[tokio::test]
async fn a_cart_add_that_answers_unavailable_held_nothing() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let a = app.sale_product(10, None).await;
    let b = app.sale_product(10, Some(2)).await;
    let user = 9_680;
    let t = app.customer_token(user);
    app.cart_add(&t, a, 1).await;
    // The reserve and the index's read-back go through; the view's read is late.
    proxy.arm(&script_sha(|s| &s.reserve), Held::Replies, Duration::ZERO);
    proxy.arm(b"SMEMBERS", Held::Replies, Duration::ZERO);
    proxy.arm(b"SMEMBERS", Held::Replies, Duration::from_millis(1_200));
    let r = app.try_cart_add(&t, b, 1).await;
    assert!(proxy.sprung(), "the traps did not all spring");
    eprintln!("add answered {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (hold, _) = held_in_redis(&app, user, b).await;
    if r.code() == "unavailable" {
        let retry = app.try_cart_add(&t, b, 1).await;
        assert_eq!(
            hold, None,
            "503 unavailable ('nothing was changed', Retry-After) but {hold:?} unit held; the \
             retry it invites answers {} with the cart {:?}",
            retry.status, retry.body
        );
    }
}

/// Attack: the same lie on a cart clear. Every hold is released (heard), then `forget_lines`'
/// SREM has its reply lost: 503 `unavailable` "nothing was changed, retry shortly", and the
/// cart is empty.
#[tokio::test]
async fn a_cart_clear_that_answers_unavailable_changed_nothing() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(10, None).await;
    let user = 9_690;
    let t = app.customer_token(user);
    app.cart_add(&t, sku, 2).await;
    proxy.arm(&script_sha(|s| &s.release), Held::Replies, Duration::ZERO);
    proxy.arm(b"SREM", Held::Replies, Duration::from_millis(1_200));
    let r = app.delete("/v1/cart", Some(&t)).await;
    assert!(proxy.sprung(), "the traps did not both spring");
    eprintln!("clear answered {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (hold, _) = held_in_redis(&app, user, sku).await;
    if r.code() == "unavailable" {
        assert_eq!(
            hold,
            Some(2),
            "503 unavailable ('nothing was changed') but the hold of 2 is {hold:?}: {:?}",
            r.body
        );
    }
}

/// Held: a buy-now without a key whose activation (`decide_order`) reply is late, and the
/// fence that resolves it late too (one stall of 1.5 s, timeout 400 ms). The activation ran:
/// the answer is 503 `outcome_unknown`, the background fence finds the order awaiting payment
/// and keeps its line, the order is listed, and it can be paid.
#[tokio::test]
async fn a_buy_now_whose_activation_reply_is_late_is_listed_and_payable() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let sku = app.sale_product(5, Some(1)).await;
    let user = 9_700;
    let t = app.customer_token(user);
    proxy.arm(
        &script_sha(|s| &s.decide_order),
        Held::Replies,
        Duration::from_millis(1_500),
    );
    let r = app.try_buy_now(&t, sku, 1).await;
    assert!(proxy.sprung());
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.code(), "outcome_unknown", "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let page = settles(
        Duration::from_secs(5),
        || app.orders(&t, ""),
        |p| p.items.len() == 1,
    )
    .await;
    assert_eq!(page.items.len(), 1, "{:?}", page.items);
    assert_eq!(page.items[0].status, "awaiting_payment");
    // Some time for a background fence to (wrongly) take the line back.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let paid = app.pay(&t, page.items[0].order_id).await;
    assert_eq!(paid.items[0].count, 1);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.reserved, b.sold), (4, 0, 1));
}

/// Held: a checkout without a key whose convert reply is a little late (600 ms, timeout
/// 400 ms) and whose hand-back's own reply (`return_to_cart`) is then lost in a second stall
/// (1.5 s): the background hand-back's retry meets `none` (the first one ran) and the line is
/// the cart's hold again, shown in the cart.
#[tokio::test]
async fn a_checkout_whose_hand_back_reply_is_lost_shows_its_lines_in_the_cart() {
    let (app, proxy) = app_behind_proxy(Duration::from_millis(400)).await;
    let a = app.sale_product(10, None).await;
    let user = 9_710;
    let t = app.customer_token(user);
    let before = app.cart_add(&t, a, 2).await;
    proxy.arm(
        &script_sha(|s| &s.convert_hold),
        Held::Replies,
        Duration::from_millis(600),
    );
    proxy.arm(
        &script_sha(|s| &s.return_to_cart),
        Held::Replies,
        Duration::from_millis(1_500),
    );
    let r = app.try_checkout(&t).await;
    assert!(proxy.sprung(), "both traps spring");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    eprintln!("checkout answered {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let seen = settles(
        Duration::from_secs(5),
        || held_in_redis(&app, user, a),
        |s| s.0 == Some(2) && s.1.is_empty(),
    )
    .await;
    assert_eq!(seen, (Some(2), vec![]));
    assert_eq!(app.cart(&t).await, before);
    assert_eq!(app.checkout(&t).await.items.len(), 1);
    app.assert_identity(a).await;
}

/// Held: a hold whose deadline passes while its checkout's convert reply is late (hold 1 s, the
/// convert sent at ~0.7 s, its reply held 1.2 s, timeout 400 ms): the hand-back finds the
/// hold's own deadline passed and gives the units to available, not back to a cart that
/// would show a lapsed hold; nothing stays reserved under the order.
#[tokio::test]
async fn a_hold_that_lapses_while_its_checkout_is_unheard_goes_to_available() {
    let proxy = HoldProxy::start("127.0.0.1:6379".into()).await;
    let url = proxy.url();
    let app = spawn_app_with(|c| {
        c.stores.redis_url = url;
        c.stores.redis_timeout = Duration::from_millis(400);
        c.sale.cart_hold_ttl = Duration::from_millis(1_000);
    })
    .await;
    let a = app.sale_product(10, None).await;
    let user = 9_720;
    let t = app.customer_token(user);
    app.cart_add(&t, a, 3).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.arm(
        &script_sha(|s| &s.convert_hold),
        Held::Replies,
        Duration::from_millis(1_200),
    );
    let r = app.try_checkout(&t).await;
    assert!(proxy.sprung());
    eprintln!("checkout answered {} {:?}", r.status, r.body);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let seen = settles(
        Duration::from_secs(5),
        || held_in_redis(&app, user, a),
        |s| *s == (None, vec![]),
    )
    .await;
    assert_eq!(seen, (None, vec![]));
    let b = settles(
        Duration::from_secs(5),
        || app.assert_identity(a),
        |b| b.available == 10,
    )
    .await;
    assert_eq!((b.available, b.held, b.reserved), (10, 0, 0));
    assert!(app.cart(&t).await.items.is_empty());
}
