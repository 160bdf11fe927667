//! Spike's plumbing: configuration, telemetry, metrics and connections to the three
//! services. Nothing here knows about users, orders or sales.
//!
//! Layout:
//! - [`config`]: the layered, validated [`Settings`];
//! - [`telemetry`]: tracing subscriber, OTLP export, trace-context headers;
//! - [`metrics`]: the Prometheus recorder behind `/metrics`;
//! - [`connect`]: Postgres and Redis connections, with a named error when unreachable;
//! - [`redis_conn`]: the Redis connection on one server or a Redis Cluster, and pub/sub;
//! - [`broker`]: the RabbitMQ connection and its channel strategy.

pub mod broker;
pub mod config;
pub mod connect;
pub mod metrics;
pub mod redis_conn;
pub mod telemetry;

pub use broker::Broker;
pub use config::Settings;
pub use connect::Unreachable;
pub use redis_conn::{Redis, RedisClient};
