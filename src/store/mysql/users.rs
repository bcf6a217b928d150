//! The `users` table.

use sqlx::MySqlPool;

use super::error::{DbResult, OnDuplicate};
use crate::domain::{Account, Role, Username};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: u64,
    pub username: String,
    pub password_hash: String,
    pub role: String,
}

impl UserRow {
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Customer)
    }
}

#[tracing::instrument(skip(pool, password_hash))]
pub async fn insert_user(
    pool: &MySqlPool,
    username: &Username,
    password_hash: &str,
    role: Role,
) -> DbResult<u64> {
    let r = sqlx::query("INSERT INTO users (username, password_hash, role) VALUES (?, ?, ?)")
        .bind(username.as_str())
        .bind(password_hash)
        .bind(role.as_str())
        .execute(pool)
        .await
        .on_duplicate(|| "this username is taken; choose another".to_string())?;
    Ok(r.last_insert_id())
}

#[tracing::instrument(skip(pool))]
pub async fn find_by_username(pool: &MySqlPool, username: &Username) -> DbResult<Option<UserRow>> {
    Ok(sqlx::query_as::<_, UserRow>(
        "SELECT id, username, password_hash, role FROM users WHERE username = ?",
    )
    .bind(username.as_str())
    .fetch_optional(pool)
    .await?)
}

#[tracing::instrument(skip(pool))]
pub async fn find_by_id(pool: &MySqlPool, id: u64) -> DbResult<Option<UserRow>> {
    Ok(sqlx::query_as::<_, UserRow>(
        "SELECT id, username, password_hash, role FROM users WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Every account with the admin role (few: start-up checks each one's password).
#[tracing::instrument(skip(pool))]
pub async fn admins(pool: &MySqlPool) -> DbResult<Vec<UserRow>> {
    Ok(sqlx::query_as::<_, UserRow>(
        "SELECT id, username, password_hash, role FROM users WHERE role = ? ORDER BY id",
    )
    .bind(Role::Admin.as_str())
    .fetch_all(pool)
    .await?)
}

/// What a user's tokens are checked against: the account's token version and role.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub id: u64,
    pub username: String,
    pub role: String,
    pub token_version: u32,
}

impl AccountRow {
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Customer)
    }

    pub fn account(&self) -> Account {
        Account::Live {
            version: self.token_version,
            role: self.role(),
        }
    }
}

/// The account of `id`, for a token check.
#[tracing::instrument(skip(pool))]
pub async fn find_account(pool: &MySqlPool, id: u64) -> DbResult<Option<AccountRow>> {
    Ok(sqlx::query_as::<_, AccountRow>(
        "SELECT id, username, role, token_version FROM users WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// The account of `id` if its password hash is still `password_hash`: what a login that checked
/// that hash issues its token from (a password changed meanwhile leaves nothing to issue).
#[tracing::instrument(skip(pool, password_hash))]
pub async fn find_account_with_hash(
    pool: &MySqlPool,
    id: u64,
    password_hash: &str,
) -> DbResult<Option<AccountRow>> {
    Ok(sqlx::query_as::<_, AccountRow>(
        "SELECT id, username, role, token_version FROM users WHERE id = ? AND password_hash = ?",
    )
    .bind(id)
    .bind(password_hash)
    .fetch_optional(pool)
    .await?)
}

/// Deletes the account; `false` when there was none.
#[tracing::instrument(skip(pool))]
pub async fn delete_user(pool: &MySqlPool, id: u64) -> DbResult<bool> {
    let r = sqlx::query("DELETE FROM users WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// How a role change went.
#[derive(Debug, Clone)]
pub enum RoleChange {
    /// The role changed and the token version went up: the account as it is now.
    Changed(AccountRow),
    /// The account had that role already; nothing changed.
    Unchanged(AccountRow),
    NoSuchUser,
}

/// Gives the account `role`, raising its token version when that changes the role.
#[tracing::instrument(skip(pool))]
pub async fn set_role(pool: &MySqlPool, id: u64, role: Role) -> DbResult<RoleChange> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE users SET role = ?, token_version = token_version + 1 WHERE id = ? AND role <> ?",
    )
    .bind(role.as_str())
    .bind(id)
    .bind(role.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let row = sqlx::query_as::<_, AccountRow>(
        "SELECT id, username, role, token_version FROM users WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match row {
        None => RoleChange::NoSuchUser,
        Some(row) if changed => RoleChange::Changed(row),
        Some(row) => RoleChange::Unchanged(row),
    })
}

/// Replaces the account's password hash `old_hash` with `new_hash` and raises its token
/// version; `None` when the account is gone or its hash is no longer `old_hash` (changed
/// meanwhile), and then nothing changed.
#[tracing::instrument(skip(pool, old_hash, new_hash))]
pub async fn set_password(
    pool: &MySqlPool,
    id: u64,
    old_hash: &str,
    new_hash: &str,
) -> DbResult<Option<AccountRow>> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE users SET password_hash = ?, token_version = token_version + 1 \
         WHERE id = ? AND password_hash = ?",
    )
    .bind(new_hash)
    .bind(id)
    .bind(old_hash)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !changed {
        return Ok(None);
    }
    let row = sqlx::query_as::<_, AccountRow>(
        "SELECT id, username, role, token_version FROM users WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// The username of a load-test account (`flashsale mint-tokens`, `flashsale simulate`, the API
/// tests' `customer_token`).
pub fn load_username(id: u64) -> String {
    format!("load-{id}")
}

/// Creates the customer accounts `ids` where missing (username [`load_username`], password hash
/// `password_hash`), in batches, and returns the accounts of `ids` that are load accounts
/// (an id taken by another account is left out), by id.
#[tracing::instrument(skip(pool, password_hash))]
pub async fn ensure_load_accounts(
    pool: &MySqlPool,
    ids: std::ops::Range<u64>,
    password_hash: &str,
) -> DbResult<Vec<AccountRow>> {
    const BATCH: u64 = 1_000;
    let mut out = Vec::with_capacity(ids.end.saturating_sub(ids.start) as usize);
    let mut from = ids.start;
    while from < ids.end {
        let to = ids.end.min(from.saturating_add(BATCH));
        let mut insert = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "INSERT IGNORE INTO users (id, username, password_hash, role) ",
        );
        insert.push_values(from..to, |mut b, id| {
            b.push_bind(id)
                .push_bind(load_username(id))
                .push_bind(password_hash)
                .push_bind(Role::Customer.as_str());
        });
        insert.build().execute(pool).await?;
        let rows = sqlx::query_as::<_, AccountRow>(
            "SELECT id, username, role, token_version FROM users \
             WHERE id >= ? AND id < ? ORDER BY id",
        )
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
        out.extend(
            rows.into_iter()
                .filter(|r| r.username == load_username(r.id)),
        );
        from = to;
    }
    Ok(out)
}

/// Replaces the password hash of an admin account and raises its token version (its tokens
/// end); false when `id` is not an admin's.
#[tracing::instrument(skip(pool, password_hash))]
pub async fn set_admin_password_hash(
    pool: &MySqlPool,
    id: u64,
    password_hash: &str,
) -> DbResult<bool> {
    let r = sqlx::query(
        "UPDATE users SET password_hash = ?, token_version = token_version + 1 \
         WHERE id = ? AND role = 'admin'",
    )
    .bind(password_hash)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}
