//! Extractors whose failures answer with the error envelope, and the caller's identity.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::app::AppState;
use crate::domain::Role;
use crate::error::AppError;
use crate::service::tokens;

/// A JSON object body, with malformed bodies answered as `invalid_json` / `invalid_request` /
/// 413 `payload_too_large` in the error envelope.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AppError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let mime = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(AppError::InvalidJson(
                "expected a body with Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge("request body too large".into())
                } else {
                    AppError::InvalidRequest(r.body_text())
                }
            })?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        // serde reads a struct from an array too; the API speaks objects only.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(AppError::InvalidRequest(
                "the body must be a JSON object".into(),
            ));
        }
        Ok(Json(value))
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => AppError::InvalidRequest(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => AppError::InvalidJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                AppError::InvalidJson("expected a body with Content-Type: application/json".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                AppError::PayloadTooLarge("request body too large".into())
            }
            other => AppError::InvalidJson(other.body_text()),
        }
    }
}

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        AppError::InvalidRequest(r.body_text())
    }
}

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::InvalidRequest(r.body_text())
    }
}

/// The caller, from a valid `Authorization: Bearer` token whose account exists and still has
/// the token's version; `role` is the account's current role.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: u64,
    pub role: Role,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        // Checked already by the rate limiter in front of the sale routes.
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(*user);
        }
        authenticate(state, &parts.headers).await
    }
}

/// The caller of the request's bearer token: a valid token (401 otherwise), checked against its
/// account (src/service/tokens.rs: 401 when it is gone or changed since, 503 when it cannot be
/// read).
pub async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<AuthUser, AppError> {
    let token = state.jwt.verify(bearer_token(headers)?)?;
    let caller = tokens::check(state, token).await?;
    Ok(AuthUser {
        user_id: caller.user_id,
        role: caller.role,
    })
}

impl AuthUser {
    /// The caller as the services name it.
    pub fn caller(self) -> tokens::Caller {
        tokens::Caller {
            user_id: self.user_id,
            role: self.role,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, AppError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| AppError::Unauthenticated("missing Authorization header".into()))?
        .to_str()
        .map_err(|_| AppError::Unauthenticated("malformed Authorization header".into()))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| AppError::Unauthenticated("expected a Bearer token".into()))
}

/// An authenticated admin; a customer gets 403 `forbidden`.
#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(AppError::Forbidden("this route is for admins".into()));
        }
        Ok(AdminUser(user))
    }
}

/// The `Idempotency-Key` header, when sent: 1..=128 visible ASCII characters.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let Some(v) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let s = v.to_str().unwrap_or("");
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AppError::InvalidRequest(
                "Idempotency-Key must be 1..=128 visible ASCII characters".into(),
            ));
        }
        Ok(IdempotencyKey(Some(s.to_string())))
    }
}
