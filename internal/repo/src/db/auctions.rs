//! The `auctions` and `bids` tables: the definition of each auction, its bid history
//! (every bid is written here before it is answered) and a copy of its live state.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};
use uuid::Uuid;

use super::{Page, scalar, stmt};

#[derive(Debug, Clone, FromQueryResult)]
pub struct AuctionRow {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub start_price: Decimal,
    pub min_increment: Decimal,
    pub reserve_price: Option<Decimal>,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub extend_window_secs: i32,
    pub extend_by_secs: i32,
    pub payment_timeout_secs: i32,
    /// `open`, `sold` or `unsold`.
    pub status: String,
    pub current_price: Option<Decimal>,
    pub leader_id: Option<Uuid>,
    pub bid_count: i32,
    pub winner_id: Option<Uuid>,
    pub final_price: Option<Decimal>,
    pub order_id: Option<Uuid>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The Redis live state whose bids may be written (see [`append_bids`]).
    pub bid_generation: String,
    pub buy_now_price: Option<Decimal>,
    /// Sold by buy-it-now (its order gets no second-chance offer).
    pub bought_now: bool,
}

const COLUMNS: &str = "id, title, description, start_price, min_increment, reserve_price, start_at, end_at, \
     extend_window_secs, extend_by_secs, payment_timeout_secs, status, current_price, leader_id, bid_count, \
     winner_id, final_price, order_id, closed_at, bid_generation, buy_now_price, bought_now";

pub struct NewAuction<'a> {
    pub id: Uuid,
    pub title: &'a str,
    pub description: &'a str,
    pub start_price: Decimal,
    pub min_increment: Decimal,
    pub reserve_price: Option<Decimal>,
    pub buy_now_price: Option<Decimal>,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub extend_window_secs: i32,
    pub extend_by_secs: i32,
    pub payment_timeout_secs: i32,
}

#[tracing::instrument(name = "INSERT auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "auctions"))]
pub async fn insert(db: &impl ConnectionTrait, new: &NewAuction<'_>) -> Result<AuctionRow, DbErr> {
    let row = AuctionRow::find_by_statement(stmt(
        &format!(
            "INSERT INTO auctions (id, title, description, start_price, min_increment, reserve_price, start_at, end_at, \
             extend_window_secs, extend_by_secs, payment_timeout_secs, buy_now_price) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
        ),
        [
            new.id.into(),
            new.title.into(),
            new.description.into(),
            new.start_price.into(),
            new.min_increment.into(),
            new.reserve_price.into(),
            new.start_at.into(),
            new.end_at.into(),
            new.extend_window_secs.into(),
            new.extend_by_secs.into(),
            new.payment_timeout_secs.into(),
            new.buy_now_price.into(),
        ],
    ))
    .one(db)
    .await?;
    row.ok_or_else(|| DbErr::RecordNotInserted)
}

#[tracing::instrument(name = "SELECT auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "auctions"))]
pub async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<AuctionRow>, DbErr> {
    AuctionRow::find_by_statement(stmt(&format!("SELECT {COLUMNS} FROM auctions WHERE id = $1"), [id.into()]))
        .one(db)
        .await
}

/// All auctions, newest start first; or with `current`, only open ones (scheduled or
/// live), soonest end first.
#[tracing::instrument(name = "SELECT auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "auctions"))]
pub async fn list(
    db: &impl ConnectionTrait,
    offset: u64,
    limit: u64,
    current: bool,
) -> Result<Page<AuctionRow>, DbErr> {
    let (filter, order) = if current { ("WHERE status = 'open'", "end_at ASC") } else { ("", "start_at DESC") };
    let items = AuctionRow::find_by_statement(stmt(
        &format!("SELECT {COLUMNS} FROM auctions {filter} ORDER BY {order}, id LIMIT $1 OFFSET $2"),
        [(limit as i64).into(), (offset as i64).into()],
    ))
    .all(db)
    .await?;
    let total = scalar(db, &format!("SELECT count(*) FROM auctions {filter}"), []).await?;
    Ok(Page { items, total: total as u64 })
}

/// The auction, its row locked until the transaction ends: a rebuild holds it while it
/// reads the bids and sets the new generation, so no bid write falls in between.
#[tracing::instrument(name = "SELECT auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "auctions"))]
pub async fn lock(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<AuctionRow>, DbErr> {
    AuctionRow::find_by_statement(stmt(
        &format!("SELECT {COLUMNS} FROM auctions WHERE id = $1 FOR UPDATE"),
        [id.into()],
    ))
    .one(db)
    .await
}

/// From now on only bids of live state `generation` may be written.
#[tracing::instrument(name = "UPDATE auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "auctions"))]
pub async fn set_generation(db: &impl ConnectionTrait, id: Uuid, generation: &str) -> Result<(), DbErr> {
    db.execute_raw(stmt("UPDATE auctions SET bid_generation = $2 WHERE id = $1", [id.into(), generation.into()]))
        .await
        .map(|_| ())
}

/// Open auctions whose end passed more than `grace_ms` ago (the sweeper's backstop).
#[tracing::instrument(name = "SELECT auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "auctions"))]
pub async fn overdue(db: &impl ConnectionTrait, grace_ms: i64) -> Result<Vec<Uuid>, DbErr> {
    ids(
        db,
        "SELECT id FROM auctions WHERE status = 'open' AND end_at < now() - $1 * interval '1 millisecond' LIMIT 100",
        [grace_ms.into()],
    )
    .await
}

/// A bid accepted by Redis, to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBid {
    pub seq: i64,
    pub user_id: Uuid,
    pub amount: Decimal,
    /// The bidder's maximum behind the bid (the amount for a plain bid); never shown to others.
    pub max_amount: Decimal,
    /// The site's automatic raise for the leader (proxy bidding).
    pub auto: bool,
    pub end_at: DateTime<Utc>,
    pub placed_at: DateTime<Utc>,
}

/// What [`append_bids`] found when it wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Append {
    Written,
    /// The row's generation and bid count: an earlier bid is still on its way
    /// (`bid_count` below the first seq - 1), or these bids belong to a state that has been
    /// rebuilt (another generation), or they are in already (a retry).
    Refused {
        generation: String,
        bid_count: i64,
    },
}

/// Writes bids `first..=last` (consecutive, oldest first) of live state `generation`, in
/// one statement: only when the auction still takes that generation and has exactly the
/// bids before `first`. So the history never gets a gap or a second bid for one seq, and a
/// rebuilt state's predecessor cannot write behind its back. The row lock also orders
/// concurrent writers: the next one waits for this commit, then sees the new count.
#[tracing::instrument(name = "INSERT bids", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "INSERT", db.collection.name = "bids"))]
pub async fn append_bids(
    db: &impl ConnectionTrait,
    auction_id: Uuid,
    generation: &str,
    bids: &[NewBid],
) -> Result<Append, DbErr> {
    let (Some(first), Some(top)) = (bids.first(), bids.last()) else { return Ok(Append::Written) };
    let seqs: Vec<i64> = bids.iter().map(|b| b.seq).collect();
    let users: Vec<Uuid> = bids.iter().map(|b| b.user_id).collect();
    let amounts: Vec<Decimal> = bids.iter().map(|b| b.amount).collect();
    let ends: Vec<DateTime<Utc>> = bids.iter().map(|b| b.end_at).collect();
    let placed: Vec<DateTime<Utc>> = bids.iter().map(|b| b.placed_at).collect();
    let maxima: Vec<Decimal> = bids.iter().map(|b| b.max_amount).collect();
    let autos: Vec<bool> = bids.iter().map(|b| b.auto).collect();
    let written = db
        .execute_raw(stmt(
            "WITH moved AS ( \
                 UPDATE auctions SET current_price = $7, leader_id = $8, bid_count = $9, \
                        end_at = GREATEST(end_at, $10), updated_at = now() \
                 WHERE id = $1 AND bid_generation = $11 AND bid_count = $12 RETURNING id) \
             INSERT INTO bids (auction_id, seq, user_id, amount, end_at, placed_at, max_amount, auto) \
             SELECT $1, seq, user_id, amount, end_at, placed_at, max_amount, auto \
             FROM unnest($2::bigint[], $3::uuid[], $4::numeric[], $5::timestamptz[], $6::timestamptz[], \
                         $13::numeric[], $14::boolean[]) \
                  AS b(seq, user_id, amount, end_at, placed_at, max_amount, auto) \
             WHERE EXISTS (SELECT 1 FROM moved)",
            [
                auction_id.into(),
                seqs.into(),
                users.into(),
                amounts.into(),
                ends.into(),
                placed.into(),
                top.amount.into(),
                top.user_id.into(),
                (top.seq as i32).into(),
                top.end_at.into(),
                generation.into(),
                ((first.seq - 1) as i32).into(),
                maxima.into(),
                autos.into(),
            ],
        ))
        .await?;
    if written.rows_affected() == bids.len() as u64 {
        return Ok(Append::Written);
    }
    fence(db, auction_id).await
}

/// Raises the maximum behind bid `seq` (the leader's, in live state `generation`) to
/// `max_amount`: the leader raised its own maximum without bidding. Like [`append_bids`] it
/// moves the auction row, so it is ordered with a rebuild (which then reads the raised
/// maximum, or has switched the generation and this is refused), and it needs the bid
/// written first (`bid_count` at least `seq`; below, that bid is still on its way).
pub async fn raise_max(
    db: &impl ConnectionTrait,
    auction_id: Uuid,
    generation: &str,
    seq: i64,
    user_id: Uuid,
    max_amount: Decimal,
) -> Result<Append, DbErr> {
    let raised = db
        .execute_raw(stmt(
            "WITH fence AS ( \
                 UPDATE auctions SET updated_at = now() \
                 WHERE id = $1 AND bid_generation = $2 AND bid_count >= $3 RETURNING id) \
             UPDATE bids SET raised_max = GREATEST(COALESCE(raised_max, max_amount), $5) \
             WHERE auction_id = $1 AND seq = $3 AND user_id = $4 AND EXISTS (SELECT 1 FROM fence)",
            [auction_id.into(), generation.into(), (seq as i32).into(), user_id.into(), max_amount.into()],
        ))
        .await?;
    if raised.rows_affected() == 1 {
        return Ok(Append::Written);
    }
    fence(db, auction_id).await
}

async fn fence(db: &impl ConnectionTrait, auction_id: Uuid) -> Result<Append, DbErr> {
    #[derive(FromQueryResult)]
    struct Fence {
        bid_generation: String,
        bid_count: i32,
    }
    let fence = Fence::find_by_statement(stmt(
        "SELECT bid_generation, bid_count FROM auctions WHERE id = $1",
        [auction_id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound(format!("auction {auction_id}")))?;
    Ok(Append::Refused { generation: fence.bid_generation, bid_count: i64::from(fence.bid_count) })
}

/// The written bids with seqs `from..=to`, oldest first (to tell a retry that is in
/// already from a bid that was refused).
#[tracing::instrument(name = "SELECT bids", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "bids"))]
pub async fn bids_between(
    db: &impl ConnectionTrait,
    auction_id: Uuid,
    from: i64,
    to: i64,
) -> Result<Vec<BidRow>, DbErr> {
    BidRow::find_by_statement(stmt(
        &format!("SELECT {BID_COLUMNS} FROM bids WHERE auction_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq"),
        [auction_id.into(), from.into(), to.into()],
    ))
    .all(db)
    .await
}

/// How an auction ended, for [`finish`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sold: bool,
    pub winner: Option<Uuid>,
    pub final_price: Option<Decimal>,
    pub end_at: DateTime<Utc>,
    /// Bought now from live state `generation`: recorded only while Postgres still takes
    /// that state's bids (a rebuilt state never saw the purchase), and the end becomes now.
    pub bought_in: Option<String>,
}

/// Records the outcome, once: only an `open` auction moves. Returns the row if it moved.
#[tracing::instrument(name = "UPDATE auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "auctions"))]
pub async fn finish(db: &impl ConnectionTrait, id: Uuid, outcome: &Outcome) -> Result<Option<AuctionRow>, DbErr> {
    AuctionRow::find_by_statement(stmt(
        &format!(
            "UPDATE auctions SET status = $2, winner_id = $3, final_price = $4, \
             end_at = CASE WHEN $6::text IS NULL THEN GREATEST(end_at, $5) \
             ELSE GREATEST(now(), start_at + interval '1 millisecond') END, \
             bought_now = $6::text IS NOT NULL, closed_at = now(), updated_at = now() \
             WHERE id = $1 AND status = 'open' AND ($6::text IS NULL OR bid_generation = $6::text) \
             RETURNING {COLUMNS}"
        ),
        [
            id.into(),
            (if outcome.sold { "sold" } else { "unsold" }).into(),
            outcome.winner.into(),
            outcome.final_price.into(),
            outcome.end_at.into(),
            outcome.bought_in.clone().into(),
        ],
    ))
    .one(db)
    .await
}

/// Makes `order_id` the auction's current order, for `winner` at `price`, and links it
/// both ways. The partial unique index on `orders.auction_id` makes a second pending or
/// paid order for one auction impossible.
#[tracing::instrument(name = "UPDATE auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "auctions"))]
pub async fn set_order(
    db: &impl ConnectionTrait,
    id: Uuid,
    order_id: Uuid,
    winner: Uuid,
    price: Decimal,
) -> Result<(), DbErr> {
    db.execute_raw(stmt("UPDATE orders SET auction_id = $1 WHERE id = $2", [id.into(), order_id.into()])).await?;
    db.execute_raw(stmt(
        "UPDATE auctions SET order_id = $2, winner_id = $3, final_price = $4, updated_at = now() WHERE id = $1",
        [id.into(), order_id.into(), winner.into(), price.into()],
    ))
    .await
    .map(|_| ())
}

/// The auction whose current order is `order_id`, its row locked until the transaction
/// ends (an earlier, passed-on order is no auction's current order any more).
#[tracing::instrument(name = "SELECT auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "auctions"))]
pub async fn lock_by_order(db: &impl ConnectionTrait, order_id: Uuid) -> Result<Option<AuctionRow>, DbErr> {
    AuctionRow::find_by_statement(stmt(
        &format!("SELECT {COLUMNS} FROM auctions WHERE order_id = $1 FOR UPDATE"),
        [order_id.into()],
    ))
    .one(db)
    .await
}

/// Orders the auction has given so far: the winner's and one per second-chance offer.
#[tracing::instrument(name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "orders"))]
pub async fn orders_given(db: &impl ConnectionTrait, id: Uuid) -> Result<i64, DbErr> {
    scalar(db, "SELECT count(*) FROM orders WHERE auction_id = $1", [id.into()]).await
}

/// A bidder's highest bid.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Runner {
    pub user_id: Uuid,
    pub amount: Decimal,
}

/// The bidder a second-chance offer goes to: the highest highest-bid (the earlier one on a
/// tie) at or above the reserve, among the bidders who have had no order for this lot.
#[tracing::instrument(name = "SELECT bids", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "bids"))]
pub async fn next_runner(
    db: &impl ConnectionTrait,
    id: Uuid,
    reserve: Option<Decimal>,
) -> Result<Option<Runner>, DbErr> {
    Runner::find_by_statement(stmt(
        "SELECT user_id, amount FROM ( \
             SELECT DISTINCT ON (user_id) user_id, amount, seq FROM bids WHERE auction_id = $1 \
             ORDER BY user_id, amount DESC, seq) best \
         WHERE amount >= COALESCE($2, 0) \
           AND user_id NOT IN (SELECT user_id FROM orders WHERE auction_id = $1) \
         ORDER BY amount DESC, seq LIMIT 1",
        [id.into(), reserve.into()],
    ))
    .one(db)
    .await
}

/// No order of the auction was paid and no offer is left: it ends unsold.
#[tracing::instrument(name = "UPDATE auctions", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "UPDATE", db.collection.name = "auctions"))]
pub async fn end_unsold(db: &impl ConnectionTrait, id: Uuid) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE auctions SET status = 'unsold', winner_id = NULL, final_price = NULL, order_id = NULL, \
         updated_at = now() WHERE id = $1",
        [id.into()],
    ))
    .await
    .map(|_| ())
}

#[derive(Debug, Clone, FromQueryResult)]
pub struct BidRow {
    pub seq: i64,
    pub user_id: Uuid,
    pub amount: Decimal,
    /// Only the service reads it (to rebuild the leader's maximum); the API never shows it.
    pub max_amount: Decimal,
    pub auto: bool,
    pub end_at: DateTime<Utc>,
    pub placed_at: DateTime<Utc>,
}

/// `max_amount` is the bidder's maximum now: a leader's later raise of it included.
const BID_COLUMNS: &str =
    "seq, user_id, amount, COALESCE(raised_max, max_amount) AS max_amount, auto, end_at, placed_at";

/// Newest first.
#[tracing::instrument(name = "SELECT bids", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "bids"))]
pub async fn bids(db: &impl ConnectionTrait, auction_id: Uuid, offset: u64, limit: u64) -> Result<Page<BidRow>, DbErr> {
    let items = BidRow::find_by_statement(stmt(
        &format!("SELECT {BID_COLUMNS} FROM bids WHERE auction_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3"),
        [auction_id.into(), (limit as i64).into(), (offset as i64).into()],
    ))
    .all(db)
    .await?;
    let total = scalar(db, "SELECT count(*) FROM bids WHERE auction_id = $1", [auction_id.into()]).await?;
    Ok(Page { items, total: total as u64 })
}

/// The highest persisted bid (for a rebuild after Redis lost the live state): its
/// `max_amount` is the leader's maximum.
#[tracing::instrument(name = "SELECT bids", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "bids"))]
pub async fn top_bid(db: &impl ConnectionTrait, auction_id: Uuid) -> Result<Option<BidRow>, DbErr> {
    BidRow::find_by_statement(stmt(
        &format!("SELECT {BID_COLUMNS} FROM bids WHERE auction_id = $1 ORDER BY seq DESC LIMIT 1"),
        [auction_id.into()],
    ))
    .one(db)
    .await
}

/// An order the auction gave (the winner's, or a second-chance offer's).
#[derive(Debug, Clone, FromQueryResult)]
pub struct LotOrder {
    pub id: Uuid,
    pub user_id: Uuid,
    pub total: Decimal,
    pub status: String,
}

/// The auction's orders, oldest first.
#[tracing::instrument(name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "orders"))]
pub async fn orders_of(db: &impl ConnectionTrait, id: Uuid) -> Result<Vec<LotOrder>, DbErr> {
    LotOrder::find_by_statement(stmt(
        "SELECT id, user_id, total, status FROM orders WHERE auction_id = $1 ORDER BY created_at, id",
        [id.into()],
    ))
    .all(db)
    .await
}

/// Every bidder's highest bid.
#[tracing::instrument(name = "SELECT bids", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "bids"))]
pub async fn highest_bids(db: &impl ConnectionTrait, id: Uuid) -> Result<Vec<Runner>, DbErr> {
    Runner::find_by_statement(stmt(
        "SELECT user_id, max(amount) AS amount FROM bids WHERE auction_id = $1 GROUP BY user_id",
        [id.into()],
    ))
    .all(db)
    .await
}

/// What `verify --auction` checks, computed by Postgres.
#[derive(Debug, Clone, FromQueryResult)]
pub struct BidLedger {
    pub bids: i64,
    pub max_seq: i64,
    /// Bids whose amount is not above the previous one's, other than the tie of proxy
    /// bidding (an automatic answer at its maximum, equal to the bid it answers).
    pub not_rising: i64,
    /// Automatic bids that do not follow the rule: the leader answering someone else's bid
    /// at the lower of its maximum and that bid + the minimum increment.
    pub off_rule: i64,
    /// Bids above the bidder's maximum behind them.
    pub over_max: i64,
    pub top_amount: Option<Decimal>,
    pub top_user: Option<Uuid>,
    /// The leader's maximum (behind the top bid), and the highest maximum of anyone.
    pub top_max: Option<Decimal>,
    pub highest_max: Option<Decimal>,
    pub orders: i64,
}

#[tracing::instrument(name = "SELECT bids", skip_all, fields(otel.kind = "client", db.system.name = "postgresql",
    db.operation.name = "SELECT", db.collection.name = "bids"))]
pub async fn ledger(db: &impl ConnectionTrait, auction_id: Uuid) -> Result<BidLedger, DbErr> {
    let row = BidLedger::find_by_statement(stmt(
        "WITH b AS (SELECT amount, max_amount, auto, user_id, \
                           lag(amount) OVER (ORDER BY seq) AS previous, \
                           lag(user_id) OVER (ORDER BY seq) AS previous_user \
                    FROM bids WHERE auction_id = $1) \
         SELECT (SELECT count(*) FROM bids WHERE auction_id = $1) AS bids, \
                COALESCE((SELECT max(seq) FROM bids WHERE auction_id = $1), 0) AS max_seq, \
                (SELECT count(*) FROM b WHERE previous IS NOT NULL AND (amount < previous OR \
                    (amount = previous AND NOT (auto AND amount = max_amount AND user_id <> previous_user)))) \
                    AS not_rising, \
                (SELECT count(*) FROM b WHERE auto AND (previous IS NULL OR user_id = previous_user OR \
                    amount <> LEAST(max_amount, previous + (SELECT min_increment FROM auctions WHERE id = $1)))) \
                    AS off_rule, \
                (SELECT count(*) FROM b WHERE amount > max_amount) AS over_max, \
                (SELECT amount FROM bids WHERE auction_id = $1 ORDER BY seq DESC LIMIT 1) AS top_amount, \
                (SELECT user_id FROM bids WHERE auction_id = $1 ORDER BY seq DESC LIMIT 1) AS top_user, \
                (SELECT COALESCE(raised_max, max_amount) FROM bids WHERE auction_id = $1 ORDER BY seq DESC LIMIT 1) \
                    AS top_max, \
                (SELECT max(COALESCE(raised_max, max_amount)) FROM bids WHERE auction_id = $1) AS highest_max, \
                (SELECT count(*) FROM orders WHERE auction_id = $1) AS orders",
        [auction_id.into()],
    ))
    .one(db)
    .await?;
    row.ok_or_else(|| DbErr::RecordNotFound("auction ledger".into()))
}

async fn ids(
    db: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> Result<Vec<Uuid>, DbErr> {
    #[derive(FromQueryResult)]
    struct Id {
        id: Uuid,
    }
    Ok(Id::find_by_statement(stmt(sql, values)).all(db).await?.into_iter().map(|r| r.id).collect())
}
