//! The admin account (FLASHSALE_ADMIN_USERNAME): created at start-up when missing, checked at
//! start-up when it exists, its password changed by `flashsale admin-password`.
//!
//! FLASHSALE_ADMIN_PASSWORD is the password of an admin that start-up creates; an existing
//! admin keeps the password it has. Start-up never writes it: several instances start at once
//! (a rolling deploy, a crash loop, an old instance restarting with the old setting), and
//! each writing its own setting would leave whichever started last, silently. Instead
//! production refuses to start while the admin's password is a published one, and a password
//! other than the configured one is logged (DESIGN.md, "Credentials").

use anyhow::Context;
use sqlx::MySqlPool;

use crate::auth;
use crate::config::{AuthConfig, DEV_ADMIN_PASSWORD, admin_password_problem, published};
use crate::domain::{Password, Role, Username};
use crate::store::mysql::{self, DbError};

/// Creates the configured admin account when it does not exist; checks the one that does. In
/// production, refuses to start while any other admin account has a published password.
pub async fn ensure(db: &MySqlPool, cfg: &AuthConfig) -> anyhow::Result<()> {
    ensure_configured(db, cfg).await?;
    if cfg.production {
        refuse_other_published_admins(db, cfg).await?;
    }
    Ok(())
}

/// Whether `hash` verifies one of the published passwords (argon2 runs off the async threads,
/// in `auth::verify_password`).
async fn has_published_password(hash: &str, cfg: &AuthConfig) -> anyhow::Result<bool> {
    for candidate in published::PUBLISHED
        .iter()
        .filter(|p| Password::parse(p).is_ok())
    {
        if auth::verify_password(
            candidate.to_string(),
            Some(hash.to_string()),
            cfg.argon2_memory_kib,
        )
        .await
        .context("checking an admin account's password")?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Production: every admin other than FLASHSALE_ADMIN_USERNAME's (a trial's `admin`, a
/// promoted customer) is checked for a published password; any found are named, with how to
/// fix them. Admins are few; each costs one hash verification per published value.
async fn refuse_other_published_admins(db: &MySqlPool, cfg: &AuthConfig) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for admin in mysql::users::admins(db).await? {
        if admin
            .username
            .eq_ignore_ascii_case(cfg.admin_username.trim())
        {
            continue;
        }
        if has_published_password(&admin.password_hash, cfg).await? {
            tracing::error!(user.id = admin.id, username = %admin.username, "an admin account has a published password");
            found.push(format!("{:?} (id {})", admin.username, admin.id));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "production mode (FLASHSALE_PRODUCTION) refuses to start: the admin account(s) {} \
         have a password this repository publishes (the dev default or one of \
         docker-compose.yml, README.md, docs/, the examples or the tests), so anyone can log in \
         as them. They are not FLASHSALE_ADMIN_USERNAME ({:?}): change their password \
         (PUT /v1/users/me/password, logged in as them), or demote them (PUT \
         /v1/users/{{id}}/role) or delete them (DELETE /v1/users/{{id}}) as an admin, e.g. from \
         a dev-mode run on this database; then start again (docs/OPERATIONS.md, \"Credentials\")",
        found.join(", "),
        cfg.admin_username
    );
}

async fn ensure_configured(db: &MySqlPool, cfg: &AuthConfig) -> anyhow::Result<()> {
    let username = Username::parse(&cfg.admin_username)
        .map_err(|e| anyhow::anyhow!("FLASHSALE_ADMIN_USERNAME: {e}"))?;
    if let Some(u) = mysql::users::find_by_username(db, &username).await? {
        if u.role() != Role::Admin {
            tracing::warn!(username = %u.username, "the configured admin exists but is not an admin");
            return Ok(());
        }
        return check_existing(cfg, &u).await;
    }
    let password = match &cfg.admin_password {
        Some(p) => p.clone(),
        None => {
            tracing::warn!(
                username = %username.as_str(),
                "no FLASHSALE_ADMIN_PASSWORD: the admin gets the dev password {DEV_ADMIN_PASSWORD:?}"
            );
            DEV_ADMIN_PASSWORD.to_string()
        }
    };
    let password =
        Password::parse(&password).map_err(|e| anyhow::anyhow!("FLASHSALE_ADMIN_PASSWORD: {e}"))?;
    let hash = auth::hash_password(password, cfg.argon2_memory_kib).await?;
    match mysql::users::insert_user(db, &username, &hash, Role::Admin).await {
        Ok(id) => {
            tracing::info!(user.id = id, username = %username.as_str(), "created the admin account")
        }
        // Another instance created it at the same moment.
        Err(DbError::AlreadyExists(_)) => {}
        Err(e) => return Err(anyhow::anyhow!("creating the admin: {e}")),
    }
    Ok(())
}

/// An existing admin: production refuses a published password; a password other than
/// FLASHSALE_ADMIN_PASSWORD is logged (never either password).
async fn check_existing(cfg: &AuthConfig, admin: &mysql::users::UserRow) -> anyhow::Result<()> {
    let verifies = |password: &str| {
        auth::verify_password(
            password.to_string(),
            Some(admin.password_hash.clone()),
            cfg.argon2_memory_kib,
        )
    };
    if let Some(configured) = &cfg.admin_password {
        // Production has refused a published FLASHSALE_ADMIN_PASSWORD already.
        if verifies(configured)
            .await
            .context("checking the admin account's password")?
        {
            return Ok(());
        }
    }
    if cfg.production && has_published_password(&admin.password_hash, cfg).await? {
        tracing::error!(user.id = admin.id, username = %admin.username, "the admin account has a published password");
        anyhow::bail!(
            "production mode (FLASHSALE_PRODUCTION) refuses to start: the admin account {:?} \
             has a password this repository publishes (the dev default or one of \
             docker-compose.yml, README.md, docs/, the examples or the tests), so anyone can \
             log in as it. Set FLASHSALE_ADMIN_PASSWORD to a new password, run `flashsale \
             admin-password --from-env` once with the same settings, then start again \
             (docs/OPERATIONS.md, \"Credentials\")",
            admin.username
        );
    }
    if cfg.admin_password.is_some() {
        tracing::warn!(
            user.id = admin.id,
            username = %admin.username,
            "the admin account's password is not FLASHSALE_ADMIN_PASSWORD: that setting only \
             sets the password of an admin created at start-up; the existing one keeps its \
             own. `flashsale admin-password` changes it"
        );
    }
    Ok(())
}

/// What [`set_password`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordSet {
    Changed { user_id: u64 },
    Created { user_id: u64 },
}

/// Sets the admin account's password, creating the account when missing. The password must
/// pass production's rule (not published, long and varied enough) in any mode.
pub async fn set_password(
    db: &MySqlPool,
    cfg: &AuthConfig,
    password: &str,
) -> anyhow::Result<PasswordSet> {
    let username = Username::parse(&cfg.admin_username)
        .map_err(|e| anyhow::anyhow!("FLASHSALE_ADMIN_USERNAME: {e}"))?;
    if let Some(problem) = admin_password_problem("the new password", password) {
        anyhow::bail!("{problem}");
    }
    let parsed = Password::parse(password).map_err(|e| anyhow::anyhow!("the new password: {e}"))?;
    let hash = auth::hash_password(parsed, cfg.argon2_memory_kib).await?;
    match mysql::users::find_by_username(db, &username).await? {
        Some(u) if u.role() != Role::Admin => anyhow::bail!(
            "the account {:?} exists and is not an admin: its password is not changed here \
             (FLASHSALE_ADMIN_USERNAME names the admin account)",
            u.username
        ),
        Some(u) => {
            if !mysql::users::set_admin_password_hash(db, u.id, &hash).await? {
                anyhow::bail!(
                    "the admin account {:?} changed meanwhile; run again",
                    u.username
                );
            }
            tracing::info!(user.id = u.id, username = %u.username, "changed the admin account's password");
            Ok(PasswordSet::Changed { user_id: u.id })
        }
        None => match mysql::users::insert_user(db, &username, &hash, Role::Admin).await {
            Ok(id) => {
                tracing::info!(user.id = id, username = %username.as_str(), "created the admin account");
                Ok(PasswordSet::Created { user_id: id })
            }
            Err(DbError::AlreadyExists(_)) => {
                anyhow::bail!("the admin account was created meanwhile; run again")
            }
            Err(e) => Err(anyhow::anyhow!("creating the admin: {e}")),
        },
    }
}
