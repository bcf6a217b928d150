//! The outbox partitions shared between instances (src/worker/partitions.rs): each read by one
//! instance at a time under a lease, split by fair share, taken over when an instance dies; and
//! the stream consumers of instances long gone deleted, never one with pending entries.

use std::time::{Duration, Instant};

use flashsale::app::AppState;
use flashsale::config::Config;
use flashsale::startup::Application;
use flashsale::worker::partitions::drop_stale_consumers;
use flashsale::worker::writer::{self, GROUP, Writer};
use redis::AsyncCommands;

use crate::helpers::*;

async fn mysql_count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

async fn holders(state: &AppState) -> Vec<Option<String>> {
    state.redis.partition_readers().await.unwrap()
}

fn held_by(holders: &[Option<String>], who: &str) -> Vec<u64> {
    (0..holders.len() as u64)
        .filter(|p| holders[*p as usize].as_deref() == Some(who))
        .collect()
}

/// The consumers of `group` on stream `key`: name, pending entries; by name.
async fn consumers(state: &AppState, key: &str, group: &str) -> Vec<(String, u64)> {
    let raw: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(key)
        .arg(group)
        .query_async(&mut state.redis.conn())
        .await
        .unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    };
    let mut out: Vec<(String, u64)> = raw
        .iter()
        .map(|c| (text(&c["name"]), text(&c["pending"]).parse().unwrap()))
        .collect();
    out.sort();
    out
}

/// Deletes the consumers of every partition's stream but its holder's (in `split`): from now on
/// a partition's consumers show who read it. (The first writer to start read all 16 alone until
/// the second came.)
async fn keep_only_holders(state: &AppState, split: &[Option<String>]) {
    for p in 0..16 {
        let key = state.redis.keys.outbox(p);
        for (name, pending) in consumers(state, &key, GROUP).await {
            assert_eq!(pending, 0);
            if Some(&name) != split[p as usize].as_ref() {
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&key)
                    .arg(GROUP)
                    .arg(&name)
                    .query_async(&mut state.redis.conn())
                    .await
                    .unwrap();
            }
        }
    }
}

/// Every order of `ids` in MySQL exactly once: one row, its two history rows (created, paid),
/// one stock movement; and the outbox empty, nothing pending.
async fn assert_written_once(app: &TestApp, ids: &[u64], sku: u64, units: i64) {
    let n = ids.len() as i64;
    assert_eq!(
        mysql_count(app, "SELECT COUNT(*) FROM orders WHERE status = 'paid'").await,
        n
    );
    assert_eq!(
        mysql_count(app, "SELECT COUNT(*) FROM order_status_history").await,
        2 * n
    );
    assert_eq!(
        mysql_count(app, "SELECT COUNT(*) FROM stock_movements").await,
        n
    );
    let b = app.assert_identity(sku).await;
    assert_eq!(
        (b.on_hand, b.sold),
        (units - n, 0),
        "on_hand lowered once per paid unit"
    );
    let backlog = Writer::new(app.state.clone()).backlog().await.unwrap();
    assert_eq!(backlog, (0, 0), "outbox written and acknowledged");
}

/// How many of the orders `ids` MySQL holds.
async fn written(app: &TestApp, ids: &[u64]) -> usize {
    let mut n = 0;
    for id in ids {
        n += mysql_count(app, &format!("SELECT COUNT(*) FROM orders WHERE id = {id}")).await
            as usize;
    }
    n
}

/// Another instance of the service on `app`'s database and key prefix, with the writer on.
async fn second_instance(
    app: &TestApp,
    tweak: impl FnOnce(&mut Config),
) -> (
    AppState,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut cfg = test_config(&app.db_name, &app.prefix);
    cfg.outbox.worker = true;
    tweak(&mut cfg);
    let b = Application::build(cfg).await.unwrap();
    let state = b.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(b.run_until(async {
        let _ = rx.await;
    }));
    (state, tx, server)
}

#[tokio::test]
async fn two_instances_split_the_partitions_and_write_every_order_once() {
    if skip_on_cluster(
        "counts two single instances, and the harness runs two per app there; the split on a \
         cluster runs in the single pass against the test cluster",
    ) {
        return;
    }
    let lease = Duration::from_millis(600);
    let app = spawn_app_with(|c| {
        c.outbox.worker = true;
        c.outbox.reader_lease = lease;
    })
    .await;
    let a = app.state.instance.to_string();
    let (b_state, stop_b, server_b) =
        second_instance(&app, |c| c.outbox.reader_lease = lease).await;
    let b = b_state.instance.to_string();
    eventually(
        "the partitions split 8/8",
        Duration::from_secs(10),
        || async {
            let h = holders(&app.state).await;
            held_by(&h, &a).len() == 8 && held_by(&h, &b).len() == 8
        },
    )
    .await;
    let split = holders(&app.state).await;
    let (of_a, of_b) = (held_by(&split, &a), held_by(&split, &b));
    println!("instance a reads partitions {of_a:?}, instance b {of_b:?}");
    keep_only_holders(&app.state, &split).await;

    // 48 orders, 3 in each partition, bought and paid.
    let units = 100;
    let sku = app.sale_product(units, None).await;
    let mut ids = Vec::new();
    for i in 0..48 {
        ids.push(app.buy_and_pay(60_000 + i, sku, 1).await);
    }
    let parts: std::collections::BTreeSet<u64> = ids.iter().map(|id| id % 16).collect();
    assert_eq!(parts.len(), 16, "the orders are in every partition");
    eventually("every order written", Duration::from_secs(20), || async {
        Writer::new(app.state.clone()).backlog().await.unwrap() == (0, 0)
            && written(&app, &ids).await == ids.len()
    })
    .await;
    assert_written_once(&app, &ids, sku, units).await;
    // Each partition was read by its holder alone, and the split held throughout.
    assert_eq!(holders(&app.state).await, split);
    for p in 0..16 {
        let key = app.state.redis.keys.outbox(p);
        let names: Vec<String> = consumers(&app.state, &key, GROUP)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            vec![split[p as usize].clone().unwrap()],
            "partition {p} read by its holder only"
        );
    }

    // The second instance stops: it lets go of its partitions at once (not after the lease),
    // and the first takes them at its next tick.
    let _ = stop_b.send(());
    server_b.await.unwrap().unwrap();
    let stopped = Instant::now();
    eventually(
        "the first instance reads all 16",
        Duration::from_secs(5),
        || async { held_by(&holders(&app.state).await, &a).len() == 16 },
    )
    .await;
    println!(
        "after a clean stop, the partitions were taken over in {:?}",
        stopped.elapsed()
    );
    let mut more = Vec::new();
    for i in 0..16 {
        more.push(app.buy_and_pay(61_000 + i, sku, 1).await);
    }
    ids.extend(more);
    eventually(
        "the later orders written",
        Duration::from_secs(20),
        || async {
            Writer::new(app.state.clone()).backlog().await.unwrap() == (0, 0)
                && written(&app, &ids).await == ids.len()
        },
    )
    .await;
    assert_written_once(&app, &ids, sku, units).await;
    app.assert_reconciles().await;
}

/// The lease and claim time of the takeover tests.
const LEASE: Duration = Duration::from_secs(1);
const CLAIM_IDLE: Duration = Duration::from_millis(1500);

fn takeover_config(c: &mut Config) {
    c.outbox.reader_lease = LEASE;
    c.outbox.claim_idle = CLAIM_IDLE;
}

#[tokio::test]
async fn a_killed_instances_partitions_and_pending_entries_are_taken_over() {
    let app = spawn_app_with(takeover_config).await;
    killed_writer_taken_over(&app).await;
}

/// Two writers, x and y, split the partitions; x cannot reach MySQL, so what it reads stays
/// pending at it; y leaves x's partitions alone, also past `claim_idle`; x is killed (no
/// clean-up): once its leases ran out y takes its partitions, claims its pending entries and
/// writes them, every order once. (`app` runs with [`takeover_config`], its own writer off.)
async fn killed_writer_taken_over(app: &TestApp) {
    let (lease, claim_idle) = (LEASE, CLAIM_IDLE);
    // Two writers on the app's stores, as two instances would run them. The first cannot reach
    // MySQL: what it reads stays pending at it.
    let down = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("mysql://root@127.0.0.1:1/nothing")
        .unwrap();
    let x = AppState {
        instance: "instance-x".into(),
        db: down,
        ..app.state.clone()
    };
    let y = AppState {
        instance: "instance-y".into(),
        ..app.state.clone()
    };
    let (stop_x_tx, stop_x) = tokio::sync::watch::channel(false);
    let (stop_y_tx, stop_y) = tokio::sync::watch::channel(false);
    let writer_x = tokio::spawn(writer::run(x, stop_x));
    let writer_y = tokio::spawn(writer::run(y, stop_y));
    eventually(
        "the partitions split 8/8",
        Duration::from_secs(10),
        || async {
            let h = holders(&app.state).await;
            held_by(&h, "instance-x").len() == 8 && held_by(&h, "instance-y").len() == 8
        },
    )
    .await;
    let of_x = held_by(&holders(&app.state).await, "instance-x");

    let units = 100;
    let sku = app.sale_product(units, None).await;
    let mut ids = Vec::new();
    for i in 0..32 {
        ids.push(app.buy_and_pay(62_000 + i, sku, 1).await);
    }
    let (at_x, at_y): (Vec<u64>, Vec<u64>) = ids.iter().partition(|id| of_x.contains(&(*id % 16)));
    assert!(!at_x.is_empty() && !at_y.is_empty(), "{at_x:?} {at_y:?}");
    eventually(
        "y wrote its partitions' orders",
        Duration::from_secs(20),
        || async { written(app, &at_y).await == at_y.len() },
    )
    .await;
    // Past claim_idle, x's partitions are still x's alone: its entries pending at it (it keeps
    // trying), none written by y.
    tokio::time::sleep(claim_idle * 2).await;
    assert_eq!(
        written(app, &at_x).await,
        0,
        "y leaves x's partitions alone"
    );
    let mut pending_at_x = 0;
    for p in &of_x {
        let key = app.state.redis.keys.outbox(*p);
        for (name, pending) in consumers(&app.state, &key, GROUP).await {
            assert_ne!(name, "instance-y", "y never read partition {p}");
            if name == "instance-x" {
                pending_at_x += pending;
            }
        }
    }
    assert!(pending_at_x > 0, "x holds entries pending");

    // x is killed: no clean-up, its leases stay until they run out.
    writer_x.abort();
    assert!(writer_x.await.unwrap_err().is_cancelled());
    let killed = Instant::now();
    assert_eq!(held_by(&holders(&app.state).await, "instance-x"), of_x);
    eventually("y reads all 16", Duration::from_secs(10), || async {
        held_by(&holders(&app.state).await, "instance-y").len() == 16
    })
    .await;
    let taken = killed.elapsed();
    eventually("x's orders written", Duration::from_secs(20), || async {
        written(app, &at_x).await == at_x.len()
    })
    .await;
    println!(
        "x killed: its partitions taken over after {taken:?}, its pending entries written after {:?}",
        killed.elapsed()
    );
    assert!(
        taken >= lease / 2,
        "taken over only once its leases ran out: {taken:?}"
    );
    eventually("the outbox drained", Duration::from_secs(10), || async {
        Writer::new(app.state.clone()).backlog().await.unwrap() == (0, 0)
    })
    .await;
    assert_written_once(app, &ids, sku, units).await;
    for p in &of_x {
        let key = app.state.redis.keys.outbox(*p);
        let x_pending: u64 = consumers(&app.state, &key, GROUP)
            .await
            .into_iter()
            .filter(|(n, _)| n == "instance-x")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(x_pending, 0, "x's entries of partition {p} claimed");
    }

    // y stops cleanly: its leases and heartbeat are gone at once.
    stop_y_tx.send(true).unwrap();
    writer_y.await.unwrap();
    drop(stop_x_tx);
    assert!(holders(&app.state).await.iter().all(Option::is_none));
    let readers: Vec<String> = app
        .state
        .redis
        .conn()
        .zrange(app.state.redis.keys.outbox_readers(), 0, -1)
        .await
        .unwrap();
    assert!(
        readers.is_empty(),
        "x's note forgotten once it ran out, y's taken off at its stop: {readers:?}"
    );
    app.assert_reconciles().await;
}

#[tokio::test]
async fn stale_consumers_are_deleted_and_those_with_pending_entries_kept() {
    let app = spawn_app().await;
    stale_consumers_deleted(&app.state).await;
}

/// Consumers of instances gone, idle with nothing pending, are deleted by the holder of their
/// partition (and of partition 0, on the order-events stream); one with a pending entry never,
/// however long idle; the holder's own never; another partition's not by this holder.
async fn stale_consumers_deleted(state: &AppState) {
    let writer = Writer::named(state.clone(), "holder");
    writer.ensure_groups().await.unwrap();
    let mut conn = state.redis.conn();
    let outbox = state.redis.keys.outbox(0);
    let events = state.redis.keys.order_events();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&events)
        .arg("webhooks")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let create = |key: &str, group: &str, name: &str| {
        redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(key)
            .arg(group)
            .arg(name)
            .clone()
    };
    // Consumers of instances gone: one with nothing pending, one with an entry it never
    // acknowledged; the holder's own consumer; on both streams.
    for (key, group) in [(&outbox, GROUP), (&events, "webhooks")] {
        for name in ["gone-idle", "gone-pending", "holder"] {
            let _: i64 = create(key, group, name)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let _: String = conn.xadd(key, "*", &[("test", "1")]).await.unwrap();
        let read: redis::streams::StreamReadReply = conn
            .xread_options(
                &[key.as_str()],
                &[">"],
                &redis::streams::StreamReadOptions::default().group(group, "gone-pending"),
            )
            .await
            .unwrap();
        assert_eq!(read.keys[0].ids.len(), 1);
    }
    // A stream of a partition this instance does not hold is not its to tidy.
    let other = state.redis.keys.outbox(1);
    let _: i64 = create(&other, GROUP, "gone-elsewhere")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One that read just now.
    let _: i64 = create(&outbox, GROUP, "recent")
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut dropped = drop_stale_consumers(&writer, &[0], Duration::from_millis(200))
        .await
        .unwrap();
    dropped.sort();
    let mut expected = vec![
        (outbox.clone(), "gone-idle".to_string()),
        (events.clone(), "gone-idle".to_string()),
    ];
    expected.sort();
    assert_eq!(dropped, expected);
    assert_eq!(
        consumers(state, &outbox, GROUP).await,
        [
            ("gone-pending".to_string(), 1),
            ("holder".to_string(), 0),
            ("recent".to_string(), 0),
        ]
    );
    assert_eq!(
        consumers(state, &events, "webhooks").await,
        [("gone-pending".to_string(), 1), ("holder".to_string(), 0)]
    );
    assert_eq!(
        consumers(state, &other, GROUP).await,
        [("gone-elsewhere".to_string(), 0)]
    );

    // However long idle: a consumer with pending entries stays (deleting it would drop them:
    // never delivered again).
    let dropped = drop_stale_consumers(&writer, &[0, 1], Duration::ZERO)
        .await
        .unwrap();
    let names: Vec<&str> = dropped.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        !names.contains(&"gone-pending") && !names.contains(&"holder"),
        "{dropped:?}"
    );
    assert!(
        names.contains(&"recent") && names.contains(&"gone-elsewhere"),
        "{dropped:?}"
    );
    assert_eq!(
        consumers(state, &outbox, GROUP).await,
        [("gone-pending".to_string(), 1), ("holder".to_string(), 0)]
    );
    // Streams or groups that do not exist: nothing to do.
    let _: () = conn.del(&events).await.unwrap();
    assert!(
        drop_stale_consumers(&writer, &[0], Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .all(|(k, _)| *k != events)
    );
}

/// The seed nodes of a Redis Cluster to run against (`FLASHSALE_TEST_REDIS_CLUSTER`, comma
/// separated; the local test cluster's first node by default), when it answers and is whole.
async fn test_cluster() -> Result<Vec<String>, String> {
    let seeds: Vec<String> = std::env::var("FLASHSALE_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis://127.0.0.1:7101".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let client = redis::Client::open(seeds[0].as_str()).map_err(|e| e.to_string())?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| format!("{} does not answer", seeds[0]))?
    .map_err(|e| format!("{}: {e}", seeds[0]))?;
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("{} is not a cluster node: {e}", seeds[0]))?;
    if !info.contains("cluster_state:ok") {
        return Err(format!("the cluster of {} is not ok", seeds[0]));
    }
    Ok(seeds)
}

/// Deletes every key of `prefix` on the cluster's masters when dropped, also when the test
/// failed (the test harness cleans one Redis).
struct ClusterKeys {
    seed: String,
    prefix: String,
}

impl Drop for ClusterKeys {
    fn drop(&mut self) {
        let (seed, prefix) = (self.seed.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drop_cluster_keys(&seed, &prefix))
        })
        .join();
    }
}

async fn drop_cluster_keys(seed: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(seed) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let Ok(nodes) = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async::<String>(&mut conn)
        .await
    else {
        return;
    };
    for line in nodes.lines().filter(|l| l.contains("master")) {
        let Some(addr) = line.split(' ').nth(1).and_then(|a| a.split('@').next()) else {
            continue;
        };
        let Ok(node) = redis::Client::open(format!("redis://{addr}")) else {
            continue;
        };
        let Ok(mut c) = node.get_multiplexed_async_connection().await else {
            continue;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        for key in keys {
            let _: Result<(), _> = c.del(&key).await;
        }
    }
}

/// On a Redis Cluster, where the 16 partitions are in 16 slots (no command reads them all): two
/// writers split them, every order is written once, a stale consumer is deleted, and a clean
/// stop hands the partitions over. Skipped (saying why) when no cluster runs.
#[tokio::test]
async fn on_a_redis_cluster_two_writers_split_the_partitions() {
    let Some(cluster) =
        ClusterApp::start(|c| c.outbox.reader_lease = Duration::from_millis(600)).await
    else {
        return;
    };
    let app = &cluster.app;
    let state = app.state.clone();

    let x = AppState {
        instance: "cluster-x".into(),
        ..state.clone()
    };
    let y = AppState {
        instance: "cluster-y".into(),
        ..state.clone()
    };
    let (stop_x_tx, stop_x) = tokio::sync::watch::channel(false);
    let (stop_y_tx, stop_y) = tokio::sync::watch::channel(false);
    let writer_x = tokio::spawn(writer::run(x, stop_x));
    let writer_y = tokio::spawn(writer::run(y, stop_y));
    eventually(
        "the partitions split 8/8",
        Duration::from_secs(10),
        || async {
            let h = holders(&state).await;
            held_by(&h, "cluster-x").len() == 8 && held_by(&h, "cluster-y").len() == 8
        },
    )
    .await;
    let split = holders(&state).await;
    keep_only_holders(&state, &split).await;

    let units = 60;
    let sku = app.sale_product(units, None).await;
    let mut ids = Vec::new();
    for i in 0..32 {
        ids.push(app.buy_and_pay(63_000 + i, sku, 1).await);
    }
    eventually("every order written", Duration::from_secs(20), || async {
        Writer::new(state.clone()).backlog().await.unwrap() == (0, 0)
            && written(app, &ids).await == ids.len()
    })
    .await;
    assert_written_once(app, &ids, sku, units).await;
    assert_eq!(holders(&state).await, split, "the split held throughout");
    for p in 0..16 {
        let key = state.redis.keys.outbox(p);
        for (name, _) in consumers(&state, &key, GROUP).await {
            assert_eq!(
                Some(name),
                split[p as usize],
                "partition {p} read by its holder only"
            );
        }
    }

    // A consumer of an instance gone, deleted by the partition's holder.
    let holder = split[5].clone().unwrap();
    let key = state.redis.keys.outbox(5);
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&key)
        .arg(GROUP)
        .arg("gone")
        .query_async(&mut state.redis.conn())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let writer = Writer::named(state.clone(), &holder);
    let dropped = drop_stale_consumers(&writer, &[5], Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(dropped, [(key.clone(), "gone".to_string())]);

    // x stops cleanly: y reads all 16 at its next tick.
    stop_x_tx.send(true).unwrap();
    writer_x.await.unwrap();
    eventually("y reads all 16", Duration::from_secs(5), || async {
        held_by(&holders(&state).await, "cluster-y").len() == 16
    })
    .await;
    stop_y_tx.send(true).unwrap();
    writer_y.await.unwrap();
    assert!(holders(&state).await.iter().all(Option::is_none));

    cluster.stop().await;
}

#[tokio::test]
async fn on_a_redis_cluster_a_killed_writers_partitions_are_taken_over() {
    let Some(cluster) = ClusterApp::start(takeover_config).await else {
        return;
    };
    killed_writer_taken_over(&cluster.app).await;
    cluster.stop().await;
}

#[tokio::test]
async fn on_a_redis_cluster_stale_consumers_are_deleted() {
    let Some(cluster) = ClusterApp::start(|_| {}).await else {
        return;
    };
    stale_consumers_deleted(&cluster.app.state).await;
    cluster.stop().await;
}

/// The app on the test cluster (its own writer off), with the handle the tests use; its keys
/// on the cluster are deleted after it.
struct ClusterApp {
    app: TestApp,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _keys: ClusterKeys,
}

impl ClusterApp {
    /// `None`, saying why, when no cluster runs.
    async fn start(tweak: impl FnOnce(&mut Config)) -> Option<ClusterApp> {
        let seeds = match test_cluster().await {
            Ok(s) => s,
            Err(why) => {
                println!("skipped: no Redis Cluster to run against ({why})");
                return None;
            }
        };
        let (db_name, prefix) = test_names();
        let keys = ClusterKeys {
            seed: seeds[0].clone(),
            prefix: prefix.clone(),
        };
        let mut cfg = test_config(&db_name, &prefix);
        cfg.stores.redis_cluster_nodes = seeds;
        cfg.stores.redis_url = String::new();
        tweak(&mut cfg);
        let built = Application::build(cfg).await.unwrap();
        assert!(built.state().redis.is_cluster());
        let addr = format!("http://127.0.0.1:{}", built.port());
        let state = built.state();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(built.run_until(async {
            let _ = stopped.await;
        }));
        let app = TestApp::attach(addr, state, db_name, prefix).await;
        Some(ClusterApp {
            app,
            stop,
            server,
            _keys: keys,
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}
