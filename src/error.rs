//! One error type for the whole API, with the stable codes of API.md. The layers below answer
//! with their own errors (`domain::DomainError`, `store::mysql::DbError`, sqlx's, redis's); the
//! `From`s here turn them into this one, so callers use `?`. Its HTTP side (status, envelope,
//! `Retry-After`) is in src/http/error.rs.

use crate::domain::DomainError;
use crate::store::mysql::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    OutOfStock(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    SaleNotActive(String),
    #[error("{0}")]
    OrderNotPayable(String),
    #[error("{0}")]
    OrderNotCancellable(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    CartEmpty(String),
    #[error("{0}")]
    RequestInProgress(String),
    #[error("{0}")]
    CartFull(String),
    /// The cart changed under a checkout: another checkout of it runs or took its lines.
    #[error("{0}")]
    CartChanged(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    /// A change whose outcome was not heard: a script whose reply was lost or late (it may
    /// have run), a commit whose answer was lost, while the service resolves what happened.
    /// Answered 503 `outcome_unknown`, without "nothing was changed" and without
    /// `Retry-After`: repeating it blindly could make it twice; the next read (the cart, the
    /// order, the stock) or the request's retry with its `Idempotency-Key` shows what happened.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A checkout that reserved part of its lines and then met a refusal: the lines were given
    /// back, the `failed` order stays listed, and its id is told.
    #[error("{message}")]
    CheckoutFailed {
        code: &'static str,
        message: String,
        order_id: u64,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    /// The stable, snake_case code clients switch on.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::InvalidJson(_) => "invalid_json",
            AppError::InvalidRequest(_) => "invalid_request",
            AppError::Unauthenticated(_) => "unauthenticated",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::MethodNotAllowed(_) => "method_not_allowed",
            AppError::OutOfStock(_) => "out_of_stock",
            AppError::LimitExceeded(_) => "limit_exceeded",
            AppError::SaleNotActive(_) => "sale_not_active",
            AppError::OrderNotPayable(_) => "order_not_payable",
            AppError::OrderNotCancellable(_) => "order_not_cancellable",
            AppError::AlreadyExists(_) => "already_exists",
            AppError::CartEmpty(_) => "cart_empty",
            AppError::RequestInProgress(_) => "request_in_progress",
            AppError::CartFull(_) => "cart_full",
            AppError::CartChanged(_) => "cart_changed",
            AppError::RequestTimeout(_) => "request_timeout",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::RateLimited { .. } => "rate_limited",
            AppError::Unavailable(_) => "unavailable",
            AppError::OutcomeUnknown(_) => "outcome_unknown",
            AppError::CheckoutFailed { code, .. } => code,
            AppError::Internal(_) => "internal",
        }
    }

    pub fn internal(msg: impl std::fmt::Display) -> Self {
        AppError::Internal(anyhow::anyhow!("{msg}"))
    }
}

/// MySQL server errors that mean "not now" rather than "never", with the label the write-back
/// counts them under: the statement's transaction was rolled back, so the request changed
/// nothing in MySQL and can be retried (503).
pub fn mysql_transient(number: u16) -> Option<&'static str> {
    match number {
        1213 => Some("deadlock"),
        1205 => Some("lock_wait_timeout"),
        1290 | 1836 => Some("read_only"),
        1053 => Some("server_shutdown"),
        // Query execution was interrupted (KILL QUERY), connection killed.
        1317 | 1927 => Some("mysql"),
        _ => None,
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && let Some(label) = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .and_then(|m| mysql_transient(m.number()))
        {
            return AppError::Unavailable(format!("mysql {label}: {db}"));
        }
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                AppError::Unavailable(format!("mysql: {e}"))
            }
            sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
                AppError::Unavailable(format!("mysql: {e}"))
            }
            other => AppError::Internal(other.into()),
        }
    }
}

/// A value the domain refuses, as the client sent it.
impl From<DomainError> for AppError {
    fn from(e: DomainError) -> Self {
        AppError::InvalidRequest(e.to_string())
    }
}

impl From<DbError> for AppError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::AlreadyExists(m) => AppError::AlreadyExists(m),
            DbError::Inconsistent(m) => AppError::internal(m),
            DbError::Sqlx(e) => AppError::from(e),
        }
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        // A full Redis (OOM under noeviction), one loading its data, a read-only replica or a
        // cluster between masters cannot take the write now: a 503, retried later.
        // ... and a cluster in the middle of a failover or a reshard: a slot that moved (MOVED,
        // ASK still answered after the client's own attempts) or a node not reachable.
        let busy = matches!(
            e.code(),
            Some(
                "OOM"
                    | "LOADING"
                    | "READONLY"
                    | "BUSY"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "MASTERDOWN"
                    | "MOVED"
                    | "ASK"
            )
        ) || e.kind() == redis::ErrorKind::ClusterConnectionNotFound;
        if busy
            || e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            AppError::Unavailable(format!("redis: {e}"))
        } else {
            AppError::Internal(e.into())
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(AppError::OutOfStock("x".into()).code(), "out_of_stock");
        let f = AppError::CheckoutFailed {
            code: "out_of_stock",
            message: "m".into(),
            order_id: 7,
        };
        assert_eq!(f.code(), "out_of_stock");
    }

    #[test]
    fn lower_layers_keep_their_codes_and_messages() {
        let e = AppError::from(crate::domain::Sku::parse(0).unwrap_err());
        assert_eq!(e.code(), "invalid_request");
        assert_eq!(e.to_string(), "sku must be 1..=4294967295, got 0");
        let e = AppError::from(DbError::AlreadyExists("sku 7 exists".into()));
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("already_exists", "sku 7 exists")
        );
        let e = AppError::from(DbError::Sqlx(sqlx::Error::PoolTimedOut));
        assert_eq!(e.code(), "unavailable");
        assert_eq!(
            AppError::from(DbError::Inconsistent("x".into())).code(),
            "internal"
        );
    }
}
