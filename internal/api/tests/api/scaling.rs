//! Spike past one machine: two API instances on a private three-master Redis Cluster
//! (sharded pub/sub between them), and quorum queues on the broker.

use std::time::Duration;

use api::Mode;
use platform::config::{QueueType, RedisMode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestApp, spawn_app_with, spawn_sibling};
use crate::redis_cluster::PrivateCluster;
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
