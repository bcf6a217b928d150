//! What a valid token is checked against on every authenticated request: its account must exist
//! and still have the token version the token carries (deleting the account, changing its role
//! or its password raises it: src/service/accounts.rs), and the caller gets the account's
//! current role, not the token's.
//!
//! Where the account is read, nearest first:
//! - this process's cache ([`TokenChecks`]): an answer is trusted for [`CHECK_TTL`] (1 s), so a
//!   customer's requests in a sale cost no round trip while it is warm;
//! - the note in Redis (`<prefix>:{user:<id>}:account`, kept [`note_ttl`]), shared by the
//!   instances, written after every change and after every read of MySQL (the highest version
//!   wins: lua/note_account.lua);
//! - MySQL, the truth, when Redis has no note, cannot be asked, is behind MySQL (it came back
//!   from older persistence), or notes a lower version than the token carries.
//!
//! A token whose account cannot be read (Redis and MySQL both unreachable, or MySQL when Redis
//! has no note) is answered 503, never let through.

use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::auth::Verified;
use crate::config::AuthConfig;
use crate::domain::{Account, Role};
use crate::error::{AppError, AppResult};
use crate::store::mysql::users;

/// How long this process trusts what it read of an account: the longest another instance
/// accepts a token after the change that ended it.
pub use super::token_cache::{CHECKS_MAX, TokenChecks};

pub const CHECK_TTL: Duration = Duration::from_secs(1);

/// How long Redis keeps the note of an account: the life of a token (`token_ttl`) and a minute,
/// so that a customer who signed in (a login notes the account) or was checked once is checked
/// from Redis for as long as the token lives, MySQL down or not: the sale goes on through a
/// MySQL outage. An account change that Redis does not take is retried for as long
/// (`accounts::note`).
pub fn note_ttl(state: &AppState) -> Duration {
    note_life(&state.cfg.auth)
}

/// [`note_ttl`] from the settings alone (the admin commands, which have no app state).
pub fn note_life(auth: &AuthConfig) -> Duration {
    auth.token_ttl + Duration::from_secs(60)
}

/// The caller a valid token names, checked against its account: the role is the account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: u64,
    pub role: Role,
}

/// The caller of a valid token, if its account exists and has the token's version: 401
/// `unauthenticated` otherwise, 503 `unavailable` when the account cannot be read.
pub async fn check(state: &AppState, token: Verified) -> AppResult<Caller> {
    let user_id = token.user_id;
    let account = match state.tokens.get(user_id) {
        // A token newer than what this instance read: the account changed since (a new
        // password, say) and the token came from that change. Read it again.
        Some(Account::Live { version, .. }) if version < token.version => {
            read(state, user_id, token.version).await?
        }
        Some(account) => account,
        None => read(state, user_id, token.version).await?,
    };
    match account {
        Account::Gone => Err(AppError::Unauthenticated(
            "the token's account does not exist".into(),
        )),
        Account::Live { version, role } if version == token.version => Ok(Caller { user_id, role }),
        Account::Live { .. } => {
            metrics::counter!("flashsale_tokens_refused_total", "reason" => "revoked").increment(1);
            Err(AppError::Unauthenticated(
                "the token was revoked: its account's password or role changed since it was \
                 issued; sign in again"
                    .into(),
            ))
        }
    }
}

/// Reads the account from Redis's note, or from MySQL when the note cannot settle it (none,
/// Redis unreachable or behind, or a version below `wanted`, the token's), then notes what
/// MySQL said in Redis for the other instances.
async fn read(state: &AppState, user_id: u64, wanted: u32) -> AppResult<Account> {
    let read_at = Instant::now();
    let noted = if state.redis.is_behind() {
        // An older copy of Redis may hold older notes: only MySQL is believed.
        None
    } else {
        match state.redis.noted_account(user_id).await {
            Ok(noted) => noted,
            Err(e) => {
                metrics::counter!("flashsale_token_note_errors_total", "op" => "read").increment(1);
                tracing::debug!(error = %e, user.id = user_id, "account note unreadable; asking MySQL");
                None
            }
        }
    };
    let account = match noted {
        Some(a @ Account::Gone) => a,
        Some(a @ Account::Live { version, .. }) if version >= wanted => a,
        _ => {
            let account = match users::find_account(&state.db, user_id).await {
                Ok(row) => row.map(|r| r.account()).unwrap_or(Account::Gone),
                // Logged once, where the answer is made (src/http/error.rs).
                Err(e) => {
                    return Err(match AppError::from(e) {
                        e @ AppError::Internal(_) => e,
                        e => AppError::Unavailable(format!(
                            "the token's account cannot be checked right now ({e})"
                        )),
                    });
                }
            };
            // A missing account is not noted: only a deletion is (accounts::delete_user).
            if let Account::Live { .. } = account
                && let Err(e) = state
                    .redis
                    .note_account(user_id, account, note_ttl(state))
                    .await
            {
                metrics::counter!("flashsale_token_note_errors_total", "op" => "write")
                    .increment(1);
                tracing::debug!(error = %e, user.id = user_id, "could not note an account");
            }
            account
        }
    };
    state.tokens.put(user_id, account, read_at);
    Ok(account)
}
