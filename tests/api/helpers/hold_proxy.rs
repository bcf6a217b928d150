//! A TCP proxy in front of Redis that can make a reply come late, or a request arrive late: armed
//! with a byte pattern (a script's SHA, say), it holds one direction of every connection for a
//! while from the moment a client sends the pattern. `Replies`: the call runs at once and its
//! reply (and every reply after it) waits: "the script ran, its answer was late". `Requests`:
//! the call (and everything sent after it) reaches Redis late: "Redis froze". Either way the
//! bytes arrive in order, as TCP would deliver them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Which direction a sprung trap holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Client to Redis: requests arrive late.
    Requests,
    /// Redis to client: replies arrive late.
    Replies,
}

struct Trap {
    pattern: Vec<u8>,
    held: Held,
    hold: Duration,
}

#[derive(Default)]
struct Shared {
    /// The armed traps, sprung one after another (each by the next client bytes that hold its
    /// pattern).
    traps: Mutex<std::collections::VecDeque<Trap>>,
    /// Until when each direction is held (requests, replies).
    until: Mutex<[Option<Instant>; 2]>,
    sprung: AtomicBool,
}

impl Shared {
    fn slot(held: Held) -> usize {
        match held {
            Held::Requests => 0,
            Held::Replies => 1,
        }
    }

    /// Springs the trap if `bytes` (with the tail of the stream before them) holds its pattern.
    fn spring_on(&self, bytes: &[u8]) {
        let mut traps = self.traps.lock().unwrap();
        let hit = traps.front().is_some_and(|t| {
            t.pattern.len() <= bytes.len() && bytes.windows(t.pattern.len()).any(|w| w == t.pattern)
        });
        if hit {
            let t = traps.pop_front().unwrap();
            self.until.lock().unwrap()[Self::slot(t.held)] = Some(Instant::now() + t.hold);
            self.sprung.store(true, Ordering::SeqCst);
        }
    }

    async fn wait(&self, held: Held) {
        let until = self.until.lock().unwrap()[Self::slot(held)];
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }
}

pub struct HoldProxy {
    pub port: u16,
    shared: Arc<Shared>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl HoldProxy {
    /// A proxy to `target` (host:port).
    pub async fn start(target: String) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (shared2, conns2) = (shared.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (target, shared) = (target.clone(), shared2.clone());
                let h = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        forward(inbound, outbound, shared).await;
                    }
                });
                let mut c = conns2.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(h.abort_handle());
            }
        })
        .abort_handle();
        HoldProxy {
            port,
            shared,
            conns,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The next time a client sends `pattern` (after the traps armed before this one were
    /// sprung), holds `held` for `hold`.
    pub fn arm(&self, pattern: &[u8], held: Held, hold: Duration) {
        self.shared.traps.lock().unwrap().push_back(Trap {
            pattern: pattern.to_vec(),
            held,
            hold,
        });
        self.shared.sprung.store(false, Ordering::SeqCst);
    }

    /// Whether every armed trap was sprung.
    pub fn sprung(&self) -> bool {
        self.shared.sprung.load(Ordering::SeqCst) && self.shared.traps.lock().unwrap().is_empty()
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

async fn forward(inbound: TcpStream, outbound: TcpStream, shared: Arc<Shared>) {
    let (mut client_in, mut client_out) = inbound.into_split();
    let (mut server_in, mut server_out) = outbound.into_split();
    let replies = {
        let shared = shared.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match server_in.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                shared.wait(Held::Replies).await;
                if client_out.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let requests = async move {
        let mut buf = vec![0u8; 16 * 1024];
        // The stream's last bytes before this read: a pattern split across two reads is found.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match client_in.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            tail.extend_from_slice(&buf[..n]);
            shared.spring_on(&tail);
            let keep = tail.len().min(64);
            tail.drain(..tail.len() - keep);
            shared.wait(Held::Requests).await;
            if server_out.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = replies => {}
        _ = requests => {}
    }
}

/// An app whose Redis connections go through a [`HoldProxy`] of its own (to the shared Redis),
/// with the Redis timeout given.
pub async fn app_behind_proxy(timeout: Duration) -> (crate::helpers::TestApp, HoldProxy) {
    let proxy = HoldProxy::start("127.0.0.1:6379".into()).await;
    let url = proxy.url();
    let app = crate::helpers::spawn_app_with(|c| {
        c.stores.redis_url = url;
        c.stores.redis_timeout = timeout;
    })
    .await;
    (app, proxy)
}

/// The SHA a script is called by (what a trap waits for).
pub fn script_sha(
    script: impl Fn(&flashsale::store::redis::scripts::Scripts) -> &redis::Script,
) -> Vec<u8> {
    script(&flashsale::store::redis::scripts::Scripts::new())
        .get_hash()
        .as_bytes()
        .to_vec()
}

/// What Redis holds for the customer on `sku`: (cart hold units, order lines of theirs), read
/// on a connection of the test's own (the service's may go through a proxy).
pub async fn held_in_redis(
    app: &crate::helpers::TestApp,
    user: u64,
    sku: u64,
) -> (Option<u32>, Vec<String>) {
    use flashsale::store::redis::Rid;
    let k = app
        .state
        .redis
        .keys
        .sku(flashsale::domain::Sku::parse(sku).unwrap());
    let mut direct = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let hold: Option<u32> =
        redis::AsyncCommands::get(&mut direct, k.ttl(&Rid::Hold { user_id: user }))
            .await
            .unwrap();
    let res: std::collections::HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut direct, k.res())
            .await
            .unwrap();
    let lines = res
        .into_iter()
        .filter(|(rid, v)| rid.starts_with("o:") && v.starts_with(&format!("{user}|")))
        .map(|(rid, _)| rid)
        .collect();
    (hold, lines)
}
