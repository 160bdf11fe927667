//! Second-chance offers: when an auction's current order leaves `pending_payment` unpaid
//! (closed at its payment deadline, or cancelled by its buyer), the lot goes to the
//! highest other bidder whose highest bid met the reserve, at that bid, with the same
//! payment timeout; then to the next, up to `auctions.second_chance_offers` offers. When
//! nobody is left (or offers are off, or the lot was bought now), the auction ends unsold.
//!
//! It runs in the transaction that moved the order out of `pending_payment`, and that move
//! happens once (a conditional UPDATE): a redelivered close message, the sweeper or a
//! racing cancel find nothing to move and so never make a second offer.

use domain::Money;
use platform::Redis;
use repo::cache::Keys;
use repo::cache::auctions as live;
use repo::db::auctions;
use sea_orm::DatabaseTransaction;
use uuid::Uuid;

use crate::closer::give_order;
use crate::error::Result;

/// Where a lot went when its current order was left unpaid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passed {
    Offered { auction_id: Uuid, winner: Uuid, price: Money, order_id: Uuid },
    Unsold { auction_id: Uuid },
}

/// Passes on the lots whose current order is one of `order_ids` (auction orders that just
/// left `pending_payment` unpaid, in `txn`). An order that is no auction's current order
/// (an earlier offer) passes nothing on.
pub(crate) async fn pass_on(txn: &DatabaseTransaction, order_ids: &[Uuid], max_offers: u32) -> Result<Vec<Passed>> {
    let mut passed = Vec::new();
    for order_id in order_ids {
        let Some(row) = auctions::lock_by_order(txn, *order_id).await? else { continue };
        let offers_made = auctions::orders_given(txn, row.id).await? - 1;
        let runner = if row.bought_now || offers_made >= i64::from(max_offers) {
            None
        } else {
            auctions::next_runner(txn, row.id, row.reserve_price).await?
        };
        passed.push(match runner {
            Some(runner) => {
                let price = Money::from_decimal(runner.amount);
                let order_id = give_order(txn, &row, runner.user_id, price).await?;
                tracing::info!(auction_id = %row.id, winner = %runner.user_id, %price, offer = offers_made + 1, "second-chance offer");
                Passed::Offered { auction_id: row.id, winner: runner.user_id, price, order_id }
            }
            None => {
                auctions::end_unsold(txn, row.id).await?;
                tracing::info!(auction_id = %row.id, "no order paid and no offer left: unsold");
                Passed::Unsold { auction_id: row.id }
            }
        });
    }
    Ok(passed)
}

/// Tells the watchers (after the commit): `second_chance` naming the new winner, or
/// `closed` with `unsold`.
pub(crate) async fn announce(redis: &Redis, keys: &Keys, passed: &[Passed]) {
    let mut redis = redis.clone();
    for change in passed {
        let (auction_id, sent) = match change {
            Passed::Offered { auction_id, winner, price, .. } => {
                metrics::counter!("auction_second_chance_total", "outcome" => "offered").increment(1);
                (*auction_id, live::announce_second_chance(&mut redis, keys, *auction_id, *winner, price.cents()).await)
            }
            Passed::Unsold { auction_id } => {
                metrics::counter!("auction_second_chance_total", "outcome" => "unsold").increment(1);
                (*auction_id, live::announce_close(&mut redis, keys, *auction_id, false, None, 0).await)
            }
        };
        if let Err(err) = sent {
            tracing::warn!(%auction_id, error = %err, "could not announce a second-chance change");
        }
    }
}
