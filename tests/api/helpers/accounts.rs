//! Accounts made straight in MySQL for `TestApp::customer_token`: tokens are checked against
//! their accounts (src/service/tokens.rs), and the load and concurrency tests need thousands of
//! customers, which signing up through the API (argon2 each) would make slow. One thread per
//! test app, with its own runtime and MySQL connection, makes them on request: the callers
//! (sync, on the test's runtime) wait for its answer without needing that runtime to run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::mpsc as sync_mpsc;

use flashsale::domain::Role;
use flashsale::store::mysql::users;
use sqlx::mysql::MySqlPoolOptions;

/// The argon2id hash (1 MiB, the tests' setting) of `LOAD_PASSWORD`, the password of these
/// accounts: made once, so creating an account costs one INSERT.
const LOAD_HASH: &str = "$argon2id$v=19$m=1024,t=2,p=1$1HQkOYh/wrMH2KDPfRu1+A$W7EptAbAOROChPP140PtMvbhlm9mcAbLmWO9JtKk220";

/// The password of the accounts made here (their usernames are `load-<id>`).
pub const LOAD_PASSWORD: &str = "load-account-password";

type Reply = sync_mpsc::Sender<Result<(Role, u32), String>>;

/// The account maker of one test app: ids made (or found) so far with their role and token
/// version as first seen.
pub struct Accounts {
    jobs: tokio::sync::mpsc::UnboundedSender<(u64, Reply)>,
    known: Mutex<HashMap<u64, (Role, u32)>>,
}

impl Accounts {
    /// Starts the maker's thread on the database at `mysql_url`; it ends with the handle.
    pub fn start(mysql_url: String) -> Self {
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Reply)>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the account maker");
            rt.block_on(async move {
                let pool = MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect_lazy(&mysql_url)
                    .expect("the test database's URL");
                while let Some((id, reply)) = rx.recv().await {
                    let made = async {
                        users::ensure_load_accounts(&pool, id..id + 1, LOAD_HASH).await?;
                        users::find_account(&pool, id).await
                    }
                    .await;
                    let answer = match made {
                        Ok(Some(a)) => Ok((a.role(), a.token_version)),
                        Ok(None) => Err(format!("account {id}: not made")),
                        Err(e) => Err(format!("account {id}: {e}")),
                    };
                    let _ = reply.send(answer);
                }
            });
        });
        Accounts {
            jobs,
            known: Mutex::default(),
        }
    }

    /// The account `id` (made now when missing: a customer `load-<id>`): its role and token
    /// version. Remembered, so each id costs one round trip per test app.
    pub fn ensure(&self, id: u64) -> (Role, u32) {
        if let Some(a) = self.known.lock().unwrap().get(&id) {
            return *a;
        }
        let (tx, rx) = sync_mpsc::channel();
        self.jobs.send((id, tx)).expect("the account maker runs");
        let a = rx
            .recv()
            .expect("the account maker answers")
            .unwrap_or_else(|e| panic!("{e}"));
        self.known.lock().unwrap().insert(id, a);
        a
    }
}
