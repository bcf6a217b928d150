//! `flashsale mint-tokens`: customer access tokens signed with the service's secret, one a line,
//! for load tests (logging in would measure argon2, not the sale). Tokens are checked against
//! their accounts, so the accounts are created where missing (`load-<id>`, a password nobody
//! knows), in bulk, in the database of FLASHSALE_MYSQL_URL.

use std::ops::Range;
use std::process::ExitCode;

use sqlx::MySqlPool;

use flashsale::auth::{self, Jwt};
use flashsale::config::Config;
use flashsale::store::mysql::{self, users};

pub async fn run(cfg: Config, count: u64, first_user_id: u64) -> anyhow::Result<ExitCode> {
    let secret = cfg
        .auth
        .jwt_secret
        .clone()
        .ok_or_else(|| anyhow::anyhow!("mint-tokens needs FLASHSALE_JWT_SECRET"))?;
    let jwt = Jwt::new(secret.as_bytes(), cfg.auth.token_ttl);
    let db = mysql::connect_and_migrate(&cfg.stores).await?;
    let ids = first_user_id..first_user_id.saturating_add(count);
    let tokens = load_tokens(&db, &jwt, ids, cfg.auth.argon2_memory_kib).await?;
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

/// Tokens of the load-test customers `ids`, their accounts created where missing (ids held by
/// other accounts are skipped), each token with its account's version.
pub async fn load_tokens(
    db: &MySqlPool,
    jwt: &Jwt,
    ids: Range<u64>,
    argon2_memory_kib: u32,
) -> anyhow::Result<Vec<String>> {
    let hash = auth::dummy_hash(argon2_memory_kib).await?;
    let accounts = users::ensure_load_accounts(db, ids, &hash).await?;
    accounts
        .iter()
        .map(|a| jwt.issue(a.id, a.role(), a.token_version))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))
}
