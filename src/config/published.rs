//! The credentials this repository publishes: every password and secret written in
//! docker-compose.yml, README.md, docs/ and the examples (postman/, scripts/, browser/, ...),
//! the examples of the OpenAPI document (served at `GET /openapi.json`), the values written in
//! src/ and tests/ (a unit test's "strong" secret is public too), and the dev fallbacks of the
//! code. Anyone who has read the repository knows them, so
//! production mode refuses each of them wherever a credential goes (src/config/production.rs)
//! and refuses to start while any admin account still has one (src/service/admin_account.rs).
//!
//! tests/api/production.rs scans those files for credential-looking values and fails when one
//! is not here: a new example cannot slip past. src/ and tests/ are not scanned (their many
//! refused and generated values would turn the scan into a list of exceptions): a credential
//! written there that passes production belongs here by hand; unit tests build theirs at run
//! time (`config::unpublished_hex`). Entries are never removed: a value once
//! published stays in the repository's history.

/// The published values, compared trimmed and ignoring ASCII case (see [`is_published`]).
pub const PUBLISHED: &[&str] = &[
    // The dev fallback of the admin password (src/config/auth.rs), in README.md,
    // docker-compose.yml, postman/local.postman_environment.json, browser/, scripts/sse-load.mjs.
    super::DEV_ADMIN_PASSWORD,
    // docker-compose.yml: the JWT secret, MySQL's root password (also in its MySQL URL).
    "change-me-change-me-change-me-change-me",
    "flashsale",
    // docs/TESTING.md, scripts/newman: `mysql://root:pw@db:3306`.
    "pw",
    // scripts/bench: its admin password.
    "bench-admin-password",
    // tests/api/helpers/spawn.rs: the tests' admin password.
    "admin-test-password",
    // Customers' passwords of the examples (README.md, scripts/sse-load.mjs, postman/): not
    // settings, but published all the same.
    "alice-password",
    "loadbuyer-password",
    "not-the-password",
    "another-password",
    // src/http/users.rs: the example passwords of the OpenAPI document, served to anyone at
    // `GET /openapi.json`.
    "correct horse battery",
    "staple battery horse correct",
    // Values written in src/ and tests/ (unit tests, the tests' helpers): a value a test calls
    // strong is published all the same. src/config/production.rs, src/config/mod.rs.
    "9f2c4e1a7b3d5f60812ab4c6d8e0f1a3",
    "0d5f2b9c81e7a4360d5f2b9c81e7a436",
    "0123456789abcdef0123456789abcdef",
    "Tq7-vL2m-Zx9c",
    "correct-horse-7",
    // tests/api/helpers/accounts.rs: the load accounts' password; tests/api/production.rs: a
    // webhook secret.
    "load-account-password",
    "whsec-0123456789abcdef",
];

/// Words that mark a value as a placeholder to be replaced (`change-me`, ...).
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "replace_me",
];

/// Published values at least this long are also refused inside a longer value
/// (`admin-dev-password1` is no better than `admin-dev-password`, `flashsale1` than
/// `flashsale`). Shorter ones (`pw`) only whole: a strong value may contain them by chance.
const CONTAINED_FROM: usize = 8;

/// Whether `value` is a published credential, a published one with something added, or a
/// placeholder.
pub fn is_published(value: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    PUBLISHED.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        value == p || (p.len() >= CONTAINED_FROM && value.contains(&p))
    }) || PLACEHOLDERS.iter().any(|p| value.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_values_and_their_variants_are_recognised() {
        for v in PUBLISHED {
            assert!(is_published(v), "{v}");
        }
        assert!(is_published(" Admin-Dev-Password "));
        assert!(is_published("admin-dev-password1"));
        assert!(is_published("x-change-me-y-0123456789abcdef0123456789"));
        assert!(!is_published("a2c8f0e5b7d1934e6a0f2b8c5d7e1f30"));
        assert!(is_published("Flashsale!"));
        assert!(is_published("alice-password-1"));
        assert!(is_published("replace-me-with-a-long-random-secret"));
        // Short published values only match whole: a strong password may contain "pw".
        assert!(!is_published("zq8-pw-fl4shs4le-7Hk2"));
    }
}
