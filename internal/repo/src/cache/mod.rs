//! Redis: key names, the product cache, reservation statuses, and the Lua scripts that
//! hold the hot state of flash sales and auctions.
//!
//! Every key starts with the configured prefix, so tenants and parallel tests never
//! collide. Keys of one sale or auction share a hash tag (`{sale:<id>}`), so a script that
//! touches several of them runs unchanged on Redis Cluster: they live in one slot.

pub mod auctions;
pub mod barrier;
pub mod buckets;
pub mod keys;
pub mod lua;
pub mod products;
pub mod reservations;
pub mod returns;
pub mod sales;

pub use keys::Keys;
