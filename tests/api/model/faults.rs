//! The faults the model-based run injects, all local to the run: a redis-server of its own (killed
//! with and without its data, its eviction policy changed, one sku's keys deleted), TCP proxies
//! between the service and MariaDB (cut = "MySQL stopped"; a COMMIT's answer lost, the COMMIT
//! lost or held) and between the service and that redis-server (replies late or lost), KILLs and
//! locks on the run's own database only, a writer that dies between its MySQL commit and its
//! acknowledgement, the service SIGKILLed (also while an admin change holds its COMMIT). On a
//! Redis Cluster (the tests' cluster mode) the run has no redis-server of its own: the faults of
//! that server and of its proxy are left out, and a master of the cluster is SIGKILLed instead.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashsale::worker::writer::{Fault, Writer};
use sqlx::MySqlPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::helpers::TestApp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// KILL every connection the service holds to the run's database, again and again.
    MysqlKill,
    /// `LOCK TABLES ... WRITE` or `SELECT ... FOR UPDATE` on the run's tables for seconds.
    MysqlLock,
    /// The stock rows held locked, and every write-back statement that queues behind them
    /// killed (KILL QUERY): the write-back fails as on a lock-wait timeout or a deadlock.
    MysqlLockKill,
    /// The proxy in front of MariaDB cut: every connection dropped, new ones refused.
    MysqlDown,
    /// redis-server SIGKILLed and restarted with its append-only file (nothing lost).
    RedisRestart,
    /// redis-server SIGKILLed, its files deleted, restarted empty; then `rebuild-cache`.
    RedisWipe,
    /// `maxmemory-policy allkeys-lru` for a while (the service must refuse sales: 503).
    RedisEvict,
    /// A writer instance that dies after its MySQL commit, before its Redis follow-up and ack.
    WriterCrash,
    /// The service process SIGKILLed in the middle of the round and started again (runs with
    /// the service as a child process only).
    ServiceKill,
    /// The replies of the service's Redis calls held past its Redis timeout, then passed on
    /// (the proxy in front of the run's redis-server): the calls ran, their answers came late.
    RedisReplyLate,
    /// The first script call (`EVALSHA`) on each of the service's Redis connections passed on,
    /// its reply dropped and the connection cut: the call ran, its answer never came.
    RedisReplyLost,
    /// The customers' requests sent with a client timeout of a few ms to a few hundred ms while
    /// Redis answers slowly (still well within its timeout): they go away mid-call.
    ClientGone,
    /// Every `{sku:N}:*` key of one sku deleted (the order id counter and the order records
    /// stay); `rebuild-cache` after the round, as an operator alerted would run it.
    SkuKeysLost,
    /// An admin stock change (addition or removal) whose COMMIT's answer is lost: passed to
    /// MariaDB with the answer swallowed, or lost with the link (MariaDB rolls it back once
    /// the connection closes).
    AdminCommitLost,
    /// The service SIGKILLed while an admin stock change holds its COMMIT (MariaDB rolls it
    /// back when the connection goes); started again (child-process runs only).
    AdminKill,
    /// The master that serves the busiest sku's slot SIGKILLed (no data on disk: what it had
    /// not yet sent to its replica is gone), its replica taking over; then the killed node
    /// started again, rejoining as a replica (Redis Cluster runs only).
    MasterKill,
}

impl FaultKind {
    pub const ALL: [FaultKind; 16] = [
        FaultKind::MysqlKill,
        FaultKind::MysqlLock,
        FaultKind::MysqlLockKill,
        FaultKind::MysqlDown,
        FaultKind::RedisRestart,
        FaultKind::RedisWipe,
        FaultKind::RedisEvict,
        FaultKind::WriterCrash,
        FaultKind::ServiceKill,
        FaultKind::RedisReplyLate,
        FaultKind::RedisReplyLost,
        FaultKind::ClientGone,
        FaultKind::SkuKeysLost,
        FaultKind::AdminCommitLost,
        FaultKind::AdminKill,
        FaultKind::MasterKill,
    ];

    /// The faults of issue 22 (answers lost in flight, one sku's keys lost, admin changes
    /// broken off at their commit).
    pub const ISSUE_22: [FaultKind; 6] = [
        FaultKind::RedisReplyLate,
        FaultKind::RedisReplyLost,
        FaultKind::ClientGone,
        FaultKind::SkuKeysLost,
        FaultKind::AdminCommitLost,
        FaultKind::AdminKill,
    ];

    /// Whether the fault needs the service as a child process (it SIGKILLs it).
    pub fn needs_child(self) -> bool {
        matches!(self, FaultKind::ServiceKill | FaultKind::AdminKill)
    }

    /// Whether the fault is done to the run's own redis-server or through the proxy in front
    /// of it (runs on one Redis only: a cluster client finds the nodes' own addresses).
    pub fn needs_own_redis(self) -> bool {
        matches!(
            self,
            FaultKind::RedisRestart
                | FaultKind::RedisWipe
                | FaultKind::RedisReplyLate
                | FaultKind::RedisReplyLost
                | FaultKind::ClientGone
        )
    }

    /// Whether the fault can be injected in a run with the service as a child process
    /// (`child`) or in-process, on a Redis Cluster (`cluster`) or on one Redis.
    pub fn fits(self, child: bool, cluster: bool) -> bool {
        (child || !self.needs_child())
            && (!cluster || !self.needs_own_redis())
            && (cluster || self != FaultKind::MasterKill)
    }

    /// A comma-separated list of kinds (their Debug names), `all`, `issue22` (the faults of
    /// issue 22) or `none`; `None` when a name is unknown.
    pub fn parse_list(list: &str) -> Option<Vec<FaultKind>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "none" => {}
                "all" => out.extend(FaultKind::ALL),
                "issue22" => out.extend(FaultKind::ISSUE_22),
                _ => out.push(*FaultKind::ALL.iter().find(|k| format!("{k:?}") == name)?),
            }
        }
        out.sort();
        out.dedup();
        Some(out)
    }
}

/// A redis-server of the run's own, with AOF (fsync always) in its own directory.
pub struct RedisProc {
    child: Mutex<Option<Child>>,
    pub port: u16,
    dir: PathBuf,
}

impl RedisProc {
    pub async fn start(port: u16) -> RedisProc {
        let dir = std::env::temp_dir().join(format!("flashsale-model-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        let r = RedisProc {
            child: Mutex::new(None),
            port,
            dir,
        };
        r.spawn().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        *self.child.lock().unwrap() = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut c) = child {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// SIGKILL, then start again: with its files (`keep`) or empty.
    pub async fn restart(&self, keep: bool, down_for: Duration) {
        self.kill();
        if !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        tokio::time::sleep(down_for).await;
        self.spawn().await;
    }

    pub async fn config_set(&self, key: &str, value: &str) {
        let client = redis::Client::open(self.url()).unwrap();
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let _: Result<(), _> = redis::cmd("CONFIG")
                .arg("SET")
                .arg(key)
                .arg(value)
                .query_async(&mut c)
                .await;
        }
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the proxy does with the next `COMMIT` a client sends.
#[derive(Debug, Clone, Copy)]
pub enum Trap {
    /// Passes it on (MySQL commits), swallows the answer, and breaks the connection shortly
    /// after: a connection lost during the commit.
    AnswerLost,
    /// Never passes it on: the client's side of the connection breaks at once, MySQL's side
    /// stays open (the transaction open, its locks held) for the duration, then closes
    /// (MySQL rolls back). A link that died with the COMMIT in it.
    Drop(Duration),
    /// Holds it for the duration, then passes it on and goes on as usual.
    Delay(Duration),
    /// Passes it on (MySQL commits) and swallows the answer; the connection hangs until the
    /// proxy is cut.
    Swallow,
}

/// What the proxy does with the server's replies (set with [`Proxy::replies`]; a fault
/// window is a `Late` or `Lost` followed by `Pass`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replies {
    /// Passed on as they come.
    Pass,
    /// Each chunk read from the server is passed on this long after it arrived (in order): the
    /// request ran, its reply comes late.
    Late(Duration),
    /// The same, on a connection from the first request that contains one of these byte
    /// strings on (e.g. a script's SHA: that call runs, its reply and every later one on the
    /// connection come late; the calls before it were answered in time).
    LateAfter(Vec<Vec<u8>>, Duration),
    /// On a connection that sends a request containing one of these byte strings, the request
    /// is passed on, then every byte the server sends back is dropped and the connection cut:
    /// the call ran, its reply never came.
    LostAfter(Vec<Vec<u8>>),
}

/// A trap and the statement text (if any) its transaction must have run.
type Armed = (Trap, Option<&'static [u8]>);

/// What a proxy's connections share.
struct Shared {
    up: AtomicBool,
    /// The trap for the next `COMMIT`, and the statement text (if any) its transaction must
    /// have run for it to spring (see [`Proxy::arm_after`]).
    trap: Mutex<Option<Armed>>,
    /// Set once a trap passed its COMMIT on with the answer swallowed.
    swallowed: Arc<AtomicBool>,
    /// How many traps sprang.
    sprung: AtomicUsize,
    replies: Mutex<Replies>,
    conns: Mutex<Vec<AbortHandle>>,
}

/// A TCP proxy of the run's own, in front of MariaDB or of the run's redis-server: `cut()`
/// drops every connection and refuses new ones (what the service sees of a stopped server),
/// `restore()` lets them through again; `arm()` sets a trap for the next MySQL `COMMIT`;
/// `replies()` makes the server's replies late or lost for a while.
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    /// Set once a trap passed its COMMIT on with the answer swallowed.
    pub swallowed: Arc<AtomicBool>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let swallowed = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            trap: Mutex::default(),
            swallowed: swallowed.clone(),
            sprung: AtomicUsize::new(0),
            replies: Mutex::new(Replies::Pass),
            conns: Mutex::default(),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !s.up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (target, s2) = (target.clone(), s.clone());
                let h = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        forward(inbound, outbound, s2).await;
                    }
                });
                let mut c = s.conns.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(h.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            port,
            shared,
            swallowed,
            accept,
        }
    }

    /// Sets `t` for the next `COMMIT` a client sends.
    pub fn arm(&self, t: Trap) {
        *self.shared.trap.lock().unwrap() = Some((t, None));
    }

    /// Sets `t` for the next `COMMIT` of a transaction that ran a statement containing
    /// `statement` (e.g. `INSERT INTO stock_adjustments`: an admin stock change, not the
    /// write-back's commits). Prepared statements are recognised by their id.
    pub fn arm_after(&self, t: Trap, statement: &'static [u8]) {
        *self.shared.trap.lock().unwrap() = Some((t, Some(statement)));
    }

    /// Whether the trap is still waiting for a `COMMIT`.
    pub fn armed(&self) -> bool {
        self.shared.trap.lock().unwrap().is_some()
    }

    /// Takes the trap back if it has not sprung.
    pub fn disarm(&self) {
        *self.shared.trap.lock().unwrap() = None;
    }

    /// How many traps sprang so far.
    pub fn sprung(&self) -> usize {
        self.shared.sprung.load(Ordering::SeqCst)
    }

    /// What happens to the server's replies from now on.
    pub fn replies(&self, r: Replies) {
        *self.shared.replies.lock().unwrap() = r;
    }

    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        for h in self.shared.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.shared.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// One connection's view of the MySQL protocol, enough to tell which transaction a `COMMIT`
/// ends: the text of each statement it prepared (by id), and the texts the open transaction
/// ran.
#[derive(Default)]
struct Track {
    /// The text of a `COM_STMT_PREPARE` sent: its answer carries the statement's id.
    preparing: Option<Vec<u8>>,
    prepared: std::collections::HashMap<u32, Vec<u8>>,
    /// What the open transaction ran (statement texts).
    ran: Vec<Vec<u8>>,
}

impl Track {
    /// Notes a client packet: a statement prepared, executed or run as text.
    fn client(&mut self, chunk: &[u8]) {
        let n = chunk.len();
        // One MySQL packet (a Redis request starts with `*`, never a matching length).
        let len = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], 0]) as usize;
        if n < 5 || len + 4 > n {
            return;
        }
        match chunk[4] {
            COM_STMT_PREPARE => self.preparing = Some(chunk[5..len + 4].to_vec()),
            COM_STMT_EXECUTE if n >= 9 => {
                let id = u32::from_le_bytes([chunk[5], chunk[6], chunk[7], chunk[8]]);
                if let Some(text) = self.prepared.get(&id) {
                    self.ran.push(text.clone());
                }
            }
            COM_QUERY => {
                let text = &chunk[5..len + 4];
                if text.starts_with(b"BEGIN") || text.starts_with(b"START TRANSACTION") {
                    self.ran.clear();
                }
                self.ran.push(text.to_vec());
            }
            _ => {}
        }
        // Statements outside a transaction (autocommit) are forgotten in time.
        if self.ran.len() > 64 {
            self.ran.remove(0);
        }
    }

    /// Notes a server chunk: the answer to a prepare (`COM_STMT_PREPARE_OK`: 0x00, then the
    /// statement's id, 4 bytes LE).
    fn server(&mut self, chunk: &[u8]) {
        if let Some(text) = self.preparing.take()
            && chunk.len() >= 9
            && chunk[4] == 0x00
        {
            let id = u32::from_le_bytes([chunk[5], chunk[6], chunk[7], chunk[8]]);
            self.prepared.insert(id, text);
        }
    }

    fn ran(&self, marker: &[u8]) -> bool {
        self.ran.iter().any(|t| contains(t, marker))
    }
}

/// The MySQL command byte of a packet (3 bytes of length, a sequence byte, the command).
const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Copies both ways: server replies as [`Replies`] says, the armed trap sprung on the first
/// `COMMIT` from the client that it matches.
async fn forward(inbound: TcpStream, outbound: TcpStream, shared: Arc<Shared>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_in, mut client_out) = inbound.into_split();
    let (mut server_in, server_out) = outbound.into_split();
    let server_out = Arc::new(tokio::sync::Mutex::new(server_out));
    // Swallow the server's bytes (an `AnswerLost` / `Swallow` trap sprang).
    let mute = Arc::new(AtomicBool::new(false));
    // A request was passed on whose reply is to be lost (`Replies::LostAfter`).
    let doomed = Arc::new(AtomicBool::new(false));
    // A request was passed on from whose reply on the replies are late (`Replies::LateAfter`).
    let late = Arc::new(AtomicBool::new(false));
    let late2 = late.clone();
    let track = Arc::new(Mutex::new(Track::default()));
    let (mute2, doomed2, track2, shared2) =
        (mute.clone(), doomed.clone(), track.clone(), shared.clone());
    let to_client = async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        // Passes each chunk on at its time (now, or later under `Replies::Late`), in order.
        let deliver = async move {
            while let Some((at, bytes)) = rx.recv().await {
                tokio::time::sleep_until(at.into()).await;
                if client_out.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        };
        // Returns true when the connection is to be cut at once (a reply lost).
        let read = async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match server_in.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                };
                if doomed2.load(Ordering::SeqCst) {
                    return true;
                }
                if mute2.load(Ordering::SeqCst) {
                    continue;
                }
                track2.lock().unwrap().server(&buf[..n]);
                let at = match *shared2.replies.lock().unwrap() {
                    Replies::Late(d) => Instant::now() + d,
                    Replies::LateAfter(_, d) if late2.load(Ordering::SeqCst) => Instant::now() + d,
                    _ => Instant::now(),
                };
                if tx.send((at, buf[..n].to_vec())).is_err() {
                    return false;
                }
            }
        };
        tokio::pin!(deliver);
        tokio::select! {
            cut = read => if !cut {
                deliver.await;
            },
            _ = &mut deliver => {}
        }
    };
    let out2 = server_out.clone();
    let to_server = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_in.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            match &*shared.replies.lock().unwrap() {
                Replies::LostAfter(markers) if markers.iter().any(|m| contains(chunk, m)) => {
                    doomed.store(true, Ordering::SeqCst);
                }
                Replies::LateAfter(markers, _) if markers.iter().any(|m| contains(chunk, m)) => {
                    late.store(true, Ordering::SeqCst);
                }
                _ => {}
            }
            // A COM_QUERY packet: 3 bytes of length, a sequence byte, 0x03, the statement.
            let commit = contains(chunk, b"\x03COMMIT");
            let end = commit || contains(chunk, b"\x03ROLLBACK");
            let sprung = {
                let mut trap = shared.trap.lock().unwrap();
                let mut t = track.lock().unwrap();
                t.client(chunk);
                let fits = match *trap {
                    Some((_, None)) => commit,
                    Some((_, Some(marker))) => commit && t.ran(marker),
                    None => false,
                };
                if end {
                    t.ran.clear();
                }
                if fits {
                    shared.sprung.fetch_add(1, Ordering::SeqCst);
                    trap.take().map(|(t, _)| t)
                } else {
                    None
                }
            };
            match sprung {
                Some(Trap::Drop(hold)) => return Some(hold),
                Some(Trap::Delay(d)) => tokio::time::sleep(d).await,
                Some(t @ (Trap::Swallow | Trap::AnswerLost)) => {
                    mute.store(true, Ordering::SeqCst);
                    let _ = out2.lock().await.write_all(&buf[..n]).await;
                    shared.swallowed.store(true, Ordering::SeqCst);
                    if matches!(t, Trap::AnswerLost) {
                        // MySQL commits meanwhile; then the connection breaks.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        return None;
                    }
                    std::future::pending::<()>().await;
                }
                None => {}
            }
            if out2.lock().await.write_all(&buf[..n]).await.is_err() {
                return None;
            }
        }
    };
    let hold = tokio::select! {
        _ = to_client => None,
        h = to_server => h,
    };
    // Dropped COMMIT: the client's side is gone (both halves dropped with the futures); MySQL's
    // side stays open for `hold`, its transaction still open.
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    drop(server_out);
}

/// An app whose MySQL connections go through a [`Proxy`] of its own.
pub async fn app_through_proxy() -> (TestApp, Proxy) {
    let host = crate::helpers::mysql_base()
        .trim_start_matches("mysql://root@")
        .to_string();
    let proxy = Proxy::start(host.clone()).await;
    let through = format!("127.0.0.1:{}", proxy.port);
    let app = crate::helpers::spawn_app_with(|c| {
        c.stores.mysql_url = c.stores.mysql_url.replace(&host, &through)
    })
    .await;
    (app, proxy)
}

/// KILLs every connection to `db` (the service's, through the proxy) for `dur`, every 25 ms.
/// The run's own checking pool has no default database, so it is never among them.
pub async fn kill_connections(direct: &MySqlPool, db: &str, dur: Duration) -> usize {
    let until = Instant::now() + dur;
    let mut killed = 0;
    while Instant::now() < until {
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND ID <> CONNECTION_ID()",
        )
        .bind(db)
        .fetch_all(direct)
        .await
        .unwrap_or_default();
        for id in ids {
            if sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
                .execute(direct)
                .await
                .is_ok()
            {
                killed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    killed
}

/// Holds `LOCK TABLES` (table locks) or `SELECT ... FOR UPDATE` (row locks) on the run's
/// stock and orders tables for `dur`.
pub async fn hold_locks(direct: &MySqlPool, db: &str, table_lock: bool, dur: Duration) {
    let Ok(mut conn) = direct.acquire().await else {
        return;
    };
    if table_lock {
        let sql = format!("LOCK TABLES `{db}`.stock WRITE, `{db}`.orders WRITE");
        if sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .is_ok()
        {
            tokio::time::sleep(dur).await;
        }
        let _ = sqlx::raw_sql("UNLOCK TABLES").execute(&mut *conn).await;
    } else {
        let sql = format!(
            "START TRANSACTION; SELECT COUNT(*) FROM `{db}`.stock FOR UPDATE; \
             SELECT COUNT(*) FROM `{db}`.orders FOR UPDATE"
        );
        if sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .is_ok()
        {
            tokio::time::sleep(dur).await;
        }
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    }
}

/// Holds the run's stock rows locked and KILLs (KILL QUERY) every statement of the service
/// that queues behind them, for `dur`: what a lock-wait timeout (1205) or a deadlock (1213)
/// does to a write-back, its statement fails and its transaction rolls back. Returns how many
/// statements were killed.
pub async fn lock_and_kill_waiters(direct: &MySqlPool, db: &str, dur: Duration) -> usize {
    let until = Instant::now() + dur;
    let mut killed = 0;
    while Instant::now() < until {
        let Ok(mut tx) = direct.begin().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let lock = format!("SELECT sku FROM `{db}`.stock FOR UPDATE");
        if sqlx::query(sqlx::AssertSqlSafe(lock))
            .fetch_all(&mut *tx)
            .await
            .is_err()
        {
            continue;
        }
        let hold_until = (Instant::now() + Duration::from_millis(500)).min(until);
        while Instant::now() < hold_until {
            let waiting: Vec<u64> = sqlx::query_scalar(
                "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND INFO LIKE 'UPDATE stock SET on_hand = on_hand -%'",
            )
            .bind(db)
            .fetch_all(direct)
            .await
            .unwrap_or_default();
            for id in waiting {
                if sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL QUERY {id}")))
                    .execute(direct)
                    .await
                    .is_ok()
                {
                    killed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = tx.rollback().await;
    }
    killed
}

/// A second writer instance that commits to MySQL and dies before its follow-up and its ack,
/// `times` times over `dur`; the service's own writer claims its entries after `claim_idle`.
pub async fn crashing_writer(app: &TestApp, round: usize, times: usize, dur: Duration) -> usize {
    let mut crashed = 0;
    for i in 0..times {
        let w = Writer::named(app.state.clone(), &format!("crashy-{round}-{i}"));
        if w.run_once(&app.state.db, Fault::AfterCommit).await.is_err() {
            crashed += 1;
        }
        tokio::time::sleep(dur / times as u32).await;
    }
    crashed
}

/// Deletes every key of one sku (`<prefix>:{sku:N}:*`: its counters, ledgers, reservations'
/// TTL keys, catalog entry), straight on the server that holds them (`redis_url`, the run's
/// redis-server, or the cluster's master of the sku's slot: not through the service's proxy);
/// the order id counter, the order records and the carts' indexes stay. Returns how many keys
/// went.
pub async fn drop_sku_keys(
    redis_url: &str,
    redis: &flashsale::store::redis::Redis,
    sku: u64,
) -> usize {
    let pattern = format!("{}:{{sku:{sku}}}:*", redis.keys.prefix());
    crate::helpers::delete_keys(redis_url, &pattern).await
}

/// The service binary as a child process (for `ServiceKill`): SIGKILLed and started again.
pub struct ServiceProc {
    child: Mutex<Option<Child>>,
    env: Vec<(String, String)>,
    pub port: u16,
    log: PathBuf,
}

impl ServiceProc {
    pub async fn start(cfg: &flashsale::config::Config) -> ServiceProc {
        let port = crate::helpers::free_port();
        // The tests' environment for the binary, quieter.
        let mut env: Vec<(String, String)> = crate::helpers::Service::env_of(cfg, port)
            .into_iter()
            .map(|(k, v)| {
                if k == "RUST_LOG" {
                    (k, "info".into())
                } else {
                    (k, v)
                }
            })
            .collect();
        if !env.iter().any(|(k, _)| k == "FLASHSALE_READER_LEASE") {
            env.push((
                "FLASHSALE_READER_LEASE".into(),
                format!("{}ms", cfg.outbox.reader_lease.as_millis()),
            ));
        }
        let log = std::env::temp_dir().join(format!("{}-model.log", cfg.stores.redis_prefix));
        let s = ServiceProc {
            child: Mutex::new(None),
            env,
            port,
            log,
        };
        s.spawn().await;
        s
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
        cmd.arg("serve");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLASHSALE_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("the flashsale binary starts");
        *self.child.lock().unwrap() = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(format!("{}/readyz", self.addr()))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not get ready: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, then start again on the same port.
    pub async fn kill_and_restart(&self, down_for: Duration) {
        self.kill();
        tokio::time::sleep(down_for).await;
        self.spawn().await;
    }

    /// SIGKILL (the process is gone when this returns).
    pub fn kill(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the service again after [`ServiceProc::kill`], on the same port.
    pub async fn start_again(&self) {
        self.spawn().await;
    }
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
