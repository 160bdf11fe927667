//! Reservation statuses in Redis, where a buyer polls them right after the 202 (Postgres
//! has the outcome too, once the order consumer recorded it).
//!
//! Stored as JSON under `<prefix>:reservation:<id>` with a TTL:
//! `{"id","sale_id","user_id","status","order_id","reason"}`.

use domain::reservation::ReservationProgress;
use platform::Redis;
use redis::{AsyncCommands, ExistenceCheck, SetExpiry, SetOptions};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Keys;

impl Keys {
    /// Where a reservation's status waits for its owner to poll it.
    pub fn reservation(&self, reservation_id: Uuid) -> String {
        format!("{}:reservation:{reservation_id}", self.prefix())
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    id: Uuid,
    sale_id: Uuid,
    user_id: Uuid,
    status: String,
    order_id: Option<Uuid>,
    reason: Option<String>,
}

impl Stored {
    fn json(p: &ReservationProgress) -> String {
        let stored = Stored {
            id: p.id,
            sale_id: p.sale_id,
            user_id: p.user_id,
            status: p.status.to_string(),
            order_id: p.order_id,
            reason: p.reason.map(|r| r.to_string()),
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    fn progress(self) -> Option<ReservationProgress> {
        Some(ReservationProgress {
            id: self.id,
            sale_id: self.sale_id,
            user_id: self.user_id,
            status: self.status.parse().ok()?,
            order_id: self.order_id,
            reason: self.reason.map(|r| r.parse()).transpose().ok()?,
        })
    }
}

/// Tells pollers "queued", unless a status is there already: the order consumer may have
/// answered "confirmed" before the publisher got here.
pub async fn mark_queued(
    redis: &mut Redis,
    keys: &Keys,
    queued: &[ReservationProgress],
    ttl_secs: u64,
) -> redis::RedisResult<()> {
    let options = SetOptions::default().conditional_set(ExistenceCheck::NX).with_expiration(SetExpiry::EX(ttl_secs));
    write(redis, keys, queued, options).await
}

/// Records decided outcomes, replacing whatever status was there.
pub async fn record(
    redis: &mut Redis,
    keys: &Keys,
    decided: &[ReservationProgress],
    ttl_secs: u64,
) -> redis::RedisResult<()> {
    write(redis, keys, decided, SetOptions::default().with_expiration(SetExpiry::EX(ttl_secs))).await
}

async fn write(
    redis: &mut Redis,
    keys: &Keys,
    statuses: &[ReservationProgress],
    options: SetOptions,
) -> redis::RedisResult<()> {
    if statuses.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for status in statuses {
        pipe.set_options(keys.reservation(status.id), Stored::json(status), options.clone()).ignore();
    }
    pipe.query_async(redis).await
}

/// The stored status, if it is still there (and readable).
pub async fn find(
    redis: &mut Redis,
    keys: &Keys,
    reservation_id: Uuid,
) -> redis::RedisResult<Option<ReservationProgress>> {
    let json: Option<String> = redis.get(keys.reservation(reservation_id)).await?;
    Ok(json.and_then(|json| serde_json::from_str::<Stored>(&json).ok()).and_then(Stored::progress))
}
