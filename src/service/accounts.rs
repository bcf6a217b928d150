//! Changes to accounts that end their tokens: deleting one, changing its role, changing its
//! password. Each is made in MySQL first (raising `users.token_version`, or removing the row),
//! then this instance's token checks learn it at once and the note in Redis is replaced, so the
//! other instances refuse the old tokens once their own read of the account is older than
//! `tokens::CHECK_TTL` (src/service/tokens.rs).

use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::auth;
use crate::domain::{Account, Password, Role};
use crate::error::{AppError, AppResult};
use crate::service::tokens::{Caller, note_ttl};
use crate::store::mysql::users::{self, AccountRow, RoleChange, UserRow};

/// An admin may not delete their own account nor change their own role: an admin who did
/// could leave the deployment without one. Another admin can.
fn not_yourself(admin: Caller, user_id: u64, what: &str) -> AppResult<()> {
    if admin.user_id == user_id {
        return Err(AppError::Forbidden(format!(
            "an admin cannot {what} their own account; another admin can"
        )));
    }
    Ok(())
}

/// Deletes the account `user_id`: its tokens are refused from then on (its orders stay; its
/// cart holds and unpaid orders lapse at their deadlines). 404 when there is none.
pub async fn delete_user(state: &AppState, admin: Caller, user_id: u64) -> AppResult<()> {
    not_yourself(admin, user_id, "delete")?;
    if !users::delete_user(&state.db, user_id).await? {
        return Err(AppError::NotFound(format!("no user {user_id}")));
    }
    tracing::info!(user.id = user_id, admin.id = admin.user_id, "user deleted");
    note(state, user_id, Account::Gone).await;
    Ok(())
}

/// Gives the account `user_id` the role `role`; a change ends its tokens (the user signs in
/// again to get the new role). The same role changes nothing.
pub async fn change_role(
    state: &AppState,
    admin: Caller,
    user_id: u64,
    role: Role,
) -> AppResult<AccountRow> {
    not_yourself(admin, user_id, "change the role of")?;
    match users::set_role(&state.db, user_id, role).await? {
        RoleChange::NoSuchUser => Err(AppError::NotFound(format!("no user {user_id}"))),
        RoleChange::Unchanged(row) => Ok(row),
        RoleChange::Changed(row) => {
            tracing::info!(
                user.id = user_id,
                admin.id = admin.user_id,
                role = role.as_str(),
                "user role changed"
            );
            note(state, user_id, row.account()).await;
            Ok(row)
        }
    }
}

/// Why a password change was refused before anything changed.
#[derive(Debug)]
pub enum PasswordRefusal {
    /// The current password given is not the account's.
    WrongPassword,
}

/// Replaces the password of the account `row` (as read for the caller), if `current` is its
/// password now: every token of the account ends, and a new one is returned. Nothing changes
/// when `current` is wrong, or when the password changed meanwhile.
pub async fn change_password(
    state: &AppState,
    row: UserRow,
    current: String,
    new: Password,
) -> AppResult<Result<String, PasswordRefusal>> {
    let memory = state.cfg.auth.argon2_memory_kib;
    if !auth::verify_password(current, Some(row.password_hash.clone()), memory).await? {
        return Ok(Err(PasswordRefusal::WrongPassword));
    }
    let hash = auth::hash_password(new, memory).await?;
    // Changed meanwhile (another change of it won): the password checked is not the one there.
    let Some(now) = users::set_password(&state.db, row.id, &row.password_hash, &hash).await? else {
        return Ok(Err(PasswordRefusal::WrongPassword));
    };
    tracing::info!(user.id = row.id, "password changed");
    note(state, row.id, now.account()).await;
    Ok(Ok(state.jwt.issue(
        now.id,
        now.role(),
        now.token_version,
    )?))
}

/// After a change committed in MySQL: this instance's checks know it at once, and the note in
/// Redis is replaced. When Redis cannot take it now, it is tried again in the background
/// for as long as an older note could be kept ([`note_ttl`]); meanwhile instances that read
/// the old note accept the old tokens (docs/DESIGN.md, "Tokens").
pub async fn note(state: &AppState, user_id: u64, account: Account) {
    state.tokens.changed(user_id, account);
    let keep = note_ttl(state);
    let Err(e) = state.redis.note_account(user_id, account, keep).await else {
        return;
    };
    metrics::counter!("flashsale_token_note_errors_total", "op" => "change").increment(1);
    tracing::warn!(
        error = %e,
        user.id = user_id,
        "could not note an account change in Redis; retrying in the background"
    );
    let redis = state.redis.clone();
    tokio::spawn(async move {
        let until = Instant::now() + keep;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if redis.note_account(user_id, account, keep).await.is_ok() {
                tracing::info!(user.id = user_id, "account change noted in Redis");
                return;
            }
        }
        tracing::warn!(
            user.id = user_id,
            "gave up noting an account change in Redis"
        );
    });
}
