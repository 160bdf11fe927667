//! The worker side of flash sales: the order consumer turns reserved units into orders,
//! and the restock consumer puts returned units back on sale in Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use domain::Money;
use domain::order::OrderKind;
use domain::reservation::{FailureReason, ReservationProgress, ReservationStatus};
use platform::Redis;
use repo::cache::buckets::Bucket;
use repo::cache::sales::{self as hot, Settled};
use repo::cache::{Keys, reservations};
use repo::db::orders::{self, NewLine, NewOrder};
use repo::db::sales::{self, NewReservation, ReservationRow, SaleRow};
use repo::mq::Outcome;
use repo::mq::consumer::Delivery;
use repo::mq::messages::{Reservation, ReservationBatch, SaleRestock};
use sea_orm::{DatabaseConnection, TransactionTrait};
use uuid::Uuid;

use crate::barrier::{RebuildBarrier, barrier_of};
use crate::error::{Error, Result};
use crate::orders::announce_and_schedule_close;
use crate::sales::SaleService;

/// Writes the orders of reserved units.
#[derive(Clone)]
pub struct OrderConsumer {
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
    status_ttl_secs: u64,
    barrier: RebuildBarrier,
    /// Loads a sale whose barrier passed, so that it is back without waiting for a purchase.
    sales: SaleService,
}

impl OrderConsumer {
    pub fn new(
        db: DatabaseConnection,
        redis: Redis,
        keys: Keys,
        status_ttl_secs: u64,
        barrier: RebuildBarrier,
        sales: SaleService,
    ) -> Self {
        Self { db, redis, keys, status_ttl_secs, barrier, sales }
    }

    /// The messages that have arrived (up to the prefetch), their reservations sale by
    /// sale: one transaction per sale for all of them, however many messages they came in.
    /// A message is acked when every sale it touches committed and Redis was told; a failed
    /// sale retries the messages that carry it, which is safe because outcomes already
    /// recorded are re-applied, not redone. Rebuild barriers are looked at last, after the
    /// reservations that came with them ([`crate::barrier`]).
    pub async fn handle(&self, deliveries: Vec<Delivery>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = deliveries.iter().map(|_| None).collect();
        let mut by_sale: BTreeMap<(Uuid, u16), Vec<(usize, Reservation)>> = BTreeMap::new();
        let mut barriers = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            if let Some(mark) = barrier_of(&delivery.body) {
                barriers.push((index, mark));
                continue;
            }
            match delivery.json::<ReservationBatch>("reservation batch") {
                Ok(batch) => {
                    for reservation in batch.reservations {
                        let bucket = (reservation.sale_id, reservation.bucket());
                        by_sale.entry(bucket).or_default().push((index, reservation));
                    }
                }
                Err(dead) => outcomes[index] = Some(dead),
            }
        }
        let mut in_hand = self.barrier.hold(by_sale.keys().copied());
        for ((sale_id, bucket), group) in by_sale {
            let Err(err) = self.process(sale_id, bucket, &distinct(&group)).await else {
                in_hand.settled((sale_id, bucket));
                continue;
            };
            let failed: BTreeSet<usize> = group.iter().map(|(index, _)| *index).collect();
            for index in failed {
                let outcome = if matches!(err, Error::Unavailable { .. }) {
                    // Postgres or Redis is down: the reservations are fine, they wait.
                    Outcome::Unavailable(anyhow::anyhow!("sale {sale_id}: {err}"))
                } else if deliveries[index].last_attempt {
                    let own: Vec<Reservation> =
                        group.iter().filter(|(i, _)| *i == index).map(|(_, r)| r.clone()).collect();
                    match self.give_up(sale_id, bucket, &own).await {
                        Ok(()) => Outcome::Retry(anyhow::anyhow!("sale {sale_id}: {err}")),
                        Err(unknown) => unknown.outcome(&format!("giving up on sale {sale_id}")),
                    }
                } else {
                    Outcome::Retry(anyhow::anyhow!("sale {sale_id}: {err}"))
                };
                // A message that also carries another sale keeps the outcome that holds it.
                if !matches!(outcomes[index], Some(Outcome::Unavailable(_))) {
                    outcomes[index] = Some(outcome);
                }
            }
        }
        drop(in_hand);
        for (index, mark) in barriers {
            let (sale_id, bucket) = (mark.sale_id, mark.bucket);
            let (outcome, passed) = self.barrier.consider(mark).await;
            if passed && let Err(err) = self.sales.rebuild(sale_id, bucket).await {
                tracing::warn!(%sale_id, bucket, error = %err, "could not load the sale after its barrier passed; the next purchase will");
            }
            outcomes[index] = Some(outcome);
        }
        outcomes.into_iter().map(|outcome| outcome.unwrap_or(Outcome::Ack)).collect()
    }

    #[tracing::instrument(skip_all, fields(%sale_id, bucket, reservations = group.len()))]
    async fn process(&self, sale_id: Uuid, bucket: u16, group: &[Reservation]) -> Result<()> {
        let keys = self.keys.sale_bucket(sale_id, bucket);
        let mut redis = self.redis.clone();
        let ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
        let claimed = hot::claim(&mut redis, &keys, &ids).await?;
        let group: Vec<&Reservation> = group.iter().zip(claimed).filter_map(|(r, ok)| ok.then_some(r)).collect();
        if group.is_empty() {
            return Ok(());
        }

        let txn = self.db.begin().await?;
        let of = group.first().map_or(1, |r| r.buckets);
        let Some((sale, locked)) = sales::lock_bucket(&txn, sale_id, bucket, Some(of), true).await? else {
            txn.rollback().await?;
            tracing::error!(%sale_id, "reservations for a sale that does not exist; releasing them");
            let ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
            hot::fail(&mut redis, &keys, &self.keys.sale_restock_channel(), sale_id, &ids, true).await?;
            return Ok(());
        };
        let ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
        let recorded: HashMap<Uuid, ReservationRow> =
            sales::reservations(&txn, &ids).await?.into_iter().map(|row| (row.id, row)).collect();
        let fresh: Vec<&Reservation> = group.iter().copied().filter(|r| !recorded.contains_key(&r.id)).collect();
        let users: Vec<Uuid> = fresh.iter().map(|r| r.user_id).collect();
        // The bucket's own units: each bucket sells what Redis gave it, and no more.
        let decisions = decide(&sale, locked.stock_left, &sales::holdings(&txn, sale_id, users).await?, &fresh);

        let confirmed_units: i32 =
            decisions.iter().filter(|d| d.order_id.is_some()).map(|d| d.reservation.quantity).sum();
        let version = if confirmed_units > 0 {
            sales::change_stock(&txn, sale_id, bucket, sale.stock_buckets as u16, -confirmed_units).await?
        } else {
            locked.version
        };
        let new_orders: Vec<NewOrder> = decisions.iter().filter_map(|d| d.order(&sale)).collect();
        orders::insert(&txn, &new_orders).await?;
        sales::add_to_buyers(&txn, sale_id, sale.per_user_limit, &holdings(&decisions)).await?;
        let rows: Vec<NewReservation> = decisions.iter().map(Decision::record).collect();
        sales::insert_reservations(&txn, sale_id, version, &rows).await?;
        let order_ids: Vec<Uuid> = new_orders.iter().map(|o| o.id).collect();
        if !order_ids.is_empty() {
            let timeout_ms = i64::from(sale.payment_timeout_secs) * 1000;
            announce_and_schedule_close(&txn, OrderKind::Sale, &order_ids, timeout_ms).await?;
        }
        txn.commit().await?;

        // Postgres has the outcomes; now Redis. Outcomes recorded by an earlier delivery
        // are applied again (the scripts are idempotent) in case that delivery died here.
        let mut outcomes: Vec<Recorded> = decisions.iter().map(|d| d.outcome(version)).collect();
        outcomes.extend(recorded.values().map(Recorded::from_row));
        self.apply(&mut redis, sale_id, bucket, &outcomes).await?;
        let confirmed = outcomes.iter().filter(|o| o.order_id.is_some()).count() as u64;
        metrics::counter!("reservations_total", "outcome" => "confirmed").increment(confirmed);
        metrics::counter!("reservations_total", "outcome" => "failed").increment(outcomes.len() as u64 - confirmed);
        Ok(())
    }

    async fn apply(&self, redis: &mut Redis, sale_id: Uuid, bucket: u16, outcomes: &[Recorded]) -> Result<()> {
        let keys = self.keys.sale_bucket(sale_id, bucket);
        let channel = self.keys.sale_restock_channel();
        let mut by_version: BTreeMap<i64, Vec<Settled>> = BTreeMap::new();
        for o in outcomes.iter().filter(|o| o.order_id.is_some()) {
            by_version.entry(o.version).or_default().push(Settled {
                reservation_id: o.id,
                user_id: o.user_id,
                quantity: o.quantity,
                generation: o.generation.clone(),
            });
        }
        for (version, settled) in by_version {
            hot::settle(redis, &keys, version, &settled).await?;
        }
        let refused: Vec<Uuid> = outcomes.iter().filter(|o| o.refusal.is_some()).map(|o| o.id).collect();
        hot::fail(redis, &keys, &channel, sale_id, &refused, false).await?;
        let decided: Vec<ReservationProgress> = outcomes.iter().map(|o| o.progress(sale_id)).collect();
        reservations::record(redis, &self.keys, &decided, self.status_ttl_secs).await?;
        Ok(())
    }

    /// The last attempt failed too: release what Postgres has not recorded. The decision is
    /// made under the sale's row lock and recorded in Postgres (`failed: not_processed`)
    /// before Redis releases anything: another copy of the same reservation that a consumer
    /// is turning into an order right now holds that lock, so either its order is seen here
    /// and nothing is released, or this record is seen there and no order is made. The
    /// record outlives Redis, so a re-driven copy cannot resurrect the reservation even
    /// after a flush. If Postgres or Redis cannot answer, nothing is released and the error
    /// is returned: holding a unit too long is safe, selling it twice is not, and a message
    /// whose dependency is down is held until it answers.
    async fn give_up(&self, sale_id: Uuid, bucket: u16, group: &[Reservation]) -> Result<()> {
        let ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
        let txn = self.db.begin().await?;
        let of = group.first().map_or(1, |r| r.buckets);
        let sale = sales::lock_bucket(&txn, sale_id, bucket, Some(of), true).await?;
        let recorded: Vec<Uuid> = sales::reservations(&txn, &ids).await?.into_iter().map(|r| r.id).collect();
        let release: Vec<&Reservation> = group.iter().filter(|r| !recorded.contains(&r.id)).collect();
        if let Some((_, locked)) = sale {
            let rows: Vec<NewReservation> = release
                .iter()
                .map(|r| NewReservation {
                    id: r.id,
                    user_id: r.user_id,
                    quantity: r.quantity,
                    order_id: None,
                    reason: Some(FailureReason::NotProcessed.as_str()),
                    reserved_at: r.reserved_at,
                    generation: r.generation.clone(),
                    idempotency_key: r.idempotency_key.clone(),
                    fingerprint: r.fingerprint.clone(),
                })
                .collect();
            sales::insert_reservations(&txn, sale_id, locked.version, &rows).await?;
        }
        txn.commit().await?;

        let ids: Vec<Uuid> = release.iter().map(|r| r.id).collect();
        let mut redis = self.redis.clone();
        let channel = self.keys.sale_restock_channel();
        hot::fail(&mut redis, &self.keys.sale_bucket(sale_id, bucket), &channel, sale_id, &ids, true).await?;
        let failed: Vec<ReservationProgress> = release
            .iter()
            .map(|r| ReservationProgress::failed(r.id, sale_id, r.user_id, FailureReason::NotProcessed))
            .collect();
        let _ = reservations::record(&mut redis, &self.keys, &failed, self.status_ttl_secs).await;
        Ok(())
    }
}

/// The reservations of a group, each once: the same reservation can arrive twice in one
/// intake (the original and a redelivered copy), and one transaction may record it once.
fn distinct(group: &[(usize, Reservation)]) -> Vec<Reservation> {
    let mut seen = BTreeSet::new();
    group.iter().filter(|(_, r)| seen.insert(r.id)).map(|(_, r)| r.clone()).collect()
}

/// Handles one `sale.restock` message: closed or cancelled sale orders' units go back on
/// sale in Redis (once per order).
pub async fn handle_restock(db: &DatabaseConnection, redis: &Redis, keys: &Keys, delivery: Delivery) -> Outcome {
    let message: SaleRestock = match delivery.json("restock message") {
        Ok(message) => message,
        Err(dead) => return dead,
    };
    let returned: Vec<hot::Returned> = message
        .returns
        .iter()
        .map(|r| hot::Returned { order_id: r.order_id, user_id: r.user_id, quantity: r.quantity })
        .collect();
    match restock(db, redis, keys, message.sale_id, message.buckets, message.version, &returned).await {
        Ok(units) => {
            if units > 0 {
                tracing::info!(sale_id = %message.sale_id, units, "units back on sale");
            }
            Outcome::Ack
        }
        Err(err) => err.outcome("restocking Redis"),
    }
}

/// Puts returned units back in Redis (the script counts each order once, and not at all
/// when the hot state already includes the return), then records in Postgres that Redis
/// was told, so that the restock sweeper leaves these orders alone. Returns the units put
/// back.
pub async fn restock(
    db: &DatabaseConnection,
    redis: &Redis,
    keys: &Keys,
    sale_id: Uuid,
    buckets: u16,
    version: i64,
    returned: &[hot::Returned],
) -> Result<i64> {
    let channel = keys.sale_restock_channel();
    // Each order's units go back to the bucket they came from: its buyer's home.
    let mut by_bucket: BTreeMap<u16, Vec<hot::Returned>> = BTreeMap::new();
    for r in returned {
        let r2 = hot::Returned { order_id: r.order_id, user_id: r.user_id, quantity: r.quantity };
        by_bucket.entry(Bucket::home(r.user_id, buckets).index).or_default().push(r2);
    }
    let mut units = 0;
    for (bucket, returned) in by_bucket {
        let keys = keys.sale_bucket(sale_id, bucket);
        units += hot::restock(&mut redis.clone(), &keys, &channel, sale_id, version, &returned).await?;
    }
    let order_ids: Vec<Uuid> = returned.iter().map(|r| r.order_id).collect();
    sales::mark_restocked(db, &order_ids).await?;
    Ok(units)
}

/// What the consumer decided for one new reservation.
struct Decision<'a> {
    reservation: &'a Reservation,
    order_id: Option<Uuid>,
    refusal: Option<FailureReason>,
}

/// Decides each reservation in arrival order against the Postgres stock of its bucket
/// (`left`) and the buyers' Postgres holdings (the sale row is locked, so these numbers
/// are final).
fn decide<'a>(sale: &SaleRow, mut left: i32, buyers: &[(Uuid, i32)], fresh: &[&'a Reservation]) -> Vec<Decision<'a>> {
    let mut held: HashMap<Uuid, i32> = buyers.iter().copied().collect();
    fresh
        .iter()
        .map(|reservation| {
            let holding = held.entry(reservation.user_id).or_default();
            let refusal = if left < reservation.quantity {
                Some(FailureReason::SoldOut)
            } else if *holding + reservation.quantity > sale.per_user_limit {
                Some(FailureReason::LimitReached)
            } else {
                left -= reservation.quantity;
                *holding += reservation.quantity;
                None
            };
            Decision { reservation, order_id: refusal.is_none().then(Uuid::now_v7), refusal }
        })
        .collect()
}

/// Units each buyer gains in this transaction, one row per buyer (one upsert may not touch
/// a row twice).
fn holdings(decisions: &[Decision]) -> Vec<(Uuid, i32)> {
    let mut per_user: BTreeMap<Uuid, i32> = BTreeMap::new();
    for d in decisions.iter().filter(|d| d.order_id.is_some()) {
        *per_user.entry(d.reservation.user_id).or_default() += d.reservation.quantity;
    }
    per_user.into_iter().collect()
}

impl Decision<'_> {
    fn order(&self, sale: &SaleRow) -> Option<NewOrder> {
        let price = Money::from_decimal(sale.price);
        Some(NewOrder {
            id: self.order_id?,
            user_id: self.reservation.user_id,
            kind: OrderKind::Sale.as_str(),
            total: price.times(self.reservation.quantity as u32).decimal(),
            payment_timeout_ms: i64::from(sale.payment_timeout_secs) * 1000,
            lines: vec![NewLine {
                product_id: Some(sale.product_id),
                title: sale.title.clone(),
                quantity: self.reservation.quantity,
                unit_price: sale.price,
            }],
        })
    }

    fn record(&self) -> NewReservation {
        NewReservation {
            id: self.reservation.id,
            user_id: self.reservation.user_id,
            quantity: self.reservation.quantity,
            order_id: self.order_id,
            reason: self.refusal.map(FailureReason::as_str),
            reserved_at: self.reservation.reserved_at,
            generation: self.reservation.generation.clone(),
            idempotency_key: self.reservation.idempotency_key.clone(),
            fingerprint: self.reservation.fingerprint.clone(),
        }
    }

    fn outcome(&self, version: i64) -> Recorded {
        Recorded {
            id: self.reservation.id,
            user_id: self.reservation.user_id,
            quantity: self.reservation.quantity,
            generation: self.reservation.generation.clone(),
            version,
            order_id: self.order_id,
            refusal: self.refusal,
        }
    }
}

/// A recorded outcome, as Redis needs it.
struct Recorded {
    id: Uuid,
    user_id: Uuid,
    quantity: i32,
    generation: String,
    version: i64,
    order_id: Option<Uuid>,
    refusal: Option<FailureReason>,
}

impl Recorded {
    fn from_row(row: &ReservationRow) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            quantity: row.quantity,
            generation: row.generation.clone(),
            version: row.sale_version,
            order_id: row.order_id,
            // The reason is what the buyer sees; the release is the same for all of them
            // (`broker_unavailable`: an undo recorded it, and this copy arrived after all).
            refusal: matches!(row.status.parse(), Ok(ReservationStatus::Failed))
                .then(|| row.reason.as_deref().and_then(|r| r.parse().ok()).unwrap_or(FailureReason::SoldOut)),
        }
    }

    fn progress(&self, sale_id: Uuid) -> ReservationProgress {
        match (self.order_id, self.refusal) {
            (Some(order_id), _) => ReservationProgress::confirmed(self.id, sale_id, self.user_id, order_id),
            (None, refusal) => {
                ReservationProgress::failed(self.id, sale_id, self.user_id, refusal.unwrap_or(FailureReason::SoldOut))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use rust_decimal::Decimal;

    use super::*;

    fn sale(stock_left: i32, per_user_limit: i32) -> SaleRow {
        SaleRow {
            id: Uuid::now_v7(),
            product_id: Uuid::now_v7(),
            title: "Phone".into(),
            price: Decimal::new(999, 2),
            stock: 100,
            stock_left,
            start_at: Utc::now(),
            end_at: Utc::now(),
            per_user_limit,
            payment_timeout_secs: 60,
            version: 0,
            created_at: Utc::now(),
            stock_buckets: 1,
        }
    }

    fn reservation(user: Uuid, quantity: i32) -> Reservation {
        Reservation {
            id: Uuid::now_v7(),
            sale_id: Uuid::nil(),
            user_id: user,
            quantity,
            generation: "g".into(),
            reserved_at: Utc::now(),
            idempotency_key: None,
            fingerprint: None,
            buckets: 1,
        }
    }

    #[test]
    fn postgres_stock_caps_the_confirmed_units() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let reservations = [reservation(a, 1), reservation(b, 2), reservation(c, 1)];
        let refs: Vec<&Reservation> = reservations.iter().collect();
        let decisions = decide(&sale(2, 5), 2, &[], &refs);
        let refusals: Vec<Option<FailureReason>> = decisions.iter().map(|d| d.refusal).collect();
        assert_eq!(refusals, [None, Some(FailureReason::SoldOut), None]);
    }

    #[test]
    fn the_database_per_user_limit_counts_existing_holdings() {
        let a = Uuid::now_v7();
        let reservations = [reservation(a, 1), reservation(a, 1)];
        let refs: Vec<&Reservation> = reservations.iter().collect();
        let decisions = decide(&sale(10, 2), 10, &[(a, 1)], &refs);
        assert_eq!(decisions[0].refusal, None);
        assert_eq!(decisions[1].refusal, Some(FailureReason::LimitReached));
        assert_eq!(holdings(&decisions), vec![(a, 1)]);
    }

    #[test]
    fn a_sale_order_costs_the_sale_price_times_quantity() {
        let a = Uuid::now_v7();
        let reservations = [reservation(a, 3)];
        let refs: Vec<&Reservation> = reservations.iter().collect();
        let sale = sale(10, 5);
        let decisions = decide(&sale, sale.stock_left, &[], &refs);
        let order = decisions[0].order(&sale).unwrap();
        assert_eq!(order.total, Decimal::new(2997, 2));
        assert_eq!(order.kind, "sale");
    }
}
