//! `spike-bench`: the ceilings `scripts/bench` compares Spike's paths with, measured on the
//! same machine in the same run.
//!
//! - `poem`: a bare poem-openapi GET endpoint returning a small JSON object;
//! - `poem-lua`: a poem-openapi endpoint that runs `reserve_stock.lua` through the same
//!   Redis client path Spike uses (a multiplexed `ConnectionManager`, `redis::Script`);
//! - `amqp`: raw lapin publish-with-confirm throughput (persistent messages, durable queue).
//!
//! And two loads wrk cannot make:
//! - `open`: requests at a fixed arrival rate, latency from each request's due time;
//! - `watchers`: N WebSocket watchers on one auction and a bidder at a fixed rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use platform::Redis;
use poem::listener::TcpListener;
use poem::{Route, Server};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, OpenApiService};
use redis::aio::ConnectionManager;
use repo::cache::Keys;
use repo::cache::sales::{self, Snapshot};
use uuid::Uuid;

mod open_loop;
mod watchers;

/// The same allocator as spike-server, so the ceilings compare like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve GET /ping: a bare poem-openapi endpoint.
    Poem {
        #[arg(long, default_value = "127.0.0.1:18081")]
        addr: String,
    },
    /// Serve POST /reserve: one reserve_stock.lua per request.
    PoemLua {
        #[arg(long, default_value = "127.0.0.1:18082")]
        addr: String,
        /// One URL, or a Redis Cluster's nodes separated by commas.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long, default_value = "bench-ceiling")]
        prefix: String,
    },
    /// Publish persistent messages with confirms for `secs`; print messages per second.
    Amqp {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Concurrent publishers, each waiting for its own confirm before the next publish.
        #[arg(long, default_value_t = 50)]
        publishers: usize,
    },
    /// Open-loop load at a fixed rate; prints p50/p99/p99.9 and the achieved rate as JSON.
    Open(open_loop::OpenArgs),
    /// N watchers on an auction's live feed while a bidder bids; prints the delays as JSON.
    Watchers(watchers::WatchArgs),
}

#[derive(Object)]
struct Pong {
    ok: bool,
    at: u64,
}

struct PingApi;

#[OpenApi]
impl PingApi {
    #[oai(path = "/ping", method = "get")]
    async fn ping(&self) -> Json<Pong> {
        Json(Pong { ok: true, at: 1 })
    }
}

#[derive(Object)]
struct Reserved {
    reserved: bool,
}

struct ReserveApi {
    redis: Redis,
    keys: Keys,
    sale: Uuid,
}

#[OpenApi]
impl ReserveApi {
    #[oai(path = "/reserve", method = "post")]
    async fn reserve(&self) -> Json<Reserved> {
        let keys = self.keys.sale(self.sale);
        let ask = sales::Ask {
            user_id: Uuid::new_v4(),
            quantity: 1,
            reservation_id: Uuid::now_v7(),
            idempotency_key: None,
            fingerprint: "q1",
            idempotency_ttl_ms: 0,
            deadline_ms: 60_000,
        };
        let answer = sales::reserve(&mut self.redis.clone(), &keys, &ask).await;
        Json(Reserved { reserved: matches!(answer, Ok(sales::Reserve::Reserved { .. })) })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Poem { addr } => {
            let api = OpenApiService::new(PingApi, "ping", "1");
            Server::new(TcpListener::bind(addr)).run(Route::new().nest("/", api)).await?;
        }
        Command::PoemLua { addr, redis, prefix } => {
            let redis = connect_redis(&redis).await?;
            let keys = Keys::new(&prefix);
            let sale = Uuid::now_v7();
            // A sale that never sells out and never hits a limit: every request reserves.
            let far = 4_102_444_800_000; // 2100-01-01
            let snapshot = Snapshot {
                start_ms: 0,
                end_ms: far,
                per_user_limit: i32::MAX,
                stock_left: i32::MAX,
                version: 0,
                generation: "bench".into(),
                expire_at_ms: far,
                buyers: vec![],
                keys: vec![],
                idempotency_ttl_ms: 0,
                received: vec![],
                buckets: 1,
            };
            sales::load(&mut redis.clone(), &keys.sale(sale), &snapshot).await?;
            let api = OpenApiService::new(ReserveApi { redis, keys, sale }, "reserve", "1");
            Server::new(TcpListener::bind(addr)).run(Route::new().nest("/", api)).await?;
        }
        Command::Amqp { url, secs, publishers } => {
            let rate = publish_with_confirms(&url, Duration::from_secs(secs), publishers).await?;
            println!("{rate:.0}");
        }
        Command::Open(args) => println!("{}", open_loop::run(args).await?),
        Command::Watchers(args) => println!("{}", watchers::run(args).await?),
    }
    Ok(())
}

/// One server, or a Redis Cluster when `url` lists its nodes separated by commas.
async fn connect_redis(url: &str) -> anyhow::Result<Redis> {
    if url.contains(',') {
        let client = redis::cluster::ClusterClient::new(url.split(',').collect::<Vec<_>>())?;
        return Ok(Redis::Cluster(client.get_async_connection().await?));
    }
    Ok(Redis::Single(ConnectionManager::new(redis::Client::open(url)?).await?))
}

/// Each publisher publishes one persistent message and waits for its confirm, in a loop,
/// all on one channel: the pattern of one confirm per reservation.
async fn publish_with_confirms(url: &str, duration: Duration, publishers: usize) -> anyhow::Result<f64> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = format!("bench.confirm.{}", Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            let (channel, queue, sent) = (channel.clone(), queue.clone(), sent.clone());
            tokio::spawn(async move {
                let payload = vec![b'x'; 200];
                while started.elapsed() < duration {
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &payload,
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await;
                    if let Ok(confirm) = confirm
                        && confirm.await.is_ok_and(|c| c.is_ack())
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let rate = sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    connection.close(200, "done".into()).await?;
    Ok(rate)
}
