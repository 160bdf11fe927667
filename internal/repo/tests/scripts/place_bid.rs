//! `place_bid.lua`: which bid is accepted, how the price and the end move.

use repo::cache::auctions::{Accepted, Bid, BidRequest, Snapshot};
use uuid::Uuid;

use crate::{Lot, now_ms, open_lot};

#[tokio::test]
async fn the_first_bid_needs_the_start_price() {
    let mut lot = Lot::load(open_lot()).await;
    let ann = Uuid::now_v7();
    assert_eq!(lot.bid(ann, 999).await, Bid::TooLow { price_cents: 0, minimum_cents: 1_000 });
    let Bid::Accepted(Accepted { seq, price_cents, .. }) = lot.bid(ann, 1_000).await else { panic!("accepted") };
    assert_eq!((seq, price_cents), (1, 1_000));
}

#[tokio::test]
async fn a_later_bid_must_beat_the_price_by_the_increment() {
    let mut lot = Lot::load(open_lot()).await;
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(matches!(lot.bid(ann, 1_000).await, Bid::Accepted(Accepted { seq: 1, .. })));
    assert_eq!(lot.bid(bob, 1_000).await, Bid::TooLow { price_cents: 1_000, minimum_cents: 1_100 });
    assert_eq!(lot.bid(bob, 1_099).await, Bid::TooLow { price_cents: 1_000, minimum_cents: 1_100 });
    assert!(matches!(lot.bid(bob, 1_100).await, Bid::Accepted(Accepted { seq: 2, price_cents: 1_100, .. })));

    let live = lot.live().await;
    assert_eq!((live.price_cents, live.leader, live.seq), (1_100, Some(bob), 2));
}

#[tokio::test]
async fn an_accepted_bid_names_the_generation_its_write_must_match() {
    let mut lot = Lot::load(open_lot()).await;
    let Bid::Accepted(Accepted { generation, min_next_cents, .. }) = lot.bid(Uuid::now_v7(), 1_000).await else {
        panic!("accepted")
    };
    assert_eq!((generation.as_str(), min_next_cents), ("g1", 1_100));
}

#[tokio::test]
async fn undoing_a_bid_drops_its_generation_and_leaves_a_newer_one_alone() {
    let mut lot = Lot::load(open_lot()).await;
    let ann = Uuid::now_v7();
    assert!(matches!(lot.bid(ann, 1_000).await, Bid::Accepted(Accepted { .. })));
    assert!(!lot.undo("other", ann).await, "another generation: nothing to undo");
    assert_eq!(lot.live().await.seq, 1);
    assert!(lot.undo("g1", ann).await);
    assert_eq!(lot.bid(ann, 1_000).await, Bid::Missing, "the next bid rebuilds from Postgres");
    let rebuilt = Snapshot { generation: "g2".to_owned(), ..open_lot() };
    let reloaded = repo::cache::auctions::load(&mut lot.redis, &lot.keys, lot.id, &rebuilt).await.unwrap();
    assert_eq!(reloaded, "g2");
    assert!(!lot.undo("g1", ann).await, "a late undo of the old generation keeps the new state");
    assert!(matches!(lot.bid(ann, 1_000).await, Bid::Accepted(Accepted { .. })));
}

#[tokio::test]
async fn loading_over_an_existing_state_keeps_it_and_names_its_generation() {
    let mut lot = Lot::load(open_lot()).await;
    let again = Snapshot { generation: "g2".to_owned(), ..open_lot() };
    let kept = repo::cache::auctions::load(&mut lot.redis, &lot.keys, lot.id, &again).await.unwrap();
    assert_eq!(kept, "g1");
}

#[tokio::test]
async fn a_bid_inside_the_anti_sniping_window_moves_the_end() {
    let end_ms = now_ms() + 30_000;
    let mut lot = Lot::load(Snapshot { end_ms, window_ms: 60_000, extend_by_ms: 5_000, ..open_lot() }).await;
    let Bid::Accepted(Accepted { end_ms: moved, .. }) = lot.bid(Uuid::now_v7(), 1_000).await else {
        panic!("accepted")
    };
    assert_eq!(moved, end_ms + 5_000);
    let Bid::Accepted(Accepted { end_ms: again, .. }) = lot.bid(Uuid::now_v7(), 1_100).await else {
        panic!("accepted")
    };
    assert_eq!(again, end_ms + 10_000, "each bid in the window pushes the end again");
    assert_eq!(lot.live().await.end_ms, end_ms + 10_000);
}

#[tokio::test]
async fn a_bid_before_the_window_leaves_the_end_alone() {
    let end_ms = now_ms() + 60_000;
    let mut lot = Lot::load(Snapshot { end_ms, window_ms: 10_000, extend_by_ms: 5_000, ..open_lot() }).await;
    let Bid::Accepted(Accepted { end_ms: unchanged, .. }) = lot.bid(Uuid::now_v7(), 1_000).await else {
        panic!("accepted")
    };
    assert_eq!(unchanged, end_ms);
}

#[tokio::test]
async fn bids_are_refused_before_the_start_from_the_end_and_once_closed() {
    let now = now_ms();
    let mut scheduled = Lot::load(Snapshot { start_ms: now + 60_000, end_ms: now + 120_000, ..open_lot() }).await;
    assert!(matches!(scheduled.bid(Uuid::now_v7(), 1_000).await, Bid::Closed { price_cents: 0 }));

    let mut ended = Lot::load(Snapshot { end_ms: now - 1, ..open_lot() }).await;
    assert!(matches!(ended.bid(Uuid::now_v7(), 1_000).await, Bid::Closed { .. }));

    let mut closed = Lot::load(Snapshot { closed: Some(false), ..open_lot() }).await;
    assert!(matches!(closed.bid(Uuid::now_v7(), 1_000).await, Bid::Closed { .. }));
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_replays_the_first_bid() {
    let mut lot = Lot::load(open_lot()).await;
    let ann = Uuid::now_v7();
    let request = |amount_cents| BidRequest {
        user_id: ann,
        amount_cents,
        maximum: false,
        idempotency_key: Some("retry-1"),
        idempotency_ttl_ms: 60_000,
    };
    let first = lot.place(request(1_000)).await;
    assert!(matches!(first, Bid::Accepted(Accepted { seq: 1, price_cents: 1_000, .. })));
    assert_eq!(lot.place(request(5_000)).await, first, "the retry changes nothing");
    assert_eq!(lot.live().await.seq, 1);
}

#[tokio::test]
async fn a_lot_without_live_state_asks_for_a_rebuild() {
    let mut lot = Lot::empty().await;
    assert_eq!(lot.bid(Uuid::now_v7(), 1_000).await, Bid::Missing);
}
