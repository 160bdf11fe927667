//! The background side of a process: consumers, relays and schedulers, started together
//! and stopped together.

use std::future::Future;
use std::time::Duration;

use repo::mq::consumer::{self, Delivery, Intake};
use repo::mq::topology::{AUCTION_CLOSE, ORDER_CLOSE, SALE_RESERVE, SALE_RESTOCK};
use repo::mq::{Outcome, Route};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::relay::OutboxRelay;
use crate::{Deps, Services, closer, order_consumer, transfers, undo};

pub struct Workers {
    tasks: JoinSet<()>,
}

/// Starts every background task; each one returns when `stop` is cancelled.
pub fn spawn(services: &Services, stop: CancellationToken) -> Workers {
    let mut workers = Workers { tasks: JoinSet::new() };
    let deps = &services.deps;
    let settings = &deps.settings;

    let relay = OutboxRelay::new(
        deps.db.clone(),
        deps.broker.clone(),
        deps.topology(),
        settings.outbox.clone(),
        deps.confirm_timeout(),
    );
    workers.tasks.spawn(relay.run(stop.clone()));

    workers.spawn_consumer(deps, ORDER_CLOSE, &stop, services.orders.clone(), |orders, delivery| async move {
        closer::handle_close(&orders, delivery).await
    });
    // Two order consumers, each taking every message that has arrived (up to the
    // prefetch) into one transaction per sale: while one commits, the other gathers. They
    // serialize on the sale's row lock when they hold the same sale, which is right.
    let prefetch = settings.amqp.order_prefetch.get();
    let intake = Intake { prefetch, batch: usize::from(prefetch) };
    for _ in 0..2 {
        let consumer = services.order_consumer.clone();
        workers.tasks.spawn(consumer::run_batches(
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
    workers.spawn_consumer(
        deps,
        SALE_RESTOCK,
        &stop,
        (deps.db.clone(), deps.redis.clone(), deps.keys()),
        |(db, redis, keys), delivery| async move { order_consumer::handle_restock(&db, &redis, &keys, delivery).await },
    );

    workers.spawn_consumer(
        deps,
        AUCTION_CLOSE,
        &stop,
        services.auction_closer.clone(),
        |closer, delivery| async move { closer::handle_auction_close(&closer, delivery).await },
    );

    let every = |secs: std::num::NonZeroU64| Duration::from_secs(secs.get());
    workers.tasks.spawn(closer::sweep_auctions(
        deps.db.clone(),
        services.auction_closer.clone(),
        every(settings.auctions.sweep_interval_secs),
        stop.clone(),
    ));
    // Reservations nobody finished (their API died between reserve and confirm) are undone
    // a few times per deadline, so none outlives its deadline by much.
    let deadline = Duration::from_millis(settings.sales.reservation_deadline_ms.get());
    let reaper = services.undo.clone();
    workers.tasks.spawn(undo::reap_forever(reaper, (deadline / 4).max(Duration::from_millis(100)), stop.clone()));
    workers.tasks.spawn(transfers::sweep_forever(services.transfers.clone(), transfers::SWEEP_AFTER / 3, stop.clone()));
    workers.tasks.spawn(closer::sweep_restocks(
        deps.db.clone(),
        deps.redis.clone(),
        deps.keys(),
        every(settings.sales.restock_sweep_interval_secs),
        stop.clone(),
    ));
    workers.tasks.spawn(closer::sweep_orders(
        deps.db.clone(),
        services.orders.clone(),
        every(settings.orders.sweep_interval_secs),
        stop.clone(),
    ));
    workers
}

impl Workers {
    /// Consumes `route`'s queue one delivery at a time: `handle` gets its own copy of
    /// `state` for each delivery.
    fn spawn_consumer<S, Fut>(
        &mut self,
        deps: &Deps,
        route: Route,
        stop: &CancellationToken,
        state: S,
        handle: fn(S, Delivery) -> Fut,
    ) where
        S: Clone + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.tasks.spawn(consumer::run(
            deps.broker.clone(),
            deps.topology(),
            route,
            deps.settings.amqp.prefetch.get(),
            deps.confirm_timeout(),
            stop.clone(),
            move |delivery| handle(state.clone(), delivery),
        ));
    }

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
