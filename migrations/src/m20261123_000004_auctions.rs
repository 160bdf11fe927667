use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            CREATE TABLE auctions (
                id                   UUID PRIMARY KEY,
                title                TEXT NOT NULL,
                description          TEXT NOT NULL DEFAULT '',
                start_price          NUMERIC(12, 2) NOT NULL CHECK (start_price > 0),
                min_increment        NUMERIC(12, 2) NOT NULL CHECK (min_increment > 0),
                reserve_price        NUMERIC(12, 2) CHECK (reserve_price > 0),
                start_at             TIMESTAMPTZ NOT NULL,
                -- moves out with anti-sniping extensions, as the bids are persisted
                end_at               TIMESTAMPTZ NOT NULL,
                extend_window_secs   INTEGER NOT NULL DEFAULT 0 CHECK (extend_window_secs >= 0),
                extend_by_secs       INTEGER NOT NULL DEFAULT 0 CHECK (extend_by_secs >= 0),
                payment_timeout_secs INTEGER NOT NULL CHECK (payment_timeout_secs >= 1),
                status               TEXT NOT NULL DEFAULT 'open'
                                     CHECK (status IN ('open', 'sold', 'unsold')),
                -- write-behind copy of the live state (Redis leads, this follows)
                current_price        NUMERIC(12, 2),
                leader_id            UUID REFERENCES users (id),
                bid_count            INTEGER NOT NULL DEFAULT 0,
                winner_id            UUID REFERENCES users (id),
                final_price          NUMERIC(12, 2),
                order_id             UUID UNIQUE REFERENCES orders (id),
                closed_at            TIMESTAMPTZ,
                created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
                CHECK (end_at > start_at)
            );
            CREATE INDEX auctions_open_end ON auctions (end_at) WHERE status = 'open';
            CREATE INDEX auctions_start ON auctions (start_at DESC);

            -- Every accepted bid, written behind through RabbitMQ. (auction_id, seq) makes
            -- a redelivered batch a no-op.
            CREATE TABLE bids (
                auction_id UUID NOT NULL REFERENCES auctions (id),
                seq        BIGINT NOT NULL CHECK (seq >= 1),
                user_id    UUID NOT NULL REFERENCES users (id),
                amount     NUMERIC(12, 2) NOT NULL CHECK (amount > 0),
                end_at     TIMESTAMPTZ NOT NULL,   -- the auction's end after this bid
                placed_at  TIMESTAMPTZ NOT NULL,   -- Redis server time of acceptance
                PRIMARY KEY (auction_id, seq)
            );

            -- An auction has at most one order: the database says so.
            ALTER TABLE orders ADD COLUMN auction_id UUID UNIQUE REFERENCES auctions (id);
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(manager, "ALTER TABLE orders DROP COLUMN auction_id; DROP TABLE bids; DROP TABLE auctions;").await
    }
}
