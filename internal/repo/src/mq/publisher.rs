//! Publishing with publisher confirms: a message counts as sent only when the broker said
//! it has stored it.
//!
//! Every message gets a PRODUCER span, `publish <routing key>`, with a `confirm` child for
//! the wait on the broker's answer. Its parent is the trace the message's own headers name
//! (the request that reserved, the transaction that wrote an outbox row), else the current
//! span; the span's context then replaces those headers, so the consumer's span is the
//! child of the publish.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use platform::Broker;
use platform::telemetry;
use tokio::sync::Mutex;
use tracing::Span;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("rabbitmq: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message")]
    Nacked,
    #[error("no queue is bound for routing key {0}")]
    Unroutable(String),
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
}

/// A message to publish. Headers are AMQP headers (trace context, attempt counters).
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub message_id: Option<String>,
    /// Refuse to count an unroutable message as sent (it would be dropped silently).
    pub mandatory: bool,
}

/// One confirm-mode channel, reopened after a failure. Each publisher task owns one, so
/// the confirms of different tasks never wait on each other.
pub struct ConfirmPublisher {
    broker: Arc<Broker>,
    channel: Mutex<Option<Channel>>,
    /// Channels opened so far: tells the channel of a failed confirm apart from one opened since.
    opened: AtomicU64,
    timeout: Duration,
}

impl ConfirmPublisher {
    pub fn new(broker: Arc<Broker>, timeout: Duration) -> Self {
        Self { broker, channel: Mutex::new(None), opened: AtomicU64::new(0), timeout }
    }

    /// Closes the channel and waits for the broker's answer; the owner calls it when it
    /// stops. A channel that is simply dropped is closed in the background, and if the
    /// connection closes first, lapin reports that close as an ERROR "Connection error".
    pub async fn close(&self) {
        if let Some(channel) = self.channel.lock().await.take()
            && channel.status().connected()
        {
            // Bounded: a stalled broker never answers, and whoever stops must not hang on it.
            let close = channel.close(200, "done".into());
            let _ = tokio::time::timeout(super::consumer::CLOSE_TIMEOUT, close).await;
        }
    }

    /// A channel to use for declarations next to this publisher's publishes.
    pub async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut slot = self.channel.lock().await;
        self.ensure(&mut slot).await
    }

    async fn ensure(&self, slot: &mut Option<Channel>) -> Result<Channel, lapin::Error> {
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.broker.channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        *slot = Some(channel.clone());
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(channel)
    }

    /// Publishes every message, then waits for all their confirms (one round trip for the
    /// lot), all within the timeout. Ok only if every one was confirmed; on any failure
    /// the channel is dropped, and the caller must assume that none, some or all of them
    /// were stored.
    pub async fn publish_all(&self, messages: &[Message]) -> Result<(), PublishError> {
        let in_flight = self.send(messages).await?;
        self.confirmed(in_flight).await
    }

    /// The first half of [`Self::publish_all`]: hands the messages to the broker and returns
    /// without waiting for their confirms, so the caller can publish more on the same
    /// channel while these are confirmed. Nothing counts as sent before
    /// [`Self::confirmed`] says so; the timeout covers both halves.
    pub async fn send(&self, messages: &[Message]) -> Result<InFlight, PublishError> {
        let spans: Vec<Span> = messages.iter().map(producer_span).collect();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut slot = self.channel.lock().await;
        let sent = tokio::time::timeout_at(deadline, self.publish_on(&mut slot, messages, &spans))
            .await
            .unwrap_or(Err(PublishError::Timeout(self.timeout)));
        match sent {
            Ok(confirms) => Ok(InFlight {
                confirms,
                spans,
                routing_keys: messages.iter().map(|m| m.routing_key.clone()).collect(),
                deadline,
                channel: self.opened.load(Ordering::Relaxed),
            }),
            Err(err) => {
                *slot = None;
                failed(&spans, &err);
                Err(err)
            }
        }
    }

    /// The second half of [`Self::publish_all`]: Ok only if the broker confirmed every
    /// message [`Self::send`] handed it. On a failure the channel they went out on is
    /// dropped (not one opened since).
    pub async fn confirmed(&self, in_flight: InFlight) -> Result<(), PublishError> {
        let InFlight { confirms, spans, routing_keys, deadline, channel } = in_flight;
        let waits: Vec<Span> = spans.iter().map(|span| tracing::info_span!(parent: span, "confirm")).collect();
        let answers = tokio::time::timeout_at(deadline, join_all(confirms)).await;
        drop(waits);
        let result = match answers {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(answers) => answers.into_iter().zip(&routing_keys).try_for_each(|(answer, key)| match answer? {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(key.clone())),
                Confirmation::Nack(_) => Err(PublishError::Nacked),
            }),
        };
        if let Err(err) = &result {
            let mut slot = self.channel.lock().await;
            if self.opened.load(Ordering::Relaxed) == channel {
                *slot = None;
            }
            failed(&spans, err);
        }
        result
    }

    async fn publish_on(
        &self,
        slot: &mut Option<Channel>,
        messages: &[Message],
        spans: &[Span],
    ) -> Result<Vec<PublisherConfirm>, PublishError> {
        let channel = self.ensure(slot).await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for (message, span) in messages.iter().zip(spans) {
            let confirm = channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions { mandatory: message.mandatory, ..Default::default() },
                    &message.body,
                    properties(message, span),
                )
                .await?;
            confirms.push(confirm);
        }
        Ok(confirms)
    }
}

/// Messages handed to the broker whose confirms are still to come ([`ConfirmPublisher::send`]).
pub struct InFlight {
    confirms: Vec<PublisherConfirm>,
    spans: Vec<Span>,
    routing_keys: Vec<String>,
    deadline: tokio::time::Instant,
    /// Which of the publisher's channels they went out on.
    channel: u64,
}

fn failed(spans: &[Span], err: &PublishError) {
    for span in spans {
        span.record("otel.status_code", "error");
        span.in_scope(|| tracing::warn!(error = %err, "publish failed"));
    }
}

/// The PRODUCER span of one message (see the module's doc), with OpenTelemetry's
/// `messaging.*` attributes.
fn producer_span(message: &Message) -> Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {}", message.routing_key),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        // The default exchange (a publish straight to a queue) is `amq.default` by convention.
        messaging.destination.name = if message.exchange.is_empty() { "amq.default" } else { message.exchange.as_str() },
        messaging.rabbitmq.destination.routing_key = message.routing_key.as_str(),
        messaging.message.id = message.message_id.as_deref(),
        messaging.message.body.size = message.body.len(),
    );
    telemetry::adopt_trace_headers(&span, &message.headers);
    span
}

/// The message's AMQP properties; its trace headers name `span`, the publish.
fn properties(message: &Message, span: &Span) -> BasicProperties {
    let mut headers = FieldTable::default();
    let trace = telemetry::trace_headers_of(span);
    let own = message.headers.iter().filter(|(key, _)| trace.is_empty() || !trace.contains_key(*key));
    for (key, value) in own.chain(&trace) {
        headers.insert(key.as_str().into(), AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())));
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2) // persistent
        .with_content_type("application/json".into())
        .with_headers(headers);
    if let Some(id) = &message.message_id {
        properties = properties.with_message_id(id.as_str().into());
    }
    properties
}

/// Reads string headers back (trace context, attempt counters).
pub fn header_map(properties: &BasicProperties) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if let Some(headers) = properties.headers() {
        for (key, value) in headers.inner() {
            let text = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                AMQPValue::LongInt(n) => n.to_string(),
                _ => continue,
            };
            map.insert(key.as_str().to_owned(), text);
        }
    }
    map
}
