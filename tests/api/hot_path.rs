//! The hot path: reservations of a sku batched into one script call, exactly as if they had run
//! one after another (src/store/redis/lanes.rs, lua/reserve.lua), and sold-out answered in
//! process (src/service/sold_out.rs).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use flashsale::domain::Sku;
use flashsale::store::redis::{Deadline, ReserveMode, ReserveOutcome, ReserveRequest, Rid};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use crate::helpers::*;

/// Everything Redis holds for a sku's reservations, keyed without the sku and with its
/// warehouses named by their place in `warehouses` (so twin skus compare); `gen` (the load's
/// stamp) left out.
async fn reservation_state(
    app: &TestApp,
    sku: u64,
    warehouses: &[u64],
) -> BTreeMap<String, String> {
    let place = |id: &str| -> String {
        let i = warehouses.iter().position(|w| w.to_string() == id);
        format!("#{}", i.expect("a warehouse of the sku"))
    };
    let alloc = |v: &str| -> String {
        let (head, list) = v.rsplit_once('|').unwrap();
        let list: Vec<String> = list
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (w, n) = p.split_once(':').unwrap();
                format!("{}:{n}", place(w))
            })
            .collect();
        format!("{head}|{}", list.join(","))
    };
    let keys = app.state.redis.keys.sku(Sku::parse(sku).unwrap());
    let mut conn = app.state.redis.conn();
    let mut out = BTreeMap::new();
    let mut read = |name: &str, map: HashMap<String, String>| {
        for (k, v) in map {
            out.insert(format!("{name}.{k}"), v);
        }
    };
    let stock: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.stock())
        .query_async(&mut conn)
        .await
        .unwrap();
    let stock = stock
        .into_iter()
        .filter(|(k, _)| k != "gen")
        .map(|(k, v)| match k.strip_prefix('w') {
            Some(id) => (place(id), v),
            None => (k, v),
        })
        .collect();
    read("stock", stock);
    let users: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.users())
        .query_async(&mut conn)
        .await
        .unwrap();
    read("users", users);
    let res: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.res())
        .query_async(&mut conn)
        .await
        .unwrap();
    let rids: Vec<String> = res.keys().cloned().collect();
    read(
        "res",
        res.into_iter().map(|(k, v)| (k, alloc(&v))).collect(),
    );
    let exp: Vec<(String, String)> = redis::cmd("ZRANGE")
        .arg(keys.exp())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    read("exp", exp.into_iter().collect());
    for rid in rids {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("{}{rid}", keys.ttl_base()))
            .query_async(&mut conn)
            .await
            .unwrap();
        out.insert(format!("ttl.{rid}"), v.unwrap_or_else(|| "-".into()));
    }
    out
}

/// Two skus alike: the same name, price, sale, limit and stock in two warehouses, loaded;
/// each with its warehouses.
async fn twin_skus(app: &TestApp, rng: &mut StdRng, limit: Option<u64>) -> [(u64, Vec<u64>); 2] {
    let units = [rng.random_range(0..=4i64), rng.random_range(0..=6i64)];
    let mut skus = Vec::new();
    for _ in 0..2 {
        let sku = app.product("Twin", 10_000).await;
        let mut ws = Vec::new();
        for (i, n) in units.iter().enumerate() {
            let w = app.warehouse(&format!("tw-{sku}-{i}")).await;
            // Both warehouses stocked (0 units: +1 then -1), so both are in the stock hash.
            app.restock(sku, w, *n + 1).await;
            app.restock(sku, w, -1).await;
            ws.push(w);
        }
        app.open_sale(sku, 5_000, limit).await;
        assert!(
            flashsale::service::catalog::ensure_loaded(&app.state, Sku::parse(sku).unwrap())
                .await
                .unwrap()
        );
        skus.push((sku, ws));
    }
    skus.try_into().unwrap()
}

/// A random entry: mostly cart adds, some order lines (repeated ids: an existing line is the
/// answer), some restores, some lines past the bounds, some already past their deadline (an
/// expired reservation the next touch gives back).
fn random_entry(rng: &mut StdRng, sku: Sku, now_ms: i64) -> ReserveRequest {
    let user_id = 900 + rng.random_range(0..4u64);
    let (rid, mode) = match rng.random_range(0..20) {
        0..=13 => (Rid::Hold { user_id }, ReserveMode::Add),
        14..=17 => (
            Rid::OrderLine {
                order_id: 50 + rng.random_range(0..3u64),
            },
            ReserveMode::Once,
        ),
        _ => (
            Rid::OrderLine {
                order_id: 60 + rng.random_range(0..2u64),
            },
            ReserveMode::Restore,
        ),
    };
    let count = if rng.random_range(0..25) == 0 {
        70_000
    } else {
        rng.random_range(1..=3)
    };
    let deadline = if rng.random_range(0..6) == 0 {
        Deadline::At(now_ms - 1_000)
    } else {
        Deadline::At(now_ms + 600_000)
    };
    ReserveRequest {
        sku,
        user_id,
        count,
        rid,
        deadline,
        mode,
    }
}

fn tag(o: &ReserveOutcome) -> &'static str {
    match o {
        ReserveOutcome::Reserved { .. } => "ok",
        ReserveOutcome::OutOfStock { .. } => "out_of_stock",
        ReserveOutcome::LimitExceeded { .. } => "limit_exceeded",
        ReserveOutcome::SaleNotActive => "sale_not_active",
        ReserveOutcome::TooLarge { .. } => "too_large",
        ReserveOutcome::NotLoaded => "not_loaded",
        ReserveOutcome::Fenced => "fenced",
    }
}

/// Random sequences of reservations, each run twice on twin skus: in one call (a batch) and as
/// one call per entry; every entry's outcome and everything Redis holds afterwards are equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_exactly_its_entries_one_after_another() {
    // No sweeper: it would give back the expired entries of one twin before the other's.
    let app = spawn_app_with(|c| c.sweeper.sweep_interval = Duration::from_secs(3600)).await;
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    let mut batched_entries = 0;
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let limit = [None, Some(2), Some(4)][rng.random_range(0..3)];
        let [(a, wa), (b, wb)] = twin_skus(&app, &mut rng, limit).await;
        let now = app.state.redis.now_ms().await.unwrap();
        let rounds = rng.random_range(1..=3);
        for round in 0..rounds {
            let n = rng.random_range(2..=12);
            let entries: Vec<u64> = (0..n).map(|_| rng.random()).collect();
            let make = |sku: u64| -> Vec<ReserveRequest> {
                entries
                    .iter()
                    .map(|s| {
                        random_entry(
                            &mut StdRng::seed_from_u64(*s),
                            Sku::parse(sku).unwrap(),
                            now,
                        )
                    })
                    .collect()
            };
            let together = app
                .state
                .redis
                .reserve_together(Sku::parse(a).unwrap(), &make(a))
                .await
                .unwrap();
            let mut alone = Vec::new();
            for req in make(b) {
                let mut r = app
                    .state
                    .redis
                    .reserve_together(Sku::parse(b).unwrap(), &[req])
                    .await
                    .unwrap();
                alone.push(r.remove(0));
            }
            let together: Vec<ReserveOutcome> = together.into_iter().map(|r| r.unwrap()).collect();
            let alone: Vec<ReserveOutcome> = alone.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(
                together, alone,
                "seed {seed} round {round}: outcomes differ"
            );
            for o in &together {
                *seen.entry(tag(o)).or_default() += 1;
            }
            batched_entries += together.len();
            assert_eq!(
                reservation_state(&app, a, &wa).await,
                reservation_state(&app, b, &wb).await,
                "seed {seed} round {round}: Redis differs after the batch and the single calls"
            );
        }
        app.assert_identity(a).await;
        app.assert_identity(b).await;
    }
    println!("{batched_entries} entries in batches: {seen:?}");
    for t in ["ok", "out_of_stock", "limit_exceeded", "too_large"] {
        assert!(
            seen.get(t).copied().unwrap_or(0) > 0,
            "no {t} outcome met: {seen:?}"
        );
    }
}

/// `flashsale_reserve_batch_size`'s count of calls and of calls of one entry, this process.
fn batch_counts(app: &TestApp) -> (f64, f64) {
    let text = app.state.metrics.render();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("flashsale_reserve_batch_size_count"),
        value("flashsale_reserve_batch_size_bucket{le=\"1\"}"),
    )
}

/// 400 customers, three concurrent adds each (1 + 1 + 2 units) on a sku of 300 units with a
/// limit of 3: the requests go in batches, and every customer's line is exactly the sum of the
/// adds answered 200, within the limit; the units held are the units sold out, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_go_in_batches_and_add_up_exactly() {
    let app = spawn_app().await;
    let sku = app.sale_product(300, Some(3)).await;
    let (calls_before, singles_before) = batch_counts(&app);
    let customers: Vec<(u64, String)> = (0..400u64)
        .map(|i| (20_000 + i, app.customer_token(20_000 + i)))
        .collect();
    let app = &app;
    let results = futures::future::join_all(customers.iter().flat_map(|(user, token)| {
        [1u64, 1, 2].into_iter().map(move |count| async move {
            (*user, count, app.try_cart_add(token, sku, count).await)
        })
    }))
    .await;
    let mut granted: HashMap<u64, u64> = HashMap::new();
    let mut refusals: HashMap<String, usize> = HashMap::new();
    for (user, count, r) in results {
        let (status, body) = r.into_parts();
        match status {
            StatusCode::OK => *granted.entry(user).or_default() += count,
            StatusCode::CONFLICT => {
                *refusals
                    .entry(body["error"]["code"].as_str().unwrap_or("").to_string())
                    .or_default() += 1
            }
            other => panic!("customer {user}: {other} {body}"),
        }
    }
    assert!(
        refusals
            .keys()
            .all(|c| c == "out_of_stock" || c == "limit_exceeded"),
        "{refusals:?}"
    );
    let mut held = 0;
    for (user, token) in &customers {
        let line = app.cart(token).await.line(sku).map_or(0, |l| l.count);
        assert_eq!(
            line,
            granted.get(user).copied().unwrap_or(0),
            "customer {user}: the line is not the sum of the adds answered 200"
        );
        assert!(
            line <= 3,
            "customer {user} holds {line}, past the limit of 3"
        );
        held += line;
    }
    assert_eq!(
        held, 300,
        "demand (1,600 units) was above the 300 units: all are held"
    );
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.held), (0, 300));
    let (calls, singles) = batch_counts(app);
    println!(
        "reservation calls: {}, of one entry: {}; refusals {refusals:?}",
        calls - calls_before,
        singles - singles_before
    );
    assert!(
        calls - calls_before < 1_200.0,
        "1,200 concurrent adds of one sku went in {} calls: none was batched",
        calls - calls_before
    );
}

/// Adds until one is answered 200 (each a fresh attempt), for at most `within`; the time it took.
async fn add_succeeds_within(app: &TestApp, token: &str, sku: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let r = app.try_cart_add(token, sku, 1).await;
        if r.status == StatusCode::OK {
            return started.elapsed();
        }
        r.assert_error(
            StatusCode::CONFLICT,
            "out_of_stock",
            "while waiting for a unit",
        );
        assert!(
            started.elapsed() < within,
            "the unit given back was not sold again within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A sku known sold out is refused by the instance itself (Redis is not asked: the instance's
/// own count of such refusals grows by each one), and a unit given back (a line removed, a
/// restock) is sold again within one live tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_is_answered_in_process_and_a_unit_given_back_sells_within_one_tick() {
    let app = spawn_app().await;
    let tick = app.state.cfg.live.live_tick;
    let sku = app.sale_product(1, None).await;
    let s = Sku::parse(sku).unwrap();
    let (a, b, c) = (
        app.customer_token(301),
        app.customer_token(302),
        app.customer_token(303),
    );
    app.cart_add(&a, sku, 1).await;
    eventually("the sku known sold out", Duration::from_secs(5), || async {
        app.state.sold_out.is_known(s)
    })
    .await;
    let before = app.state.sold_out.refused();
    for _ in 0..20 {
        app.try_cart_add(&b, sku, 1).await.assert_error(
            StatusCode::CONFLICT,
            "out_of_stock",
            "sold out",
        );
    }
    assert_eq!(
        app.state.sold_out.refused() - before,
        20,
        "every refusal of a known sold-out sku is answered in process"
    );

    // A line removed: the unit is sold again within one tick.
    app.cart_remove(&a, sku, None).await;
    let took = add_succeeds_within(&app, &b, sku, tick).await;
    println!("a unit given back sold again after {took:?}");

    // Sold out again (b took it); a restock sells within one tick too.
    eventually("the sku known sold out", Duration::from_secs(5), || async {
        app.state.sold_out.is_known(s)
    })
    .await;
    let w = app.warehouse("second").await;
    app.restock(sku, w, 1).await;
    let took = add_succeeds_within(&app, &c, sku, tick).await;
    println!("a restocked unit sold after {took:?}");
    let bk = app.assert_identity(sku).await;
    assert_eq!((bk.available, bk.held), (0, 2));
}

/// A hold that lapses gives its units back through the sweeper: a sku known sold out sells
/// them within one tick of the sweep. (The knowledge is trusted for a minute here, so only the
/// sweep's announcement can end it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_hold_of_a_sold_out_sku_sells_again_within_one_tick() {
    let app = spawn_app_with(|c| {
        c.sale.cart_hold_ttl = Duration::from_millis(1_500);
        c.sale.sold_out_trust = Duration::from_secs(60);
    })
    .await;
    let tick = app.state.cfg.live.live_tick;
    let sku = app.sale_product(1, None).await;
    let s = Sku::parse(sku).unwrap();
    let (a, b) = (app.customer_token(401), app.customer_token(402));
    app.cart_add(&a, sku, 1).await;
    eventually("the sku known sold out", Duration::from_secs(5), || async {
        app.state.sold_out.is_known(s)
    })
    .await;
    app.try_cart_add(&b, sku, 1).await.assert_error(
        StatusCode::CONFLICT,
        "out_of_stock",
        "sold out",
    );
    // The sweeper (every 100 ms in tests) gives the unit back after 1.5 s.
    eventually("the hold swept", Duration::from_secs(10), || async {
        app.available(sku).await == 1
    })
    .await;
    add_succeeds_within(&app, &b, sku, tick).await;
    app.assert_identity(sku).await;
}

/// The mix under load: 300 buyers keep adding to a sold-out sku while its 20 holders give their
/// units back one by one: every unit given back is sold again, nobody holds past the limit, and
/// the identity holds; most refusals were answered in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_on_a_sold_out_sku_takes_every_unit_given_back() {
    let app = spawn_app().await;
    let sku = app.sale_product(20, Some(1)).await;
    let holders: Vec<String> = (0..20u64).map(|i| app.customer_token(5_000 + i)).collect();
    for t in &holders {
        app.cart_add(t, sku, 1).await;
    }
    let refused_before = app.state.sold_out.refused();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let crowd = futures::future::join_all((0..300u64).map(|i| {
        let token = app.customer_token(6_000 + i);
        let (app, stop) = (&app, &stop);
        async move {
            let mut got = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && got == 0 {
                let (status, body) = app.try_cart_add(&token, sku, 1).await.into_parts();
                match status {
                    StatusCode::OK => got = 1,
                    StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "out_of_stock"),
                    other => panic!("{other} {body}"),
                }
            }
            got
        }
    }));
    let givers = async {
        for t in &holders {
            tokio::time::sleep(Duration::from_millis(30)).await;
            app.cart_remove(t, sku, None).await;
        }
        // Every unit given back is taken within a tick of its announcement.
        let deadline = Instant::now() + Duration::from_secs(5);
        while app.available(sku).await > 0 {
            assert!(
                Instant::now() < deadline,
                "units given back were not sold again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (got, ()) = tokio::join!(crowd, givers);
    let sold: u64 = got.iter().sum();
    assert_eq!(sold, 20, "the 20 units given back went to 20 of the crowd");
    let b = app.assert_identity(sku).await;
    assert_eq!((b.available, b.held), (0, 20));
    let refused = app.state.sold_out.refused() - refused_before;
    println!("refused in process: {refused}");
    assert!(refused > 0, "no refusal was answered in process");
}
