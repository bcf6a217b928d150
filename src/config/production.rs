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

/// A password in FLASHSALE_MYSQL_URL or FLASHSALE_REDIS_URL.
const URL_PASSWORD: Rule = Rule {
    min_len: 12,
    min_distinct: 5,
    fix: "change that account's password in the store and in the URL, e.g. to \
          `openssl rand -hex 16`",
};

/// Words that make up the first guesses; a value that is little else is guessable.
const GUESSABLE_WORDS: &[&str] = &[
    "password", "passwd", "admin", "qwerty", "letmein", "welcome", "secret",
];

/// Whether `value` is one of the first guesses: mostly a run of ascending or descending
/// characters (`0123456789abcdef...`, `abcdef...`, `987654...`), or with the common words
/// (`password`, `admin`, `qwerty`, ...) and the punctuation taken out, fewer than 6 bytes or
/// such a run left (`password1234`, `adminadmin12`, `qwerty123456`, `Secret-Admin-2024`).
fn guessable(value: &str) -> bool {
    fn mostly_a_run(s: &str) -> bool {
        let steps = s
            .as_bytes()
            .windows(2)
            .filter(|w| w[0].abs_diff(w[1]) == 1)
            .count();
        s.len() >= 2 && steps * 2 >= s.len() - 1
    }
    let mut rest = value.to_ascii_lowercase();
    for word in GUESSABLE_WORDS {
        rest = rest.replace(word, "");
    }
    rest.retain(|c| c.is_ascii_alphanumeric() || !c.is_ascii());
    mostly_a_run(value) || rest.len() < 6 || mostly_a_run(&rest)
}

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
    } else if guessable(value) {
        "is among the first guesses (a run such as `0123456789abcdef`, or little but words such \
         as `password`, `admin`, `qwerty` and digits)"
            .to_string()
    } else {
        return;
    };
    problems.push(format!("{name} {why}: {}", rule.fix));
}

/// What is wrong with `value` as the admin's password (`name` says where it comes from), by
/// production's rule: published, too short, too few different characters, guessable. `flashsale
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
    let urls = [
        ("FLASHSALE_MYSQL_URL", &cfg.stores.mysql_url),
        ("FLASHSALE_REDIS_URL", &cfg.stores.redis_url),
    ]
    .into_iter()
    .chain(
        cfg.stores
            .redis_cluster_nodes
            .iter()
            .map(|node| ("FLASHSALE_REDIS_CLUSTER_NODES", node)),
    );
    for (name, url) in urls {
        // Only the first problem: a URL may carry its password twice (user part and query).
        let mut found = Vec::new();
        for password in url_passwords(url) {
            check(
                &format!("the password in {name}"),
                &password,
                &URL_PASSWORD,
                &mut found,
            );
        }
        problems.extend(found.into_iter().next());
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
        // Random: a value written out here would be published (src/config/published.rs).
        c.auth.jwt_secret = Some(crate::config::unpublished_hex(64));
        c.auth.admin_password = Some(format!("Pw-{}", crate::config::unpublished_hex(20)));
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

        // Guessable: runs, and little but common words and digits.
        for guess in [
            "fedcba9876543210fedcba9876543210",
            "zyxwvutsrqponmlkjihgfedcba987654",
        ] {
            let mut c = production();
            c.auth.jwt_secret = Some(guess.into());
            assert!(refusal(&c).contains("first guesses"), "{guess}");
        }
        for guess in [
            "password1234",
            "adminadmin12",
            "qwerty123456",
            "Secret-Admin-2024",
        ] {
            let mut c = production();
            c.auth.admin_password = Some(guess.into());
            assert!(refusal(&c).contains("first guesses"), "{guess}");
        }

        // A URL's password: published with a character added, or short.
        let mut c = production();
        c.stores.mysql_url = "mysql://root:Flashsale1@db:3306/flashsale".into();
        assert!(refusal(&c).contains("the password in FLASHSALE_MYSQL_URL is a value"));
        c.stores.mysql_url = "mysql://root:x7Kq2mWz@db:3306/flashsale".into();
        assert!(refusal(&c).contains("the password in FLASHSALE_MYSQL_URL is shorter than 12"));
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
