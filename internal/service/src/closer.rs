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
use repo::cache::auctions::{self as live, BuyNow, Close};
use repo::cache::sales::Returned;
use repo::db::auctions;
use repo::db::orders::{self, Finish, NewLine, NewOrder};
use repo::db::sales;
use repo::mq::Outcome;
use repo::mq::consumer::Delivery;
use repo::mq::messages::{CloseAuction, CloseOrders};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auctions::{AuctionService, millis, schedule_auction_close};
use crate::error::{Error, Result};
use crate::jwt::Caller;
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
    let mut batches: BTreeMap<(Uuid, u16, i64), Vec<Returned>> = BTreeMap::new();
    for d in due {
        let returned = Returned { order_id: d.order_id, user_id: d.user_id, quantity: d.quantity };
        batches.entry((d.sale_id, d.stock_buckets as u16, d.returned_version)).or_default().push(returned);
    }
    for ((sale_id, buckets, version), returned) in batches {
        match order_consumer::restock(db, redis, keys, sale_id, buckets, version, &returned).await {
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

/// Ends auctions: `close_auction.lua` decides sold or unsold (or `buy_now.lua` ended it
/// early), Postgres records it and creates the winner's order.
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

    /// Closes the auction if its end has come (or a buy-now closed it): the script makes
    /// Redis refuse every later bid, then one transaction records the outcome and, for a
    /// sale, creates the winner's order on the normal payment-timeout path. Running it
    /// twice changes nothing the second time (the outcome is written only while the
    /// auction is `open`).
    #[tracing::instrument(skip(self))]
    pub async fn close(&self, id: Uuid) -> Result<Closing> {
        let (price_cents, leader, end_ms, sold, bought_in) = match self.close_in_redis(id).await? {
            Close::NotYet { end_ms } => {
                let end_at = millis(end_ms);
                schedule_auction_close(&self.db, id, end_at).await?;
                return Ok(Closing::NotYet(end_at));
            }
            Close::Closed { price_cents, leader, end_ms, sold, bought, generation, .. } => {
                (price_cents, leader, end_ms, sold, bought.then_some(generation))
            }
            Close::Missing => return Err(Error::unavailable("redis")),
        };
        let price = (price_cents > 0).then(|| Money::from_cents(price_cents));
        let winner = if sold { leader } else { None };
        let outcome = auctions::Outcome {
            sold,
            winner,
            final_price: price.map(Money::decimal),
            end_at: millis(end_ms),
            bought_in,
        };
        let txn = self.db.begin().await?;
        let finished = auctions::finish(&txn, id, &outcome).await?;
        if let (Some(row), Some(winner), Some(price)) = (finished.as_ref(), winner, price) {
            give_order(&txn, row, winner, price).await?;
            tracing::info!(auction_id = %id, %winner, %price, bought_now = row.bought_now, "auction sold");
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

    /// Buy-it-now: `buy_now.lua` closes the live state sold to the caller (atomically
    /// against bids), then [`Self::close`] records it like any close. Returns the order.
    ///
    /// If this process dies between the two, the state stays closed and sold to the buyer
    /// in Redis, and the auction's close message (or the sweeper) records exactly that at
    /// the original end. If the state is dropped and rebuilt in between (a bid of it could
    /// not be written), Postgres no longer takes its generation: nothing is recorded, the
    /// auction stays open and the buyer gets a 503 to try again. Buying again what one has
    /// bought answers with the same order (a retry, with or without an `Idempotency-Key`),
    /// and records the purchase if an earlier attempt could not.
    #[tracing::instrument(skip(self, caller), fields(user_id = %caller.user_id))]
    pub async fn buy_now(&self, caller: &Caller, id: Uuid) -> Result<Uuid> {
        let row = auctions::find(&self.db, id).await?.ok_or(Error::NotFound("auction"))?;
        let Some(price) = row.buy_now_price.map(Money::from_decimal) else {
            return Err(Error::BuyNowUnavailable("this auction has no buy-now price"));
        };
        if row.status != "open" {
            return bought_by(&row, caller);
        }
        let mut redis = self.redis.clone();
        let mut answer = live::buy_now(&mut redis, &self.keys, id, caller.user_id, price.cents()).await?;
        if answer == BuyNow::Missing {
            self.auctions.rebuild(id).await?;
            answer = live::buy_now(&mut redis, &self.keys, id, caller.user_id, price.cents()).await?;
        }
        match answer {
            BuyNow::Bought { .. } | BuyNow::BoughtEarlier { .. } => {}
            BuyNow::Unavailable => return Err(unavailable_now()),
            BuyNow::Missing => return Err(Error::unavailable("redis")),
        }
        self.close(id).await?;
        let row = auctions::find(&self.db, id).await?.ok_or(Error::NotFound("auction"))?;
        if row.status == "open" {
            return Err(Error::unavailable("redis"));
        }
        bought_by(&row, caller)
    }
}

fn unavailable_now() -> Error {
    Error::BuyNowUnavailable(
        "buy-now is not on offer: the auction is closed, has not started, or a bid met the reserve",
    )
}

/// The caller's order if they bought this closed auction now.
fn bought_by(row: &auctions::AuctionRow, caller: &Caller) -> Result<Uuid> {
    match row.order_id {
        Some(order_id) if row.bought_now && row.winner_id == Some(caller.user_id) => Ok(order_id),
        _ => Err(unavailable_now()),
    }
}

/// Gives `winner` the auction's order at `price` on the normal payment-timeout path and
/// makes it the auction's current order: the winner's at the close, or a second-chance
/// offer's ([`crate::second_chance`]).
pub(crate) async fn give_order(
    txn: &DatabaseTransaction,
    row: &auctions::AuctionRow,
    winner: Uuid,
    price: Money,
) -> Result<Uuid> {
    let order_id = Uuid::now_v7();
    let timeout_ms = i64::from(row.payment_timeout_secs) * 1000;
    let order = NewOrder {
        id: order_id,
        user_id: winner,
        kind: OrderKind::Auction.as_str(),
        total: price.decimal(),
        payment_timeout_ms: timeout_ms,
        lines: vec![NewLine { product_id: None, title: row.title.clone(), quantity: 1, unit_price: price.decimal() }],
    };
    orders::insert(txn, &[order]).await?;
    auctions::set_order(txn, row.id, order_id, winner, price.decimal()).await?;
    announce_and_schedule_close(txn, OrderKind::Auction, &[order_id], timeout_ms).await?;
    Ok(order_id)
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
                // A buy-now's winner does not depend on the bids.
                Close::Closed { bought: true, .. } => return Ok(answer),
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
