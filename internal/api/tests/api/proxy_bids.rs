//! Proxy bidding through the API: a maximum, the leader's automatic answer, ties, raising
//! and lowering a maximum, nobody else seeing it, and a maximum surviving a Redis flush.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Reply, Session, TestApp, spawn_app, spawn_app_with};
use crate::redis_server::PrivateRedis;

/// Starts at 10.00, steps of 1.00, open for an hour.
async fn auction(app: &TestApp) -> String {
    let admin = app.admin().await;
    let now = Utc::now();
    let body = json!({
        "title": "Lot", "start_price": "10.00", "min_increment": "1.00",
        "start_at": now - chrono::Duration::seconds(1), "end_at": now + chrono::Duration::hours(1),
        "payment_timeout_secs": 300,
    });
    app.post("/api/v1/auctions", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned()
}

async fn bid(app: &TestApp, who: &Session, lot: &str, amount: &str) -> Reply {
    app.post(&format!("/api/v1/auctions/{lot}/bids"), json!({ "amount": amount }), who.token()).await
}

async fn max(app: &TestApp, who: &Session, lot: &str, amount: &str) -> Reply {
    app.post(&format!("/api/v1/auctions/{lot}/bids"), json!({ "max_amount": amount }), who.token()).await
}

/// (price, seq, leader, leading, max_amount) of a 201.
fn answer(reply: &Reply) -> (String, i64, String, bool, Option<String>) {
    let data = reply.data(201);
    (
        data["price"].as_str().unwrap().to_owned(),
        data["seq"].as_i64().unwrap(),
        data["leader_id"].as_str().unwrap().to_owned(),
        data["leading"].as_bool().unwrap(),
        data["max_amount"].as_str().map(str::to_owned),
    )
}

fn expected(
    price: &str,
    seq: i64,
    leader: &Session,
    leading: bool,
    max: Option<&str>,
) -> (String, i64, String, bool, Option<String>) {
    (price.to_owned(), seq, leader.user_id.clone(), leading, max.map(str::to_owned))
}

/// The bid list, oldest first: (seq, user, amount, auto).
async fn history(app: &TestApp, lot: &str) -> Vec<(i64, String, String, bool)> {
    let page = app.get(&format!("/api/v1/auctions/{lot}/bids?page_size=100"), None).await;
    let mut rows: Vec<_> = page.data(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let text = |k: &str| b[k].as_str().unwrap().to_owned();
            (b["seq"].as_i64().unwrap(), text("user_id"), text("amount"), b["auto"].as_bool().unwrap())
        })
        .collect();
    rows.reverse();
    rows
}

async fn verify(app: &TestApp, lot: &str) -> service::verify::Report {
    let deps = &app.services.deps;
    service::verify::auction(&deps.db, &deps.redis, &deps.keys(), lot.parse().unwrap()).await.unwrap()
}

#[tokio::test]
async fn the_example_replayed_through_the_api_ends_at_60_with_d_leading() {
    let app = spawn_app().await;
    let lot = auction(&app).await;
    let (ann, bob, cat, dan) = (app.shopper().await, app.shopper().await, app.shopper().await, app.shopper().await);

    assert_eq!(answer(&max(&app, &ann, &lot, "50.00").await), expected("10.00", 1, &ann, true, Some("50.00")));
    assert_eq!(answer(&bid(&app, &bob, &lot, "20.00").await), expected("21.00", 3, &ann, false, None));
    assert_eq!(answer(&max(&app, &bob, &lot, "40.00").await), expected("41.00", 5, &ann, false, Some("40.00")));
    assert_eq!(answer(&max(&app, &cat, &lot, "50.00").await), expected("50.00", 7, &ann, false, Some("50.00")));
    assert_eq!(answer(&bid(&app, &dan, &lot, "60.00").await), expected("60.00", 8, &dan, true, None));

    let view = app.get(&format!("/api/v1/auctions/{lot}"), None).await;
    let view = view.data(200);
    assert_eq!((view["current_price"].as_str(), view["bid_count"].as_i64()), (Some("60.00"), Some(8)));
    assert_eq!(view["leader_id"], dan.user_id.as_str());
    let row = |seq: i64, who: &Session, amount: &str, auto: bool| (seq, who.user_id.clone(), amount.to_owned(), auto);
    assert_eq!(
        history(&app, &lot).await,
        [
            row(1, &ann, "10.00", false),
            row(2, &bob, "20.00", false),
            row(3, &ann, "21.00", true),
            row(4, &bob, "40.00", false),
            row(5, &ann, "41.00", true),
            row(6, &cat, "50.00", false),
            row(7, &ann, "50.00", true),
            row(8, &dan, "60.00", false),
        ],
        "gapless seqs, each automatic raise a bid of its own"
    );
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn on_equal_maximums_the_earlier_leads_at_that_maximum() {
    let app = spawn_app().await;
    let lot = auction(&app).await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    max(&app, &ann, &lot, "30.00").await.data(201);
    assert_eq!(answer(&max(&app, &bob, &lot, "30.00").await), expected("30.00", 3, &ann, false, Some("30.00")));
    let low = bid(&app, &bob, &lot, "30.00").await;
    assert_eq!(low.error(409, "BID_TOO_LOW", None)["details"]["min_bid"], "31.00");
    assert!(verify(&app, &lot).await.passed());
}

#[tokio::test]
async fn a_leader_raises_its_maximum_without_moving_the_price_and_cannot_lower_it() {
    let app = spawn_app().await;
    let lot = auction(&app).await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    max(&app, &ann, &lot, "30.00").await.data(201);
    assert_eq!(answer(&max(&app, &ann, &lot, "45.00").await), expected("10.00", 1, &ann, true, Some("45.00")));
    let lowered = max(&app, &ann, &lot, "44.99").await;
    assert_eq!(lowered.error(409, "MAX_AMOUNT_LOWERED", None)["details"]["max_amount"], "45.00");
    assert_eq!(app.get(&format!("/api/v1/auctions/{lot}"), None).await.data(200)["bid_count"], 1);

    // The raised maximum answers the next bid.
    assert_eq!(answer(&bid(&app, &bob, &lot, "40.00").await), expected("41.00", 3, &ann, false, None));
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_bid_takes_exactly_one_of_amount_and_max_amount() {
    let app = spawn_app().await;
    let lot = auction(&app).await;
    let ann = app.shopper().await;
    let path = format!("/api/v1/auctions/{lot}/bids");
    let both = app.post(&path, json!({"amount": "10.00", "max_amount": "20.00"}), ann.token()).await;
    both.error(400, "INVALID_REQUEST", Some("max_amount"));
    app.post(&path, json!({}), ann.token()).await.error(400, "INVALID_REQUEST", Some("amount"));
    for bad in [json!("abc"), json!("0"), json!("1.001"), json!(20)] {
        app.post(&path, json!({ "max_amount": bad }), ann.token()).await.error(
            400,
            "INVALID_REQUEST",
            Some("max_amount"),
        );
    }
}

#[tokio::test]
async fn nobody_else_sees_a_maximum() {
    let app = spawn_app().await;
    let lot = auction(&app).await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let secret = "77.77";
    max(&app, &ann, &lot, secret).await.data(201);

    let url = format!("{}/api/v1/auctions/{lot}/live", app.address.replace("http", "ws"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let mut messages = vec![next_message(&mut socket).await];
    let answered = bid(&app, &bob, &lot, "20.00").await;
    assert_eq!(answered.data(201)["leading"], false);
    while messages.last().is_none_or(|m| m["seq"] != 3) {
        messages.push(next_message(&mut socket).await);
    }
    let auto = messages.last().unwrap();
    assert_eq!((auto["type"].as_str(), auto["auto"].as_bool()), (Some("bid"), Some(true)));
    assert_eq!(auto["price"], "21.00");

    let seen = [
        answered.body.clone(),
        app.get(&format!("/api/v1/auctions/{lot}"), None).await.body,
        app.get(&format!("/api/v1/auctions/{lot}"), bob.token()).await.body,
        app.get(&format!("/api/v1/auctions/{lot}/bids"), None).await.body,
        app.get("/api/v1/auctions", None).await.body,
        Value::Array(messages),
    ];
    for body in seen {
        assert!(!body.to_string().contains(secret), "a maximum leaked: {body}");
    }
    assert!(max(&app, &ann, &lot, "80.00").await.body.to_string().contains("80.00"), "its owner sees it");
}

async fn next_message(
    socket: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("a message in time");
        if let Some(Ok(Message::Text(text))) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn a_maximum_survives_a_redis_flush() {
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(|s| s.redis.url = SecretString::from(redis.url.clone())).await;
    let lot = auction(&app).await;
    let (ann, bob, cat) = (app.shopper().await, app.shopper().await, app.shopper().await);
    max(&app, &ann, &lot, "30.00").await.data(201);
    assert_eq!(answer(&bid(&app, &bob, &lot, "20.00").await), expected("21.00", 3, &ann, false, None));
    // A raise without a bid is written too (behind ann's last bid).
    assert_eq!(answer(&max(&app, &ann, &lot, "60.00").await), expected("21.00", 3, &ann, true, Some("60.00")));

    redis.forget_everything().await; // FLUSHALL + SCRIPT FLUSH
    assert_eq!(
        answer(&bid(&app, &cat, &lot, "50.00").await),
        expected("51.00", 5, &ann, false, None),
        "the rebuilt maximum"
    );
    let amounts: Vec<String> = history(&app, &lot).await.into_iter().map(|(_, _, amount, _)| amount).collect();
    assert_eq!(amounts, ["10.00", "20.00", "21.00", "50.00", "51.00"]);
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn an_idempotency_key_replays_a_bid_and_its_automatic_answer() {
    let app = spawn_app().await;
    let lot = auction(&app).await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    max(&app, &ann, &lot, "30.00").await.data(201);
    let send = || {
        let request = app
            .client
            .post(app.url(&format!("/api/v1/auctions/{lot}/bids")))
            .bearer_auth(&bob.access)
            .header("Idempotency-Key", "proxy-1")
            .json(&json!({"amount": "15.00"}));
        app.send(request)
    };
    let first = send().await.data(201).clone();
    assert_eq!(send().await.data(201), &first);
    assert_eq!(app.get(&format!("/api/v1/auctions/{lot}"), None).await.data(200)["bid_count"], 3);
}

#[tokio::test]
async fn verify_fails_when_a_proxy_invariant_is_broken() {
    let app = spawn_app().await;
    let (ann, bob) = (app.shopper().await, app.shopper().await);
    let sql = |sql: String| {
        let db = app.db.clone();
        async move { sea_orm::ConnectionTrait::execute_unprepared(&db, &sql).await.unwrap() }
    };
    let mut lots = Vec::new();
    for _ in 0..4 {
        let lot = auction(&app).await;
        max(&app, &ann, &lot, "30.00").await.data(201);
        bid(&app, &bob, &lot, "20.00").await.data(201); // bob 20.00, ann's automatic 21.00
        assert!(verify(&app, &lot).await.passed(), "{}", verify(&app, &lot).await);
        lots.push(lot);
    }
    // A loser with a maximum above the leader's.
    sql(format!("UPDATE bids SET max_amount = 99.00 WHERE auction_id = '{}' AND seq = 2", lots[0])).await;
    // An automatic answer off the rule (22.00 rather than 21.00).
    sql(format!("UPDATE bids SET amount = 22.00 WHERE auction_id = '{}' AND seq = 3", lots[1])).await;
    // A tie that is not one: equal amounts without an automatic answer at its maximum.
    sql(format!("UPDATE bids SET amount = 20.00, auto = false WHERE auction_id = '{}' AND seq = 3", lots[2])).await;
    // Redis's leader maximum below the price.
    let deps = &app.services.deps;
    let state = deps.keys().auction(lots[3].parse().unwrap()).state;
    redis::cmd("HSET").arg(&state).arg("max").arg(1_500).exec_async(&mut deps.redis.clone()).await.unwrap();

    let broken = [
        "the leader holds the highest maximum",
        "automatic bids answer",
        "prices strictly rise",
        "no maximum exceeded",
    ];
    for (lot, broken) in lots.iter().zip(broken) {
        let report = verify(&app, lot).await;
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.ok).map(|c| c.what.as_str()).collect();
        assert!(failed.iter().any(|what| what.starts_with(broken)), "{broken}: {report}");
        assert!(!report.to_string().contains("30.00"), "verify prints no maximum: {report}");
    }
}

/// A maximum that meets the reserve bids the reserve for its owner: a bidder leading with
/// 900.00 at 10.00 under a reserve of 50.00 would lose the lot (unsold) and leave buy-now
/// on offer below their maximum. A leader raising its maximum past the reserve bids it too.
#[tokio::test]
async fn a_maximum_that_meets_the_reserve_bids_the_reserve() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (a, b, c) = (app.shopper().await, app.shopper().await, app.shopper().await);
    let now = Utc::now();
    let body = json!({
        "title": "Lot", "start_price": "10.00", "min_increment": "1.00", "reserve_price": "50.00",
        "buy_now_price": "100.00", "start_at": now - chrono::Duration::seconds(1),
        "end_at": now + chrono::Duration::hours(1), "payment_timeout_secs": 300,
    });
    let lot =
        app.post("/api/v1/auctions", body.clone(), admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(answer(&max(&app, &a, &lot, "900.00").await), expected("50.00", 1, &a, true, Some("900.00")));
    app.post(&format!("/api/v1/auctions/{lot}/buy-now"), json!({}), b.token()).await.error(
        409,
        "BUY_NOW_UNAVAILABLE",
        None,
    );
    assert_eq!(answer(&bid(&app, &b, &lot, "60.00").await), expected("61.00", 3, &a, false, None));

    // Below the reserve a maximum bids as little as leads; raised past it, it bids the reserve.
    let lot = app.post("/api/v1/auctions", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(answer(&max(&app, &c, &lot, "40.00").await), expected("10.00", 1, &c, true, Some("40.00")));
    assert_eq!(answer(&max(&app, &c, &lot, "70.00").await), expected("50.00", 2, &c, true, Some("70.00")));
    assert_eq!(
        history(&app, &lot).await,
        [(1, c.user_id.clone(), "10.00".to_owned(), false), (2, c.user_id.clone(), "50.00".to_owned(), false)]
    );
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_leader_raising_its_maximum_after_a_tie_answer_leaves_every_bid_as_it_was_placed() {
    // A's maximum 15 answers B's 15 (a tie: A's automatic 15 keeps the lead), then A raises
    // its maximum to 20 without bidding. The automatic 15 was placed at A's maximum then,
    // and verify must still read it so; the raise counts for what comes next.
    let app = spawn_app().await;
    let lot = auction(&app).await;
    let (a, b, c) = (app.shopper().await, app.shopper().await, app.shopper().await);
    max(&app, &a, &lot, "15.00").await.data(201);
    bid(&app, &b, &lot, "15.00").await.data(201);
    let raised = max(&app, &a, &lot, "20.00").await;
    assert_eq!(answer(&raised), expected("15.00", 3, &a, true, Some("20.00")));
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
    // The raised maximum answers the next bid: C's 17 meets A's automatic 18.
    assert_eq!(answer(&bid(&app, &c, &lot, "17.00").await), expected("18.00", 5, &a, false, None));
    let report = verify(&app, &lot).await;
    assert!(report.passed(), "{report}");
}
