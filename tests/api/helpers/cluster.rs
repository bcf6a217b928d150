//! The tests' cluster mode (issue 24): with `FLASHSALE_TEST_REDIS_CLUSTER` set to the seed
//! nodes of a Redis Cluster (`scripts/redis-cluster nodes` prints them), every app runs in
//! cluster mode, `spawn_app` runs two instances on the same stores, and a test's keys, spread
//! over every master, are found and deleted master by master. Also the failover the tests cause:
//! a master SIGKILLed and started again through `scripts/redis-cluster`.

use std::io::Write;
use std::process::Stdio;

/// The seed nodes of the cluster the tests run against, or `None`: one Redis
/// (`FLASHSALE_TEST_REDIS_URL` or 127.0.0.1:6379).
pub fn cluster_nodes() -> Option<Vec<String>> {
    let list = std::env::var("FLASHSALE_TEST_REDIS_CLUSTER").ok()?;
    let nodes: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

/// Whether the tests run against a Redis Cluster.
pub fn on_cluster() -> bool {
    cluster_nodes().is_some()
}

/// Says why a test does not run here, past the test harness's capture of its output (a
/// skipped test must not look like one that passed), and returns true: `if
/// skip_on_cluster("...") { return; }` for a test that is single-Redis by nature.
pub fn skip_on_cluster(why: &str) -> bool {
    skip_when(on_cluster(), "on the Redis Cluster", why)
}

/// The other way round: a test that needs the cluster (it kills a master).
pub fn skip_off_cluster(why: &str) -> bool {
    skip_when(!on_cluster(), "without a Redis Cluster", why)
}

fn skip_when(skip: bool, mode: &str, why: &str) -> bool {
    if skip {
        let name = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        let _ = writeln!(std::io::stderr(), "SKIPPED {mode}: {name}: {why}");
    }
    skip
}

/// One node of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// `host:port`.
    pub addr: String,
    pub master: bool,
    pub failed: bool,
    /// The master it replicates (replicas).
    pub master_id: Option<String>,
    /// The slot ranges it serves (masters), inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }
}

/// The cluster's nodes as the first seed that answers sees them.
pub async fn cluster_topology() -> Vec<Node> {
    let seeds = cluster_nodes().expect("cluster mode");
    for seed in &seeds {
        let Ok(client) = redis::Client::open(seed.as_str()) else {
            continue;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let Ok(text) = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut c)
            .await
        else {
            continue;
        };
        return text.lines().filter_map(parse_node).collect();
    }
    panic!("no seed node of the cluster answers: {seeds:?}");
}

/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
fn parse_node(line: &str) -> Option<Node> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let addr = f[1].split(['@', ',']).next()?.to_string();
    let flags: Vec<&str> = f[2].split(',').collect();
    let slots = f[8..]
        .iter()
        // Slots being imported or migrated (`[...]`) stay with their owner.
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Some(Node {
        id: f[0].to_string(),
        addr,
        master: flags.contains(&"master"),
        failed: flags.iter().any(|x| *x == "fail" || *x == "fail?"),
        master_id: (f[3] != "-").then(|| f[3].to_string()),
        slots,
    })
}

/// The Redis servers that hold keys: the cluster's masters, or the one Redis (`single_url`;
/// empty: the tests' Redis).
pub async fn key_holders(single_url: &str) -> Vec<String> {
    if !on_cluster() {
        if single_url.is_empty() {
            return vec![super::spawn::redis_url()];
        }
        return vec![single_url.to_string()];
    }
    cluster_topology()
        .await
        .into_iter()
        .filter(|n| n.master && !n.failed)
        .map(|n| n.url())
        .collect()
}

/// Every key matching `pattern` on one server (SCAN).
async fn scan_one(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async::<(u64, Vec<String>)>(conn)
            .await
        else {
            return out;
        };
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// Deletes every key matching `pattern` on every server that holds keys, each key on the
/// server that has it (one DEL a key: a cluster refuses a DEL of keys in different slots).
/// Returns how many went.
pub async fn delete_keys(single_url: &str, pattern: &str) -> usize {
    let mut gone = 0;
    for url in key_holders(single_url).await {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            continue;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let keys = scan_one(&mut conn, pattern).await;
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.del(k).ignore();
            }
            if pipe.query_async::<()>(&mut conn).await.is_ok() {
                gone += chunk.len();
            }
        }
    }
    gone
}

/// The master that serves `key`'s slot.
pub async fn master_of(key: &str) -> Node {
    let nodes = cluster_topology().await;
    let seed = cluster_nodes().unwrap()[0].clone();
    let mut c = redis::Client::open(seed)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    nodes
        .into_iter()
        .find(|n| n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .unwrap_or_else(|| panic!("no master serves slot {slot} ({key})"))
}

/// Runs `scripts/redis-cluster` with `args` on the cluster the seeds name (its first port is
/// the lowest seed port, as `scripts/redis-cluster nodes` prints them); returns what it
/// printed, or panics with its output when it failed.
pub async fn cluster_script(args: &[&str]) -> String {
    let base = cluster_nodes()
        .expect("cluster mode")
        .iter()
        .filter_map(|n| {
            n.rsplit(':')
                .next()?
                .trim_end_matches('/')
                .parse::<u16>()
                .ok()
        })
        .min()
        .expect("the seeds have ports");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-cluster");
    let mut cmd = tokio::process::Command::new(script);
    if std::env::var("FLASHSALE_CLUSTER_PORT").is_err() {
        cmd.env("FLASHSALE_CLUSTER_PORT", base.to_string());
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("scripts/redis-cluster runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "scripts/redis-cluster {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim().to_string()
}

/// SIGKILLs the master on `port` and waits until its replica has taken over (the cluster's
/// state ok on every node left); returns the script's line (with the failover time).
pub async fn kill_master(port: u16) -> String {
    cluster_script(&["kill-master", &port.to_string()]).await
}

/// Starts the node on `port` again (killed by [`kill_master`]): it rejoins as a replica; waits
/// until the cluster has its 3 masters and 3 replicas again.
pub async fn restart_node(port: u16) -> String {
    cluster_script(&["restart", &port.to_string()]).await
}

/// Sets `CONFIG SET key value` on every node (masters and replicas: a replica promoted meanwhile
/// keeps it).
pub async fn config_set_everywhere(key: &str, value: &str) {
    for n in cluster_topology().await.iter().filter(|n| !n.failed) {
        if let Ok(client) = redis::Client::open(n.url())
            && let Ok(mut c) = client.get_multiplexed_async_connection().await
        {
            let _: Result<(), _> = redis::cmd("CONFIG")
                .arg("SET")
                .arg(key)
                .arg(value)
                .query_async(&mut c)
                .await;
        }
    }
}
