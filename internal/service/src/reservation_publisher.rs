//! The API side of a purchase: hands reservations to RabbitMQ, many per message.
//!
//! One broker message per reservation would cap a sale near the broker's confirm rate
//! (about 20k/s here). So reservations queue up in process and each publisher task sends
//! whatever has gathered as one message: under light load a batch of one (no added
//! latency), under a burst hundreds per message. A task does not wait for a message's
//! confirm before it sends the next: up to `amqp.confirms_in_flight` messages wait for
//! their confirms at once, so the confirm round trip no longer idles the channel, and a
//! buyer waits for their own message's confirm rather than also for the one before it.
//! Every reservation keeps its own outcome: the order consumer confirms or fails each one,
//! and a buyer hears 202 only once the broker confirmed the message carrying their
//! reservation.
//!
//! A confirmed reservation is marked published in Redis before its buyer is told 202, so
//! that the worker's reaper leaves it alone however long it then waits in RabbitMQ.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use domain::reservation::ReservationProgress;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
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
    /// Batches a task may have waiting for their confirms at once.
    pub in_flight: usize,
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
                in_flight: config.in_flight,
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

/// A batch being handed to the broker; it yields the wait for the batch's confirm.
type Sending<'a> = BoxFuture<'a, Confirming<'a>>;
/// A batch's wait for its confirm; it yields the reservations confirmed and marked published.
type Confirming<'a> = BoxFuture<'a, HashSet<Uuid>>;

/// Takes batches off the queue and sends each as soon as it is gathered, while up to
/// `in_flight` earlier ones still wait for their confirms (more than one batch in flight
/// on the one confirm channel: its confirm round trip no longer idles the channel). Each
/// buyer is answered from their own batch's confirm alone, whatever happens to the others.
async fn pipeline<'a>(
    receiver: &Mutex<mpsc::Receiver<Pending>>,
    max_batch: usize,
    in_flight: usize,
    send: impl Fn(Vec<Reservation>, HashMap<String, String>) -> Sending<'a>,
) {
    let mut confirming = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = confirming.next(), if !confirming.is_empty() => {}
            batch = next_batch(receiver, max_batch), if confirming.len() < in_flight.max(1) => {
                let Some(batch) = batch else { break };
                let mut reservations = Vec::with_capacity(batch.len());
                let mut answers = Vec::with_capacity(batch.len());
                let trace = batch.first().map(|p| p.trace.clone()).unwrap_or_default();
                for pending in batch {
                    answers.push((pending.reservation.id, pending.done));
                    reservations.push(pending.reservation);
                }
                let confirmed = send(reservations, trace).await;
                confirming.push(async move {
                    let published = confirmed.await;
                    for (id, done) in answers {
                        let _ = done.send(published.contains(&id));
                    }
                });
            }
        }
    }
    while confirming.next().await.is_some() {}
}

/// The next batch: the first reservation waiting (waited for) and whatever else is
/// already queued, up to `max_batch`. None once the queue is closed.
async fn next_batch(receiver: &Mutex<mpsc::Receiver<Pending>>, max_batch: usize) -> Option<Vec<Pending>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max_batch {
        match receiver.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}

struct PublisherTask {
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    publisher: ConfirmPublisher,
    exchange: String,
    redis: Redis,
    keys: Keys,
    max_batch: usize,
    in_flight: usize,
    status_ttl_secs: u64,
}

impl PublisherTask {
    async fn run(self) {
        let receiver = self.receiver.clone();
        pipeline(&receiver, self.max_batch, self.in_flight, |reservations, trace| self.send(reservations, trace)).await;
    }

    /// Hands one batch's message to the broker; the future it returns waits for the
    /// confirm and marks the batch published, and yields the reservations that were.
    #[expect(clippy::async_yields_async, reason = "the send yields the wait for its confirm, on purpose")]
    fn send(&self, reservations: Vec<Reservation>, trace: HashMap<String, String>) -> Sending<'_> {
        Box::pin(async move {
            let message = Message {
                exchange: self.exchange.clone(),
                routing_key: SALE_RESERVE.key.to_owned(),
                body: serde_json::to_vec(&ReservationBatch { reservations: reservations.clone() }).unwrap_or_default(),
                headers: trace,
                message_id: Some(reservations[0].id.to_string()),
                mandatory: true,
            };
            let started = std::time::Instant::now();
            let sent = self.publisher.send(&[message]).await;
            let confirming: Confirming<'_> = Box::pin(async move {
                // The "queued" statuses are written while the broker confirms, not after: a
                // buyer who polls right after the 202 finds one, and nobody waits for two
                // round trips. (If the publish fails, the undo overwrites them with "failed".)
                let (confirmed, ()) = tokio::join!(
                    async {
                        let confirmed = match sent {
                            Ok(in_flight) => self.publisher.confirmed(in_flight).await,
                            Err(err) => Err(err),
                        };
                        metrics::histogram!("reservation_confirm_seconds").record(started.elapsed().as_secs_f64());
                        confirmed
                    },
                    self.mark_queued(&reservations)
                );
                metrics::histogram!("reservation_batch_size").record(reservations.len() as f64);
                match confirmed {
                    Ok(()) => self.mark_published(&reservations).await,
                    Err(err) => {
                        tracing::warn!(error = %err, reservations = reservations.len(), "reservation publish not confirmed");
                        HashSet::new()
                    }
                }
            });
            confirming
        })
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

    type Sent = mpsc::UnboundedReceiver<(Vec<Uuid>, oneshot::Sender<bool>)>;

    /// A pipeline whose broker is the test: every batch sent shows up on the returned
    /// receiver with the switch that confirms (true) or fails (false) it.
    #[expect(clippy::async_yields_async, reason = "the send yields the wait for its confirm, on purpose")]
    fn pipeline_with_fake_broker(in_flight: usize) -> (mpsc::Sender<Pending>, Sent, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(16);
        let (sent_tx, sent_rx) = mpsc::unbounded_channel();
        let send = move |reservations: Vec<Reservation>, _trace| -> Sending<'static> {
            let sent_tx = sent_tx.clone();
            Box::pin(async move {
                let ids: Vec<Uuid> = reservations.iter().map(|r| r.id).collect();
                let (confirm, confirmed) = oneshot::channel();
                sent_tx.send((ids.clone(), confirm)).unwrap();
                let confirming: Confirming<'static> = Box::pin(async move {
                    if confirmed.await == Ok(true) { ids.into_iter().collect() } else { HashSet::new() }
                });
                confirming
            })
        };
        let task = tokio::spawn(async move { pipeline(&Mutex::new(receiver), 512, in_flight, send).await });
        (queue, sent_rx, task)
    }

    async fn buy(queue: &mpsc::Sender<Pending>) -> oneshot::Receiver<bool> {
        let (done, answer) = oneshot::channel();
        queue.send(Pending { reservation: reservation(), trace: HashMap::new(), done }).await.unwrap();
        answer
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_batch_goes_out_while_the_previous_waits_and_each_buyer_hears_their_own_confirm() {
        let (queue, mut sent, task) = pipeline_with_fake_broker(4);
        let mut first = buy(&queue).await;
        let (_, confirm_first) = sent.recv().await.unwrap();
        let second = buy(&queue).await;
        // Sent before the first batch's confirm came back.
        let (_, confirm_second) = sent.recv().await.unwrap();

        confirm_second.send(true).unwrap();
        assert_eq!(second.await, Ok(true));
        tokio::task::yield_now().await;
        assert!(first.try_recv().is_err(), "no answer before its own batch's confirm");
        confirm_first.send(false).unwrap();
        assert_eq!(first.await, Ok(false), "a batch the broker did not confirm is not 202");

        drop(queue);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_batches_wait_for_confirms_than_in_flight_allows() {
        let (queue, mut sent, task) = pipeline_with_fake_broker(1);
        let first = buy(&queue).await;
        let (_, confirm_first) = sent.recv().await.unwrap();
        let second = buy(&queue).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(sent.try_recv().is_err(), "the second batch waits for the first one's confirm");

        confirm_first.send(true).unwrap();
        assert_eq!(first.await, Ok(true));
        let (ids, confirm_second) = sent.recv().await.unwrap();
        assert_eq!(ids.len(), 1);
        drop(confirm_second); // the broker never answers: the buyer is not told 202
        assert_eq!(second.await, Ok(false));

        drop(queue);
        task.await.unwrap();
    }
}
