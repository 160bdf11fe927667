use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            -- Buy-it-now: the price, and whether the lot went that way (such an order gets no
            -- second-chance offer when it is left unpaid).
            ALTER TABLE auctions
                ADD COLUMN buy_now_price NUMERIC(12, 2) CHECK (buy_now_price > 0),
                ADD COLUMN bought_now BOOLEAN NOT NULL DEFAULT false;

            -- Second-chance offers: an auction may now have several orders (the winner's, then
            -- one per offer), but never two that are pending or paid at once.
            ALTER TABLE orders DROP CONSTRAINT orders_auction_id_key;
            CREATE UNIQUE INDEX orders_one_live_per_auction ON orders (auction_id)
                WHERE status IN ('pending_payment', 'paid');
            CREATE INDEX orders_auction ON orders (auction_id) WHERE auction_id IS NOT NULL;
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            "DROP INDEX orders_auction; DROP INDEX orders_one_live_per_auction; \
             ALTER TABLE orders ADD CONSTRAINT orders_auction_id_key UNIQUE (auction_id); \
             ALTER TABLE auctions DROP COLUMN bought_now, DROP COLUMN buy_now_price;",
        )
        .await
    }
}
