//! `close_auction.lua`: when an auction ends, and whether it sold.

use repo::cache::auctions::{Accepted, Bid, Close, Snapshot};
use uuid::Uuid;

use crate::{Lot, now_ms, open_lot};

/// An auction whose end has passed, with `price_cents` bid by `leader` (0: no bid).
fn ended(price_cents: i64, reserve_cents: i64) -> (Snapshot, Option<Uuid>) {
    let leader = (price_cents > 0).then(Uuid::now_v7);
    let snapshot = Snapshot {
        price_cents,
        leader,
        seq: i64::from(price_cents > 0),
        reserve_cents,
        end_ms: now_ms() - 1,
        ..open_lot()
    };
    (snapshot, leader)
}

#[tokio::test]
async fn an_auction_does_not_close_before_its_end() {
    let end_ms = now_ms() + 60_000;
    let mut lot = Lot::load(Snapshot { end_ms, ..open_lot() }).await;
    assert_eq!(lot.close().await, Close::NotYet { end_ms });
    assert!(matches!(lot.bid(Uuid::now_v7(), 1_000).await, Bid::Accepted(Accepted { .. })), "still open");
}

#[tokio::test]
async fn the_highest_bid_wins_once_the_end_has_passed() {
    let (snapshot, leader) = ended(1_500, 0);
    let end_ms = snapshot.end_ms;
    let mut lot = Lot::load(snapshot).await;
    let generation = "g1".to_owned();
    assert_eq!(
        lot.close().await,
        Close::Closed { price_cents: 1_500, leader, seq: 1, end_ms, sold: true, generation, bought: false }
    );
    assert!(lot.live().await.closed);
}

#[tokio::test]
async fn no_bid_or_a_reserve_not_met_means_unsold() {
    for (price_cents, reserve_cents, sold) in [(0, 0, false), (0, 500, false), (499, 500, false), (500, 500, true)] {
        let (snapshot, _) = ended(price_cents, reserve_cents);
        let mut lot = Lot::load(snapshot).await;
        let Close::Closed { sold: outcome, .. } = lot.close().await else { panic!("closed") };
        assert_eq!(outcome, sold, "price {price_cents}, reserve {reserve_cents}");
    }
}

#[tokio::test]
async fn closing_again_answers_the_same_and_no_bid_gets_in_after_the_close() {
    let (snapshot, _) = ended(1_200, 0);
    let mut lot = Lot::load(snapshot).await;
    let first = lot.close().await;
    assert_eq!(lot.close().await, first);
    assert!(matches!(lot.bid(Uuid::now_v7(), 5_000).await, Bid::Closed { price_cents: 1_200 }));
}

#[tokio::test]
async fn a_lot_without_live_state_asks_for_a_rebuild() {
    let mut lot = Lot::empty().await;
    assert_eq!(lot.close().await, Close::Missing);
}
