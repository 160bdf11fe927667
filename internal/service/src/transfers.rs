//! Transfers between the stock buckets of a sale: when a buyer's home bucket runs dry while
//! others still hold units, a batch of units moves over. No unit is created or lost if the
//! mover dies halfway (docs/architecture.md, "Stock buckets"; docs/reliability.md):
//!
//! 1. `transfer_out.lua` on the donor takes the units and records the move under its id;
//! 2. Postgres, one transaction under the sale's row lock: if the donor still has the move
//!    (its Redis did not lose it), the donor row gives the units to the destination row and
//!    `bucket_transfers` records the id (its primary key makes this once-only);
//! 3. `transfer_in.lua` on the destination adds the units unless its `received` set has the
//!    id (a rebuilt destination loads that set from `bucket_transfers`);
//! 4. the donor forgets the move, and Postgres marks it done.
//!
//! Each step may be run again; the worker's sweeper does so for moves older than a few
//! seconds, so a mover that died anywhere is finished for it.

use std::time::Duration;

use platform::Redis;
use repo::cache::Keys;
use repo::cache::sales::{self as hot, Given};
use repo::db::sales::{self, Transfer};
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{Error, Result};

/// A move younger than this belongs to its mover; an older one is finished by the sweeper.
pub const SWEEP_AFTER: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Transfers {
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
}

/// What one attempt to fill a bucket from the others found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    /// Units arrived in the bucket: reserve again.
    Moved,
    /// Nothing could be taken from the other buckets. `others` units are in them now all
    /// the same (they came back, or another buyer's transfer just landed there), and moves
    /// may still be on their way (`pending`): the bucket is sold out only when both are 0.
    Dry { others: i64, pending: bool },
    /// A donor's hot state is missing: nobody can tell it is sold out.
    Missing(u16),
}

impl Transfers {
    pub fn new(db: DatabaseConnection, redis: Redis, keys: Keys) -> Self {
        Self { db, redis, keys }
    }

    /// Moves units into bucket `dest` of a sale of `of` buckets from the first other bucket
    /// that has some (at least `want`, or half of what the donor holds if more).
    pub async fn refill(&self, sale_id: Uuid, dest: u16, of: u16, want: i64) -> Result<Refill> {
        let mut redis = self.redis.clone();
        let mut others = 0;
        let mut missing = None;
        for step in 1..of {
            let donor = (dest + step) % of;
            let transfer_id = Uuid::now_v7();
            let keys = self.keys.sale_bucket(sale_id, donor);
            match hot::transfer_out(&mut redis, &keys, transfer_id, dest, want).await? {
                Given::Missing => missing = Some(donor),
                Given::Dry(_) => {}
                Given::Units { units, .. } => {
                    self.complete(sale_id, donor, dest, transfer_id, units).await?;
                    metrics::counter!("bucket_transfers_total").increment(1);
                    return Ok(Refill::Moved);
                }
            }
        }
        if let Some(bucket) = missing {
            return Ok(Refill::Missing(bucket));
        }
        let mut pending = false;
        for bucket in 0..of {
            let keys = self.keys.sale_bucket(sale_id, bucket);
            pending |= !hot::moves(&mut redis, &keys).await?.is_empty();
            if bucket != dest {
                others += hot::remaining(&mut redis, &keys).await?.unwrap_or(0).max(0);
            }
        }
        Ok(Refill::Dry { others, pending })
    }

    /// Steps 2 to 4 of a transfer whose step 1 took `units` from `donor`. Safe to run again.
    /// Returns whether the units moved (`false`: the donor's Redis lost the move before
    /// Postgres recorded it, so the donor's rebuild keeps them and nothing moved).
    pub async fn complete(&self, sale_id: Uuid, donor: u16, dest: u16, transfer_id: Uuid, units: i64) -> Result<bool> {
        let mut redis = self.redis.clone();
        let donor_keys = self.keys.sale_bucket(sale_id, donor);
        // Step 2. The rebuild of a bucket reads Postgres under a share lock of its row, so it
        // sees this commit whole or not at all; and a donor that lost the move before this
        // check is rebuilt with the units, so they must not move.
        let txn = self.db.begin().await?;
        if !sales::lock_buckets(&txn, sale_id, &[donor.min(dest), donor.max(dest)]).await? {
            txn.rollback().await?;
            return Ok(false);
        }
        let recorded = sales::transfer_recorded(&txn, transfer_id).await?;
        if !recorded {
            if !hot::has_move(&mut redis, &donor_keys, transfer_id).await? {
                txn.rollback().await?;
                tracing::warn!(%sale_id, donor, %transfer_id, "the donor lost a transfer before it was recorded: nothing moved");
                return Ok(false);
            }
            if sales::bucket_stock_left(&txn, sale_id, donor).await? < units {
                // The donor's Redis gave units its row does not have: it forgot writes (a
                // failover, an old snapshot). Nothing moves; its hot state is dropped and
                // rebuilt from the row behind the barrier, which forgets this move too.
                txn.rollback().await?;
                tracing::warn!(%sale_id, donor, %transfer_id, units, "a donor bucket gave units its Postgres row does not have: dropping its hot state to rebuild it");
                metrics::counter!("sale_hot_state_drift_total").increment(1);
                hot::forget_state(&mut redis, &donor_keys).await?;
                return Ok(false);
            }
            let transfer = Transfer {
                id: transfer_id,
                sale_id,
                from_bucket: donor as i16,
                to_bucket: dest as i16,
                units: units as i32,
            };
            sales::record_transfer(&txn, &transfer).await?;
        }
        txn.commit().await?;
        self.deliver(sale_id, dest, transfer_id, units).await?;
        hot::forget_move(&mut redis, &donor_keys, transfer_id).await?;
        Ok(true)
    }

    /// Steps 3 and 4 of a recorded transfer: the destination takes the units once.
    async fn deliver(&self, sale_id: Uuid, dest: u16, transfer_id: Uuid, units: i64) -> Result<()> {
        let keys = self.keys.sale_bucket(sale_id, dest);
        // A missing destination is rebuilt from Postgres, which counts the transfer.
        hot::transfer_in(&mut self.redis.clone(), &keys, transfer_id, units).await?;
        sales::transfer_done(&self.db, transfer_id).await?;
        Ok(())
    }

    /// One sweep: finishes the moves older than `SWEEP_AFTER` that their movers left, in
    /// Redis (step 1 done) and in Postgres (step 2 done). Returns how many it finished.
    pub async fn sweep(&self) -> Result<usize> {
        let mut finished = 0;
        let older = SWEEP_AFTER.as_millis() as i64;
        for t in sales::transfers_pending(&self.db, older).await? {
            let donor = self.keys.sale_bucket(t.sale_id, t.from_bucket as u16);
            let done = async {
                self.deliver(t.sale_id, t.to_bucket as u16, t.id, i64::from(t.units)).await?;
                hot::forget_move(&mut self.redis.clone(), &donor, t.id).await.map_err(Error::from)
            };
            // One transfer that cannot be finished does not hold up the others.
            match done.await {
                Ok(()) => finished += 1,
                Err(err) => {
                    tracing::warn!(sale_id = %t.sale_id, transfer_id = %t.id, error = %err, "could not finish a recorded transfer")
                }
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (sale_id, of) in sales::live_split_ids(&self.db).await? {
            for donor in 0..of as u16 {
                let keys = self.keys.sale_bucket(sale_id, donor);
                for m in hot::moves(&mut self.redis.clone(), &keys).await? {
                    if now_ms - m.since_ms >= older {
                        match self.complete(sale_id, donor, m.dest, m.transfer_id, m.units).await {
                            Ok(_) => finished += 1,
                            Err(err) => {
                                tracing::warn!(%sale_id, donor, transfer_id = %m.transfer_id, error = %err, "could not finish a move")
                            }
                        }
                    }
                }
            }
        }
        Ok(finished)
    }
}

/// The worker's transfer sweeper: every `every`, finishes the transfers their movers left.
pub async fn sweep_forever(transfers: Transfers, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        match transfers.sweep().await {
            Ok(0) => {}
            Ok(finished) => {
                tracing::warn!(finished, "transfer sweeper finished bucket transfers their movers left");
                metrics::counter!("bucket_transfers_swept_total").increment(finished as u64);
            }
            Err(err) => tracing::warn!(error = %err, "transfer sweep failed"),
        }
    }
}
