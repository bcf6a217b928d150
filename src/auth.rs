//! Access tokens (HS256 JWT, algorithm pinned) and password hashing (argon2id).

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
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
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
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A signed token for the user; valid for the configured ttl.
    pub fn issue(&self, user_id: u64, role: Role) -> AppResult<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.issue_with_times(user_id, role, now, now + self.ttl.as_secs())
    }

    /// A token with explicit times (tests use it to make expired ones).
    pub fn issue_with_times(
        &self,
        user_id: u64,
        role: Role,
        iat: u64,
        exp: u64,
    ) -> AppResult<String> {
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iat,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::internal(format!("signing a token: {e}")))
    }

    /// The claims of a valid token: right algorithm, right signature, not expired.
    pub fn verify(&self, token: &str) -> AppResult<(u64, Role)> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AppError::Unauthenticated(format!("invalid token: {e}")))?;
        let user_id = data
            .claims
            .sub
            .parse()
            .map_err(|_| AppError::Unauthenticated("invalid token: bad subject".into()))?;
        Ok((user_id, data.claims.role))
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

/// Checks a password against a stored hash. With no stored hash (unknown user) a dummy hash is
/// checked instead, so the answer takes as long either way.
pub async fn verify_password(password: String, stored: Option<String>) -> AppResult<bool> {
    tokio::task::spawn_blocking(move || {
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.to_string());
        let parsed = PasswordHash::new(&stored)
            .map_err(|e| AppError::internal(format!("stored hash unreadable: {e}")))?;
        // The parameters come from the stored hash itself.
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
            && stored != DUMMY_HASH)
    })
    .await
    .map_err(|e| AppError::internal(format!("verifying task: {e}")))?
}

/// argon2id of a random password nobody knows, with the default parameters.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$cRh1oO6Mu1gb0WjIRvlPUpBLcTL0jg8vKgS1J2mZ5EQ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_forgeries() {
        let jwt = Jwt::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let t = jwt.issue(42, Role::Admin).unwrap();
        assert_eq!(jwt.verify(&t).unwrap(), (42, Role::Admin));

        let other = Jwt::new(b"another-secret-another-secret-xx", Duration::from_secs(60));
        assert!(other.verify(&t).is_err(), "wrong key must fail");

        let expired = jwt
            .issue_with_times(42, Role::Customer, 1_000, 2_000)
            .unwrap();
        assert!(jwt.verify(&expired).is_err(), "expired must fail");

        // alg=none is refused: the algorithm is pinned.
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(jwt.verify(&none).is_err());
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password(Password::parse("correct horse").unwrap(), 1024)
            .await
            .unwrap();
        assert!(
            verify_password("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify_password("wrong horse".into(), Some(h))
                .await
                .unwrap()
        );
        assert!(!verify_password("anything".into(), None).await.unwrap());
    }
}
