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
