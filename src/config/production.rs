//! What production mode (`FLASHSALE_PRODUCTION`) refuses before anything starts: a missing,
//! weak or published credential anywhere one goes. Every problem is listed at once, each with
//! what to do. (The admin account already in the database is checked at start-up, in
//! src/startup.rs.)

use super::Config;
use super::published::is_published;
use super::url::url_passwords;

/// What a credential must be in production.
struct Rule {
    /// At least this many bytes.
    min_len: usize,
    /// At least this many distinct bytes (`aaaa...`, `abab...` are refused). Low enough that a
    /// random value of the minimum length, even in hex, passes (32 hex digits have fewer than
    /// 8 distinct about once in 10^8).
    min_distinct: usize,
    /// How to make a good one.
    fix: &'static str,
}

const JWT_SECRET: Rule = Rule {
    min_len: 32,
    min_distinct: 8,
    fix: "generate one with `openssl rand -hex 32`",
};

const ADMIN_PASSWORD: Rule = Rule {
    min_len: 12,
    min_distinct: 5,
    fix: "choose a new one, e.g. `openssl rand -base64 18`",
};

const WEBHOOK_SECRET: Rule = Rule {
    min_len: 16,
    min_distinct: 4,
    fix: "generate one with `openssl rand -hex 32` and give it to the receiver too",
};

const PUBLISHED_WHY: &str = "is a value this repository publishes (docker-compose.yml, README.md, \
                             docs/ or an example), so anyone knows it";

/// The problems of one credential (`name` is its variable), appended to `problems`.
fn check(name: &str, value: &str, rule: &Rule, problems: &mut Vec<String>) {
    let distinct = value
        .bytes()
        .collect::<std::collections::BTreeSet<u8>>()
        .len();
    let why = if is_published(value) {
        PUBLISHED_WHY.to_string()
    } else if value.len() < rule.min_len {
        format!("is shorter than {} bytes", rule.min_len)
    } else if distinct < rule.min_distinct {
        format!(
            "has fewer than {} different characters (too easy to guess)",
            rule.min_distinct
        )
    } else {
        return;
    };
    problems.push(format!("{name} {why}: {}", rule.fix));
}

/// What is wrong with `value` as the admin's password (`name` says where it comes from), by
/// production's rule: published, too short, too few different characters. `flashsale
/// admin-password` applies it in any mode.
pub fn admin_password_problem(name: &str, value: &str) -> Option<String> {
    let mut problems = Vec::new();
    check(name, value, &ADMIN_PASSWORD, &mut problems);
    problems.pop()
}

/// Production's refusals, every one listed with what to do; Ok outside production.
pub(super) fn check_production(cfg: &Config) -> Result<(), String> {
    if !cfg.auth.production {
        return Ok(());
    }
    let mut problems = Vec::new();
    match &cfg.auth.jwt_secret {
        None => problems.push(format!(
            "FLASHSALE_JWT_SECRET is not set: {} (every instance needs the same one)",
            JWT_SECRET.fix
        )),
        Some(s) => check("FLASHSALE_JWT_SECRET", s, &JWT_SECRET, &mut problems),
    }
    if let Some(s) = &cfg.auth.jwt_secret_previous {
        check(
            "FLASHSALE_JWT_SECRET_PREVIOUS",
            s,
            &JWT_SECRET,
            &mut problems,
        );
    }
    match &cfg.auth.admin_password {
        None => problems.push(format!(
            "FLASHSALE_ADMIN_PASSWORD is not set: {}",
            ADMIN_PASSWORD.fix
        )),
        Some(p) => check(
            "FLASHSALE_ADMIN_PASSWORD",
            p,
            &ADMIN_PASSWORD,
            &mut problems,
        ),
    }
    if let Some(s) = &cfg.webhooks.webhook_secret {
        check(
            "FLASHSALE_WEBHOOK_SECRET",
            s,
            &WEBHOOK_SECRET,
            &mut problems,
        );
    }
    for (name, url) in [
        ("FLASHSALE_MYSQL_URL", &cfg.stores.mysql_url),
        ("FLASHSALE_REDIS_URL", &cfg.stores.redis_url),
    ] {
        if url_passwords(url).iter().any(|p| is_published(p)) {
            problems.push(format!(
                "the password in {name} {PUBLISHED_WHY}: change that account's password in the \
                 store and in the URL"
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "production mode (FLASHSALE_PRODUCTION) refuses to start:\n  - {}\n\
         (values are never shown; docs/OPERATIONS.md, \"Credentials\", says how to rotate them)",
        problems.join("\n  - ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEV_ADMIN_PASSWORD;

    fn production() -> Config {
        let mut c = Config::defaults();
        c.auth.production = true;
        c.auth.jwt_secret = Some("9f2c4e1a7b3d5f60812ab4c6d8e0f1a3".into());
        c.auth.admin_password = Some("Tq7-vL2m-Zx9c".into());
        c
    }

    fn refusal(c: &Config) -> String {
        check_production(c).expect_err("refused")
    }

    #[test]
    fn a_strong_configuration_passes() {
        assert_eq!(check_production(&production()), Ok(()));
    }

    #[test]
    fn published_and_weak_credentials_are_refused_each_by_name() {
        let mut c = production();
        c.auth.admin_password = Some(DEV_ADMIN_PASSWORD.into());
        assert!(refusal(&c).contains("FLASHSALE_ADMIN_PASSWORD is a value this repository"));

        let mut c = production();
        c.auth.jwt_secret = Some("change-me-change-me-change-me-change-me".into());
        let e = refusal(&c);
        assert!(e.contains("FLASHSALE_JWT_SECRET is a value"), "{e}");
        assert!(e.contains("openssl rand -hex 32"), "{e}");
        assert!(
            !e.contains("change-me-change"),
            "the value is never shown: {e}"
        );

        let mut c = production();
        c.auth.jwt_secret = Some("ab".repeat(20));
        assert!(refusal(&c).contains("fewer than 8 different"));
        c.auth.jwt_secret = Some("short".into());
        assert!(refusal(&c).contains("shorter than 32"));

        let mut c = production();
        c.auth.jwt_secret_previous = Some("change-me-change-me-change-me-change-me".into());
        assert!(refusal(&c).contains("FLASHSALE_JWT_SECRET_PREVIOUS is a value"));

        let mut c = production();
        c.stores.mysql_url = "mysql://root:flashsale@mysql:3306/flashsale".into();
        c.stores.redis_url = "redis://:pw@redis:6379".into();
        let e = refusal(&c);
        assert!(e.contains("the password in FLASHSALE_MYSQL_URL"), "{e}");
        assert!(e.contains("the password in FLASHSALE_REDIS_URL"), "{e}");

        let mut c = production();
        c.webhooks.webhook_secret = Some("s3cret".into());
        assert!(refusal(&c).contains("FLASHSALE_WEBHOOK_SECRET is shorter"));
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let mut c = Config::defaults();
        c.auth.production = true;
        let e = refusal(&c);
        assert!(e.contains("FLASHSALE_JWT_SECRET is not set"), "{e}");
        assert!(e.contains("FLASHSALE_ADMIN_PASSWORD is not set"), "{e}");
    }

    #[test]
    fn dev_mode_refuses_nothing_here() {
        let mut c = production();
        c.auth.production = false;
        c.auth.admin_password = Some(DEV_ADMIN_PASSWORD.into());
        assert_eq!(check_production(&c), Ok(()));
    }
}
