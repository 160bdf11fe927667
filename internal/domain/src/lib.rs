//! Spike's vocabulary: the types and rules that every other crate speaks, with no I/O.
//!
//! Values here are parsed once at the edge ("parse, don't validate") and are valid by
//! construction afterwards: an [`Email`] is always lower-case and well formed, a [`Money`]
//! always has at most two decimals and sits inside the allowed range.
//!
//! Layout:
//! - [`error`]: the one validation error, naming the field that was wrong;
//! - [`money`]: decimal money and its integer-cents form used in Redis scripts;
//! - [`user`]: email, password and role;
//! - [`page`]: paging, whitelisted sorting and bounded text;
//! - [`catalog`]: new products and patches;
//! - [`order`]: order kinds, statuses, quantities and the lines of a new order;
//! - [`idempotency`]: the `Idempotency-Key` of a retry;
//! - [`sale`]: flash-sale parameters and the status a buyer sees;
//! - [`reservation`]: a reservation's status and why it failed;
//! - [`auction`]: auction parameters, the lowest bid to show and the status.

pub mod auction;
pub mod catalog;
pub mod error;
pub mod idempotency;
pub mod money;
mod names;
pub mod order;
pub mod page;
pub mod reservation;
pub mod sale;
pub mod user;

pub use error::Invalid;
pub use idempotency::IdempotencyKey;
pub use money::Money;
pub use page::{PageRequest, Sort, SortDir};
pub use user::{Email, Password, Role};
