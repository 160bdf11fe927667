//! The rebuild barrier of a flash sale (see `lua/rebuild_barrier.lua` and
//! `service::barrier`): the keys that hold a sale's purchases after Redis lost its hot
//! state, until the reservations accepted before the loss have all been processed.
//!
//! The keys share the sale's hash tag, and are not among the keys a load deletes.

use std::sync::LazyLock;

use platform::Redis;
use redis::{AsyncCommands, Script};
use uuid::Uuid;

use super::Keys;

static BARRIER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/rebuild_barrier.lua")));

pub struct BarrierKeys {
    state: String,
    rebuilding: String,
    drained: String,
    lost: String,
}

impl Keys {
    /// The barrier of a sale of one bucket (bucket 0 of any sale).
    pub fn barrier(&self, sale_id: Uuid) -> BarrierKeys {
        self.barrier_bucket(sale_id, 0)
    }

    /// The barrier of one stock bucket: a bucket is rebuilt alone.
    pub fn barrier_bucket(&self, sale_id: Uuid, bucket: u16) -> BarrierKeys {
        let tag = format!("{}:{{{}}}", self.prefix(), super::buckets::tag(sale_id, bucket));
        BarrierKeys {
            state: format!("{tag}:state"),
            rebuilding: format!("{tag}:rebuilding"),
            drained: format!("{tag}:drained"),
            lost: format!("{tag}:lost"),
        }
    }
}

/// What `rebuild_barrier.lua` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The hot state is there (another instance loaded it): go on.
    Loaded,
    /// The barrier passed: load the state from Postgres now.
    Drained,
    /// A barrier is on its way: answer 503.
    Wait,
    /// Publish this new barrier, then answer 503. `replaced`: an earlier one timed out.
    Publish { replaced: bool },
}

pub async fn gate(
    redis: &mut Redis,
    keys: &BarrierKeys,
    barrier_id: Uuid,
    timeout_ms: u64,
) -> redis::RedisResult<Gate> {
    let reply: Vec<i64> = BARRIER
        .key(&keys.state)
        .key(&keys.rebuilding)
        .key(&keys.drained)
        .key(&keys.lost)
        .arg(barrier_id.to_string())
        .arg(timeout_ms)
        .invoke_async(redis)
        .await?;
    Ok(match reply[..] {
        [0] => Gate::Loaded,
        [1] => Gate::Drained,
        [3, replaced] => Gate::Publish { replaced: replaced == 1 },
        _ => Gate::Wait,
    })
}

/// Forgets a barrier that could not be sent, so that the next purchase sends another.
pub async fn abandon(redis: &mut Redis, keys: &BarrierKeys) -> redis::RedisResult<()> {
    redis.del(&keys.rebuilding).await
}

/// The barrier the API waits for now, if any: an older barrier still going round is stale.
pub async fn current(redis: &mut Redis, keys: &BarrierKeys) -> redis::RedisResult<Option<String>> {
    redis.get(&keys.rebuilding).await
}

/// The barrier passed: the API may load the sale. Kept as long as the barrier may wait.
pub async fn mark_drained(
    redis: &mut Redis,
    keys: &BarrierKeys,
    barrier_id: Uuid,
    ttl_ms: u64,
) -> redis::RedisResult<()> {
    redis.pset_ex(&keys.drained, barrier_id.to_string(), ttl_ms).await
}

/// The state is loaded: the barrier is done with.
pub async fn finish(redis: &mut Redis, keys: &BarrierKeys) -> redis::RedisResult<()> {
    redis.del(&[&keys.rebuilding, &keys.drained, &keys.lost]).await
}
