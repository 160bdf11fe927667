//! What `verify` reads of a sale's returns in Redis: the snapshot version the hot state was
//! built from, and the orders whose units the restock script put back since.

use platform::Redis;
use redis::AsyncCommands;
use uuid::Uuid;

use super::sales::SaleKeys;

/// `snap` of the hot state (`None`: no state), and the orders in `returned`.
pub async fn returned(redis: &mut Redis, keys: &SaleKeys) -> redis::RedisResult<(Option<i64>, Vec<Uuid>)> {
    let snap: Option<i64> = redis.hget(&keys.state, "snap").await?;
    let members: Vec<String> = redis.smembers(&keys.returned).await?;
    Ok((snap, members.iter().filter_map(|m| m.parse().ok()).collect()))
}
