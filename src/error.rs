//! One error type for the whole API, with the stable codes of API.md.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<u64>,
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
            AppError::CheckoutFailed { code, .. } => code,
            AppError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::InvalidJson(_) | AppError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::OutOfStock(_)
            | AppError::LimitExceeded(_)
            | AppError::SaleNotActive(_)
            | AppError::OrderNotPayable(_)
            | AppError::OrderNotCancellable(_)
            | AppError::AlreadyExists(_)
            | AppError::CartEmpty(_)
            | AppError::RequestInProgress(_)
            | AppError::CartFull(_)
            | AppError::CartChanged(_)
            | AppError::CheckoutFailed { .. } => StatusCode::CONFLICT,
            AppError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn internal(msg: impl std::fmt::Display) -> Self {
        AppError::Internal(anyhow::anyhow!("{msg}"))
    }
}

impl AppError {
    /// The envelope's JSON, as sent to the client (also stored for idempotent replays).
    pub fn to_body(&self) -> serde_json::Value {
        let message = match self {
            AppError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error".to_string()
            }
            AppError::Unavailable(m) => {
                tracing::warn!(reason = %m, "dependency unavailable");
                format!("{m}; nothing was changed, retry shortly")
            }
            other => other.to_string(),
        };
        let order_id = match self {
            AppError::CheckoutFailed { order_id, .. } => Some(*order_id),
            _ => None,
        };
        serde_json::to_value(Envelope {
            error: Body {
                code: self.code(),
                message,
                order_id,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.to_body())).into_response();
        match &self {
            AppError::RateLimited {
                retry_after_secs, ..
            } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            AppError::Unavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
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

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        // A full Redis (OOM under noeviction), one loading its data, a read-only replica or a
        // cluster between masters cannot take the write now: a 503, retried later.
        let busy = matches!(
            e.code(),
            Some(
                "OOM" | "LOADING" | "READONLY" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN"
            )
        );
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

/// Maps a MySQL unique-key violation (1062) to a domain error at the call site.
pub trait OnConflict<T> {
    fn on_duplicate(self, err: impl FnOnce() -> AppError) -> AppResult<T>;
}

impl<T> OnConflict<T> for Result<T, sqlx::Error> {
    fn on_duplicate(self, err: impl FnOnce() -> AppError) -> AppResult<T> {
        match self {
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(err()),
            other => other.map_err(AppError::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let e = AppError::OutOfStock("x".into());
        assert_eq!(e.code(), "out_of_stock");
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(
            AppError::Unavailable("x".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let f = AppError::CheckoutFailed {
            code: "out_of_stock",
            message: "m".into(),
            order_id: 7,
        };
        assert_eq!(f.code(), "out_of_stock");
    }
}
