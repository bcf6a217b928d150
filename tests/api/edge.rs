//! The edge a shop exposes (issue 23): operators' data off the API's port, usernames one
//! whatever their case, sign-up probes of taken names bounded per address, and one address's
//! connections unable to keep everyone else waiting.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use flashsale::store::mysql::MIGRATOR;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::metrics::repo_file;

#[tokio::test]
async fn operators_data_is_on_its_own_listener_not_the_api_port() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);

    // The API's port: no metrics; readiness says whether, the OpenAPI document is public.
    let r = app.get("/metrics", None).await;
    r.assert_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "/metrics on the API's port",
    );
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let doc = app.get("/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(
        doc.body["paths"].get("/metrics").is_none(),
        "not an API route"
    );

    // The operators' listener: the metrics and the readiness, nothing of the API.
    let ops = app.ops_addr.clone().unwrap();
    assert_ne!(ops, app.addr);
    let text = app.metrics_text().await;
    assert!(text.contains("flashsale_http_requests_total"), "{text}");
    assert_eq!(app.ops_get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(app.ops_get("/healthz").await.status(), StatusCode::OK);
    for path in ["/v1/products", "/openapi.json", "/"] {
        let r = app.ops_get(path).await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{path} on the operators' listener"
        );
    }
    // Scraping is not counted as API traffic.
    let text = app.metrics_text().await;
    assert!(!text.contains(r#"route="/metrics""#), "{text}");
}

#[tokio::test]
async fn usernames_are_one_account_whatever_their_case() {
    let app = spawn_app().await;
    let (id, _) = app.register("alice1").await;
    for spelling in ["Alice1", "ALICE1", "aLiCe1"] {
        let r = app.try_register(spelling, "another-password").await;
        r.assert_error(StatusCode::CONFLICT, "already_exists", spelling);
        // The answer does not echo how the existing account is spelled.
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(!message.to_lowercase().contains("alice1"), "{message}");
    }
    // Any spelling signs in to the one account; the password stays case-sensitive.
    let token = app.login("ALICE1", "alice1-password").await;
    let me = app.get("/v1/users/me", Some(&token)).await;
    assert_eq!(
        (me.body["user_id"].as_u64(), me.body["username"].as_str()),
        (Some(id), Some("alice1"))
    );
    let r = app.try_login("Alice1", "ALICE1-PASSWORD").await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated", "");
    // A new mixed-case name is kept in lower case, and says so.
    let r = app.try_register("Bob.Builder", "bob-password").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["username"], "bob.builder");
    app.login("bob.builder", "bob-password").await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = 'ALICE1'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(n, 1, "MySQL compares usernames case-insensitively too");
    // The unique key itself refuses a second spelling (a write that skipped the code).
    let err =
        sqlx::query("INSERT INTO users (username, password_hash) VALUES ('BOB.BUILDER', 'x')")
            .execute(&app.state.db)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("Duplicate entry"), "{err}");
}

/// The migration that makes usernames case-insensitive stops, naming a clash, on a database
/// whose accounts differ only in case, changes nothing, and runs once they are resolved the
/// way docs/OPERATIONS.md says.
#[tokio::test]
async fn the_username_migration_names_a_clash_and_runs_once_it_is_resolved() {
    let (db_name, _) = test_names();
    let mut admin = <sqlx::MySqlConnection as sqlx::Connection>::connect(&mysql_base())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{db_name}`")))
        .execute(&mut admin)
        .await
        .unwrap();
    let pool = sqlx::MySqlPool::connect(&format!("{}/{db_name}", mysql_base()))
        .await
        .unwrap();
    let before = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| *v < 20261212000001)
        .max()
        .unwrap();
    MIGRATOR.run_to(before, &pool).await.unwrap();
    sqlx::query(
        "INSERT INTO users (username, password_hash) VALUES \
         ('Alice1', 'a'), ('alice1', 'b'), ('carol', 'c'), ('Dave', 'd'), ('DAVE', 'e')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let err = MIGRATOR.run(&pool).await.unwrap_err().to_string();
    assert!(
        err.contains("usernames_differ_only_in_case_see_OPERATIONS_md"),
        "{err}"
    );
    assert!(
        err.contains("'alice1'") || err.contains("'dave'"),
        "names a clash: {err}"
    );
    // Nothing changed and nothing is marked half-applied: the next start runs it again.
    let marks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE version > ?")
        .bind(before)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(marks, 0);

    // docs/OPERATIONS.md's query lists every clash.
    let ops = repo_file("docs/OPERATIONS.md");
    let section = ops
        .split("### Usernames that differ only in case")
        .nth(1)
        .expect("docs/OPERATIONS.md has the section");
    let query = section
        .split("```sql\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("with an sql block");
    let clashes: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(query.to_string()))
        .fetch_all(&pool)
        .await
        .unwrap();
    let names: Vec<&str> = clashes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alice1", "dave"], "{clashes:?}");
    assert!(
        clashes[0].1.contains("Alice1") && clashes[0].1.contains("alice1"),
        "{clashes:?}"
    );

    // Resolved by renaming one account of each pair.
    sqlx::query("UPDATE users SET username = CONCAT(LOWER(username), '-2') WHERE username IN ('Alice1', 'DAVE')")
        .execute(&pool)
        .await
        .unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let id: Option<u64> = sqlx::query_scalar("SELECT id FROM users WHERE username = 'ALICE1'")
        .fetch_optional(&pool)
        .await
        .unwrap();
    assert!(id.is_some(), "an old account is found in any case");
    let dup = sqlx::query("INSERT INTO users (username, password_hash) VALUES ('CAROL', 'x')")
        .execute(&pool)
        .await;
    assert!(dup.is_err(), "the unique key ignores case");
    pool.close().await;
    drop_database(&db_name).await;
}

/// A sign-up from `ip` (the app trusts `X-Forwarded-For` here).
async fn sign_up_from(app: &TestApp, ip: &str, username: &str) -> Resp {
    let body = json!({"username": username, "password": "some-password"});
    app.send(
        Method::POST,
        "/v1/users",
        None,
        Some(body),
        &[("x-forwarded-for", ip)],
    )
    .await
}

#[tokio::test]
async fn probing_taken_usernames_by_sign_up_is_bounded_per_address() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_ip_per_min = 1_000.0;
        c.limits.signup_taken_per_min = 3.0;
    })
    .await;
    for name in ["ann", "ben", "cid", "dan"] {
        app.register(name).await;
    }
    // One address learns three taken names, then nothing more: a taken name and a free one get
    // the same 429, so the refusal tells nothing, and the free one is not made.
    const PROBE: &str = "203.0.113.9";
    for name in ["ann", "BEN", "cid"] {
        sign_up_from(&app, PROBE, name).await.assert_error(
            StatusCode::CONFLICT,
            "already_exists",
            name,
        );
    }
    for name in ["dan", "free-name"] {
        let r = sign_up_from(&app, PROBE, name).await;
        r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", name);
        assert!(r.headers.contains_key("retry-after"));
    }
    // A /64 is one address for it too.
    for (i, name) in ["ann", "ben", "cid"].into_iter().enumerate() {
        let ip = format!("2001:db8:3:3::{:x}", i + 1);
        sign_up_from(&app, &ip, name).await.assert_error(
            StatusCode::CONFLICT,
            "already_exists",
            &ip,
        );
    }
    let r = sign_up_from(&app, "2001:db8:3:3:ffff::1", "free-name").await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "same /64");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = 'free-name'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "a refused sign-up made nothing");
    // Sign-ups that find their name free take nothing from that bucket; other addresses are
    // not affected.
    for i in 0..6 {
        let r = sign_up_from(&app, "198.51.100.4", &format!("shopper{i}")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = sign_up_from(&app, "198.51.100.4", "free-name").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// Whether the server closed `s` (or reset it) within `within`.
async fn closed(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn many_connections_from_one_address_do_not_keep_another_waiting() {
    let app = spawn_app_with(|c| {
        c.http.max_connections = 50;
        c.http.max_connections_per_client = 16;
    })
    .await;
    let port = app.addr.rsplit(':').next().unwrap().to_string();
    // One client (127.0.0.1) opens 58 connections and sends nothing on them.
    let mut idle = Vec::new();
    for _ in 0..58 {
        idle.push(
            TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .unwrap(),
        );
    }
    // Another client, 127.0.0.2, is answered at once.
    let other = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = other
        .get(format!("{}/healthz", app.addr))
        .send()
        .await
        .expect("/healthz answers another client within 3 s");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The first client holds its share (16, the test's own keep-alive connection among them):
    // the connections beyond it were closed at once.
    let mut refused = 0;
    for s in &mut idle {
        if closed(s, Duration::from_millis(50)).await {
            refused += 1;
        }
    }
    assert!(refused >= 58 - 16, "{refused} of 58 closed");
    // Once its connections end, the client may open as many again.
    idle.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Vec::new();
    for _ in 0..10 {
        again.push(
            TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .unwrap(),
        );
    }
    for s in &mut again {
        assert!(
            !closed(s, Duration::from_millis(100)).await,
            "a connection within its share closed"
        );
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_its_connections_are_not_capped() {
    let app = spawn_app_with(|c| {
        c.http.max_connections_per_client = 2;
        c.http.trust_forwarded_for = true;
    })
    .await;
    // Every connection comes from the proxy (127.0.0.1): none is closed for its address.
    let mut answers = Vec::new();
    for _ in 0..6 {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let r = client
            .get(format!("{}/healthz", app.addr))
            .send()
            .await
            .expect("answered");
        answers.push((client, r.status()));
    }
    assert!(answers.iter().all(|(_, s)| *s == StatusCode::OK));
}
