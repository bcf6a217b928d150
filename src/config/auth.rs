//! Accounts and tokens settings.

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// Dev fallback for the admin password; never accepted with `--production`.
pub const DEV_ADMIN_PASSWORD: &str = "admin-dev-password";

/// Access tokens, the admin account created at start-up, password hashing, production mode.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Production mode: refuses to start without a JWT secret and an admin password.
    #[arg(long, env = "FLASHSALE_PRODUCTION", global = true)]
    pub production: bool,

    /// HS256 secret for access tokens (at least 32 bytes). Generated per run in dev mode, with a
    /// warning: tokens then die with the process and are not shared between instances.
    #[arg(
        long,
        env = "FLASHSALE_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// How long an access token is valid.
    #[arg(long, env = "FLASHSALE_TOKEN_TTL", default_value = "1h", value_parser = parse_duration, global = true)]
    pub token_ttl: Duration,

    /// Username of the admin account created at start-up when missing.
    #[arg(
        long,
        env = "FLASHSALE_ADMIN_USERNAME",
        default_value = "admin",
        global = true
    )]
    pub admin_username: String,

    /// Password of that admin account. Dev mode falls back to `admin-dev-password`.
    #[arg(
        long,
        env = "FLASHSALE_ADMIN_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub admin_password: Option<String>,

    /// Argon2id memory cost of password hashes in KiB (the OWASP minimum, 19 MiB, by default).
    #[arg(long, env = "FLASHSALE_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024, global = true)]
    pub argon2_memory_kib: u32,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.production {
            match &self.jwt_secret {
                None => return Err("--production needs FLASHSALE_JWT_SECRET".into()),
                Some(s) if s.len() < 32 => {
                    return Err("FLASHSALE_JWT_SECRET must be at least 32 bytes".into());
                }
                Some(_) => {}
            }
            if self.admin_password.is_none() {
                return Err("--production needs FLASHSALE_ADMIN_PASSWORD".into());
            }
        }
        Ok(())
    }
}
