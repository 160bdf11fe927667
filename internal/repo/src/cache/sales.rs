//! A flash sale's hot state in Redis, and the scripts that change it.
//!
//! All keys of one sale share the hash tag `{sale:<id>}`, so each script touches a single
//! Redis Cluster slot. The scripts are `redis::Script`s, named for their spans
//! (`super::lua`): called by SHA, and re-sent automatically after a `NOSCRIPT` (a restarted
//! or flushed Redis forgets them).

use std::collections::HashMap;
use std::sync::LazyLock;

use platform::Redis;
use redis::AsyncCommands;
use uuid::Uuid;

use super::Keys;
use super::buckets;
use super::lua::Lua;

static RESERVE: LazyLock<Lua> = LazyLock::new(|| Lua::new("reserve_stock", include_str!("lua/reserve_stock.lua")));
static UNDO: LazyLock<Lua> = LazyLock::new(|| Lua::new("undo_reservation", include_str!("lua/undo_reservation.lua")));
static CLAIM: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("claim_reservations", include_str!("lua/claim_reservations.lua")));
static SETTLE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new("settle_reservations", include_str!("lua/settle_reservations.lua")));
static FAIL: LazyLock<Lua> = LazyLock::new(|| Lua::new("fail_reservations", include_str!("lua/fail_reservations.lua")));
static RESTOCK: LazyLock<Lua> = LazyLock::new(|| Lua::new("restock_sale", include_str!("lua/restock_sale.lua")));
static LOAD: LazyLock<Lua> = LazyLock::new(|| Lua::new("load_sale", include_str!("lua/load_sale.lua")));
static PUBLISHED: LazyLock<Lua> = LazyLock::new(|| Lua::new("mark_published", include_str!("lua/mark_published.lua")));
static REAP: LazyLock<Lua> = LazyLock::new(|| Lua::new("reap_reservations", include_str!("lua/reap_reservations.lua")));
static TRANSFER_OUT: LazyLock<Lua> = LazyLock::new(|| Lua::new("transfer_out", include_str!("lua/transfer_out.lua")));
static TRANSFER_IN: LazyLock<Lua> = LazyLock::new(|| Lua::new("transfer_in", include_str!("lua/transfer_in.lua")));

/// The key names of one sale (of one of its stock buckets).
pub struct SaleKeys {
    pub state: String,
    pub buyers: String,
    pub inflight: String,
    pub claimed: String,
    pub undone: String,
    pub settled: String,
    pub returned: String,
    /// Transfers this bucket gave and that may not be finished (transfer id -> "dest units ms").
    pub moves: String,
    /// Transfers this bucket received.
    pub received: String,
    tag: String,
}

impl Keys {
    /// The keys of a sale of one bucket (bucket 0 of any sale).
    pub fn sale(&self, sale_id: Uuid) -> SaleKeys {
        self.sale_bucket(sale_id, 0)
    }

    /// The keys of one stock bucket of a sale, on the bucket's own hash tag
    /// ([`buckets::tag`]).
    pub fn sale_bucket(&self, sale_id: Uuid, bucket: u16) -> SaleKeys {
        let tag = format!("{}:{{{}}}", self.prefix(), buckets::tag(sale_id, bucket));
        SaleKeys {
            state: format!("{tag}:state"),
            buyers: format!("{tag}:buyers"),
            inflight: format!("{tag}:inflight"),
            claimed: format!("{tag}:claimed"),
            undone: format!("{tag}:undone"),
            settled: format!("{tag}:settled"),
            returned: format!("{tag}:returned"),
            moves: format!("{tag}:moves"),
            received: format!("{tag}:received"),
            tag,
        }
    }

    /// The pub/sub channel of "units came back" notices (payload: the sale id).
    pub fn sale_restock_channel(&self) -> String {
        format!("{}:sales:restock", self.prefix())
    }
}

impl SaleKeys {
    fn idempotency(&self, user_id: Uuid, key: &str) -> String {
        format!("{}:idem:{user_id}:{key}", self.tag)
    }
}

/// What `reserve_stock.lua` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Reserved. `reservation_id` differs from the one asked for when an
    /// `Idempotency-Key` replayed an earlier reservation.
    Reserved {
        reservation_id: String,
        left: i64,
        generation: String,
    },
    SoldOut {
        left: i64,
    },
    LimitReached {
        held: i64,
        limit: i64,
    },
    NotStarted,
    Ended,
    /// The `Idempotency-Key` produced a reservation of another body (quantity).
    KeyReused,
    /// The hot state is not in Redis: rebuild it from Postgres and try again.
    Missing,
}

/// One purchase, as `reserve_stock.lua` takes it.
pub struct Ask<'a> {
    pub user_id: Uuid,
    pub quantity: u32,
    pub reservation_id: Uuid,
    pub idempotency_key: Option<&'a str>,
    /// What the key must be sent with again to replay (the body's quantity).
    pub fingerprint: &'a str,
    pub idempotency_ttl_ms: u64,
    /// How long the reservation may stay unpublished before the reaper undoes it.
    pub deadline_ms: u64,
}

pub async fn reserve(redis: &mut Redis, keys: &SaleKeys, ask: &Ask<'_>) -> redis::RedisResult<Reserve> {
    let idem = keys.idempotency(ask.user_id, ask.idempotency_key.unwrap_or("-"));
    let reply: Vec<redis::Value> = RESERVE
        .key(&keys.state)
        .key(&keys.buyers)
        .key(&keys.inflight)
        .key(idem)
        .key(&keys.undone)
        .arg(ask.user_id.to_string())
        .arg(ask.quantity)
        .arg(ask.reservation_id.to_string())
        .arg(u8::from(ask.idempotency_key.is_some()))
        .arg(ask.idempotency_ttl_ms)
        .arg(ask.deadline_ms)
        .arg(ask.fingerprint)
        .arg(ask.idempotency_key.unwrap_or("-"))
        .invoke_async(redis)
        .await?;
    let int = |i: usize| reply.get(i).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok()).unwrap_or(0);
    let text = |i: usize| reply.get(i).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default();
    Ok(match int(0) {
        1 => Reserve::Reserved { reservation_id: text(1), left: int(2), generation: text(3) },
        2 => Reserve::SoldOut { left: int(1) },
        3 => Reserve::LimitReached { held: int(1), limit: int(2) },
        4 if int(1) == 0 => Reserve::NotStarted,
        4 => Reserve::Ended,
        5 => Reserve::KeyReused,
        _ => Reserve::Missing,
    })
}

/// Decides, against the order consumer's claim, that a reservation is undone. `false`:
/// the consumer had already claimed it, so the message did arrive and it stands. The
/// caller records the failure in Postgres, then releases it with [`fail`].
pub async fn undo(redis: &mut Redis, keys: &SaleKeys, reservation_id: Uuid) -> redis::RedisResult<bool> {
    let undone: i64 = UNDO
        .key(&keys.state)
        .key(&keys.claimed)
        .key(&keys.undone)
        .arg(reservation_id.to_string())
        .invoke_async(redis)
        .await?;
    Ok(undone == 1)
}

/// The broker confirmed these reservations: the reaper leaves them alone from now on.
/// Per id, `false` when it was undone first (the reaper took it at its deadline).
pub async fn mark_published(redis: &mut Redis, keys: &SaleKeys, ids: &[Uuid]) -> redis::RedisResult<Vec<bool>> {
    let mut invocation = PUBLISHED.key(&keys.inflight);
    invocation.key(&keys.undone);
    for id in ids {
        invocation.arg(id.to_string());
    }
    let flags: Vec<i64> = invocation.invoke_async(redis).await?;
    Ok(flags.into_iter().map(|f| f == 1).collect())
}

/// A reservation that holds units: what an undo records and releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub reservation_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
}

/// Marks undone (and returns) up to `most` reservations past their deadline that were
/// neither published nor claimed, and those marked undone but never released.
pub async fn reap(redis: &mut Redis, keys: &SaleKeys, most: usize) -> redis::RedisResult<Vec<Held>> {
    let flat: Vec<String> = REAP
        .key(&keys.state)
        .key(&keys.inflight)
        .key(&keys.claimed)
        .key(&keys.undone)
        .arg(most)
        .invoke_async(redis)
        .await?;
    Ok(flat
        .chunks(3)
        .filter_map(|c| {
            Some(Held {
                reservation_id: c.first()?.parse().ok()?,
                user_id: c.get(1)?.parse().ok()?,
                quantity: c.get(2)?.parse().ok()?,
            })
        })
        .collect())
}

/// Claims reservations for the order consumer; returns, per id, whether it may proceed
/// (`false`: the API undid it after a failed publish).
pub async fn claim(redis: &mut Redis, keys: &SaleKeys, ids: &[Uuid]) -> redis::RedisResult<Vec<bool>> {
    let mut invocation = CLAIM.key(&keys.state);
    invocation.key(&keys.claimed).key(&keys.undone);
    for id in ids {
        invocation.arg(id.to_string());
    }
    let flags: Vec<i64> = invocation.invoke_async(redis).await?;
    Ok(flags.into_iter().map(|f| f == 1).collect())
}

/// A reservation committed in Postgres, for [`settle`].
pub struct Settled {
    pub reservation_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
    pub generation: String,
}

pub async fn settle(redis: &mut Redis, keys: &SaleKeys, version: i64, settled: &[Settled]) -> redis::RedisResult<()> {
    if settled.is_empty() {
        return Ok(());
    }
    let mut invocation = SETTLE.key(&keys.state);
    invocation.key(&keys.buyers).key(&keys.inflight).key(&keys.settled).arg(version);
    for s in settled {
        invocation.arg(s.reservation_id.to_string()).arg(s.user_id.to_string()).arg(s.quantity).arg(&s.generation);
    }
    invocation.invoke_async::<i64>(redis).await.map(|_| ())
}

/// Releases refused reservations: their units and buyer slots go back. Returns the units
/// put back on sale.
pub async fn fail(
    redis: &mut Redis,
    keys: &SaleKeys,
    channel: &str,
    sale_id: Uuid,
    ids: &[Uuid],
    forget: bool,
) -> redis::RedisResult<i64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut invocation = FAIL.key(&keys.state);
    invocation
        .key(&keys.buyers)
        .key(&keys.inflight)
        .key(&keys.undone)
        .arg(u8::from(forget))
        .arg(script_channel(redis, channel))
        .arg(sale_id.to_string());
    for id in ids {
        invocation.arg(id.to_string());
    }
    let units = invocation.invoke_async(redis).await?;
    announce_after_script(redis, channel, sale_id, units).await;
    Ok(units)
}

/// The channel a script publishes its restock notice on. On one server the script does it,
/// atomically with the units coming back. On a Redis Cluster a script may not publish to a
/// channel outside its sale's slot (and a plain PUBLISH would miss the sharded
/// subscribers), so it gets none and [`announce_after_script`] sends the notice.
fn script_channel<'a>(redis: &Redis, channel: &'a str) -> &'a str {
    if redis.is_cluster() { "" } else { channel }
}

/// On a Redis Cluster, the restock notice of a script that put `units` back. A lost notice
/// costs little (the local sold-out flags expire after `sales.sold_out_flag_ms`), so a
/// failure is logged, not returned: the units are back either way.
async fn announce_after_script(redis: &mut Redis, channel: &str, sale_id: Uuid, units: i64) {
    if redis.is_cluster()
        && units > 0
        && let Err(err) = redis.publish(channel, sale_id.to_string()).await
    {
        tracing::warn!(error = %err, %sale_id, "restock notice not sent");
    }
}

/// One order's units coming back, for [`restock`].
pub struct Returned {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
}

pub async fn restock(
    redis: &mut Redis,
    keys: &SaleKeys,
    channel: &str,
    sale_id: Uuid,
    version: i64,
    returned: &[Returned],
) -> redis::RedisResult<i64> {
    let mut invocation = RESTOCK.key(&keys.state);
    invocation.key(&keys.buyers).key(&keys.returned).arg(version);
    invocation.arg(script_channel(redis, channel)).arg(sale_id.to_string());
    for r in returned {
        invocation.arg(r.order_id.to_string()).arg(r.user_id.to_string()).arg(r.quantity);
    }
    let units = invocation.invoke_async(redis).await?;
    announce_after_script(redis, channel, sale_id, units).await;
    Ok(units)
}

/// A Postgres snapshot of a sale, for [`load`].
pub struct Snapshot {
    pub start_ms: i64,
    pub end_ms: i64,
    pub per_user_limit: i32,
    pub stock_left: i32,
    pub version: i64,
    pub generation: String,
    pub expire_at_ms: i64,
    pub buyers: Vec<(Uuid, i32)>,
    /// The Idempotency-Keys that produced the sale's recorded reservations.
    pub keys: Vec<KeyRecord>,
    pub idempotency_ttl_ms: u64,
    /// The transfers the bucket received (`stock_left` counts them already).
    pub received: Vec<Uuid>,
    /// How many stock buckets the sale has (a purchase finds its home bucket without
    /// Postgres).
    pub buckets: u16,
}

/// An `Idempotency-Key` a purchase was made with, and what it replays.
pub struct KeyRecord {
    pub user_id: Uuid,
    pub key: String,
    pub reservation_id: Uuid,
    pub fingerprint: String,
}

/// Loads the hot state unless one is there already; returns whether it loaded.
pub async fn load(redis: &mut Redis, keys: &SaleKeys, snapshot: &Snapshot) -> redis::RedisResult<bool> {
    let mut invocation = LOAD.key(&keys.state);
    invocation
        .key(&keys.buyers)
        .key(&keys.inflight)
        .key(&keys.claimed)
        .key(&keys.undone)
        .key(&keys.settled)
        .key(&keys.returned)
        .key(&keys.received)
        .key(&keys.moves);
    for record in &snapshot.keys {
        invocation.key(keys.idempotency(record.user_id, &record.key));
    }
    invocation
        .arg(snapshot.start_ms)
        .arg(snapshot.end_ms)
        .arg(snapshot.per_user_limit)
        .arg(snapshot.stock_left)
        .arg(snapshot.version)
        .arg(&snapshot.generation)
        .arg(snapshot.expire_at_ms)
        .arg(snapshot.idempotency_ttl_ms)
        .arg(snapshot.buyers.len())
        .arg(snapshot.buckets);
    for (user, held) in &snapshot.buyers {
        invocation.arg(user.to_string()).arg(*held);
    }
    for record in &snapshot.keys {
        invocation.arg(format!("{} {}", record.reservation_id, record.fingerprint));
    }
    for id in &snapshot.received {
        invocation.arg(id.to_string());
    }
    let loaded: i64 = invocation.invoke_async(redis).await?;
    Ok(loaded == 1)
}

/// Drops the hot state of a sale (bucket) whose Redis proved to be ahead of Postgres: the
/// next purchase finds it missing and rebuilds it from Postgres behind the rebuild barrier.
pub async fn forget_state(redis: &mut Redis, keys: &SaleKeys) -> redis::RedisResult<()> {
    redis.del::<_, ()>(&keys.state).await
}

/// The sale's number of stock buckets, as bucket 0's hot state recorded it when it loaded.
pub async fn bucket_count(redis: &mut Redis, keys: &SaleKeys) -> redis::RedisResult<Option<u16>> {
    redis.hget(&keys.state, "buckets").await
}

/// Units left for sale right now, if the hot state is loaded.
pub async fn remaining(redis: &mut Redis, keys: &SaleKeys) -> redis::RedisResult<Option<i64>> {
    redis.hget(&keys.state, "stock").await
}

/// Everything `verify` compares with Postgres.
#[derive(Debug, Clone, Default)]
pub struct HotState {
    pub stock: i64,
    /// Units held per buyer.
    pub buyers: HashMap<Uuid, i64>,
    /// Units of reservations not yet settled, per buyer.
    pub inflight: HashMap<Uuid, i64>,
    /// The ids of those reservations.
    pub inflight_ids: Vec<Uuid>,
}

pub async fn inspect(redis: &mut Redis, keys: &SaleKeys) -> redis::RedisResult<Option<HotState>> {
    let Some(stock) = remaining(redis, keys).await? else { return Ok(None) };
    let buyers: HashMap<String, i64> = redis.hgetall(&keys.buyers).await?;
    let inflight: HashMap<String, String> = redis.hgetall(&keys.inflight).await?;
    let mut state = HotState { stock, ..Default::default() };
    for (user, held) in buyers {
        if let Ok(user) = user.parse() {
            state.buyers.insert(user, held);
        }
    }
    for (id, held) in &inflight {
        let mut parts = held.split(' ');
        if let (Some(Ok(user)), Some(Ok(qty))) = (parts.next().map(str::parse), parts.next().map(str::parse::<i64>)) {
            *state.inflight.entry(user).or_default() += qty;
        }
        if let Ok(id) = id.parse() {
            state.inflight_ids.push(id);
        }
    }
    Ok(Some(state))
}

/// What [`transfer_out`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    /// The donor's hot state is missing.
    Missing,
    /// The donor had nothing to give (its stock, possibly below zero after a rebuild).
    Dry(i64),
    /// `units` left the donor under the transfer id; `left` stayed.
    Units { units: i64, left: i64 },
}

/// Step 1 of a transfer: the donor bucket gives up to `want` units for `dest`.
pub async fn transfer_out(
    redis: &mut Redis,
    donor: &SaleKeys,
    transfer_id: Uuid,
    dest: u16,
    want: i64,
) -> redis::RedisResult<Given> {
    let reply: Vec<i64> = TRANSFER_OUT
        .key(&donor.state)
        .key(&donor.moves)
        .arg(transfer_id.to_string())
        .arg(dest)
        .arg(want)
        .invoke_async(redis)
        .await?;
    Ok(match reply.as_slice() {
        [-1, ..] => Given::Missing,
        [0, left] => Given::Dry(*left),
        [units, left] => Given::Units { units: *units, left: *left },
        _ => Given::Missing,
    })
}

/// Step 3: the destination takes the units once. `None`: its hot state is missing (its
/// rebuild reads Postgres, which has them).
pub async fn transfer_in(
    redis: &mut Redis,
    dest: &SaleKeys,
    transfer_id: Uuid,
    units: i64,
) -> redis::RedisResult<Option<bool>> {
    let taken: i64 = TRANSFER_IN
        .key(&dest.state)
        .key(&dest.received)
        .arg(transfer_id.to_string())
        .arg(units)
        .invoke_async(redis)
        .await?;
    Ok(match taken {
        -1 => None,
        taken => Some(taken == 1),
    })
}

/// Step 4: the donor forgets a finished move.
pub async fn forget_move(redis: &mut Redis, donor: &SaleKeys, transfer_id: Uuid) -> redis::RedisResult<()> {
    redis.hdel::<_, _, i64>(&donor.moves, transfer_id.to_string()).await.map(|_| ())
}

/// A move a donor recorded: where its units go, and since when (Redis time, ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub transfer_id: Uuid,
    pub dest: u16,
    pub units: i64,
    pub since_ms: i64,
}

/// The moves a donor bucket has not seen finished.
pub async fn moves(redis: &mut Redis, donor: &SaleKeys) -> redis::RedisResult<Vec<Move>> {
    let all: HashMap<String, String> = redis.hgetall(&donor.moves).await?;
    Ok(all
        .into_iter()
        .filter_map(|(id, value)| {
            let mut parts = value.split(' ');
            Some(Move {
                transfer_id: id.parse().ok()?,
                dest: parts.next()?.parse().ok()?,
                units: parts.next()?.parse().ok()?,
                since_ms: parts.next()?.parse().ok()?,
            })
        })
        .collect())
}

/// Whether the donor still has the move (its hot state did not lose it).
pub async fn has_move(redis: &mut Redis, donor: &SaleKeys, transfer_id: Uuid) -> redis::RedisResult<bool> {
    redis.hexists(&donor.moves, transfer_id.to_string()).await
}
