use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            -- Bids are written here before they are answered. `bid_generation` names the
            -- Redis live state that may write them: a rebuild of that state (after a flush,
            -- or to undo a bid that could not be written) sets a new one under the row lock,
            -- and a write from the old state is refused from then on.
            ALTER TABLE auctions ADD COLUMN bid_generation TEXT NOT NULL DEFAULT '';
            COMMENT ON COLUMN auctions.bid_count IS 'bids written so far: the next bid must have seq bid_count + 1';
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(manager, "ALTER TABLE auctions DROP COLUMN bid_generation;").await
    }
}
