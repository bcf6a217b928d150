//! Accounts and tokens.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminUser, AuthUser, Json, Path};
use super::limits::{self, ClientIp};
use super::openapi::{
    E400_BODY, E401, E413, ErrorEnvelope, Internal, LoginRateLimited, LoginUnavailable, Unavailable,
};
use super::responses::Role as RoleSchema;
use crate::app::AppState;
use crate::auth;
use crate::domain::{Password, Role, Username};
use crate::error::{AppError, AppResult};
use crate::service::accounts::{self, PasswordRefusal};
use crate::service::tokens;
use crate::store::mysql::users;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(create_user))
        .routes(routes!(create_token))
        .routes(routes!(get_me))
        .routes(routes!(change_password))
        .routes(routes!(delete_user))
        .routes(routes!(set_user_role))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"username": "alice", "password": "correct horse battery"})))]
pub struct Credentials {
    /// 3..=32 characters of `A-Z a-z 0-9 _ . -`; case-insensitive (`Alice` is `alice`).
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    username: String,
    /// 8..=128 characters.
    #[schema(min_length = 8, max_length = 128)]
    password: String,
}

#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"user_id": 42, "username": "alice"})))]
pub struct UserCreated {
    user_id: u64,
    username: String,
}

/// Register a customer account
///
/// Anyone may register; the account's role is `customer`. Usernames are case-insensitive: the
/// account is made with the name in lower case (`Alice` becomes `alice`, the answer says so),
/// and a name taken in any case is taken.
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "Auth",
    request_body(
        content = Credentials,
        description = "The new account's credentials.",
        example = json!({"username": "alice", "password": "correct horse battery"})
    ),
    responses(
        (status = 201, description = "The account was created.", body = UserCreated),
        (status = 400, description = E400_BODY, body = ErrorEnvelope),
        (status = 409, description = "`already_exists`: the username is taken, in any case \
            (`Alice` is `alice`). Each such answer takes a token of the address's bucket of \
            taken names (`FLASHSALE_SIGNUP_TAKEN_PER_MIN`); see docs/API.md, \"Auth\".",
            body = ErrorEnvelope,
            example = json!({"error": {"code": "already_exists",
                "message": "this username is taken; choose another"}})),
        (status = 413, description = E413, body = ErrorEnvelope),
        LoginRateLimited,
        Internal,
        LoginUnavailable,
    )
)]
async fn create_user(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<Credentials>,
) -> AppResult<(StatusCode, axum::Json<UserCreated>)> {
    limits::check_signup(&state, ip).await?;
    let created = async {
        let username = Username::parse(&body.username)?;
        let password = Password::parse(&body.password)?;
        // Hashed before the insert, so a taken name takes as long to answer as a free one.
        let hash = auth::hash_password(password, state.cfg.auth.argon2_memory_kib).await?;
        let user_id = users::insert_user(&state.db, &username, &hash, Role::Customer).await?;
        Ok::<_, AppError>((user_id, username))
    }
    .await;
    // Only a taken name keeps the token of the address's taken bucket.
    if !matches!(created, Err(AppError::AlreadyExists(_))) {
        limits::refund_signup(&state, ip).await;
    }
    let (user_id, username) = created?;
    tracing::info!(user.id = user_id, "user created");
    Ok((
        StatusCode::CREATED,
        axum::Json(UserCreated {
            user_id,
            username: username.as_str().to_string(),
        }),
    ))
}

#[derive(Serialize, ToSchema)]
#[schema(examples(json!({
    "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl",
    "token_type": "Bearer",
    "expires_in": 3600
})))]
pub struct Token {
    /// A JWT for `Authorization: Bearer <token>`.
    access_token: String,
    /// Always `Bearer`.
    #[schema(value_type = String, examples("Bearer"))]
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: u64,
}

impl Token {
    fn new(state: &AppState, access_token: String) -> Self {
        Token {
            access_token,
            token_type: "Bearer",
            expires_in: state.jwt.ttl().as_secs(),
        }
    }
}

/// Log in: exchange credentials for a bearer token
///
/// Anyone may call it. Wrong and malformed credentials get the same 401, with no hint which part
/// was off.
#[utoipa::path(
    post,
    path = "/v1/auth/token",
    tag = "Auth",
    request_body(
        content = Credentials,
        description = "The account's credentials.",
        example = json!({"username": "alice", "password": "correct horse battery"})
    ),
    responses(
        (status = 200, description = "A bearer token.", body = Token),
        (status = 400, description = E400_BODY, body = ErrorEnvelope),
        (status = 401, description = "`unauthenticated`: wrong username or password.",
            body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        LoginRateLimited,
        Internal,
        LoginUnavailable,
    )
)]
async fn create_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<Credentials>,
) -> AppResult<axum::Json<Token>> {
    let bad = || AppError::Unauthenticated("wrong username or password".into());
    // Malformed credentials are wrong credentials: no hint which part was off. A username that
    // breaks the rules names no account (nor buckets of one): it meets the address's bucket only.
    let username = match Username::parse(&body.username) {
        Ok(name) if body.password.len() <= 512 => name,
        _ => {
            limits::check_login(&state, ip, None).await?;
            return Err(bad());
        }
    };
    // Takes a token of the username's failure buckets; given back unless the password is wrong.
    limits::check_login(&state, ip, Some(&username)).await?;
    let checked = async {
        let user = users::find_by_username(&state.db, &username).await?;
        let ok = auth::verify_password(
            body.password,
            user.as_ref().map(|u| u.password_hash.clone()),
            state.cfg.auth.argon2_memory_kib,
        )
        .await?;
        Ok::<_, AppError>(user.filter(|_| ok))
    }
    .await;
    let user = match checked {
        Ok(Some(u)) => u,
        Ok(None) => {
            metrics::counter!("flashsale_logins_total", "outcome" => "rejected").increment(1);
            return Err(bad());
        }
        Err(e) => {
            limits::refund_login(&state, ip, &username).await;
            return Err(e);
        }
    };
    limits::refund_login(&state, ip, &username).await;
    // The token carries the account's version as of the password just checked: a change of the
    // password meanwhile leaves nothing to issue.
    let Some(account) =
        users::find_account_with_hash(&state.db, user.id, &user.password_hash).await?
    else {
        metrics::counter!("flashsale_logins_total", "outcome" => "rejected").increment(1);
        return Err(bad());
    };
    // Noted for the token's life: its checks need no MySQL, so a customer signed in before a
    // MySQL outage keeps buying through it (service::tokens::note_ttl). Best effort: a check
    // without a note reads MySQL.
    if let Err(e) = state
        .redis
        .note_account(account.id, account.account(), tokens::note_ttl(&state))
        .await
    {
        tracing::debug!(error = %e, user.id = account.id, "could not note the account at login");
    }
    metrics::counter!("flashsale_logins_total", "outcome" => "ok").increment(1);
    Ok(axum::Json(Token::new(
        &state,
        state
            .jwt
            .issue(account.id, account.role(), account.token_version)?,
    )))
}

#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"user_id": 42, "username": "alice", "role": "customer"})))]
pub struct Me {
    user_id: u64,
    username: String,
    role: RoleSchema,
}

/// The caller's account
///
/// Auth: a bearer token of any signed-in user (customer or admin).
#[utoipa::path(
    get,
    path = "/v1/users/me",
    tag = "Auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account.", body = Me),
        (status = 401, description = E401, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn get_me(State(state): State<AppState>, user: AuthUser) -> AppResult<axum::Json<Me>> {
    let row = users::find_by_id(&state.db, user.user_id)
        .await?
        .ok_or_else(|| AppError::Unauthenticated("the token's user no longer exists".into()))?;
    Ok(axum::Json(Me {
        user_id: row.id,
        role: row.role().into(),
        username: row.username,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "current_password": "correct horse battery",
    "new_password": "staple battery horse correct"
})))]
pub struct PasswordChange {
    /// The account's password now.
    current_password: String,
    /// 8..=128 characters.
    #[schema(min_length = 8, max_length = 128)]
    new_password: String,
}

/// Change the caller's password
///
/// Auth: a bearer token of any signed-in user (customer or admin); the current password is
/// needed too. Every token of the account is refused from then on, the one of this request
/// included: the answer is a new token. A wrong current password counts as a failed login of
/// the account (the same limits apply).
#[utoipa::path(
    put,
    path = "/v1/users/me/password",
    tag = "Auth",
    security(("bearer" = [])),
    request_body(
        content = PasswordChange,
        description = "The current password and the new one.",
        example = json!({
            "current_password": "correct horse battery",
            "new_password": "staple battery horse correct"
        })
    ),
    responses(
        (status = 200, description = "The password was changed; a new bearer token (the \
            account's older tokens are refused from now on).", body = Token),
        (status = 400, description = "`invalid_json`: the body is not JSON or not sent as \
            `Content-Type: application/json`; `invalid_request`: a field is missing, unknown or \
            malformed, the new password is not 8..=128 characters, or `current_password` is not \
            the account's password. Nothing was changed.", body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        LoginRateLimited,
        Internal,
        LoginUnavailable,
    )
)]
async fn change_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    user: AuthUser,
    Json(body): Json<PasswordChange>,
) -> AppResult<axum::Json<Token>> {
    let new = Password::parse(&body.new_password)?;
    let wrong = || {
        AppError::InvalidRequest(
            "current_password is not the account's password; nothing was changed".into(),
        )
    };
    if body.current_password.len() > 512 {
        return Err(wrong());
    }
    let row = users::find_by_id(&state.db, user.user_id)
        .await?
        .ok_or_else(|| AppError::Unauthenticated("the token's account does not exist".into()))?;
    // Takes a token of the account's failure buckets, given back unless the password is wrong.
    // Stored names are normalised; one that no longer parses (written before the rules) is
    // limited like an unknown name.
    let username = Username::parse(&row.username).ok();
    limits::check_login(&state, ip, username.as_ref()).await?;
    match accounts::change_password(&state, row, body.current_password, new).await {
        Ok(Ok(token)) => {
            if let Some(username) = &username {
                limits::refund_login(&state, ip, username).await;
            }
            Ok(axum::Json(Token::new(&state, token)))
        }
        Ok(Err(PasswordRefusal::WrongPassword)) => Err(wrong()),
        Err(e) => {
            if let Some(username) = &username {
                limits::refund_login(&state, ip, username).await;
            }
            Err(e)
        }
    }
}

/// Delete a user's account
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`). The account's tokens
/// are refused from then on (by every instance within a second); its orders stay, its cart
/// holds and unpaid orders lapse at their deadlines. An admin cannot delete their own account.
#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}",
    tag = "Auth",
    security(("bearer" = [])),
    params(
        ("user_id" = u64, Path, example = 42, description = "The account's id."),
    ),
    responses(
        (status = 204, description = "The account was deleted."),
        (status = 400, description = "`invalid_request`: the user id is not an unsigned 64-bit \
            integer.", body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = "`forbidden`: the token is a customer's; or the account \
            is the caller's own.", body = ErrorEnvelope),
        (status = 404, description = "`not_found`: no user with that id.", body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn delete_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(user_id): Path<u64>,
) -> AppResult<StatusCode> {
    accounts::delete_user(&state, admin.caller(), user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"role": "customer"})))]
pub struct RoleChange {
    /// `customer` or `admin`.
    #[schema(value_type = RoleSchema)]
    role: Role,
}

/// Change a user's role (promote or demote)
///
/// Auth: an **admin**'s bearer token (a customer's gets 403 `forbidden`). A change refuses the
/// account's tokens from then on (by every instance within a second): the user signs in again
/// and gets the new role. The role it has already changes nothing. An admin cannot change their
/// own role.
#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/role",
    tag = "Auth",
    security(("bearer" = [])),
    params(
        ("user_id" = u64, Path, example = 42, description = "The account's id."),
    ),
    request_body(
        content = RoleChange,
        description = "The account's new role.",
        example = json!({"role": "customer"})
    ),
    responses(
        (status = 200, description = "The account with its role now.", body = Me),
        (status = 400, description = E400_BODY, body = ErrorEnvelope),
        (status = 401, description = E401, body = ErrorEnvelope),
        (status = 403, description = "`forbidden`: the token is a customer's; or the account \
            is the caller's own.", body = ErrorEnvelope),
        (status = 404, description = "`not_found`: no user with that id.", body = ErrorEnvelope),
        (status = 413, description = E413, body = ErrorEnvelope),
        Internal,
        Unavailable,
    )
)]
async fn set_user_role(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(user_id): Path<u64>,
    Json(body): Json<RoleChange>,
) -> AppResult<axum::Json<Me>> {
    let row = accounts::change_role(&state, admin.caller(), user_id, body.role).await?;
    Ok(axum::Json(Me {
        user_id: row.id,
        role: row.role().into(),
        username: row.username,
    }))
}
