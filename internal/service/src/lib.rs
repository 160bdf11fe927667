//! Spike's use cases. A service owns its transaction boundaries and talks to Postgres,
//! Redis and RabbitMQ only through `repo`.
//!
//! Layout:
//! - [`error`]: what a use case answers besides success;
//! - [`password`], [`jwt`]: argon2id hashing and access tokens;
//! - [`auth`]: accounts and sessions;
//! - [`catalog`]: products and the cache-aside product cache ([`singleflight`]);
//! - [`orders`]: orders, payment, cancel, and the one path out of `pending_payment`;
//! - [`relay`]: the outbox relay; [`closer`]: closing unpaid orders and ended auctions,
//!   their consumers and sweepers, and buy-it-now; [`second_chance`]: an unpaid auction
//!   order passes the lot to the next bidder;
//! - [`sales`]: flash sales and the purchase path; [`reservation_publisher`]: the batching
//!   publisher behind it; [`barrier`]: holds a sale whose hot state Redis lost until the
//!   reservations queued before the loss are processed; [`order_consumer`]: the order and
//!   restock consumers;
//!   [`undo`]: undoing reservations that will not become orders, and the worker's reaper;
//!   [`pubsub`]: the instance's Redis subscription;
//! - [`auctions`]: auctions and the bid path; [`bid_writer`]: writes accepted bids to
//!   Postgres, in order, before they are answered; [`live`]: the local fan-out to WebSocket watchers;
//! - [`verify`]: the invariant checks; [`seed`]: demo data;
//! - [`dead_letters`]: inspect and re-drive dead-lettered messages;
//! - [`health`], [`metrics`]: readiness of the three services and scraped gauges;
//! - [`worker`]: the background tasks of `serve` and `worker`.

pub mod auctions;
pub mod auth;
pub mod barrier;
pub mod bid_writer;
pub mod catalog;
pub mod closer;
pub mod dead_letters;
pub mod error;
pub mod health;
pub mod jwt;
pub mod live;
pub mod metrics;
pub mod order_consumer;
pub mod orders;
pub mod password;
pub mod pubsub;
pub mod relay;
pub mod reservation_publisher;
pub mod sales;
pub mod second_chance;
pub mod seed;
pub mod singleflight;
pub mod transfers;
pub mod undo;
pub mod verify;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use platform::{Broker, Settings};
use platform::{Redis, RedisClient};
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
    pub redis_client: RedisClient,
    pub redis: Redis,
    pub broker: Arc<Broker>,
}

impl Deps {
    pub fn keys(&self) -> Keys {
        Keys::new(&self.settings.redis.prefix)
    }

    pub fn topology(&self) -> Topology {
        let amqp = &self.settings.amqp;
        Topology::new(&amqp.prefix, amqp.queue_expires_ms, amqp.retry_delays_ms.clone())
            .with_queue_type(amqp.queue_type)
    }

    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.amqp.confirm_timeout_ms.get())
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
    pub order_consumer: order_consumer::OrderConsumer,
    pub undo: undo::Undo,
    pub transfers: transfers::Transfers,
    pub auctions: auctions::AuctionService,
    pub auction_closer: closer::AuctionCloser,
    pub live: Arc<live::LiveHub>,
}

impl Services {
    pub fn new(deps: Deps) -> anyhow::Result<Self> {
        let settings = deps.settings.clone();
        let hasher = password::PasswordHasher::new(&settings.argon2)?;
        let jwt = jwt::JwtKeys::new(&settings.jwt);
        let refresh_ttl = Duration::from_secs(settings.jwt.refresh_ttl_secs.get());
        let auth = auth::AuthService::new(deps.db.clone(), hasher, jwt, refresh_ttl);
        let catalog =
            catalog::CatalogService::new(deps.db.clone(), deps.redis.clone(), deps.keys(), settings.cache.clone());
        let orders = orders::OrderService::new(
            deps.db.clone(),
            catalog.cache().clone(),
            settings.orders.payment_timeout_secs.get(),
            orders::Lots {
                redis: deps.redis.clone(),
                keys: deps.keys(),
                second_chance_offers: settings.auctions.second_chance_offers,
            },
        );
        let status_ttl_secs = settings.sales.reservation_status_ttl_secs.get();
        let idempotency_ttl = Duration::from_secs(settings.idempotency.ttl_secs.get());
        let publisher = reservation_publisher::ReservationPublisher::start(
            deps.broker.clone(),
            deps.topology(),
            deps.redis.clone(),
            deps.keys(),
            reservation_publisher::PublisherConfig {
                tasks: settings.amqp.publishers.get(),
                max_batch: settings.amqp.max_batch.get(),
                in_flight: settings.amqp.confirms_in_flight.get(),
                confirm_timeout: deps.confirm_timeout(),
                status_ttl_secs,
            },
        );
        let barrier = barrier::RebuildBarrier::new(
            deps.db.clone(),
            deps.broker.clone(),
            deps.redis.clone(),
            deps.keys(),
            deps.topology(),
            deps.confirm_timeout(),
            settings.sales.rebuild_barrier_timeout_ms.get(),
        );
        let sales = sales::SaleService::new(
            deps.db.clone(),
            deps.redis.clone(),
            deps.keys(),
            catalog.cache().clone(),
            publisher,
            settings.sales.clone(),
            idempotency_ttl,
        )
        .with_barrier(barrier.clone());
        let order_consumer = order_consumer::OrderConsumer::new(
            deps.db.clone(),
            deps.redis.clone(),
            deps.keys(),
            status_ttl_secs,
            barrier,
            sales.clone(),
        );
        let undo = sales.undo().clone();
        let transfers = sales.transfers().clone();
        let auctions = auctions::AuctionService::new(
            deps.db.clone(),
            deps.redis.clone(),
            deps.keys(),
            idempotency_ttl,
            Duration::from_millis(settings.auctions.bid_write_timeout_ms.get()),
        );
        let auction_closer =
            closer::AuctionCloser::new(deps.db.clone(), deps.redis.clone(), deps.keys(), auctions.clone());
        let live = Arc::default();
        Ok(Self { deps, auth, catalog, orders, sales, order_consumer, undo, transfers, auctions, auction_closer, live })
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
