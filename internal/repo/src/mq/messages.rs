//! The payloads carried through the outbox and RabbitMQ: the contract between whoever
//! publishes and whoever consumes. JSON, so a person can read a dead letter.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `order.close`: close these orders if they are still unpaid (their deadline passed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloseOrders {
    pub order_ids: Vec<Uuid>,
}

/// `order.created`: orders were created (for integrations).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrdersCreated {
    pub kind: String,
    pub order_ids: Vec<Uuid>,
}

/// One accepted flash-sale reservation, as the order consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
    /// The Redis hot-state generation that reserved it (see `cache::sales`).
    pub generation: String,
    pub reserved_at: chrono::DateTime<chrono::Utc>,
    /// The purchase's `Idempotency-Key` and the fingerprint of its body: the consumer keeps
    /// them with the outcome, so that they survive a loss of Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// How many stock buckets the sale has: the reservation was made in the buyer's home
    /// bucket among them (`cache::buckets::Bucket::home`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub buckets: u16,
}

fn one() -> u16 {
    1
}

fn is_one(n: &u16) -> bool {
    *n == 1
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl Reservation {
    /// The stock bucket it was reserved in: its buyer's home bucket.
    pub fn bucket(&self) -> u16 {
        crate::cache::buckets::Bucket::home(self.user_id, self.buckets).index
    }
}

/// `sale.reserve`: many reservations in one message, so one broker confirm and one
/// consumer transaction serve hundreds of buyers. Each keeps its own outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationBatch {
    pub reservations: Vec<Reservation>,
}

/// One order's units returning to a sale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReturnedUnits {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
}

/// `sale.restock`: closed or cancelled sale orders gave units back in Postgres (at
/// `version`); put them back in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaleRestock {
    pub sale_id: Uuid,
    pub version: i64,
    pub returns: Vec<ReturnedUnits>,
    /// The sale's stock buckets: each order's units go back to its buyer's home bucket.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub buckets: u16,
}

/// `auction.close`: close this auction if its (possibly extended) end has come.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloseAuction {
    pub auction_id: Uuid,
}

/// Sent with `sale.reserve`, behind the reservations, when Redis lost a sale's hot state:
/// the sale is loaded from Postgres again only once the order consumer has seen this with
/// nothing of the sale in front of it (`service::barrier`). JSON `{"barrier": {...}}`, so a
/// reservation batch never reads as one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaleBarrier {
    pub barrier: BarrierMark,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BarrierMark {
    pub id: Uuid,
    pub sale_id: Uuid,
    /// The stock bucket whose hot state is rebuilt.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bucket: u16,
    /// Trips made through the first retry queue so far (each one takes its delay).
    pub cycles: u32,
    /// Consecutive deliveries that found nothing of the sale in the consumer's hands.
    pub quiet: u32,
}
