//! Integration tests: the whole app on a random port, against the real Postgres, Redis and
//! RabbitMQ. Each test gets its own database, Redis prefix and RabbitMQ prefix (see
//! `helpers::spawn_app`), so they run in parallel. Run them with cargo-nextest (as
//! `scripts/test` does): one process per test, so the metrics a test asserts
//! (`helpers::metric`) are its own.

// The middleware stack nests many generic types; the panic and timeout tests build it in
// their own test client.
#![recursion_limit = "256"]

mod helpers;
mod proxy;
mod redis_cluster;
mod redis_server;

mod auctions;
mod auth;
mod bid_durability;
mod buckets;
mod buy_now;
mod catalog;
mod contract;
mod faults;
mod health;
mod http;
mod orders;
mod pipeline;
mod proxy_bids;
mod reservations;
mod sales;
mod scaling;
mod tls;
mod traces;
mod users;
