//! The rebuild barrier: after Redis lost a sale's hot state, the sale is loaded from
//! Postgres again only once every reservation accepted before the loss has been processed.
//!
//! Postgres does not count a reservation until the order consumer has written it, so a
//! state rebuilt while reservations still wait in RabbitMQ would sell their units again,
//! and Postgres would later refuse a buyer who had been answered 202. The first instance
//! that finds the state missing sends a barrier message for the sale into the reservation
//! queue, behind everything published before; meanwhile every instance answers 503 with
//! `Retry-After`. The order consumer lets the barrier pass only when it holds nothing of
//! that sale, and sends it round the first retry queue until then: docs/reliability.md,
//! "A rebuild never re-sells a held unit", gives the rules and what they cover.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use platform::{Broker, Redis};
use repo::cache::Keys;
use repo::cache::barrier::{self as marks, Gate};
use repo::db::sales;
use repo::mq::messages::{BarrierMark, SaleBarrier};
use repo::mq::topology::SALE_RESERVE;
use repo::mq::{ConfirmPublisher, Message, Outcome, Topology};
use sea_orm::DatabaseConnection;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The longest a consumer holds a message whose dependency is down before it tries again
/// (`platform::connect::backoff`'s cap).
const HOLD_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Shared by the API side (sends barriers, waits for them) and the order consumer (lets
/// them pass).
#[derive(Clone)]
pub struct RebuildBarrier {
    db: DatabaseConnection,
    redis: Redis,
    keys: Keys,
    topology: Topology,
    publisher: Arc<ConfirmPublisher>,
    timeout_ms: u64,
    /// How long after a loss a reservation made before it may still be confirmed by the
    /// broker (the purchase path's publish wait): a barrier never passes sooner.
    confirm_window: Duration,
    hands: Arc<Hands>,
}

impl RebuildBarrier {
    pub fn new(
        db: DatabaseConnection,
        broker: Arc<Broker>,
        redis: Redis,
        keys: Keys,
        topology: Topology,
        confirm_timeout: Duration,
        timeout_ms: u64,
    ) -> Self {
        let publisher = Arc::new(ConfirmPublisher::new(broker, confirm_timeout));
        Self {
            db,
            redis,
            keys,
            topology,
            publisher,
            timeout_ms,
            confirm_window: confirm_timeout * 2 + Duration::from_secs(1),
            hands: Arc::default(),
        }
    }

    /// The API side, when a purchase found the hot state missing: `Ok(true)` load it now,
    /// `Ok(false)` it is there again, `Err(Rebuilding)` answer 503 (a barrier is on its way,
    /// possibly sent just now).
    pub async fn pass(&self, sale_id: Uuid, bucket: u16) -> Result<bool> {
        let keys = self.keys.barrier_bucket(sale_id, bucket);
        let mut redis = self.redis.clone();
        let id = Uuid::now_v7();
        match marks::gate(&mut redis, &keys, id, self.timeout_ms).await? {
            Gate::Loaded => return Ok(false),
            Gate::Drained => return Ok(true),
            Gate::Wait => {}
            Gate::Publish { replaced } => {
                // A sale that does not exist, or has ended, sells nothing: nothing to wait for.
                let still_selling = self.still_selling(sale_id).await;
                if !matches!(still_selling, Ok(true)) {
                    marks::abandon(&mut redis, &keys).await?;
                    return still_selling.map(|_| true);
                }
                if replaced {
                    tracing::warn!(%sale_id, bucket, timeout_ms = self.timeout_ms, "the rebuild barrier did not pass in time; purchases stay on hold and another barrier is sent");
                    metrics::counter!("rebuild_barriers_timed_out_total").increment(1);
                } else {
                    tracing::warn!(%sale_id, bucket, "the sale's hot state is missing; purchases wait for the reservations queued before the loss");
                }
                let mark = BarrierMark { id, sale_id, bucket, cycles: 0, quiet: 0 };
                if let Err(err) = self.send(&mark, false).await {
                    let _ = marks::abandon(&mut redis, &keys).await;
                    return Err(err);
                }
            }
        }
        Err(Error::Rebuilding)
    }

    /// Whether the sale has not ended yet (NotFound when there is no such sale).
    async fn still_selling(&self, sale_id: Uuid) -> Result<bool> {
        let row = sales::find(&self.db, sale_id).await?.ok_or(Error::NotFound("sale"))?;
        Ok(row.end_at > Utc::now())
    }

    /// The state is loaded: the marks are done with.
    pub async fn finish(&self, sale_id: Uuid, bucket: u16) -> Result<()> {
        Ok(marks::finish(&mut self.redis.clone(), &self.keys.barrier_bucket(sale_id, bucket)).await?)
    }

    /// The order consumer takes these sales' reservations in hand (per stock bucket).
    pub fn hold(&self, sales: impl IntoIterator<Item = SaleBucket>) -> InHand {
        let retry_max = self.topology.retry_delays_ms.iter().copied().max().unwrap_or(0);
        let linger = Duration::from_millis(retry_max).max(HOLD_BACKOFF_CAP) + self.round();
        self.hands.take(sales.into_iter().collect(), linger)
    }

    /// The order consumer met a barrier: it passes (`true`: the sale may be loaded now),
    /// goes round again, or is dropped (a barrier the API no longer waits for).
    pub async fn consider(&self, mark: BarrierMark) -> (Outcome, bool) {
        let keys = self.keys.barrier_bucket(mark.sale_id, mark.bucket);
        let mut redis = self.redis.clone();
        match marks::current(&mut redis, &keys).await {
            Ok(Some(current)) if current == mark.id.to_string() => {}
            Ok(_) => return (Outcome::Ack, false),
            Err(err) => return (Error::from(err).outcome("reading the rebuild barrier"), false),
        }
        let quiet = if self.hands.quiet((mark.sale_id, mark.bucket), self.round()) { mark.quiet + 1 } else { 0 };
        let waited = self.round() * mark.cycles >= self.confirm_window;
        if waited && quiet >= 2 {
            if let Err(err) = marks::mark_drained(&mut redis, &keys, mark.id, self.timeout_ms).await {
                return (Error::from(err).outcome("passing the rebuild barrier"), false);
            }
            tracing::info!(sale_id = %mark.sale_id, bucket = mark.bucket, rounds = mark.cycles, "rebuild barrier passed: the sale may be loaded from Postgres");
            return (Outcome::Ack, true);
        }
        let next = BarrierMark { cycles: mark.cycles + 1, quiet, ..mark };
        match self.send(&next, true).await {
            Ok(()) => (Outcome::Ack, false),
            Err(err) => (err.outcome("sending the rebuild barrier round"), false),
        }
    }

    /// One trip through the first retry queue.
    fn round(&self) -> Duration {
        Duration::from_millis(self.topology.retry_delays_ms.first().copied().unwrap_or(1000))
    }

    /// Into the reservation queue, behind everything there (`round`: through the first
    /// retry queue, which dead-letters into it after its delay).
    async fn send(&self, mark: &BarrierMark, round: bool) -> Result<()> {
        let body = serde_json::to_vec(&SaleBarrier { barrier: mark.clone() }).map_err(|e| Error::Internal(e.into()))?;
        let (exchange, routing_key) = if round {
            let channel = self.publisher.channel().await?;
            let delay = self.round().as_millis() as u64;
            (String::new(), self.topology.declare_retry_queue(&channel, SALE_RESERVE, delay).await?)
        } else {
            (self.topology.exchange(), SALE_RESERVE.key.to_owned())
        };
        let message = Message {
            exchange,
            routing_key,
            body,
            message_id: Some(mark.id.to_string()),
            mandatory: true,
            ..Default::default()
        };
        self.publisher.publish_all(&[message]).await.map_err(|err| Error::Unavailable {
            service: "rabbitmq",
            cause: Some(anyhow::anyhow!("sending the rebuild barrier of sale {}: {err}", mark.sale_id)),
        })
    }
}

/// A barrier in a delivery, if it carries one.
pub fn barrier_of(body: &[u8]) -> Option<BarrierMark> {
    serde_json::from_slice::<SaleBarrier>(body).ok().map(|b| b.barrier)
}

/// What this process's order consumers hold, per sale: reservations in hand now, and how
/// long one that was retried or held may still come back. A barrier counts only this
/// process: see docs/reliability.md on several worker processes.
#[derive(Default)]
struct Hands {
    state: Mutex<HandsState>,
}

/// A sale and one of its stock buckets: what a barrier waits for.
pub type SaleBucket = (Uuid, u16);

#[derive(Default)]
struct HandsState {
    sales: HashMap<SaleBucket, Held>,
    /// Handler calls running now, by when they started.
    calls: BTreeMap<u64, Instant>,
    next_call: u64,
}

struct Held {
    count: usize,
    until: Instant,
}

impl Hands {
    fn take(self: &Arc<Self>, sales: HashSet<SaleBucket>, linger: Duration) -> InHand {
        let mut state = self.state.lock().expect("barrier hands poisoned");
        let call = state.next_call;
        state.next_call += 1;
        let now = Instant::now();
        state.calls.insert(call, now);
        for sale in &sales {
            state.sales.entry(*sale).or_insert(Held { count: 0, until: now }).count += 1;
        }
        InHand { hands: self.clone(), call, unsettled: sales.clone(), sales, linger }
    }

    /// Nothing of the sale in hand or due back, and no handler call running for longer
    /// than one round (it may have taken the sale's messages from the broker's prefetch
    /// without having reached them).
    fn quiet(&self, sale_id: SaleBucket, round: Duration) -> bool {
        let state = self.state.lock().expect("barrier hands poisoned");
        let now = Instant::now();
        let idle = state.sales.get(&sale_id).is_none_or(|held| held.count == 0 && held.until <= now);
        let fresh = state.calls.values().next().is_none_or(|started| now.duration_since(*started) < round);
        idle && fresh
    }
}

/// The reservations of one handler call. A sale not marked settled (its messages retried
/// or held, or the call dropped midway) counts as possibly coming back for a while.
pub struct InHand {
    hands: Arc<Hands>,
    call: u64,
    sales: HashSet<SaleBucket>,
    unsettled: HashSet<SaleBucket>,
    linger: Duration,
}

impl InHand {
    pub fn settled(&mut self, sale_id: SaleBucket) {
        self.unsettled.remove(&sale_id);
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        let Ok(mut state) = self.hands.state.lock() else { return };
        state.calls.remove(&self.call);
        let now = Instant::now();
        for sale in &self.sales {
            if let Some(held) = state.sales.get_mut(sale) {
                held.count -= 1;
                if self.unsettled.contains(sale) {
                    held.until = held.until.max(now + self.linger);
                }
            }
        }
        state.sales.retain(|_, held| held.count > 0 || held.until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUND: Duration = Duration::from_millis(200);
    const LINGER: Duration = Duration::from_secs(6);

    #[tokio::test(start_paused = true)]
    async fn a_sale_in_hand_or_lately_unsettled_is_not_quiet() {
        let hands = Arc::new(Hands::default());
        let (sale, other) = ((Uuid::now_v7(), 0), (Uuid::now_v7(), 3));
        assert!(hands.quiet(sale, ROUND));

        let mut in_hand = hands.take([sale, other].into(), LINGER);
        assert!(!hands.quiet(sale, ROUND), "in hand");
        in_hand.settled(sale);
        drop(in_hand);
        assert!(hands.quiet(sale, ROUND), "settled: nothing comes back");
        assert!(!hands.quiet(other, ROUND), "retried or held: it comes back");
        tokio::time::advance(LINGER).await;
        assert!(hands.quiet(other, ROUND));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_handler_call_may_hold_any_sale_in_its_prefetch() {
        let hands = Arc::new(Hands::default());
        let busy = hands.take([(Uuid::now_v7(), 0)].into(), LINGER);
        let sale = (Uuid::now_v7(), 0);
        assert!(hands.quiet(sale, ROUND), "a call that just began took its messages after the barrier");
        tokio::time::advance(ROUND).await;
        assert!(!hands.quiet(sale, ROUND));
        drop(busy);
        assert!(hands.quiet(sale, ROUND));
    }
}
