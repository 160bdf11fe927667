//! Spike's use cases. A service owns its transaction boundaries and talks to Postgres,
//! Redis and RabbitMQ only through `repo`.
//!
//! Layout:
//! - [`error`]: what a use case answers besides success;
//! - [`password`], [`jwt`]: argon2id hashing and access tokens;
//! - [`auth`]: accounts and sessions;
//! - [`health`], [`metrics`]: readiness of the three services and scraped gauges;
//! - [`worker`]: the background tasks of `serve` and `worker`.

pub mod auth;
pub mod error;
pub mod health;
pub mod jwt;
pub mod metrics;
pub mod password;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use platform::{Broker, Settings};
use redis::aio::ConnectionManager;
use sea_orm::DatabaseConnection;

pub use error::{Error, Result};
pub use jwt::Caller;
pub use repo::db::Page;

/// The connections a process holds, built once at start-up.
#[derive(Clone)]
pub struct Deps {
    pub settings: Arc<Settings>,
    pub db: DatabaseConnection,
    pub redis_client: redis::Client,
    pub redis: ConnectionManager,
    pub broker: Arc<Broker>,
}

/// Every service, wired from [`Deps`] in one place.
#[derive(Clone)]
pub struct Services {
    pub deps: Deps,
    pub auth: auth::AuthService,
}

impl Services {
    pub fn new(deps: Deps) -> anyhow::Result<Self> {
        let settings = deps.settings.clone();
        let hasher = password::PasswordHasher::new(&settings.argon2)?;
        let jwt = jwt::JwtKeys::new(&settings.jwt);
        let auth = auth::AuthService::new(
            deps.db.clone(),
            hasher,
            jwt,
            Duration::from_secs(settings.jwt.refresh_ttl_secs),
        );
        Ok(Self { deps, auth })
    }
}
