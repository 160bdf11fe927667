//! The background side of a process: consumers, relays and schedulers, started together
//! and stopped together.

use std::time::Duration;

use repo::mq::consumer;
use repo::mq::topology::{AUCTION_BIDS, AUCTION_CLOSE, ORDER_CLOSE, SALE_RESERVE, SALE_RESTOCK};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Services;
use crate::relay::OutboxRelay;
use crate::{auctions, closer};

pub struct Workers {
    tasks: JoinSet<()>,
}

/// Starts every background task; each one returns when `stop` is cancelled.
pub fn spawn(services: &Services, stop: CancellationToken) -> Workers {
    let mut tasks = JoinSet::new();
    let deps = &services.deps;
    let settings = &deps.settings;

    let relay = OutboxRelay::new(
        deps.db.clone(),
        deps.broker.clone(),
        deps.topology(),
        settings.outbox.clone(),
        deps.confirm_timeout(),
    );
    tasks.spawn(relay.run(stop.clone()));

    let orders = services.orders.clone();
    tasks.spawn(consumer::run(
        deps.broker.clone(),
        deps.topology(),
        ORDER_CLOSE,
        settings.amqp.prefetch,
        deps.confirm_timeout(),
        stop.clone(),
        move |delivery| {
            let orders = orders.clone();
            async move { closer::handle_close(&orders, delivery).await }
        },
    ));

    // Two order consumers, each taking every message that has arrived (up to the
    // prefetch) into one transaction per sale: while one commits, the other gathers. They
    // serialize on the sale's row lock when they hold the same sale, which is right.
    let prefetch = settings.amqp.order_prefetch;
    let intake = consumer::Intake { prefetch, batch: usize::from(prefetch) };
    for _ in 0..2 {
        let consumer = services.order_consumer.clone();
        tasks.spawn(consumer::run_batches(
            deps.broker.clone(),
            deps.topology(),
            SALE_RESERVE,
            intake,
            deps.confirm_timeout(),
            stop.clone(),
            move |deliveries| {
                let consumer = consumer.clone();
                async move { consumer.handle(deliveries).await }
            },
        ));
    }

    let (redis, keys) = (deps.redis.clone(), deps.keys());
    tasks.spawn(consumer::run(
        deps.broker.clone(),
        deps.topology(),
        SALE_RESTOCK,
        settings.amqp.prefetch,
        deps.confirm_timeout(),
        stop.clone(),
        move |delivery| {
            let (redis, keys) = (redis.clone(), keys.clone());
            async move { crate::reservations::handle_restock(&redis, &keys, delivery).await }
        },
    ));

    let relay = auctions::BidRelay {
        db: deps.db.clone(),
        client: deps.redis_client.clone(),
        keys: deps.keys(),
        broker: deps.broker.clone(),
        topology: deps.topology(),
        confirm_timeout: deps.confirm_timeout(),
        batch: settings.auctions.relay_batch,
    };
    tasks.spawn(relay.run(stop.clone()));

    let db = deps.db.clone();
    tasks.spawn(consumer::run(
        deps.broker.clone(),
        deps.topology(),
        AUCTION_BIDS,
        settings.amqp.prefetch,
        deps.confirm_timeout(),
        stop.clone(),
        move |delivery| {
            let db = db.clone();
            async move { auctions::handle_bids(&db, delivery).await }
        },
    ));

    let auction_service = services.auctions.clone();
    tasks.spawn(consumer::run(
        deps.broker.clone(),
        deps.topology(),
        AUCTION_CLOSE,
        settings.amqp.prefetch,
        deps.confirm_timeout(),
        stop.clone(),
        move |delivery| {
            let auctions = auction_service.clone();
            async move { auctions::handle_close(&auctions, delivery).await }
        },
    ));
    tasks.spawn(auctions::sweep(
        deps.db.clone(),
        services.auctions.clone(),
        Duration::from_secs(settings.orders.sweep_interval_secs),
        stop.clone(),
    ));

    tasks.spawn(closer::sweep(
        deps.db.clone(),
        services.orders.clone(),
        Duration::from_secs(settings.orders.sweep_interval_secs),
        stop.clone(),
    ));

    Workers { tasks }
}

impl Workers {
    /// Waits up to `grace` for the tasks to finish their current message, then aborts the
    /// rest (an aborted consumer never acked, so its message is redelivered).
    pub async fn join(mut self, grace: Duration) {
        let drained = tokio::time::timeout(grace, async { while self.tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("workers did not stop within {}s; aborting them", grace.as_secs());
            self.tasks.abort_all();
        }
    }
}
