//! `flashsale mint-tokens`: customer access tokens signed with the service's secret, one a line,
//! for load tests (logging in would measure argon2, not the sale). Tokens are checked against
//! their accounts, so the accounts are created where missing (`load-<id>`, a password nobody
//! knows), in bulk, in the database of FLASHSALE_MYSQL_URL.

use std::ops::Range;
use std::process::ExitCode;

use sqlx::MySqlPool;

use flashsale::auth::{self, Jwt};
use flashsale::config::Config;
use flashsale::service::tokens::note_life;
use flashsale::store::mysql::{self, users};
use flashsale::store::redis::Redis;

pub async fn run(cfg: Config, count: u64, first_user_id: u64) -> anyhow::Result<ExitCode> {
    let secret = cfg
        .auth
        .jwt_secret
        .clone()
        .ok_or_else(|| anyhow::anyhow!("mint-tokens needs FLASHSALE_JWT_SECRET"))?;
    let jwt = Jwt::new(secret.as_bytes(), cfg.auth.token_ttl);
    let db = mysql::connect_and_migrate(&cfg.stores).await?;
    let ids = first_user_id..first_user_id.saturating_add(count);
    let accounts = load_accounts(&db, ids, cfg.auth.argon2_memory_kib).await?;
    let tokens = tokens_of(&jwt, &accounts)?;
    note_signed_in(&cfg, accounts).await;
    let mut out = String::new();
    for t in &tokens {
        out.push_str(t);
        out.push('\n');
    }
    print!("{out}");
    if (tokens.len() as u64) < count {
        eprintln!(
            "mint-tokens: {} of the ids are taken by other accounts: no token for them",
            count - tokens.len() as u64
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Notes the accounts in Redis as a login does (src/http/users.rs), so that the tokens' checks
/// cost what a signed-in customer's do (a Redis GET at most), not a MySQL read each: a load test
/// measures customers who signed in before the sale. Best effort: a check without a note reads
/// MySQL.
async fn note_signed_in(cfg: &Config, accounts: Vec<users::AccountRow>) {
    use futures::StreamExt;
    let noted = async {
        let redis = Redis::connect(&cfg.stores)?;
        let keep = note_life(&cfg.auth);
        let failed = futures::stream::iter(accounts)
            .map(|a| {
                let redis = redis.clone();
                async move { redis.note_account(a.id, a.account(), keep).await.is_err() }
            })
            .buffer_unordered(64)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        anyhow::Ok(failed)
    };
    match noted.await {
        Ok(0) => {}
        Ok(n) => eprintln!(
            "mint-tokens: {n} accounts not noted in Redis (their first check reads MySQL)"
        ),
        Err(e) => eprintln!(
            "mint-tokens: accounts not noted in Redis ({e}); their first check reads MySQL"
        ),
    }
}

/// Tokens of the load-test customers `ids`, their accounts created where missing (ids held by
/// other accounts are skipped), each token with its account's version.
pub async fn load_tokens(
    db: &MySqlPool,
    jwt: &Jwt,
    ids: Range<u64>,
    argon2_memory_kib: u32,
) -> anyhow::Result<Vec<String>> {
    tokens_of(jwt, &load_accounts(db, ids, argon2_memory_kib).await?)
}

/// The load-test customers' accounts `ids`, created where missing (ids held by other accounts
/// are skipped).
async fn load_accounts(
    db: &MySqlPool,
    ids: Range<u64>,
    argon2_memory_kib: u32,
) -> anyhow::Result<Vec<users::AccountRow>> {
    let hash = auth::dummy_hash(argon2_memory_kib).await?;
    Ok(users::ensure_load_accounts(db, ids, &hash).await?)
}

/// A token per account, with the account's version.
fn tokens_of(jwt: &Jwt, accounts: &[users::AccountRow]) -> anyhow::Result<Vec<String>> {
    accounts
        .iter()
        .map(|a| jwt.issue(a.id, a.role(), a.token_version))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))
}
