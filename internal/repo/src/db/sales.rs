//! The `sales`, `sale_buyers` and `reservations` tables.
//!
//! The order consumer works on one sale at a time with the sale's row locked
//! (`FOR UPDATE`): every change of `stock_left` bumps `version`, and the Redis hot state
//! remembers the version it was built from (see `cache::sales`).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Value};
use uuid::Uuid;

use super::{Page, scalar, stmt};

#[derive(Debug, Clone, FromQueryResult)]
pub struct SaleRow {
    pub id: Uuid,
    pub product_id: Uuid,
    pub title: String,
    pub price: Decimal,
    pub stock: i32,
    pub stock_left: i32,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub per_user_limit: i32,
    pub payment_timeout_secs: i32,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    /// How many buckets the stock is split into (`sale_buckets`), 1 to 64.
    pub stock_buckets: i32,
}

/// `stock_left` is the total: for a sale of several buckets, the sum of its bucket rows.
const SALE_COLUMNS: &str = "s.id, s.product_id, p.title, s.price, s.stock, \
     CASE WHEN s.stock_buckets > 1 \
          THEN (SELECT sum(b.stock_left)::int FROM sale_buckets b WHERE b.sale_id = s.id) \
          ELSE s.stock_left END AS stock_left, \
     s.start_at, s.end_at, s.per_user_limit, s.payment_timeout_secs, s.version, s.created_at, \
     s.stock_buckets::int AS stock_buckets";

pub struct NewSale {
    pub id: Uuid,
    pub product_id: Uuid,
    pub price: Decimal,
    pub stock: i32,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub per_user_limit: i32,
    pub payment_timeout_secs: i32,
    /// Each bucket's share of `stock`, in bucket order.
    pub buckets: Vec<i32>,
}

pub enum Created {
    Sale(SaleRow),
    NoProduct,
    ShortOfStock { available: i32 },
}

/// Moves the sale's units out of the product's stock and creates the sale, in the caller's
/// transaction. The conditional UPDATE makes "enough stock" and "take it" one step.
#[tracing::instrument(name = "INSERT sales", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "sales"))]
pub async fn insert(db: &impl ConnectionTrait, new: &NewSale) -> Result<Created, DbErr> {
    let taken = db
        .execute_raw(stmt(
            "UPDATE products SET stock = stock - $2, updated_at = now() \
             WHERE id = $1 AND deleted_at IS NULL AND stock >= $2",
            [new.product_id.into(), new.stock.into()],
        ))
        .await?;
    if taken.rows_affected() == 0 {
        return Ok(match super::products::stock_of(db, new.product_id).await? {
            None => Created::NoProduct,
            Some(available) => Created::ShortOfStock { available },
        });
    }
    db.execute_raw(stmt(
        "INSERT INTO sales (id, product_id, price, stock, stock_left, start_at, end_at, per_user_limit, payment_timeout_secs, \
                            stock_buckets) \
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9)",
        [
            new.id.into(),
            new.product_id.into(),
            new.price.into(),
            new.stock.into(),
            new.start_at.into(),
            new.end_at.into(),
            new.per_user_limit.into(),
            new.payment_timeout_secs.into(),
            (new.buckets.len() as i16).into(),
        ],
    ))
    .await?;
    db.execute_raw(stmt(
        "INSERT INTO sale_buckets (sale_id, bucket, stock_left) \
         SELECT $1, (n - 1)::smallint, stock FROM unnest($2::int[]) WITH ORDINALITY AS b(stock, n)",
        [new.id.into(), new.buckets.clone().into()],
    ))
    .await?;
    Ok(find(db, new.id).await?.map_or(Created::NoProduct, Created::Sale))
}

#[tracing::instrument(name = "SELECT sales", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sales"))]
pub async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<SaleRow>, DbErr> {
    SaleRow::find_by_statement(stmt(
        &format!("SELECT {SALE_COLUMNS} FROM sales s JOIN products p ON p.id = s.product_id WHERE s.id = $1"),
        [id.into()],
    ))
    .one(db)
    .await
}

/// Locks the sale row against concurrent stock changes for the rest of the transaction.
/// `exclusive`: the order consumer and the close (they change it); otherwise a shared lock
/// for a rebuild (it only needs a snapshot no commit can slip into).
#[tracing::instrument(name = "SELECT sales", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sales"))]
pub async fn lock(db: &impl ConnectionTrait, id: Uuid, exclusive: bool) -> Result<Option<SaleRow>, DbErr> {
    let mode = if exclusive { "UPDATE" } else { "SHARE" };
    SaleRow::find_by_statement(stmt(
        &format!(
            "SELECT {SALE_COLUMNS} FROM sales s JOIN products p ON p.id = s.product_id WHERE s.id = $1 FOR {mode} OF s"
        ),
        [id.into()],
    ))
    .one(db)
    .await
}

/// All sales, newest start first; or with `current`, only those not ended yet, soonest
/// start first.
#[tracing::instrument(name = "SELECT sales", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sales"))]
pub async fn list(db: &impl ConnectionTrait, offset: u64, limit: u64, current: bool) -> Result<Page<SaleRow>, DbErr> {
    let (filter, order) = if current { ("WHERE s.end_at > now()", "s.start_at ASC") } else { ("", "s.start_at DESC") };
    let items = SaleRow::find_by_statement(stmt(
        &format!(
            "SELECT {SALE_COLUMNS} FROM sales s JOIN products p ON p.id = s.product_id {filter} \
             ORDER BY {order}, s.id LIMIT $1 OFFSET $2"
        ),
        [(limit as i64).into(), (offset as i64).into()],
    ))
    .all(db)
    .await?;
    let total = scalar(db, &format!("SELECT count(*) AS count FROM sales s {filter}"), []).await?;
    Ok(Page { items, total: total as u64 })
}

/// The sales whose hot state may hold reservations (with their bucket counts): started,
/// and whose Redis keys have not expired yet (a day after the end).
#[tracing::instrument(name = "SELECT sales", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sales"))]
pub async fn live_ids(db: &impl ConnectionTrait) -> Result<Vec<(Uuid, u16)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Id {
        id: Uuid,
        stock_buckets: i32,
    }
    let sql = "SELECT id, stock_buckets::int AS stock_buckets FROM sales \
               WHERE start_at <= now() AND end_at > now() - interval '1 day'";
    let rows = Id::find_by_statement(stmt(sql, Vec::<Value>::new())).all(db).await?;
    Ok(rows.into_iter().map(|r| (r.id, r.stock_buckets as u16)).collect())
}

/// Units each buyer holds (pending or paid orders).
#[tracing::instrument(name = "SELECT sale_buyers", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sale_buyers"))]
pub async fn buyers(db: &impl ConnectionTrait, sale_id: Uuid) -> Result<Vec<(Uuid, i32)>, DbErr> {
    held(db, "SELECT user_id, quantity FROM sale_buyers WHERE sale_id = $1 AND quantity > 0", [sale_id.into()]).await
}

/// Units held by these buyers (the order consumer needs only the buyers of its batch).
#[tracing::instrument(name = "SELECT sale_buyers", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sale_buyers"))]
pub async fn holdings(db: &impl ConnectionTrait, sale_id: Uuid, users: Vec<Uuid>) -> Result<Vec<(Uuid, i32)>, DbErr> {
    let sql = "SELECT user_id, quantity FROM sale_buyers WHERE sale_id = $1 AND user_id = ANY($2)";
    held(db, sql, [sale_id.into(), users.into()]).await
}

/// `(user_id, quantity)` rows of `sql`.
async fn held(
    db: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Vec<(Uuid, i32)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Buyer {
        user_id: Uuid,
        quantity: i32,
    }
    let rows = Buyer::find_by_statement(stmt(sql, values)).all(db).await?;
    Ok(rows.into_iter().map(|b| (b.user_id, b.quantity)).collect())
}

/// Changes one bucket's `stock_left` by `delta` and bumps its version; returns the new
/// version. A sale of one bucket keeps them in the sale row (its bucket row follows along);
/// a sale of `of > 1` buckets in the bucket row alone, so that order batches and closes of
/// different buckets never wait for one another. The CHECK constraints on the columns are
/// the last wall: Postgres never oversells.
#[tracing::instrument(name = "UPDATE sales", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "sales"))]
pub async fn change_stock(
    db: &impl ConnectionTrait,
    sale_id: Uuid,
    bucket: u16,
    of: u16,
    delta: i32,
) -> Result<i64, DbErr> {
    if of > 1 {
        return scalar(
            db,
            "UPDATE sale_buckets SET stock_left = stock_left + $3, version = version + 1 \
             WHERE sale_id = $1 AND bucket = $2 RETURNING version",
            [sale_id.into(), (bucket as i16).into(), delta.into()],
        )
        .await;
    }
    // The sale row first, then the bucket row: the order every writer locks them in.
    let version = scalar(
        db,
        "UPDATE sales SET stock_left = stock_left + $2, version = version + 1, updated_at = now() \
         WHERE id = $1 RETURNING version",
        [sale_id.into(), delta.into()],
    )
    .await?;
    db.execute_raw(stmt(
        "UPDATE sale_buckets SET stock_left = stock_left + $3, version = $4 WHERE sale_id = $1 AND bucket = $2",
        [sale_id.into(), (bucket as i16).into(), delta.into(), version.into()],
    ))
    .await?;
    Ok(version)
}

/// A bucket's units and version, under the lock that guards them.
#[derive(Debug, Clone, Copy, FromQueryResult)]
pub struct Locked {
    pub stock_left: i32,
    pub version: i64,
}

/// Locks what a change of a bucket's stock holds for the rest of the transaction: the sale
/// row for a sale of one bucket, the bucket's row for a sale of several. `of`: the sale's
/// bucket count when the caller knows it (saves a read). `exclusive` as for [`lock`].
#[tracing::instrument(name = "SELECT sale_buckets", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sale_buckets"))]
pub async fn lock_bucket(
    db: &impl ConnectionTrait,
    sale_id: Uuid,
    bucket: u16,
    of: Option<u16>,
    exclusive: bool,
) -> Result<Option<(SaleRow, Locked)>, DbErr> {
    if of == Some(1) {
        let Some(sale) = lock(db, sale_id, exclusive).await? else { return Ok(None) };
        if sale.stock_buckets <= 1 {
            let locked = Locked { stock_left: sale.stock_left, version: sale.version };
            return Ok(Some((sale, locked)));
        }
    }
    let Some(sale) = find(db, sale_id).await? else { return Ok(None) };
    if sale.stock_buckets <= 1 {
        return Ok(lock(db, sale_id, exclusive)
            .await?
            .map(|s| (s.clone(), Locked { stock_left: s.stock_left, version: s.version })));
    }
    let mode = if exclusive { "UPDATE" } else { "SHARE" };
    let locked = Locked::find_by_statement(stmt(
        &format!("SELECT stock_left, version FROM sale_buckets WHERE sale_id = $1 AND bucket = $2 FOR {mode}"),
        [sale_id.into(), (bucket as i16).into()],
    ))
    .one(db)
    .await?;
    Ok(locked.map(|l| (sale, l)))
}

/// Locks the rows of these buckets (a transfer between them), in bucket order; `false` when
/// the sale has no such rows.
pub async fn lock_buckets(db: &impl ConnectionTrait, sale_id: Uuid, buckets: &[u16]) -> Result<bool, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        #[allow(dead_code)]
        bucket: i16,
    }
    let wanted: Vec<i16> = buckets.iter().map(|&b| b as i16).collect();
    let rows = Row::find_by_statement(stmt(
        "SELECT bucket FROM sale_buckets WHERE sale_id = $1 AND bucket = ANY($2) ORDER BY bucket FOR UPDATE",
        [sale_id.into(), wanted.into()],
    ))
    .all(db)
    .await?;
    Ok(rows.len() == buckets.len())
}

/// Units left in each bucket of the sale, by bucket.
#[tracing::instrument(name = "SELECT sale_buckets", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sale_buckets"))]
pub async fn bucket_stock(db: &impl ConnectionTrait, sale_id: Uuid) -> Result<Vec<i32>, DbErr> {
    #[derive(FromQueryResult)]
    struct Left {
        stock_left: i32,
    }
    let rows = Left::find_by_statement(stmt(
        "SELECT stock_left FROM sale_buckets WHERE sale_id = $1 ORDER BY bucket",
        [sale_id.into()],
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.stock_left).collect())
}

/// A move of units between two buckets of a sale (`bucket_transfers`).
#[derive(Debug, Clone, FromQueryResult)]
pub struct Transfer {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub from_bucket: i16,
    pub to_bucket: i16,
    pub units: i32,
}

/// Records a transfer and moves its units between the bucket rows, once per id: `false`
/// when it was recorded before (nothing changes). Call with both rows locked
/// ([`lock_buckets`]).
#[tracing::instrument(name = "INSERT bucket_transfers", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "bucket_transfers"))]
pub async fn record_transfer(db: &impl ConnectionTrait, t: &Transfer) -> Result<bool, DbErr> {
    let inserted = db
        .execute_raw(stmt(
            "INSERT INTO bucket_transfers (id, sale_id, from_bucket, to_bucket, units) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING",
            [t.id.into(), t.sale_id.into(), t.from_bucket.into(), t.to_bucket.into(), t.units.into()],
        ))
        .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    db.execute_raw(stmt(
        "UPDATE sale_buckets SET stock_left = stock_left + CASE WHEN bucket = $2 THEN -$4 ELSE $4 END \
         WHERE sale_id = $1 AND bucket IN ($2, $3)",
        [t.sale_id.into(), t.from_bucket.into(), t.to_bucket.into(), t.units.into()],
    ))
    .await?;
    Ok(true)
}

/// A bucket row's units left (read under the caller's lock of that row).
pub async fn bucket_stock_left(db: &impl ConnectionTrait, sale_id: Uuid, bucket: u16) -> Result<i64, DbErr> {
    scalar(
        db,
        "SELECT stock_left::bigint AS count FROM sale_buckets WHERE sale_id = $1 AND bucket = $2",
        [sale_id.into(), (bucket as i16).into()],
    )
    .await
}

/// Whether a transfer is recorded.
pub async fn transfer_recorded(db: &impl ConnectionTrait, id: Uuid) -> Result<bool, DbErr> {
    Ok(scalar(db, "SELECT count(*) AS count FROM bucket_transfers WHERE id = $1", [id.into()]).await? > 0)
}

/// The transfers a bucket received (a rebuilt bucket must not take them twice).
#[tracing::instrument(name = "SELECT bucket_transfers", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "bucket_transfers"))]
pub async fn received(db: &impl ConnectionTrait, sale_id: Uuid, bucket: u16) -> Result<Vec<Uuid>, DbErr> {
    #[derive(FromQueryResult)]
    struct Id {
        id: Uuid,
    }
    let rows = Id::find_by_statement(stmt(
        "SELECT id FROM bucket_transfers WHERE sale_id = $1 AND to_bucket = $2",
        [sale_id.into(), (bucket as i16).into()],
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Recorded transfers older than `older_than_ms` whose destination was not told yet.
pub async fn transfers_pending(db: &impl ConnectionTrait, older_than_ms: i64) -> Result<Vec<Transfer>, DbErr> {
    Transfer::find_by_statement(stmt(
        "SELECT id, sale_id, from_bucket, to_bucket, units FROM bucket_transfers \
         WHERE NOT done AND created_at < now() - make_interval(secs => $1::float8 / 1000) ORDER BY created_at LIMIT 500",
        [older_than_ms.into()],
    ))
    .all(db)
    .await
}

/// The destination's Redis has the transfer's units.
pub async fn transfer_done(db: &impl ConnectionTrait, id: Uuid) -> Result<(), DbErr> {
    db.execute_raw(stmt("UPDATE bucket_transfers SET done = true WHERE id = $1", [id.into()])).await.map(|_| ())
}

/// The sales split into more than one bucket whose hot state may still be live.
pub async fn live_split_ids(db: &impl ConnectionTrait) -> Result<Vec<(Uuid, i32)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Split {
        id: Uuid,
        stock_buckets: i32,
    }
    let sql = "SELECT id, stock_buckets::int AS stock_buckets FROM sales \
               WHERE stock_buckets > 1 AND end_at > now() - interval '1 day'";
    let rows = Split::find_by_statement(stmt(sql, Vec::<Value>::new())).all(db).await?;
    Ok(rows.into_iter().map(|r| (r.id, r.stock_buckets)).collect())
}

/// Adds `quantity` to each buyer's holding. The holding has a CHECK against the sale's
/// per-user limit: the database's own wall behind the Lua check.
#[tracing::instrument(name = "INSERT sale_buyers", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "sale_buyers"))]
pub async fn add_to_buyers(
    db: &impl ConnectionTrait,
    sale_id: Uuid,
    per_user_limit: i32,
    changes: &[(Uuid, i32)],
) -> Result<(), DbErr> {
    if changes.is_empty() {
        return Ok(());
    }
    let users: Vec<Uuid> = changes.iter().map(|c| c.0).collect();
    let quantities: Vec<i32> = changes.iter().map(|c| c.1).collect();
    db.execute_raw(stmt(
        "INSERT INTO sale_buyers (sale_id, user_id, quantity, per_user_limit) \
         SELECT $1, user_id, quantity, $4 FROM unnest($2::uuid[], $3::int[]) AS b(user_id, quantity) \
         ON CONFLICT (sale_id, user_id) DO UPDATE SET quantity = sale_buyers.quantity + excluded.quantity",
        [sale_id.into(), users.into(), quantities.into(), per_user_limit.into()],
    ))
    .await
    .map(|_| ())
}

/// Takes `quantity` off each buyer's holding (their order was closed or cancelled).
#[tracing::instrument(name = "UPDATE sale_buyers", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "sale_buyers"))]
pub async fn release_buyers(db: &impl ConnectionTrait, sale_id: Uuid, changes: &[(Uuid, i32)]) -> Result<(), DbErr> {
    if changes.is_empty() {
        return Ok(());
    }
    let users: Vec<Uuid> = changes.iter().map(|c| c.0).collect();
    let quantities: Vec<i32> = changes.iter().map(|c| c.1).collect();
    db.execute_raw(stmt(
        "UPDATE sale_buyers b SET quantity = b.quantity - r.quantity \
         FROM unnest($2::uuid[], $3::int[]) AS r(user_id, quantity) \
         WHERE b.sale_id = $1 AND b.user_id = r.user_id",
        [sale_id.into(), users.into(), quantities.into()],
    ))
    .await
    .map(|_| ())
}

#[derive(Debug, Clone, FromQueryResult)]
pub struct ReservationRow {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
    pub status: String,
    pub order_id: Option<Uuid>,
    pub reason: Option<String>,
    pub sale_version: i64,
    pub generation: String,
}

/// The outcome the order consumer recorded for each of these reservations, if any.
#[tracing::instrument(name = "SELECT reservations", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "reservations"))]
pub async fn reservations(db: &impl ConnectionTrait, ids: &[Uuid]) -> Result<Vec<ReservationRow>, DbErr> {
    ReservationRow::find_by_statement(stmt(
        "SELECT id, sale_id, user_id, quantity, status, order_id, reason, sale_version, generation \
         FROM reservations WHERE id = ANY($1)",
        [ids.to_vec().into()],
    ))
    .all(db)
    .await
}

pub struct NewReservation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
    pub order_id: Option<Uuid>,
    pub reason: Option<&'static str>,
    pub reserved_at: DateTime<Utc>,
    pub generation: String,
    /// The purchase's `Idempotency-Key` and body fingerprint, if it had a key.
    pub idempotency_key: Option<String>,
    pub fingerprint: Option<String>,
}

/// Records outcomes; the primary key makes a second recording of a reservation fail, which
/// the consumer prevents by reading [`reservations`] first under the sale lock.
#[tracing::instrument(name = "INSERT reservations", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "reservations"))]
pub async fn insert_reservations(
    db: &impl ConnectionTrait,
    sale_id: Uuid,
    version: i64,
    rows: &[NewReservation],
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let users: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
    let quantities: Vec<i32> = rows.iter().map(|r| r.quantity).collect();
    // Failed reservations have no order; the nil UUID stands for NULL in the array.
    let orders: Vec<Uuid> = rows.iter().map(|r| r.order_id.unwrap_or(Uuid::nil())).collect();
    let reasons: Vec<String> = rows.iter().map(|r| r.reason.unwrap_or("").to_owned()).collect();
    let reserved: Vec<DateTime<Utc>> = rows.iter().map(|r| r.reserved_at).collect();
    let generations: Vec<String> = rows.iter().map(|r| r.generation.clone()).collect();
    // No key: the empty string stands for NULL (a key has at least one character).
    let keys: Vec<String> = rows.iter().map(|r| r.idempotency_key.clone().unwrap_or_default()).collect();
    let prints: Vec<String> = rows.iter().map(|r| r.fingerprint.clone().unwrap_or_default()).collect();
    db.execute_raw(stmt(
        "INSERT INTO reservations (id, sale_id, user_id, quantity, status, order_id, reason, reserved_at, sale_version, \
                                   generation, idempotency_key, fingerprint) \
         SELECT id, $2, user_id, quantity, \
                CASE WHEN order_id = '00000000-0000-0000-0000-000000000000' THEN 'failed' ELSE 'confirmed' END, \
                NULLIF(order_id, '00000000-0000-0000-0000-000000000000'), NULLIF(reason, ''), reserved_at, $3, generation, \
                NULLIF(idem, ''), NULLIF(print, '') \
         FROM unnest($1::uuid[], $4::uuid[], $5::int[], $6::uuid[], $7::text[], $8::timestamptz[], $9::text[], \
                     $10::text[], $11::text[]) \
              AS r(id, user_id, quantity, order_id, reason, reserved_at, generation, idem, print)",
        [
            ids.into(),
            sale_id.into(),
            version.into(),
            users.into(),
            quantities.into(),
            orders.into(),
            reasons.into(),
            reserved.into(),
            generations.into(),
            keys.into(),
            prints.into(),
        ],
    ))
    .await
    .map(|_| ())
}

/// An `Idempotency-Key` a purchase of the sale was made with, and what it replays.
#[derive(Debug, Clone, FromQueryResult)]
pub struct KeyRow {
    pub user_id: Uuid,
    pub idempotency_key: String,
    pub id: Uuid,
    pub fingerprint: String,
}

/// The keys of the sale's reservations made since `since`, except those undone because
/// their message was not confirmed (a retry with such a key reserves again).
#[tracing::instrument(name = "SELECT reservations", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "reservations"))]
pub async fn idempotency_keys(
    db: &impl ConnectionTrait,
    sale_id: Uuid,
    since: DateTime<Utc>,
) -> Result<Vec<KeyRow>, DbErr> {
    KeyRow::find_by_statement(stmt(
        "SELECT user_id, idempotency_key, id, COALESCE(fingerprint, '') AS fingerprint FROM reservations \
         WHERE sale_id = $1 AND idempotency_key IS NOT NULL AND reserved_at > $2 \
           AND reason IS DISTINCT FROM 'broker_unavailable'",
        [sale_id.into(), since.into()],
    ))
    .all(db)
    .await
}

/// A closed or cancelled sale order's units, found through its reservation.
#[derive(Debug, Clone, FromQueryResult)]
pub struct OrderUnits {
    pub order_id: Uuid,
    pub sale_id: Uuid,
    pub stock_buckets: i32,
    pub user_id: Uuid,
    pub quantity: i32,
}

#[tracing::instrument(name = "SELECT reservations", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "reservations"))]
pub async fn units_of_orders(db: &impl ConnectionTrait, order_ids: &[Uuid]) -> Result<Vec<OrderUnits>, DbErr> {
    OrderUnits::find_by_statement(stmt(
        "SELECT r.order_id, r.sale_id, s.stock_buckets::int AS stock_buckets, r.user_id, r.quantity \
         FROM reservations r JOIN sales s ON s.id = r.sale_id \
         WHERE r.order_id = ANY($1) ORDER BY r.sale_id",
        [order_ids.to_vec().into()],
    ))
    .all(db)
    .await
}

/// Everything `verify` compares, computed by Postgres.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Ledger {
    /// Units of confirmed reservations whose order still holds stock (pending or paid).
    pub holding_units: i64,
    /// Units of confirmed reservations whose order was closed or cancelled.
    pub returned_units: i64,
    pub orders: i64,
    /// Buyers whose `sale_buyers.quantity` differs from their holding orders.
    pub buyer_mismatches: i64,
    /// Buyers above the per-user limit by their holding orders.
    pub over_limit: i64,
}

#[tracing::instrument(name = "SELECT sales", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "sales"))]
pub async fn ledger(db: &impl ConnectionTrait, sale_id: Uuid) -> Result<Ledger, DbErr> {
    let row = Ledger::find_by_statement(stmt(
        "WITH held AS ( \
             SELECT r.user_id, r.quantity, o.status FROM reservations r JOIN orders o ON o.id = r.order_id \
             WHERE r.sale_id = $1 AND r.status = 'confirmed'), \
         per_user AS ( \
             SELECT user_id, SUM(quantity) FILTER (WHERE status IN ('pending_payment', 'paid')) AS units \
             FROM held GROUP BY user_id) \
         SELECT \
             COALESCE((SELECT SUM(quantity) FROM held WHERE status IN ('pending_payment', 'paid')), 0)::bigint AS holding_units, \
             COALESCE((SELECT SUM(quantity) FROM held WHERE status IN ('closed', 'cancelled')), 0)::bigint AS returned_units, \
             (SELECT count(*) FROM held)::bigint AS orders, \
             (SELECT count(*) FROM (SELECT user_id, quantity FROM sale_buyers WHERE sale_id = $1 AND quantity <> 0) b \
              FULL JOIN (SELECT user_id, units FROM per_user WHERE units > 0) u USING (user_id) \
              WHERE COALESCE(b.quantity, 0) <> COALESCE(u.units, 0))::bigint AS buyer_mismatches, \
             (SELECT count(*) FROM per_user u JOIN sales s ON s.id = $1 WHERE u.units > s.per_user_limit)::bigint AS over_limit",
        [sale_id.into()],
    ))
    .one(db)
    .await?;
    row.ok_or_else(|| DbErr::RecordNotFound("sale ledger".into()))
}

/// Records that these orders' units went back to the sale in Postgres, at `version` (in
/// the close transaction that returned them).
pub async fn mark_returned(
    db: &impl ConnectionTrait,
    sale_id: Uuid,
    order_ids: &[Uuid],
    version: i64,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE reservations SET returned_at = now(), returned_version = $3 WHERE sale_id = $1 AND order_id = ANY($2)",
        [sale_id.into(), order_ids.to_vec().into(), version.into()],
    ))
    .await
    .map(|_| ())
}

/// Records that Redis was told of these orders' returns.
pub async fn mark_restocked(db: &impl ConnectionTrait, order_ids: &[Uuid]) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE reservations SET restocked_at = now() WHERE order_id = ANY($1) AND restocked_at IS NULL",
        [order_ids.to_vec().into()],
    ))
    .await
    .map(|_| ())
}

/// A return Redis has not been told of.
#[derive(Debug, Clone, FromQueryResult)]
pub struct DueReturn {
    pub sale_id: Uuid,
    pub stock_buckets: i32,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
    pub returned_version: i64,
}

/// Returns older than `older_than_ms` that Redis has not been told of (their `sale.restock`
/// message was lost or is stuck), oldest first.
pub async fn restocks_due(db: &impl ConnectionTrait, older_than_ms: i64, limit: u64) -> Result<Vec<DueReturn>, DbErr> {
    DueReturn::find_by_statement(stmt(
        "SELECT r.sale_id, s.stock_buckets::int AS stock_buckets, r.order_id, r.user_id, r.quantity, r.returned_version \
         FROM reservations r JOIN sales s ON s.id = r.sale_id \
         WHERE r.returned_at IS NOT NULL AND r.restocked_at IS NULL AND r.returned_version IS NOT NULL \
           AND r.returned_at < now() - make_interval(secs => $1::float8 / 1000) \
         ORDER BY r.returned_at LIMIT $2",
        [older_than_ms.into(), (limit as i64).into()],
    ))
    .all(db)
    .await
}

/// One sale order as `verify` checks its return.
#[derive(Debug, Clone, FromQueryResult)]
pub struct OrderReturn {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub status: String,
    pub returned: bool,
    pub returned_version: Option<i64>,
    pub restocked: bool,
    /// Redis not told for more than a minute.
    pub restock_overdue: bool,
}

/// Every confirmed reservation's order of the sale, with its return.
pub async fn order_returns(db: &impl ConnectionTrait, sale_id: Uuid) -> Result<Vec<OrderReturn>, DbErr> {
    OrderReturn::find_by_statement(stmt(
        "SELECT r.order_id, r.user_id, o.status, r.returned_at IS NOT NULL AS returned, r.returned_version, \
                r.restocked_at IS NOT NULL AS restocked, \
                COALESCE(r.restocked_at IS NULL AND r.returned_at < now() - interval '60 seconds', false) AS restock_overdue \
         FROM reservations r JOIN orders o ON o.id = r.order_id WHERE r.sale_id = $1",
        [sale_id.into()],
    ))
    .all(db)
    .await
}
