//! argon2id password hashing, off the async threads.
//!
//! Hashing costs tens of milliseconds of CPU and `argon2.memory_kib` of memory by design,
//! so it runs on the blocking pool, one hash per core at a time: a burst of logins must not
//! stall the reactor that serves purchases, nor hold a hash's memory per waiting login.

use std::sync::{Arc, LazyLock};
use std::thread::available_parallelism;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use platform::config::Argon2Settings;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Arc<Argon2<'static>>,
    /// A real hash of a random password, verified when the email is unknown so that a
    /// login for a missing account takes as long as one with a wrong password.
    dummy_hash: Arc<String>,
    /// One permit per core: hashes beyond that wait here, holding no memory.
    permits: Arc<Semaphore>,
}

impl PasswordHasher {
    pub fn new(settings: &Argon2Settings) -> anyhow::Result<Self> {
        let params = Params::new(settings.memory_kib, settings.iterations.get(), settings.parallelism.get(), None)
            .map_err(|e| anyhow::anyhow!("invalid configuration: argon2: {e}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon2
            .hash_password(b"not-a-real-password", &salt)
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        let cores = available_parallelism().map_or(1, usize::from);
        Ok(Self {
            argon2: Arc::new(argon2),
            dummy_hash: Arc::new(dummy_hash),
            permits: Arc::new(Semaphore::new(cores)),
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String> {
        let argon2 = self.argon2.clone();
        let password = password.to_owned();
        self.on_a_core(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| Error::Internal(anyhow::anyhow!("argon2: {e}")))
        })
        .await?
    }

    /// Checks `password` against a stored PHC string; `None` checks against the dummy hash
    /// and always fails, in the same time.
    pub async fn verify(&self, stored: Option<String>, password: &str) -> Result<bool> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.as_str().to_owned());
        let argon2 = self.argon2.clone();
        let password = password.to_owned();
        let matched = self
            .on_a_core(move || {
                PasswordHash::new(&stored)
                    .map(|hash| argon2.verify_password(password.as_bytes(), &hash).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(known && matched)
    }

    /// Runs `work` on the blocking pool once a core's permit is free.
    async fn on_a_core<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(|e| Error::Internal(e.into()))?;
        tokio::task::spawn_blocking(work).await.map_err(|e| Error::Internal(e.into()))
    }
}

/// A cheap fixed hash for accounts created in bulk by `spike-server tokens`: those shoppers
/// log in with tokens, never with a password, so they share one precomputed hash of a
/// random secret nobody knows instead of paying one argon2 run each.
pub static UNUSABLE_PASSWORD_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    let secret: [u8; 32] = rand::random();
    Argon2::default()
        .hash_password(&secret, &salt)
        .expect("argon2 with default parameters hashes any input")
        .to_string()
});

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn hasher() -> PasswordHasher {
        PasswordHasher::new(&Argon2Settings {
            memory_kib: 1024,
            iterations: NonZeroU32::MIN,
            parallelism: NonZeroU32::MIN,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_nothing_else() {
        let hasher = hasher();
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(hasher.verify(Some(hash.clone()), "correct horse").await.unwrap());
        assert!(!hasher.verify(Some(hash), "wrong horse").await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        assert!(!hasher().verify(None, "not-a-real-password").await.unwrap());
    }
}
