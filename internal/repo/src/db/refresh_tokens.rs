//! The `refresh_tokens` table: hashed, rotated, revocable by family.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::entity::refresh_token::{self, Column, Entity};

pub use refresh_token::Model as RefreshTokenRow;

#[tracing::instrument(name = "INSERT refresh_tokens", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "refresh_tokens"))]
pub async fn insert(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    family_id: Uuid,
    token_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), DbErr> {
    let row = refresh_token::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user_id),
        family_id: Set(family_id),
        token_hash: Set(token_hash.to_owned()),
        expires_at: Set(expires_at),
        used_at: Set(None),
        revoked_at: Set(None),
        created_at: Set(Utc::now()),
    };
    Entity::insert(row).exec_without_returning(db).await.map(|_| ())
}

#[tracing::instrument(name = "SELECT refresh_tokens", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "refresh_tokens"))]
pub async fn find_by_hash(db: &impl ConnectionTrait, token_hash: &str) -> Result<Option<RefreshTokenRow>, DbErr> {
    Entity::find().filter(Column::TokenHash.eq(token_hash)).one(db).await
}

/// Spends a token. Conditional, so of two concurrent refreshes with the same token exactly
/// one succeeds; the loser is treated as a replay.
#[tracing::instrument(name = "UPDATE refresh_tokens", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "refresh_tokens"))]
pub async fn mark_used(db: &impl ConnectionTrait, id: Uuid) -> Result<bool, DbErr> {
    let result = Entity::update_many()
        .col_expr(Column::UsedAt, Expr::current_timestamp())
        .filter(Column::Id.eq(id))
        .filter(Column::UsedAt.is_null())
        .filter(Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Revokes every token of a login (on logout, or when a spent token is replayed).
#[tracing::instrument(name = "UPDATE refresh_tokens", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "refresh_tokens"))]
pub async fn revoke_family(db: &impl ConnectionTrait, family_id: Uuid) -> Result<u64, DbErr> {
    let result = Entity::update_many()
        .col_expr(Column::RevokedAt, Expr::current_timestamp())
        .filter(Column::FamilyId.eq(family_id))
        .filter(Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}
