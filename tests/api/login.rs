//! Login throttling: failures count per (username, client address) with a higher ceiling per
//! username, so guesses from elsewhere never lock the owner out; and it fails closed (503) when
//! Redis is down, since logins need only MySQL.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Resp, TestApp, spawn_app_with};

/// A login attempt from `address` (the app trusts `X-Forwarded-For` in these tests).
async fn login_from(app: &TestApp, address: &str, username: &str, password: &str) -> Resp {
    let resp = app
        .client
        .post(format!("{}/v1/auth/token", app.addr))
        .header("x-forwarded-for", address)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("request sent");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Resp {
        status,
        body,
        headers,
    }
}

#[tokio::test]
async fn guesses_from_elsewhere_do_not_lock_the_owner_out() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_failures_per_min = 5.0;
        c.limits.login_user_failures_per_min = 1_000.0;
        c.limits.login_ip_per_min = 1_000.0;
    })
    .await;
    app.register("victim").await;
    const ATTACKER: &str = "203.0.113.66";
    const OWNER: &str = "198.51.100.7";
    for _ in 0..5 {
        let r = login_from(&app, ATTACKER, "victim", "wrong-password").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    }
    // The attacker's address is done guessing this username, even with the right password.
    let r = login_from(&app, ATTACKER, "victim", "victim-password").await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "");
    // The owner, elsewhere, signs in; a typo of theirs does not matter either.
    let r = login_from(&app, OWNER, "victim", "wrong-password").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = login_from(&app, OWNER, "victim", "victim-password").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Usernames are case-insensitive: `Victim` is the same account, in the same buckets.
    let r = login_from(&app, ATTACKER, "Victim", "victim-password").await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "");
    let r = login_from(&app, OWNER, "VICTIM", "victim-password").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // An IPv6 client counts by its /64: rotating the interface id does not reset its bucket.
    for i in 0..5 {
        let r = login_from(&app, &format!("2001:db8:1:2::{i:x}"), "victim", "nope-nope").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    }
    let r = login_from(&app, "2001:db8:1:2:ffff::1", "victim", "victim-password").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    let r = login_from(&app, "2001:db8:1:3::1", "victim", "victim-password").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn guessing_spread_over_many_addresses_meets_the_username_ceiling() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_failures_per_min = 2.0;
        c.limits.login_user_failures_per_min = 6.0;
        c.limits.login_ip_per_min = 1_000.0;
    })
    .await;
    app.register("target").await;
    app.register("other").await;
    for i in 0..3 {
        for _ in 0..2 {
            let r = login_from(&app, &format!("192.0.2.{i}"), "target", "wrong-password").await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
        }
    }
    let r = login_from(&app, "192.0.2.200", "target", "target-password").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("username")
    );
    let r = login_from(&app, "192.0.2.200", "other", "other-password").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server of this test's own (never the shared one), without persistence.
struct OwnRedis(Child, u16);

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        OwnRedis(child, port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.1)
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn logins_fail_closed_while_redis_is_down() {
    let port = free_port();
    let mut redis_server = OwnRedis::start(port).await;
    let url = redis_server.url();
    let app = spawn_app_with(|c| {
        c.stores.redis_url = url.clone();
        c.stores.redis_timeout = Duration::from_millis(300);
        c.limits.rate_limits = true;
        c.limits.login_failures_per_min = 5.0;
    })
    .await;
    app.register("owner").await;
    let attempt = |user: &'static str, password: &'static str| {
        app.post(
            "/v1/auth/token",
            None,
            json!({"username": user, "password": password}),
        )
    };

    redis_server.stop();
    // 20 guesses: none is checked (none gets 401), every one is 503 with Retry-After.
    for _ in 0..20 {
        let r = attempt("owner", "wrong-password").await;
        r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "");
        assert_eq!(r.headers["retry-after"], "1");
    }
    let r = attempt("owner", "owner-password").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    // Sign-ups too, and the refused one created nothing.
    let r = app
        .post(
            "/v1/users",
            None,
            json!({"username": "newcomer", "password": "newcomer-password"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let exists: Option<(u64,)> = sqlx::query_as("SELECT id FROM users WHERE username = ?")
        .bind("newcomer")
        .fetch_optional(&app.state.db)
        .await
        .unwrap();
    assert!(exists.is_none());

    // Redis back (empty): logins work again, and the limits count again.
    let _redis_server = OwnRedis::start(port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = attempt("owner", "owner-password").await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
        assert!(Instant::now() < deadline, "logins did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        assert_eq!(
            attempt("owner", "wrong-password").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        attempt("owner", "owner-password").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Guesses sent all at once cannot slip past the failure bucket while the earlier ones are
/// still being checked: each attempt holds a token while its password is checked.
#[tokio::test]
async fn concurrent_guesses_get_no_more_tries_than_the_bucket_holds() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_failures_per_min = 3.0;
        c.limits.login_user_failures_per_min = 1_000.0;
        c.limits.login_ip_per_min = 1_000.0;
        // Argon2 as costly as in production: the window between look and charge is real.
        c.auth.argon2_memory_kib = 19 * 1024;
    })
    .await;
    app.register("crowded").await;
    let guesses = (0..24).map(|_| login_from(&app, "203.0.113.9", "crowded", "wrong-password"));
    let answers = futures::future::join_all(guesses).await;
    let checked = answers
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    let refused = answers
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(checked + refused, 24, "only 401s and 429s");
    assert!(
        checked <= 3,
        "{checked} passwords checked, the bucket holds 3"
    );
    // A correct password elsewhere is not refused, and does not use up a token: the owner can
    // sign in again and again.
    for _ in 0..5 {
        let r = login_from(&app, "198.51.100.1", "crowded", "crowded-password").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
}

/// A refused attempt takes nothing: an attacker who keeps hammering past their own
/// (username, address) bucket does not drain the username's ceiling, and the owner elsewhere
/// still signs in.
#[tokio::test]
async fn refused_attempts_do_not_drain_the_username_ceiling() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_failures_per_min = 3.0;
        c.limits.login_user_failures_per_min = 8.0;
        c.limits.login_ip_per_min = 1_000.0;
    })
    .await;
    app.register("hammered").await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = login_from(&app, "203.0.113.50", "hammered", "wrong-password").await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses[..3], [401, 401, 401]);
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let r = login_from(&app, "198.51.100.20", "hammered", "hammered-password").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Nor does a refusal by the address's attempt bucket take the username's tokens.
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_failures_per_min = 10.0;
        c.limits.login_user_failures_per_min = 4.0;
        // spawn_app's admin login and the sign-up and login of `register` come from 127.0.0.1.
        c.limits.login_ip_per_min = 3.0;
    })
    .await;
    app.register("quiet").await;
    for _ in 0..10 {
        // The address's 3 attempts go, the rest are refused before any password is checked.
        login_from(&app, "203.0.113.51", "quiet", "wrong-password").await;
    }
    let r = login_from(&app, "203.0.113.52", "quiet", "quiet-password").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}
