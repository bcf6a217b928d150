//! A token lives only as long as its account and the account's password and role: deleting
//! the account, changing its role or its password ends every token issued before (401
//! `unauthenticated`), on this instance at once and on the others once their read of the account
//! is older than `tokens::CHECK_TTL`; a token for an account that never existed does nothing; a
//! token whose account cannot be read is answered 503, never let through.

use std::sync::Arc;
use std::time::Duration;

use flashsale::app::AppState;
use flashsale::domain::Role;
use flashsale::service::tokens::{CHECK_TTL, TokenChecks};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// Another instance of the service: the same database, Redis prefix and secret as `app`, with
/// token checks of its own (trusting what they read for `check_ttl`), serving on its own port.
struct Instance {
    addr: String,
    client: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

impl Instance {
    async fn start(state: AppState) -> Instance {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let router = flashsale::http::router(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Instance {
            addr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _server: server,
        }
    }

    /// A second instance beside `app`, its token checks trusting a read for `check_ttl`.
    async fn beside(app: &TestApp, check_ttl: Duration) -> Instance {
        Instance::start(AppState {
            tokens: Arc::new(TokenChecks::new(check_ttl)),
            ..app.state.clone()
        })
        .await
    }

    async fn send(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.addr))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("sent");
        let (status, headers) = (r.status(), r.headers().clone());
        let body = r.json().await.unwrap_or(Value::Null);
        Resp {
            status,
            body,
            headers,
        }
    }

    async fn me(&self, token: &str) -> Resp {
        self.send(Method::GET, "/v1/users/me", token, None).await
    }
}

fn refused(r: &Resp, ctx: &str) {
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", ctx);
}

/// The issue's first case: a deleted customer's token added to the cart (200) while
/// `/v1/users/me` said 401. Now both refuse it, with the rate limiter in front or not, and the
/// stock stays as it was.
#[tokio::test]
async fn a_deleted_users_token_adds_nothing_to_the_cart() {
    for rate_limits in [false, true] {
        let app = spawn_app_with(|c| c.limits.rate_limits = rate_limits).await;
        let sku = app.sale_product(10, None).await;
        let (id, token) = app.register("dora").await;
        app.cart_add(&token, sku, 1).await;

        let r = app.try_delete_user(&app.admin_token, id).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);

        let ctx = format!("rate limits {rate_limits}");
        refused(&app.try_cart_add(&token, sku, 2).await, &ctx);
        refused(&app.try_buy_now(&token, sku, 1).await, &ctx);
        refused(&app.get("/v1/users/me", Some(&token)).await, &ctx);
        assert_eq!(
            app.available(sku).await,
            9,
            "{ctx}: only the first add held"
        );
        app.assert_identity(sku).await;
        // Gone for good: the login too, and a second delete finds nothing.
        let r = app.try_login("dora", "dora-password").await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", &ctx);
        let r = app.try_delete_user(&app.admin_token, id).await;
        r.assert_error(StatusCode::NOT_FOUND, "not_found", &ctx);
    }
}

/// The issue's second case: a token for a user id that never existed placed an order (201).
#[tokio::test]
async fn a_token_for_an_account_that_never_existed_places_no_order() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let ghost = app.state.jwt.issue(987_654_321, Role::Customer, 0).unwrap();
    refused(&app.try_buy_now(&ghost, sku, 1).await, "buy-now");
    refused(&app.try_cart_add(&ghost, sku, 1).await, "cart add");
    refused(&app.try_checkout(&ghost).await, "checkout");
    refused(&app.get("/v1/orders", Some(&ghost)).await, "orders");
    refused(&app.get("/v1/users/me", Some(&ghost)).await, "me");
    // Nor as an admin.
    let ghost_admin = app.state.jwt.issue(987_654_322, Role::Admin, 0).unwrap();
    let r = app
        .post(
            "/v1/warehouses",
            Some(&ghost_admin),
            json!({"name": "ghost"}),
        )
        .await;
    refused(&r, "ghost admin");
    assert_eq!(app.available(sku).await, 10);
    let b = app.assert_identity(sku).await;
    assert_eq!((b.held, b.reserved), (0, 0));
}

/// The issue's third case: a demoted admin's token still created a warehouse (201). A role
/// change ends the account's tokens; signed in again, the account has its new role.
#[tokio::test]
async fn a_demoted_admins_token_creates_no_warehouse() {
    let app = spawn_app().await;
    let (erin, customer_token) = app.register("erin").await;
    let r = app.try_set_role(&app.admin_token, erin, "admin").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"user_id": erin, "username": "erin", "role": "admin"})
    );
    // The promotion ended the customer's token; signed in again, erin is an admin.
    refused(
        &app.get("/v1/users/me", Some(&customer_token)).await,
        "pre-promotion token",
    );
    let admin_token = app.login("erin", "erin-password").await;
    let r = app
        .post(
            "/v1/warehouses",
            Some(&admin_token),
            json!({"name": "erin-1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    let r = app.try_set_role(&app.admin_token, erin, "customer").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["role"], "customer");
    let r = app
        .post(
            "/v1/warehouses",
            Some(&admin_token),
            json!({"name": "erin-2"}),
        )
        .await;
    refused(&r, "demoted admin's token");
    // Signed in again: a customer.
    let token = app.login("erin", "erin-password").await;
    let r = app
        .post("/v1/warehouses", Some(&token), json!({"name": "erin-3"}))
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden", "erin as a customer");
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM warehouses")
        .fetch_all(&app.state.db)
        .await
        .unwrap();
    assert!(
        !names.iter().any(|n| n == "erin-2" || n == "erin-3"),
        "{names:?}"
    );

    // The same role again changes nothing: the token stays good.
    let r = app.try_set_role(&app.admin_token, erin, "customer").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        app.get("/v1/users/me", Some(&token)).await.status,
        StatusCode::OK
    );
}

/// Admins cannot delete nor demote themselves (that could leave none); unknown ids and bad
/// bodies change nothing; customers get 403.
#[tokio::test]
async fn account_changes_refuse_bad_requests_and_change_nothing() {
    let app = spawn_app().await;
    let (id, token) = app.register("gus").await;
    let admin_id = app.get("/v1/users/me", Some(&app.admin_token)).await.body["user_id"]
        .as_u64()
        .unwrap();
    let r = app.try_delete_user(&app.admin_token, admin_id).await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden", "self delete");
    let r = app
        .try_set_role(&app.admin_token, admin_id, "customer")
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden", "self demote");
    let r = app.try_delete_user(&token, admin_id).await;
    r.assert_error(StatusCode::FORBIDDEN, "forbidden", "customer deletes");
    let r = app.try_set_role(&token, id, "admin").await;
    r.assert_error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "customer promotes itself",
    );
    for (path, body) in [
        ("/v1/users/999999/role", json!({"role": "admin"})),
        ("/v1/users/x/role", json!({"role": "admin"})),
        (
            &format!("/v1/users/{id}/role") as &str,
            json!({"role": "root"}),
        ),
        (
            &format!("/v1/users/{id}/role") as &str,
            json!({"role": "admin", "x": 1}),
        ),
        (&format!("/v1/users/{id}/role") as &str, json!({})),
    ] {
        let r = app.put(path, Some(&app.admin_token), body.clone()).await;
        let want = if path.contains("999999") {
            (StatusCode::NOT_FOUND, "not_found")
        } else {
            (StatusCode::BAD_REQUEST, "invalid_request")
        };
        r.assert_error(want.0, want.1, format!("{path} {body}"));
    }
    for path in ["/v1/users/999999", "/v1/users/x", "/v1/users/-1"] {
        let r = app.delete(path, Some(&app.admin_token)).await;
        assert!(
            matches!(r.code(), "not_found" | "invalid_request"),
            "{path}: {:?}",
            r.body
        );
    }
    // Nothing changed: both tokens still work, with their roles.
    let me = app.get("/v1/users/me", Some(&token)).await;
    assert_eq!(me.body["role"], "customer", "{:?}", me.body);
    let me = app.get("/v1/users/me", Some(&app.admin_token)).await;
    assert_eq!(me.body["role"], "admin", "{:?}", me.body);
}

/// A password change needs the current password, ends every older token of the account (the
/// answer is a new one), and the old password no longer signs in.
#[tokio::test]
async fn a_password_change_ends_the_old_tokens() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let (_, first) = app.register("fay").await;
    let second = app.login("fay", "fay-password").await;

    for (current, new, what) in [
        (
            "not-fays-password",
            "fay-new-password",
            "wrong current password",
        ),
        ("fay-password", "short", "new password too short"),
    ] {
        let r = app.try_change_password(&first, current, new).await;
        r.assert_error(StatusCode::BAD_REQUEST, "invalid_request", what);
    }
    let r = app
        .put(
            "/v1/users/me/password",
            Some(&first),
            json!({"new_password": "x".repeat(10)}),
        )
        .await;
    r.assert_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "no current password",
    );
    // Refused changes changed nothing.
    app.cart_add(&second, sku, 1).await;

    let r = app
        .try_change_password(&first, "fay-password", "fay-new-password")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
    let fresh = r.body["access_token"].as_str().unwrap().to_string();
    for (old, name) in [(&first, "the token that changed it"), (&second, "another")] {
        refused(&app.try_cart_add(old, sku, 1).await, name);
        refused(&app.get("/v1/users/me", Some(old)).await, name);
    }
    assert_eq!(app.cart(&fresh).await.items.len(), 1, "the new token works");
    let r = app.try_login("fay", "fay-password").await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", "old password");
    app.login("fay", "fay-new-password").await;

    // The accounts customer_token makes have a password too.
    let t = app.customer_token(8_801);
    let r = app
        .try_change_password(&t, LOAD_PASSWORD, "another-password")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    refused(
        &app.try_cart_add(&t, sku, 1).await,
        "load account's old token",
    );
}

/// Another instance that read the account before the change keeps its read for at most its
/// check TTL: after it, it refuses the old token too (it reads the note the change left in
/// Redis). The instance that made the change refuses at once.
#[tokio::test]
async fn another_instance_refuses_once_its_read_is_older_than_the_check_ttl() {
    let app = spawn_app().await;
    let other = Instance::beside(&app, CHECK_TTL).await;
    let (dora, dora_token) = app.register("dora").await;
    let (_, fay_token) = app.register("fay").await;
    let (erin, _) = app.register("erin").await;
    app.try_set_role(&app.admin_token, erin, "admin").await;
    let erin_token = app.login("erin", "erin-password").await;
    // Both instances read the three accounts.
    for t in [&dora_token, &fay_token, &erin_token] {
        assert_eq!(
            app.get("/v1/users/me", Some(t)).await.status,
            StatusCode::OK
        );
        assert_eq!(other.me(t).await.status, StatusCode::OK);
    }

    // A deletion, a demotion and a password change, each through the first instance.
    app.try_delete_user(&app.admin_token, dora).await;
    app.try_set_role(&app.admin_token, erin, "customer").await;
    let r = app
        .try_change_password(&fay_token, "fay-password", "fay-new-password")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let fay_new = r.body["access_token"].as_str().unwrap().to_string();
    for t in [&dora_token, &fay_token, &erin_token] {
        refused(
            &app.get("/v1/users/me", Some(t)).await,
            "the changing instance",
        );
    }
    // The new token works on the other instance at once: a version above what it read sends
    // it to the note.
    assert_eq!(other.me(&fay_new).await.status, StatusCode::OK);

    tokio::time::sleep(CHECK_TTL + Duration::from_millis(200)).await;
    for (t, what) in [
        (&dora_token, "deleted"),
        (&fay_token, "password changed"),
        (&erin_token, "demoted"),
    ] {
        refused(&other.me(t).await, what);
        let r = other
            .send(
                Method::POST,
                "/v1/warehouses",
                t,
                Some(json!({"name": "late"})),
            )
            .await;
        refused(&r, what);
    }
}

/// While an instance's read is fresh, a sale request costs no round trip for its token: with
/// the account gone from MySQL and Redis's note saying so, an instance that trusts its reads
/// for a minute still accepts the token; the one trusting them for `CHECK_TTL` refuses it once
/// that has passed.
#[tokio::test]
async fn a_warm_check_asks_neither_redis_nor_mysql() {
    let app = spawn_app().await;
    let sku = app.sale_product(10, None).await;
    let warm = Instance::beside(&app, Duration::from_secs(60)).await;
    let user = 7_301;
    let t = app.customer_token(user);
    assert_eq!(warm.me(&t).await.status, StatusCode::OK);
    assert_eq!(
        app.get("/v1/users/me", Some(&t)).await.status,
        StatusCode::OK
    );

    // Behind the API's back: the row and the note go.
    sqlx::query("DELETE FROM users WHERE id = ?")
        .bind(user)
        .execute(&app.state.db)
        .await
        .unwrap();
    app.state
        .redis
        .note_account(
            user,
            flashsale::domain::Account::Gone,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let r = warm
        .send(
            Method::POST,
            "/v1/cart/items",
            &t,
            Some(json!({"sku": sku, "count": 1})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "answered from memory: {:?}",
        r.body
    );

    tokio::time::sleep(CHECK_TTL + Duration::from_millis(200)).await;
    refused(&app.try_cart_add(&t, sku, 1).await, "after the check TTL");
}

/// A token whose account cannot be read is not let through: with neither Redis nor MySQL
/// reachable the answer is 503 `unavailable`; with MySQL alone it is checked there.
#[tokio::test]
async fn a_token_that_cannot_be_checked_is_answered_503() {
    let app = spawn_app().await;
    let (_, token) = app.register("hal").await;
    let mut down = app.state.cfg.stores.clone();
    down.redis_url = "redis://127.0.0.1:1".into();
    down.mysql_url = format!("mysql://root@127.0.0.1:1/{}", app.db_name);
    down.mysql_timeout = Duration::from_millis(500);

    // Redis down, MySQL up: checked in MySQL.
    let mysql_only = Instance::start(AppState {
        redis: flashsale::store::redis::Redis::connect(&down).unwrap(),
        tokens: Arc::new(TokenChecks::new(CHECK_TTL)),
        ..app.state.clone()
    })
    .await;
    let r = mysql_only.me(&token).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Both down.
    let neither = Instance::start(AppState {
        redis: flashsale::store::redis::Redis::connect(&down).unwrap(),
        db: flashsale::store::mysql::pool(&down).unwrap(),
        tokens: Arc::new(TokenChecks::new(CHECK_TTL)),
        ..app.state.clone()
    })
    .await;
    for (method, path, body) in [
        (Method::GET, "/v1/users/me", None),
        (Method::GET, "/v1/cart", None),
        (Method::POST, "/v1/warehouses", Some(json!({"name": "x"}))),
    ] {
        let r = neither.send(method, path, &token, body).await;
        r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", path);
    }
}

/// Notes in Redis keep the highest version whatever order they come in, and a deletion is never
/// replaced: an instance that read MySQL before a change cannot put the old version back after.
#[tokio::test]
async fn account_notes_keep_the_newest_version_and_the_deletion() {
    use flashsale::domain::Account;
    let app = spawn_app().await;
    let redis = &app.state.redis;
    let keep = Duration::from_secs(60);
    let live = |version| Account::Live {
        version,
        role: Role::Customer,
    };
    assert_eq!(redis.noted_account(5).await.unwrap(), None);
    assert!(redis.note_account(5, live(2), keep).await.unwrap());
    assert!(
        !redis.note_account(5, live(1), keep).await.unwrap(),
        "older"
    );
    assert!(
        !redis.note_account(5, live(2), keep).await.unwrap(),
        "the same"
    );
    assert_eq!(redis.noted_account(5).await.unwrap(), Some(live(2)));
    let admin = Account::Live {
        version: 3,
        role: Role::Admin,
    };
    assert!(redis.note_account(5, admin, keep).await.unwrap());
    assert_eq!(redis.noted_account(5).await.unwrap(), Some(admin));
    assert!(redis.note_account(5, Account::Gone, keep).await.unwrap());
    assert!(
        !redis.note_account(5, live(9), keep).await.unwrap(),
        "after the deletion"
    );
    assert_eq!(redis.noted_account(5).await.unwrap(), Some(Account::Gone));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(redis.keys.account(5))
        .query_async(&mut redis.conn())
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
}

/// A MySQL outage during a sale: a customer who signed in before it (a login, or any checked
/// request, notes the account in Redis for the token's life) keeps buying; one whose account
/// was never seen cannot be checked and gets 503, never a pass.
#[tokio::test]
async fn a_customer_seen_before_a_mysql_outage_keeps_buying_through_it() {
    let (app, proxy) = crate::model::faults::app_through_proxy().await;
    let sku = app.sale_product(5, None).await;
    let (seen, unseen) = (app.customer_token(4_001), app.customer_token(4_002));
    assert_eq!(
        app.get("/v1/cart", Some(&seen)).await.status,
        StatusCode::OK
    );
    assert_eq!(app.available(sku).await, 5);
    // Noted for as long as the token lives (an outage of any length within it is covered).
    let note = format!("{}:{{user:4001}}:account", app.prefix);
    let left: i64 = redis::cmd("PTTL")
        .arg(&note)
        .query_async(&mut app.state.redis.conn())
        .await
        .unwrap();
    assert!(
        left > app.state.cfg.auth.token_ttl.as_millis() as i64,
        "the note lasts {left} ms"
    );
    // A login notes the account too.
    let (_, logged_in) = app.register("outage-shopper").await;
    proxy.cut();
    // Past this instance's own memory of the account: Redis's note answers.
    tokio::time::sleep(CHECK_TTL + Duration::from_millis(200)).await;
    let r = app.try_buy_now(&seen, sku, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app.try_buy_now(&logged_in, sku, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = app.try_buy_now(&unseen, sku, 1).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "never seen");
    proxy.restore();
    app.assert_identity(sku).await;
}
