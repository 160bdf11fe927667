use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            -- A hot sale's stock split into buckets, each its own set of Redis keys on its own
            -- hash tag (docs/architecture.md, "Stock buckets"). A sale of one bucket keeps
            -- `sales.stock_left` and `sales.version` (its bucket row follows along); a sale of
            -- several keeps them in its bucket rows, each locked on its own, and its total is
            -- their sum.
            -- A reservation's bucket is its buyer's home bucket (a hash of the user id), so it
            -- is computed, never stored.
            ALTER TABLE sales ADD COLUMN stock_buckets SMALLINT NOT NULL DEFAULT 1
                CHECK (stock_buckets BETWEEN 1 AND 64);
            CREATE TABLE sale_buckets (
                sale_id UUID NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
                bucket SMALLINT NOT NULL CHECK (bucket >= 0 AND bucket < 64),
                stock_left INTEGER NOT NULL CHECK (stock_left >= 0),
                -- bumped by every change of stock_left, as `sales.version` is for a sale of one
                -- bucket (the bucket's Redis state remembers the version it was built from)
                version BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (sale_id, bucket)
            );
            INSERT INTO sale_buckets (sale_id, bucket, stock_left, version) SELECT id, 0, stock_left, version FROM sales;

            -- Units moved from one bucket to another, once per transfer id (the primary key):
            -- a rebuilt destination loads its received ids from here. `done`: the destination's
            -- Redis was told; the sweeper finishes the rest.
            CREATE TABLE bucket_transfers (
                id UUID PRIMARY KEY,
                sale_id UUID NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
                from_bucket SMALLINT NOT NULL,
                to_bucket SMALLINT NOT NULL,
                units INTEGER NOT NULL CHECK (units > 0),
                done BOOLEAN NOT NULL DEFAULT false,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            CREATE INDEX bucket_transfers_sale ON bucket_transfers (sale_id, to_bucket);
            CREATE INDEX bucket_transfers_pending ON bucket_transfers (created_at) WHERE NOT done;
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            "DROP TABLE bucket_transfers; \
             DROP TABLE sale_buckets; ALTER TABLE sales DROP COLUMN stock_buckets;",
        )
        .await
    }
}
