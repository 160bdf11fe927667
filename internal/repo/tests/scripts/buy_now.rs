//! `buy_now.lua`: on offer until the first bid that meets the reserve, atomic against bids.

use repo::cache::auctions::{Bid, BuyNow, Close, Snapshot};
use uuid::Uuid;

use crate::{Lot, now_ms, open_lot};

#[tokio::test]
async fn buy_now_closes_the_lot_to_the_buyer_and_refuses_later_bids() {
    let mut lot = Lot::load(open_lot()).await;
    let buyer = Uuid::now_v7();
    assert_eq!(lot.buy_now(buyer, 5_000).await, BuyNow::Bought { generation: "g1".into() });
    assert!(matches!(lot.bid(Uuid::now_v7(), 9_000).await, Bid::Closed { .. }), "no bid after the purchase");
    let Close::Closed { leader, price_cents, sold, bought, seq, .. } = lot.close().await else { panic!("closed") };
    assert_eq!((leader, price_cents, sold, bought, seq), (Some(buyer), 5_000, true, true, 0));
    assert_eq!(lot.buy_now(buyer, 5_000).await, BuyNow::BoughtEarlier { generation: "g1".into() });
    assert_eq!(lot.buy_now(Uuid::now_v7(), 5_000).await, BuyNow::Unavailable);
}

#[tokio::test]
async fn without_a_reserve_the_first_bid_ends_the_offer() {
    let mut lot = Lot::load(open_lot()).await;
    assert!(matches!(lot.bid(Uuid::now_v7(), 1_000).await, Bid::Accepted { .. }));
    assert_eq!(lot.buy_now(Uuid::now_v7(), 5_000).await, BuyNow::Unavailable);
}

#[tokio::test]
async fn with_a_reserve_bids_below_it_leave_the_offer_open() {
    let mut lot = Lot::load(Snapshot { reserve_cents: 2_000, ..open_lot() }).await;
    assert!(matches!(lot.bid(Uuid::now_v7(), 1_999).await, Bid::Accepted { .. }));
    let mut other = Lot::load(Snapshot { reserve_cents: 2_000, ..open_lot() }).await;
    assert!(matches!(other.bid(Uuid::now_v7(), 2_000).await, Bid::Accepted { .. }));
    assert!(matches!(lot.buy_now(Uuid::now_v7(), 5_000).await, BuyNow::Bought { .. }), "reserve not met yet");
    assert_eq!(other.buy_now(Uuid::now_v7(), 5_000).await, BuyNow::Unavailable, "reserve met");
}

#[tokio::test]
async fn buy_now_is_not_on_offer_before_the_start_or_after_the_end() {
    let now = now_ms();
    let mut early = Lot::load(Snapshot { start_ms: now + 60_000, end_ms: now + 120_000, ..open_lot() }).await;
    assert_eq!(early.buy_now(Uuid::now_v7(), 5_000).await, BuyNow::Unavailable);
    let mut late = Lot::load(Snapshot { end_ms: now - 1, ..open_lot() }).await;
    assert_eq!(late.buy_now(Uuid::now_v7(), 5_000).await, BuyNow::Unavailable);
    let mut missing = Lot::empty().await;
    assert_eq!(missing.buy_now(Uuid::now_v7(), 5_000).await, BuyNow::Missing);
}
