//! An auction's live state in Redis, the scripts that change it, and its pub/sub events.

use std::collections::HashMap;
use std::sync::LazyLock;

use platform::Redis;
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::Keys;
use super::lua::Lua;

static PLACE_BID: LazyLock<Lua> = LazyLock::new(|| Lua::new("place_bid", include_str!("lua/place_bid.lua")));
static CLOSE: LazyLock<Lua> = LazyLock::new(|| Lua::new("close_auction", include_str!("lua/close_auction.lua")));
static LOAD: LazyLock<Lua> = LazyLock::new(|| Lua::new("load_auction", include_str!("lua/load_auction.lua")));
static BUY_NOW: LazyLock<Lua> = LazyLock::new(|| Lua::new("buy_now", include_str!("lua/buy_now.lua")));
static UNDO: LazyLock<Lua> = LazyLock::new(|| Lua::new("undo_bid", include_str!("lua/undo_bid.lua")));

pub struct AuctionKeys {
    pub state: String,
    tag: String,
}

impl Keys {
    pub fn auction(&self, auction_id: Uuid) -> AuctionKeys {
        let tag = format!("{}:{{auction:{auction_id}}}", self.prefix());
        AuctionKeys { state: format!("{tag}:state"), tag }
    }

    /// The pub/sub channel of live auction events (JSON, see [`LiveEvent`]).
    pub fn auction_channel(&self) -> String {
        format!("{}:auctions:live", self.prefix())
    }
}

impl AuctionKeys {
    fn idempotency(&self, user_id: Uuid, key: &str) -> String {
        format!("{}:idem:{user_id}:{key}", self.tag)
    }
}

/// One bid a call of `place_bid.lua` produced: the caller's, or the leader's automatic answer.
/// `max_cents` is the bidder's maximum behind it (the amount itself for a plain bid): it
/// goes to Postgres with the bid, never to anyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBid {
    pub seq: i64,
    pub user_id: Uuid,
    pub amount_cents: i64,
    pub max_cents: i64,
    pub auto: bool,
}

/// Accepted by Redis (or replayed for an `Idempotency-Key`), not yet written: `generation` is
/// the live state's generation, which Postgres checks before it takes the bids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub generation: String,
    pub placed_ms: i64,
    pub end_ms: i64,
    /// The price, leader and seq after the call.
    pub price_cents: i64,
    pub leader: Uuid,
    pub seq: i64,
    pub min_next_cents: i64,
    /// The caller's maximum, to show to the caller only (0: none to show).
    pub your_max_cents: i64,
    /// The bids to write, oldest first: none when the leader raised its own maximum, two
    /// when the leader's maximum answered the caller's bid.
    pub bids: Vec<NewBid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bid {
    Accepted(Accepted),
    TooLow {
        price_cents: i64,
        minimum_cents: i64,
    },
    Closed {
        price_cents: i64,
    },
    /// The leader offered a maximum below its own standing one.
    MaxLowered {
        max_cents: i64,
    },
    Missing,
}

pub struct BidRequest<'a> {
    pub user_id: Uuid,
    pub amount_cents: i64,
    /// A maximum for the site to bid up to, rather than a bid at exactly `amount_cents`.
    pub maximum: bool,
    pub idempotency_key: Option<&'a str>,
    pub idempotency_ttl_ms: u64,
}

pub async fn place_bid(
    redis: &mut Redis,
    keys: &Keys,
    auction_id: Uuid,
    bid: BidRequest<'_>,
) -> redis::RedisResult<Bid> {
    let auction = keys.auction(auction_id);
    let reply: Vec<redis::Value> = PLACE_BID
        .key(&auction.state)
        .key(auction.idempotency(bid.user_id, bid.idempotency_key.unwrap_or("-")))
        .arg(bid.user_id.to_string())
        .arg(bid.amount_cents)
        .arg(if bid.maximum { "max" } else { "bid" })
        .arg(u8::from(bid.idempotency_key.is_some()))
        .arg(bid.idempotency_ttl_ms)
        .invoke_async(redis)
        .await?;
    let at = |i: usize| reply.get(i).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok()).unwrap_or(0);
    let text = |i: usize| reply.get(i).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default();
    let user = |i: usize| text(i).parse().unwrap_or_default();
    Ok(match at(0) {
        1 => Bid::Accepted(Accepted {
            generation: text(1),
            placed_ms: at(2),
            end_ms: at(3),
            price_cents: at(4),
            leader: user(5),
            seq: at(6),
            min_next_cents: at(7),
            your_max_cents: at(8),
            bids: (0..at(9) as usize)
                .map(|n| 10 + 5 * n)
                .map(|i| NewBid {
                    seq: at(i),
                    user_id: user(i + 1),
                    amount_cents: at(i + 2),
                    max_cents: at(i + 3),
                    auto: at(i + 4) == 1,
                })
                .collect(),
        }),
        2 => Bid::TooLow { price_cents: at(1), minimum_cents: at(2) },
        3 => Bid::Closed { price_cents: at(1) },
        4 => Bid::MaxLowered { max_cents: at(1) },
        _ => Bid::Missing,
    })
}

/// Drops the live state of generation `generation` (and the bid's `Idempotency-Key`): a bid of
/// it could not be written, so the state is rebuilt from Postgres. True if it was there.
pub async fn undo_bid(
    redis: &mut Redis,
    keys: &Keys,
    auction_id: Uuid,
    generation: &str,
    user_id: Uuid,
    idempotency_key: Option<&str>,
) -> redis::RedisResult<bool> {
    let auction = keys.auction(auction_id);
    let dropped: i64 = UNDO
        .key(&auction.state)
        .key(auction.idempotency(user_id, idempotency_key.unwrap_or("-")))
        .arg(generation)
        .arg(u8::from(idempotency_key.is_some()))
        .invoke_async(redis)
        .await?;
    Ok(dropped == 1)
}

/// A bid written to Postgres, for the watchers (see [`LiveEvent::Bid`]).
pub struct Announced {
    pub seq: i64,
    pub leader: Uuid,
    pub price_cents: i64,
    pub end_ms: i64,
    pub min_next_cents: i64,
    /// The leader's automatic raise (proxy bidding).
    pub auto: bool,
}

/// Tells every instance's watchers about a written bid.
pub async fn announce_bid(redis: &mut Redis, keys: &Keys, auction_id: Uuid, bid: &Announced) -> redis::RedisResult<()> {
    let event = json!({
        "t": "bid", "a": auction_id, "p": bid.price_cents.to_string(), "l": bid.leader, "s": bid.seq,
        "e": bid.end_ms.to_string(), "n": bid.min_next_cents.to_string(), "auto": bid.auto,
    });
    redis.publish(keys.auction_channel(), event.to_string()).await
}

/// Tells every instance's watchers how an auction ended.
pub async fn announce_close(
    redis: &mut Redis,
    keys: &Keys,
    auction_id: Uuid,
    sold: bool,
    leader: Option<Uuid>,
    price_cents: i64,
) -> redis::RedisResult<()> {
    let event = json!({
        "t": "closed", "a": auction_id, "o": if sold { "sold" } else { "unsold" },
        "l": leader.map(|l| l.to_string()).unwrap_or_default(), "p": price_cents.to_string(),
    });
    redis.publish(keys.auction_channel(), event.to_string()).await
}

/// Tells every instance's watchers that the lot went to `winner` at `price_cents` (a
/// second-chance offer: the previous winner left it unpaid).
pub async fn announce_second_chance(
    redis: &mut Redis,
    keys: &Keys,
    auction_id: Uuid,
    winner: Uuid,
    price_cents: i64,
) -> redis::RedisResult<()> {
    let event = json!({ "t": "second_chance", "a": auction_id, "l": winner, "p": price_cents.to_string() });
    redis.publish(keys.auction_channel(), event.to_string()).await
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    NotYet {
        end_ms: i64,
    },
    /// `bought`: closed by buy-now (the leader is the buyer, the price the buy-now price).
    Closed {
        price_cents: i64,
        leader: Option<Uuid>,
        seq: i64,
        end_ms: i64,
        sold: bool,
        generation: String,
        bought: bool,
    },
    Missing,
}

pub async fn close(redis: &mut Redis, keys: &Keys, auction_id: Uuid) -> redis::RedisResult<Close> {
    let reply: Vec<redis::Value> = CLOSE.key(keys.auction(auction_id).state).invoke_async(redis).await?;
    let int = |i: usize| reply.get(i).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok()).unwrap_or(0);
    let text = |i: usize| reply.get(i).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default();
    Ok(match int(0) {
        1 => Close::NotYet { end_ms: int(1) },
        2 => Close::Closed {
            price_cents: int(1),
            leader: text(2).parse().ok(),
            seq: int(3),
            end_ms: int(4),
            sold: text(5) == "sold",
            generation: text(6),
            bought: int(7) == 1,
        },
        _ => Close::Missing,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuyNow {
    /// Closed now, sold to this buyer, in live state `generation`.
    Bought {
        generation: String,
    },
    /// This buyer bought it earlier (a retry).
    BoughtEarlier {
        generation: String,
    },
    Unavailable,
    Missing,
}

/// Closes the auction sold to `user_id` at `price_cents`, if buy-now is still on offer.
pub async fn buy_now(
    redis: &mut Redis,
    keys: &Keys,
    auction_id: Uuid,
    user_id: Uuid,
    price_cents: i64,
) -> redis::RedisResult<BuyNow> {
    let reply: Vec<redis::Value> = BUY_NOW
        .key(keys.auction(auction_id).state)
        .arg(user_id.to_string())
        .arg(price_cents)
        .invoke_async(redis)
        .await?;
    let int = |i: usize| reply.get(i).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok()).unwrap_or(0);
    let generation = reply.get(1).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default();
    Ok(match int(0) {
        1 => BuyNow::Bought { generation },
        2 => BuyNow::BoughtEarlier { generation },
        3 => BuyNow::Unavailable,
        _ => BuyNow::Missing,
    })
}

/// A Postgres snapshot of an auction, for [`load`].
pub struct Snapshot {
    pub start_ms: i64,
    pub end_ms: i64,
    pub price_cents: i64,
    pub leader: Option<Uuid>,
    pub seq: i64,
    pub start_price_cents: i64,
    pub min_increment_cents: i64,
    pub window_ms: i64,
    pub extend_by_ms: i64,
    pub reserve_cents: i64,
    /// The leader's maximum (its bid when it has none above it).
    pub max_cents: i64,
    pub closed: Option<bool>,
    /// The generation the loaded state gets (Postgres must hold the same one).
    pub generation: String,
}

/// Loads the snapshot unless a live state is there already; returns the generation of
/// the state Redis holds afterwards (the snapshot's when it loaded).
pub async fn load(redis: &mut Redis, keys: &Keys, auction_id: Uuid, s: &Snapshot) -> redis::RedisResult<String> {
    LOAD.key(keys.auction(auction_id).state)
        .arg(s.start_ms)
        .arg(s.end_ms)
        .arg(s.price_cents)
        .arg(s.leader.map(|l| l.to_string()).unwrap_or_default())
        .arg(s.seq)
        .arg(s.start_price_cents)
        .arg(s.min_increment_cents)
        .arg(s.window_ms)
        .arg(s.extend_by_ms)
        .arg(s.reserve_cents)
        .arg(u8::from(s.closed.is_some()))
        .arg(match s.closed {
            Some(true) => "sold",
            Some(false) => "unsold",
            None => "",
        })
        .arg(&s.generation)
        .arg(s.max_cents)
        .invoke_async(redis)
        .await
}

/// The live state. The API shows all but `max_cents`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub price_cents: i64,
    pub leader: Option<Uuid>,
    /// The leader's maximum (for `verify`; never shown).
    pub max_cents: i64,
    pub seq: i64,
    pub end_ms: i64,
    pub closed: bool,
    pub generation: String,
}

pub async fn live(redis: &mut Redis, keys: &Keys, auction_id: Uuid) -> redis::RedisResult<Option<Live>> {
    let fields: HashMap<String, String> = redis.hgetall(keys.auction(auction_id).state).await?;
    if fields.is_empty() {
        return Ok(None);
    }
    let int = |name: &str| fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Some(Live {
        price_cents: int("price"),
        leader: fields.get("leader").and_then(|l| l.parse().ok()),
        max_cents: int("max"),
        seq: int("seq"),
        end_ms: int("end"),
        closed: fields.get("closed").is_some_and(|c| c == "1"),
        generation: fields.get("generation").cloned().unwrap_or_default(),
    }))
}

/// What [`announce_bid`], [`announce_close`] and [`announce_second_chance`] publish on the
/// auction channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum LiveEvent {
    Bid {
        #[serde(rename = "a")]
        auction_id: Uuid,
        #[serde(rename = "p")]
        price_cents: String,
        #[serde(rename = "l")]
        leader: Uuid,
        #[serde(rename = "s")]
        seq: i64,
        #[serde(rename = "e")]
        end_ms: String,
        #[serde(rename = "n")]
        min_next_cents: String,
        #[serde(default)]
        auto: bool,
    },
    Closed {
        #[serde(rename = "a")]
        auction_id: Uuid,
        #[serde(rename = "o")]
        outcome: String,
        #[serde(rename = "l")]
        leader: String,
        #[serde(rename = "p")]
        price_cents: String,
    },
    SecondChance {
        #[serde(rename = "a")]
        auction_id: Uuid,
        #[serde(rename = "l")]
        winner: Uuid,
        #[serde(rename = "p")]
        price_cents: String,
    },
}

impl LiveEvent {
    pub fn auction_id(&self) -> Uuid {
        match self {
            LiveEvent::Bid { auction_id, .. }
            | LiveEvent::Closed { auction_id, .. }
            | LiveEvent::SecondChance { auction_id, .. } => *auction_id,
        }
    }
}
