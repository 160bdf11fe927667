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

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use platform::Broker;
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

/// What to do with a delivery once handled.
#[derive(Debug)]
pub enum Outcome {
    Ack,
    /// A passing failure: try again after the next retry delay, or dead-letter it when the
    /// attempts are used up.
    Retry(anyhow::Error),
    /// A message that can never succeed (unparseable, unknown kind): dead-letter it now.
    Dead(anyhow::Error),
}

pub const ATTEMPT_HEADER: &str = "x-attempt";
pub const ERROR_HEADER: &str = "x-last-error";

/// Consumes `route`'s queue until `stop` fires, one delivery at a time per call. Run it
/// several times for parallel consumers.
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
    let publisher = ConfirmPublisher::new(broker.clone(), confirm_timeout);
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&broker, &topology, route, prefetch, &publisher, &stop, &handler).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(queue = route.queue, error = %err, "consumer lost its channel; reconnecting in {backoff:?}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn session<H, Fut>(
    broker: &Broker,
    topology: &Topology,
    route: Route,
    prefetch: u16,
    publisher: &ConfirmPublisher,
    stop: &CancellationToken,
    handler: &H,
) -> Result<(), lapin::Error>
where
    H: Fn(Delivery) -> Fut + Send + Sync,
    Fut: Future<Output = Outcome> + Send,
{
    let channel = broker.channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("spike-{}-{}", route.queue, uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            topology.queue(route).as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => {
                // Unacknowledged prefetched messages go back to the queue.
                let _ = channel.close(200, "shutting down".into()).await;
                return Ok(());
            }
            next = consumer.next() => next,
        };
        let Some(delivery) = next else {
            return Err(lapin::Error::from(std::io::Error::other("the consumer was cancelled by the broker")));
        };
        let delivery = delivery?;
        let headers = header_map(&delivery.properties);
        let attempt = headers.get(ATTEMPT_HEADER).and_then(|a| a.parse().ok()).unwrap_or(1u32);
        let last_attempt = attempt as usize > topology.retry_delays_ms.len();
        let span = tracing::info_span!("consume", queue = route.queue, attempt);
        platform::telemetry::adopt_trace_headers(&span, &headers);
        let input = Delivery { body: delivery.data.clone(), headers: headers.clone(), attempt, last_attempt };
        let outcome = handler(input).instrument(span.clone()).await;
        let label = match &outcome {
            Outcome::Ack => "ack",
            Outcome::Retry(_) if !last_attempt => "retry",
            _ => "dead",
        };
        let forward = match outcome {
            Outcome::Ack => None,
            Outcome::Retry(err) if !last_attempt => {
                let delay = topology.retry_delays_ms[attempt as usize - 1];
                span.in_scope(|| tracing::warn!(error = %format!("{err:#}"), "retrying in {delay} ms"));
                Some((topology.retry_queue(route, delay), err))
            }
            Outcome::Retry(err) | Outcome::Dead(err) => {
                span.in_scope(|| tracing::error!(error = %format!("{err:#}"), "dead-lettered"));
                Some((topology.dead_letters(route), err))
            }
        };
        if let Some((queue, err)) = forward {
            let mut headers = headers;
            headers.insert(ATTEMPT_HEADER.into(), (attempt + 1).to_string());
            headers.insert(ERROR_HEADER.into(), format!("{err:#}"));
            let copy = Message {
                exchange: String::new(),
                routing_key: queue,
                body: delivery.data.clone(),
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
    }
}
