use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            -- Trigram index: `title ILIKE '%phone%'` can use it, a b-tree cannot.
            CREATE EXTENSION IF NOT EXISTS pg_trgm;

            CREATE TABLE products (
                id          UUID PRIMARY KEY,
                title       TEXT NOT NULL,
                description TEXT NOT NULL DEFAULT '',
                price       NUMERIC(12, 2) NOT NULL CHECK (price > 0),
                -- the second wall behind the conditional UPDATE: stock never goes negative
                stock       INTEGER NOT NULL CHECK (stock >= 0),
                created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
                deleted_at  TIMESTAMPTZ              -- soft delete: old orders keep their lines
            );
            CREATE INDEX products_title_trgm ON products USING gin (title gin_trgm_ops);
            CREATE INDEX products_live_created ON products (created_at DESC) WHERE deleted_at IS NULL;

            CREATE TABLE orders (
                id          UUID PRIMARY KEY,
                user_id     UUID NOT NULL REFERENCES users (id),
                kind        TEXT NOT NULL CHECK (kind IN ('standard', 'sale', 'auction')),
                status      TEXT NOT NULL DEFAULT 'pending_payment'
                            CHECK (status IN ('pending_payment', 'paid', 'cancelled', 'closed')),
                total       NUMERIC(20, 2) NOT NULL CHECK (total >= 0),
                expires_at  TIMESTAMPTZ NOT NULL,    -- payment deadline
                created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
                paid_at     TIMESTAMPTZ,
                finished_at TIMESTAMPTZ              -- when it was cancelled or closed
            );
            CREATE INDEX orders_user_created ON orders (user_id, created_at DESC);
            -- the sweeper's query: pending orders past their deadline
            CREATE INDEX orders_pending_expiry ON orders (expires_at) WHERE status = 'pending_payment';

            -- Lines snapshot the title and price at order time.
            CREATE TABLE order_items (
                order_id    UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
                line        SMALLINT NOT NULL,
                product_id  UUID REFERENCES products (id),   -- NULL for an auction lot
                title       TEXT NOT NULL,
                quantity    INTEGER NOT NULL CHECK (quantity > 0),
                unit_price  NUMERIC(12, 2) NOT NULL CHECK (unit_price >= 0),
                PRIMARY KEY (order_id, line)
            );

            -- `Idempotency-Key` of order creation: the first response is replayed.
            CREATE TABLE idempotency_keys (
                user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                scope           TEXT NOT NULL,
                key             TEXT NOT NULL,
                request_hash    TEXT NOT NULL,
                response_status SMALLINT NOT NULL,
                response_body   JSONB NOT NULL,
                created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (user_id, scope, key)
            );

            -- Transactional outbox: written in the same transaction as the state change,
            -- published to RabbitMQ by the relay afterwards.
            CREATE TABLE outbox (
                id              BIGSERIAL PRIMARY KEY,
                routing_key     TEXT NOT NULL,
                payload         JSONB NOT NULL,
                headers         JSONB NOT NULL DEFAULT '{}',   -- W3C trace context
                delay_ms        BIGINT CHECK (delay_ms > 0),   -- deliver later, via a TTL queue
                created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
                published_at    TIMESTAMPTZ,
                attempts        INTEGER NOT NULL DEFAULT 0,
                last_error      TEXT,
                next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
            CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

            -- Wake the relay when rows commit (NOTIFY is delivered at commit).
            CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('outbox', '');
                RETURN NULL;
            END $$;
            CREATE TRIGGER outbox_inserted AFTER INSERT ON outbox
                FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            DROP TABLE outbox;
            DROP FUNCTION outbox_notify();
            DROP TABLE idempotency_keys;
            DROP TABLE order_items;
            DROP TABLE orders;
            DROP TABLE products;
            "#,
        )
        .await
    }
}
