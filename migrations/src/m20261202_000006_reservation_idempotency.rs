use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            -- A purchase's Idempotency-Key lives with its outcome, so that a rebuilt Redis can
            -- be told it again: the same key then replays the same reservation id, and the
            -- same key with another body (`fingerprint`) is refused.
            ALTER TABLE reservations ADD COLUMN idempotency_key TEXT, ADD COLUMN fingerprint TEXT;
            CREATE INDEX reservations_idempotency ON reservations (sale_id, reserved_at)
                WHERE idempotency_key IS NOT NULL;
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            "DROP INDEX reservations_idempotency; \
             ALTER TABLE reservations DROP COLUMN idempotency_key, DROP COLUMN fingerprint;",
        )
        .await
    }
}
