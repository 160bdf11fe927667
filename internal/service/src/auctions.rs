//! Live auctions: creation, the live view and the bid path.
//!
//! The bid path: one Lua script swaps in the higher bid and hands out its `seq`; the bid is
//! written to Postgres in `seq` order ([`crate::bid_writer`]) and only then answered 201
//! and announced on pub/sub. A bid that cannot be written is undone by dropping the live
//! state, which the next request rebuilds from Postgres under a new generation. The close
//! at the end runs in the workers ([`crate::closer`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use domain::auction::{AuctionStatus, NewAuction, min_next_bid};
use domain::{IdempotencyKey, Money, PageRequest};
use platform::Redis;
use repo::cache::Keys;
use repo::cache::auctions::{self as live, Announced, Bid, BidRequest, Snapshot};
use repo::db::Page;
use repo::db::auctions::{self, AuctionRow, BidRow, NewBid};
use repo::db::outbox::{self, Outgoing};
use repo::mq::messages::CloseAuction;
use repo::mq::topology::AUCTION_CLOSE;
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use uuid::Uuid;

use crate::bid_writer::BidWriter;
use crate::error::{Error, Result};
use crate::jwt::Caller;
use crate::singleflight::SingleFlight;

#[derive(Debug, Clone)]
pub struct AuctionView {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub start_price: Money,
    pub min_increment: Money,
    pub reserve_price: Option<Money>,
    /// Only while buy-now is on offer (see [`buy_now_on_offer`]).
    pub buy_now_price: Option<Money>,
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
        let closed_in_redis = live.as_ref().is_some_and(|l| l.closed);
        let (current_price, leader_id, bid_count, end_at) = match &live {
            Some(l) => (
                (l.seq > 0).then(|| Money::from_cents(l.price_cents)),
                l.leader,
                l.seq,
                millis(l.end_ms).max(row.end_at),
            ),
            None => (row.current_price.map(Money::from_decimal), row.leader_id, i64::from(row.bid_count), row.end_at),
        };
        // Postgres says `open` until the close recorded `sold` or `unsold`.
        let status = match row.status.parse::<AuctionStatus>() {
            Ok(closed) if closed.is_closed() => closed,
            _ if Utc::now() < row.start_at => AuctionStatus::Scheduled,
            _ => AuctionStatus::Live,
        };
        let reserve_price = row.reserve_price.map(Money::from_decimal);
        let on_offer = !status.is_closed() && !closed_in_redis && buy_now_on_offer(reserve_price, current_price);
        Self {
            id: row.id,
            title: row.title,
            description: row.description,
            start_price,
            min_increment,
            reserve_price,
            buy_now_price: row.buy_now_price.map(Money::from_decimal).filter(|_| on_offer),
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

/// Buy-now stays on offer until the first bid that meets the reserve (the first bid when
/// there is no reserve); `buy_now.lua` decides, this only says what to show.
fn buy_now_on_offer(reserve: Option<Money>, current_price: Option<Money>) -> bool {
    match (reserve, current_price) {
        (_, None) => true,
        (Some(reserve), Some(price)) => price < reserve,
        (None, Some(_)) => false,
    }
}

/// What a bidder offers: a bid at exactly this amount, or a maximum for the site to bid up
/// to on their behalf (proxy bidding, decided in `place_bid.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Amount(Money),
    Max(Money),
}

/// An accepted bid (or a leader's raised maximum): the auction after it.
#[derive(Clone, PartialEq, Eq)]
pub struct Placed {
    pub price: Money,
    pub seq: i64,
    pub end_at: DateTime<Utc>,
    pub leader_id: Uuid,
    /// The caller leads (an automatic answer may have outbid their bid at once).
    pub leading: bool,
    /// The caller's own maximum: for the caller's eyes only.
    pub max_amount: Option<Money>,
}

/// Leaves the maximum out: nothing logs a bidder's maximum.
impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placed")
            .field("price", &self.price)
            .field("seq", &self.seq)
            .field("leading", &self.leading)
            .finish_non_exhaustive()
    }
}

/// A persisted bid, as anyone may see it (without the maximum behind it).
#[derive(Debug, Clone)]
pub struct BidView {
    pub seq: i64,
    pub user_id: Uuid,
    pub amount: Money,
    pub auto: bool,
    pub placed_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
}

impl From<BidRow> for BidView {
    fn from(row: BidRow) -> Self {
        Self {
            seq: row.seq,
            user_id: row.user_id,
            amount: Money::from_decimal(row.amount),
            auto: row.auto,
            placed_at: row.placed_at,
            end_at: row.end_at,
        }
    }
}

#[derive(Clone)]
pub struct AuctionService {
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
    idempotency_ttl: Duration,
    writer: BidWriter,
    rebuilds: Arc<SingleFlight<Uuid, Result<bool, String>>>,
}

impl AuctionService {
    pub fn new(
        db: DatabaseConnection,
        redis: Redis,
        keys: Keys,
        idempotency_ttl: Duration,
        bid_write_timeout: Duration,
    ) -> Self {
        let writer = BidWriter::start(db.clone(), bid_write_timeout);
        Self { db, redis, keys, idempotency_ttl, writer, rebuilds: Arc::default() }
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
                buy_now_price: new.buy_now_price.map(Money::decimal),
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

    /// The hot path: one Lua script, then one (shared, batched) Postgres write of the bids
    /// it produced (the caller's and, with proxy bidding, the leader's automatic answer).
    pub async fn bid(&self, caller: &Caller, id: Uuid, offer: Offer, key: Option<&IdempotencyKey>) -> Result<Placed> {
        let (amount, maximum) = match offer {
            Offer::Amount(amount) => (amount, false),
            Offer::Max(max) => (max, true),
        };
        let request = || BidRequest {
            user_id: caller.user_id,
            amount_cents: amount.cents(),
            maximum,
            idempotency_key: key.map(IdempotencyKey::as_str),
            idempotency_ttl_ms: self.idempotency_ttl.as_millis() as u64,
        };
        let mut redis = self.redis.clone();
        let mut answer = live::place_bid(&mut redis, &self.keys, id, request()).await?;
        if answer == Bid::Missing {
            self.rebuild(id).await?;
            answer = live::place_bid(&mut redis, &self.keys, id, request()).await?;
        }
        let current = |cents: i64| (cents > 0).then(|| Money::from_cents(cents));
        let (outcome, result) = match answer {
            Bid::Accepted(accepted) => {
                if self.write(id, caller.user_id, &accepted).await {
                    self.announce(id, &accepted).await;
                    let outcome = if accepted.bids.is_empty() { "max_raised" } else { "accepted" };
                    (outcome, Ok(placed(caller.user_id, &accepted)))
                } else {
                    self.undo(id, &accepted.generation, caller.user_id, key).await;
                    ("unavailable", Err(Error::unavailable("postgres")))
                }
            }
            Bid::TooLow { price_cents, minimum_cents } => (
                "too_low",
                Err(Error::BidTooLow { current: current(price_cents), minimum: Money::from_cents(minimum_cents) }),
            ),
            Bid::Closed { price_cents } => ("closed", Err(Error::AuctionClosed { current: current(price_cents) })),
            Bid::MaxLowered { max_cents } => {
                ("max_lowered", Err(Error::MaxAmountLowered { maximum: Money::from_cents(max_cents) }))
            }
            Bid::Missing => ("unavailable", Err(Error::unavailable("redis"))),
        };
        metrics::counter!("bids_total", "outcome" => outcome).increment(1);
        result
    }

    /// Writes what the script accepted: its bids, or (when the leader raised its own
    /// maximum) the raise, behind the leader's last bid.
    async fn write(&self, id: Uuid, caller: Uuid, accepted: &live::Accepted) -> bool {
        let generation = &accepted.generation;
        if accepted.bids.is_empty() {
            let max = Money::from_cents(accepted.your_max_cents).decimal();
            return self.writer.raise(id, generation, accepted.seq, caller, max).await;
        }
        let rows = accepted
            .bids
            .iter()
            .map(|bid| NewBid {
                seq: bid.seq,
                user_id: bid.user_id,
                amount: Money::from_cents(bid.amount_cents).decimal(),
                max_amount: Money::from_cents(bid.max_cents).decimal(),
                auto: bid.auto,
                end_at: millis(accepted.end_ms),
                placed_at: millis(accepted.placed_ms),
            })
            .collect();
        self.writer.write(id, generation, rows).await
    }

    /// Tells the watchers about every written bid, oldest first (a watcher may skip to the
    /// latest).
    async fn announce(&self, id: Uuid, accepted: &live::Accepted) {
        let mut redis = self.redis.clone();
        let increment = accepted.min_next_cents - accepted.price_cents;
        for bid in &accepted.bids {
            let announced = Announced {
                seq: bid.seq,
                leader: bid.user_id,
                price_cents: bid.amount_cents,
                end_ms: accepted.end_ms,
                min_next_cents: bid.amount_cents + increment,
                auto: bid.auto,
            };
            if bid.auto {
                metrics::counter!("bids_auto_total").increment(1);
            }
            if let Err(err) = live::announce_bid(&mut redis, &self.keys, id, &announced).await {
                tracing::warn!(auction_id = %id, seq = bid.seq, error = %err, "could not announce a written bid");
            }
        }
    }

    /// A bid Postgres did not take is taken back: its whole live state goes (it was priced
    /// into every later bid) and is rebuilt from Postgres on the next request. If Redis is
    /// unreachable too, the state's generation is refused by Postgres anyway.
    async fn undo(&self, id: Uuid, generation: &str, user_id: Uuid, key: Option<&IdempotencyKey>) {
        let key = key.map(IdempotencyKey::as_str);
        match live::undo_bid(&mut self.redis.clone(), &self.keys, id, generation, user_id, key).await {
            Ok(true) => {
                tracing::warn!(auction_id = %id, generation, "a bid could not be written: live state dropped for a rebuild")
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(auction_id = %id, error = %err, "could not undo an unwritten bid in redis"),
        }
    }

    /// Drops the live state of generation `generation` (see [`Self::undo`]); the closer uses it when
    /// Redis holds a bid that Postgres does not.
    pub(crate) async fn drop_live_state(&self, id: Uuid, generation: &str) -> Result<()> {
        live::undo_bid(&mut self.redis.clone(), &self.keys, id, generation, Uuid::nil(), None).await?;
        Ok(())
    }

    /// Rebuilds the live state from Postgres if Redis has none. Every answered bid is in
    /// Postgres, so the rebuilt state includes them all; bids of the lost state still on
    /// their way are refused by the new generation (and answered 503).
    pub async fn rebuild(&self, id: Uuid) -> Result<()> {
        let found = self.rebuilds.run(id, || self.load(id)).await.map_err(|e| Error::Unavailable {
            service: "redis",
            cause: Some(anyhow::anyhow!("rebuilding the live state of auction {id} failed: {e}")),
        })?;
        if found { Ok(()) } else { Err(Error::NotFound("auction")) }
    }

    async fn load(&self, id: Uuid) -> Result<bool, String> {
        self.load_locked(id).await.map_err(|e| e.to_string())
    }

    /// Reads the auction and its last bid with the row locked, loads them into Redis under
    /// a new generation and makes Postgres take only that generation's bids, all before
    /// the lock goes: a bid write of the old state lands before the read (and is in the
    /// snapshot) or after the switch (and is refused). If Redis already holds a state (an
    /// instance rebuilt it first), it is kept when Postgres takes its generation, else
    /// dropped and replaced.
    async fn load_locked(&self, id: Uuid) -> Result<bool> {
        let txn = self.db.begin().await?;
        let Some(row) = auctions::lock(&txn, id).await? else { return Ok(false) };
        let top = auctions::top_bid(&txn, id).await?;
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
            max_cents: top.as_ref().map_or(0, |t| Money::from_decimal(t.max_amount).cents()),
            closed: match row.status.parse::<AuctionStatus>() {
                Ok(AuctionStatus::Sold) => Some(true),
                Ok(AuctionStatus::Unsold) => Some(false),
                _ => None,
            },
            generation: Uuid::new_v4().simple().to_string(),
        };
        let mut redis = self.redis.clone();
        let mut in_redis = live::load(&mut redis, &self.keys, id, &snapshot).await?;
        if in_redis != snapshot.generation && in_redis != row.bid_generation {
            // A state Postgres does not back (say, loaded by a rebuild that then failed).
            live::undo_bid(&mut redis, &self.keys, id, &in_redis, Uuid::nil(), None).await?;
            in_redis = live::load(&mut redis, &self.keys, id, &snapshot).await?;
        }
        if in_redis == snapshot.generation {
            auctions::set_generation(&txn, id, &snapshot.generation).await?;
            tracing::info!(auction_id = %id, seq = snapshot.seq, "auction live state loaded from Postgres");
        }
        txn.commit().await?;
        Ok(true)
    }
}

/// The answer to the caller.
fn placed(caller: Uuid, accepted: &live::Accepted) -> Placed {
    Placed {
        price: Money::from_cents(accepted.price_cents),
        seq: accepted.seq,
        end_at: millis(accepted.end_ms),
        leader_id: accepted.leader,
        leading: accepted.leader == caller,
        max_amount: (accepted.your_max_cents > 0).then(|| Money::from_cents(accepted.your_max_cents)),
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
pub(crate) async fn schedule_auction_close(
    db: &impl ConnectionTrait,
    auction_id: Uuid,
    end_at: DateTime<Utc>,
) -> Result<()> {
    let remaining = (end_at - Utc::now()).num_milliseconds();
    let payload = CloseAuction { auction_id };
    let delay_ms = Some(close_delay_ms(remaining));
    outbox::enqueue(db, Outgoing { routing_key: AUCTION_CLOSE.key, payload: &payload, delay_ms }).await?;
    Ok(())
}

pub(crate) fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(Utc::now)
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
