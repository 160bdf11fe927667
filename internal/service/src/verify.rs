//! `spike-server verify`: the books of a sale or an auction, checked against Postgres and
//! Redis (docs/runbook.md lists the invariants).

use std::fmt;

use chrono::{DateTime, Utc};
use platform::Redis;
use repo::cache::Keys;
use repo::cache::auctions as live_state;
use repo::cache::barrier as barrier_marks;
use repo::cache::buckets::Bucket;
use repo::cache::returns;
use repo::cache::sales as hot;
use repo::db::{auctions, sales};
use rust_decimal::Decimal;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    pub what: String,
}

/// A list of checks; it passes when every check does.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub subject: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        self.checks.push(Check { ok, what: what.into() });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.subject)?;
        for check in &self.checks {
            writeln!(f, "  [{}] {}", if check.ok { " ok " } else { "FAIL" }, check.what)?;
        }
        write!(f, "{}", if self.passed() { "all invariants hold" } else { "INVARIANTS VIOLATED" })
    }
}

/// A flash sale: no oversell, stock accounted for in Postgres and in Redis, per-user limit
/// kept, closed orders returned their units exactly once.
pub async fn sale(db: &DatabaseConnection, redis: &Redis, keys: &Keys, sale_id: Uuid) -> Result<Report> {
    let sale = sales::find(db, sale_id).await?.ok_or(Error::NotFound("sale"))?;
    let ledger = sales::ledger(db, sale_id).await?;
    let (stock, left) = (i64::from(sale.stock), i64::from(sale.stock_left));
    let mut report =
        Report { subject: format!("flash sale {sale_id} ({}: {stock} units)", sale.title), checks: vec![] };

    report.check(
        ledger.holding_units <= stock,
        format!("no oversell: pending and paid orders hold {} of {stock} units", ledger.holding_units),
    );
    report.check(
        stock - left == ledger.holding_units,
        format!(
            "postgres: allocated {stock} - left {left} = {} units held by orders (closed and cancelled orders returned {} units, each once)",
            ledger.holding_units, ledger.returned_units
        ),
    );
    report.check(
        ledger.over_limit == 0,
        format!("per-user limit {}: {} buyer(s) above it", sale.per_user_limit, ledger.over_limit),
    );
    report.check(
        ledger.buyer_mismatches == 0,
        format!("buyer holdings match their orders ({} mismatch(es))", ledger.buyer_mismatches),
    );

    let of = sale.stock_buckets.clamp(1, 64) as u16;
    returned_once(&mut report, db, redis, keys, sale_id, of).await?;

    let mut moving = 0;
    if of > 1 {
        let rows = sales::bucket_stock(db, sale_id).await?;
        let sum: i64 = rows.iter().map(|&r| i64::from(r)).sum();
        report.check(
            rows.len() == usize::from(of) && sum == left,
            format!("postgres: {} bucket rows of {of} hold {sum} units = left {left}", rows.len()),
        );
        let mut per_bucket = Vec::new();
        let mut drained = true;
        for bucket in 0..of {
            let bucket_keys = keys.sale_bucket(sale_id, bucket);
            moving += hot::moves(&mut redis.clone(), &bucket_keys).await?.iter().map(|m| m.units).sum::<i64>();
            if let Some(state) = hot::inspect(&mut redis.clone(), &bucket_keys).await? {
                drained &= state.inflight.values().all(|&q| q == 0);
                per_bucket.push((bucket, state.stock, rows.get(usize::from(bucket)).copied().map(i64::from)));
            }
        }
        if drained && moving == 0 && per_bucket.len() == usize::from(of) {
            let wrong: Vec<String> = per_bucket
                .iter()
                .filter(|(_, redis, postgres)| Some(*redis) != *postgres)
                .map(|(bucket, redis, postgres)| format!("bucket {bucket}: redis {redis}, postgres {postgres:?}"))
                .collect();
            report.check(
                wrong.is_empty(),
                format!(
                    "every bucket: redis remaining = its postgres row ({})",
                    if wrong.is_empty() { "all agree".to_owned() } else { wrong.join(", ") }
                ),
            );
        } else {
            report.check(
                true,
                format!(
                    "buckets not compared one by one: {moving} unit(s) moving between buckets, or reservations queued"
                ),
            );
        }
    }

    match hot_state_or_rebuilt(redis, keys, sale_id, of).await? {
        None if (sale.start_at..sale.end_at).contains(&Utc::now()) => report.check(
            false,
            "redis: an active sale has no hot state (the next purchase rebuilds it from Postgres; verify again after one)",
        ),
        None => report.check(true, "redis: no hot state, and the sale is not active"),
        Some(state) => {
            let stuck = state.inflight_ids.iter().filter(|id| overdue(reserved_at(id))).count();
            report.check(
                stuck == 0,
                format!(
                    "no reservation in flight for more than {}s ({stuck} stuck: reserved, never confirmed or released)",
                    OVERDUE.num_seconds()
                ),
            );
            let queued: i64 = state.inflight.values().sum();
            report.check(
                ledger.holding_units + queued + moving == stock - state.stock,
                format!(
                    "redis: orders {} + queued reservations {queued} + units moving between buckets {moving} = allocated {stock} - remaining {}",
                    ledger.holding_units, state.stock
                ),
            );
            if queued == 0 && moving == 0 {
                report.check(
                    state.stock == left,
                    format!("drained: redis remaining {} = postgres left {left}", state.stock),
                );
            } else {
                report.check(true, format!("{queued} unit(s) still queued; compare again once drained"));
            }
            let pg_buyers: std::collections::HashMap<Uuid, i64> =
                sales::buyers(db, sale_id).await?.into_iter().map(|(u, q)| (u, i64::from(q))).collect();
            let mut mismatched = 0;
            let users: std::collections::HashSet<&Uuid> = pg_buyers.keys().chain(state.buyers.keys()).collect();
            for user in users {
                let expected =
                    pg_buyers.get(user).copied().unwrap_or(0) + state.inflight.get(user).copied().unwrap_or(0);
                if state.buyers.get(user).copied().unwrap_or(0) != expected {
                    mismatched += 1;
                }
            }
            report.check(
                mismatched == 0,
                format!("redis per-user counts = postgres holdings + queued ({mismatched} mismatch(es))"),
            );
        }
    }
    Ok(report)
}

/// Each closed or cancelled order gave its units back exactly once, order by order: in
/// Postgres (recorded by the close), and in Redis (by the restock script, unless the hot
/// state was loaded from a snapshot that already counts the return). A restock still on
/// its way is waited for a bounded time, then reported as in flight (or as stuck once
/// Redis has not been told for a minute).
async fn returned_once(
    report: &mut Report,
    db: &DatabaseConnection,
    redis: &Redis,
    keys: &Keys,
    sale_id: Uuid,
    of: u16,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    let mut looks = 0;
    let returns = loop {
        // Redis first: whatever it counts was closed in Postgres before. Bucket by bucket:
        // an order's units go back to its buyer's home bucket.
        let mut seen = Vec::new();
        for bucket in 0..of {
            seen.push(returns::returned(&mut redis.clone(), &keys.sale_bucket(sale_id, bucket)).await?);
        }
        let orders = sales::order_returns(db, sale_id).await?;
        let mut returns = Returns::default();
        for (bucket, (snap, in_redis)) in seen.iter().enumerate() {
            let mine: Vec<sales::OrderReturn> =
                orders.iter().filter(|o| usize::from(Bucket::home(o.user_id, of).index) == bucket).cloned().collect();
            returns.add(Returns::count(&mine, *snap, in_redis));
        }
        looks += 1;
        // A finding is looked at twice (a restock may have landed between the two reads);
        // work in flight is waited for.
        let settled = returns.in_flight == 0 && (returns.clean() || looks >= 2);
        if settled || tokio::time::Instant::now() >= deadline {
            break returns;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    report.check(
        returns.never == 0 && returns.while_held == 0,
        format!(
            "postgres: every closed or cancelled order returned its units once ({} never, {} while its order still holds them)",
            returns.never, returns.while_held
        ),
    );
    report.check(
        returns.missing == 0 && returns.twice == 0 && returns.stuck == 0,
        format!(
            "redis: every return counted once ({} never, {} twice, {} not told for over a minute)",
            returns.missing, returns.twice, returns.stuck
        ),
    );
    if returns.in_flight > 0 {
        report.check(true, format!("{} restock(s) still on their way to redis", returns.in_flight));
    }
    Ok(())
}

/// The per-order return findings of one look at Postgres and Redis.
#[derive(Debug, Default)]
struct Returns {
    never: usize,
    while_held: usize,
    missing: usize,
    twice: usize,
    stuck: usize,
    in_flight: usize,
}

impl Returns {
    fn count(orders: &[sales::OrderReturn], snap: Option<i64>, in_redis: &[Uuid]) -> Self {
        let mut found = Self::default();
        let in_redis: std::collections::HashSet<&Uuid> = in_redis.iter().collect();
        let mut finished = std::collections::HashSet::new();
        for order in orders {
            let done = matches!(order.status.as_str(), "closed" | "cancelled");
            if done {
                finished.insert(order.order_id);
            }
            match (done, order.returned) {
                (true, false) => found.never += 1,
                (false, true) => found.while_held += 1,
                _ => {}
            }
            let (Some(snap), Some(version), true) = (snap, order.returned_version, done) else { continue };
            let counted = in_redis.contains(&order.order_id);
            if version <= snap {
                // The snapshot counts it; the script must not have counted it again.
                found.twice += usize::from(counted);
            } else if !counted && order.restocked {
                found.missing += 1;
            } else if !counted && order.restock_overdue {
                found.stuck += 1;
            } else if !counted {
                found.in_flight += 1;
            }
        }
        if snap.is_some() {
            found.twice += in_redis.iter().filter(|id| !finished.contains(**id)).count();
        }
        found
    }

    fn add(&mut self, other: Returns) {
        self.never += other.never;
        self.while_held += other.while_held;
        self.missing += other.missing;
        self.twice += other.twice;
        self.stuck += other.stuck;
        self.in_flight += other.in_flight;
    }

    fn clean(&self) -> bool {
        self.never + self.while_held + self.missing + self.twice + self.stuck == 0
    }
}

/// The sale's hot state, waiting for it while a rebuild barrier is on its way: the state
/// then comes back once the reservations queued before the loss are processed, and that is
/// work in flight, not a fault. The wait is bounded by the barrier's own lifetime
/// (`sales.rebuild_barrier_timeout_ms`: its marker expires with it).
/// With several stock buckets: all of them summed (buyers are disjoint, each buyer has one
/// home bucket); `None` when one is missing.
async fn hot_state_or_rebuilt(redis: &Redis, keys: &Keys, sale_id: Uuid, of: u16) -> Result<Option<hot::HotState>> {
    let mut total = hot::HotState::default();
    for bucket in 0..of {
        let Some(state) = bucket_or_rebuilt(redis, keys, sale_id, bucket).await? else { return Ok(None) };
        total.stock += state.stock;
        total.buyers.extend(state.buyers);
        for (user, qty) in state.inflight {
            *total.inflight.entry(user).or_default() += qty;
        }
        total.inflight_ids.extend(state.inflight_ids);
    }
    Ok(Some(total))
}

async fn bucket_or_rebuilt(redis: &Redis, keys: &Keys, sale_id: Uuid, bucket: u16) -> Result<Option<hot::HotState>> {
    let barrier = keys.barrier_bucket(sale_id, bucket);
    loop {
        if let Some(state) = hot::inspect(&mut redis.clone(), &keys.sale_bucket(sale_id, bucket)).await? {
            return Ok(Some(state));
        }
        if barrier_marks::current(&mut redis.clone(), &barrier).await?.is_none() {
            return Ok(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// "12.00 by <user id>", or "no bid".
fn top_bid(amount: Option<Decimal>, user: Option<Uuid>) -> String {
    match (amount, user) {
        (Some(amount), Some(user)) => format!("{amount} by {user}"),
        _ => "no bid".to_owned(),
    }
}

/// How late work that normally takes well under a second may be before it counts as stuck:
/// a reservation still in flight, an auction still open past its end. Longer than any retry
/// delay and than the sweepers' intervals; an outage longer than this shows up here until
/// the pipeline has caught up.
const OVERDUE: chrono::Duration = chrono::Duration::seconds(60);

/// How long verify waits for work in flight (bids on their way to Postgres) to land.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn overdue(since: Option<DateTime<Utc>>) -> bool {
    since.is_some_and(|since| Utc::now() - since > OVERDUE)
}

/// When a reservation was made: its id is a UUIDv7, which carries its creation time.
fn reserved_at(id: &Uuid) -> Option<DateTime<Utc>> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(secs as i64, nanos)
}

/// An auction: every accepted bid persisted, `seq` without gaps, prices strictly rising
/// (but for the tie of proxy bidding), automatic bids by the rule, no maximum exceeded, the
/// leader holding the highest maximum, the winner holding the highest bid (or a
/// second-chance offer's bid, or the buy-now price), at most one order pending or paid.
/// Maximums are compared, never printed.
pub async fn auction(db: &DatabaseConnection, redis: &Redis, keys: &Keys, auction_id: Uuid) -> Result<Report> {
    let row = auctions::find(db, auction_id).await?.ok_or(Error::NotFound("auction"))?;
    let live = live_state::live(&mut redis.clone(), keys, auction_id).await?;
    // A bid accepted in Redis is being written to Postgres (its 201 waits for that): wait a
    // bounded time for writes in flight rather than report them as lost.
    let accepted = live.as_ref().map_or(0, |live| live.seq);
    let mut ledger = auctions::ledger(db, auction_id).await?;
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    while ledger.bids < accepted && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        ledger = auctions::ledger(db, auction_id).await?;
    }
    let mut report =
        Report { subject: format!("auction {auction_id} ({}, {})", row.title, row.status), checks: vec![] };

    live_state_matches_postgres(&mut report, redis, keys, &row, &ledger).await?;
    report.check(
        ledger.bids == ledger.max_seq,
        format!("seq has no gaps: {} bids, highest seq {}", ledger.bids, ledger.max_seq),
    );
    report.check(
        ledger.not_rising == 0,
        format!(
            "prices strictly rise with seq, but for a tie answered at the leader's maximum ({} bid(s) out of line)",
            ledger.not_rising
        ),
    );
    report.check(
        ledger.off_rule == 0,
        format!(
            "automatic bids answer another bidder at the lower of the maximum and that bid + the increment ({} do not)",
            ledger.off_rule
        ),
    );
    report.check(ledger.over_max == 0, format!("no maximum exceeded: {} bid(s) above their maximum", ledger.over_max));
    report
        .check(ledger.top_max == ledger.highest_max, "the leader holds the highest maximum (the amounts stay private)");
    let reserve_met = match (ledger.top_amount, row.reserve_price) {
        (Some(top), Some(reserve)) => top >= reserve,
        (top, None) => top.is_some(),
        (None, Some(_)) => false,
    };
    if row.status == "open" {
        report.check(
            !overdue(Some(row.end_at)),
            format!("an open auction is not past its end by more than {}s (end {})", OVERDUE.num_seconds(), row.end_at),
        );
    }
    let orders = auctions::orders_of(db, auction_id).await?;
    if row.bought_now {
        check_bought_now(&mut report, &row, &orders, reserve_met);
    } else {
        let highest = auctions::highest_bids(db, auction_id).await?;
        check_offers(&mut report, &row, &ledger, &orders, &highest, reserve_met);
    }
    Ok(report)
}

/// A buy-now: only while no bid had met the reserve, one order at the buy-now price to
/// the winner, and no second chance (unpaid, it ends unsold).
fn check_bought_now(report: &mut Report, row: &auctions::AuctionRow, orders: &[auctions::LotOrder], reserve_met: bool) {
    report.check(!reserve_met, "bought now: no bid had met the reserve (the first bid, without one)");
    let one = match orders {
        [only] => only.total == row.buy_now_price.unwrap_or_default(),
        _ => false,
    };
    report.check(
        one,
        format!("bought now: one order, at the buy-now price {:?} ({} order(s))", row.buy_now_price, orders.len()),
    );
    if let (Some(order), "sold") = (orders.first(), row.status.as_str()) {
        report.check(
            row.winner_id == Some(order.user_id) && row.final_price == Some(order.total),
            format!("the buyer {:?} holds the order at {:?}", row.winner_id, row.final_price),
        );
    }
}

/// A lot won by bidding: the first order is the top bidder's at the top bid; each later
/// one (a second-chance offer, after the one before closed unpaid) goes to another bidder
/// at their own highest bid, which met the reserve. Only the last may be pending or paid,
/// and it is the auction's current order while sold; unsold means none is.
fn check_offers(
    report: &mut Report,
    row: &auctions::AuctionRow,
    ledger: &auctions::BidLedger,
    orders: &[auctions::LotOrder],
    highest: &[auctions::Runner],
    reserve_met: bool,
) {
    if let Some(first) = orders.first() {
        report.check(
            Some(first.user_id) == ledger.top_user && Some(first.total) == ledger.top_amount,
            format!(
                "the first order is the top bid's ({} at {}, top bid {:?} at {:?})",
                first.user_id, first.total, ledger.top_user, ledger.top_amount
            ),
        );
    }
    let reserve = row.reserve_price.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    for (i, order) in orders.iter().enumerate() {
        let best = highest.iter().find(|h| h.user_id == order.user_id).map(|h| h.amount);
        report.check(
            best == Some(order.total) && order.total >= reserve && seen.insert(order.user_id),
            format!("order {} goes to a new bidder at their highest bid, at or above the reserve ({} at {}, highest {best:?})", i + 1, order.user_id, order.total),
        );
        let last = i + 1 == orders.len();
        report.check(
            last || matches!(order.status.as_str(), "closed" | "cancelled"),
            format!("order {} passed on only once unpaid ({})", i + 1, order.status),
        );
    }
    let live = orders.last().filter(|o| matches!(o.status.as_str(), "pending_payment" | "paid"));
    match row.status.as_str() {
        "sold" => report.check(
            reserve_met
                && live.is_some_and(|o| {
                    row.order_id == Some(o.id) && row.winner_id == Some(o.user_id) && row.final_price == Some(o.total)
                }),
            format!(
                "sold: the winner {:?} holds the live order {:?} at {:?}",
                row.winner_id, row.order_id, row.final_price
            ),
        ),
        "unsold" if orders.is_empty() => report.check(
            !reserve_met,
            format!(
                "unsold: no bid met the reserve (top bid {:?}, reserve {:?})",
                ledger.top_amount, row.reserve_price
            ),
        ),
        "unsold" => report.check(
            live.is_none(),
            format!("unsold: none of its {} order(s) is pending or paid (every offer lapsed)", orders.len()),
        ),
        _ => report.check(orders.is_empty(), format!("not sold: no order ({})", orders.len())),
    }
}

/// Every answered bid is written before its answer, so Redis's live state (when it has one)
/// and the auction row must both agree with the bids table: the same count and the same last
/// bid. A bid lost on its way, or a `seq` handed out twice (one of the two bids dropped),
/// shows up here as a disagreement.
async fn live_state_matches_postgres(
    report: &mut Report,
    redis: &Redis,
    keys: &Keys,
    row: &auctions::AuctionRow,
    ledger: &auctions::BidLedger,
) -> Result<()> {
    report.check(
        i64::from(row.bid_count) == ledger.bids,
        format!("the auction row counts {} bids, postgres has {}", row.bid_count, ledger.bids),
    );
    match live_state::live(&mut redis.clone(), keys, row.id).await? {
        // A buy-now made the buyer the leader at its price: only the count must agree.
        Some(live) if row.bought_now => report.check(
            live.seq == ledger.bids,
            format!(
                "every bid redis accepted is in postgres: redis at seq {}, postgres at seq {}",
                live.seq, ledger.bids
            ),
        ),
        Some(live) => {
            let price = (live.seq > 0).then(|| domain::Money::from_cents(live.price_cents).decimal());
            let leader = live.leader.filter(|_| live.seq > 0);
            // The leader's maximum, while bids may still come: a closed state's leader and
            // price may be a buy-now's, with no maximum behind it. A state loaded before
            // maximums existed has none (0).
            if !live.closed && live.seq > 0 {
                report.check(
                    live.max_cents == 0 || live.max_cents >= live.price_cents,
                    "no maximum exceeded: redis's leader maximum is at least the price",
                );
                let max = domain::Money::from_cents(live.max_cents.max(live.price_cents)).decimal();
                report.check(
                    Some(max) == ledger.top_max,
                    "redis holds the leader's maximum that postgres has behind the top bid",
                );
            }
            report.check(
                live.seq == ledger.bids && price == ledger.top_amount && leader == ledger.top_user,
                format!(
                    "every bid redis accepted is in postgres: redis at seq {} ({}), postgres at seq {} ({})",
                    live.seq,
                    top_bid(price, leader),
                    ledger.bids,
                    top_bid(ledger.top_amount, ledger.top_user)
                ),
            );
        }
        None => report.check(true, "redis: no live state (rebuilt from Postgres when needed)"),
    }
    Ok(())
}
