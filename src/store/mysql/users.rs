//! The `users` table.

use sqlx::MySqlPool;

use super::error::{DbResult, OnDuplicate};
use crate::domain::{Role, Username};

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

/// Replaces the password hash of an admin account; false when `id` is not an admin's.
#[tracing::instrument(skip(pool, password_hash))]
pub async fn set_admin_password_hash(
    pool: &MySqlPool,
    id: u64,
    password_hash: &str,
) -> DbResult<bool> {
    let r = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ? AND role = 'admin'")
        .bind(password_hash)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}
