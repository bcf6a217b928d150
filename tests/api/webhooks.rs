//! Webhooks: order events reach a receiver signed, concurrently, each retried on failure with its
//! own backoff and set aside after the last attempt, taken over from an instance that died; the
//! sale never waits for them, and a slow or failing event never holds up the others.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::worker::webhooks::{self, GROUP, Webhooks};
use hmac::{Hmac, Mac};
use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::*;

const SECRET: &str = "whsec-test";

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    headers: HeaderMap,
    body: String,
    answered: u16,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn event_id(&self) -> &str {
        self.header("x-flashsale-event-id")
    }
}

#[derive(Clone)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Requests answered 500 before the receiver starts answering 200.
    fail_first: usize,
    /// How long each answer takes.
    delay: Duration,
}

impl Receiver {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> AxumStatus {
    let answer = {
        let mut hits = r.hits.lock().unwrap();
        let answer = if hits.len() < r.fail_first {
            AxumStatus::INTERNAL_SERVER_ERROR
        } else {
            AxumStatus::OK
        };
        hits.push(Hit {
            at: Instant::now(),
            headers,
            body,
            answered: answer.as_u16(),
        });
        answer
    };
    tokio::time::sleep(r.delay).await;
    answer
}

/// A webhook receiver on 127.0.0.1:0 (POST /hooks) that records every request; returns its
/// URL.
async fn receiver(fail_first: usize, delay: Duration) -> (String, Receiver) {
    let r = Receiver {
        hits: Arc::default(),
        fail_first,
        delay,
    };
    let router = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://127.0.0.1:{port}/hooks"), r)
}

/// Checks the signature header against an HMAC-SHA256 computed here, not by the code under test.
fn assert_signed(hit: &Hit) {
    let ts = hit.header("x-flashsale-timestamp");
    let ts_secs: u64 = ts.parse().unwrap_or_else(|_| panic!("timestamp {ts:?}"));
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        ts_secs.abs_diff(now) < 120,
        "timestamp {ts_secs} vs now {now}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.{}", hit.body).as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(hit.header("x-flashsale-signature"), expected, "{hit:?}");
    assert_eq!(
        webhooks::sign(SECRET.as_bytes(), ts_secs, hit.body.as_bytes()),
        expected
    );
    let mut wrong = Hmac::<Sha256>::new_from_slice(b"another secret").unwrap();
    wrong.update(format!("{ts}.{}", hit.body).as_bytes());
    assert_ne!(
        hit.header("x-flashsale-signature"),
        format!("sha256={}", hex::encode(wrong.finalize().into_bytes()))
    );
}

/// Entries of the order-events stream delivered to the webhook group and not acknowledged.
async fn unacked(app: &TestApp) -> u64 {
    let (count, _, _, _): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(app.state.redis.keys.order_events())
        .arg(GROUP)
        .query_async(&mut app.state.redis.conn())
        .await
        .unwrap();
    count
}

/// Waits (at most 10 s) until every entry is acknowledged.
async fn wait_acked(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while unacked(app).await > 0 {
        assert!(
            Instant::now() < deadline,
            "webhook entries stay unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn dead_key(app: &TestApp) -> String {
    format!("{}:webhook-dead", app.prefix)
}

async fn dead_letters(app: &TestApp) -> StreamRangeReply {
    app.state
        .redis
        .conn()
        .xrange_all(dead_key(app))
        .await
        .unwrap()
}

/// The value of `flashsale_webhook_deliveries_total{outcome}` (shared by every test in this
/// process, so only ever compared with `>=`).
fn deliveries(app: &TestApp, outcome: &str) -> f64 {
    let needle = format!("flashsale_webhook_deliveries_total{{outcome=\"{outcome}\"}} ");
    app.state
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A copy of the app's state set up for webhooks, for driving `Webhooks` by hand while the
/// app itself runs none.
fn webhook_state(app: &TestApp, url: &str, tweak: impl FnOnce(&mut Config)) -> AppState {
    let mut cfg = (*app.state.cfg).clone();
    cfg.webhooks.webhook_url = Some(url.to_string());
    cfg.webhooks.webhook_secret = Some(SECRET.into());
    cfg.webhooks.webhook_retry = Duration::from_millis(20);
    tweak(&mut cfg);
    AppState {
        cfg: Arc::new(cfg),
        ..app.state.clone()
    }
}

#[tokio::test]
async fn order_events_are_signed_retried_and_delivered_once_acknowledged() {
    let (url, hook) = receiver(2, Duration::ZERO).await;
    let app = spawn_app_with(|c| {
        c.webhooks.webhook_url = Some(url.clone());
        c.webhooks.webhook_secret = Some(SECRET.into());
        c.webhooks.webhook_retry = Duration::from_millis(50);
    })
    .await;
    let sku = app.sale_product(10, None).await;
    let order = app.buy_and_pay(9101, sku, 2).await;
    let s = app.write_back().await;
    assert!(s.events >= 2, "{s:?}");

    let of_order = |h: &Hit, kind: &str| {
        let j = h.json();
        j["order_id"].as_u64() == Some(order) && j["type"] == kind
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let hits = loop {
        let hits = hook.hits();
        let ok = |kind| hits.iter().any(|h| h.answered == 200 && of_order(h, kind));
        if ok("created") && ok("paid") {
            break hits;
        }
        assert!(
            Instant::now() < deadline,
            "created and paid not both delivered: {hits:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    wait_acked(&app).await;

    for h in &hits {
        assert_signed(h);
        assert_eq!(h.header("content-type"), "application/json");
        let j = h.json();
        for field in ["type", "order_id", "user_id", "status", "items", "event_id"] {
            assert!(!j[field].is_null(), "{field} missing from {j}");
        }
        assert_eq!(h.event_id(), j["event_id"].as_str().unwrap());
        assert_eq!(j["user_id"], 9101);
        assert_eq!(j["items"][0]["sku"], sku);
        assert_eq!(j["items"][0]["count"], 2);
    }
    // Both events went out at once (deliveries are concurrent); the receiver refused its first
    // two requests, one per event, and each event was retried on its own 50 ms later.
    assert_eq!(hits.len(), 4, "{hits:#?}");
    assert_eq!(
        hits[..2].iter().map(|h| h.answered).collect::<Vec<_>>(),
        [500, 500],
        "{hits:#?}"
    );
    for first in &hits[..2] {
        let again: Vec<&Hit> = hits[2..]
            .iter()
            .filter(|h| h.event_id() == first.event_id())
            .collect();
        assert_eq!(
            again.len(),
            1,
            "one retry of {}: {hits:#?}",
            first.event_id()
        );
        assert_eq!(again[0].answered, 200);
        assert_eq!(again[0].body, first.body, "the same event, verbatim");
        assert!(again[0].at - first.at >= Duration::from_millis(50));
    }
    let mut hits = hits;
    hits.sort_by_key(|h| h.json()["status"] != "awaiting_payment");
    assert!(of_order(&hits[0], "created"), "{:?}", hits[0].body);
    // And the paid event, with an id of its own.
    assert!(of_order(&hits[3], "paid"), "{:?}", hits[3].body);
    assert_ne!(hits[3].event_id(), hits[0].event_id());
    assert_eq!(hits[0].json()["status"], "awaiting_payment");
    assert_eq!(hits[3].json()["status"], "paid");

    // Delivered means acknowledged, and nothing was set aside.
    assert_eq!(unacked(&app).await, 0);
    assert!(dead_letters(&app).await.ids.is_empty());
    assert!(deliveries(&app, "ok") >= 2.0);
    assert!(deliveries(&app, "failed") >= 2.0);
    // The stream keeps its entries for its other readers.
    let len: u64 = app
        .state
        .redis
        .conn()
        .xlen(app.state.redis.keys.order_events())
        .await
        .unwrap();
    assert_eq!(len, 2);
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_gets_events_set_aside_while_the_sale_goes_on() {
    // Slow and failing: each attempt takes 200 ms and is answered 500.
    let (url, hook) = receiver(usize::MAX, Duration::from_millis(200)).await;
    let app = spawn_app_with(|c| {
        c.webhooks.webhook_url = Some(url.clone());
        c.webhooks.webhook_secret = Some(SECRET.into());
        c.webhooks.webhook_retry = Duration::from_millis(50);
        c.webhooks.webhook_max_attempts = 2;
    })
    .await;
    let sku = app.sale_product(20, None).await;
    let order = app.buy_and_pay(9201, sku, 1).await;
    app.write_back().await;

    // While the sender retries, the sale answers as usual.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.hits().is_empty() {
        assert!(Instant::now() < deadline, "no delivery attempt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for user in 9202..9207 {
        let t = Instant::now();
        app.buy_and_pay(user, sku, 1).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a purchase took {:?}",
            t.elapsed()
        );
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = dead_letters(&app).await;
        if dead.ids.len() >= 2 {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "events not set aside: {:?}",
            hook.hits()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    wait_acked(&app).await;

    assert_eq!(dead.ids.len(), 2, "{dead:?}");
    let hits = hook.hits();
    let mut kinds = Vec::new();
    for d in &dead.ids {
        let event_id: String = d.get("event_id").unwrap();
        let event: String = d.get("event").unwrap();
        let error: String = d.get("error").unwrap();
        let attempts: u32 = d.get("attempts").unwrap();
        let j: Value = serde_json::from_str(&event).unwrap();
        assert_eq!(j["event_id"], event_id.as_str());
        assert_eq!(j["order_id"], order);
        assert!(error.contains("500"), "{error}");
        assert_eq!(attempts, 2);
        let tried: Vec<&Hit> = hits.iter().filter(|h| h.event_id() == event_id).collect();
        assert_eq!(tried.len(), 2, "two attempts at {event_id}: {hits:#?}");
        assert!(tried.iter().all(|h| h.answered == 500 && h.body == event));
        kinds.push(j["type"].as_str().unwrap().to_string());
    }
    kinds.sort();
    assert_eq!(kinds, ["created", "paid"]);
    hits.iter().for_each(assert_signed);
    assert!(deliveries(&app, "gave_up") >= 2.0);

    // The purchases made meanwhile are all there.
    let b = app.assert_identity(sku).await;
    assert_eq!(b.sold_total, 6);
}

#[tokio::test]
async fn deliveries_left_by_a_dead_instance_are_taken_over() {
    let (url, hook) = receiver(0, Duration::ZERO).await;
    // The app runs no sender; this test drives two by hand.
    let app = spawn_app().await;
    let state = webhook_state(&app, &url, |c| {
        c.outbox.claim_idle = Duration::from_millis(300)
    });
    let sku = app.sale_product(5, None).await;
    app.buy_and_pay(9301, sku, 1).await;
    app.write_back().await;

    // An instance reads both events and dies before delivering them.
    let live = Webhooks::named(state.clone(), "live").unwrap();
    live.ensure_group().await.unwrap();
    let mut conn = app.state.redis.conn();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("died")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(app.state.redis.keys.order_events())
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(unacked(&app).await, 2);

    // Not idle long enough yet: a live instance leaves them alone.
    let (_stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let s = live.run_once(&mut stop).await.unwrap();
    assert_eq!((s.delivered, s.gave_up), (0, 0));
    assert!(hook.hits().is_empty());

    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = live.run_once(&mut stop).await.unwrap();
    assert_eq!((s.delivered, s.gave_up), (2, 0));
    assert_eq!(unacked(&app).await, 0);
    let hits = hook.hits();
    let mut kinds: Vec<String> = hits
        .iter()
        .map(|h| h.json()["type"].as_str().unwrap_or("").to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["created", "paid"]);
    hits.iter().for_each(assert_signed);

    // A stop that is already given ends a run before it delivers anything.
    let _: String = conn
        .xadd(
            app.state.redis.keys.order_events(),
            "*",
            &[("event", r#"{"event_id":"x-1","type":"paid"}"#)],
        )
        .await
        .unwrap();
    let (stop_tx, mut stopped) = tokio::sync::watch::channel(false);
    stop_tx.send(true).unwrap();
    let s = live.run_once(&mut stopped).await.unwrap();
    assert_eq!((s.delivered, s.gave_up), (0, 0));
    assert_eq!(hook.hits().len(), 2);
    assert_eq!(
        unacked(&app).await,
        0,
        "not even read: it waits in the stream"
    );
    let s = live.run_once(&mut stop).await.unwrap();
    assert_eq!((s.delivered, s.gave_up), (1, 0));
    assert_eq!(hook.hits()[2].event_id(), "x-1");
}

#[tokio::test]
async fn unreadable_entries_are_set_aside_at_once() {
    let (url, hook) = receiver(0, Duration::ZERO).await;
    let app = spawn_app().await;
    let state = webhook_state(&app, &url, |_| {});
    let hooks = Webhooks::new(state).unwrap();
    hooks.ensure_group().await.unwrap();
    let key = app.state.redis.keys.order_events();
    let mut conn = app.state.redis.conn();
    let _: String = conn
        .xadd(&key, "*", &[("event", "not json")])
        .await
        .unwrap();
    let _: String = conn.xadd(&key, "*", &[("other", "1")]).await.unwrap();
    let _: String = conn
        .xadd(&key, "*", &[("event", r#"{"event_id":"ok-1"}"#)])
        .await
        .unwrap();

    let (_tx, mut stop) = tokio::sync::watch::channel(false);
    let s = hooks.run_once(&mut stop).await.unwrap();
    assert_eq!((s.delivered, s.gave_up), (1, 2));
    assert_eq!(hook.hits().len(), 1);
    assert_eq!(hook.hits()[0].event_id(), "ok-1");
    assert_eq!(unacked(&app).await, 0);
    let dead = dead_letters(&app).await;
    let errors: Vec<String> = dead
        .ids
        .iter()
        .map(|d| d.get::<String>("error").unwrap())
        .collect();
    assert_eq!(errors.len(), 2);
    assert!(errors[0].starts_with("not an order event"), "{errors:?}");
    assert!(errors[1].contains("no `event` field"), "{errors:?}");
    let attempts: Vec<u32> = dead
        .ids
        .iter()
        .map(|d| d.get("attempts").unwrap())
        .collect();
    assert_eq!(attempts, [0, 0]);
}

#[tokio::test]
async fn a_long_retry_is_not_taken_for_a_dead_instance() {
    let (url, hook) = receiver(2, Duration::ZERO).await;
    let app = spawn_app().await;
    // Retries wait longer than `claim_idle`: the entries held meanwhile must not look abandoned.
    let state = webhook_state(&app, &url, |c| {
        c.outbox.claim_idle = Duration::from_millis(300);
        c.webhooks.webhook_retry = Duration::from_millis(400);
        c.webhooks.webhook_max_attempts = 3;
    });
    let sku = app.sale_product(5, None).await;
    app.buy_and_pay(9401, sku, 1).await;
    app.write_back().await;

    let busy = Webhooks::named(state.clone(), "busy").unwrap();
    let other = Webhooks::named(state, "other").unwrap();
    busy.ensure_group().await.unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut busy_stop = stop.clone();
    let busy = tokio::spawn(async move { busy.run_once(&mut busy_stop).await });
    // Once the busy instance has both events, another one keeps looking for abandoned entries.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.hits().is_empty() {
        assert!(Instant::now() < deadline, "no delivery attempt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut other_stop = stop.clone();
    let mut taken = 0;
    while !busy.is_finished() {
        let s = other.run_once(&mut other_stop).await.unwrap();
        taken += s.delivered + s.gave_up;
        assert!(
            Instant::now() < deadline,
            "the busy instance never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = busy.await.unwrap().unwrap();
    assert_eq!((s.delivered, s.gave_up), (2, 0));
    assert_eq!(
        taken, 0,
        "the other instance took over entries still being retried"
    );
    let hits = hook.hits();
    assert_eq!(
        hits.iter().map(|h| h.answered).collect::<Vec<_>>(),
        [500, 500, 200, 200],
        "{hits:#?}"
    );
    // Each event failed once (the receiver's first two requests) and was retried 400 ms later.
    for first in &hits[..2] {
        let again = hits[2..]
            .iter()
            .find(|h| h.event_id() == first.event_id())
            .expect("retried");
        assert!(again.at - first.at >= Duration::from_millis(400));
    }
    assert_eq!(unacked(&app).await, 0);
}

/// What the receiver of `slow_and_failing_events_do_not_hold_up_the_others` saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    event_id: String,
    began: Instant,
    ended: Instant,
    answered: u16,
}

#[derive(Clone, Default)]
struct Picky {
    seen: Arc<Mutex<Vec<Seen>>>,
    now: Arc<Mutex<(usize, usize)>>,
}

/// `slow-*` events take 2 s and succeed, `bad-*` ones fail at once, the others succeed at once;
/// counts requests under way (and the most at once).
async fn picky(State(p): State<Picky>, headers: HeaderMap) -> AxumStatus {
    let event_id = headers
        .get("x-flashsale-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let began = Instant::now();
    {
        let mut n = p.now.lock().unwrap();
        n.0 += 1;
        n.1 = n.1.max(n.0);
    }
    if event_id.starts_with("slow-") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let answer = if event_id.starts_with("bad-") {
        AxumStatus::INTERNAL_SERVER_ERROR
    } else {
        AxumStatus::OK
    };
    p.now.lock().unwrap().0 -= 1;
    p.seen.lock().unwrap().push(Seen {
        event_id,
        began,
        ended: Instant::now(),
        answered: answer.as_u16(),
    });
    answer
}

/// 13.10: deliveries go concurrently (within the bound): a slow receiver answer and events that
/// keep failing hold up nothing behind them; each failing event is retried on its own doubling
/// backoff and set aside after its last attempt; every other event is delivered once.
#[tokio::test]
async fn slow_and_failing_events_do_not_hold_up_the_others() {
    let p = Picky::default();
    let router = axum::Router::new()
        .route("/hooks", axum::routing::post(picky))
        .with_state(p.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hooks",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = spawn_app().await;
    let state = webhook_state(&app, &url, |c| {
        c.webhooks.webhook_retry = Duration::from_millis(100);
        c.webhooks.webhook_max_attempts = 3;
        c.webhooks.webhook_concurrency = 4;
    });
    let hooks = Webhooks::new(state).unwrap();
    hooks.ensure_group().await.unwrap();
    let key = app.state.redis.keys.order_events();
    let mut conn = app.state.redis.conn();
    let ids: Vec<String> = ["slow-0", "bad-0", "bad-1"]
        .into_iter()
        .map(String::from)
        .chain((0..12).map(|i| format!("ok-{i}")))
        .collect();
    for id in &ids {
        let event = json!({"event_id": id, "type": "paid"}).to_string();
        let _: String = conn.xadd(&key, "*", &[("event", event)]).await.unwrap();
    }

    let (_tx, mut stop) = tokio::sync::watch::channel(false);
    let s = hooks.run_once(&mut stop).await.unwrap();
    assert_eq!((s.delivered, s.gave_up), (13, 2), "{s:?}");
    assert_eq!(unacked(&app).await, 0);

    let seen = p.seen.lock().unwrap().clone();
    let of =
        |id: &str| -> Vec<Seen> { seen.iter().filter(|h| h.event_id == id).cloned().collect() };
    let slow = of("slow-0");
    assert_eq!(slow.len(), 1, "{seen:#?}");
    // Every later good event was delivered, once, while the slow answer was still under way.
    for i in 0..12 {
        let ok = of(&format!("ok-{i}"));
        assert_eq!(ok.len(), 1, "ok-{i}: {seen:#?}");
        assert_eq!(ok[0].answered, 200);
        assert!(
            ok[0].ended < slow[0].ended,
            "ok-{i} waited for the slow event: {seen:#?}"
        );
    }
    // Each failing event: 3 attempts, 100 ms then 200 ms apart, the others going on meanwhile;
    // then set aside.
    for bad in ["bad-0", "bad-1"] {
        let tries = of(bad);
        assert_eq!(tries.len(), 3, "{bad}: {seen:#?}");
        assert!(tries[1].began - tries[0].ended >= Duration::from_millis(100));
        assert!(tries[2].began - tries[1].ended >= Duration::from_millis(200));
        assert!(
            seen.iter().any(|h| h.event_id.starts_with("ok-")
                && h.began > tries[0].ended
                && h.ended < tries[1].began),
            "nothing was delivered while {bad} waited for its retry: {seen:#?}"
        );
    }
    let dead = dead_letters(&app).await;
    let mut set_aside: Vec<(String, u32)> = dead
        .ids
        .iter()
        .map(|d| (d.get("event_id").unwrap(), d.get("attempts").unwrap()))
        .collect();
    set_aside.sort();
    assert_eq!(
        set_aside,
        [("bad-0".to_string(), 3), ("bad-1".to_string(), 3)]
    );
    let most = p.now.lock().unwrap().1;
    assert!((2..=4).contains(&most), "{most} requests at once (bound 4)");
}

/// A receiver slower than `webhook_timeout`: each attempt at that event times out and it is set
/// aside after its attempts, while the events behind it are delivered meanwhile.
#[tokio::test]
async fn an_answer_slower_than_the_timeout_fails_that_event_only() {
    let p = Picky::default();
    let router = axum::Router::new()
        .route("/hooks", axum::routing::post(picky))
        .with_state(p.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hooks",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = spawn_app().await;
    let state = webhook_state(&app, &url, |c| {
        c.webhooks.webhook_retry = Duration::from_millis(50);
        c.webhooks.webhook_max_attempts = 2;
        c.webhooks.webhook_concurrency = 2;
        c.webhooks.webhook_timeout = Duration::from_millis(300);
    });
    let hooks = Webhooks::new(state).unwrap();
    hooks.ensure_group().await.unwrap();
    let key = app.state.redis.keys.order_events();
    let mut conn = app.state.redis.conn();
    for id in ["slow-0", "ok-0", "ok-1", "ok-2"] {
        let event = json!({"event_id": id, "type": "paid"}).to_string();
        let _: String = conn.xadd(&key, "*", &[("event", event)]).await.unwrap();
    }
    let (_tx, mut stop) = tokio::sync::watch::channel(false);
    let s = hooks.run_once(&mut stop).await.unwrap();
    assert_eq!((s.delivered, s.gave_up), (3, 1), "{s:?}");
    let dead = dead_letters(&app).await;
    assert_eq!(dead.ids.len(), 1);
    let event_id: String = dead.ids[0].get("event_id").unwrap();
    let error: String = dead.ids[0].get("error").unwrap();
    let attempts: u32 = dead.ids[0].get("attempts").unwrap();
    assert_eq!((event_id.as_str(), attempts), ("slow-0", 2));
    assert!(
        error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    assert_eq!(unacked(&app).await, 0);
}

/// The order-events stream is capped by length only while no consumer group reads it: a
/// webhook sender that is behind (its group exists; here it has delivered nothing yet) gets
/// every event however far past FLASHSALE_EVENTS_MAX_LEN the stream grew, and once they are
/// delivered the write-back trims them (found by an attacker: the cap dropped undelivered
/// events without a trace).
#[tokio::test]
async fn a_webhook_group_behind_the_cap_loses_no_event_and_delivered_ones_are_trimmed() {
    const ORDERS: usize = 120;
    let (url, hook) = receiver(0, Duration::ZERO).await;
    let app = spawn_app_with(|c| c.outbox.events_max_len = 10).await;
    let state = webhook_state(&app, &url, |_| {});
    let sender = Webhooks::new(state).unwrap();
    // The sender started (its group exists), then fell behind.
    let (_stop_tx, mut stop) = tokio::sync::watch::channel(false);
    sender.run_once(&mut stop).await.unwrap();
    let sku = app.sale_product(ORDERS as i64, None).await;
    for user in 0..ORDERS as u64 {
        app.buy_and_pay(50_000 + user, sku, 1).await;
    }
    let mut written = 0;
    loop {
        let n = app.write_back().await.events;
        if n == 0 {
            break;
        }
        written += n;
    }
    // Two events per order: created (awaiting payment) and paid.
    assert_eq!(written, 2 * ORDERS);
    let events = app.state.redis.keys.order_events();
    let len: u64 = app.state.redis.conn().xlen(&events).await.unwrap();
    assert_eq!(
        len as usize,
        2 * ORDERS,
        "nothing the group still needs was trimmed"
    );

    while sender.run_once(&mut stop).await.unwrap().delivered > 0 {}
    let ids: std::collections::HashSet<String> = hook
        .hits()
        .iter()
        .map(|h| h.event_id().to_string())
        .collect();
    assert_eq!(ids.len(), 2 * ORDERS, "every event delivered");

    // The next write-back trims what the group has had (MINID ~: whole nodes at a time).
    let t = app.customer_token(59_999);
    let r = app.try_buy_now(&t, sku, 1).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "sold out: {:?}", r.body);
    let extra = app.sale_product(1, None).await;
    app.buy_and_pay(59_998, extra, 1).await;
    while app.write_back().await.events > 0 {}
    let len: u64 = app.state.redis.conn().xlen(&events).await.unwrap();
    assert!(
        len < 2 * ORDERS as u64,
        "delivered events trimmed: {len} left"
    );
}
