//! Accounts and tokens.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::extract::{AuthUser, Json};
use crate::app::AppState;
use crate::auth;
use crate::domain::{Password, Role, Username};
use crate::error::{AppError, AppResult};
use crate::store::mysql::users;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users", post(create_user))
        .route("/v1/auth/token", post(create_token))
        .route("/v1/users/me", get(get_me))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
pub struct UserCreated {
    user_id: u64,
    username: String,
}

async fn create_user(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> AppResult<(StatusCode, axum::Json<UserCreated>)> {
    let username = Username::parse(&body.username)?;
    let password = Password::parse(&body.password)?;
    let hash = auth::hash_password(password, state.cfg.argon2_memory_kib).await?;
    let user_id = users::insert_user(&state.db, &username, &hash, Role::Customer).await?;
    tracing::info!(user.id = user_id, "user created");
    Ok((
        StatusCode::CREATED,
        axum::Json(UserCreated {
            user_id,
            username: username.as_str().to_string(),
        }),
    ))
}

#[derive(Serialize)]
pub struct Token {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

async fn create_token(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> AppResult<axum::Json<Token>> {
    let bad = || AppError::Unauthenticated("wrong username or password".into());
    // Malformed credentials are wrong credentials: no hint which part was off.
    if body.username.len() > 64 || body.password.len() > 512 {
        return Err(bad());
    }
    let user = users::find_by_username(&state.db, &body.username).await?;
    let ok = auth::verify_password(
        body.password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await?;
    let user = match user {
        Some(u) if ok => u,
        _ => {
            metrics::counter!("flashsale_logins_total", "outcome" => "rejected").increment(1);
            return Err(bad());
        }
    };
    metrics::counter!("flashsale_logins_total", "outcome" => "ok").increment(1);
    Ok(axum::Json(Token {
        access_token: state.jwt.issue(user.id, user.role())?,
        token_type: "Bearer",
        expires_in: state.jwt.ttl().as_secs(),
    }))
}

#[derive(Serialize)]
pub struct Me {
    user_id: u64,
    username: String,
    role: Role,
}

async fn get_me(State(state): State<AppState>, user: AuthUser) -> AppResult<axum::Json<Me>> {
    let row = users::find_by_id(&state.db, user.user_id)
        .await?
        .ok_or_else(|| AppError::Unauthenticated("the token's user no longer exists".into()))?;
    Ok(axum::Json(Me {
        user_id: row.id,
        role: row.role(),
        username: row.username,
    }))
}
