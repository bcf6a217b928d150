//! Auth routes: registration, tokens, the caller's identity, and every way a token is refused.

use std::time::Duration;

use flashsale::auth::Jwt;
use flashsale::domain::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn register_creates_a_customer() {
    let app = spawn_app().await;

    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["user_id"].as_u64().expect("user_id is a u64");
    assert!(id > 0);
    assert_eq!(r.body["username"], "alice");
    assert_eq!(
        r.body.as_object().unwrap().len(),
        2,
        "only user_id and username: {:?}",
        r.body
    );

    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "bob.b-2_x", "password": "bob-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id2 = r.body["user_id"].as_u64().unwrap();
    assert_ne!(id, id2, "every account gets its own id");
    assert_eq!(r.body["username"], "bob.b-2_x");

    // The new account can log in and is a customer.
    let token = app.login("alice", "alice-password").await;
    let r = app.get("/v1/users/me", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["user_id"], id);
    assert_eq!(r.body["role"], "customer");
}

#[tokio::test]
async fn duplicate_username_conflicts() {
    let app = spawn_app().await;
    let (id, _) = app.register("carol").await;

    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "carol", "password": "another-password"}),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "already_exists", "");

    // The admin account created at start-up is taken too.
    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "admin", "password": "another-password"}),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "already_exists", "");

    // The first account is untouched: its own password still works, the second one does not.
    let token = app.login("carol", "carol-password").await;
    let r = app.get("/v1/users/me", Some(&token)).await;
    assert_eq!(r.body["user_id"], id);
    let r = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "carol", "password": "another-password"}),
        )
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", "");
}

#[tokio::test]
async fn invalid_usernames_and_passwords_are_refused() {
    let app = spawn_app().await;
    let long_name = "a".repeat(33);
    let long_password = "p".repeat(129);
    let cases = [
        json!({"username": "al", "password": "long-enough-password"}),
        json!({"username": "", "password": "long-enough-password"}),
        json!({"username": "al ice", "password": "long-enough-password"}),
        json!({"username": "alice!", "password": "long-enough-password"}),
        json!({"username": "ålice", "password": "long-enough-password"}),
        json!({"username": long_name, "password": "long-enough-password"}),
        json!({"username": "alice", "password": "short"}),
        json!({"username": "alice", "password": "1234567"}),
        json!({"username": "alice", "password": ""}),
        json!({"username": "alice", "password": long_password}),
        // Missing or mistyped fields.
        json!({"username": "alice"}),
        json!({"password": "long-enough-password"}),
        json!({}),
        json!({"username": 12345, "password": "long-enough-password"}),
        json!({"username": "alice", "password": null}),
        json!("alice"),
    ];
    for body in cases {
        let r = app.post("/v1/users", None, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_request", "{body}: {:?}", r.body);
    }

    // Bounds are inclusive: 3 and 32 characters, 8 and 128 characters are fine.
    for (username, password) in [
        ("abc".to_string(), "12345678".to_string()),
        ("b".repeat(32), "q".repeat(128)),
    ] {
        let r = app
            .post(
                "/v1/users",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{username}: {:?}", r.body);
    }

    // Nothing refused was created.
    let r = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "alice", "password": "long-enough-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_fields_are_refused() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "dave", "password": "dave-password", "role": "admin"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("role"),
        "the message names the field: {:?}",
        r.body
    );

    // Not created, under any role.
    let r = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "dave", "password": "dave-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "admin", "password": ADMIN_PASSWORD, "scope": "all"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
}

#[tokio::test]
async fn malformed_json_is_invalid_json() {
    let app = spawn_app().await;
    for body in [
        r#"{"username": "erin", "password": "#,
        r#"{"username": "erin" "password": "erin-password"}"#,
        "not json at all",
        "",
        r#"{"username": 'erin'}"#,
    ] {
        for path in ["/v1/users", "/v1/auth/token"] {
            let r = app.post_raw(path, None, "application/json", body).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{path} {body:?}: {:?}",
                r.body
            );
            assert_eq!(r.code(), "invalid_json", "{path} {body:?}: {:?}", r.body);
        }
    }
    // A JSON content type with parameters is still JSON.
    let r = app
        .post_raw(
            "/v1/users",
            None,
            "application/json; charset=utf-8",
            r#"{"username": "erin", "password": "erin-password"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn missing_or_wrong_content_type_is_invalid_json() {
    let app = spawn_app().await;
    let body = r#"{"username": "frank", "password": "frank-password"}"#;

    // No Content-Type header at all.
    let resp = app
        .client
        .post(format!("{}/v1/users", app.addr))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_json", "{v:?}");

    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = app.post_raw("/v1/users", None, ct, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ct}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_json", "{ct}: {:?}", r.body);
    }

    // None of them created the account.
    let r = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "frank", "password": "frank-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_is_issued_for_right_credentials() {
    let app = spawn_app().await;
    let (id, _) = app.register("grace").await;

    let r = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "grace", "password": "grace-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = r.body["access_token"].as_str().expect("access_token");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_eq!(r.body["token_type"], "Bearer");
    let expires_in = r.body["expires_in"].as_u64().expect("expires_in");
    assert!(expires_in > 0);
    assert_eq!(expires_in, app.state.jwt.ttl().as_secs());

    // The token is accepted and names its owner.
    let v = app.state.jwt.verify(token).unwrap();
    assert_eq!((v.user_id, v.role, v.version), (id, Role::Customer, 0));
    let r = app.get("/v1/users/me", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["user_id"], id);

    // The admin's token carries the admin role.
    assert_eq!(
        app.state.jwt.verify(&app.admin_token).unwrap().role,
        Role::Admin
    );
}

#[tokio::test]
async fn wrong_credentials_are_unauthenticated() {
    let app = spawn_app().await;
    app.register("heidi").await;
    let cases = [
        json!({"username": "heidi", "password": "wrong-password"}),
        json!({"username": "heidi", "password": "HEIDI-PASSWORD"}),
        json!({"username": "Heidi", "password": "HEIDI-PASSWORD"}),
        json!({"username": "nobody", "password": "heidi-password"}),
        json!({"username": "admin", "password": "not-the-admin-password"}),
        // Malformed credentials are wrong credentials too.
        json!({"username": "x", "password": "y"}),
        json!({"username": "h".repeat(100), "password": "heidi-password"}),
    ];
    for body in cases {
        let r = app.post("/v1/auth/token", None, body.clone()).await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", &body);
        assert!(r.body.get("access_token").is_none());
    }
    // The unknown user and the wrong password get the same message: no hint which it was.
    let a = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "heidi", "password": "wrong-password"}),
        )
        .await;
    let b = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "nobody", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(a.body, b.body);
}

#[tokio::test]
async fn me_describes_the_caller() {
    let app = spawn_app().await;
    let (id, token) = app.register("ivan").await;

    let r = app.get("/v1/users/me", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"user_id": id, "username": "ivan", "role": "customer"})
    );

    let r = app.get("/v1/users/me", Some(&app.admin_token)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["username"], "admin");
    assert_eq!(r.body["role"], "admin");
    let admin_id = r.body["user_id"].as_u64().unwrap();
    assert_ne!(admin_id, id);
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let app = spawn_app().await;
    let (id, good) = app.register("judy").await;

    let other_secret = Jwt::new(
        b"some-other-secret-some-other-secret",
        Duration::from_secs(60),
    )
    .issue(id, Role::Customer, 0)
    .unwrap();
    let forged_admin = Jwt::new(
        b"some-other-secret-some-other-secret",
        Duration::from_secs(60),
    )
    .issue(id, Role::Admin, 0)
    .unwrap();
    let expired = app
        .state
        .jwt
        .issue_with_times(id, Role::Customer, 0, 1000, 2000)
        .unwrap();
    // The good token with its signature cut off, and with alg=none.
    let parts: Vec<&str> = good.split('.').collect();
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    let tampered = format!("{}.{}.{}x", parts[0], parts[1], parts[2]);

    let tokens: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("garbage".into())),
        ("empty", Some(String::new())),
        ("three dots", Some("a.b.c".into())),
        ("another secret", Some(other_secret)),
        ("forged admin", Some(forged_admin)),
        ("expired", Some(expired)),
        ("unsigned", Some(unsigned)),
        ("alg none", Some(alg_none)),
        ("tampered", Some(tampered)),
    ];
    for (what, token) in tokens {
        let r = app.get("/v1/users/me", token.as_deref()).await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", what);
    }

    // Another scheme than Bearer.
    let resp = app
        .client
        .get(format!("{}/v1/users/me", app.addr))
        .header("authorization", format!("Basic {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthenticated");

    // The good token still works.
    let r = app.get("/v1/users/me", Some(&good)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["user_id"], id);
}

#[tokio::test]
async fn token_of_an_unknown_user_is_unauthenticated_on_me() {
    let app = spawn_app().await;
    // A validly signed token whose user has no account row (customer_token would make one).
    let token = app.state.jwt.issue(987_654_321, Role::Customer, 0).unwrap();
    let r = app.get("/v1/users/me", Some(&token)).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", "");
}

#[tokio::test]
async fn a_json_array_is_not_an_object() {
    let app = spawn_app().await;
    let r = app
        .post_raw(
            "/v1/users",
            None,
            "application/json",
            r#"["arrayuser","array-password"]"#,
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", "");
    let login = app
        .post(
            "/v1/auth/token",
            None,
            json!({"username": "arrayuser", "password": "array-password"}),
        )
        .await;
    assert_eq!(
        login.status,
        StatusCode::UNAUTHORIZED,
        "no account was created"
    );
}
