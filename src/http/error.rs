//! `AppError` as HTTP: its status, the error envelope of API.md and `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::AppError;

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
    /// The status it is answered with: one exhaustive `match`, so a new error needs one.
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
            AppError::Unavailable(_) | AppError::OutcomeUnknown(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

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
            AppError::OutcomeUnknown(m) => {
                tracing::warn!(reason = %m, "a change's outcome is not known yet");
                m.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            AppError::OutOfStock("x".into()).status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            AppError::Unavailable("x".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
