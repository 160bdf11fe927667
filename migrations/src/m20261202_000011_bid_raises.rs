use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            -- A leader's raise of its own maximum (no new bid) is kept beside its last bid,
            -- no longer written over that bid's `max_amount`: each row keeps the maximum it
            -- was placed with, so verify's proxy rules read every bid as it was placed.
            -- The leader's maximum now is COALESCE(raised_max, max_amount).
            ALTER TABLE bids ADD COLUMN raised_max NUMERIC(12, 2),
                             ADD CHECK (raised_max IS NULL OR raised_max >= max_amount);
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(manager, "ALTER TABLE bids DROP COLUMN raised_max;").await
    }
}
