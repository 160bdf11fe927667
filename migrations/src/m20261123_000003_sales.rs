use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            CREATE TABLE sales (
                id                   UUID PRIMARY KEY,
                product_id           UUID NOT NULL REFERENCES products (id),
                price                NUMERIC(12, 2) NOT NULL CHECK (price > 0),
                stock                INTEGER NOT NULL CHECK (stock > 0),   -- allocated at creation
                -- units not held by a pending or paid order; never below zero
                stock_left           INTEGER NOT NULL CHECK (stock_left >= 0 AND stock_left <= stock),
                start_at             TIMESTAMPTZ NOT NULL,
                end_at               TIMESTAMPTZ NOT NULL,
                per_user_limit       INTEGER NOT NULL CHECK (per_user_limit >= 1),
                payment_timeout_secs INTEGER NOT NULL CHECK (payment_timeout_secs >= 1),
                -- bumped by every committed change of stock_left; the Redis hot state
                -- remembers the version it was rebuilt from (see docs/milestones/05)
                version              BIGINT NOT NULL DEFAULT 0,
                created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
                CHECK (end_at > start_at)
            );
            CREATE INDEX sales_start ON sales (start_at DESC);

            -- Units each buyer holds in a sale. The CHECK is the database's own wall
            -- behind the Lua per-user limit.
            CREATE TABLE sale_buyers (
                sale_id        UUID NOT NULL REFERENCES sales (id),
                user_id        UUID NOT NULL REFERENCES users (id),
                quantity       INTEGER NOT NULL,
                per_user_limit INTEGER NOT NULL,
                PRIMARY KEY (sale_id, user_id),
                CONSTRAINT sale_buyers_within_limit
                    CHECK (quantity >= 0 AND quantity <= per_user_limit)
            );

            -- The outcome of every reservation the order consumer saw: confirmed with its
            -- order, or failed with a reason. The primary key makes a redelivery a no-op.
            CREATE TABLE reservations (
                id          UUID PRIMARY KEY,
                sale_id     UUID NOT NULL REFERENCES sales (id),
                user_id     UUID NOT NULL REFERENCES users (id),
                quantity    INTEGER NOT NULL CHECK (quantity > 0),
                status      TEXT NOT NULL CHECK (status IN ('confirmed', 'failed')),
                order_id    UUID UNIQUE REFERENCES orders (id),
                reason      TEXT,
                -- the sale's version after the commit that recorded this outcome
                sale_version BIGINT NOT NULL,
                generation  TEXT NOT NULL,       -- of the Redis hot state that reserved it
                reserved_at TIMESTAMPTZ NOT NULL,
                created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
                CHECK ((status = 'confirmed') = (order_id IS NOT NULL))
            );
            CREATE INDEX reservations_sale ON reservations (sale_id);
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(manager, "DROP TABLE reservations; DROP TABLE sale_buyers; DROP TABLE sales;").await
    }
}
