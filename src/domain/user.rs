use serde::{Deserialize, Serialize};

use super::{DomainError, invalid};

/// A login name: 3..=32 of `A-Z a-z 0-9 _ . -`, case-insensitive: it is kept in lower case
/// (`Alice` is `alice`), so the account, its lookups and its login buckets are one whatever
/// the case typed. MySQL agrees: the column compares case-insensitively and its unique key
/// refuses a second `alice` in any case (migration 20261212000001).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok_len = (3..=32).contains(&s.len());
        let ok_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok_len || !ok_chars {
            return Err(invalid(
                "username must be 3..=32 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        Ok(Username(s.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password: 8..=128 characters. Its Debug never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if !(8..=128).contains(&s.chars().count()) {
            return Err(invalid("password must be 8..=128 characters"));
        }
        Ok(Password(s.to_string()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A user's role: `admin` manages the catalog; `customer` buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "customer" => Some(Role::Customer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// What a token is checked against (src/service/tokens.rs): the account with its current token
/// version and role, or that there is no such account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    Live { version: u32, role: Role },
    Gone,
}

impl Account {
    /// How it is noted in Redis: `<version> <role>`, or `gone`.
    pub fn encode(self) -> String {
        match self {
            Account::Live { version, role } => format!("{version} {}", role.as_str()),
            Account::Gone => "gone".to_string(),
        }
    }

    /// The inverse of [`Account::encode`]; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        if s == "gone" {
            return Some(Account::Gone);
        }
        let (version, role) = s.split_once(' ')?;
        Some(Account::Live {
            version: version.parse().ok()?,
            role: Role::parse(role)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("al").is_err());
        assert!(Username::parse("al ice").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
        assert_eq!(
            Username::parse("alice_1.x-y").unwrap().as_str(),
            "alice_1.x-y"
        );
        // One name whatever its case.
        assert_eq!(Username::parse("Alice1").unwrap().as_str(), "alice1");
        assert_eq!(Username::parse("ALICE1"), Username::parse("alice1"));
    }

    #[test]
    fn passwords_hide_in_debug() {
        assert!(Password::parse("short").is_err());
        let p = Password::parse("correct horse").unwrap();
        assert_eq!(format!("{p:?}"), "Password(***)");
        assert_eq!(p.expose(), "correct horse");
    }

    #[test]
    fn roles() {
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::Customer.as_str(), "customer");
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn accounts_round_trip_through_their_note() {
        for a in [
            Account::Gone,
            Account::Live {
                version: 0,
                role: Role::Customer,
            },
            Account::Live {
                version: u32::MAX,
                role: Role::Admin,
            },
        ] {
            assert_eq!(Account::decode(&a.encode()), Some(a));
        }
        for bad in ["", "1", "x admin", "1 root", "-1 admin", "1  admin", "Gone"] {
            assert_eq!(Account::decode(bad), None, "{bad:?}");
        }
    }
}
