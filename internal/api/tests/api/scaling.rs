//! Spike past one machine: two API instances on a private three-master Redis Cluster
//! (sharded pub/sub between them), and quorum queues on the broker.

use std::time::Duration;

use api::Mode;
use platform::config::{QueueType, RedisMode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestApp, spawn_app_with, spawn_sibling};
use crate::redis_cluster::{PrivateCluster, query};
use crate::sales::{buy, confirmed, drained, sale, verify};

async fn next_message(
    socket: &mut (impl futures::StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> serde_json::Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("a message in time");
        if let Some(Ok(Message::Text(text))) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// An instance on `cluster`, and an API-only sibling on the same database and prefixes.
pub(crate) async fn two_instances(
    cluster: &PrivateCluster,
    customize: impl FnOnce(&mut platform::Settings),
) -> [TestApp; 2] {
    let url = cluster.url();
    let a = spawn_app_with(|s| {
        s.redis.mode = RedisMode::Cluster;
        s.redis.url = url.into();
        customize(s);
    })
    .await;
    let b = spawn_sibling(&a, Mode::Api, |_| {}).await;
    [a, b]
}

#[tokio::test]
async fn a_flash_sale_race_over_two_instances_on_a_redis_cluster_sells_exactly_the_stock() {
    let Some(cluster) = PrivateCluster::start().await else { return };
    let [a, b] = two_instances(&cluster, |_| {}).await;
    let admin = a.admin().await;
    let sale_id = sale(&a, &admin, 20, 1, 300).await;
    let tokens = a.services.auth.create_shoppers(200, Duration::from_secs(600)).await.unwrap();
    let buyers = tokens.iter().enumerate().map(|(i, token)| {
        let app = if i % 2 == 0 { &a } else { &b };
        let url = app.url(&format!("/api/v1/sales/{sale_id}/purchase"));
        app.send(app.client.post(url).bearer_auth(token).json(&json!({})))
    });
    let replies = futures::future::join_all(buyers).await;
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    let sold_out = replies.iter().filter(|r| r.status == 409 && r.body["error"] == "SOLD_OUT").count();
    assert_eq!((accepted, sold_out), (20, 180), "no other answer, no 5xx");

    // One buyer hammering both instances at once: the per-user limit holds.
    let limited = sale(&a, &admin, 50, 3, 300).await;
    let shopper = a.shopper().await;
    let attempts =
        futures::future::join_all((0..12).map(|i| buy(if i % 2 == 0 { &a } else { &b }, &shopper, &limited, 1)));
    let attempts = attempts.await;
    assert_eq!(attempts.iter().filter(|r| r.status == 202).count(), 3);
    assert_eq!(attempts.iter().filter(|r| r.body["error"] == "LIMIT_REACHED").count(), 9);

    drained(&a, &sale_id).await;
    drained(&a, &limited).await;
    assert_eq!(a.scalar("SELECT count(*) FROM orders WHERE kind = 'sale'").await, 23);
    for app in [&a, &b] {
        let view = app.get(&format!("/api/v1/sales/{sale_id}"), None).await;
        assert_eq!(view.data(200)["remaining"], 0);
        assert_eq!(view.data(200)["status"], "sold_out");
    }
    let spread = cluster.keys_per_node().await;
    assert!(spread.iter().filter(|n| **n > 0).count() >= 2, "keys on several masters: {spread:?}");
}

#[tokio::test]
async fn a_bid_on_one_instance_reaches_a_watcher_on_the_other_through_sharded_pubsub() {
    let Some(cluster) = PrivateCluster::start().await else { return };
    let [a, b] = two_instances(&cluster, |_| {}).await;
    let channel = a.services.deps.keys().auction_channel();
    a.eventually(10, "both instances subscribe with SSUBSCRIBE", || async {
        cluster.shard_subscribers(&channel).await == 2
    })
    .await;
    let admin = a.admin().await;
    let now = chrono::Utc::now();
    let body = json!({
        "title": "Lot", "start_price": "10.00", "min_increment": "1.00",
        "start_at": now - chrono::Duration::seconds(1), "end_at": now + chrono::Duration::hours(1),
        "extend_window_secs": 0, "extend_by_secs": 0, "payment_timeout_secs": 300,
    });
    let lot = a.post("/api/v1/auctions", body, admin.token()).await.data(201)["id"].as_str().unwrap().to_owned();

    let url = format!("{}/api/v1/auctions/{lot}/live", b.address.replace("http", "ws"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    assert_eq!(next_message(&mut socket).await["type"], "state");
    let bid = json!({ "amount": "12.00" });
    a.post(&format!("/api/v1/auctions/{lot}/bids"), bid, a.shopper().await.token()).await.data(201);
    let event = next_message(&mut socket).await;
    assert_eq!(event["type"], "bid");
    assert_eq!(event["price"], "12.00");
    assert_eq!(event["seq"], 1);
}

#[tokio::test]
async fn a_restock_on_one_instance_clears_the_sold_out_flag_of_the_other() {
    let Some(cluster) = PrivateCluster::start().await else { return };
    // The flag is trusted for a minute: only the restock notice can clear it in time.
    let [a, b] = two_instances(&cluster, |s| s.sales.sold_out_flag_ms = 60_000).await;
    let channel = a.services.deps.keys().sale_restock_channel();
    a.eventually(10, "both instances subscribe with SSUBSCRIBE", || async {
        cluster.shard_subscribers(&channel).await == 2
    })
    .await;
    let admin = a.admin().await;
    let (shopper, late) = (a.shopper().await, a.shopper().await);
    let sale_id = sale(&a, &admin, 1, 1, 1).await;
    let id = buy(&a, &shopper, &sale_id, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let order = confirmed(&a, &shopper, &id).await["order_id"].as_str().unwrap().to_owned();
    buy(&b, &late, &sale_id, 1).await.error(409, "SOLD_OUT", None);

    // The unpaid order closes on `a` (the worker), its unit goes back, and `b` hears of it.
    a.eventually(20, "the unpaid order closes", || async { a.order_status(&shopper, &order).await == "closed" }).await;
    a.eventually(10, "the returned unit sells on the other instance", || async {
        buy(&b, &late, &sale_id, 1).await.status == 202
    })
    .await;
    drained(&a, &sale_id).await;
}

#[tokio::test]
async fn quorum_queues_carry_a_purchase_to_an_order_and_a_close_through_the_delay_queue() {
    let app = spawn_app_with(|s| s.amqp.queue_type = QueueType::Quorum).await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let sale_id = sale(&app, &admin, 5, 1, 1).await;
    let id = buy(&app, &shopper, &sale_id, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let order = confirmed(&app, &shopper, &id).await["order_id"].as_str().unwrap().to_owned();
    app.eventually(20, "the unpaid order closes through the delay queue", || async {
        app.order_status(&shopper, &order).await == "closed"
    })
    .await;
    // A quorum queue refuses to be declared classic, and a classic one quorum.
    let topology = app.services.deps.topology();
    for &route in repo::mq::topology::ROUTES {
        for queue in [topology.queue(route), topology.dead_letters(route)] {
            assert!(!declares_as(&app, &queue, "classic").await, "{queue} is a quorum queue");
        }
        let retry = topology.retry_queue(route, app.settings.amqp.retry_delays_ms[0]);
        assert!(!declares_as(&app, &retry, "quorum").await, "{retry} (TTL) stays classic");
    }
    let report = verify(&app, &sale_id).await;
    assert!(report.passed(), "{report}");
    // Quorum queues never expire (see Topology::quorum_arguments): remove this test's.
    let settings = app.settings.clone();
    app.shutdown().await.unwrap();
    let broker = platform::Broker::connect(&settings.amqp, "spike-test").await.unwrap();
    let channel = broker.channel().await.unwrap();
    for &route in repo::mq::topology::ROUTES {
        for queue in [topology.queue(route), topology.dead_letters(route)] {
            channel.queue_delete(queue.as_str().into(), Default::default()).await.unwrap();
        }
    }
}

/// Whether the broker accepts declaring `queue` (durable) with `x-queue-type = kind`.
async fn declares_as(app: &TestApp, queue: &str, kind: &str) -> bool {
    let channel = app.services.deps.broker.channel().await.unwrap();
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString(kind.into()));
    let options = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    let declared = channel.queue_declare(queue.into(), options, arguments).await.is_ok();
    let _ = channel.close(200, "checked".into()).await;
    declared
}

#[tokio::test]
async fn a_pipeline_over_keys_of_several_slots_works_on_a_redis_cluster() {
    let Some(cluster) = PrivateCluster::start().await else { return };
    let [a, _b] = two_instances(&cluster, |_| {}).await;
    let (deps, keys) = (&a.services.deps, a.services.deps.keys());
    let sale = uuid::Uuid::now_v7();
    // The reservation publisher marks a whole batch "queued" in one pipeline; their keys
    // carry no common hash tag, so they land in different slots.
    let batch: Vec<_> = (0..20)
        .map(|_| domain::reservation::ReservationProgress::queued(uuid::Uuid::now_v7(), sale, uuid::Uuid::now_v7()))
        .collect();
    repo::cache::reservations::mark_queued(&mut deps.redis.clone(), &keys, &batch, 60).await.unwrap();
    for progress in &batch {
        let found = repo::cache::reservations::find(&mut deps.redis.clone(), &keys, progress.id).await.unwrap();
        assert_eq!(found.map(|p| p.id), Some(progress.id));
    }
}

/// One purchase of one unit as the shopper holding `token`.
async fn buy_as(app: &TestApp, token: &str, sale: &str) -> crate::helpers::Reply {
    let url = app.url(&format!("/api/v1/sales/{sale}/purchase"));
    app.send(app.client.post(url).bearer_auth(token).json(&json!({}))).await
}

/// Waits (at most `secs`) until `ready` holds, checking every 50 ms.
async fn within<F, Fut>(secs: u64, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let wait = async {
        while !ready().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), wait)
        .await
        .unwrap_or_else(|_| panic!("not within {secs}s: {what}"));
}

/// Until the replica on `replica` is a master and serves `key`'s slot.
async fn promoted(cluster: &PrivateCluster, replica: u16, key: &str) {
    within(30, "the replica is promoted and serves the sale's slot", || async {
        cluster.role(replica).await == "master" && cluster.master_of(key).await == replica
    })
    .await;
}

#[tokio::test]
async fn a_master_killed_mid_sale_fails_over_to_its_replica_and_every_202_becomes_an_order() {
    let Some(mut cluster) = PrivateCluster::with_replicas().await else { return };
    let [a, b] = two_instances(&cluster, |_| {}).await;
    let admin = a.admin().await;
    let stock = 300;
    let sale_id = sale(&a, &admin, stock, 1, 300).await;
    let state = a.services.deps.keys().sale(sale_id.parse().unwrap()).state;
    let master = cluster.master_of(&state).await;
    let replica = cluster.replica_of(master).await;
    let tokens = a.services.auth.create_shoppers(1000, Duration::from_secs(600)).await.unwrap();
    let tokens = std::sync::Mutex::new(tokens.into_iter());

    // Four buyers in a row each (two per instance) buy one unit per fresh shopper, before,
    // during and after the failover; each answer is kept with the phase it was asked in.
    // 0: before the kill, 1: the master is dead, 2: the replica serves the slot.
    let phase = std::sync::atomic::AtomicU8::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let answers = std::sync::Mutex::new(Vec::new());
    let lanes = (0..4).map(|lane| {
        let (app, sale_id, tokens, phase, done, answers) =
            (if lane % 2 == 0 { &a } else { &b }, &sale_id, &tokens, &phase, &done, &answers);
        async move {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let Some(token) = tokens.lock().unwrap().next() else { break };
                let asked_in = phase.load(std::sync::atomic::Ordering::SeqCst);
                let reply = buy_as(app, &token, sale_id).await;
                let status = reply.status.as_u16();
                answers.lock().unwrap().push((asked_in, status, reply.body));
                if status == 503 {
                    // What a client does with Retry-After: wait a little, not hammer.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let accepted_in = |wanted: u8| accepted_in_all(&answers.lock().unwrap(), wanted);
    let failover = async {
        within(30, "20 purchases before the kill", || async { accepted_in(0) >= 20 }).await;
        cluster.kill(master);
        phase.store(1, std::sync::atomic::Ordering::SeqCst);
        promoted(&cluster, replica, &state).await;
        phase.store(2, std::sync::atomic::Ordering::SeqCst);
        within(30, "a purchase succeeds after the promotion", || async { accepted_in(2) >= 10 }).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    tokio::join!(futures::future::join_all(lanes), failover);
    let answers = answers.into_inner().unwrap();

    // Only two answers, whenever asked: 202, or 503 while the slot has no master.
    let wrong: Vec<_> = answers.iter().filter(|(_, s, _)| *s != 202 && *s != 503).collect();
    assert!(wrong.is_empty(), "answers other than 202 and 503: {wrong:?}");
    let unavailable = answers.iter().filter(|(_, s, _)| *s == 503).count();
    for (_, _, body) in answers.iter().filter(|(_, s, _)| *s == 503) {
        assert!(["SERVICE_UNAVAILABLE", "REQUEST_TIMEOUT"].contains(&body["error"].as_str().unwrap_or("")), "{body}");
    }
    let ids: Vec<String> = answers
        .iter()
        .filter(|(_, s, _)| *s == 202)
        .map(|(_, _, body)| format!("'{}'", body["data"]["reservation_id"].as_str().unwrap()))
        .collect();
    eprintln!(
        "failover: {} answers, {} accepted ({} before the kill, {} after the promotion), {unavailable} unavailable",
        answers.len(),
        ids.len(),
        accepted_in_all(&answers, 0),
        accepted_in_all(&answers, 2)
    );

    // Every 202 becomes an order, nothing is oversold, Redis and Postgres agree.
    drained(&a, &sale_id).await;
    let ordered = a
        .scalar(&format!("SELECT count(*) FROM reservations WHERE order_id IS NOT NULL AND id IN ({})", ids.join(",")))
        .await;
    assert_eq!(ordered, ids.len() as i64, "every 202 is an order");
    let orders = a
        .scalar(&format!("SELECT count(*) FROM reservations WHERE sale_id = '{sale_id}' AND order_id IS NOT NULL"))
        .await;
    // A buyer told 503 may still have an order: the reservation and its confirmed message
    // were made, only the "published" mark could not be written on the dying master; the
    // consumer claimed it before the reaper did (docs/reliability.md, double-fault windows).
    assert!(orders >= ids.len() as i64 && orders <= ids.len() as i64 + unavailable as i64, "{orders} orders");
    assert!(orders <= stock, "not oversold");
    eprintln!("failover: {orders} orders for {} 202s", ids.len());
    let report = verify(&a, &sale_id).await;
    assert!(report.passed(), "{report}");
    assert_eq!(cluster.role(replica).await, "master");
}

fn accepted_in_all(answers: &[(u8, u16, serde_json::Value)], phase: u8) -> usize {
    answers.iter().filter(|(p, s, _)| *p == phase && *s == 202).count()
}

#[tokio::test]
async fn a_failover_that_loses_writes_leaves_redis_selling_units_postgres_refuses_and_verify_flags_it() {
    // Redis replication is asynchronous: what a master acknowledged but had not yet sent to
    // its replica is gone when the replica takes over. That window is a few microseconds
    // on one machine, so the test opens it on purpose: the replica is frozen and its link
    // cut, purchases go on on the master alone, then the master dies and the replica (with
    // the sale as it was before them) is promoted. The sale's hot state is still there, of
    // the same generation, so nothing in Spike notices: no rebuild barrier, and the
    // consumer's settle finds nothing to count. This pins down what happens then.
    let Some(mut cluster) = PrivateCluster::with_replicas().await else { return };
    let app = spawn_app_with(|s| {
        s.redis.mode = RedisMode::Cluster;
        s.redis.url = cluster.url().into();
    })
    .await;
    let admin = app.admin().await;
    let sale_id = sale(&app, &admin, 10, 1, 300).await;
    let state = app.services.deps.keys().sale(sale_id.parse().unwrap()).state;
    let master = cluster.master_of(&state).await;
    let replica = cluster.replica_of(master).await;

    let mut early = Vec::new();
    for _ in 0..3 {
        let shopper = app.shopper().await;
        let id = buy(&app, &shopper, &sale_id, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
        confirmed(&app, &shopper, &id).await;
        early.push(shopper);
    }
    drained(&app, &sale_id).await;
    let synced: i64 = query(master, redis::cmd("WAIT").arg(1).arg(5000)).await.unwrap();
    assert_eq!(synced, 1, "the replica has the first three");

    cluster.signal(replica, "STOP");
    let cut: i64 = query(master, redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica")).await.unwrap();
    assert_eq!(cut, 1, "the replication link is cut");
    let mut lost = Vec::new();
    for _ in 0..4 {
        let shopper = app.shopper().await;
        let id = buy(&app, &shopper, &sale_id, 1).await.data(202)["reservation_id"].as_str().unwrap().to_owned();
        assert_eq!(confirmed(&app, &shopper, &id).await["status"], "confirmed");
        lost.push(shopper);
    }
    drained(&app, &sale_id).await;
    cluster.kill(master);
    cluster.signal(replica, "CONT");
    tokio::time::timeout(Duration::from_secs(30), promoted(&cluster, replica, &state)).await.expect("promoted");

    // Every 202 given before the failover is an order: Postgres is the record, and it was
    // written before the master died. Redis, though, forgot four reservations.
    let ordered = format!("SELECT count(*) FROM reservations WHERE sale_id = '{sale_id}' AND order_id IS NOT NULL");
    assert_eq!(app.scalar(&ordered).await, 7);
    let view = app.get(&format!("/api/v1/sales/{sale_id}"), None).await;
    assert_eq!(view.data(200)["remaining"], 7, "Redis counts only the three it kept");
    let report = verify(&app, &sale_id).await;
    assert!(!report.passed(), "verify sees Redis and Postgres disagree: {report}");

    // A buyer whose reservation was forgotten is not limited any more in Redis: a 202 that
    // Postgres refuses (LIMIT_REACHED).
    let again = buy_until_answered(&app, &lost[0], &sale_id).await;
    let again = again.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let outcome = confirmed(&app, &lost[0], &again).await;
    assert_eq!(
        (outcome["status"].as_str(), outcome["reason"].as_str()),
        (Some("failed"), Some("limit_reached")),
        "{outcome}"
    );

    // New buyers: Postgres has 3 units left, Redis sells 7. Each unit Postgres refuses goes
    // back to Redis (fail_reservations.lua returns what the reservation took), so Redis
    // goes on selling 4 units that do not exist: 202s that end failed, sold_out.
    let mut accepted = Vec::new();
    for _ in 0..7 {
        let shopper = app.shopper().await;
        let reply = buy_until_answered(&app, &shopper, &sale_id).await;
        accepted.push((reply.data(202)["reservation_id"].as_str().unwrap().to_owned(), shopper));
    }
    let mut refused = 0;
    for (id, shopper) in &accepted {
        let outcome = confirmed(&app, shopper, id).await;
        if outcome["status"] == "failed" {
            assert_eq!(outcome["reason"], "sold_out", "{outcome}");
            refused += 1;
        }
    }
    assert_eq!(refused, 4, "four 202s for units Redis kept but Postgres had sold");
    assert_eq!(app.scalar(&ordered).await, 10, "Postgres never oversells");
    app.eventually(10, "the refused units are back on sale in Redis", || async {
        app.get(&format!("/api/v1/sales/{sale_id}"), None).await.data(200)["remaining"] == 4
    })
    .await;
    let report = verify(&app, &sale_id).await;
    assert!(!report.passed(), "{report}");

    // The remedy until Spike notices such a failover by itself (docs/runbook.md): drop the
    // sale's hot state; the next purchase rebuilds it from Postgres behind the rebuild
    // barrier, and Redis and Postgres agree again.
    let mut redis = app.services.deps.redis.clone();
    redis::cmd("DEL").arg(&state).query_async::<i64>(&mut redis).await.unwrap();
    let late = app.shopper().await;
    buy_until_answered(&app, &late, &sale_id).await.error(409, "SOLD_OUT", None);
    drained(&app, &sale_id).await;
    assert_eq!(app.get(&format!("/api/v1/sales/{sale_id}"), None).await.data(200)["remaining"], 0);
}

/// A purchase retried past 503s (the slot has no master yet, or the client has not seen the
/// promotion), as a client honouring `Retry-After` would.
async fn buy_until_answered(app: &TestApp, session: &crate::helpers::Session, sale: &str) -> crate::helpers::Reply {
    let retried = async {
        loop {
            let reply = buy(app, session, sale, 1).await;
            if reply.status != 503 {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), retried).await.expect("an answer other than 503 within 30 s")
}
