//! The `idempotency_keys` table: the first answer to a request made with an
//! `Idempotency-Key`, replayed for every retry.

use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};
use serde_json::Value;
use uuid::Uuid;

use super::{is_unique_violation, stmt};

#[derive(Debug, Clone, FromQueryResult)]
pub struct StoredResponse {
    pub request_hash: String,
    pub response_status: i16,
    pub response_body: Value,
}

#[tracing::instrument(name = "SELECT idempotency_keys", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "idempotency_keys"))]
pub async fn find(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    scope: &str,
    key: &str,
) -> Result<Option<StoredResponse>, DbErr> {
    StoredResponse::find_by_statement(stmt(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys \
         WHERE user_id = $1 AND scope = $2 AND key = $3",
        [user_id.into(), scope.into(), key.into()],
    ))
    .one(db)
    .await
}

pub enum Saved {
    Saved,
    /// Another request with the same key committed first; roll back and replay its answer.
    AlreadyThere,
}

/// Stores the answer, normally in the same transaction as the work it describes: the key
/// and the order commit together or not at all.
#[tracing::instrument(name = "INSERT idempotency_keys", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "idempotency_keys"))]
pub async fn save(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    scope: &str,
    key: &str,
    request_hash: &str,
    status: i16,
    body: &Value,
) -> Result<Saved, DbErr> {
    let result = db
        .execute_raw(stmt(
            "INSERT INTO idempotency_keys (user_id, scope, key, request_hash, response_status, response_body) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            [user_id.into(), scope.into(), key.into(), request_hash.into(), status.into(), body.clone().into()],
        ))
        .await;
    match result {
        Ok(_) => Ok(Saved::Saved),
        Err(err) if is_unique_violation(&err) => Ok(Saved::AlreadyThere),
        Err(err) => Err(err),
    }
}
