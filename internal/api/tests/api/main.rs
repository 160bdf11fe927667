//! Integration tests: the whole app on a random port, against the real Postgres, Redis and
//! RabbitMQ. Each test gets its own database, Redis prefix and RabbitMQ prefix (see
//! `helpers::spawn_app`), so they run in parallel.

// The middleware stack nests many generic types; the panic and timeout tests build it in
// their own test client.
#![recursion_limit = "256"]

mod helpers;
mod proxy;
mod redis_server;

mod auctions;
mod auth;
mod bid_durability;
mod catalog;
mod health;
mod http;
mod orders;
mod pipeline;
mod sales;
mod tls;
