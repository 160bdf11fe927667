//! Closing what ran out of time: unpaid orders at their payment deadline, auctions at their
//! (possibly extended) end. Each has a consumer of its delayed close messages and a sweeper
//! that closes whatever a lost message left behind; a third sweeper backs up the
//! `sale.restock` messages of closed sale orders.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::Money;
use domain::order::OrderKind;
use platform::Redis;
use repo::cache::Keys;
use repo::cache::auctions::{self as live, Close};
use repo::cache::sales::Returned;
use repo::db::orders::{self, Finish, NewLine, NewOrder};
use repo::db::{auctions, sales};
use repo::mq::Outcome;
use repo::mq::consumer::Delivery;
use repo::mq::messages::{CloseAuction, CloseOrders};
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auctions::{AuctionService, millis, schedule_auction_close};
use crate::error::{Error, Result};
use crate::order_consumer;
use crate::orders::{OrderService, announce_and_schedule_close};

/// Orders a sweeper round closes at most per statement.
const SWEEP_BATCH: usize = 500;

/// Handles one `order.close` message. A message for orders that were paid, cancelled or
/// closed already changes nothing (the UPDATE matches no row), so redelivery is harmless.
pub async fn handle_close(orders: &OrderService, delivery: Delivery) -> Outcome {
    let message: CloseOrders = match delivery.json("close message") {
        Ok(message) => message,
        Err(dead) => return dead,
    };
    match orders.finish(&message.order_ids, Finish::Closed).await {
        Ok(closed) => {
            if !closed.is_empty() {
                tracing::info!(closed = closed.len(), "closed unpaid orders");
            }
            Outcome::Ack
        }
        Err(err) => err.outcome("closing orders"),
    }
}

/// Every `every`, closes pending orders whose deadline passed more than `every` ago: the
/// delay queue normally got there first, so this only finds orders whose message was lost.
pub async fn sweep_orders(db: DatabaseConnection, orders: OrderService, every: Duration, stop: CancellationToken) {
    repeat(every, stop, || close_overdue_orders(&db, &orders, every)).await
}

async fn close_overdue_orders(db: &DatabaseConnection, orders: &OrderService, every: Duration) {
    loop {
        let overdue = match orders::overdue(db, every.as_millis() as i64, SWEEP_BATCH as u64).await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(error = %err, "sweeper could not look for overdue orders");
                return;
            }
        };
        if overdue.is_empty() {
            return;
        }
        match orders.finish(&overdue, Finish::Closed).await {
            Ok(closed) => {
                tracing::info!(closed = closed.len(), "sweeper closed overdue orders");
                metrics::counter!("orders_swept_total").increment(closed.len() as u64);
                if overdue.len() < SWEEP_BATCH {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "sweeper could not close overdue orders");
                return;
            }
        }
    }
}

/// Every `every`, puts back in Redis the units of closed or cancelled sale orders that
/// Postgres returned more than `every` ago and Redis was not told of: their `sale.restock`
/// message was lost, parked in the outbox or dead-lettered. Idempotent with the consumer:
/// the restock script counts each order once.
pub async fn sweep_restocks(
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
    every: Duration,
    stop: CancellationToken,
) {
    repeat(every, stop, || restock_overdue(&db, &redis, &keys, every)).await
}

async fn restock_overdue(db: &DatabaseConnection, redis: &Redis, keys: &Keys, every: Duration) {
    let due = match sales::restocks_due(db, every.as_millis() as i64, SWEEP_BATCH as u64).await {
        Ok(due) => due,
        Err(err) => {
            tracing::warn!(error = %err, "restock sweeper could not look for returns Redis missed");
            return;
        }
    };
    let mut batches: BTreeMap<(Uuid, i64), Vec<Returned>> = BTreeMap::new();
    for d in due {
        let returned = Returned { order_id: d.order_id, user_id: d.user_id, quantity: d.quantity };
        batches.entry((d.sale_id, d.returned_version)).or_default().push(returned);
    }
    for ((sale_id, version), returned) in batches {
        match order_consumer::restock(db, redis, keys, sale_id, version, &returned).await {
            Ok(units) => {
                tracing::warn!(%sale_id, orders = returned.len(), units, "restock sweeper told Redis of returns it had missed");
                metrics::counter!("restocks_swept_total").increment(returned.len() as u64);
            }
            Err(err) => tracing::warn!(%sale_id, error = %err, "restock sweeper could not restock"),
        }
    }
}

/// What a close attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// The end moved (anti-sniping): try again then.
    NotYet(DateTime<Utc>),
    Closed {
        sold: bool,
    },
}

/// Ends auctions: `close_auction.lua` decides sold or unsold, Postgres records it and
/// creates the winner's order.
#[derive(Clone)]
pub struct AuctionCloser {
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
    auctions: AuctionService,
}

impl AuctionCloser {
    pub fn new(db: DatabaseConnection, redis: Redis, keys: Keys, auctions: AuctionService) -> Self {
        Self { db, redis, keys, auctions }
    }

    /// Closes the auction if its end has come: the script makes Redis refuse every later
    /// bid, then one transaction records the outcome and, for a sale, creates the winner's
    /// order on the normal payment-timeout path. Running it twice changes nothing the
    /// second time (the outcome is written only while the auction is `open`).
    #[tracing::instrument(skip(self))]
    pub async fn close(&self, id: Uuid) -> Result<Closing> {
        let (price_cents, leader, end_ms, sold) = match self.close_in_redis(id).await? {
            Close::NotYet { end_ms } => {
                let end_at = millis(end_ms);
                schedule_auction_close(&self.db, id, end_at).await?;
                return Ok(Closing::NotYet(end_at));
            }
            Close::Closed { price_cents, leader, end_ms, sold, .. } => (price_cents, leader, end_ms, sold),
            Close::Missing => return Err(Error::unavailable("redis")),
        };
        let price = (price_cents > 0).then(|| Money::from_cents(price_cents));
        let txn = self.db.begin().await?;
        let winner = if sold { leader } else { None };
        let finished = auctions::finish(&txn, id, sold, winner, price.map(Money::decimal), millis(end_ms)).await?;
        if let (Some(row), Some(winner), Some(price)) = (finished.clone(), winner, price) {
            let order_id = Uuid::now_v7();
            let timeout_ms = i64::from(row.payment_timeout_secs) * 1000;
            let order = NewOrder {
                id: order_id,
                user_id: winner,
                kind: OrderKind::Auction.as_str(),
                total: price.decimal(),
                payment_timeout_ms: timeout_ms,
                lines: vec![NewLine {
                    product_id: None,
                    title: row.title.clone(),
                    quantity: 1,
                    unit_price: price.decimal(),
                }],
            };
            orders::insert(&txn, &[order]).await?;
            auctions::set_order(&txn, id, order_id).await?;
            announce_and_schedule_close(&txn, OrderKind::Auction, &[order_id], timeout_ms).await?;
            tracing::info!(auction_id = %id, %winner, %price, "auction sold");
        }
        let moved = finished.is_some();
        txn.commit().await?;
        if moved
            && let Err(err) =
                live::announce_close(&mut self.redis.clone(), &self.keys, id, sold, winner, price_cents).await
        {
            tracing::warn!(auction_id = %id, error = %err, "could not announce the close");
        }
        // Counted by the close that recorded the outcome, not by a redelivered message.
        if moved {
            metrics::counter!("auctions_closed_total", "status" => if sold { "sold" } else { "unsold" }).increment(1);
        }
        Ok(Closing::Closed { sold })
    }
}

impl AuctionCloser {
    /// Closes the live state, and makes sure Postgres holds every bid it counts: Redis may
    /// hold a last bid whose write is still under way or was abandoned (its instance died).
    /// Then the state is dropped and rebuilt from Postgres, which also makes Postgres refuse
    /// that bid if it comes late, and closed again: the winner is always a written bid.
    async fn close_in_redis(&self, id: Uuid) -> Result<Close> {
        let mut redis = self.redis.clone();
        let mut answer = live::close(&mut redis, &self.keys, id).await?;
        for _ in 0..3 {
            match &answer {
                Close::Missing => self.auctions.rebuild(id).await?,
                Close::Closed { seq, generation, .. } => {
                    let row = auctions::find(&self.db, id).await?.ok_or(Error::NotFound("auction"))?;
                    if i64::from(row.bid_count) == *seq {
                        return Ok(answer);
                    }
                    tracing::warn!(auction_id = %id, redis_seq = seq, postgres_seq = row.bid_count, "closing: a bid is not written; rebuilding the live state");
                    self.auctions.drop_live_state(id, generation).await?;
                    self.auctions.rebuild(id).await?;
                }
                Close::NotYet { .. } => return Ok(answer),
            }
            answer = live::close(&mut redis, &self.keys, id).await?;
        }
        Err(Error::unavailable("postgres"))
    }
}

/// Handles one `auction.close` message.
pub async fn handle_auction_close(closer: &AuctionCloser, delivery: Delivery) -> Outcome {
    let message: CloseAuction = match delivery.json("auction close") {
        Ok(message) => message,
        Err(dead) => return dead,
    };
    match closer.close(message.auction_id).await {
        Ok(_) => Outcome::Ack,
        Err(Error::NotFound(_)) => Outcome::Dead(anyhow::anyhow!("no auction {}", message.auction_id)),
        Err(err) => err.outcome(&format!("closing auction {}", message.auction_id)),
    }
}

/// Every `every`, closes open auctions whose end passed more than `every` ago: the delay
/// queue normally got there first.
pub async fn sweep_auctions(db: DatabaseConnection, closer: AuctionCloser, every: Duration, stop: CancellationToken) {
    repeat(every, stop, || close_overdue_auctions(&db, &closer, every)).await
}

async fn close_overdue_auctions(db: &DatabaseConnection, closer: &AuctionCloser, every: Duration) {
    let overdue = match auctions::overdue(db, every.as_millis() as i64).await {
        Ok(ids) => ids,
        Err(err) => {
            tracing::warn!(error = %err, "auction sweeper could not look for overdue auctions");
            return;
        }
    };
    for id in overdue {
        if let Err(err) = closer.close(id).await {
            tracing::warn!(auction_id = %id, error = %err, "auction sweeper could not close");
        }
    }
}

/// Runs `round` every `every` until `stop` fires; a slow round delays the next tick
/// instead of bunching them up.
async fn repeat<F, Fut>(every: Duration, stop: CancellationToken, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        round().await;
    }
}
