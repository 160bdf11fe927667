//! Buy-it-now and second-chance offers, end to end: the purchase against racing bids, the
//! order it gives, the `closed` event naming the buyer; an unpaid winner's lot going down
//! the bidders, then `unsold`.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use repo::db::orders::Finish;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Reply, Session, TestApp, metric, spawn_app_with};

/// An auction open for an hour (or ending in `end_in_ms`), start 10.00, step 1.00.
struct Lot {
    reserve: Option<&'static str>,
    buy_now: Option<&'static str>,
    end_in_ms: i64,
    payment_timeout_secs: i64,
}

const LOT: Lot = Lot { reserve: None, buy_now: Some("50.00"), end_in_ms: 3_600_000, payment_timeout_secs: 300 };

fn lot_body(lot: &Lot) -> Value {
    let now = Utc::now();
    json!({
        "title": "Lot", "start_price": "10.00", "min_increment": "1.00", "reserve_price": lot.reserve,
        "buy_now_price": lot.buy_now, "start_at": now - chrono::Duration::seconds(1),
        "end_at": now + chrono::Duration::milliseconds(lot.end_in_ms), "payment_timeout_secs": lot.payment_timeout_secs,
    })
}

async fn auction(app: &TestApp, admin: &Session, lot: Lot) -> String {
    app.post("/api/v1/auctions", lot_body(&lot), admin.token()).await.data(201)["id"].as_str().unwrap().to_owned()
}

async fn bid(app: &TestApp, session: &Session, auction: &str, amount: &str) -> Reply {
    app.post(&format!("/api/v1/auctions/{auction}/bids"), json!({ "amount": amount }), session.token()).await
}

async fn buy_now(app: &TestApp, session: &Session, auction: &str) -> Reply {
    app.post(&format!("/api/v1/auctions/{auction}/buy-now"), json!({}), session.token()).await
}

async fn state(app: &TestApp, auction: &str) -> Value {
    app.get(&format!("/api/v1/auctions/{auction}"), None).await.data(200).clone()
}

async fn orders_of(app: &TestApp, auction: &str) -> i64 {
    app.scalar(&format!("SELECT count(*) FROM orders WHERE auction_id = '{auction}'")).await
}

async fn verify_passes(app: &TestApp, auction: &str) {
    let deps = &app.services.deps;
    let report = service::verify::auction(&deps.db, &deps.redis, &deps.keys(), auction.parse().unwrap()).await.unwrap();
    assert!(report.passed(), "{report}");
}

async fn next_message(
    socket: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("a message in time");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

/// The app with the sweepers slow, so the delayed messages (or the test) close things.
async fn app_with_offers(offers: u32) -> TestApp {
    spawn_app_with(|s| {
        s.auctions.sweep_interval_secs = 600.try_into().unwrap();
        s.auctions.second_chance_offers = offers;
    })
    .await
}

#[tokio::test]
async fn buy_now_ends_the_auction_with_an_order_at_the_price_and_names_the_buyer() {
    let app = app_with_offers(2).await;
    let admin = app.admin().await;
    let (ann, buyer) = (app.shopper().await, app.shopper().await);
    let lot = auction(&app, &admin, Lot { reserve: Some("20.00"), payment_timeout_secs: 2, ..LOT }).await;
    bid(&app, &ann, &lot, "10.00").await.data(201);
    assert_eq!(state(&app, &lot).await["buy_now_price"], "50.00", "a bid below the reserve leaves it on offer");

    let url = format!("{}/api/v1/auctions/{lot}/live", app.address.replace("http", "ws"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    assert_eq!(next_message(&mut socket).await["buy_now_price"], "50.00");

    let order = buy_now(&app, &buyer, &lot).await.data(201).clone();
    assert_eq!(
        (order["kind"].as_str(), order["status"].as_str(), order["total"].as_str()),
        (Some("auction"), Some("pending_payment"), Some("50.00"))
    );
    assert_eq!(order["user_id"], buyer.user_id.as_str());
    let closed = next_message(&mut socket).await;
    assert_eq!(closed["type"], "closed");
    assert_eq!((closed["status"].as_str(), closed["price"].as_str()), (Some("sold"), Some("50.00")));
    assert_eq!(closed["winner_id"], buyer.user_id.as_str());

    let view = state(&app, &lot).await;
    assert_eq!(view["status"], "sold");
    assert_eq!(view["winner_id"], buyer.user_id.as_str());
    assert_eq!(view["order_id"], order["id"]);
    assert_eq!(view["buy_now_price"], Value::Null, "no longer on offer");
    bid(&app, &ann, &lot, "30.00").await.error(409, "AUCTION_CLOSED", None);
    buy_now(&app, &ann, &lot).await.error(409, "BUY_NOW_UNAVAILABLE", None);
    // A retry by the buyer answers with the same order; a close message changes nothing.
    let again = app
        .send(
            app.client
                .post(app.url(&format!("/api/v1/auctions/{lot}/buy-now")))
                .bearer_auth(buyer.token().unwrap())
                .header("Idempotency-Key", "buy-1"),
        )
        .await;
    assert_eq!(again.data(201)["id"], order["id"]);
    app.services.auction_closer.close(lot.parse().unwrap()).await.unwrap();
    assert_eq!(orders_of(&app, &lot).await, 1);
    verify_passes(&app, &lot).await;

    // Left unpaid, a buy-now order gets no second chance (ann's bid did not meet the reserve
    // anyway): the auction ends unsold.
    app.eventually(30, "the unpaid buy-now ends unsold", || async { state(&app, &lot).await["status"] == "unsold" })
        .await;
    assert_eq!(orders_of(&app, &lot).await, 1);
}

#[tokio::test]
async fn buy_now_is_refused_once_a_bid_meets_the_reserve_and_where_there_is_none() {
    let app = app_with_offers(2).await;
    let admin = app.admin().await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);

    let no_reserve = auction(&app, &admin, LOT).await;
    bid(&app, &ann, &no_reserve, "10.00").await.data(201);
    buy_now(&app, &bob, &no_reserve).await.error(409, "BUY_NOW_UNAVAILABLE", None);
    assert_eq!(state(&app, &no_reserve).await["buy_now_price"], Value::Null);

    let reserve = auction(&app, &admin, Lot { reserve: Some("20.00"), ..LOT }).await;
    bid(&app, &ann, &reserve, "19.99").await.data(201);
    bid(&app, &bob, &reserve, "21.00").await.data(201);
    buy_now(&app, &ann, &reserve).await.error(409, "BUY_NOW_UNAVAILABLE", None);

    let without = auction(&app, &admin, Lot { buy_now: None, ..LOT }).await;
    buy_now(&app, &ann, &without).await.error(409, "BUY_NOW_UNAVAILABLE", None);
    let mut later = lot_body(&LOT);
    later["start_at"] = json!(Utc::now() + chrono::Duration::hours(1));
    later["end_at"] = json!(Utc::now() + chrono::Duration::hours(2));
    let later = app.post("/api/v1/auctions", later, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(state(&app, &later).await["buy_now_price"], "50.00");
    buy_now(&app, &ann, &later).await.error(409, "BUY_NOW_UNAVAILABLE", None);

    buy_now(&app, &ann, &uuid::Uuid::now_v7().to_string()).await.error(404, "NOT_FOUND", None);
    app.post(&format!("/api/v1/auctions/{later}/buy-now"), json!({}), None).await.error(401, "UNAUTHORIZED", None);
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test]
async fn a_bad_buy_now_price_names_the_field() {
    let app = app_with_offers(2).await;
    let admin = app.admin().await;
    for (reserve, price) in
        [(None, json!("9.99")), (Some("30.00"), json!("29.99")), (None, json!("abc")), (None, json!(50))]
    {
        let mut body = lot_body(&Lot { reserve, ..LOT });
        body["buy_now_price"] = price;
        let reply = app.post("/api/v1/auctions", body.clone(), admin.token()).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.body);
        reply.error(400, "INVALID_REQUEST", Some("buy_now_price"));
    }
    let equal = auction(&app, &admin, Lot { reserve: Some("50.00"), ..LOT }).await;
    assert_eq!(state(&app, &equal).await["buy_now_price"], "50.00", "equal to the reserve is fine");
}

/// 100 rounds: a bid and a buy-now sent at once on a fresh auction. Exactly one wins, and
/// Postgres says the same.
#[tokio::test]
async fn a_buy_now_racing_a_bid_exactly_one_wins() {
    let app = app_with_offers(2).await;
    let admin = app.admin().await;
    let (bidder, buyer) = (app.shopper().await, app.shopper().await);
    let (mut bids_won, mut buys_won) = (0, 0);
    for round in 0..100 {
        let lot = auction(&app, &admin, LOT).await;
        // The buy-now path reads Postgres before its script, so a bid sent at the same
        // instant nearly always gets there first: the bid is staggered by 0 to 3.6 ms so
        // that both orders (and the near-ties between them) come up. Either way exactly one
        // may win; the split is printed.
        let stagger = Duration::from_micros(400 * (round % 10));
        let late_bid = async {
            tokio::time::sleep(stagger).await;
            bid(&app, &bidder, &lot, "10.00").await
        };
        let (placed, bought) = tokio::join!(late_bid, buy_now(&app, &buyer, &lot));
        let sql = |what: &str| format!("SELECT count(*) FROM {what} WHERE auction_id = '{lot}'");
        let (bids, orders) = (app.scalar(&sql("bids")).await, app.scalar(&sql("orders")).await);
        let view = state(&app, &lot).await;
        match (placed.status.as_u16(), bought.status.as_u16()) {
            (201, 409) => {
                bought.error(409, "BUY_NOW_UNAVAILABLE", None);
                assert_eq!((bids, orders, view["status"].as_str()), (1, 0, Some("live")), "round {round}");
                bids_won += 1;
            }
            (409, 201) => {
                placed.error(409, "AUCTION_CLOSED", None);
                assert_eq!((bids, orders, view["status"].as_str()), (0, 1, Some("sold")), "round {round}");
                assert_eq!(view["winner_id"], buyer.user_id.as_str());
                buys_won += 1;
            }
            other => panic!("round {round}: exactly one must win, got {other:?}: {} / {}", placed.body, bought.body),
        }
    }
    println!("bids won {bids_won}, buy-nows won {buys_won}");
}

/// Bids (reserve 12.00): carl 10, dan 12, erin 13, ann 14, bob 15, ann 16, bob 17. Bob wins
/// at 17 and does not pay; the lot goes to ann at 16 (her highest), then to erin at 13;
/// two offers is the limit (dan is never asked, carl never met the reserve): unsold.
#[tokio::test]
async fn an_unpaid_win_goes_to_the_next_bidders_then_ends_unsold() {
    let app = app_with_offers(2).await;
    let admin = app.admin().await;
    let mut people = Vec::new();
    for _ in 0..5 {
        people.push(app.shopper().await);
    }
    let [carl, dan, erin, ann, bob] = &people[..] else { unreachable!() };
    let lot = Lot { reserve: Some("12.00"), buy_now: None, end_in_ms: 2000, payment_timeout_secs: 3 };
    let lot = auction(&app, &admin, lot).await;
    for (who, amount) in [(carl, "10.00"), (dan, "12.00"), (erin, "13.00"), (ann, "14.00"), (bob, "15.00")] {
        bid(&app, who, &lot, amount).await.data(201);
    }
    bid(&app, ann, &lot, "16.00").await.data(201);
    bid(&app, bob, &lot, "17.00").await.data(201);

    app.eventually(30, "the auction is sold", || async { state(&app, &lot).await["status"] == "sold" }).await;
    let won = state(&app, &lot).await;
    assert_eq!(won["winner_id"], bob.user_id.as_str());
    let first_order = won["order_id"].as_str().unwrap().to_owned();
    let url = format!("{}/api/v1/auctions/{lot}/live", app.address.replace("http", "ws"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    assert_eq!(next_message(&mut socket).await["winner_id"], bob.user_id.as_str());

    let offer = next_message(&mut socket).await;
    assert_eq!(offer["type"], "second_chance");
    assert_eq!((offer["winner_id"].as_str(), offer["price"].as_str()), (Some(ann.user_id.as_str()), Some("16.00")));
    let view = state(&app, &lot).await;
    assert_eq!((view["status"].as_str(), view["winner_id"].as_str()), (Some("sold"), Some(ann.user_id.as_str())));
    let second_order = view["order_id"].as_str().unwrap().to_owned();
    assert_ne!(second_order, first_order);
    let order = app.get(&format!("/api/v1/orders/{second_order}"), ann.token()).await;
    assert_eq!(
        (order.data(200)["total"].as_str(), order.data(200)["status"].as_str()),
        (Some("16.00"), Some("pending_payment"))
    );
    assert_eq!(app.order_status(bob, &first_order).await, "closed");
    let late = app.post(&format!("/api/v1/orders/{first_order}/pay"), json!({}), bob.token()).await;
    late.error(409, "ORDER_NOT_PENDING", None);

    // The close of bob's order delivered again (or the sweeper after it) offers nothing more.
    let again = app.services.orders.finish(&[first_order.parse().unwrap()], Finish::Closed).await.unwrap();
    assert!(again.is_empty());
    assert_eq!(orders_of(&app, &lot).await, 2);

    let offer = next_message(&mut socket).await;
    assert_eq!((offer["type"].as_str(), offer["price"].as_str()), (Some("second_chance"), Some("13.00")));
    assert_eq!(offer["winner_id"], erin.user_id.as_str());
    assert_eq!(state(&app, &lot).await["winner_id"], erin.user_id.as_str());

    let end = next_message(&mut socket).await;
    assert_eq!((end["type"].as_str(), end["status"].as_str()), (Some("closed"), Some("unsold")));
    let view = state(&app, &lot).await;
    assert_eq!(view["status"], "unsold");
    assert_eq!((view["winner_id"].clone(), view["order_id"].clone()), (Value::Null, Value::Null));
    assert_eq!(orders_of(&app, &lot).await, 3, "two offers, dan never asked");
    assert_eq!(metric(r#"auction_second_chance_total{outcome="offered"}"#), 2.0);
    assert_eq!(metric(r#"auction_second_chance_total{outcome="unsold"}"#), 1.0);
    verify_passes(&app, &lot).await;
}

/// An auction ending in 1.5 s where ann bids 10.00 and bob wins at 11.00; returns it, ann
/// and bob.
async fn bob_outbids_ann(app: &TestApp, payment_timeout_secs: i64) -> (String, Session, Session) {
    let admin = app.admin().await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let lot = auction(app, &admin, Lot { buy_now: None, end_in_ms: 1500, payment_timeout_secs, ..LOT }).await;
    bid(app, &ann, &lot, "10.00").await.data(201);
    bid(app, &bob, &lot, "11.00").await.data(201);
    (lot, ann, bob)
}

#[tokio::test]
async fn a_paid_second_chance_offer_keeps_the_lot_sold() {
    let app = app_with_offers(2).await;
    let (lot, ann, _bob) = bob_outbids_ann(&app, 2).await;
    app.eventually(30, "the offer reaches ann", || async {
        state(&app, &lot).await["winner_id"] == ann.user_id.as_str()
    })
    .await;
    let offer = state(&app, &lot).await["order_id"].as_str().unwrap().to_owned();
    let paid = app.post(&format!("/api/v1/orders/{offer}/pay"), json!({}), ann.token()).await;
    assert_eq!(paid.data(200)["status"], "paid");
    // A close of the paid offer (its message, the sweeper) moves nothing.
    assert!(app.services.orders.finish(&[offer.parse().unwrap()], Finish::Closed).await.unwrap().is_empty());
    let view = state(&app, &lot).await;
    assert_eq!((view["status"].as_str(), view["order_id"].as_str()), (Some("sold"), Some(offer.as_str())));
    verify_passes(&app, &lot).await;
}

#[tokio::test]
async fn with_second_chance_offers_off_an_unpaid_win_ends_unsold() {
    let app = app_with_offers(0).await;
    let (lot, _ann, _bob) = bob_outbids_ann(&app, 1).await;
    app.eventually(30, "the unpaid win ends unsold", || async { state(&app, &lot).await["status"] == "unsold" }).await;
    assert_eq!(orders_of(&app, &lot).await, 1, "ann got no offer");
    assert_eq!(state(&app, &lot).await["winner_id"], Value::Null);
}

/// The process that ran `buy_now.lua` dies before Postgres heard of it: the close (its
/// message at the end, or the sweeper) records the purchase, to the buyer at the price,
/// not `unsold` and not a bidder.
#[tokio::test]
async fn a_buy_now_cut_off_before_postgres_is_finished_by_the_close() {
    let app = app_with_offers(2).await;
    let admin = app.admin().await;
    let (ann, buyer) = (app.shopper().await, app.shopper().await);
    let lot = auction(&app, &admin, Lot { reserve: Some("20.00"), ..LOT }).await;
    bid(&app, &ann, &lot, "12.00").await.data(201);
    let id: uuid::Uuid = lot.parse().unwrap();
    let deps = &app.services.deps;
    let bought = repo::cache::auctions::buy_now(
        &mut deps.redis.clone(),
        &deps.keys(),
        id,
        buyer.user_id.parse().unwrap(),
        5_000,
    )
    .await
    .unwrap();
    assert!(matches!(bought, repo::cache::auctions::BuyNow::Bought { .. }));
    assert_eq!(state(&app, &lot).await["status"], "live", "postgres has not heard of it");
    bid(&app, &ann, &lot, "30.00").await.error(409, "AUCTION_CLOSED", None);

    app.services.auction_closer.close(id).await.unwrap();
    let view = state(&app, &lot).await;
    assert_eq!((view["status"].as_str(), view["winner_id"].as_str()), (Some("sold"), Some(buyer.user_id.as_str())));
    let order = app.get(&format!("/api/v1/orders/{}", view["order_id"].as_str().unwrap()), buyer.token()).await;
    assert_eq!(order.data(200)["total"], "50.00");
    // The buyer's retry now answers with that order.
    assert_eq!(buy_now(&app, &buyer, &lot).await.data(201)["id"], view["order_id"]);
}

#[tokio::test]
async fn a_winner_who_cancels_passes_the_lot_on_at_once() {
    let app = app_with_offers(2).await;
    let (lot, ann, bob) = bob_outbids_ann(&app, 300).await;
    app.eventually(30, "the auction is sold", || async { state(&app, &lot).await["status"] == "sold" }).await;
    let won = state(&app, &lot).await["order_id"].as_str().unwrap().to_owned();
    let cancelled = app.post(&format!("/api/v1/orders/{won}/cancel"), json!({}), bob.token()).await;
    assert_eq!(cancelled.data(200)["status"], "cancelled");
    let view = state(&app, &lot).await;
    assert_eq!((view["status"].as_str(), view["winner_id"].as_str()), (Some("sold"), Some(ann.user_id.as_str())));
    let offer = app.get(&format!("/api/v1/orders/{}", view["order_id"].as_str().unwrap()), ann.token()).await;
    assert_eq!(
        (offer.data(200)["total"].as_str(), offer.data(200)["status"].as_str()),
        (Some("10.00"), Some("pending_payment"))
    );
    verify_passes(&app, &lot).await;
}
