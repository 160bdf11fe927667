//! Exchanges and queues, declared idempotently at start-up under a name prefix.
//!
//! ```text
//! <p>.events (topic) --order.close--> <p>.order.close ---------> close consumer
//!                    --sale.reserve-> <p>.sale.reservations ---> order consumer
//!                    --sale.restock-> <p>.sale.restock --------> Redis restock
//!                    --auction.close> <p>.auction.close -------> auction closer
//! each consumer queue Q has   Q.retry.<ms>  (TTL, dead-letters back into Q)
//!                             Q.dlq         (poison messages, inspected and re-driven by CLI)
//! delayed delivery:           <p>.delay.<key>.<ms>  (TTL, dead-letters into <p>.events with <key>)
//! ```
//!
//! Delayed delivery uses one classic queue per (routing key, delay). Per-message TTL would
//! let a 15-minute message at the head of a shared queue hold back a 1-second one behind
//! it (RabbitMQ only expires messages at the head); with one delay per queue, arrival
//! order is expiry order. The queues are classic, not quorum: on the RabbitMQ 3.10 this
//! project is built against, messages in a quorum queue with a TTL do not expire.
//!
//! With `amqp.queue_type = "quorum"` the consumer and dead-letter queues are quorum queues
//! (replicated by Raft over the broker cluster); the TTL queues (retry and delay) stay
//! classic, see docs/architecture.md. A quorum consumer queue dead-letters what the broker
//! gives up on (a message delivered [`DELIVERY_LIMIT`] times without an ack, e.g. one that
//! kills its consumer) into its dead-letter queue, at least once.
//!
//! Changing a queue's arguments makes RabbitMQ refuse to declare it again
//! (PRECONDITION_FAILED): after such a change, delete the old queues or use a new
//! `amqp.prefix` (docs/runbook.md).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use platform::config::QueueType;

/// A consumer queue and the routing key that feeds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub queue: &'static str,
    pub key: &'static str,
}

pub const ORDER_CLOSE: Route = Route { queue: "order.close", key: "order.close" };
pub const SALE_RESERVE: Route = Route { queue: "sale.reservations", key: "sale.reserve" };
pub const SALE_RESTOCK: Route = Route { queue: "sale.restock", key: "sale.restock" };
pub const AUCTION_CLOSE: Route = Route { queue: "auction.close", key: "auction.close" };

/// Every consumer queue.
pub const ROUTES: &[Route] = &[ORDER_CLOSE, SALE_RESERVE, SALE_RESTOCK, AUCTION_CLOSE];

/// Deliveries of one message without an ack after which a quorum queue parks it in its
/// dead-letter queue: each is a consumer that died holding it (failures the consumer sees
/// itself are retried and parked by the consumer, after `amqp.retry_delays_ms`).
pub const DELIVERY_LIMIT: i64 = 20;

/// Published for integrations (bind your own queue to `<p>.events` with `order.*`).
pub const ORDER_CREATED: &str = "order.created";

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    queue_expires_ms: u64,
    pub retry_delays_ms: Vec<u64>,
    queue_type: QueueType,
}

impl Topology {
    /// Classic queues; see [`Topology::with_queue_type`].
    pub fn new(prefix: &str, queue_expires_ms: u64, retry_delays_ms: Vec<u64>) -> Self {
        Self { prefix: prefix.to_owned(), queue_expires_ms, retry_delays_ms, queue_type: QueueType::Classic }
    }

    /// The type of the consumer and dead-letter queues (`amqp.queue_type`).
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn queue(&self, route: Route) -> String {
        format!("{}.{}", self.prefix, route.queue)
    }

    pub fn dead_letters(&self, route: Route) -> String {
        format!("{}.{}.dlq", self.prefix, route.queue)
    }

    pub fn retry_queue(&self, route: Route, delay_ms: u64) -> String {
        format!("{}.{}.retry.{delay_ms}", self.prefix, route.queue)
    }

    pub fn delay_queue(&self, key: &str, delay_ms: u64) -> String {
        format!("{}.delay.{key}.{delay_ms}", self.prefix)
    }

    /// The route whose queue (or dead-letter queue) has this short name, e.g. `order.close`.
    pub fn route_named(name: &str) -> Option<Route> {
        ROUTES.iter().copied().find(|r| r.queue == name)
    }

    /// Declares the exchange, every consumer queue with its retry queues and its
    /// dead-letter queue, and the bindings. Declaring what exists is a no-op.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let exchange = self.exchange();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, auto_delete: self.queue_expires_ms > 0, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        for &route in ROUTES {
            self.declare_consumer_queue(channel, route).await?;
            self.declare_dead_letters(channel, route).await?;
            for &delay in &self.retry_delays_ms {
                self.declare_retry_queue(channel, route, delay).await?;
            }
        }
        Ok(())
    }

    /// The consumer queue of `route`, bound to the exchange: declared at start and again by
    /// each consumer before it starts consuming, so that an expiring queue left without a
    /// consumer for a while (a slow start, a reconnect) is there again.
    pub async fn declare_consumer_queue(&self, channel: &Channel, route: Route) -> Result<String, lapin::Error> {
        let queue = self.queue(route);
        self.declare_queue(channel, &queue, self.consumer_arguments(route)).await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                self.exchange().as_str().into(),
                route.key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(queue)
    }

    /// How often a process declares again the queues it only publishes to: with
    /// `queue_expires_ms` set, RabbitMQ deletes a queue nobody consumed from or declared for
    /// that long, and publishing does not count. `None`: queues never expire.
    pub fn lease(&self) -> Option<std::time::Duration> {
        (self.queue_expires_ms > 0).then(|| std::time::Duration::from_millis(self.queue_expires_ms / 2))
    }

    /// The retry queue of `route` for `delay_ms`, declared (again) so that it exists now and
    /// for its lease; the consumer calls it before every copy it sends there.
    pub async fn declare_retry_queue(
        &self,
        channel: &Channel,
        route: Route,
        delay_ms: u64,
    ) -> Result<String, lapin::Error> {
        let name = self.retry_queue(route, delay_ms);
        let arguments = self.delaying(delay_ms, "", &self.queue(route));
        self.declare_queue(channel, &name, arguments).await?;
        Ok(name)
    }

    /// The dead-letter queue of `route`, declared (again) before every message sent there.
    pub async fn declare_dead_letters(&self, channel: &Channel, route: Route) -> Result<String, lapin::Error> {
        let name = self.dead_letters(route);
        let arguments = match self.queue_type {
            QueueType::Classic => self.classic_arguments(),
            QueueType::Quorum => self.quorum_arguments(),
        };
        self.declare_queue(channel, &name, arguments).await?;
        Ok(name)
    }

    /// Empties every consumer, retry and dead-letter queue (declare first); returns how
    /// many messages were dropped. The delay queues are left alone: their names depend on
    /// delays seen at run time, and what they still hold points at rows that are gone.
    pub async fn purge(&self, channel: &Channel) -> Result<u32, lapin::Error> {
        let mut dropped = 0;
        for &route in ROUTES {
            let mut queues = vec![self.queue(route), self.dead_letters(route)];
            queues.extend(self.retry_delays_ms.iter().map(|&delay| self.retry_queue(route, delay)));
            for queue in queues {
                dropped += channel.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()).await?;
            }
        }
        Ok(dropped)
    }

    /// The TTL queue that delivers messages for `key` after `delay_ms`. Created on demand
    /// by the outbox relay the first time it needs that delay.
    pub async fn declare_delay_queue(
        &self,
        channel: &Channel,
        key: &str,
        delay_ms: u64,
    ) -> Result<String, lapin::Error> {
        let name = self.delay_queue(key, delay_ms);
        let arguments = self.delaying(delay_ms, &self.exchange(), key);
        self.declare_queue(channel, &name, arguments).await?;
        Ok(name)
    }

    /// A TTL queue's arguments: its messages wait `delay_ms`, then go to `exchange` with
    /// `routing_key`. An expiring queue outlives the last message published to it: its lease
    /// counts from its last declaration, which comes before each publish.
    fn delaying(&self, delay_ms: u64, exchange: &str, routing_key: &str) -> FieldTable {
        let mut arguments = self.classic_arguments();
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay_ms as i64));
        arguments.insert("x-dead-letter-exchange".into(), text(exchange));
        arguments.insert("x-dead-letter-routing-key".into(), text(routing_key));
        if self.queue_expires_ms > 0 {
            let expires = self.queue_expires_ms + delay_ms;
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(expires as i64));
        }
        arguments
    }

    /// A consumer queue's arguments. A quorum one dead-letters into the route's dead-letter
    /// queue (through the default exchange) after [`DELIVERY_LIMIT`] deliveries, at least once:
    /// the broker keeps a message until its dead-letter copy is confirmed, which it only
    /// allows together with `reject-publish` overflow (a full queue refuses publishes; none
    /// here has a length limit).
    fn consumer_arguments(&self, route: Route) -> FieldTable {
        if self.queue_type == QueueType::Classic {
            return self.classic_arguments();
        }
        let mut arguments = self.quorum_arguments();
        arguments.insert("x-dead-letter-exchange".into(), text(""));
        arguments.insert("x-dead-letter-routing-key".into(), text(&self.dead_letters(route)));
        arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        arguments.insert("x-overflow".into(), text("reject-publish"));
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
        arguments
    }

    /// No `x-expires`, whatever `amqp.queue_expires_ms` says: a quorum queue's lease is not
    /// renewed by declaring it again (rabbitmq-server #5894, seen on 3.10.8), so a dead-letter
    /// queue nobody consumes from would vanish with its messages.
    fn quorum_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), text("quorum"));
        arguments
    }

    fn classic_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        // Classic queues, version 2 (new in RabbitMQ 3.10, the default from 3.12): measured
        // here, it confirms persistent messages about twice as fast as version 1, and every
        // purchase waits for one confirm.
        arguments.insert("x-queue-version".into(), AMQPValue::LongInt(2));
        if self.queue_expires_ms > 0 {
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(self.queue_expires_ms as i64));
        }
        arguments
    }

    async fn declare_queue(&self, channel: &Channel, name: &str, arguments: FieldTable) -> Result<(), lapin::Error> {
        channel
            .queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, arguments)
            .await
            .map(|_| ())
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let topology = Topology::new("spike", 0, vec![1000]);
        assert_eq!(topology.exchange(), "spike.events");
        assert_eq!(topology.queue(ORDER_CLOSE), "spike.order.close");
        assert_eq!(topology.dead_letters(SALE_RESERVE), "spike.sale.reservations.dlq");
        assert_eq!(topology.retry_queue(ORDER_CLOSE, 1000), "spike.order.close.retry.1000");
        assert_eq!(topology.delay_queue("order.close", 900_000), "spike.delay.order.close.900000");
        assert_eq!(Topology::route_named("sale.restock"), Some(SALE_RESTOCK));
        assert_eq!(Topology::route_named("nope"), None);
    }

    #[test]
    fn quorum_consumer_queues_dead_letter_at_least_once_and_ttl_queues_stay_classic() {
        let topology = Topology::new("spike", 60_000, vec![1000]).with_queue_type(QueueType::Quorum);
        let consumer = topology.consumer_arguments(ORDER_CLOSE);
        let arg = |table: &FieldTable, key: &str| table.inner().get(key).cloned();
        assert_eq!(arg(&consumer, "x-queue-type"), Some(text("quorum")));
        assert_eq!(arg(&consumer, "x-dead-letter-routing-key"), Some(text("spike.order.close.dlq")));
        assert_eq!(arg(&consumer, "x-dead-letter-strategy"), Some(text("at-least-once")));
        assert_eq!(arg(&consumer, "x-overflow"), Some(text("reject-publish")));
        assert_eq!(arg(&consumer, "x-expires"), None, "a quorum queue's lease is not renewed");
        assert_eq!(arg(&consumer, "x-queue-version"), None, "a classic-only argument");
        let delay = topology.delaying(1000, "spike.events", "order.close");
        assert_eq!(arg(&delay, "x-queue-type"), None);
        assert_eq!(arg(&delay, "x-queue-version"), Some(AMQPValue::LongInt(2)));
        assert_eq!(arg(&delay, "x-expires"), Some(AMQPValue::LongLongInt(61_000)));
        let classic = Topology::new("spike", 0, vec![]).consumer_arguments(ORDER_CLOSE);
        assert_eq!(arg(&classic, "x-queue-type"), None);
        assert_eq!(arg(&classic, "x-dead-letter-exchange"), None);
    }
}
