//! The API side of a purchase: hands reservations to RabbitMQ, many per message.
//!
//! One broker message per reservation would cap a sale near the broker's confirm rate
//! (about 20k/s here). So reservations queue up in process and each publisher task sends
//! whatever has gathered while its previous publish was being confirmed, as one message:
//! under light load a batch of one (no added latency), under a burst hundreds per confirm.
//! Every reservation keeps its own outcome: the order consumer confirms or fails each one.
//!
//! A confirmed reservation is marked published in Redis before its buyer is told 202, so
//! that the worker's reaper leaves it alone however long it then waits in RabbitMQ.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use domain::reservation::ReservationProgress;
use platform::Broker;
use platform::Redis;
use repo::cache::sales as hot;
use repo::cache::{Keys, reservations};
use repo::mq::messages::{Reservation, ReservationBatch};
use repo::mq::topology::SALE_RESERVE;
use repo::mq::{ConfirmPublisher, Message, Topology};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

struct Pending {
    reservation: Reservation,
    trace: HashMap<String, String>,
    done: oneshot::Sender<bool>,
}

/// Hands reservations to the publisher tasks and waits for their confirm.
#[derive(Clone)]
pub struct ReservationPublisher {
    queue: mpsc::Sender<Pending>,
    /// The longest wait for room in the queue (the publisher tasks are behind, e.g. the
    /// broker is stalled): after it the purchase is undone and answered 503.
    room_wait: Duration,
    wait: Duration,
}

pub struct PublisherConfig {
    pub tasks: usize,
    pub max_batch: usize,
    pub confirm_timeout: Duration,
    pub status_ttl_secs: u64,
}

impl ReservationPublisher {
    pub fn start(broker: Arc<Broker>, topology: Topology, redis: Redis, keys: Keys, config: PublisherConfig) -> Self {
        let (queue, receiver) = mpsc::channel::<Pending>(config.max_batch * config.tasks * 8);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..config.tasks {
            let task = PublisherTask {
                receiver: receiver.clone(),
                publisher: ConfirmPublisher::new(broker.clone(), config.confirm_timeout),
                exchange: topology.exchange(),
                redis: redis.clone(),
                keys: keys.clone(),
                max_batch: config.max_batch,
                status_ttl_secs: config.status_ttl_secs,
            };
            tokio::spawn(task.run());
        }
        Self { queue, room_wait: config.confirm_timeout, wait: confirm_wait(config.confirm_timeout) }
    }

    /// True once the broker confirmed the message carrying this reservation and it was
    /// marked published in Redis.
    pub async fn publish(&self, reservation: Reservation) -> bool {
        let started = std::time::Instant::now();
        let (done, confirmed) = oneshot::channel();
        let pending = Pending { reservation, trace: platform::telemetry::current_trace_headers(), done };
        if !matches!(tokio::time::timeout(self.room_wait, self.queue.send(pending)).await, Ok(Ok(()))) {
            metrics::counter!("reservation_queue_full_total").increment(1);
            return false;
        }
        // The whole wait stays within `wait`, which the reaper's deadline exceeds.
        let left = self.wait.saturating_sub(started.elapsed());
        let confirmed = matches!(tokio::time::timeout(left, confirmed).await, Ok(Ok(true)));
        metrics::histogram!("reservation_publish_seconds").record(started.elapsed().as_secs_f64());
        confirmed
    }
}

/// How long a purchase waits for its confirm at most: its batch may wait for the one
/// before it, then for its own confirm.
pub fn confirm_wait(confirm_timeout: Duration) -> Duration {
    confirm_timeout * 2 + Duration::from_secs(1)
}

struct PublisherTask {
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    publisher: ConfirmPublisher,
    exchange: String,
    redis: Redis,
    keys: Keys,
    max_batch: usize,
    status_ttl_secs: u64,
}

impl PublisherTask {
    async fn run(self) {
        loop {
            let batch = {
                let mut receiver = self.receiver.lock().await;
                let Some(first) = receiver.recv().await else { return };
                let mut batch = vec![first];
                while batch.len() < self.max_batch {
                    match receiver.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                batch
            };
            let reservations: Vec<Reservation> = batch.iter().map(|p| p.reservation.clone()).collect();
            // The "queued" statuses are written while the broker confirms, not after: a buyer
            // who polls right after the 202 finds one, and nobody waits for two round trips.
            // (If the publish fails, the undo overwrites them with "failed".)
            let (confirmed, ()) =
                tokio::join!(self.send(&reservations, &batch[0].trace), self.mark_queued(&reservations));
            metrics::histogram!("reservation_batch_size").record(batch.len() as f64);
            let published = if confirmed { self.mark_published(&reservations).await } else { HashSet::new() };
            for pending in batch {
                let _ = pending.done.send(published.contains(&pending.reservation.id));
            }
        }
    }

    async fn send(&self, reservations: &[Reservation], trace: &HashMap<String, String>) -> bool {
        let message = Message {
            exchange: self.exchange.clone(),
            routing_key: SALE_RESERVE.key.to_owned(),
            body: serde_json::to_vec(&ReservationBatch { reservations: reservations.to_vec() }).unwrap_or_default(),
            headers: trace.clone(),
            message_id: Some(reservations[0].id.to_string()),
            mandatory: true,
        };
        let started = std::time::Instant::now();
        let published = self.publisher.publish_all(&[message]).await;
        metrics::histogram!("reservation_confirm_seconds").record(started.elapsed().as_secs_f64());
        if let Err(err) = published {
            tracing::warn!(error = %err, reservations = reservations.len(), "reservation publish not confirmed");
            return false;
        }
        true
    }

    /// Marks the confirmed reservations published, sale by sale; returns those marked (or
    /// already claimed by the consumer). One the reaper undid first is left out: its buyer
    /// gets 503, and the consumer drops its message.
    async fn mark_published(&self, batch: &[Reservation]) -> HashSet<Uuid> {
        let mut by_bucket: BTreeMap<(Uuid, u16), Vec<Uuid>> = BTreeMap::new();
        for r in batch {
            by_bucket.entry((r.sale_id, r.bucket())).or_default().push(r.id);
        }
        let mut published = HashSet::with_capacity(batch.len());
        for ((sale_id, bucket), ids) in by_bucket {
            match hot::mark_published(&mut self.redis.clone(), &self.keys.sale_bucket(sale_id, bucket), &ids).await {
                Ok(flags) => published.extend(ids.iter().zip(flags).filter_map(|(id, ok)| ok.then_some(*id))),
                Err(err) => tracing::warn!(%sale_id, error = %err, "could not mark reservations published"),
            }
        }
        published
    }

    /// Tells pollers "queued" (unless the consumer has answered already).
    async fn mark_queued(&self, batch: &[Reservation]) {
        let queued: Vec<ReservationProgress> =
            batch.iter().map(|r| ReservationProgress::queued(r.id, r.sale_id, r.user_id)).collect();
        let written =
            reservations::mark_queued(&mut self.redis.clone(), &self.keys, &queued, self.status_ttl_secs).await;
        if let Err(err) = written {
            tracing::warn!(error = %err, "could not write queued reservation statuses");
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn reservation() -> Reservation {
        Reservation {
            id: Uuid::now_v7(),
            sale_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            quantity: 1,
            generation: "g".into(),
            reserved_at: Utc::now(),
            idempotency_key: None,
            fingerprint: None,
            buckets: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_waited_on_for_the_confirm_timeout_at_most() {
        // A queue with room for one, that no publisher task empties (the broker is stalled).
        let (queue, _tasks) = mpsc::channel(1);
        let timeout = Duration::from_secs(2);
        let publisher = ReservationPublisher { queue, room_wait: timeout, wait: confirm_wait(timeout) };
        let (done, _) = oneshot::channel();
        publisher.queue.try_send(Pending { reservation: reservation(), trace: HashMap::new(), done }).unwrap();

        let started = tokio::time::Instant::now();
        let published = tokio::time::timeout(Duration::from_secs(600), publisher.publish(reservation())).await;
        assert_eq!(published, Ok(false), "answered (and undone by the caller), not left waiting");
        assert_eq!(started.elapsed(), timeout);
    }
}
