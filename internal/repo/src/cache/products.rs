//! The product cache: JSON documents with a TTL, and a short-lived marker for ids that do
//! not exist (so a flood of requests for made-up ids never reaches Postgres).

use platform::Redis;
use redis::AsyncCommands;
use uuid::Uuid;

use super::Keys;

/// Stands for "no such product" in the cache.
const MISSING: &str = "-";

pub enum Cached {
    Hit(String),
    KnownMissing,
    Miss,
}

pub async fn get(redis: &mut Redis, keys: &Keys, id: Uuid) -> redis::RedisResult<Cached> {
    let value: Option<String> = redis.get(keys.product(id)).await?;
    Ok(match value {
        None => Cached::Miss,
        Some(value) if value == MISSING => Cached::KnownMissing,
        Some(json) => Cached::Hit(json),
    })
}

pub async fn put(redis: &mut Redis, keys: &Keys, id: Uuid, json: &str, ttl_secs: u64) -> redis::RedisResult<()> {
    redis.set_ex(keys.product(id), json, ttl_secs).await
}

pub async fn put_missing(redis: &mut Redis, keys: &Keys, id: Uuid, ttl_secs: u64) -> redis::RedisResult<()> {
    redis.set_ex(keys.product(id), MISSING, ttl_secs).await
}

pub async fn forget(redis: &mut Redis, keys: &Keys, ids: &[Uuid]) -> redis::RedisResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = ids.iter().map(|id| keys.product(*id)).collect();
    redis.del(names).await
}
