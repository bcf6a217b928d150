//! The notes of accounts that token checks read (src/service/tokens.rs): one string per user,
//! `<version> <role>` or `gone`, written by lua/note_account.lua (the highest version wins).

use std::time::Duration;

use redis::AsyncCommands;

use super::Redis;
use crate::domain::Account;
use crate::error::AppResult;

impl Redis {
    /// The note of `user_id`'s account, if one is kept (a malformed one counts as none).
    pub async fn noted_account(&self, user_id: u64) -> AppResult<Option<Account>> {
        let note: Option<String> = self.conn().get(self.keys.account(user_id)).await?;
        Ok(note.as_deref().and_then(Account::decode))
    }

    /// Notes `user_id`'s account for `keep`, unless the note there is newer (a higher version,
    /// or the deletion): a deletion always replaces what was there. `true` when noted.
    pub async fn note_account(
        &self,
        user_id: u64,
        account: Account,
        keep: Duration,
    ) -> AppResult<bool> {
        let key = self.keys.account(user_id);
        let keep_ms = keep.as_millis().clamp(1, i64::MAX as u128).to_string();
        let r = self
            .eval(
                "note_account",
                &self.scripts.note_account,
                &[&key],
                &[&account.encode(), &keep_ms],
            )
            .await?;
        Ok(r.int(0)? == 1)
    }
}
