//! What the MySQL store answers with when a query does not give its rows: MySQL's own error, or
//! one of the refusals the store recognises in it. The HTTP layer's `AppError` is built from it
//! (`From<DbError>` in src/error.rs).

/// A failed store call.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A row would break a unique key (MySQL 1062): the message says what is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// Rows that break a rule the writes keep (a paid line with less on hand than sold, ...).
    #[error("{0}")]
    Inconsistent(String),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

pub type DbResult<T> = Result<T, DbError>;

/// Maps a MySQL unique-key violation (1062) to a refusal at the call site (RW `on_constraint`).
pub trait OnDuplicate<T> {
    fn on_duplicate(self, taken: impl FnOnce() -> String) -> DbResult<T>;
}

impl<T> OnDuplicate<T> for Result<T, sqlx::Error> {
    fn on_duplicate(self, taken: impl FnOnce() -> String) -> DbResult<T> {
        match self {
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(DbError::AlreadyExists(taken()))
            }
            other => other.map_err(DbError::from),
        }
    }
}
