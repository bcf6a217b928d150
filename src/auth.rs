//! Access tokens (HS256 JWT, algorithm pinned) and password hashing (argon2id). A valid token
//! still has to match its account (src/service/tokens.rs): the account must exist and have the
//! token version the token carries.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as ArgonAlgorithm, Argon2, Params, Version};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{Password, Role};
use crate::error::{AppError, AppResult};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a decimal string (JWT's `sub` is a string).
    pub sub: String,
    /// The role when the token was issued; requests go by the account's current role.
    pub role: Role,
    /// The account's token version when the token was issued (`users.token_version`): deleting
    /// the account, changing its role or its password raises it, which ends the token. Tokens
    /// from before versions existed have none: 0, the version every account starts with.
    #[serde(default)]
    pub ver: u32,
    pub iat: u64,
    pub exp: u64,
}

/// What a valid token says: its user, the role and the account's token version when it was
/// issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub user_id: u64,
    pub role: Role,
    pub version: u32,
}

pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Also accepted when verifying, never used to sign: the previous secret during a rotation.
    previous: Option<DecodingKey>,
    validation: Validation,
    ttl: Duration,
}

impl Jwt {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Jwt {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            previous: None,
            validation,
            ttl,
        }
    }

    /// The same, also accepting tokens signed with `previous` (FLASHSALE_JWT_SECRET_PREVIOUS);
    /// tokens are still signed with the current secret only.
    pub fn accepting(mut self, previous: &[u8]) -> Self {
        self.previous = Some(DecodingKey::from_secret(previous));
        self
    }

    /// Decodes with the current secret; a token whose signature does not match it is tried
    /// with the previous secret, when there is one.
    fn decode(&self, token: &str) -> jsonwebtoken::errors::Result<jsonwebtoken::TokenData<Claims>> {
        let decoded = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation);
        match (decoded, &self.previous) {
            (Err(e), Some(previous))
                if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature =>
            {
                jsonwebtoken::decode::<Claims>(token, previous, &self.validation)
            }
            (decoded, _) => decoded,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A signed token for the user, whose account has token version `version`; valid for the
    /// configured ttl.
    pub fn issue(&self, user_id: u64, role: Role, version: u32) -> AppResult<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.issue_with_times(user_id, role, version, now, now + self.ttl.as_secs())
    }

    /// A token with explicit times (tests use it to make expired ones).
    pub fn issue_with_times(
        &self,
        user_id: u64,
        role: Role,
        version: u32,
        iat: u64,
        exp: u64,
    ) -> AppResult<String> {
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            ver: version,
            iat,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::internal(format!("signing a token: {e}")))
    }

    /// The claims of a valid token: right algorithm, right signature, not expired. Whether its
    /// account still exists with that version is for `service::tokens::check`.
    pub fn verify(&self, token: &str) -> AppResult<Verified> {
        let data = self
            .decode(token)
            .map_err(|e| AppError::Unauthenticated(format!("invalid token: {e}")))?;
        let user_id = data
            .claims
            .sub
            .parse()
            .map_err(|_| AppError::Unauthenticated("invalid token: bad subject".into()))?;
        Ok(Verified {
            user_id,
            role: data.claims.role,
            version: data.claims.ver,
        })
    }
}

/// A random secret for dev mode (tokens die with the process).
pub fn generate_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn argon2(memory_kib: u32) -> AppResult<Argon2<'static>> {
    let params = Params::new(memory_kib.max(Params::MIN_M_COST), 2, 1, None)
        .map_err(|e| AppError::internal(format!("argon2 params: {e}")))?;
    Ok(Argon2::new(
        ArgonAlgorithm::Argon2id,
        Version::V0x13,
        params,
    ))
}

/// Hashes a password off the async threads (argon2 is slow on purpose).
pub async fn hash_password(password: Password, memory_kib: u32) -> AppResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2(memory_kib)?
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AppError::internal(format!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| AppError::internal(format!("hashing task: {e}")))?
}

/// Checks a password against a stored hash. With no stored hash (unknown user) a dummy hash
/// made with the configured parameters (`memory_kib`) is checked instead, so the answer takes as
/// long either way.
pub async fn verify_password(
    password: String,
    stored: Option<String>,
    memory_kib: u32,
) -> AppResult<bool> {
    let known = stored.is_some();
    let stored = match stored {
        Some(s) => s,
        None => dummy_hash(memory_kib).await?,
    };
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&stored)
            .map_err(|e| AppError::internal(format!("stored hash unreadable: {e}")))?;
        // The parameters come from the stored hash itself.
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(matches && known)
    })
    .await
    .map_err(|e| AppError::internal(format!("verifying task: {e}")))?
}

/// The argon2id hash of a random password nobody knows, made with the parameters real hashes
/// get (`memory_kib`), once per process and setting. `Application::build` makes it at start-up,
/// so no login pays for it.
pub async fn dummy_hash(memory_kib: u32) -> AppResult<String> {
    static DUMMIES: OnceLock<Mutex<HashMap<u32, String>>> = OnceLock::new();
    let dummies = DUMMIES.get_or_init(Default::default);
    if let Some(h) = dummies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&memory_kib)
    {
        return Ok(h.clone());
    }
    let secret = Password::parse(&generate_secret())?;
    let hash = hash_password(secret, memory_kib).await?;
    Ok(dummies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(memory_kib)
        .or_insert(hash)
        .clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_forgeries() {
        let jwt = Jwt::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let t = jwt.issue(42, Role::Admin, 7).unwrap();
        assert_eq!(
            jwt.verify(&t).unwrap(),
            Verified {
                user_id: 42,
                role: Role::Admin,
                version: 7
            }
        );

        let other = Jwt::new(b"another-secret-another-secret-xx", Duration::from_secs(60));
        assert!(other.verify(&t).is_err(), "wrong key must fail");

        let expired = jwt
            .issue_with_times(42, Role::Customer, 7, 1_000, 2_000)
            .unwrap();
        assert!(jwt.verify(&expired).is_err(), "expired must fail");

        // alg=none is refused: the algorithm is pinned.
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(jwt.verify(&none).is_err());
    }

    /// During a rotation the previous secret's tokens are still accepted; new tokens are signed
    /// with the current secret only, and a third secret is refused.
    #[test]
    fn the_previous_secret_verifies_but_never_signs() {
        let (old, new) = (
            b"0123456789abcdef0123456789abcdef",
            b"fedcba9876543210fedcba9876543210",
        );
        let before = Jwt::new(old, Duration::from_secs(60));
        let during = Jwt::new(new, Duration::from_secs(60)).accepting(old);
        let after = Jwt::new(new, Duration::from_secs(60));
        let old_token = before.issue(7, Role::Admin, 0).unwrap();
        assert_eq!(during.verify(&old_token).unwrap().user_id, 7);
        let new_token = during.issue(8, Role::Customer, 0).unwrap();
        assert!(
            before.verify(&new_token).is_err(),
            "signed with the new secret"
        );
        assert_eq!(after.verify(&new_token).unwrap().user_id, 8);
        assert!(after.verify(&old_token).is_err());
        let expired = before
            .issue_with_times(7, Role::Admin, 0, 1_000, 2_000)
            .unwrap();
        assert!(
            during.verify(&expired).is_err(),
            "expired under the previous"
        );
        let other = Jwt::new(b"another-secret-another-secret-xx", Duration::from_secs(60));
        assert!(
            during
                .verify(&other.issue(9, Role::Admin, 0).unwrap())
                .is_err()
        );
    }

    /// Tokens issued before versions existed carry none: they read as version 0, which every
    /// account starts with (and which its first change leaves behind).
    #[test]
    fn a_token_without_a_version_has_version_zero() {
        #[derive(Serialize)]
        struct Old {
            sub: String,
            role: Role,
            iat: u64,
            exp: u64,
        }
        let secret = b"0123456789abcdef0123456789abcdef";
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let old = Old {
            sub: "9".into(),
            role: Role::Customer,
            iat: now,
            exp: now + 60,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &old,
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        let jwt = Jwt::new(secret, Duration::from_secs(60));
        assert_eq!(jwt.verify(&t).unwrap().version, 0);
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password(Password::parse("correct horse").unwrap(), 1024)
            .await
            .unwrap();
        assert!(
            verify_password("correct horse".into(), Some(h.clone()), 1024)
                .await
                .unwrap()
        );
        assert!(
            !verify_password("wrong horse".into(), Some(h), 1024)
                .await
                .unwrap()
        );
        assert!(
            !verify_password("anything".into(), None, 1024)
                .await
                .unwrap()
        );
    }

    /// An unknown username costs what a known one does: the dummy hash has the parameters a
    /// real hash made with the same setting has.
    #[tokio::test]
    async fn the_dummy_hash_has_the_configured_parameters() {
        for memory_kib in [1024, 19 * 1024, 24 * 1024] {
            let real = hash_password(Password::parse("correct horse").unwrap(), memory_kib)
                .await
                .unwrap();
            let dummy = dummy_hash(memory_kib).await.unwrap();
            let params = |h: &str| {
                let p = PasswordHash::new(h).unwrap();
                (p.algorithm.to_string(), p.version, p.params.to_string())
            };
            assert_eq!(params(&dummy), params(&real), "memory {memory_kib} KiB");
            assert_eq!(dummy_hash(memory_kib).await.unwrap(), dummy, "made once");
        }
    }
}
