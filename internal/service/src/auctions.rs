//! Live auctions: creation, the bid path, the close, and the write-behind of bids.
//!
//! The bid path touches no database: one Lua script swaps in the higher bid, appends it to
//! the auction's Redis stream and publishes it on pub/sub. The bid relay moves the stream
//! to RabbitMQ (so an accepted bid survives a broker outage), and the bid consumer writes
//! batches into Postgres.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use domain::auction::{AuctionStatus, NewAuction, min_next_bid};
use domain::order::OrderKind;
use domain::{Money, PageRequest};
use platform::Broker;
use redis::aio::ConnectionManager;
use repo::cache::Keys;
use repo::cache::auctions::{self as live, Bid, BidRequest, Close, Snapshot};
use repo::db::Page;
use repo::db::auctions::{self, AuctionRow, BidRow, NewBid};
use repo::db::orders::{self, NewLine, NewOrder};
use repo::db::outbox::{self, Outgoing};
use repo::mq::consumer::Delivery;
use repo::mq::messages::{BidBatch, CloseAuction, PersistBid};
use repo::mq::topology::{AUCTION_BIDS, AUCTION_CLOSE};
use repo::mq::{ConfirmPublisher, Message, Outcome, Topology};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::jwt::Caller;
use crate::orders::announce_and_schedule_close;
use crate::singleflight::SingleFlight;

#[derive(Debug, Clone)]
pub struct AuctionView {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub start_price: Money,
    pub min_increment: Money,
    pub reserve_price: Option<Money>,
    pub current_price: Option<Money>,
    pub leader_id: Option<Uuid>,
    pub bid_count: i64,
    pub min_next_bid: Money,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub extend_window_secs: i32,
    pub extend_by_secs: i32,
    pub payment_timeout_secs: i32,
    pub status: AuctionStatus,
    pub winner_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
}

impl AuctionView {
    /// Postgres has the definition and the outcome; Redis (when loaded) the live price.
    fn new(row: AuctionRow, live: Option<live::Live>) -> Self {
        let start_price = Money::from_decimal(row.start_price);
        let min_increment = Money::from_decimal(row.min_increment);
        let (current_price, leader_id, bid_count, end_at) = match &live {
            Some(l) => (
                (l.seq > 0).then(|| Money::from_cents(l.price_cents)),
                l.leader,
                l.seq,
                millis(l.end_ms).max(row.end_at),
            ),
            None => (row.current_price.map(Money::from_decimal), row.leader_id, i64::from(row.bid_count), row.end_at),
        };
        let status = match row.status.as_str() {
            "sold" => AuctionStatus::Sold,
            "unsold" => AuctionStatus::Unsold,
            _ if Utc::now() < row.start_at => AuctionStatus::Scheduled,
            _ => AuctionStatus::Live,
        };
        Self {
            id: row.id,
            title: row.title,
            description: row.description,
            start_price,
            min_increment,
            reserve_price: row.reserve_price.map(Money::from_decimal),
            min_next_bid: min_next_bid(current_price, start_price, min_increment),
            current_price,
            leader_id,
            bid_count,
            start_at: row.start_at,
            end_at,
            extend_window_secs: row.extend_window_secs,
            extend_by_secs: row.extend_by_secs,
            payment_timeout_secs: row.payment_timeout_secs,
            status,
            winner_id: row.winner_id,
            order_id: row.order_id,
        }
    }
}

/// An accepted bid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub price: Money,
    pub seq: i64,
    pub end_at: DateTime<Utc>,
}

/// A persisted bid.
#[derive(Debug, Clone)]
pub struct BidView {
    pub seq: i64,
    pub user_id: Uuid,
    pub amount: Money,
    pub placed_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
}

impl From<BidRow> for BidView {
    fn from(row: BidRow) -> Self {
        Self {
            seq: row.seq,
            user_id: row.user_id,
            amount: Money::from_decimal(row.amount),
            placed_at: row.placed_at,
            end_at: row.end_at,
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

#[derive(Clone)]
pub struct AuctionService {
    db: DatabaseConnection,
    redis: ConnectionManager,
    keys: Keys,
    idempotency_ttl_ms: u64,
    rebuilds: Arc<SingleFlight<Uuid, Result<bool, String>>>,
}

impl AuctionService {
    pub fn new(db: DatabaseConnection, redis: ConnectionManager, keys: Keys, idempotency_ttl_ms: u64) -> Self {
        Self { db, redis, keys, idempotency_ttl_ms, rebuilds: Arc::default() }
    }

    /// Creates an auction and, in the same transaction, the outbox message that will close
    /// it; then loads its live state into Redis.
    pub async fn create(&self, caller: &Caller, new: NewAuction) -> Result<AuctionView> {
        caller.require_admin()?;
        let txn = self.db.begin().await?;
        let row = auctions::insert(
            &txn,
            &auctions::NewAuction {
                id: Uuid::now_v7(),
                title: &new.title,
                description: &new.description,
                start_price: new.start_price.decimal(),
                min_increment: new.min_increment.decimal(),
                reserve_price: new.reserve_price.map(Money::decimal),
                start_at: new.start_at,
                end_at: new.end_at,
                extend_window_secs: new.extend_window_secs as i32,
                extend_by_secs: new.extend_by_secs as i32,
                payment_timeout_secs: new.payment_timeout_secs as i32,
            },
        )
        .await?;
        schedule_auction_close(&txn, row.id, row.end_at).await?;
        txn.commit().await?;
        self.rebuild(row.id).await?;
        Ok(AuctionView::new(row, None))
    }

    /// A page of auctions; `current` keeps the open ones (scheduled or live).
    pub async fn list(&self, page: PageRequest, current: bool) -> Result<Page<AuctionView>> {
        let rows = auctions::list(&self.db, page.offset(), page.page_size, current).await?;
        let mut items = Vec::with_capacity(rows.items.len());
        for row in rows.items {
            let live = self.live(row.id).await;
            items.push(AuctionView::new(row, live));
        }
        Ok(Page { items, total: rows.total })
    }

    pub async fn get(&self, id: Uuid) -> Result<AuctionView> {
        let row = auctions::find(&self.db, id).await?.ok_or(Error::NotFound("auction"))?;
        let live = self.live(id).await;
        Ok(AuctionView::new(row, live))
    }

    async fn live(&self, id: Uuid) -> Option<live::Live> {
        live::live(&mut self.redis.clone(), &self.keys, id).await.ok().flatten()
    }

    pub async fn bids(&self, id: Uuid, page: PageRequest) -> Result<Page<BidView>> {
        auctions::find(&self.db, id).await?.ok_or(Error::NotFound("auction"))?;
        let rows = auctions::bids(&self.db, id, page.offset(), page.page_size).await?;
        Ok(Page { items: rows.items.into_iter().map(BidView::from).collect(), total: rows.total })
    }

    /// The hot path: one Lua script. No database, no broker wait.
    pub async fn bid(&self, caller: &Caller, id: Uuid, amount: &str, key: Option<&str>) -> Result<Placed> {
        let amount = Money::parse_positive("amount", amount)?;
        let key = key.map(crate::orders::parse_key).transpose()?;
        let request = || BidRequest {
            user_id: caller.user_id,
            amount_cents: amount.cents(),
            idempotency_key: key,
            idempotency_ttl_ms: self.idempotency_ttl_ms,
        };
        let mut redis = self.redis.clone();
        let mut answer = live::place_bid(&mut redis, &self.keys, id, request()).await?;
        if answer == Bid::Missing {
            self.rebuild(id).await?;
            answer = live::place_bid(&mut redis, &self.keys, id, request()).await?;
        }
        let current = |cents: i64| (cents > 0).then(|| Money::from_cents(cents));
        let (outcome, result) = match answer {
            Bid::Accepted { seq, end_ms, price_cents } => {
                ("accepted", Ok(Placed { price: Money::from_cents(price_cents), seq, end_at: millis(end_ms) }))
            }
            Bid::TooLow { price_cents, minimum_cents } => (
                "too_low",
                Err(Error::BidTooLow { current: current(price_cents), minimum: Money::from_cents(minimum_cents) }),
            ),
            Bid::Closed { price_cents } => ("closed", Err(Error::AuctionClosed { current: current(price_cents) })),
            Bid::Missing => ("unavailable", Err(Error::Unavailable("redis"))),
        };
        metrics::counter!("bids_total", "outcome" => outcome).increment(1);
        result
    }

    /// Rebuilds the live state from Postgres (the highest persisted bid) if Redis has none.
    /// Bids that were still in a flushed Redis stream are gone: run Redis with an append-only
    /// file in production (docker-compose.yml does) to keep them.
    pub async fn rebuild(&self, id: Uuid) -> Result<()> {
        let found = self.rebuilds.run(id, || self.load(id)).await.map_err(|e| {
            tracing::error!(auction_id = %id, error = %e, "rebuilding the auction's live state failed");
            Error::Unavailable("redis")
        })?;
        if found { Ok(()) } else { Err(Error::NotFound("auction")) }
    }

    async fn load(&self, id: Uuid) -> Result<bool, String> {
        let Some(row) = auctions::find(&self.db, id).await.map_err(|e| e.to_string())? else { return Ok(false) };
        let top = auctions::top_bid(&self.db, id).await.map_err(|e| e.to_string())?;
        let end_at = top.as_ref().map_or(row.end_at, |t| t.end_at.max(row.end_at));
        let snapshot = Snapshot {
            start_ms: row.start_at.timestamp_millis(),
            end_ms: end_at.timestamp_millis(),
            price_cents: top.as_ref().map_or(0, |t| Money::from_decimal(t.amount).cents()),
            leader: top.as_ref().map(|t| t.user_id),
            seq: top.as_ref().map_or(0, |t| t.seq),
            start_price_cents: Money::from_decimal(row.start_price).cents(),
            min_increment_cents: Money::from_decimal(row.min_increment).cents(),
            window_ms: i64::from(row.extend_window_secs) * 1000,
            extend_by_ms: i64::from(row.extend_by_secs) * 1000,
            reserve_cents: row.reserve_price.map_or(0, |r| Money::from_decimal(r).cents()),
            closed: match row.status.as_str() {
                "sold" => Some(true),
                "unsold" => Some(false),
                _ => None,
            },
        };
        let loaded = live::load(&mut self.redis.clone(), &self.keys, id, &snapshot).await.map_err(|e| e.to_string())?;
        if loaded {
            tracing::info!(auction_id = %id, seq = snapshot.seq, "auction live state loaded from Postgres");
        }
        Ok(true)
    }

    /// Closes the auction if its end has come: the script makes Redis refuse every later
    /// bid, then one transaction records the outcome and, for a sale, creates the winner's
    /// order on the normal payment-timeout path. Running it twice changes nothing the
    /// second time (the outcome is written only while the auction is `open`).
    #[tracing::instrument(skip(self))]
    pub async fn close(&self, id: Uuid) -> Result<Closing> {
        let mut redis = self.redis.clone();
        let mut answer = live::close(&mut redis, &self.keys, id).await?;
        if answer == Close::Missing {
            self.rebuild(id).await?;
            answer = live::close(&mut redis, &self.keys, id).await?;
        }
        let (price_cents, leader, end_ms, sold) = match answer {
            Close::NotYet { end_ms } => {
                let end_at = millis(end_ms);
                schedule_auction_close(&self.db, id, end_at).await?;
                return Ok(Closing::NotYet(end_at));
            }
            Close::Closed { price_cents, leader, end_ms, sold, .. } => (price_cents, leader, end_ms, sold),
            Close::Missing => return Err(Error::Unavailable("redis")),
        };
        let price = (price_cents > 0).then(|| Money::from_cents(price_cents));
        let txn = self.db.begin().await?;
        let winner = if sold { leader } else { None };
        let finished = auctions::finish(&txn, id, sold, winner, price.map(Money::decimal), millis(end_ms)).await?;
        if let (Some(row), Some(winner), Some(price)) = (finished, winner, price) {
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
        txn.commit().await?;
        metrics::counter!("auctions_closed_total", "status" => if sold { "sold" } else { "unsold" }).increment(1);
        Ok(Closing::Closed { sold })
    }
}

/// Delays for closing an auction come from a fixed ladder, so the number of delay queues
/// stays small however the ends fall; each hop takes the largest step that does not pass
/// the end, and the close consumer schedules the next hop until the end has come.
const CLOSE_LADDER_MS: &[i64] =
    &[100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000, 21_600_000, 86_400_000];

pub fn close_delay_ms(remaining_ms: i64) -> i64 {
    CLOSE_LADDER_MS.iter().rev().copied().find(|step| *step <= remaining_ms).unwrap_or(CLOSE_LADDER_MS[0])
}

/// Queues the `auction.close` message for `end_at` (through the outbox, in `db`'s
/// transaction when it is one).
async fn schedule_auction_close(db: &impl ConnectionTrait, auction_id: Uuid, end_at: DateTime<Utc>) -> Result<()> {
    let remaining = (end_at - Utc::now()).num_milliseconds();
    let payload = CloseAuction { auction_id };
    let delay_ms = Some(close_delay_ms(remaining));
    outbox::enqueue(db, Outgoing { routing_key: AUCTION_CLOSE.key, payload: &payload, delay_ms }).await?;
    Ok(())
}

fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(Utc::now)
}

/// Handles one `auction.close` message.
pub async fn handle_close(auctions: &AuctionService, delivery: Delivery) -> Outcome {
    let message: CloseAuction = match serde_json::from_slice(&delivery.body) {
        Ok(message) => message,
        Err(err) => return Outcome::Dead(anyhow::anyhow!("unreadable auction close: {err}")),
    };
    match auctions.close(message.auction_id).await {
        Ok(_) => Outcome::Ack,
        Err(Error::NotFound(_)) => Outcome::Dead(anyhow::anyhow!("no auction {}", message.auction_id)),
        Err(err) => Outcome::Retry(anyhow::anyhow!("closing auction {}: {err}", message.auction_id)),
    }
}

/// Handles one `auction.bids` message: the batch goes into Postgres in one transaction.
pub async fn handle_bids(db: &DatabaseConnection, delivery: Delivery) -> Outcome {
    let batch: BidBatch = match serde_json::from_slice(&delivery.body) {
        Ok(batch) => batch,
        Err(err) => return Outcome::Dead(anyhow::anyhow!("unreadable bid batch: {err}")),
    };
    let bids: Vec<NewBid> = batch
        .bids
        .iter()
        .map(|b| NewBid {
            seq: b.seq,
            user_id: b.user_id,
            amount: Money::from_cents(b.amount_cents).decimal(),
            end_at: millis(b.end_ms),
            placed_at: millis(b.placed_ms),
        })
        .collect();
    let written = async {
        let txn = db.begin().await?;
        auctions::record_bids(&txn, batch.auction_id, &bids).await?;
        txn.commit().await
    };
    match written.await {
        Ok(()) => {
            metrics::counter!("bids_persisted_total").increment(bids.len() as u64);
            Outcome::Ack
        }
        Err(err) => Outcome::Retry(anyhow::anyhow!("persisting bids: {err}")),
    }
}

/// Every `every`, closes open auctions whose end passed more than `every` ago: the delay
/// queue normally got there first.
pub async fn sweep(db: DatabaseConnection, auctions: AuctionService, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let overdue = match auctions::overdue(&db, every.as_millis() as i64).await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(error = %err, "auction sweeper could not look for overdue auctions");
                continue;
            }
        };
        for id in overdue {
            if let Err(err) = auctions.close(id).await {
                tracing::warn!(auction_id = %id, error = %err, "auction sweeper could not close");
            }
        }
    }
}

/// After a round that found less than a full batch, the relay waits this long for the
/// streams to fill: under load, each message (and each transaction of the bid consumer)
/// then carries a hundred bids instead of a handful. Bids reach Postgres this much later;
/// bidders are not slowed at all.
const LINGER: Duration = Duration::from_millis(20);

/// Moves accepted bids from the auctions' Redis streams to RabbitMQ.
///
/// It reads with a consumer group and acknowledges an entry only after the broker
/// confirmed the message carrying it: with RabbitMQ down, bids wait in the stream (and the
/// bidders are not slowed at all); a relay that dies leaves its entries pending and another
/// one claims them after 30 s.
pub struct BidRelay {
    pub db: DatabaseConnection,
    pub client: redis::Client,
    pub keys: Keys,
    pub broker: Arc<Broker>,
    pub topology: Topology,
    pub confirm_timeout: Duration,
    pub batch: usize,
}

impl BidRelay {
    pub async fn run(self, stop: CancellationToken) {
        let publisher = ConfirmPublisher::new(self.broker.clone(), self.confirm_timeout);
        let consumer = format!("relay-{}", Uuid::new_v4().simple());
        let mut conn = None;
        let mut streams: HashMap<String, Uuid> = HashMap::new();
        let mut refreshed = Instant::now() - Duration::from_secs(60);
        let mut claimed = Instant::now();
        loop {
            if stop.is_cancelled() {
                return;
            }
            if conn.is_none() {
                // Its own connection, with a response timeout above the blocking read's 500 ms.
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
                match self.client.get_multiplexed_async_connection_with_config(&config).await {
                    Ok(c) => conn = Some(c),
                    Err(err) => {
                        tracing::warn!(error = %err, "bid relay cannot reach redis");
                        pause(&stop, Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let redis = conn.as_mut().expect("connected above");
            if refreshed.elapsed() > Duration::from_secs(2) {
                if let Ok(ids) = auctions::with_live_streams(&self.db).await {
                    streams = ids.into_iter().map(|id| (self.keys.auction(id).bids, id)).collect();
                    for key in streams.keys() {
                        let _ = live::ensure_group(redis, key).await;
                    }
                }
                refreshed = Instant::now();
            }
            if streams.is_empty() {
                pause(&stop, Duration::from_millis(500)).await;
                continue;
            }
            if claimed.elapsed() > Duration::from_secs(10) {
                for key in streams.keys() {
                    let _ = live::claim_abandoned(redis, key, &consumer, 30_000).await;
                }
                claimed = Instant::now();
            }
            let keys: Vec<String> = streams.keys().cloned().collect();
            match self.relay_once(redis, &publisher, &keys, &streams, &consumer).await {
                Ok(Some(moved)) if moved < self.batch => pause(&stop, LINGER).await,
                Ok(Some(_)) => {}
                Ok(None) => pause(&stop, Duration::from_millis(500)).await,
                Err(err) => {
                    tracing::warn!(error = %err, "bid relay round failed; retrying");
                    if err.code() == Some("NOGROUP") {
                        refreshed = Instant::now() - Duration::from_secs(60);
                    } else if err.is_io_error() || err.is_connection_dropped() {
                        conn = None;
                    }
                    pause(&stop, Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One round: own pending entries first (a publish that failed), else new ones. Returns
    /// how many bids it moved, or None when a publish failed, so the caller backs off
    /// instead of spinning.
    async fn relay_once(
        &self,
        redis: &mut redis::aio::MultiplexedConnection,
        publisher: &ConfirmPublisher,
        keys: &[String],
        streams: &HashMap<String, Uuid>,
        consumer: &str,
    ) -> redis::RedisResult<Option<usize>> {
        let mut batches = live::read_bids(redis, keys, consumer, self.batch, 0, true).await?;
        batches.retain(|(_, bids)| !bids.is_empty());
        if batches.is_empty() {
            batches = live::read_bids(redis, keys, consumer, self.batch, 500, false).await?;
        }
        let mut moved = 0;
        for (key, bids) in batches.into_iter().filter(|(_, bids)| !bids.is_empty()) {
            let Some(&auction_id) = streams.get(&key) else { continue };
            let message = BidBatch {
                auction_id,
                bids: bids
                    .iter()
                    .map(|b| PersistBid {
                        seq: b.seq,
                        user_id: b.user_id,
                        amount_cents: b.amount_cents,
                        end_ms: b.end_ms,
                        placed_ms: b.placed_ms,
                    })
                    .collect(),
            };
            let message = Message {
                exchange: self.topology.exchange(),
                routing_key: AUCTION_BIDS.key.to_owned(),
                body: serde_json::to_vec(&message).unwrap_or_default(),
                message_id: Some(format!("{auction_id}-{}", bids[0].seq)),
                mandatory: true,
                ..Default::default()
            };
            if let Err(err) = publisher.publish_all(&[message]).await {
                tracing::warn!(%auction_id, error = %err, bids = bids.len(), "bids wait in the stream: publish not confirmed");
                return Ok(None);
            }
            let ids: Vec<String> = bids.iter().map(|b| b.entry_id.clone()).collect();
            live::forget_bids(redis, &key, &ids).await?;
            metrics::counter!("bids_relayed_total").increment(ids.len() as u64);
            moved += ids.len();
        }
        Ok(Some(moved))
    }
}

async fn pause(stop: &CancellationToken, duration: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_delays_take_the_largest_step_that_fits() {
        assert_eq!(close_delay_ms(90_000), 60_000);
        assert_eq!(close_delay_ms(1_500), 1_000);
        assert_eq!(close_delay_ms(999_999_999), 86_400_000);
        assert_eq!(close_delay_ms(40), 100, "an end in the past or very near still waits a little");
        assert_eq!(close_delay_ms(-5_000), 100);
    }
}
