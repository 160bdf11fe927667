//! Spike's data access: Postgres rows, Redis hot state and scripts, RabbitMQ topology.
//! Nothing here decides business outcomes; it stores and moves what the services decide.
//!
//! Layout:
//! - [`db`]: sea-orm entities and SQL, one module per table family;
//! - [`cache`]: Redis keys, the product cache, reservation statuses, the hot-state scripts;
//! - [`mq`]: RabbitMQ names, topology, confirmed publishing and consuming.

pub mod cache;
pub mod db;
pub mod mq;
