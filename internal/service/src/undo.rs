//! Undoing reservations that will not become orders: the API's undo after a publish the
//! broker did not confirm, and the worker's reaper for those nobody finished (an API
//! process that died between reserve and confirm, a lost Redis reply).
//!
//! One rule decides between an undo and the order consumer, in two places. In Redis,
//! `undo_reservation.lua` / `reap_reservations.lua` refuse to undo a reservation the
//! consumer claimed, and the consumer's claim refuses one marked undone. In Postgres, the
//! undo records the reservation as `failed: broker_unavailable` under the sale's row lock,
//! where the consumer also decides: if the consumer's outcome is already recorded, the
//! reservation stands; if the undo's is, the consumer finds it and releases instead of
//! ordering. The Postgres record outlives a Redis flush (which forgets claims and undos).

use std::time::Duration;

use chrono::Utc;
use domain::reservation::{FailureReason, ReservationProgress};
use platform::Redis;
use repo::cache::sales::{self as hot, Held};
use repo::cache::{Keys, reservations};
use repo::db::sales::{self, NewReservation};
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::Result;

/// How many reservations of one sale one reaper round undoes at most.
const REAP_BATCH: usize = 500;

#[derive(Clone)]
pub struct Undo {
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
    status_ttl_secs: u64,
}

impl Undo {
    pub fn new(db: DatabaseConnection, redis: Redis, keys: Keys, status_ttl_secs: u64) -> Self {
        Self { db, redis, keys, status_ttl_secs }
    }

    /// Undoes a reservation whose message was not confirmed. `false`: it stands (the order
    /// consumer claimed it or already made its order), so the buyer is told 202.
    pub async fn reservation(&self, sale_id: Uuid, held: Held) -> Result<bool> {
        self.reservation_in(sale_id, 0, held).await
    }

    /// [`Undo::reservation`] of a reservation made in stock bucket `bucket`.
    pub async fn reservation_in(&self, sale_id: Uuid, bucket: u16, held: Held) -> Result<bool> {
        let keys = self.keys.sale_bucket(sale_id, bucket);
        if !hot::undo(&mut self.redis.clone(), &keys, held.reservation_id).await? {
            return Ok(false);
        }
        let stands = self.finish(sale_id, bucket, &[held]).await?;
        Ok(stands.is_empty())
    }

    /// One reaper round for one bucket of a sale: undoes the reservations past their
    /// deadline that were neither published nor claimed. Returns how many were released.
    pub async fn reap(&self, sale_id: Uuid, bucket: u16) -> Result<usize> {
        let overdue = hot::reap(&mut self.redis.clone(), &self.keys.sale_bucket(sale_id, bucket), REAP_BATCH).await?;
        if overdue.is_empty() {
            return Ok(0);
        }
        let stands = self.finish(sale_id, bucket, &overdue).await?;
        Ok(overdue.len() - stands.len())
    }

    /// Records the undone reservations in Postgres, then releases them in Redis, except
    /// those whose order Postgres already has (returned). If Postgres cannot answer, Redis's
    /// decision is acted on alone: see docs/reliability.md for the window this leaves.
    async fn finish(&self, sale_id: Uuid, bucket: u16, undone: &[Held]) -> Result<Vec<Uuid>> {
        let stands = match self.record(sale_id, bucket, undone).await {
            Ok(stands) => stands,
            Err(err) => {
                tracing::warn!(%sale_id, error = %err, "undo not recorded in Postgres; releasing on Redis's decision");
                Vec::new()
            }
        };
        let release: Vec<&Held> = undone.iter().filter(|o| !stands.contains(&o.reservation_id)).collect();
        let ids: Vec<Uuid> = release.iter().map(|o| o.reservation_id).collect();
        let mut redis = self.redis.clone();
        let channel = self.keys.sale_restock_channel();
        hot::fail(&mut redis, &self.keys.sale_bucket(sale_id, bucket), &channel, sale_id, &ids, true).await?;
        let failed: Vec<ReservationProgress> = release
            .iter()
            .map(|o| {
                ReservationProgress::failed(o.reservation_id, sale_id, o.user_id, FailureReason::BrokerUnavailable)
            })
            .collect();
        let _ = reservations::record(&mut redis, &self.keys, &failed, self.status_ttl_secs).await;
        Ok(stands)
    }

    /// Under the lock of the bucket's stock (the sale row for a sale of one bucket): the reservations the consumer already made orders of, and
    /// a `failed` record for each one nobody recorded yet.
    async fn record(&self, sale_id: Uuid, bucket: u16, undone: &[Held]) -> Result<Vec<Uuid>> {
        let txn = self.db.begin().await?;
        let Some((_, locked)) = sales::lock_bucket(&txn, sale_id, bucket, None, true).await? else {
            txn.rollback().await?;
            return Ok(Vec::new());
        };
        let ids: Vec<Uuid> = undone.iter().map(|o| o.reservation_id).collect();
        let recorded = sales::reservations(&txn, &ids).await?;
        let stands: Vec<Uuid> = recorded.iter().filter(|r| r.order_id.is_some()).map(|r| r.id).collect();
        let rows: Vec<NewReservation> = undone
            .iter()
            .filter(|o| !recorded.iter().any(|r| r.id == o.reservation_id))
            .map(|o| NewReservation {
                id: o.reservation_id,
                user_id: o.user_id,
                quantity: o.quantity,
                order_id: None,
                reason: Some(FailureReason::BrokerUnavailable.as_str()),
                reserved_at: Utc::now(),
                generation: String::new(),
                idempotency_key: None,
                fingerprint: None,
            })
            .collect();
        sales::insert_reservations(&txn, sale_id, locked.version, &rows).await?;
        txn.commit().await?;
        Ok(stands)
    }
}

/// The worker's reaper: every `every`, undoes the overdue reservations of every sale whose
/// hot state may still hold some.
pub async fn reap_forever(undo: Undo, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        let sales = match sales::live_ids(&undo.db).await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(error = %err, "reaper could not list the sales");
                continue;
            }
        };
        for (sale_id, buckets) in sales {
            for bucket in 0..buckets.max(1) {
                match undo.reap(sale_id, bucket).await {
                    Ok(0) => {}
                    Ok(released) => {
                        tracing::warn!(%sale_id, bucket, released, "reaper undid reservations nobody finished");
                        metrics::counter!("reservations_reaped_total").increment(released as u64);
                    }
                    Err(err) => tracing::warn!(%sale_id, bucket, error = %err, "reaper round failed"),
                }
            }
        }
    }
}
