//! `flashsale mint-tokens`: customer access tokens signed with the service's secret, one a line,
//! for load tests (logging in would measure argon2, not the sale).

use std::process::ExitCode;

use flashsale::auth::Jwt;
use flashsale::config::Config;
use flashsale::domain::Role;

pub fn run(cfg: Config, count: u64, first_user_id: u64) -> anyhow::Result<ExitCode> {
    let secret = cfg
        .auth
        .jwt_secret
        .ok_or_else(|| anyhow::anyhow!("mint-tokens needs FLASHSALE_JWT_SECRET"))?;
    let jwt = Jwt::new(secret.as_bytes(), cfg.auth.token_ttl);
    let mut out = String::new();
    for id in first_user_id..first_user_id + count {
        out.push_str(&jwt.issue(id, Role::Customer)?);
        out.push('\n');
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
