use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(
            manager,
            r#"
            CREATE TABLE users (
                id            UUID PRIMARY KEY,
                -- stored lower-case by the application, so this is case-insensitive
                email         TEXT NOT NULL UNIQUE,
                password_hash TEXT NOT NULL,          -- argon2id PHC string
                role          TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
                created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
            );

            -- Refresh tokens are opaque random strings; only their SHA-256 is stored.
            -- All tokens of one login share a family: re-using a spent token revokes it.
            CREATE TABLE refresh_tokens (
                id          UUID PRIMARY KEY,
                user_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                family_id   UUID NOT NULL,
                token_hash  TEXT NOT NULL UNIQUE,
                expires_at  TIMESTAMPTZ NOT NULL,
                used_at     TIMESTAMPTZ,             -- rotated: exchanged for a new pair
                revoked_at  TIMESTAMPTZ,             -- logged out, or its family was revoked
                created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
            CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
            "#,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run(manager, "DROP TABLE refresh_tokens; DROP TABLE users;").await
    }
}
