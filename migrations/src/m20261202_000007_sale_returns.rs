use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            -- When a closed or cancelled sale order gave its units back to the sale, at which
            -- sale version (the restock script needs it to tell whether a rebuilt Redis
            -- already counts the return), and when Redis was told. A return that Redis was
            -- not told of for a while is put back by the restock sweeper, and `verify`
            -- checks each order against them.
            ALTER TABLE reservations
                ADD COLUMN returned_at      TIMESTAMPTZ,
                ADD COLUMN returned_version BIGINT,
                ADD COLUMN restocked_at     TIMESTAMPTZ;
            -- Orders returned before this column existed: returned, and Redis told (their
            -- version is unknown, so no per-order Redis check applies to them).
            UPDATE reservations r SET returned_at = COALESCE(o.finished_at, o.updated_at), restocked_at = now()
              FROM orders o
             WHERE o.id = r.order_id AND o.status IN ('closed', 'cancelled');
            CREATE INDEX reservations_restock_due ON reservations (returned_at)
             WHERE returned_at IS NOT NULL AND restocked_at IS NULL;
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            "DROP INDEX reservations_restock_due; \
             ALTER TABLE reservations DROP COLUMN returned_at, DROP COLUMN returned_version, DROP COLUMN restocked_at;",
        )
        .await
    }
}
