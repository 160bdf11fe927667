//! Access tokens: HS256 JWTs with `sub`, `role`, `iat`, `exp` and `iss`.
//!
//! The algorithm is pinned to HS256 on decode, so a token that claims `alg: none` or an
//! asymmetric algorithm is refused before its signature is even looked at; expiry is
//! checked with no leeway.
//!
//! Verified tokens are remembered (keyed by the whole token, until their `exp`): a shopper
//! sends the same token with every request for 15 minutes, and decoding and checking a JWT
//! was the largest single cost of a purchase request in the profile (docs/benchmarks.md).
//! Remembering changes nothing a token can do: access tokens are stateless and are never
//! revoked before they expire, and any change to a token makes it a different key.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use platform::config::JwtSettings;
use quick_cache::sync::Cache;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

/// Who made a request, as proven by a valid access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
    pub role: Role,
}

impl Caller {
    /// The operator's own hand, for CLI commands such as `seed`: an admin with no account.
    pub fn system() -> Self {
        Self { user_id: Uuid::nil(), role: Role::Admin }
    }

    pub fn require_admin(&self) -> Result<()> {
        match self.role {
            Role::Admin => Ok(()),
            Role::User => Err(Error::Forbidden),
        }
    }
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    pub access_ttl: Duration,
    verified: Arc<Cache<String, (Caller, i64)>>,
}

/// Tokens remembered at most; beyond that the cache evicts the least useful ones.
const VERIFIED_TOKENS: usize = 100_000;

impl JwtKeys {
    pub fn new(settings: &JwtSettings) -> Self {
        let secret = settings.secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked in `verify_at`, on the same clock as the cache of verified tokens.
        validation.validate_exp = false;
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: settings.issuer.clone(),
            access_ttl: Duration::from_secs(settings.access_ttl_secs.get()),
            verified: Arc::new(Cache::new(VERIFIED_TOKENS)),
        }
    }

    pub fn issue(&self, user_id: Uuid, role: Role) -> Result<String> {
        self.issue_for(user_id, role, self.access_ttl)
    }

    /// A token with its own lifetime; `spike-server tokens` uses it for load tests.
    pub fn issue_for(&self, user_id: Uuid, role: Role, ttl: Duration) -> Result<String> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            role: role.as_str().to_owned(),
            iat: now,
            exp: now + ttl.as_secs() as i64,
            iss: self.issuer.clone(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(anyhow::anyhow!("signing a token: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Caller> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// [`JwtKeys::verify`] as of `now` (seconds since the epoch). A token is good until the
    /// second before its `exp`, no leeway.
    fn verify_at(&self, token: &str, now: i64) -> Result<Caller> {
        if let Some((caller, exp)) = self.verified.get(token)
            && now < exp
        {
            return Ok(caller);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|_| Error::Unauthenticated)?;
        if data.claims.exp <= now {
            return Err(Error::Unauthenticated);
        }
        let role = data.claims.role.parse().map_err(|_| Error::Unauthenticated)?;
        let caller = Caller { user_id: data.claims.sub, role };
        self.verified.insert(token.to_owned(), (caller, data.claims.exp));
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use secrecy::SecretString;

    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&JwtSettings {
            secret: SecretString::from(secret.to_owned()),
            issuer: "spike".into(),
            access_ttl_secs: NonZeroU64::new(60).unwrap(),
            refresh_ttl_secs: NonZeroU64::new(600).unwrap(),
        })
    }

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123";

    #[test]
    fn a_fresh_token_verifies_to_its_user_and_role() {
        let keys = keys(SECRET);
        let user = Uuid::now_v7();
        let caller = keys.verify(&keys.issue(user, Role::Admin).unwrap()).unwrap();
        assert_eq!(caller, Caller { user_id: user, role: Role::Admin });
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let token = keys("another-secret-that-is-long-enough-999").issue(Uuid::now_v7(), Role::User).unwrap();
        assert!(matches!(keys(SECRET).verify(&token), Err(Error::Unauthenticated)));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let keys = keys(SECRET);
        let now = Utc::now().timestamp();
        let claims =
            Claims { sub: Uuid::now_v7(), role: "user".into(), iat: now - 120, exp: now - 1, iss: "spike".into() };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(keys.verify(&token).is_err());
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let keys = keys(SECRET);
        let token = keys.issue_for(Uuid::now_v7(), Role::User, Duration::from_secs(60)).unwrap();
        let now = Utc::now().timestamp();
        assert!(keys.verify_at(&token, now).is_ok());
        assert!(keys.verify_at(&token, now).is_ok(), "from the cache");
        assert!(matches!(keys.verify_at(&token, now + 61), Err(Error::Unauthenticated)));
    }

    #[test]
    fn a_user_cannot_act_as_admin() {
        let caller = Caller { user_id: Uuid::nil(), role: Role::User };
        assert!(matches!(caller.require_admin(), Err(Error::Forbidden)));
    }
}
