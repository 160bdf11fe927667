//! An auction's live state in Redis, its bid stream, and the scripts that change them.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Script};
use serde::Deserialize;
use uuid::Uuid;

use super::Keys;

static PLACE_BID: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/place_bid.lua")));
static CLOSE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/close_auction.lua")));
static LOAD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/load_auction.lua")));

/// The consumer group the bid relay reads the streams with.
pub const RELAY_GROUP: &str = "relay";

pub struct AuctionKeys {
    pub state: String,
    pub bids: String,
    tag: String,
}

impl Keys {
    pub fn auction(&self, auction_id: Uuid) -> AuctionKeys {
        let tag = format!("{}:{{auction:{auction_id}}}", self.prefix());
        AuctionKeys { state: format!("{tag}:state"), bids: format!("{tag}:bids"), tag }
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bid {
    Accepted { seq: i64, end_ms: i64, price_cents: i64 },
    TooLow { price_cents: i64, minimum_cents: i64 },
    Closed { price_cents: i64 },
    Missing,
}

pub struct BidRequest<'a> {
    pub user_id: Uuid,
    pub amount_cents: i64,
    pub idempotency_key: Option<&'a str>,
    pub idempotency_ttl_ms: u64,
}

pub async fn place_bid(
    redis: &mut ConnectionManager,
    keys: &Keys,
    auction_id: Uuid,
    bid: BidRequest<'_>,
) -> redis::RedisResult<Bid> {
    let auction = keys.auction(auction_id);
    let reply: Vec<i64> = PLACE_BID
        .key(&auction.state)
        .key(&auction.bids)
        .key(auction.idempotency(bid.user_id, bid.idempotency_key.unwrap_or("-")))
        .arg(bid.user_id.to_string())
        .arg(bid.amount_cents)
        .arg(u8::from(bid.idempotency_key.is_some()))
        .arg(bid.idempotency_ttl_ms)
        .arg(keys.auction_channel())
        .arg(auction_id.to_string())
        .invoke_async(redis)
        .await?;
    let at = |i: usize| reply.get(i).copied().unwrap_or(0);
    Ok(match at(0) {
        1 => Bid::Accepted { seq: at(1), end_ms: at(2), price_cents: at(3) },
        2 => Bid::TooLow { price_cents: at(1), minimum_cents: at(2) },
        3 => Bid::Closed { price_cents: at(1) },
        _ => Bid::Missing,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    NotYet { end_ms: i64 },
    Closed { price_cents: i64, leader: Option<Uuid>, seq: i64, end_ms: i64, sold: bool },
    Missing,
}

pub async fn close(redis: &mut ConnectionManager, keys: &Keys, auction_id: Uuid) -> redis::RedisResult<Close> {
    let reply: Vec<redis::Value> = CLOSE
        .key(keys.auction(auction_id).state)
        .arg(keys.auction_channel())
        .arg(auction_id.to_string())
        .invoke_async(redis)
        .await?;
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
        },
        _ => Close::Missing,
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
    pub closed: Option<bool>,
}

pub async fn load(
    redis: &mut ConnectionManager,
    keys: &Keys,
    auction_id: Uuid,
    s: &Snapshot,
) -> redis::RedisResult<bool> {
    let auction = keys.auction(auction_id);
    let loaded: i64 = LOAD
        .key(&auction.state)
        .key(&auction.bids)
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
        .invoke_async(redis)
        .await?;
    Ok(loaded == 1)
}

/// The live state, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub price_cents: i64,
    pub leader: Option<Uuid>,
    pub seq: i64,
    pub end_ms: i64,
    pub closed: bool,
}

pub async fn live(redis: &mut ConnectionManager, keys: &Keys, auction_id: Uuid) -> redis::RedisResult<Option<Live>> {
    let fields: HashMap<String, String> = redis.hgetall(keys.auction(auction_id).state).await?;
    if fields.is_empty() {
        return Ok(None);
    }
    let int = |name: &str| fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Some(Live {
        price_cents: int("price"),
        leader: fields.get("leader").and_then(|l| l.parse().ok()),
        seq: int("seq"),
        end_ms: int("end"),
        closed: fields.get("closed").is_some_and(|c| c == "1"),
    }))
}

/// What the scripts publish on the auction channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
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
}

impl LiveEvent {
    pub fn auction_id(&self) -> Uuid {
        match self {
            LiveEvent::Bid { auction_id, .. } | LiveEvent::Closed { auction_id, .. } => *auction_id,
        }
    }
}

/// One bid as it sits in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedBid {
    pub entry_id: String,
    pub seq: i64,
    pub user_id: Uuid,
    pub amount_cents: i64,
    pub end_ms: i64,
    pub placed_ms: i64,
}

/// Reads bids for the relay: its own pending entries first (`pending = true`, id `0`:
/// read but not yet acknowledged, e.g. the broker was down), otherwise new ones (`>`),
/// waiting up to `block_ms`. `conn` must be a dedicated connection: a blocking read would
/// stall every other user of a shared one.
pub async fn read_bids(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
    consumer: &str,
    count: usize,
    block_ms: usize,
    pending: bool,
) -> redis::RedisResult<Vec<(String, Vec<StreamedBid>)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut options = StreamReadOptions::default().group(RELAY_GROUP, consumer).count(count);
    if !pending {
        options = options.block(block_ms);
    }
    let id = if pending { "0" } else { ">" };
    let ids = vec![id; keys.len()];
    let reply: Option<StreamReadReply> = conn.xread_options(keys, &ids, &options).await?;
    Ok(reply
        .map(|r| r.keys.into_iter().map(|k| (k.key, k.ids.iter().filter_map(parse_bid).collect())).collect())
        .unwrap_or_default())
}

fn parse_bid(entry: &redis::streams::StreamId) -> Option<StreamedBid> {
    let text = |field: &str| entry.map.get(field).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
    let int = |field: &str| text(field).and_then(|v| v.parse::<i64>().ok());
    Some(StreamedBid {
        entry_id: entry.id.clone(),
        seq: int("seq")?,
        user_id: text("user")?.parse().ok()?,
        amount_cents: int("amount")?,
        end_ms: int("end")?,
        placed_ms: int("at")?,
    })
}

/// The relay has the bids confirmed by RabbitMQ: acknowledge and drop them.
pub async fn forget_bids(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    entry_ids: &[String],
) -> redis::RedisResult<()> {
    if entry_ids.is_empty() {
        return Ok(());
    }
    redis::pipe().xack(key, RELAY_GROUP, entry_ids).ignore().xdel(key, entry_ids).ignore().query_async(conn).await
}

/// Makes sure the consumer group exists (after a flush the stream and its group are gone).
pub async fn ensure_group(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> redis::RedisResult<()> {
    match conn.xgroup_create_mkstream::<_, _, _, ()>(key, RELAY_GROUP, "0").await {
        Ok(()) => Ok(()),
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        Err(err) => Err(err),
    }
}

/// Takes over entries another relay read but never acknowledged (it died), once they have
/// been idle for `min_idle_ms`.
pub async fn claim_abandoned(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    consumer: &str,
    min_idle_ms: usize,
) -> redis::RedisResult<usize> {
    let reply: StreamAutoClaimReply = conn
        .xautoclaim_options(key, RELAY_GROUP, consumer, min_idle_ms, "0", StreamAutoClaimOptions::default().count(500))
        .await?;
    Ok(reply.claimed.len())
}
