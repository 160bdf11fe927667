//! One poem-openapi API struct per tag, combined in [`crate::app::routes`].

pub mod auctions;
pub mod auth;
pub mod catalog;
pub mod health;
pub mod orders;
pub mod page;
pub mod sales;
pub mod users;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// Accounts and sessions
    Auth,
    /// Who am I, and the admin's view of users
    Users,
    /// Products (writes are admin-only)
    Catalog,
    /// Your orders: place, pay, cancel
    Orders,
    /// Flash sales: buy, then poll your reservation
    Sales,
    /// Live auctions: bid, watch, win
    Auctions,
}
