//! `place_bid.lua` with maximums (proxy bidding): who leads, at which price, and which bids
//! one call produces.

use repo::cache::auctions::{Accepted, Bid, BidRequest, NewBid, Snapshot};
use uuid::Uuid;

use crate::{Lot, now_ms, open_lot};

fn accepted(bid: Bid) -> Accepted {
    match bid {
        Bid::Accepted(accepted) => accepted,
        other => panic!("accepted, not {other:?}"),
    }
}

/// The bids of one call as (seq, user, amount, max, auto).
fn bids(a: &Accepted) -> Vec<(i64, Uuid, i64, i64, bool)> {
    a.bids.iter().map(|b: &NewBid| (b.seq, b.user_id, b.amount_cents, b.max_cents, b.auto)).collect()
}

#[tokio::test]
async fn the_example_of_the_issue_ends_at_60_with_d_leading() {
    let mut lot = Lot::load(open_lot()).await;
    let [a, b, c, d] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];

    let first = accepted(lot.max(a, 5_000).await);
    assert_eq!(bids(&first), [(1, a, 1_000, 5_000, false)], "a maximum opens at the start price");
    assert_eq!((first.price_cents, first.leader, first.your_max_cents), (1_000, a, 5_000));

    let plain = accepted(lot.bid(b, 2_000).await);
    assert_eq!(bids(&plain), [(2, b, 2_000, 2_000, false), (3, a, 2_100, 5_000, true)]);
    assert_eq!((plain.price_cents, plain.leader, plain.your_max_cents), (2_100, a, 0), "b sees no maximum");

    let lower = accepted(lot.max(b, 4_000).await);
    assert_eq!(bids(&lower), [(4, b, 4_000, 4_000, false), (5, a, 4_100, 5_000, true)]);
    assert_eq!((lower.price_cents, lower.leader, lower.your_max_cents), (4_100, a, 4_000));

    let tie = accepted(lot.max(c, 5_000).await);
    assert_eq!(bids(&tie), [(6, c, 5_000, 5_000, false), (7, a, 5_000, 5_000, true)], "the earlier maximum keeps it");
    assert_eq!((tie.price_cents, tie.leader), (5_000, a));

    let over = accepted(lot.bid(d, 6_000).await);
    assert_eq!(bids(&over), [(8, d, 6_000, 6_000, false)], "a plain bid above the maximum is taken at its amount");
    assert_eq!((over.price_cents, over.leader, over.seq, over.min_next_cents), (6_000, d, 8, 6_100));
    let live = lot.live().await;
    assert_eq!((live.price_cents, live.leader, live.seq), (6_000, Some(d), 8));
}

#[tokio::test]
async fn a_higher_maximum_leads_at_one_increment_over_the_lower() {
    let mut lot = Lot::load(open_lot()).await;
    let (a, e) = (Uuid::now_v7(), Uuid::now_v7());
    accepted(lot.max(a, 5_000).await);
    let over = accepted(lot.max(e, 9_000).await);
    assert_eq!(bids(&over), [(2, e, 5_100, 9_000, false)]);
    assert_eq!((over.leader, over.your_max_cents), (e, 9_000));
    let close = accepted(lot.max(a, 9_050).await);
    assert_eq!(bids(&close), [(3, a, 9_050, 9_050, false)], "never above the bidder's own maximum");
}

#[tokio::test]
async fn a_plain_bid_equal_to_the_maximum_ties_and_the_maximum_keeps_the_lead() {
    let mut lot = Lot::load(open_lot()).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    accepted(lot.max(a, 3_000).await);
    let tie = accepted(lot.bid(b, 3_000).await);
    assert_eq!(bids(&tie), [(2, b, 3_000, 3_000, false), (3, a, 3_000, 3_000, true)]);
    assert_eq!(lot.bid(b, 3_000).await, Bid::TooLow { price_cents: 3_000, minimum_cents: 3_100 }, "exhausted");
}

#[tokio::test]
async fn the_leader_raises_its_maximum_without_a_bid_and_cannot_lower_it() {
    let mut lot = Lot::load(open_lot()).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    accepted(lot.max(a, 3_000).await);
    assert_eq!(lot.max(a, 2_999).await, Bid::MaxLowered { max_cents: 3_000 });
    let raised = accepted(lot.max(a, 3_050).await);
    assert_eq!((raised.bids.len(), raised.seq, raised.price_cents, raised.your_max_cents), (0, 1, 1_000, 3_050));
    let answered = accepted(lot.bid(b, 3_040).await);
    assert_eq!(bids(&answered), [(2, b, 3_040, 3_040, false), (3, a, 3_050, 3_050, true)], "capped at the maximum");
    assert_eq!(lot.max(a, 1_500).await, Bid::MaxLowered { max_cents: 3_050 }, "below the price too");
}

#[tokio::test]
async fn the_two_bids_of_one_call_move_the_end_once() {
    let end_ms = now_ms() + 30_000;
    let mut lot = Lot::load(Snapshot { end_ms, window_ms: 60_000, extend_by_ms: 5_000, ..open_lot() }).await;
    accepted(lot.max(Uuid::now_v7(), 5_000).await);
    let answered = accepted(lot.bid(Uuid::now_v7(), 2_000).await);
    assert_eq!((answered.bids.len(), answered.end_ms), (2, end_ms + 10_000));
}

#[tokio::test]
async fn a_rebuilt_state_keeps_the_leaders_maximum() {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let snapshot = Snapshot { price_cents: 2_100, leader: Some(a), seq: 3, max_cents: 5_000, ..open_lot() };
    let mut lot = Lot::load(snapshot).await;
    let answered = accepted(lot.bid(b, 3_000).await);
    assert_eq!(bids(&answered), [(4, b, 3_000, 3_000, false), (5, a, 3_100, 5_000, true)]);
}

#[tokio::test]
async fn a_retry_replays_both_bids_of_the_first_answer() {
    let mut lot = Lot::load(open_lot()).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    accepted(lot.max(a, 5_000).await);
    let request = || BidRequest {
        user_id: b,
        amount_cents: 2_000,
        maximum: false,
        idempotency_key: Some("k"),
        idempotency_ttl_ms: 60_000,
    };
    let first = lot.place(request()).await;
    assert_eq!(accepted(first.clone()).bids.len(), 2);
    assert_eq!(lot.place(request()).await, first);
    assert_eq!(lot.live().await.seq, 3);
}
