//! RabbitMQ: the names of exchanges and queues, their idempotent declaration, publishing
//! with confirms, and the consume loop with retries and dead-lettering.

pub mod consumer;
pub mod messages;
pub mod publisher;
pub mod topology;

pub use consumer::{Delivery, Intake, Outcome};
pub use publisher::{ConfirmPublisher, InFlight, Message, PublishError};
pub use topology::{Route, Topology};
