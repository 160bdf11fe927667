//! The consume loop every consumer shares: manual acks, a bounded prefetch, retries with
//! backoff through TTL queues, a dead-letter queue for what keeps failing, and a reconnect
//! when the channel is lost.
//!
//! A message is acknowledged only after its handler finished (and, for a retry, after the
//! copy in the retry queue was confirmed). A crash anywhere before the ack means the
//! broker redelivers it, so every handler must be idempotent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use platform::Broker;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::publisher::{ConfirmPublisher, Message, header_map};
use super::topology::{Route, Topology};

/// What a handler gets: the body, the AMQP headers, and which attempt this is.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub attempt: u32,
    /// No retry is left after this one: a handler that must compensate on final failure
    /// (e.g. release a reservation) does it now.
    pub last_attempt: bool,
}

impl Delivery {
    /// The body as a `T`; a body that is not one can never be handled, so the error is the
    /// outcome that dead-letters it (`what` names the message in the dead letter).
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, Outcome> {
        serde_json::from_slice(&self.body).map_err(|err| Outcome::Dead(anyhow::anyhow!("unreadable {what}: {err}")))
    }
}

/// What to do with a delivery once handled.
#[derive(Debug)]
pub enum Outcome {
    Ack,
    /// A passing failure: try again after the next retry delay, or dead-letter it when the
    /// attempts are used up.
    Retry(anyhow::Error),
    /// A message that can never succeed (unparseable, unknown kind): dead-letter it now.
    Dead(anyhow::Error),
    /// A dependency did not answer (Postgres or Redis unreachable): the message is not at
    /// fault. The consumer holds it, unacknowledged, and hands it to the handler again after
    /// a capped backoff, taking nothing new meanwhile; no attempt is used up, so an outage
    /// of any length never dead-letters or gives up on a message.
    Unavailable(anyhow::Error),
}

pub const ATTEMPT_HEADER: &str = "x-attempt";
pub const ERROR_HEADER: &str = "x-last-error";

/// How a consumer takes its deliveries.
#[derive(Debug, Clone, Copy)]
pub struct Intake {
    /// Unacknowledged deliveries the broker may push ahead (basic.qos).
    pub prefetch: u16,
    /// Deliveries handed to the handler at once: whatever has already arrived, up to this
    /// many (1: one at a time).
    pub batch: usize,
}

/// Consumes `route`'s queue until `stop` fires, one delivery at a time. Run it several
/// times for parallel consumers.
pub async fn run<H, Fut>(
    broker: Arc<Broker>,
    topology: Topology,
    route: Route,
    prefetch: u16,
    confirm_timeout: Duration,
    stop: CancellationToken,
    handler: H,
) where
    H: Fn(Delivery) -> Fut + Send + Sync,
    Fut: Future<Output = Outcome> + Send,
{
    let handler = &handler;
    let one_at_a_time = move |mut deliveries: Vec<Delivery>| async move {
        let delivery = deliveries.pop().expect("a batch of one");
        vec![handler(delivery).await]
    };
    run_batches(broker, topology, route, Intake { prefetch, batch: 1 }, confirm_timeout, stop, one_at_a_time).await
}

/// Consumes `route`'s queue until `stop` fires, handing the handler every delivery that
/// has arrived (up to `intake.batch`) at once; the handler answers one outcome per
/// delivery, in order. A consumer that writes to a database can then commit many messages
/// in one transaction.
pub async fn run_batches<H, Fut>(
    broker: Arc<Broker>,
    topology: Topology,
    route: Route,
    intake: Intake,
    confirm_timeout: Duration,
    stop: CancellationToken,
    handler: H,
) where
    H: Fn(Vec<Delivery>) -> Fut + Send + Sync,
    Fut: Future<Output = Vec<Outcome>> + Send,
{
    let publisher = ConfirmPublisher::new(broker.clone(), confirm_timeout);
    let mut delays = platform::connect::backoff().build();
    while let Err(err) = session(&broker, &topology, route, intake, &publisher, &stop, &handler).await {
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::warn!(queue = route.queue, error = %err, "consumer lost its channel; reconnecting in {delay:?}");
        if stop.run_until_cancelled(tokio::time::sleep(delay)).await.is_none() {
            break;
        }
    }
    publisher.close().await;
}

async fn session<H, Fut>(
    broker: &Broker,
    topology: &Topology,
    route: Route,
    intake: Intake,
    publisher: &ConfirmPublisher,
    stop: &CancellationToken,
    handler: &H,
) -> Result<(), lapin::Error>
where
    H: Fn(Vec<Delivery>) -> Fut + Send + Sync,
    Fut: Future<Output = Vec<Outcome>> + Send,
{
    let channel = broker.channel().await?;
    channel.basic_qos(intake.prefetch, BasicQosOptions::default()).await?;
    let queue = topology.declare_consumer_queue(&channel, route).await?;
    let tag = format!("spike-{}-{}", route.queue, uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => {
                // Unacknowledged prefetched messages go back to the queue.
                close_bounded(&channel).await;
                return Ok(());
            }
            next = consumer.next() => next,
        };
        let Some(first) = next else {
            return Err(lapin::Error::from(std::io::Error::other("the consumer was cancelled by the broker")));
        };
        let mut received = vec![first?];
        while received.len() < intake.batch {
            match consumer.next().now_or_never() {
                Some(Some(Ok(more))) => received.push(more),
                Some(Some(Err(err))) => return Err(err),
                _ => break,
            }
        }
        let inputs: Vec<Delivery> = received.iter().map(|d| delivery_of(d, topology)).collect();
        let span = consumer_span(route, &queue, &inputs);
        let held = received.into_iter().zip(inputs).collect();
        let context = Settling { topology, route, publisher, span: &span };
        if !handle_until_settled(&context, stop, handler, held).await? {
            // Stopped while holding: held messages go back to the queue with the prefetch.
            close_bounded(&channel).await;
            return Ok(());
        }
    }
}

/// The CONSUMER span of one intake, `process <queue>`. A batch is handled as one unit, so
/// it gets one span: the child of the first delivery's publish (so that message's trace
/// shows its processing), linked to the publishes of the others. Retries and holds of the
/// same intake stay in this span.
fn consumer_span(route: Route, queue: &str, inputs: &[Delivery]) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        otel.name = format!("process {}", route.queue),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.rabbitmq.destination.routing_key = route.key,
        messaging.batch.message_count = inputs.len(),
    );
    if let Some((first, rest)) = inputs.split_first() {
        platform::telemetry::adopt_trace_headers(&span, &first.headers);
        for other in rest {
            platform::telemetry::link_trace_headers(&span, &other.headers);
        }
    }
    span
}

#[derive(Clone, Copy)]
struct Settling<'a> {
    topology: &'a Topology,
    route: Route,
    publisher: &'a ConfirmPublisher,
    span: &'a tracing::Span,
}

/// Hands `held` to the handler and settles each outcome. Messages answered `Unavailable`
/// stay unacknowledged and go to the handler again after a capped backoff, until they get
/// another outcome; meanwhile this consumer takes nothing new (a circuit breaker: the rest
/// waits in the broker). Returns `false` when `stop` fired while holding.
async fn handle_until_settled<H, Fut>(
    context: &Settling<'_>,
    stop: &CancellationToken,
    handler: &H,
    mut held: Vec<(lapin::message::Delivery, Delivery)>,
) -> Result<bool, lapin::Error>
where
    H: Fn(Vec<Delivery>) -> Fut + Send + Sync,
    Fut: Future<Output = Vec<Outcome>> + Send,
{
    let Settling { topology, route, publisher, span } = *context;
    let mut pauses = platform::connect::backoff().build();
    loop {
        let inputs: Vec<Delivery> = held.iter().map(|(_, input)| input.clone()).collect();
        let outcomes = handler(inputs).instrument(span.clone()).await;
        let mut waiting = Vec::new();
        for ((delivery, input), outcome) in held.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Unavailable(err) => waiting.push((delivery, input, err)),
                outcome => settle(topology, route, publisher, span, delivery, input, outcome).await?,
            }
        }
        let Some((_, _, err)) = waiting.first() else { return Ok(true) };
        let delay = pauses.next().unwrap_or(Duration::from_secs(5));
        span.in_scope(|| {
            tracing::warn!(
                error = %format!("{err:#}"),
                held = waiting.len(),
                "a dependency is unavailable; holding the messages and trying again in {delay:?}"
            )
        });
        metrics::counter!("amqp_consumed_total", "queue" => route.queue, "outcome" => "held")
            .increment(waiting.len() as u64);
        metrics::gauge!("amqp_consumers_waiting", "queue" => route.queue).increment(1);
        let slept = stop.run_until_cancelled(tokio::time::sleep(delay)).await;
        metrics::gauge!("amqp_consumers_waiting", "queue" => route.queue).decrement(1);
        if slept.is_none() {
            return Ok(false);
        }
        held = waiting.into_iter().map(|(delivery, input, _)| (delivery, input)).collect();
    }
}

/// Closes the channel, giving up after a few seconds: a stalled broker never answers the
/// close, and shutdown must not wait for it. The broker requeues whatever this channel had
/// not acknowledged once it notices the connection is gone.
async fn close_bounded(channel: &lapin::Channel) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "shutting down".into())).await;
}

/// How long a shutdown waits for the broker to answer a close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

fn delivery_of(delivery: &lapin::message::Delivery, topology: &Topology) -> Delivery {
    let headers = header_map(&delivery.properties);
    let attempt = headers.get(ATTEMPT_HEADER).and_then(|a| a.parse().ok()).unwrap_or(1u32);
    let last_attempt = attempt as usize > topology.retry_delays_ms.len();
    Delivery { body: delivery.data.clone(), headers, attempt, last_attempt }
}

/// Acks a handled delivery, after sending a copy to its retry queue or its dead-letter
/// queue when the outcome says so.
async fn settle(
    topology: &Topology,
    route: Route,
    publisher: &ConfirmPublisher,
    span: &tracing::Span,
    delivery: lapin::message::Delivery,
    input: Delivery,
    outcome: Outcome,
) -> Result<(), lapin::Error> {
    let (attempt, last_attempt) = (input.attempt, input.last_attempt);
    let label = match &outcome {
        Outcome::Ack => "ack",
        Outcome::Unavailable(_) => unreachable!("the session holds these; they are never settled"),
        Outcome::Retry(_) if !last_attempt => "retry",
        _ => "dead",
    };
    let forward = match outcome {
        Outcome::Ack | Outcome::Unavailable(_) => None,
        Outcome::Retry(err) if !last_attempt => {
            let delay = topology.retry_delays_ms[attempt as usize - 1];
            span.in_scope(|| tracing::warn!(error = %format!("{err:#}"), "retrying in {delay} ms"));
            Some((Some(delay), err))
        }
        Outcome::Retry(err) | Outcome::Dead(err) => {
            span.in_scope(|| tracing::error!(error = %format!("{err:#}"), "dead-lettered"));
            Some((None, err))
        }
    };
    if let Some((delay, err)) = forward {
        // Declared on use: with `queue_expires_ms` set, a queue this process only publishes
        // to would otherwise vanish under it.
        let channel = publisher.channel().await?;
        let queue = match delay {
            Some(delay) => topology.declare_retry_queue(&channel, route, delay).await?,
            None => topology.declare_dead_letters(&channel, route).await?,
        };
        let mut headers = input.headers;
        headers.insert(ATTEMPT_HEADER.into(), (attempt + 1).to_string());
        headers.insert(ERROR_HEADER.into(), format!("{err:#}"));
        let copy = Message {
            exchange: String::new(),
            routing_key: queue,
            body: input.body,
            headers,
            message_id: delivery.properties.message_id().as_ref().map(|id| id.to_string()),
            mandatory: true,
        };
        // Until the copy is confirmed the original stays unacknowledged: a failure here
        // ends the session and the broker redelivers the original.
        publisher
            .publish_all(std::slice::from_ref(&copy))
            .await
            .map_err(|e| lapin::Error::from(std::io::Error::other(e.to_string())))?;
    }
    delivery.ack(BasicAckOptions::default()).await?;
    metrics::counter!("amqp_consumed_total", "queue" => route.queue, "outcome" => label).increment(1);
    Ok(())
}
