//! Production mode a shop can trust (issue 23): no credential the repository publishes is
//! accepted, an admin account still holding one stops the start until its password is changed
//! (`flashsale admin-password`), the JWT secret rotates without logging anyone out, and no
//! secret is printed by `--help` or the logs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use flashsale::auth::Jwt;
use flashsale::config::published::{PUBLISHED, is_published};
use flashsale::config::{Config, DEV_ADMIN_PASSWORD};
use flashsale::domain::Role;
use flashsale::startup::Application;
use flashsale::store::mysql;
use rand::Rng;
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A random value of `n` hex digits: strong, and published nowhere (a constant in this file
/// would be).
fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap())
        .collect()
}

/// `cfg` in production mode with strong credentials of its own.
fn production(mut cfg: Config) -> Config {
    cfg.auth.production = true;
    cfg.auth.jwt_secret = Some(random_hex(64));
    cfg.auth.admin_password = Some(format!("Adm-{}", random_hex(20)));
    cfg
}

/// The settings of `cfg` that matter here, as the binary's environment.
fn env_of(cfg: &Config) -> Vec<(String, String)> {
    let mut env = vec![
        ("FLASHSALE_MYSQL_URL", cfg.stores.mysql_url.clone()),
        ("FLASHSALE_REDIS_URL", cfg.stores.redis_url.clone()),
        ("FLASHSALE_REDIS_PREFIX", cfg.stores.redis_prefix.clone()),
        ("FLASHSALE_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("FLASHSALE_ADMIN_USERNAME", cfg.auth.admin_username.clone()),
        (
            "FLASHSALE_ARGON2_MEMORY_KIB",
            cfg.auth.argon2_memory_kib.to_string(),
        ),
        ("FLASHSALE_PRODUCTION", cfg.auth.production.to_string()),
    ];
    if let Some(s) = &cfg.auth.jwt_secret {
        env.push(("FLASHSALE_JWT_SECRET", s.clone()));
    }
    if let Some(p) = &cfg.auth.admin_password {
        env.push(("FLASHSALE_ADMIN_PASSWORD", p.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Runs the binary with `args`, only `env` as its FLASHSALE_* and OTEL_* environment, `stdin`
/// on its standard input; killed (and the test failed) when it has not ended within 30 s.
pub(crate) async fn flashsale(args: &[&str], env: &[(String, String)], stdin: &str) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"));
    for (k, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("FLASHSALE_") || k.starts_with("OTEL_"))
    {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the flashsale binary starts");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`flashsale {}` still runs after 30 s", args.join(" ")))
        .unwrap()
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A login at `base`: its status.
async fn login(base: &str, username: &str, password: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{base}/v1/auth/token"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

/// docker-compose.yml's service environment, with FLASHSALE_PRODUCTION=true, as a shop that
/// copied it would run: refused, every published value named, none shown.
#[tokio::test]
async fn production_refuses_the_credentials_docker_compose_ships() {
    let compose: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let mut env: Vec<(String, String)> = compose["services"]["app"]["environment"]
        .as_mapping()
        .expect("the app's environment")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect();
    let shipped = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("docker-compose.yml sets {name}"))
    };
    let (secret, password, url) = (
        shipped("FLASHSALE_JWT_SECRET"),
        shipped("FLASHSALE_ADMIN_PASSWORD"),
        shipped("FLASHSALE_MYSQL_URL"),
    );
    env.push(("FLASHSALE_PRODUCTION".into(), "true".into()));
    let out = flashsale(&["serve"], &env, "").await;
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    for refusal in [
        "FLASHSALE_JWT_SECRET is a value this repository publishes",
        "FLASHSALE_ADMIN_PASSWORD is a value this repository publishes",
        "the password in FLASHSALE_MYSQL_URL is a value this repository publishes",
        "openssl rand",
    ] {
        assert!(said.contains(refusal), "{refusal:?} not in: {said}");
    }
    let (_, url_password) = url.rsplit_once(':').unwrap();
    for value in [secret.as_str(), password.as_str(), url_password] {
        assert!(!said.contains(value), "{value:?} shown: {said}");
    }
}

/// Each published value, alone in an otherwise strong production configuration, is refused
/// before anything connects; the same configuration with strong values passes the checks.
#[tokio::test]
async fn production_refuses_each_published_credential_alone() {
    let (db_name, prefix) = test_names();
    let strong = production(test_config(&db_name, &prefix));
    assert_eq!(strong.validate(), Ok(()));
    for value in PUBLISHED {
        let mut c = strong.clone();
        c.auth.admin_password = Some(value.to_string());
        let e = c.validate().expect_err(value);
        assert!(e.contains("FLASHSALE_ADMIN_PASSWORD is a value"), "{e}");
        let mut c = strong.clone();
        c.auth.jwt_secret = Some(value.to_string());
        assert!(c.validate().is_err(), "JWT secret {value:?}");
        let mut c = strong.clone();
        c.stores.mysql_url = format!("mysql://shop:{value}@db:3306/shop");
        let e = c.validate().expect_err(value);
        assert!(e.contains("FLASHSALE_MYSQL_URL"), "{e}");
        assert!(!e.contains(&format!(":{value}@")), "{e}");
    }
    // Weak ones too.
    for weak in ["x".repeat(40), "abcabcabcabcabcabcabcabcabcabcabc".into()] {
        let mut c = strong.clone();
        c.auth.jwt_secret = Some(weak.clone());
        assert!(c.validate().is_err(), "{weak}");
    }
}

/// A trial run without FLASHSALE_ADMIN_PASSWORD left the admin with the dev password: production
/// on that database refuses to start, saying how to change it, instead of starting with the dev
/// password live and the configured one refused. `flashsale admin-password --from-env`
/// (production's own settings) changes it; then production starts, the configured password
/// logs in and the dev one no longer does.
#[tokio::test]
async fn production_refuses_an_admin_with_the_dev_password_until_it_is_changed() {
    let app = spawn_app().await;
    let mut dev = test_config(&app.db_name, &app.prefix);
    dev.auth.admin_username = "shopadmin".into();
    dev.auth.admin_password = None;
    drop(Application::build(dev.clone()).await.unwrap());
    assert_eq!(
        app.try_login("shopadmin", DEV_ADMIN_PASSWORD).await.status,
        StatusCode::OK
    );

    let prod = production(dev);
    let configured = prod.auth.admin_password.clone().unwrap();
    let e = format!(
        "{:#}",
        Application::build(prod.clone())
            .await
            .err()
            .expect("production refuses to start")
    );
    assert!(
        e.contains("\"shopadmin\" has a password this repository publishes"),
        "{e}"
    );
    assert!(e.contains("flashsale admin-password --from-env"), "{e}");
    assert!(
        !e.contains(DEV_ADMIN_PASSWORD) && !e.contains(&configured),
        "{e}"
    );

    let out = flashsale(&["admin-password", "--from-env"], &env_of(&prod), "").await;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("changed the password of the admin account \"shopadmin\""),
        "{said}"
    );
    assert!(!said.contains(&configured), "the password shown: {said}");

    // The harness's own admin `admin` (the published `admin-test-password`) is an admin too:
    // production names it until it is gone, here deleted by `shopadmin` through the API.
    let e = format!(
        "{:#}",
        Application::build(prod.clone())
            .await
            .err()
            .expect("refused while `admin` has a published password")
    );
    assert!(e.contains("\"admin\" (id"), "{e}");
    assert!(e.contains("DELETE /v1/users/{id}"), "{e}");
    let old_admin = app.admin_login().await;
    let old_id = app.get("/v1/users/me", Some(&old_admin)).await.body["user_id"]
        .as_u64()
        .unwrap();
    let shop = app.login("shopadmin", &configured).await;
    assert_eq!(
        app.try_delete_user(&shop, old_id).await.status,
        StatusCode::NO_CONTENT
    );

    let started = Application::build(prod)
        .await
        .expect("production starts now");
    let base = format!("http://127.0.0.1:{}", started.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(started.run_until(async {
        let _ = stopped.await;
    }));
    assert_eq!(login(&base, "shopadmin", &configured).await, StatusCode::OK);
    assert_eq!(
        login(&base, "shopadmin", DEV_ADMIN_PASSWORD).await,
        StatusCode::UNAUTHORIZED
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// `flashsale admin-password` takes the password from standard input only (no argument), and
/// refuses a published or weak one whatever the mode, changing nothing; a good one replaces the
/// old at once, without a restart, is never printed, and ends the admin's earlier tokens.
#[tokio::test]
async fn admin_password_reads_standard_input_and_refuses_published_or_weak_ones() {
    let app = spawn_app().await;
    let env = env_of(&test_config(&app.db_name, &app.prefix));
    let new = format!("Fresh-{}", random_hex(16));

    let out = flashsale(&["admin-password", &new], &env, "").await;
    assert!(
        !out.status.success(),
        "a password as an argument: {}",
        text(&out)
    );
    for (input, why) in [
        (format!("{DEV_ADMIN_PASSWORD}\n"), "publishes"),
        ("admin-dev-password-2\n".to_string(), "publishes"),
        ("short-1\n".to_string(), "shorter than 12"),
        ("abababababababab\n".to_string(), "different characters"),
        (String::new(), "no password"),
    ] {
        let out = flashsale(&["admin-password"], &env, &input).await;
        let said = text(&out);
        assert!(!out.status.success(), "{input:?} accepted: {said}");
        assert!(said.contains(why), "{input:?}: {said}");
    }
    assert_eq!(
        app.try_login("admin", ADMIN_PASSWORD).await.status,
        StatusCode::OK,
        "nothing changed"
    );

    // The admin's token from before, used (so its account is in this instance's cache and
    // noted in Redis) before the change.
    let warehouses = |t: String| {
        let app = &app;
        async move {
            app.post("/v1/warehouses", Some(&t), serde_json::json!({"name": "w"}))
                .await
                .status
        }
    };
    assert_eq!(
        warehouses(app.admin_token.clone()).await,
        StatusCode::CREATED
    );
    let out = flashsale(&["admin-password"], &env, &format!("{new}\r\n")).await;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("earlier tokens are refused"), "{said}");
    // Past this instance's cache life (1 s) the earlier token is refused.
    tokio::time::sleep(flashsale::service::tokens::CHECK_TTL + Duration::from_millis(200)).await;
    assert_eq!(
        warehouses(app.admin_token.clone()).await,
        StatusCode::UNAUTHORIZED,
        "the admin's token from before the change"
    );
    assert!(!said.contains(&new), "the password shown: {said}");
    assert!(
        said.contains("set FLASHSALE_ADMIN_PASSWORD to the same password"),
        "{said}"
    );
    assert_eq!(app.try_login("admin", &new).await.status, StatusCode::OK);
    assert_eq!(
        app.try_login("admin", ADMIN_PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// A service started with a FLASHSALE_ADMIN_PASSWORD other than the existing admin's says so
/// in its log (which password is neither), instead of nothing.
#[tokio::test]
async fn a_configured_admin_password_the_account_does_not_have_is_logged() {
    let app = spawn_app().await;
    let mut cfg = test_config(&app.db_name, &app.prefix);
    let configured = format!("Other-{}", random_hex(16));
    cfg.auth.admin_password = Some(configured.clone());
    let port = free_port();
    let log = std::env::temp_dir().join(format!("{}-admin.log", app.prefix));
    let svc = Service::start(Service::env_of(&cfg, port), log.clone(), port).await;
    let said = std::fs::read_to_string(&log).unwrap();
    drop(svc);
    let _ = std::fs::remove_file(&log);
    assert!(
        said.contains("the admin account's password is not FLASHSALE_ADMIN_PASSWORD"),
        "{said}"
    );
    assert!(
        !said.contains(&configured) && !said.contains(ADMIN_PASSWORD),
        "{said}"
    );
    assert_eq!(
        app.try_login("admin", ADMIN_PASSWORD).await.status,
        StatusCode::OK,
        "the account keeps its password"
    );
}

/// Rotation: with the new secret current and the old one as FLASHSALE_JWT_SECRET_PREVIOUS, the
/// tokens of both are accepted, new tokens are signed with the new one only, and a third
/// secret's are refused; once PREVIOUS is removed the old tokens are refused.
#[tokio::test]
async fn the_previous_jwt_secret_is_accepted_but_never_signs() {
    let (old, new) = (random_hex(64), random_hex(64));
    let app = spawn_app_with(|c| {
        c.auth.jwt_secret = Some(new.clone());
        c.auth.jwt_secret_previous = Some(old.clone());
    })
    .await;
    let sku = app.sale_product(5, None).await;
    let name = flashsale::domain::Username::parse("admin").unwrap();
    let admin = mysql::users::find_by_username(&app.state.db, &name)
        .await
        .unwrap()
        .unwrap();
    let version = mysql::users::find_account(&app.state.db, admin.id)
        .await
        .unwrap()
        .unwrap()
        .token_version;
    let report = format!("/v1/products/{sku}/sales-report");
    let signed = |secret: &str| {
        Jwt::new(secret.as_bytes(), Duration::from_secs(600))
            .issue(admin.id, Role::Admin, version)
            .unwrap()
    };
    let (by_old, by_new, by_other) = (signed(&old), signed(&new), signed(&random_hex(64)));
    assert_eq!(app.get(&report, Some(&by_old)).await.status, StatusCode::OK);
    assert_eq!(app.get(&report, Some(&by_new)).await.status, StatusCode::OK);
    assert_eq!(
        app.get(&report, Some(&by_other)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The login's token is signed with the new secret.
    let issued = app.login("admin", ADMIN_PASSWORD).await;
    let verify =
        |secret: &str| Jwt::new(secret.as_bytes(), Duration::from_secs(60)).verify(&issued);
    assert!(verify(&new).is_ok());
    assert!(verify(&old).is_err());

    // The rotation's end: the same database and prefix, without PREVIOUS.
    let mut after = test_config(&app.db_name, &app.prefix);
    after.auth.jwt_secret = Some(new.clone());
    let started = Application::build(after).await.unwrap();
    let base = format!("http://127.0.0.1:{}", started.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(started.run_until(async {
        let _ = stopped.await;
    }));
    let status = |token: String| {
        let url = format!("{base}{report}");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(by_new).await, StatusCode::OK);
    assert_eq!(status(by_old).await, StatusCode::UNAUTHORIZED);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// `flashsale serve --help` shows where each setting comes from, never the value of one that
/// may carry a credential (URLs, secrets, passwords, endpoints), even when the environment sets
/// it; the MySQL URL's password included.
#[tokio::test]
async fn serve_help_shows_no_secret_value() {
    let help = flashsale(&["serve", "--help"], &[], "").await;
    let names: Vec<String> = String::from_utf8_lossy(&help.stdout)
        .split("[env: ")
        .skip(1)
        .map(|s| s.split(['=', ']']).next().unwrap().to_string())
        .collect();
    assert!(names.len() > 40, "{names:?}");
    let env: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.clone(), format!("value-of-{n}")))
        .chain([(
            "FLASHSALE_MYSQL_URL".to_string(),
            "mysql://shop:hunter2-marker@db:3306/shop".to_string(),
        )])
        .collect();
    let out = flashsale(&["serve", "--help"], &env, "").await;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("hunter2-marker"), "{said}");
    let credential = |n: &str| {
        ["URL", "SECRET", "PASSWORD", "ENDPOINT", "HEADERS"]
            .iter()
            .any(|w| n.contains(w))
    };
    let hidden: Vec<&String> = names.iter().filter(|n| credential(n)).collect();
    for name in &hidden {
        assert!(
            !said.contains(&format!("value-of-{name}")),
            "{name} shown: {said}"
        );
    }
    for name in [
        "FLASHSALE_MYSQL_URL",
        "FLASHSALE_REDIS_URL",
        "FLASHSALE_JWT_SECRET",
        "FLASHSALE_JWT_SECRET_PREVIOUS",
        "FLASHSALE_ADMIN_PASSWORD",
        "FLASHSALE_WEBHOOK_URL",
        "FLASHSALE_WEBHOOK_SECRET",
    ] {
        assert!(hidden.iter().any(|n| *n == name), "{name} not in the help");
    }
}

/// A store URL's password is not in the start-up error; a webhook URL's token is neither in
/// the failed delivery's error (logged, and kept in webhook-dead).
#[tokio::test]
async fn urls_are_shown_without_their_credentials() {
    let (db_name, prefix) = test_names();
    let mut cfg = test_config(&db_name, &prefix);
    cfg.stores.mysql_url = format!("mysql://root:db-pass-marker@127.0.0.1:{}/x", free_port());
    let out = flashsale(&["serve"], &env_of(&cfg), "").await;
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("mysql://root:***@127.0.0.1"), "{said}");
    assert!(!said.contains("db-pass-marker"), "{said}");

    let closed = free_port();
    let app = spawn_app_with(|c| {
        c.webhooks.webhook_url = Some(format!(
            "http://127.0.0.1:{closed}/hook?token=hook-token-marker"
        ));
        c.webhooks.webhook_secret = Some("whsec-0123456789abcdef".into());
        c.webhooks.webhook_max_attempts = 1;
        c.webhooks.webhook_retry = Duration::from_millis(50);
    })
    .await;
    let sku = app.sale_product(5, None).await;
    app.buy_and_pay(9301, sku, 1).await;
    app.write_back().await;
    let dead_key = format!("{}:webhook-dead", app.prefix);
    let mut conn = app.state.redis.conn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let errors = loop {
        let dead: redis::streams::StreamRangeReply = conn.xrange_all(&dead_key).await.unwrap();
        let errors: Vec<String> = dead
            .ids
            .iter()
            .map(|d| d.get::<String>("error").unwrap_or_default())
            .collect();
        if !errors.is_empty() {
            break errors;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery set aside"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for e in &errors {
        assert!(!e.contains("hook-token-marker"), "{e}");
    }
}

/// The files the repository publishes as documentation and examples.
const SCANNED: &[&str] = &[
    "docker-compose.yml",
    "Dockerfile",
    "README.md",
    "docs",
    "deploy",
    "postman",
    "scripts",
    "browser",
    "fuzz",
    "web",
    "grafana",
];

fn files_under(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            let p = entry.unwrap().path();
            if !p.ends_with("node_modules") {
                files_under(&p, out);
            }
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    }
}

/// Every credential-looking value in the published files is in src/config/published.rs, so
/// production refuses it: a new example with a password cannot slip past.
#[test]
fn every_credential_the_repository_publishes_is_in_the_list() {
    let mut files = Vec::new();
    for p in SCANNED {
        files_under(&Path::new(ROOT).join(p), &mut files);
    }
    let mut found = BTreeSet::new();
    let mut missing = Vec::new();
    for file in &files {
        // Images and other binary files hold no example.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let mut pending = false;
        for (n, line) in text.lines().enumerate() {
            let postman = postman_value(line, &mut pending);
            for value in credentials_in(line).into_iter().chain(postman) {
                if !is_published(&value) {
                    let at = file.strip_prefix(ROOT).unwrap_or(file).display();
                    missing.push(format!("{at}:{}: {value:?}", n + 1));
                }
                found.insert(value);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "credentials published in the repository but missing from src/config/published.rs \
         (add them there, so production refuses them):\n{}",
        missing.join("\n")
    );
    // The scan sees what it must: docker-compose.yml's three and the dev password.
    for v in [
        "change-me-change-me-change-me-change-me",
        "flashsale",
        DEV_ADMIN_PASSWORD,
    ] {
        assert!(found.contains(v), "{v:?} not found by the scan: {found:?}");
    }
}

/// The scanner on lines of each shape it must read, and of prose it must not.
#[test]
fn the_scanner_reads_every_shape_of_credential() {
    let cases: &[(&str, &[&str])] = &[
        ("FLASHSALE_JWT_SECRET=abc123 flashsale serve", &["abc123"]),
        (
            "export FLASHSALE_ADMIN_PASSWORD=\"s3cret-pw\"",
            &["s3cret-pw"],
        ),
        ("      MYSQL_ROOT_PASSWORD: rootpw", &["rootpw"]),
        ("      FLASHSALE_WEBHOOK_SECRET: 'whsec'", &["whsec"]),
        (
            "  FLASHSALE_MYSQL_URL: mysql://shop:dbpw@db:3306/shop",
            &["dbpw"],
        ),
        (
            "curl -d '{\"username\":\"a\",\"password\":\"pa55word\"}'",
            &["pa55word"],
        ),
        (
            "\"raw\": \"{\\n  \\\"password\\\": \\\"escaped-pw\\\"\\n}\"",
            &["escaped-pw"],
        ),
        (
            "const P = process.env.ADMIN_PASSWORD || 'js-default';",
            &["js-default"],
        ),
        (
            "flashsale serve --jwt-secret=flagged-secret",
            &["flagged-secret"],
        ),
        (
            "redis+unix:///run/r.sock?db=0&password=querypw",
            &["querypw"],
        ),
        ("    \"key\": \"adminPassword\",", &[]),
        // Not credentials: references, generated values, prose, markup.
        ("FLASHSALE_JWT_SECRET=\"$jwt_secret\" \\", &[]),
        ("admin_password=\"fuzz-admin-$(hex 8)\"", &[]),
        ("    admin_password = sys.argv[2]", &[]),
        (
            "{\"username\": \"admin\", \"password\": admin_password}",
            &[],
        ),
        ("password: 'shopper-password-' + run,", &[]),
        ("\"password\": \"{{adminPassword}}\"", &[]),
        (
            "# prefix and JWT secret: the sku, the stock and the tokens carry over.",
            &[],
        ),
        ("<input id=\"password\" type=\"password\" required>", &[]),
        (
            "| `FLASHSALE_JWT_SECRET` | `--jwt-secret` |  | HS256 secret |",
            &[],
        ),
        ("FLASHSALE_JWT_SECRET_PREVIOUS=<the old secret>", &[]),
    ];
    for (line, want) in cases {
        assert_eq!(credentials_in(line), *want, "{line}");
    }
    let mut pending = false;
    let postman = [
        "    {",
        "      \"key\": \"adminPassword\",",
        "      \"value\": \"postman-pw\",",
    ];
    let got: Vec<String> = postman
        .iter()
        .flat_map(|l| postman_value(l, &mut pending))
        .collect();
    assert_eq!(got, ["postman-pw"]);
}

/// The credential-looking values of one line: a URL's password (`scheme://user:PASS@`), and
/// the value given to a name containing `password`, `passwd` or `secret` (`NAME=v`, `NAME: v`,
/// `"name": "v"`, `NAME || 'v'`). Quoted values count anywhere; a bare value counts when its
/// name starts the line (YAML, env files) or in `NAME=v` without spaces (shell). Values built
/// at run time (`$...`, `{{...}}`, `'x' + ...`, calls) and placeholders (`<...>`) are not
/// published values.
fn credentials_in(line: &str) -> Vec<String> {
    let line = line.replace("\\\"", "\"");
    let line = line.as_str();
    let mut found = Vec::new();
    // Passwords in URLs.
    for (at, _) in line.match_indices("://") {
        let rest = &line[at + 3..];
        let token = rest
            .split(|c: char| c.is_whitespace() || "\"'`<>()".contains(c))
            .next()
            .unwrap_or("");
        let authority = token.split('/').next().unwrap_or("");
        if let Some((cred, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = cred.split_once(':')
            && literal(password)
        {
            found.push(password.to_string());
        }
    }
    // Values of names that say they are credentials.
    let lower = line.to_ascii_lowercase();
    let ident = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    let mut seen_ends = BTreeSet::new();
    for word in ["password", "passwd", "secret"] {
        for (at, _) in lower.match_indices(word) {
            let start = line[..at].rfind(|c: char| !ident(c)).map_or(0, |i| i + 1);
            let end = line[at..]
                .find(|c: char| !ident(c))
                .map_or(line.len(), |i| at + i);
            if !seen_ends.insert(end) {
                continue;
            }
            let before = line[..start].trim_start();
            let before = before.strip_prefix("export ").unwrap_or(before);
            let before = before.strip_prefix("- ").unwrap_or(before);
            let starts_line = before.trim_matches(['"', '\'']).is_empty();
            let mut rest = &line[end..];
            rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
            let spaced_before = rest.starts_with(char::is_whitespace);
            rest = rest.trim_start();
            let Some((sep, after)) = ["||", "??", "=", ":"]
                .iter()
                .find_map(|s| rest.strip_prefix(s).map(|a| (*s, a)))
            else {
                continue;
            };
            if after.starts_with(['=', ':']) {
                // `==`, `::`: code, not a value.
                continue;
            }
            let spaced_after = after.starts_with(char::is_whitespace);
            let after = after.trim_start();
            match after.chars().next() {
                Some(q @ ('"' | '\'' | '`')) => {
                    let inner = &after[1..];
                    let Some(close) = inner.find(q) else { continue };
                    let value = &inner[..close];
                    let concatenated = inner[close + 1..].trim_start().starts_with('+');
                    if !concatenated && literal(value) {
                        found.push(value.to_string());
                    }
                }
                Some(_) => {
                    let value = after
                        .split(|c: char| c.is_whitespace() || ",;}\"')]".contains(c))
                        .next()
                        .unwrap_or("");
                    let shell = sep == "=" && !spaced_before && !spaced_after;
                    if (starts_line || shell) && literal(value) && !value.contains(['(', '[']) {
                        found.push(value.to_string());
                    }
                }
                None => {}
            }
        }
    }
    found
}

/// A value written out, not built at run time nor a placeholder.
fn literal(value: &str) -> bool {
    !value.is_empty()
        && !value.contains('$')
        && !value.starts_with(['{', '<', '='])
        && value != "\\"
}

/// Postman's environments: `"key": "<a name containing password/secret>"`, then its
/// `"value": "v"` on a following line.
fn postman_value(line: &str, pending: &mut bool) -> Option<String> {
    let field = |name: &str| {
        let (_, rest) = line.split_once(&format!("\"{name}\": \""))?;
        rest.split_once('"').map(|(v, _)| v.to_string())
    };
    if let Some(key) = field("key") {
        let key = key.to_ascii_lowercase();
        *pending = ["password", "passwd", "secret"]
            .iter()
            .any(|w| key.contains(w));
        return None;
    }
    if *pending && let Some(value) = field("value") {
        *pending = false;
        return literal(&value).then_some(value);
    }
    None
}
