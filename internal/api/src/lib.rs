//! Spike's HTTP face and the wiring of a whole process.
//!
//! Layout:
//! - [`app`]: connect, build, run and shut down (`Application`);
//! - [`middleware`]: request id, error envelope, metrics, CORS, limits, timeout, panics;
//! - [`error`], [`envelope`]: the response envelope and the error codes;
//! - [`auth`]: the bearer security scheme and the admin guard;
//! - [`rate_limit`]: governor limiters per IP and per user;
//! - [`routes`]: one poem-openapi API per tag;
//! - [`spec`]: the OpenAPI document, completed with each field's rules and each
//!   operation's errors.

pub mod app;
pub mod auth;
pub mod envelope;
pub mod error;
pub mod middleware;
pub mod rate_limit;
pub mod routes;
pub mod spec;

pub use app::{Application, Mode, connect};
