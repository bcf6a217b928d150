//! Accounts and tokens settings.

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// Dev fallback for the admin password. Published (README.md), so production refuses it
/// (src/config/published.rs).
pub const DEV_ADMIN_PASSWORD: &str = "admin-dev-password";

/// Access tokens, the admin account created at start-up, password hashing, production mode.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Production mode: refuses to start without a JWT secret and an admin password, with a weak
    /// one, with any credential this repository publishes (docker-compose.yml, README.md, docs/,
    /// examples), and while the admin account's password is one of those.
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

    /// A second HS256 secret, accepted when verifying tokens but never used to sign: the
    /// previous secret while a new one rolls out (docs/OPERATIONS.md, "Credentials").
    #[arg(
        long,
        env = "FLASHSALE_JWT_SECRET_PREVIOUS",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret_previous: Option<String>,

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

    /// Password of that admin account when start-up creates it; an existing admin's password is
    /// changed with `flashsale admin-password`. Dev mode falls back to `admin-dev-password`.
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
    /// Production's checks of these settings are in src/config/production.rs.
    pub fn validate(&self) -> Result<(), String> {
        if self.jwt_secret_previous.is_some() && self.jwt_secret.is_none() {
            return Err("FLASHSALE_JWT_SECRET_PREVIOUS needs FLASHSALE_JWT_SECRET".into());
        }
        Ok(())
    }
}
