//! Connections and services for the one-shot commands (seed, tokens, verify, bots, admin).
//! The robots and the command dispatcher both build on this, never on each other.

use std::sync::Arc;
use std::time::Duration;

use platform::{Settings, connect};
use service::Services;
use service::auth::AuthService;
use service::jwt::JwtKeys;
use service::password::PasswordHasher;

/// The full set of services, for commands that use several of them. No start-up wait: a
/// one-shot command fails at once when a service is down.
pub async fn services(settings: Arc<Settings>) -> anyhow::Result<Services> {
    let deps = api::connect(settings, Duration::ZERO, "spike-cli").await?;
    Services::new(deps)
}

/// Accounts only: Postgres, no Redis or RabbitMQ.
pub async fn auth(settings: &Settings) -> anyhow::Result<AuthService> {
    let db = connect::postgres(&settings.database).await?;
    Ok(AuthService::new(
        db,
        PasswordHasher::new(&settings.argon2)?,
        JwtKeys::new(&settings.jwt),
        Duration::from_secs(settings.jwt.refresh_ttl_secs.get()),
    ))
}
