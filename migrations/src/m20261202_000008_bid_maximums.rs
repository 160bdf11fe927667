use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            -- Proxy bidding. `max_amount` is the bidder's maximum behind this bid (the amount
            -- itself for a plain bid); the leader's raise of its own maximum updates its last
            -- bid. A rebuild after a Redis loss takes the leader's maximum from the top bid.
            -- It is never shown to anyone but its owner. `auto` marks the site's automatic
            -- raise on behalf of the leader.
            ALTER TABLE bids ADD COLUMN max_amount NUMERIC(12, 2);
            UPDATE bids SET max_amount = amount;
            ALTER TABLE bids ALTER COLUMN max_amount SET NOT NULL,
                             ADD CHECK (max_amount >= amount),
                             ADD COLUMN auto BOOLEAN NOT NULL DEFAULT false;
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(manager, "ALTER TABLE bids DROP COLUMN max_amount, DROP COLUMN auto;").await
    }
}
