//! Flash sales end to end: the Lua reservation, the confirmed publish, the order consumer,
//! release and recovery, and `verify`.

use std::time::Duration;

use api::Mode;
use chrono::Utc;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{
    Reply, Session, TestApp, metric, spawn_api_only, spawn_app, spawn_app_with, spawn_sibling, wait_for_metric,
};
use crate::proxy::TcpProxy;
use crate::redis_server::PrivateRedis;

/// An admin creates a product with `stock + 10` units and a sale of `stock` of them.
pub(crate) async fn sale(app: &TestApp, admin: &Session, stock: i64, limit: i64, timeout_secs: i64) -> String {
    let product = app.product(admin, "100.00", stock + 10).await;
    let now = Utc::now();
    let body = json!({
        "product_id": product, "price": "9.99", "stock": stock,
        "start_at": now - chrono::Duration::seconds(1), "end_at": now + chrono::Duration::hours(1),
        "per_user_limit": limit, "payment_timeout_secs": timeout_secs,
    });
    app.post("/api/v1/sales", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn buy(app: &TestApp, session: &Session, sale: &str, quantity: i64) -> Reply {
    app.post(&format!("/api/v1/sales/{sale}/purchase"), json!({"quantity": quantity}), session.token()).await
}

async fn reservation(app: &TestApp, session: &Session, id: &str) -> Value {
    app.get(&format!("/api/v1/reservations/{id}"), session.token()).await.data(200).clone()
}

pub(crate) async fn confirmed(app: &TestApp, session: &Session, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = reservation(app, session, id).await;
        if last["status"] != "queued" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("reservation {id} still queued: {last}");
}

pub(crate) async fn verify(app: &TestApp, sale: &str) -> service::verify::Report {
    let deps = &app.services.deps;
    service::verify::sale(&deps.db, &deps.redis, &deps.keys(), sale.parse().unwrap()).await.unwrap()
}

pub(crate) async fn drained(app: &TestApp, sale: &str) {
    app.eventually(20, "every reservation has an outcome", || async {
        let report = verify(app, sale).await;
        report.passed() && report.checks.iter().any(|c| c.what.starts_with("drained"))
    })
    .await;
}

#[tokio::test]
async fn many_buyers_on_few_units_get_exact_counts() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let sale = sale(&app, &admin, 20, 1, 300).await;
    let tokens = app.services.auth.create_shoppers(200, Duration::from_secs(600)).await.unwrap();
    let buyers = tokens.iter().map(|token| {
        let request =
            app.client.post(app.url(&format!("/api/v1/sales/{sale}/purchase"))).bearer_auth(token).json(&json!({}));
        app.send(request)
    });
    let replies = futures::future::join_all(buyers).await;
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    let sold_out = replies.iter().filter(|r| r.status == 409 && r.body["error"] == "SOLD_OUT").count();
    assert_eq!((accepted, sold_out), (20, 180), "no other answer, no 5xx");

    drained(&app, &sale).await;
    assert_eq!(app.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 20);
    let view = app.get(&format!("/api/v1/sales/{sale}"), None).await;
    assert_eq!(view.data(200)["remaining"], 0);
    assert_eq!(view.data(200)["status"], "sold_out");
    assert!(verify(&app, &sale).await.passed());

    // What the dashboard shows for it.
    assert_eq!(metric(r#"purchases_total{outcome="reserved"}"#), 20.0);
    let refused =
        metric(r#"purchases_total{outcome="sold_out"}"#) + metric(r#"purchases_total{outcome="sold_out_flag"}"#);
    assert_eq!(refused, 180.0, "refused by the script or by the sold-out flag");
    assert_eq!(metric(r#"reservations_total{outcome="confirmed"}"#), 20.0);
    assert_eq!(metric(r#"reservations_total{outcome="failed"}"#), 0.0);
    assert!(metric("reserve_script_seconds_count") >= 20.0);
    assert_eq!(metric("reservation_publish_seconds_count"), 20.0, "one publish wait per reservation");
    assert_eq!(metric("reservation_batch_size_sum"), 20.0, "every reservation in some batch");
    assert!(metric("reservation_confirm_seconds_count") >= 1.0);
}

#[tokio::test]
async fn a_purchase_becomes_an_order_at_the_sale_price() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let sale = sale(&app, &admin, 5, 2, 300).await;
    let reply = buy(&app, &shopper, &sale, 2).await;
    assert_eq!(reply.data(202)["status"], "queued");
    let id = reply.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let status = confirmed(&app, &shopper, &id).await;
    assert_eq!(status["status"], "confirmed");
    let order = app.get(&format!("/api/v1/orders/{}", status["order_id"].as_str().unwrap()), shopper.token()).await;
    let order = order.data(200);
    assert_eq!(order["kind"], "sale");
    assert_eq!(order["total"], "19.98");
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(order["items"][0]["unit_price"], "9.99");

    let stranger = app.shopper().await;
    app.get(&format!("/api/v1/reservations/{id}"), stranger.token()).await.error(404, "NOT_FOUND", None);
}

#[tokio::test]
async fn per_user_limits_hold_for_every_quantity() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let one = sale(&app, &admin, 50, 1, 300).await;
    let three = sale(&app, &admin, 50, 3, 300).await;
    let shopper = app.shopper().await;

    buy(&app, &shopper, &one, 2).await.error(409, "LIMIT_REACHED", None);
    buy(&app, &shopper, &one, 1).await.data(202);
    buy(&app, &shopper, &one, 1).await.error(409, "LIMIT_REACHED", None);

    buy(&app, &shopper, &three, 2).await.data(202);
    buy(&app, &shopper, &three, 2).await.error(409, "LIMIT_REACHED", None);
    buy(&app, &shopper, &three, 1).await.data(202);
    buy(&app, &shopper, &three, 1).await.error(409, "LIMIT_REACHED", None);

    // Many concurrent attempts by one buyer: the limit still holds.
    let other = app.shopper().await;
    let attempts = futures::future::join_all((0..10).map(|_| buy(&app, &other, &three, 1))).await;
    assert_eq!(attempts.iter().filter(|r| r.status == 202).count(), 3);
    drained(&app, &three).await;
    assert!(verify(&app, &one).await.passed());
}

#[tokio::test]
async fn a_sale_only_sells_inside_its_window() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let product = app.product(&admin, "10.00", 100).await;
    let now = Utc::now();
    for (start, end, message) in [
        (now + chrono::Duration::hours(1), now + chrono::Duration::hours(2), "not started"),
        (now - chrono::Duration::hours(2), now - chrono::Duration::hours(1), "ended"),
    ] {
        let body = json!({"product_id": product, "price": "1.00", "stock": 5, "start_at": start, "end_at": end, "payment_timeout_secs": 60});
        let id = app.post("/api/v1/sales", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
        let reply = buy(&app, &shopper, &id, 1).await;
        let body = reply.error(409, "NOT_ACTIVE", None);
        assert!(body["message"].as_str().unwrap().contains(message), "{body}");
        let status = app.get(&format!("/api/v1/sales/{id}"), None).await.data(200)["status"].clone();
        assert_eq!(status, if message == "ended" { "ended" } else { "scheduled" });
    }
}

#[tokio::test]
async fn bad_sale_input_names_the_field() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let product = app.product(&admin, "10.00", 5).await;
    let now = Utc::now();
    let base = json!({"product_id": product, "price": "1.00", "stock": 2, "start_at": now,
                      "end_at": now + chrono::Duration::hours(1), "per_user_limit": 1, "payment_timeout_secs": 60});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("end_at", json!(now)), "end_at"),
        (with("stock", json!(0)), "stock"),
        (with("per_user_limit", json!(0)), "per_user_limit"),
        (with("payment_timeout_secs", json!(0)), "payment_timeout_secs"),
        (with("price", json!("1.001")), "price"),
        (with("start_at", json!("yesterday")), "start_at"),
        (with("product_id", json!(uuid::Uuid::now_v7())), "product_id"),
    ] {
        let reply = app.post("/api/v1/sales", body.clone(), admin.token()).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.body);
        reply.error(400, "INVALID_REQUEST", Some(field));
    }
    let too_many = with("stock", json!(6));
    let reply = app.post("/api/v1/sales", too_many, admin.token()).await;
    assert_eq!(reply.error(409, "INSUFFICIENT_STOCK", None)["details"]["available"], 5);
    assert_eq!(app.stock_of(&product).await, 5, "nothing was taken");

    let shopper = app.shopper().await;
    app.post("/api/v1/sales", base.clone(), shopper.token()).await.error(403, "FORBIDDEN", None);
    app.post("/api/v1/sales", base.clone(), None).await.error(401, "UNAUTHORIZED", None);
    assert_eq!(app.stock_of(&product).await, 5, "a refused sale takes nothing");
    let sale = app.post("/api/v1/sales", base, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(app.stock_of(&product).await, 3, "the sale's units left the product");
    buy(&app, &shopper, &sale, 0).await.error(400, "INVALID_REQUEST", Some("quantity"));
    let reply = app.post(&format!("/api/v1/sales/{}/purchase", uuid::Uuid::now_v7()), json!({}), shopper.token()).await;
    reply.error(404, "NOT_FOUND", None);
    app.post("/api/v1/sales", json!({}), shopper.token()).await.error(400, "INVALID_REQUEST", None);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_reservation() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let sale = sale(&app, &admin, 10, 5, 300).await;
    let send = || {
        let request = app
            .client
            .post(app.url(&format!("/api/v1/sales/{sale}/purchase")))
            .bearer_auth(&shopper.access)
            .header("Idempotency-Key", "buy-once")
            .json(&json!({"quantity": 1}));
        app.send(request)
    };
    let first = send().await.data(202)["reservation_id"].clone();
    let again = send().await.data(202)["reservation_id"].clone();
    assert_eq!(first, again);
    drained(&app, &sale).await;
    assert_eq!(app.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["remaining"], 9);
}

#[tokio::test]
async fn an_unconfirmed_publish_undoes_the_reservation() {
    let rabbit = TcpProxy::start("127.0.0.1:5672").await;
    let app =
        spawn_app_with(|s| s.amqp.url = SecretString::from(format!("amqp://guest:guest@{}/%2f", rabbit.addr))).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let sale = sale(&app, &admin, 3, 1, 300).await;

    rabbit.cut();
    buy(&app, &shopper, &sale, 1).await.error(503, "SERVICE_UNAVAILABLE", None);
    let view = app.get(&format!("/api/v1/sales/{sale}"), None).await;
    assert_eq!(view.data(200)["remaining"], 3, "nothing stays reserved");

    rabbit.restore();
    let mut accepted = None;
    for _ in 0..50 {
        let reply = buy(&app, &shopper, &sale, 1).await;
        if reply.status == 202 {
            accepted = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = accepted.expect("the buyer's slot was freed, so they can buy once the broker is back");
    let id = accepted.data(202)["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(confirmed(&app, &shopper, &id).await["status"], "confirmed");
    drained(&app, &sale).await;
}

#[tokio::test]
async fn a_flushed_redis_is_rebuilt_without_selling_a_unit_twice() {
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(|s| s.redis.url = SecretString::from(redis.url.clone())).await;
    let admin = app.admin().await;
    let sale = sale(&app, &admin, 30, 1, 300).await;
    let tokens = app.services.auth.create_shoppers(80, Duration::from_secs(600)).await.unwrap();
    let send = |token: &String| {
        let request =
            app.client.post(app.url(&format!("/api/v1/sales/{sale}/purchase"))).bearer_auth(token).json(&json!({}));
        app.send(request)
    };
    let first = futures::future::join_all(tokens[..20].iter().map(send)).await;
    assert_eq!(first.iter().filter(|r| r.status == 202).count(), 20);
    drained(&app, &sale).await;

    redis.forget_everything().await; // FLUSHALL + SCRIPT FLUSH, mid-sale
    // The sale waits (503) until its rebuild barrier passed, then the rebuilt state knows them.
    let first_answer = || async {
        loop {
            let reply = send(&tokens[0]).await;
            if reply.status != 503 {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), first_answer()).await.expect("the barrier passes").error(
        409,
        "LIMIT_REACHED",
        None,
    );
    let again = futures::future::join_all(tokens[..20].iter().map(send)).await;
    for reply in &again {
        reply.error(409, "LIMIT_REACHED", None);
    }
    let second = futures::future::join_all(tokens[20..].iter().map(send)).await;
    let accepted = second.iter().filter(|r| r.status == 202).count();
    let sold_out = second.iter().filter(|r| r.status == 409 && r.body["error"] == "SOLD_OUT").count();
    assert_eq!((accepted, sold_out), (10, 50), "the 10 units left sell once; no other answer");

    drained(&app, &sale).await;
    let orders = app.scalar("SELECT count(*) FROM orders WHERE kind = 'sale' AND status = 'pending_payment'").await;
    assert_eq!(orders, 30, "sold out, and not one unit more");
    assert!(verify(&app, &sale).await.passed(), "{}", verify(&app, &sale).await);
}

/// Buys until the answer is not a 503 of the rebuild barrier (bounded).
async fn buy_past_the_barrier(app: &TestApp, session: &Session, sale: &str) -> Reply {
    for _ in 0..300 {
        let reply = buy(app, session, sale, 1).await;
        if reply.status != 503 {
            return reply;
        }
        assert_eq!(reply.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"), "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sale stayed unavailable for 30 s");
}

#[tokio::test]
async fn a_rebuild_waits_for_the_reservations_queued_before_redis_lost_the_sale() {
    let redis = PrivateRedis::start().await;
    let first = spawn_app_with(|s| s.redis.url = SecretString::from(redis.url.clone())).await;
    let api = spawn_sibling(&first, Mode::Api, |_| {}).await;
    first.shutdown().await.unwrap();
    let admin = api.admin().await;
    let sale = sale(&api, &admin, 10, 1, 300).await;
    let mut early = Vec::new();
    for _ in 0..6 {
        let shopper = api.shopper().await;
        let id = buy(&api, &shopper, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
        early.push((shopper, id));
    }
    assert_eq!(api.scalar("SELECT count(*) FROM reservations").await, 0, "all six wait in RabbitMQ");

    // Redis restarts empty while the six reservations wait in the queue (no worker runs).
    redis.forget_everything().await;
    let mut late = Vec::new();
    for _ in 0..10 {
        late.push(api.shopper().await);
    }
    let held = buy(&api, &late[0], &sale, 1).await;
    held.error(503, "SERVICE_UNAVAILABLE", None);
    assert_eq!(held.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(buy(&api, &late[1], &sale, 1).await.status, 503, "held while nothing drains the queue");

    let _worker = spawn_sibling(&api, Mode::Worker, |_| {}).await;
    // No purchase needed: the worker loads the sale once its barrier passed (verify fails
    // on an active sale without hot state).
    api.eventually(30, "the sale is loaded again", || async { verify(&api, &sale).await.passed() }).await;
    let mut accepted = Vec::new();
    for shopper in &late {
        let reply = buy_past_the_barrier(&api, shopper, &sale).await;
        match reply.status.as_u16() {
            202 => accepted.push((shopper, reply.data(202)["reservation_id"].as_str().unwrap().to_owned())),
            _ => assert_eq!(reply.error(409, "SOLD_OUT", None)["error"], "SOLD_OUT"),
        }
    }
    assert_eq!(accepted.len(), 4, "the six queued before the loss keep their units; four are left");
    for (shopper, id) in early.iter().map(|(s, id)| (s, id)).chain(accepted.iter().map(|(s, id)| (*s, id))) {
        assert_eq!(confirmed(&api, shopper, id).await["status"], "confirmed", "every 202 becomes an order");
    }
    assert_eq!(api.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 10);
    drained(&api, &sale).await;
}

#[tokio::test]
async fn a_lost_restock_message_is_made_good_by_the_sweeper() {
    let first = spawn_app().await;
    let admin = first.admin().await;
    let sale = sale(&first, &admin, 3, 1, 300).await;
    let shopper = first.shopper().await;
    let id = buy(&first, &shopper, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let order = confirmed(&first, &shopper, &id).await["order_id"].as_str().unwrap().to_owned();
    // From here on nothing relays or consumes: the cancel's restock message stays in the
    // outbox, where it is lost.
    let api = spawn_sibling(&first, Mode::Api, |_| {}).await;
    first.shutdown().await.unwrap();
    let reply = api.post(&format!("/api/v1/orders/{order}/cancel"), json!(null), shopper.token()).await;
    assert_eq!(reply.data(200)["status"], "cancelled");
    let lost = api
        .scalar("WITH d AS (DELETE FROM outbox WHERE routing_key = 'sale.restock' RETURNING 1) SELECT count(*) FROM d");
    assert_eq!(lost.await, 1);
    let remaining = || async { api.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["remaining"].clone() };
    assert_eq!(remaining().await, 2, "Redis has not heard of the cancel");

    let _worker = spawn_sibling(&api, Mode::Worker, |_| {}).await;
    api.eventually(15, "the sweeper puts the unit back on sale", || async { remaining().await == 3 }).await;
    assert_eq!(buy(&api, &shopper, &sale, 1).await.status, 202, "the buyer's slot is free again");
    drained(&api, &sale).await;
}

#[tokio::test]
async fn a_worker_stopped_mid_drain_loses_nothing_and_duplicates_nothing() {
    let api = spawn_api_only().await;
    let admin = api.admin().await;
    let sale = sale(&api, &admin, 300, 1, 300).await;
    let tokens = api.services.auth.create_shoppers(200, Duration::from_secs(600)).await.unwrap();
    let replies = futures::future::join_all(tokens.iter().map(|token| {
        let request =
            api.client.post(api.url(&format!("/api/v1/sales/{sale}/purchase"))).bearer_auth(token).json(&json!({}));
        api.send(request)
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 202));
    assert_eq!(api.scalar("SELECT count(*) FROM reservations").await, 0, "nothing consumed yet");

    // A worker takes a delivery and, held up by the sale's row lock, is inside its
    // transaction when its broker connection dies: it commits, and its ack is lost.
    let lock = sea_orm::TransactionTrait::begin(&api.db).await.unwrap();
    let sql = format!("SELECT id FROM sales WHERE id = '{sale}' FOR UPDATE");
    sea_orm::ConnectionTrait::execute_unprepared(&lock, &sql).await.unwrap();
    let rabbit = TcpProxy::start("127.0.0.1:5672").await;
    let worker = spawn_sibling(&api, Mode::Worker, |s| {
        s.amqp.url = SecretString::from(format!("amqp://guest:guest@{}/%2f", rabbit.addr));
        s.amqp.order_prefetch = 1.try_into().unwrap();
    })
    .await;
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    api.eventually(30, "the worker waits for the sale's row", || async { api.scalar(waiting).await >= 1 }).await;
    rabbit.cut();
    lock.commit().await.unwrap();
    api.eventually(30, "the worker commits what it held", || async {
        api.scalar("SELECT count(*) FROM reservations").await > 0
    })
    .await;
    let committed = api.scalar("SELECT count(*) FROM reservations").await;
    assert!(committed < 200, "work is left for the replacement: {committed}");

    let confirmed = r#"reservations_total{outcome="confirmed"}"#;
    let replacement = spawn_sibling(&api, Mode::Worker, |_| {}).await;
    api.eventually(30, "every reservation is confirmed", || async {
        api.scalar("SELECT count(*) FROM reservations WHERE status = 'confirmed'").await == 200
    })
    .await;
    assert_eq!(api.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 200, "one order each");
    // The committed but unacknowledged delivery came back to the replacement, which found
    // it recorded and only confirmed it again.
    wait_for_metric(confirmed, 200.0 + committed as f64).await;
    drained(&api, &sale).await;
    drop((worker, replacement));
}

#[tokio::test]
async fn an_unpaid_sale_order_closes_and_the_buyer_may_buy_again() {
    let app = spawn_app_with(|s| s.sales.sold_out_flag_ms = 60_000).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let late = app.shopper().await;
    let sale = sale(&app, &admin, 1, 1, 1).await;
    let id = buy(&app, &shopper, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let order = confirmed(&app, &shopper, &id).await["order_id"].as_str().unwrap().to_owned();
    // Sold out: the flag is set (and trusted for a minute) ...
    buy(&app, &late, &sale, 1).await.error(409, "SOLD_OUT", None);
    buy(&app, &shopper, &sale, 1).await.error(409, "SOLD_OUT", None);
    // ... and refuses purchases before anything else, even unauthenticated ones.
    let anonymous = app.post(&format!("/api/v1/sales/{sale}/purchase"), json!({}), None).await;
    anonymous.error(409, "SOLD_OUT", None);

    app.eventually(15, "the unpaid order closes", || async { app.order_status(&shopper, &order).await == "closed" })
        .await;
    // ... but the restock notice clears it, so the returned unit sells again at once.
    let mut again = None;
    for _ in 0..50 {
        let reply = buy(&app, &shopper, &sale, 1).await;
        if reply.status == 202 {
            again = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = match again {
        Some(reply) => reply,
        None => panic!("the same buyer buys the returned unit: {}", buy(&app, &shopper, &sale, 1).await.body),
    };
    let id = again.data(202)["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(confirmed(&app, &shopper, &id).await["status"], "confirmed");
    drained(&app, &sale).await;
    let report = verify(&app, &sale).await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn verify_fails_on_a_corrupted_sale() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let sale = sale(&app, &admin, 5, 1, 300).await;
    let id = buy(&app, &shopper, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    confirmed(&app, &shopper, &id).await;
    drained(&app, &sale).await;

    // Redis gains a unit out of nowhere.
    let keys = app.services.deps.keys().sale(sale.parse().unwrap());
    let mut redis = app.services.deps.redis.clone();
    redis::cmd("HINCRBY").arg(&keys.state).arg("stock").arg(1).query_async::<i64>(&mut redis).await.unwrap();
    let report = verify(&app, &sale).await;
    assert!(!report.passed(), "{report}");
    redis::cmd("HINCRBY").arg(&keys.state).arg("stock").arg(-1).query_async::<i64>(&mut redis).await.unwrap();
    assert!(verify(&app, &sale).await.passed());

    // Postgres returns a unit twice.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        &format!("UPDATE sales SET stock_left = stock_left + 1 WHERE id = '{sale}'"),
    )
    .await
    .unwrap();
    let report = verify(&app, &sale).await;
    assert!(!report.passed(), "{report}");
    assert!(report.to_string().contains("INVARIANTS VIOLATED"));
}

#[tokio::test]
async fn the_sale_list_shows_every_sale_and_current_ones_with_what_is_left() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let active = sale(&app, &admin, 4, 2, 300).await;
    let product = app.product(&admin, "10.00", 10).await;
    let now = Utc::now();
    let ended = json!({"product_id": product, "price": "1.00", "stock": 2, "start_at": now - chrono::Duration::hours(2),
                       "end_at": now - chrono::Duration::hours(1), "payment_timeout_secs": 60});
    let ended = app.post("/api/v1/sales", ended, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();
    let id = buy(&app, &shopper, &active, 2).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    confirmed(&app, &shopper, &id).await;

    let all = app.get("/api/v1/sales", None).await;
    assert_eq!(all.data(200)["total"], 2);
    let mut ids: Vec<&str> =
        all.data(200)["items"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected = [active.as_str(), ended.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    let current = app.get("/api/v1/sales?current=true", None).await;
    let data = current.data(200);
    assert_eq!(data["total"], 1, "{data}");
    assert_eq!(data["items"][0]["id"], active.as_str());
    assert_eq!(data["items"][0]["status"], "active");
    assert_eq!(data["items"][0]["remaining"], 2);
    app.get("/api/v1/sales?page_size=101", None).await.error(400, "INVALID_REQUEST", Some("page_size"));
}

#[tokio::test]
async fn an_undo_and_the_consumers_claim_exclude_each_other() {
    let api = spawn_api_only().await;
    let admin = api.admin().await;
    let sale = sale(&api, &admin, 5, 1, 300).await;
    let (ann, bob) = (api.shopper().await, api.shopper().await);
    let stored = buy(&api, &ann, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let late = buy(&api, &bob, &sale, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let keys = api.services.deps.keys().sale(sale.parse().unwrap());
    let mut redis = api.services.deps.redis.clone();

    // "Stored, confirm lost": the consumer claimed Ann's reservation before the API gave up
    // on the confirm; the undo then refuses, and the API answers 202.
    let claimed = repo::cache::sales::claim(&mut redis, &keys, &[stored.parse().unwrap()]).await.unwrap();
    assert_eq!(claimed, [true]);
    let held = |session: &Session, id: &str| repo::cache::sales::Held {
        reservation_id: id.parse().unwrap(),
        user_id: session.user_id.parse().unwrap(),
        quantity: 1,
    };
    let undo = &api.services.undo;
    let sale_id = sale.parse().unwrap();
    assert!(!undo.reservation(sale_id, held(&ann, &stored)).await.unwrap(), "a claimed reservation is never undone");

    // Bob's publish "failed" first: the undo returns his unit, and his late message must
    // then be dropped by the consumer.
    assert!(undo.reservation(sale_id, held(&bob, &late)).await.unwrap());
    assert_eq!(api.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["remaining"], 4);

    let worker = spawn_sibling(&api, Mode::Worker, |_| {}).await;
    assert_eq!(confirmed(&api, &ann, &stored).await["status"], "confirmed");
    // Both messages (one per purchase) consumed, the late one dropped.
    wait_for_metric(r#"amqp_consumed_total{queue="sale.reservations",outcome="ack"}"#, 2.0).await;
    assert_eq!(api.scalar("SELECT count(*) FROM reservations WHERE status = 'confirmed'").await, 1);
    let undone = "SELECT count(*) FROM reservations WHERE status = 'failed' AND reason = 'broker_unavailable'";
    assert_eq!(api.scalar(undone).await, 1, "the undo is recorded");
    assert_eq!(api.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 1, "no order for the undone one");
    let bobs = format!("SELECT count(*) FROM orders WHERE user_id = '{}'", bob.user_id);
    assert_eq!(api.scalar(&bobs).await, 0);
    drained(&api, &sale).await;
    assert_eq!(api.get(&format!("/api/v1/sales/{sale}"), None).await.data(200)["remaining"], 4);
    drop(worker);
}
