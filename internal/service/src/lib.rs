//! Spike's use cases. A service owns its transaction boundaries and talks to Postgres,
//! Redis and RabbitMQ only through `repo`.
//!
//! Layout:
//! - [`error`]: what a use case answers besides success;
//! - [`password`], [`jwt`]: argon2id hashing and access tokens;
//! - [`auth`]: accounts and sessions;
//! - [`catalog`]: products and the cache-aside product cache ([`singleflight`]);
//! - [`orders`]: orders, payment, cancel, and the one path out of `pending_payment`;
//! - [`relay`]: the outbox relay; [`closer`]: the close consumer and the sweeper;
//! - [`sales`]: flash sales and the purchase path; [`reservations`]: the batching
//!   publisher and the order consumer; [`pubsub`]: the instance's Redis subscription;
//! - [`auctions`]: auctions, bids, the close, the bid relay; [`live`]: the local fan-out
//!   to WebSocket watchers;
//! - [`verify`]: the invariant checks; [`seed`]: demo data;
//! - [`dead_letters`]: inspect and re-drive dead-lettered messages;
//! - [`health`], [`metrics`]: readiness of the three services and scraped gauges;
//! - [`worker`]: the background tasks of `serve` and `worker`.

pub mod auctions;
pub mod auth;
pub mod catalog;
pub mod closer;
pub mod dead_letters;
pub mod error;
pub mod health;
pub mod jwt;
pub mod live;
pub mod metrics;
pub mod orders;
pub mod password;
pub mod pubsub;
pub mod relay;
pub mod reservations;
pub mod sales;
pub mod seed;
pub mod singleflight;
pub mod verify;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use platform::{Broker, Settings};
use redis::aio::ConnectionManager;
use repo::cache::Keys;
use repo::mq::Topology;
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

impl Deps {
    pub fn keys(&self) -> Keys {
        Keys::new(&self.settings.redis.prefix)
    }

    pub fn topology(&self) -> Topology {
        let amqp = &self.settings.amqp;
        Topology::new(&amqp.prefix, amqp.queue_expires_ms, amqp.retry_delays_ms.clone())
    }

    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.amqp.confirm_timeout_ms)
    }
}

/// Every service, wired from [`Deps`] in one place.
#[derive(Clone)]
pub struct Services {
    pub deps: Deps,
    pub auth: auth::AuthService,
    pub catalog: catalog::CatalogService,
    pub orders: orders::OrderService,
    pub sales: sales::SaleService,
    pub order_consumer: reservations::OrderConsumer,
    pub auctions: auctions::AuctionService,
    pub live: Arc<live::LiveHub>,
}

impl Services {
    pub fn new(deps: Deps) -> anyhow::Result<Self> {
        let settings = deps.settings.clone();
        let hasher = password::PasswordHasher::new(&settings.argon2)?;
        let jwt = jwt::JwtKeys::new(&settings.jwt);
        let auth =
            auth::AuthService::new(deps.db.clone(), hasher, jwt, Duration::from_secs(settings.jwt.refresh_ttl_secs));
        let catalog =
            catalog::CatalogService::new(deps.db.clone(), deps.redis.clone(), deps.keys(), settings.cache.clone());
        let orders =
            orders::OrderService::new(deps.db.clone(), catalog.cache().clone(), settings.orders.payment_timeout_secs);
        let publisher = reservations::ReservationPublisher::start(
            deps.broker.clone(),
            deps.topology(),
            deps.redis.clone(),
            deps.keys(),
            reservations::PublisherConfig {
                tasks: settings.amqp.publishers,
                max_batch: settings.amqp.max_batch,
                confirm_timeout: deps.confirm_timeout(),
                status_ttl_secs: settings.sales.reservation_status_ttl_secs,
            },
        );
        let sales = sales::SaleService::new(
            deps.db.clone(),
            deps.redis.clone(),
            deps.keys(),
            catalog.cache().clone(),
            publisher,
            settings.sales.clone(),
        );
        let order_consumer = reservations::OrderConsumer::new(
            deps.db.clone(),
            deps.redis.clone(),
            deps.keys(),
            settings.sales.reservation_status_ttl_secs,
        );
        let auctions = auctions::AuctionService::new(
            deps.db.clone(),
            deps.redis.clone(),
            deps.keys(),
            settings.sales.reservation_status_ttl_secs * 1000,
        );
        let live = Arc::default();
        Ok(Self { deps, auth, catalog, orders, sales, order_consumer, auctions, live })
    }

    /// The instance's Redis subscription (restock notices, live auction prices).
    pub fn spawn_listeners(&self, stop: tokio_util::sync::CancellationToken) {
        let listeners = pubsub::Listeners { sold_out: self.sales.flags().clone(), live: self.live.clone() };
        tokio::spawn(pubsub::listen(self.deps.redis_client.clone(), self.deps.keys(), listeners, stop));
    }

    /// Declares the RabbitMQ exchanges and queues (idempotent; every process does it at
    /// start, so whichever starts first finds the topology ready).
    pub async fn declare_topology(&self) -> Result<()> {
        let channel = self.deps.broker.channel().await?;
        self.deps.topology().declare(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }
}
