//! Every schema change, in order. Each step is plain SQL so a learner can read the schema
//! as the database sees it; `spike-server migrate up|down|fresh|status` runs them.
//!
//! Layout:
//! - `m20261123_000001_users`: users and refresh tokens (auth);
//! - `m20261123_000002_catalog_orders`: products, orders, idempotency keys, the outbox;
//! - `m20261123_000003_sales`: flash sales, their buyers and reservations;
//! - `m20261123_000004_auctions`: auctions and their bids;
//! - `m20261201_000005_bid_generation`: the fence that keeps a rebuilt auction's bids in order;
//! - `m20261202_000006_reservation_idempotency`: a purchase's Idempotency-Key, kept with its outcome;
//! - `m20261202_000007_sale_returns`: when and at which version a sale order's units came
//!   back, and when Redis was told (the restock sweeper, `verify`);
//! - `m20261202_000008_bid_maximums`: proxy bidding's maximum behind each bid, and automatic bids.
//! - `m20261202_000009_buy_now_second_chance`: buy-it-now, and several orders per auction (one live).
//! - `m20261202_000010_sale_buckets`: a sale's stock split into buckets (their own stock rows
//!   and versions), and the transfers between them.
//! - `m20261202_000011_bid_raises`: a leader's raised maximum kept beside its last bid.

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DatabaseConnection, TransactionTrait};

mod m20261123_000001_users;
mod m20261123_000002_catalog_orders;
mod m20261123_000003_sales;
mod m20261123_000004_auctions;
mod m20261201_000005_bid_generation;
mod m20261202_000006_reservation_idempotency;
mod m20261202_000007_sale_returns;
mod m20261202_000008_bid_maximums;
mod m20261202_000009_buy_now_second_chance;
mod m20261202_000010_sale_buckets;
mod m20261202_000011_bid_raises;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_users::Migration),
            Box::new(m20261123_000002_catalog_orders::Migration),
            Box::new(m20261123_000003_sales::Migration),
            Box::new(m20261123_000004_auctions::Migration),
            Box::new(m20261201_000005_bid_generation::Migration),
            Box::new(m20261202_000006_reservation_idempotency::Migration),
            Box::new(m20261202_000007_sale_returns::Migration),
            Box::new(m20261202_000008_bid_maximums::Migration),
            Box::new(m20261202_000009_buy_now_second_chance::Migration),
            Box::new(m20261202_000010_sale_buckets::Migration),
            Box::new(m20261202_000011_bid_raises::Migration),
        ]
    }
}

/// Applies all pending migrations in one transaction that holds an advisory lock, so that
/// several instances starting at once (`serve` migrates on start) never race each other.
pub async fn up(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    txn.execute_unprepared("SELECT pg_advisory_xact_lock(7355608)").await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await
}

/// Runs one migration step's SQL (several statements are fine).
pub(crate) async fn run(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    manager.get_connection().execute_unprepared(sql).await.map(|_| ())
}
