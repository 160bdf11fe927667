//! `spike-server bots`: bidding robots. N bidders each read the price and bid
//! +1..+10 over it, as fast as the server lets them, while a watcher on the live WebSocket
//! checks that the price never goes backwards. Then a summary and `verify --auction`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use platform::Settings;
use rand::Rng;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    too_low: AtomicU64,
    closed: AtomicU64,
    other: AtomicU64,
    /// Live bid messages the watcher saw, and how many of them went backwards.
    seen: AtomicU64,
    backwards: AtomicU64,
}

pub async fn run(
    settings: Arc<Settings>,
    auction: Uuid,
    bidders: usize,
    secs: u64,
    url: &str,
) -> anyhow::Result<ExitCode> {
    if bidders == 0 || secs == 0 {
        anyhow::bail!("--bidders and --secs must be at least 1");
    }
    let services = crate::commands::services(settings).await?;
    let tokens = services
        .auth
        .create_shoppers(bidders, Duration::from_secs(secs + 3600))
        .await
        .map_err(|e| anyhow::anyhow!("creating bidders: {e}"))?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(bidders).build()?;
    let base = url.trim_end_matches('/').to_owned();
    let auction_url = format!("{base}/api/v1/auctions/{auction}");
    let first = client.get(&auction_url).send().await?;
    if !first.status().is_success() {
        anyhow::bail!("GET {auction_url}: {} {}", first.status(), first.text().await.unwrap_or_default());
    }

    let tally = Arc::new(Tally::default());
    let watcher = tokio::spawn(watch_prices(format!("{}/live", auction_url.replacen("http", "ws", 1)), tally.clone()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let bots: Vec<_> = tokens
        .into_iter()
        .map(|token| tokio::spawn(bidder(client.clone(), auction_url.clone(), token, tally.clone(), deadline)))
        .collect();

    let started = Instant::now();
    while Instant::now() < deadline && !bots.iter().all(|b| b.is_finished()) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let price = current_price(&client, &auction_url).await;
        println!(
            "{:>4}s  accepted {:>6}  too low {:>7}  closed {:>5}  price {price}",
            started.elapsed().as_secs(),
            tally.accepted.load(Ordering::Relaxed),
            tally.too_low.load(Ordering::Relaxed),
            tally.closed.load(Ordering::Relaxed),
        );
    }
    for bot in bots {
        let _ = bot.await;
    }
    // Give the watcher a moment for the last updates, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    let (seen, backwards) = (tally.seen.load(Ordering::Relaxed), tally.backwards.load(Ordering::Relaxed));
    let final_price = current_price(&client, &auction_url).await;
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let secs_run = started.elapsed().as_secs_f64();
    println!();
    println!("bidders           {bidders}");
    println!("accepted bids     {accepted} ({:.0}/s)", accepted as f64 / secs_run);
    println!("refused: too low  {}", tally.too_low.load(Ordering::Relaxed));
    println!("refused: closed   {}", tally.closed.load(Ordering::Relaxed));
    println!("other answers     {}", tally.other.load(Ordering::Relaxed));
    println!("final price       {final_price}");
    println!("live updates seen {seen}; price went backwards {backwards} time(s)");

    // Let the write-behind catch up before checking that every bid reached Postgres.
    let deps = &services.deps;
    let mut report = service::verify::auction(&deps.db, &deps.redis, &deps.keys(), auction)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for _ in 0..60 {
        if report.passed() && !report.to_string().contains("still in the stream") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        report = service::verify::auction(&deps.db, &deps.redis, &deps.keys(), auction)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    println!();
    println!("{report}");
    let ok = report.passed() && backwards == 0 && tally.other.load(Ordering::Relaxed) == 0;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One robot: read the minimum next bid, bid it plus 0..9 (so +1..+10 over the price with
/// a 1.00 increment), repeat until the deadline or the close.
async fn bidder(client: reqwest::Client, auction_url: String, token: String, tally: Arc<Tally>, deadline: Instant) {
    let bids_url = format!("{auction_url}/bids");
    while Instant::now() < deadline {
        let Ok(reply) = client.get(&auction_url).send().await else { continue };
        let Ok(body) = reply.json::<Value>().await else { continue };
        let Some(minimum) = body["data"]["min_next_bid"].as_str().and_then(cents) else { continue };
        let amount = minimum + 100 * rand::thread_rng().gen_range(0..10);
        let reply = client
            .post(&bids_url)
            .bearer_auth(&token)
            .json(&json!({ "amount": format!("{}.{:02}", amount / 100, amount % 100) }))
            .send()
            .await;
        let Ok(reply) = reply else {
            tally.other.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let status = reply.status().as_u16();
        let error = reply.json::<Value>().await.ok().and_then(|b| b["error"].as_str().map(str::to_owned));
        match (status, error.as_deref()) {
            (201, _) => tally.accepted.fetch_add(1, Ordering::Relaxed),
            (409, Some("BID_TOO_LOW")) => tally.too_low.fetch_add(1, Ordering::Relaxed),
            (409, Some("AUCTION_CLOSED")) => {
                tally.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            (429, _) => continue,
            _ => tally.other.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Watches the live WebSocket, counting bid messages and any whose price or seq did not
/// rise, until the auction closes or the caller stops it.
async fn watch_prices(url: String, tally: Arc<Tally>) {
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        eprintln!("could not open {url}");
        return;
    };
    let (mut last_price, mut last_seq) = (0_i64, 0_i64);
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(event) = serde_json::from_str::<Value>(&text) else { continue };
        match event["type"].as_str() {
            Some("bid") => {
                tally.seen.fetch_add(1, Ordering::Relaxed);
                let price = event["price"].as_str().and_then(cents).unwrap_or(0);
                let seq = event["seq"].as_i64().unwrap_or(0);
                if price <= last_price || seq <= last_seq {
                    tally.backwards.fetch_add(1, Ordering::Relaxed);
                }
                (last_price, last_seq) = (price, seq);
            }
            Some("state") => {
                last_price = event["current_price"].as_str().and_then(cents).unwrap_or(0);
                last_seq = event["seq"].as_i64().unwrap_or(0);
            }
            Some("closed") => return,
            _ => {}
        }
    }
}

async fn current_price(client: &reqwest::Client, auction_url: &str) -> String {
    let body = match client.get(auction_url).send().await {
        Ok(reply) => reply.json::<Value>().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    body["data"]["current_price"].as_str().unwrap_or("none yet").to_owned()
}

/// "12.30" -> 1230.
fn cents(text: &str) -> Option<i64> {
    domain::Money::parse("amount", text).ok().map(domain::Money::cents)
}
