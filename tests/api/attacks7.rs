//! Attacks on issue 23 ("Production mode a shop can trust"): published credentials that still
//! start production, tokens that outlive their account, per-address limits that are not per
//! address, secrets on the command line or in error messages. Each test fails on the code it
//! was written against and says why in its comment.

use std::str::FromStr;
use std::time::Duration;

use flashsale::config::Config;
use flashsale::startup::Application;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::ConnectOptions;

use crate::helpers::*;
use crate::production::{flashsale, text};

/// A random value of `n` hex digits (a constant here would be published by this very file).
fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap())
        .collect()
}

/// `cfg` in production mode with strong credentials of its own: passes every check.
fn production(mut cfg: Config) -> Config {
    cfg.auth.production = true;
    cfg.auth.jwt_secret = Some(random_hex(64));
    cfg.auth.admin_password = Some(format!("Adm-{}", random_hex(20)));
    cfg
}

/// A strong production configuration on a fresh (unused) database name: checked, never started.
fn strong_production() -> Config {
    let (db_name, prefix) = test_names();
    let cfg = production(test_config(&db_name, &prefix));
    assert_eq!(cfg.validate(), Ok(()), "the baseline passes");
    cfg
}

/// The environment the binary needs to reach `cfg`'s stores as `cfg` would (no production).
fn env_of(cfg: &Config) -> Vec<(String, String)> {
    [
        ("FLASHSALE_MYSQL_URL", cfg.stores.mysql_url.clone()),
        ("FLASHSALE_REDIS_URL", cfg.stores.redis_url.clone()),
        ("FLASHSALE_REDIS_PREFIX", cfg.stores.redis_prefix.clone()),
        ("FLASHSALE_JWT_SECRET", cfg.auth.jwt_secret.clone().unwrap()),
        (
            "FLASHSALE_ARGON2_MEMORY_KIB",
            cfg.auth.argon2_memory_kib.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Every string value of a key that names a password, anywhere in `v`.
fn password_values(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k.to_ascii_lowercase().contains("password")
                    && let Value::String(s) = v
                {
                    out.push(s.clone());
                }
                password_values(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| password_values(i, out)),
        _ => {}
    }
}

/// DEFECT: the OpenAPI document, public at `GET /openapi.json` on every shop (and generated
/// from src/http/users.rs), publishes example passwords: "correct horse battery" and "staple
/// battery horse correct". They are credentials the repository publishes exactly like
/// README.md's "alice-password", but they are not in src/config/published.rs (the scanner in
/// tests/api/production.rs reads docs/ and the examples, never src/ nor the served document),
/// and they are long and varied enough for the weak-password rule. So a shop that takes the
/// example as its FLASHSALE_ADMIN_PASSWORD starts in production with an admin password that
/// any visitor can read at /openapi.json, the very thing production mode promises to refuse.
#[tokio::test]
async fn production_accepts_the_passwords_the_served_openapi_document_publishes() {
    let app = spawn_app().await;
    let doc = app.get("/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let mut examples = Vec::new();
    password_values(&doc.body, &mut examples);
    examples.sort();
    examples.dedup();
    assert!(
        examples.iter().any(|p| p == "correct horse battery"),
        "the served document's example passwords: {examples:?}"
    );
    let strong = strong_production();
    let accepted: Vec<&String> = examples
        .iter()
        .filter(|p| {
            let mut c = strong.clone();
            c.auth.admin_password = Some(p.to_string());
            c.validate().is_ok()
        })
        .collect();
    assert!(
        accepted.is_empty(),
        "production starts with these admin passwords although GET /openapi.json publishes \
         them: {accepted:?}"
    );
}

/// DEFECT: src/config/url.rs finds a URL's password by splitting the *whole* rest of the URL at
/// its last `@`, while sqlx and redis-rs (the url crate) end the user part at the first `/`.
/// An `@` anywhere after the host (a query value such as `ssl-ca=/etc/ssl/ca@shop.pem`, which
/// sqlx accepts, or any unknown parameter, which both ignore) makes the check read
/// `flashsale@db:3306/flashsale?ssl-ca=/etc/ssl/ca` as the password: it is not published, so
/// production starts with docker-compose.yml's MySQL root password `flashsale` (or README's
/// `pw` for Redis) while the drivers log in with exactly that.
#[tokio::test]
async fn production_misses_a_published_store_password_when_the_url_has_an_at_after_the_host() {
    let mysql_url = "mysql://root:flashsale@db:3306/flashsale?ssl-ca=/etc/ssl/ca@shop.pem";
    let redis_url = "redis://:pw@redis:6379/0?client=shop@eu";
    // What the drivers connect with: the published passwords.
    let mysql = sqlx::mysql::MySqlConnectOptions::from_str(mysql_url).unwrap();
    assert_eq!(mysql.to_url_lossy().password(), Some("flashsale"));
    let redis = redis::Client::open(redis_url).unwrap();
    assert_eq!(
        redis.get_connection_info().redis_settings().password(),
        Some("pw")
    );

    let mut c = strong_production();
    c.stores.mysql_url = mysql_url.into();
    let e = c.validate().err().unwrap_or_default();
    assert!(
        e.contains("the password in FLASHSALE_MYSQL_URL"),
        "production accepted MySQL's published root password `flashsale`: {e:?}"
    );
    let mut c = strong_production();
    c.stores.redis_url = redis_url.into();
    let e = c.validate().err().unwrap_or_default();
    assert!(
        e.contains("the password in FLASHSALE_REDIS_URL"),
        "production accepted the published password `pw` for Redis: {e:?}"
    );
}

/// DEFECT: start-up checks only the account named by FLASHSALE_ADMIN_USERNAME for a published
/// password (src/service/admin_account.rs, `ensure`). The likely path to production: a trial
/// run in dev mode creates `admin` with a published password (here the tests' own
/// `admin-test-password`, in published.rs; in a real trial `admin-dev-password`); the shop then
/// goes live naming its admin `owner`. Production starts, `owner` is created, and `admin` is
/// still an admin with a password from the README, able to log in and run the shop. The same
/// holds for any customer promoted to admin whose password is published (`alice-password`).
#[tokio::test]
async fn production_starts_while_another_admin_keeps_a_published_password() {
    let app = spawn_app().await;
    // The trial's admin logs in with its published password.
    assert_eq!(
        app.try_login("admin", ADMIN_PASSWORD).await.status,
        StatusCode::OK
    );
    let mut prod = production(test_config(&app.db_name, &app.prefix));
    prod.auth.admin_username = "owner".into();
    match Application::build(prod).await {
        Ok(started) => {
            let base = format!("http://127.0.0.1:{}", started.port());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(started.run_until(async {
                let _ = stopped.await;
            }));
            let login = reqwest::Client::new()
                .post(format!("{base}/v1/auth/token"))
                .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
                .send()
                .await
                .unwrap();
            let status = login.status();
            let _ = stop.send(());
            server.await.unwrap().unwrap();
            panic!(
                "production started while the admin account `admin` has a published password; \
                 logging in as it with that password answered {status}"
            );
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("publishes"), "refused, but not for that: {e}");
        }
    }
}

/// DEFECT: the weak-secret rule counts bytes and distinct bytes only, so the most guessable
/// values pass it. `0123456789abcdef0123456789abcdef` is the JWT secret of src/auth.rs's own
/// tests (published in the repository, and a keyboard walk besides): 32 bytes, 16 distinct,
/// accepted; whoever guesses it mints admin tokens (the token check then only wants an
/// existing id with version 0, like a fresh `admin`). `password1234` and `adminadmin12` pass
/// the admin rule (12 bytes, 11 and 7 distinct); `replace-me-...` is a placeholder as plain as
/// `change-me`, but only the latter's spellings are refused. A shop expects production to
/// refuse these.
#[test]
fn production_accepts_guessable_secrets() {
    let strong = strong_production();
    let mut accepted = Vec::new();
    for secret in [
        "0123456789abcdef0123456789abcdef",
        "abcdefghijklmnopqrstuvwxyz012345",
        // A template's placeholder: only `change-me` spellings are recognised as one.
        "replace-me-with-a-long-random-secret",
    ] {
        let mut c = strong.clone();
        c.auth.jwt_secret = Some(secret.into());
        if c.validate().is_ok() {
            accepted.push(format!("FLASHSALE_JWT_SECRET={secret}"));
        }
    }
    for password in ["password1234", "adminadmin12", "qwerty123456"] {
        let mut c = strong.clone();
        c.auth.admin_password = Some(password.into());
        if c.validate().is_ok() {
            accepted.push(format!("FLASHSALE_ADMIN_PASSWORD={password}"));
        }
    }
    assert!(
        accepted.is_empty(),
        "production accepts guessable credentials: {accepted:?}"
    );
}

/// DEFECT: `flashsale admin-password` says the password comes "from standard input or
/// FLASHSALE_ADMIN_PASSWORD, never from the command line, where the machine's other users (ps)
/// and the shell's history would see it", and refuses it as an argument. But the global
/// `--admin-password` flag feeds `--from-env`: `flashsale admin-password --from-env
/// --admin-password <new>` changes the admin's password from the command line, visible in
/// `ps` and in the shell history, with a success message.
#[tokio::test]
async fn admin_password_takes_the_password_from_a_command_line_flag() {
    let app = spawn_app().await;
    let env = env_of(&test_config(&app.db_name, &app.prefix));
    let new = format!("Argv-{}", random_hex(16));
    let out = flashsale(
        &["admin-password", "--from-env", "--admin-password", &new],
        &env,
        "",
    )
    .await;
    let changed = app.try_login("admin", &new).await.status == StatusCode::OK;
    assert!(
        !out.status.success() && !changed,
        "the admin's password was taken from the command line (changed: {changed}): {}",
        text(&out)
    );
}

/// DEFECT: a token names its account by id and version only, and every account starts at
/// version 0. `flashsale mint-tokens` makes its `load-<id>` accounts with explicit ids
/// (`INSERT IGNORE ... (id, ...)`), skipping only ids held *now*: the id of a deleted customer
/// is free again, so the account comes back at version 0 under that id, and the deleted
/// customer's old token (version 0) is accepted again, as `load-<id>`. "Tokens for nonexistent
/// users refused" holds only until an id is re-created; deletion should leave something that
/// keeps old versions dead (a tombstone, or a version that never goes back to 0).
#[tokio::test]
#[ignore = "open (issue 23): only the load tools (mint-tokens, simulate) create accounts with chosen ids; a deleted id they re-create starts at version 0 again"]
async fn a_deleted_customers_token_comes_back_when_its_id_is_recreated() {
    let app = spawn_app().await;
    let (id, token) = app.register("gone-soon").await;
    assert_eq!(
        app.get("/v1/users/me", Some(&token)).await.status,
        StatusCode::OK
    );
    let admin = app.admin_login().await;
    assert_eq!(
        app.try_delete_user(&admin, id).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/v1/users/me", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let env = env_of(&app.state.cfg);
    let first = id.to_string();
    let out = flashsale(
        &["mint-tokens", "--count", "1", "--first-user-id", &first],
        &env,
        "",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    // Past this instance's cache of the deletion (1 s), and past the deletion's note in
    // Redis (kept NOTE_TTL, 60 s; removed here instead of waiting it out).
    tokio::time::sleep(flashsale::service::tokens::CHECK_TTL + Duration::from_millis(200)).await;
    let _ = redis::cmd("DEL")
        .arg(format!("{}:{{user:{id}}}:account", app.prefix))
        .query_async::<i64>(&mut app.state.redis.conn())
        .await;
    let me = app.get("/v1/users/me", Some(&token)).await;
    assert_eq!(
        me.status,
        StatusCode::UNAUTHORIZED,
        "the deleted customer's token is accepted again: {:?}",
        me.body
    );
}

/// A login from `forwarded` (the app trusts `X-Forwarded-For`).
async fn login_from(app: &TestApp, forwarded: &str) -> StatusCode {
    app.send(
        Method::POST,
        "/v1/auth/token",
        None,
        Some(json!({"username": "nobody-here", "password": "wrong-password"})),
        &[("x-forwarded-for", forwarded)],
    )
    .await
    .status
}

/// DEFECT: with FLASHSALE_TRUST_FORWARDED_FOR, a last `X-Forwarded-For` entry that is not a
/// bare IP address silently falls back to the TCP peer, i.e. the proxy (src/server.rs,
/// `client_ip`). Proxies that append `ip:port` (Azure Application Gateway does:
/// `203.0.113.7:50123`), or a bracketed IPv6 (`[2001:db8::1]:443`), thus put every client in
/// one bucket: one client's few bad logins (or sign-ups that find taken names) answer 429 to
/// every customer of the shop. The entry should be read with its port (or the start refused /
/// logged loudly), never turned into "everyone is the proxy".
#[tokio::test]
async fn a_forwarded_for_entry_with_a_port_puts_every_client_in_one_bucket() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_ip_per_min = 3.0;
    })
    .await;
    // The noisy client spends its share (3 a minute) of attempts.
    let mut spent = 0;
    while login_from(&app, "198.51.100.1:50001").await != StatusCode::TOO_MANY_REQUESTS {
        spent += 1;
        assert!(spent <= 10, "the noisy client is never limited");
    }
    for other in ["203.0.113.77:40000", "[2001:db8:9::1]:443"] {
        assert_eq!(
            login_from(&app, other).await,
            StatusCode::UNAUTHORIZED,
            "{other}, another client, is refused for the first one's attempts"
        );
    }
}

/// DEFECT: an OTLP endpoint that the check refuses is echoed whole into the error (and so to
/// stderr and the deployment's logs), query included: `{endpoint:?}` is shown unless it has an
/// `@`. Vendors' endpoints carry their ingest key in the query (`?api-key=...`), and the code
/// knows it: `TraceExport::endpoint_for_logs` drops the query, src/config/url.rs redacts
/// `key`/`token` parameters; the error path does neither.
#[test]
fn a_refused_otlp_endpoint_shows_its_key_in_the_error() {
    let mut c = strong_production();
    c.otel.otel_exporter_otlp_endpoint =
        Some("grpc://otlp.vendor.example:4317/?api-key=otlp-key-marker".into());
    let e = c.validate().expect_err("a gRPC endpoint is refused");
    assert!(
        !e.contains("otlp-key-marker"),
        "the endpoint's key is in the error: {e}"
    );
}

/// DEFECT: a published value shorter than 16 bytes is refused only whole (src/config/published.rs,
/// `CONTAINED_FROM`), so the laziest change to it passes: `alice-password-1` (README's customer
/// password with `-1`) as the admin password, `flashsale1` (docker-compose.yml's MySQL root
/// password with a digit) in the MySQL URL, while `admin-dev-password1` is refused by the same
/// rule. The URL's password gets no weakness rule at all, so nothing else catches it. Anyone who
/// tries the published values tries these next.
#[test]
fn production_accepts_a_short_published_value_with_a_character_added() {
    let strong = strong_production();
    let mut accepted = Vec::new();
    let mut c = strong.clone();
    c.auth.admin_password = Some("admin-dev-password1".into());
    assert!(c.validate().is_err(), "the long published value is refused");
    for password in ["alice-password-1", "Alice-Password!"] {
        let mut c = strong.clone();
        c.auth.admin_password = Some(password.into());
        if c.validate().is_ok() {
            accepted.push(format!("FLASHSALE_ADMIN_PASSWORD={password}"));
        }
    }
    for password in ["flashsale1", "Flashsale!"] {
        let mut c = strong.clone();
        c.stores.mysql_url = format!("mysql://root:{password}@db:3306/flashsale");
        if c.validate().is_ok() {
            accepted.push(format!("the MySQL URL's password {password}"));
        }
    }
    assert!(
        accepted.is_empty(),
        "production accepts a published value with one character added: {accepted:?}"
    );
}

/// The median time of `n` failed logins of `username` at `base`.
async fn login_time(base: &str, username: &str, n: usize) -> Duration {
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for _ in 0..n {
        let started = std::time::Instant::now();
        let status = client
            .post(format!("{base}/v1/auth/token"))
            .json(&json!({"username": username, "password": "not-this-one-either"}))
            .send()
            .await
            .unwrap()
            .status();
        times.push(started.elapsed());
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    times.sort();
    times[n / 2]
}

/// DEFECT: "a login never says whether a username exists ... the unknown name checked against
/// the dummy hash, so it costs the same time" (DESIGN.md) holds only while every stored hash
/// has today's FLASHSALE_ARGON2_MEMORY_KIB. A verify uses the stored hash's own parameters, the
/// dummy hash today's, and no login rehashes: once a shop raises the cost (as OWASP's advice
/// moves), every account made before answers a wrong password many times faster than an
/// unknown name does, so timing tells which usernames exist, with no sign-up and no 409 spent.
/// (`mint-tokens`' accounts carry the dummy hash of whatever cost that run had, likewise.)
#[tokio::test]
#[ignore = "open (issue 23): hashes are not upgraded at login, so after a cost rise an old hash answers faster than the dummy"]
async fn after_the_argon2_cost_is_raised_login_timing_tells_which_usernames_exist() {
    let app = spawn_app().await; // argon2 at 1 MiB, the tests' setting
    app.register("oldtimer").await;
    let mut raised = test_config(&app.db_name, &app.prefix);
    raised.auth.argon2_memory_kib = 32 * 1024;
    let started = Application::build(raised).await.unwrap();
    let base = format!("http://127.0.0.1:{}", started.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(started.run_until(async {
        let _ = stopped.await;
    }));
    let known = login_time(&base, "oldtimer", 5).await;
    let unknown = login_time(&base, "never-was-here", 5).await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert!(
        unknown < known * 3,
        "a wrong password takes {known:?} for an existing account and {unknown:?} for an \
         unknown name: the time says which names exist"
    );
}

/// DEFECT: with FLASHSALE_TRUST_FORWARDED_FOR, `client_ip` reads `X-Forwarded-For` through
/// `HeaderValue::to_str`, which fails on any byte outside visible ASCII, and then falls back to
/// the TCP peer, the proxy. A proxy that appends to the client's header (nginx
/// `$proxy_add_x_forwarded_for` sends `<client's value>, <client address>`) passes an obs-text
/// byte through, so a client that sends `X-Forwarded-For: \x80` gets its requests counted as
/// the proxy's: a fresh bucket (one per proxy node), out of reach of its own exhausted one,
/// and shared with, so able to exhaust for, every other request that falls back. Here the
/// client at 198.51.100.7 has spent its logins and goes on guessing as "the proxy".
#[tokio::test]
async fn a_non_ascii_forwarded_for_moves_a_client_out_of_its_own_bucket() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_ip_per_min = 3.0;
    })
    .await;
    const CLIENT: &str = "198.51.100.7";
    let mut spent = 0;
    while login_from(&app, CLIENT).await != StatusCode::TOO_MANY_REQUESTS {
        spent += 1;
        assert!(spent <= 10, "the client is never limited");
    }
    // What nginx forwards when the same client sends `X-Forwarded-For: \x80`.
    let mut value = vec![0x80u8];
    value.extend_from_slice(format!(", {CLIENT}").as_bytes());
    let status = app
        .client
        .post(format!("{}/v1/auth/token", app.addr))
        .header(
            "x-forwarded-for",
            reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
        )
        .json(&json!({"username": "nobody-here", "password": "wrong-password"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the client at {CLIENT}, out of attempts, got another one by adding a \\x80 byte"
    );
}

/// DEFECT: published.rs says `admin-dev-password1` "is no better than `admin-dev-password`",
/// and production refuses it as FLASHSALE_ADMIN_PASSWORD, but the start-up check of an
/// existing admin only tries the published values verbatim (src/service/admin_account.rs,
/// `check_existing`). A trial run in dev mode with FLASHSALE_ADMIN_PASSWORD=admin-dev-password1
/// (dev checks nothing) leaves the admin with it, and production then starts on that database
/// with a strong FLASHSALE_ADMIN_PASSWORD that the account does not have (only a warning),
/// the admin still reachable with the published password plus `1`. Start-up could try the
/// variants the rule names (case, a digit or two added) or refuse whenever the configured
/// password does not verify in production.
#[tokio::test]
#[ignore = "open (issue 23): start-up can try only exact published passwords against a stored hash, not their variants; this test passes today only because the harness's own admin has a published password"]
async fn production_starts_with_an_admin_whose_password_is_a_refused_variant() {
    const VARIANT: &str = "admin-dev-password1";
    let app = spawn_app().await;
    // The trial run: dev mode, its admin created with the variant.
    let mut dev = test_config(&app.db_name, &app.prefix);
    dev.auth.admin_username = "trialadmin".into();
    dev.auth.admin_password = Some(VARIANT.into());
    drop(Application::build(dev.clone()).await.unwrap());
    let prod = production(dev);
    let mut refused_as_setting = prod.clone();
    refused_as_setting.auth.admin_password = Some(VARIANT.into());
    assert!(
        refused_as_setting.validate().is_err(),
        "production refuses it as a setting"
    );
    match Application::build(prod).await {
        Ok(started) => {
            drop(started);
            assert_eq!(
                app.try_login("trialadmin", VARIANT).await.status,
                StatusCode::OK,
                "the admin logs in with the variant"
            );
            panic!(
                "production started while the admin's password is {VARIANT:?}, which it \
                 refuses as FLASHSALE_ADMIN_PASSWORD"
            );
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("publishes"), "refused, but not for that: {e}");
        }
    }
}

/// A sign-up from `forwarded` (the app trusts `X-Forwarded-For`).
async fn sign_up_from(app: &TestApp, forwarded: &str, username: &str) -> Resp {
    app.send(
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"username": username, "password": "some-password-1"})),
        &[("x-forwarded-for", forwarded)],
    )
    .await
}

/// DEFECT (design): every per-address limit keys an IPv6 client by its /64 because "one
/// subscriber holds a whole /64" (API.md). Subscribers are delegated more: RIPE-690 advises a
/// /48 or /56 per end site, and a /56 (256 /64s) or /60 (16) is what home lines commonly get.
/// One household therefore holds 256 separate buckets of everything, the sign-up probe of
/// taken names included: 10 names a minute becomes 2,560, and the failed-login and connection
/// caps likewise. Here the second /64 of the same /56 probes on after the first is refused.
#[tokio::test]
#[ignore = "design choice kept: an IPv6 client is its /64 (the issue's rule); a /56 per household is not assumed"]
async fn one_household_s_ipv6_delegation_holds_hundreds_of_per_address_buckets() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limits = true;
        c.http.trust_forwarded_for = true;
        c.limits.login_ip_per_min = 1_000.0;
        c.limits.signup_taken_per_min = 2.0;
    })
    .await;
    for name in ["ann", "ben", "cid"] {
        app.register(name).await;
    }
    for name in ["ann", "ben"] {
        sign_up_from(&app, "2001:db8:5:100::1", name)
            .await
            .assert_error(StatusCode::CONFLICT, "already_exists", name);
    }
    sign_up_from(&app, "2001:db8:5:100::1", "cid")
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "its share");
    // The next /64 of the same /56.
    let r = sign_up_from(&app, "2001:db8:5:101::1", "cid").await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the same household's next /64 learns that `cid` exists: {:?}",
        r.body
    );
}

/// DEFECT: published.rs lists the tests' admin password (`admin-test-password`, from
/// tests/api/helpers/spawn.rs) because anyone who reads the repository knows it; but the scanner
/// that keeps the list complete reads docker-compose.yml, README.md, docs/ and the examples only,
/// never src/ or tests/, and the other credentials written there pass production: the "strong"
/// values of src/config's own unit tests (a JWT secret labelled as the one that passes, an
/// admin password), the tests' load-account password, the webhook secret of
/// tests/api/production.rs. A shop copying "the value the test says is fine" is exactly who
/// production mode is for.
#[test]
fn production_accepts_credentials_published_in_src_and_tests() {
    let strong = strong_production();
    let mut accepted = Vec::new();
    // src/config/production.rs `a_strong_configuration_passes`, src/config/mod.rs.
    for secret in [
        "9f2c4e1a7b3d5f60812ab4c6d8e0f1a3",
        "0d5f2b9c81e7a4360d5f2b9c81e7a436",
    ] {
        let mut c = strong.clone();
        c.auth.jwt_secret = Some(secret.into());
        if c.validate().is_ok() {
            accepted.push(format!("FLASHSALE_JWT_SECRET={secret}"));
        }
    }
    // src/config/production.rs, src/config/mod.rs, tests/api/helpers/accounts.rs.
    for password in ["Tq7-vL2m-Zx9c", "correct-horse-7", LOAD_PASSWORD] {
        let mut c = strong.clone();
        c.auth.admin_password = Some(password.into());
        if c.validate().is_ok() {
            accepted.push(format!("FLASHSALE_ADMIN_PASSWORD={password}"));
        }
    }
    // tests/api/production.rs.
    let mut c = strong.clone();
    c.webhooks.webhook_url = Some("https://hooks.shop.example/flashsale".into());
    c.webhooks.webhook_secret = Some("whsec-0123456789abcdef".into());
    if c.validate().is_ok() {
        accepted.push("FLASHSALE_WEBHOOK_SECRET=whsec-0123456789abcdef".into());
    }
    assert!(
        accepted.is_empty(),
        "production accepts credentials written in the repository's src/ and tests/: \
         {accepted:?}"
    );
}
