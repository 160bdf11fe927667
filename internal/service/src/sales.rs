//! Flash sales: creation, the live view, the purchase path, reservation status, and the
//! rebuild of a sale's hot state.
//!
//! The purchase path never touches Postgres: a local sold-out flag, one Lua script in
//! Redis, one (batched) publish to RabbitMQ with a confirm ([`crate::reservation_publisher`]).
//! The order is written later by the order consumer ([`crate::order_consumer`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::order::Quantity;
use domain::reservation::ReservationProgress;
use domain::sale::{NewSale, SaleStatus};
use domain::{IdempotencyKey, Money, PageRequest};
use platform::Redis;
use platform::config::SaleSettings;
use repo::cache::buckets::{self, Bucket};
use repo::cache::sales::{self as hot, Reserve, Snapshot};
use repo::cache::{Keys, reservations};
use repo::db::Page;
use repo::db::sales::{self, Created, SaleRow};
use repo::mq::messages::Reservation;
use sea_orm::{DatabaseConnection, TransactionTrait};
// Tokio's clock, so the tests can stop time instead of sleeping through a flag's lifetime.
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::barrier::RebuildBarrier;
use crate::catalog::ProductCache;
use crate::error::{Error, Result};
use crate::jwt::Caller;
use crate::reservation_publisher::ReservationPublisher;
use crate::singleflight::SingleFlight;
use crate::transfers::{Refill, Transfers};
use crate::undo::Undo;

/// How many times a purchase refills its dry home bucket before it answers 503 (about a
/// second when every round waits for a pending move).
const MAX_REFILL_ROUNDS: u32 = 100;

#[derive(Debug, Clone)]
pub struct SaleView {
    pub id: Uuid,
    pub product_id: Uuid,
    pub title: String,
    pub price: Money,
    pub stock: i32,
    pub remaining: i64,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub per_user_limit: i32,
    pub payment_timeout_secs: i32,
    pub status: SaleStatus,
    pub stock_buckets: i32,
}

impl SaleView {
    fn new(row: SaleRow, remaining: Option<i64>) -> Self {
        let remaining = remaining.unwrap_or(i64::from(row.stock_left)).max(0);
        Self {
            status: SaleStatus::at(Utc::now(), row.start_at, row.end_at, remaining),
            id: row.id,
            product_id: row.product_id,
            title: row.title,
            price: Money::from_decimal(row.price),
            stock: row.stock,
            remaining,
            start_at: row.start_at,
            end_at: row.end_at,
            per_user_limit: row.per_user_limit,
            payment_timeout_secs: row.payment_timeout_secs,
            stock_buckets: row.stock_buckets,
        }
    }
}

/// Per-instance "this sale is sold out" flags, so that once a sale sells out the flood of
/// late buyers is answered without a Redis round trip. A flag is trusted for
/// `sales.sold_out_flag_ms` at most, and cleared at once when a restock notice arrives over
/// Redis pub/sub. The epoch closes a race: a notice that arrives while a request is between
/// "Redis said sold out" and "set the flag" makes that request skip setting it.
pub struct SoldOutFlags {
    flags: RwLock<HashMap<Uuid, Instant>>,
    epoch: AtomicU64,
    ttl: Duration,
}

impl SoldOutFlags {
    pub fn new(ttl: Duration) -> Self {
        Self { flags: RwLock::new(HashMap::new()), epoch: AtomicU64::new(0), ttl }
    }

    pub fn is_sold_out(&self, sale_id: Uuid) -> bool {
        let flags = self.flags.read().expect("sold-out flags poisoned");
        flags.get(&sale_id).is_some_and(|set| set.elapsed() < self.ttl)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Sets the flag, unless a restock notice arrived since `epoch` was read.
    pub fn mark(&self, sale_id: Uuid, epoch: u64) {
        let mut flags = self.flags.write().expect("sold-out flags poisoned");
        if self.epoch.load(Ordering::Acquire) == epoch {
            flags.insert(sale_id, Instant::now());
        }
    }

    pub fn clear(&self, sale_id: Uuid) {
        let mut flags = self.flags.write().expect("sold-out flags poisoned");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        flags.remove(&sale_id);
    }

    /// After a pub/sub reconnect: notices may have been missed.
    pub fn clear_all(&self) {
        let mut flags = self.flags.write().expect("sold-out flags poisoned");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        flags.clear();
    }
}

#[derive(Clone)]
pub struct SaleService {
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
    products: ProductCache,
    publisher: ReservationPublisher,
    undo: Undo,
    transfers: Transfers,
    /// How many stock buckets each sale has (fixed at creation), so that the purchase path
    /// finds a buyer's home bucket without asking Postgres more than once per sale.
    bucket_counts: Arc<RwLock<HashMap<Uuid, u16>>>,
    /// One lookup of a sale's bucket count per instance at a time.
    count_lookups: Arc<SingleFlight<Uuid, Result<Option<u16>, String>>>,
    /// One refill of a dry bucket per instance at a time: the buyers of that bucket who
    /// find it dry together wait for the same transfer.
    refills: Arc<SingleFlight<(Uuid, u16), Result<Refill, String>>>,
    /// Set by [`SaleService::with_barrier`]; without one a lost hot state is never rebuilt.
    barrier: Option<RebuildBarrier>,
    flags: Arc<SoldOutFlags>,
    rebuilds: Arc<SingleFlight<(Uuid, u16), Result<bool, String>>>,
    settings: SaleSettings,
    idempotency_ttl: Duration,
}

impl SaleService {
    pub fn new(
        db: DatabaseConnection,
        redis: Redis,
        keys: Keys,
        products: ProductCache,
        publisher: ReservationPublisher,
        settings: SaleSettings,
        idempotency_ttl: Duration,
    ) -> Self {
        let flags = Arc::new(SoldOutFlags::new(Duration::from_millis(settings.sold_out_flag_ms)));
        let undo = Undo::new(db.clone(), redis.clone(), keys.clone(), settings.reservation_status_ttl_secs.get());
        let rebuilds = Arc::default();
        let transfers = Transfers::new(db.clone(), redis.clone(), keys.clone());
        Self {
            db,
            redis,
            keys,
            products,
            publisher,
            undo,
            transfers,
            bucket_counts: Arc::default(),
            count_lookups: Arc::default(),
            refills: Arc::default(),
            barrier: None,
            flags,
            rebuilds,
            settings,
            idempotency_ttl,
        }
    }

    /// The transfers between stock buckets (the worker's sweeper uses the same).
    pub fn transfers(&self) -> &Transfers {
        &self.transfers
    }

    /// How many stock buckets the sale has (`NotFound` when there is no such sale).
    async fn bucket_count(&self, sale_id: Uuid) -> Result<u16> {
        if let Some(n) = self.bucket_counts.read().expect("bucket counts poisoned").get(&sale_id) {
            return Ok(*n);
        }
        let lookup = || async {
            let row = sales::find(&self.db, sale_id).await.map_err(|e| e.to_string())?;
            Ok(row.map(|row| row.stock_buckets.clamp(1, 64) as u16))
        };
        let found = match self.count_lookups.run(sale_id, lookup).await {
            Ok(found) => found,
            // The purchase path needs only Redis and RabbitMQ: while Postgres is down, the
            // count loaded with the sale's hot state answers.
            Err(e) => match hot::bucket_count(&mut self.redis.clone(), &self.keys.sale(sale_id)).await {
                Ok(Some(n)) => Some(n.clamp(1, 64)),
                _ => {
                    return Err(Error::Unavailable {
                        service: "postgres",
                        cause: Some(anyhow::anyhow!("looking up the buckets of sale {sale_id}: {e}")),
                    });
                }
            },
        };
        let n = found.ok_or(Error::NotFound("sale"))?;
        self.bucket_counts.write().expect("bucket counts poisoned").insert(sale_id, n);
        Ok(n)
    }

    /// [`Transfers::refill`], shared by this instance's buyers of the same dry bucket.
    async fn refill(&self, sale_id: Uuid, home: Bucket, want: i64) -> Result<Refill> {
        let transfers = &self.transfers;
        let refill = || async { transfers.refill(sale_id, home.index, home.of, want).await.map_err(|e| e.to_string()) };
        self.refills.run((sale_id, home.index), refill).await.map_err(|e| Error::Unavailable {
            service: "redis",
            cause: Some(anyhow::anyhow!("moving units to bucket {} of sale {sale_id}: {e}", home.index)),
        })
    }

    /// The barrier a rebuild waits for ([`crate::barrier`]).
    pub fn with_barrier(self, barrier: RebuildBarrier) -> Self {
        Self { barrier: Some(barrier), ..self }
    }

    pub fn flags(&self) -> &Arc<SoldOutFlags> {
        &self.flags
    }

    /// The undo the purchase path uses; the worker's reaper uses the same.
    pub fn undo(&self) -> &Undo {
        &self.undo
    }

    /// Creates a sale: its units leave the product's stock in the same transaction (409 when
    /// the product has too few), then its hot state is loaded into Redis.
    pub async fn create(&self, caller: &Caller, new: NewSale) -> Result<SaleView> {
        caller.require_admin()?;
        let txn = self.db.begin().await?;
        let created = sales::insert(
            &txn,
            &sales::NewSale {
                id: Uuid::now_v7(),
                product_id: new.product_id,
                price: new.price.decimal(),
                stock: new.stock as i32,
                start_at: new.start_at,
                end_at: new.end_at,
                per_user_limit: new.per_user_limit as i32,
                payment_timeout_secs: new.payment_timeout_secs as i32,
                buckets: buckets::split(new.stock as i32, new.stock_buckets),
            },
        )
        .await?;
        let row = match created {
            Created::Sale(row) => row,
            Created::NoProduct => {
                return Err(domain::Invalid::new("product_id", "no such product").into());
            }
            Created::ShortOfStock { available } => {
                return Err(Error::InsufficientStock {
                    product_id: new.product_id,
                    available: i64::from(available),
                    requested: i64::from(new.stock),
                });
            }
        };
        txn.commit().await?;
        self.products.forget(&[new.product_id]).await;
        // Nothing can be in flight for a sale that did not exist: no barrier to wait for.
        self.load_hot_state(row.id).await?;
        Ok(SaleView::new(row, None))
    }

    /// A page of sales; `current` keeps those not ended yet (for a shop front).
    pub async fn list(&self, page: PageRequest, current: bool) -> Result<Page<SaleView>> {
        let rows = sales::list(&self.db, page.offset(), page.page_size, current).await?;
        let mut items = Vec::with_capacity(rows.items.len());
        for row in rows.items {
            let remaining = self.live_remaining(row.id, row.stock_buckets).await;
            items.push(SaleView::new(row, remaining));
        }
        Ok(Page { items, total: rows.total })
    }

    /// The sale with its live `remaining` from Redis (or Postgres when Redis has no state).
    pub async fn get(&self, id: Uuid) -> Result<SaleView> {
        let row = sales::find(&self.db, id).await?.ok_or(Error::NotFound("sale"))?;
        let remaining = self.live_remaining(id, row.stock_buckets).await;
        Ok(SaleView::new(row, remaining))
    }

    /// The sum over the sale's buckets (`None` when one is not in Redis: Postgres answers).
    async fn live_remaining(&self, id: Uuid, buckets: i32) -> Option<i64> {
        let mut redis = self.redis.clone();
        let mut sum = 0;
        for bucket in 0..buckets.max(1) as u16 {
            sum += hot::remaining(&mut redis, &self.keys.sale_bucket(id, bucket)).await.ok().flatten()?.max(0);
        }
        Some(sum)
    }

    /// The hot path: flag, Lua reservation, confirmed publish. Returns the reservation id
    /// (202); the order is created by the consumer.
    ///
    /// Everything after the flag runs in a task of its own that the request awaits: once
    /// the script has reserved, the publish-or-undo finishes even if the request is dropped
    /// (the client went away, the request timed out).
    pub async fn purchase(
        &self,
        caller: &Caller,
        sale_id: Uuid,
        quantity: Quantity,
        key: Option<&IdempotencyKey>,
    ) -> Result<Uuid> {
        if self.flags.is_sold_out(sale_id) {
            metrics::counter!("purchases_total", "outcome" => "sold_out_flag").increment(1);
            return Err(Error::SoldOut("sold out".into()));
        }
        let (this, user_id, key) = (self.clone(), caller.user_id, key.cloned());
        let task = async move { this.reserve(user_id, sale_id, quantity, key.as_ref()).await };
        tokio::spawn(task.in_current_span())
            .await
            .map_err(|e| Error::Internal(anyhow::anyhow!("purchase task of sale {sale_id}: {e}")))?
    }

    async fn reserve(
        &self,
        user_id: Uuid,
        sale_id: Uuid,
        quantity: Quantity,
        key: Option<&IdempotencyKey>,
    ) -> Result<Uuid> {
        let epoch = self.flags.epoch();
        let reservation_id = Uuid::now_v7();
        let buckets = self.bucket_count(sale_id).await?;
        let home = Bucket::home(user_id, buckets);
        let keys = self.keys.sale_bucket(sale_id, home.index);
        let fingerprint = fingerprint(quantity);
        let ask = hot::Ask {
            user_id,
            quantity: quantity.get(),
            reservation_id,
            idempotency_key: key.map(IdempotencyKey::as_str),
            fingerprint: &fingerprint,
            idempotency_ttl_ms: self.idempotency_ttl.as_millis() as u64,
            deadline_ms: self.settings.reservation_deadline_ms.get(),
        };
        let mut redis = self.redis.clone();
        let started = std::time::Instant::now();
        let mut answer = hot::reserve(&mut redis, &keys, &ask).await?;
        metrics::histogram!("reserve_script_seconds").record(started.elapsed().as_secs_f64());
        if answer == Reserve::Missing {
            self.rebuild(sale_id, home.index).await?;
            answer = hot::reserve(&mut redis, &keys, &ask).await?;
        }
        // The home bucket ran dry: move units over from the others while they have some. A
        // sale of several buckets is sold out only when every bucket is dry and no transfer
        // is on its way; a short wait covers a transfer in progress, then 503 (never a false
        // sold-out, which would set the local flag).
        let mut rounds = 0;
        while buckets > 1
            && let Reserve::SoldOut { left } = answer
        {
            rounds += 1;
            if rounds > MAX_REFILL_ROUNDS {
                // Buyers of other buckets kept taking what came over, or moves stayed pending.
                metrics::counter!("purchases_total", "outcome" => "unavailable").increment(1);
                return Err(Error::unavailable("redis"));
            }
            let want = i64::from(quantity.get()) - left.max(0);
            match self.refill(sale_id, home, want).await? {
                Refill::Moved => {}
                // Nobody can say it is sold out until that bucket is back.
                Refill::Missing(bucket) => self.rebuild(sale_id, bucket).await?,
                Refill::Dry { others: 0, pending: false } => break,
                Refill::Dry { .. } => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
            answer = hot::reserve(&mut redis, &keys, &ask).await?;
        }
        let outcome = match answer {
            Reserve::Reserved { reservation_id: id, generation, .. } => {
                if id != reservation_id.to_string() {
                    metrics::counter!("purchases_total", "outcome" => "replayed").increment(1);
                    return id.parse().map_err(|_| Error::Internal(anyhow::anyhow!("stored reservation id {id}")));
                }
                let reservation = Reservation {
                    id: reservation_id,
                    sale_id,
                    user_id,
                    quantity: quantity.as_i32(),
                    generation,
                    reserved_at: Utc::now(),
                    idempotency_key: key.map(|k| k.as_str().to_owned()),
                    fingerprint: key.map(|_| fingerprint.clone()),
                    buckets,
                };
                return self.publish(reservation).await;
            }
            Reserve::SoldOut { left } => {
                // Below zero only while a rebuilt Redis catches up with older reservations.
                if left <= 0 {
                    self.flags.mark(sale_id, epoch);
                }
                let message = if left <= 0 { "sold out".to_owned() } else { format!("only {left} left") };
                ("sold_out", Error::SoldOut(message))
            }
            Reserve::LimitReached { held, limit } => ("limit_reached", Error::LimitReached { held, limit }),
            Reserve::NotStarted => ("not_active", Error::NotActive("the sale has not started")),
            Reserve::Ended => ("not_active", Error::NotActive("the sale has ended")),
            Reserve::KeyReused => ("key_reused", Error::IdempotencyKeyReused),
            Reserve::Missing => ("unavailable", Error::unavailable("redis")),
        };
        metrics::counter!("purchases_total", "outcome" => outcome.0).increment(1);
        Err(outcome.1)
    }

    /// "No reservation without an outcome": if the broker does not confirm, the
    /// reservation is undone and the buyer gets 503 — unless the order consumer already
    /// claimed it (or made its order), which proves the message arrived.
    async fn publish(&self, reservation: Reservation) -> Result<Uuid> {
        let id = reservation.id;
        if self.publisher.publish(reservation.clone()).await {
            metrics::counter!("purchases_total", "outcome" => "reserved").increment(1);
            return Ok(id);
        }
        let held = hot::Held { reservation_id: id, user_id: reservation.user_id, quantity: reservation.quantity };
        if !self.undo.reservation_in(reservation.sale_id, reservation.bucket(), held).await? {
            metrics::counter!("purchases_total", "outcome" => "reserved").increment(1);
            return Ok(id);
        }
        metrics::counter!("purchases_total", "outcome" => "unavailable").increment(1);
        Err(Error::unavailable("rabbitmq"))
    }

    /// Rebuilds the hot state after Redis lost it, once the reservations accepted before
    /// the loss have been processed ([`crate::barrier`]); until then `Error::Rebuilding`.
    /// A sale split into buckets rebuilds only the bucket that was lost.
    pub async fn rebuild(&self, sale_id: Uuid, bucket: u16) -> Result<()> {
        let barrier = self.barrier.as_ref().ok_or(Error::Rebuilding)?;
        if !barrier.pass(sale_id, bucket).await? {
            return Ok(());
        }
        self.load_bucket(sale_id, bucket).await?;
        barrier.finish(sale_id, bucket).await
    }

    /// Loads the hot state from Postgres if Redis has none (one load per sale per instance
    /// at a time; the load script makes concurrent loads across instances harmless). The
    /// sale row is share-locked while it is read and loaded, so no commit of the order
    /// consumer or of a close can fall between the snapshot and the load.
    pub async fn load_hot_state(&self, sale_id: Uuid) -> Result<()> {
        let buckets = self.bucket_count(sale_id).await?;
        for bucket in 0..buckets {
            self.load_bucket(sale_id, bucket).await?;
        }
        Ok(())
    }

    /// [`SaleService::load_hot_state`] of one stock bucket.
    async fn load_bucket(&self, sale_id: Uuid, bucket: u16) -> Result<()> {
        let found = self.rebuilds.run((sale_id, bucket), || self.load(sale_id, bucket)).await.map_err(|e| {
            Error::Unavailable {
                service: "redis",
                cause: Some(anyhow::anyhow!(
                    "rebuilding the hot state of sale {sale_id} (bucket {bucket}) failed: {e}"
                )),
            }
        })?;
        if found { Ok(()) } else { Err(Error::NotFound("sale")) }
    }

    /// One bucket from Postgres: its row's units, the buyers whose home it is (with their
    /// keys), and the transfers it received.
    async fn load(&self, sale_id: Uuid, bucket: u16) -> Result<bool, String> {
        let txn = self.db.begin().await.map_err(|e| e.to_string())?;
        let locked = sales::lock_bucket(&txn, sale_id, bucket, None, false).await.map_err(|e| e.to_string())?;
        let Some((row, locked)) = locked else {
            return Ok(false);
        };
        let of = row.stock_buckets.clamp(1, 64) as u16;
        let home = |user: &Uuid| Bucket::home(*user, of).index == bucket;
        let mut buyers = sales::buyers(&txn, sale_id).await.map_err(|e| e.to_string())?;
        buyers.retain(|(user, _)| home(user));
        let since = Utc::now() - self.idempotency_ttl;
        let mut keys = sales::idempotency_keys(&txn, sale_id, since).await.map_err(|e| e.to_string())?;
        keys.retain(|k| home(&k.user_id));
        let stock_left = locked.stock_left;
        let received =
            if of > 1 { sales::received(&txn, sale_id, bucket).await.map_err(|e| e.to_string())? } else { Vec::new() };
        let expire_at = (row.end_at + chrono::Duration::days(1)).max(Utc::now() + chrono::Duration::hours(1));
        let snapshot = Snapshot {
            start_ms: row.start_at.timestamp_millis(),
            end_ms: row.end_at.timestamp_millis(),
            per_user_limit: row.per_user_limit,
            stock_left,
            version: locked.version,
            generation: Uuid::new_v4().simple().to_string(),
            expire_at_ms: expire_at.timestamp_millis(),
            buyers,
            keys: keys.into_iter().map(key_record).collect(),
            idempotency_ttl_ms: self.idempotency_ttl.as_millis() as u64,
            received,
            buckets: of,
        };
        let keys = self.keys.sale_bucket(sale_id, bucket);
        let loaded = hot::load(&mut self.redis.clone(), &keys, &snapshot).await.map_err(|e| e.to_string())?;
        txn.commit().await.map_err(|e| e.to_string())?;
        if loaded {
            tracing::info!(%sale_id, bucket, version = locked.version, stock_left, "sale hot state loaded from Postgres");
            self.flags.clear(sale_id);
        }
        Ok(true)
    }

    /// The owner's view of a reservation: Redis while it is fresh, then Postgres.
    pub async fn reservation(&self, caller: &Caller, id: Uuid) -> Result<ReservationProgress> {
        let progress = match reservations::find(&mut self.redis.clone(), &self.keys, id).await? {
            Some(progress) => Some(progress),
            None => sales::reservations(&self.db, &[id]).await?.first().map(recorded).transpose()?,
        };
        progress.filter(|p| p.user_id == caller.user_id).ok_or(Error::NotFound("reservation"))
    }
}

fn key_record(row: sales::KeyRow) -> hot::KeyRecord {
    hot::KeyRecord {
        user_id: row.user_id,
        key: row.idempotency_key,
        reservation_id: row.id,
        fingerprint: row.fingerprint,
    }
}

/// What an `Idempotency-Key` must be sent with again to replay its reservation: the body.
fn fingerprint(quantity: Quantity) -> String {
    format!("q{}", quantity.get())
}

/// The outcome the order consumer recorded in Postgres.
fn recorded(row: &sales::ReservationRow) -> Result<ReservationProgress> {
    let unreadable = |e: domain::Invalid| Error::Internal(anyhow::anyhow!("reservation {}: {e}", row.id));
    Ok(ReservationProgress {
        id: row.id,
        sale_id: row.sale_id,
        user_id: row.user_id,
        status: row.status.parse().map_err(unreadable)?,
        order_id: row.order_id,
        reason: row.reason.as_deref().map(str::parse).transpose().map_err(unreadable)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_sold_out_flag_expires() {
        let flags = SoldOutFlags::new(Duration::from_millis(30));
        let sale = Uuid::now_v7();
        flags.mark(sale, flags.epoch());
        assert!(flags.is_sold_out(sale));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert!(!flags.is_sold_out(sale));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restock_notice_clears_the_flag_and_beats_a_late_mark() {
        let flags = SoldOutFlags::new(Duration::from_secs(60));
        let sale = Uuid::now_v7();
        flags.mark(sale, flags.epoch());
        flags.clear(sale);
        assert!(!flags.is_sold_out(sale));

        // A request read the epoch, then a notice arrived, then the request tries to mark.
        let seen = flags.epoch();
        flags.clear(sale);
        flags.mark(sale, seen);
        assert!(!flags.is_sold_out(sale), "the stale mark is dropped");
    }
}
