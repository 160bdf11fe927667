//! `spike-server bots`: bidding robots. N bidders each read the price and bid
//! +1..+10 over it, as fast as the server lets them; with `--proxy-share` that share of them
//! leaves a maximum instead (+1..+30 over the price) whenever it does not lead. A watcher on
//! the live WebSocket checks that the price never goes backwards (equal only for the tie of
//! proxy bidding: an automatic answer at the leader's maximum). Every answer is counted by status and error
//! name; a 429 makes that robot wait as long as `Retry-After` says. Then a summary and
//! `verify --auction`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use platform::Settings;
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::setup;

/// Every answer the robots got, by what was asked and how it was answered.
#[derive(Default)]
struct Tally {
    /// "bid 201", "bid 409 BID_TOO_LOW", "read 429 RATE_LIMITED", "bid no answer", ...
    answers: Mutex<BTreeMap<String, u64>>,
    /// Live bid messages the watcher saw, how many were automatic raises, and how many went
    /// backwards.
    seen: AtomicU64,
    auto: AtomicU64,
    backwards: AtomicU64,
}

impl Tally {
    fn count(&self, answer: String) {
        *self.answers.lock().expect("tally lock").entry(answer).or_default() += 1;
    }

    fn get(&self, answer: &str) -> u64 {
        self.answers.lock().expect("tally lock").get(answer).copied().unwrap_or(0)
    }

    /// Answers whose label starts with `prefix` ("bid " counts every bid answer).
    fn sum(&self, prefix: &str) -> u64 {
        self.answers.lock().expect("tally lock").iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, n)| n).sum()
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.answers.lock().expect("tally lock").clone()
    }
}

const ACCEPTED: &str = "bid 201";
const TOO_LOW: &str = "bid 409 BID_TOO_LOW";
const CLOSED: &str = "bid 409 AUCTION_CLOSED";
const THROTTLED_BIDS: &str = "bid 429";
const THROTTLED_READS: &str = "read 429";

/// The answers that are part of a healthy run; anything else fails it.
fn expected(answer: &str) -> bool {
    answer == ACCEPTED
        || answer == TOO_LOW
        || answer == CLOSED
        || answer.starts_with(THROTTLED_BIDS)
        || answer.starts_with(THROTTLED_READS)
        || answer == "read 200"
}

/// How many robots, for how long, and the share of them that bid with maximums.
pub struct Robots {
    pub bidders: usize,
    pub secs: u64,
    pub proxy_share: f64,
}

pub async fn run(settings: Arc<Settings>, auction: Uuid, robots: Robots, url: &str) -> anyhow::Result<ExitCode> {
    let Robots { bidders, secs, proxy_share } = robots;
    if bidders == 0 || secs == 0 {
        anyhow::bail!("--bidders and --secs must be at least 1");
    }
    if !(0.0..=1.0).contains(&proxy_share) {
        anyhow::bail!("--proxy-share must be between 0 and 1");
    }
    let services = setup::services(settings).await?;
    let tokens = services
        .auth
        .create_shoppers(bidders, Duration::from_secs(secs + 3600))
        .await
        .map_err(|e| anyhow::anyhow!("creating bidders: {e}"))?;
    // A server that stops answering ends a robot's request, not the whole run.
    let client = reqwest::Client::builder().pool_max_idle_per_host(bidders).timeout(Duration::from_secs(10)).build()?;
    let base = url.trim_end_matches('/').to_owned();
    let auction_url = format!("{base}/api/v1/auctions/{auction}");
    let first = client.get(&auction_url).send().await?;
    if !first.status().is_success() {
        anyhow::bail!("GET {auction_url}: {} {}", first.status(), first.text().await.unwrap_or_default());
    }

    let tally = Arc::new(Tally::default());
    let watcher = tokio::spawn(watch_prices(format!("{}/live", auction_url.replacen("http", "ws", 1)), tally.clone()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let proxies = (bidders as f64 * proxy_share).round() as usize;
    let bots: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let robot = Bidder { client: client.clone(), auction_url: auction_url.clone(), token, proxy: i < proxies };
            tokio::spawn(robot.run(tally.clone(), deadline))
        })
        .collect();

    let mut tick = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    while Instant::now() < deadline && !bots.iter().all(|b| b.is_finished()) {
        tick.tick().await;
        let price = current_price(&client, &auction_url).await;
        println!(
            "{:>4}s  accepted {:>6}  too low {:>7}  throttled (429) {:>7}  closed {:>5}  price {price}",
            started.elapsed().as_secs(),
            tally.get(ACCEPTED),
            tally.get(TOO_LOW),
            tally.sum(THROTTLED_BIDS) + tally.sum(THROTTLED_READS),
            tally.get(CLOSED),
        );
    }
    for bot in bots {
        let _ = bot.await;
    }
    watcher.abort();
    let secs_run = started.elapsed().as_secs_f64();
    let final_price = current_price(&client, &auction_url).await;
    let (seen, backwards) = (tally.seen.load(Ordering::Relaxed), tally.backwards.load(Ordering::Relaxed));
    let auto = tally.auto.load(Ordering::Relaxed);
    let answers = tally.snapshot();
    let accepted = tally.get(ACCEPTED);
    println!();
    println!("bidders           {bidders} ({proxies} with maximums)");
    println!("accepted bids     {accepted} ({:.0}/s)", accepted as f64 / secs_run);
    println!("final price       {final_price}");
    println!("live updates seen {seen} ({auto} automatic raises); price went backwards {backwards} time(s)");
    println!("answers, by request, status and error:");
    for (answer, n) in &answers {
        println!("  {answer:<32} {n:>8}");
    }

    // Every 201 bid is in Postgres already (a bid is written before it is answered).
    let deps = &services.deps;
    let report = service::verify::auction(&deps.db, &deps.redis, &deps.keys(), auction)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!();
    println!("{report}");

    let unexpected: u64 = answers.iter().filter(|(k, _)| !expected(k)).map(|(_, n)| n).sum();
    let throttled =
        Throttled { bids: tally.sum(THROTTLED_BIDS), all_bids: tally.sum("bid "), reads: tally.sum(THROTTLED_READS) };
    let mut ok = report.passed() && backwards == 0;
    if unexpected > 0 {
        println!("\n{unexpected} answer(s) the robots did not expect (listed above).");
        ok = false;
    }
    if let Some(sentence) = throttled.verdict() {
        println!("\n{sentence}");
        ok = false;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The 429s of a run, for the verdict at the end.
struct Throttled {
    bids: u64,
    all_bids: u64,
    reads: u64,
}

impl Throttled {
    /// A sentence when the rate limiter, not the auction, decided most of the run.
    fn verdict(&self) -> Option<String> {
        let lift = "The server's rate limits decided this run, not the bidding: restart it with \
                    SPIKE__RATE_LIMIT__ENABLED=false (scripts/demo already raises the per-IP limit) \
                    and run the robots again.";
        if self.all_bids == 0 && self.reads > 0 {
            return Some(format!(
                "No bid was sent: all {} reads of the auction were answered 429 (rate limited). {lift}",
                self.reads
            ));
        }
        (self.bids * 2 > self.all_bids).then(|| {
            format!(
                "Most bids were throttled: {} of {} bids were answered 429 (rate limited). {lift}",
                self.bids, self.all_bids
            )
        })
    }
}

/// One robot: read the minimum next bid, bid it plus 0..9 (so +1..+10 over the price with
/// a 1.00 increment), repeat until the deadline or the close. A proxy robot leaves a
/// maximum of the minimum plus 0..29 instead, and only when it does not lead (a maximum
/// below its own would be refused).
struct Bidder {
    client: reqwest::Client,
    auction_url: String,
    token: String,
    proxy: bool,
}

impl Bidder {
    async fn run(self, tally: Arc<Tally>, deadline: Instant) {
        let bids_url = format!("{}/bids", self.auction_url);
        let me = if self.proxy { self.user_id().await } else { None };
        while Instant::now() < deadline {
            let reply = self.client.get(&self.auction_url).send().await;
            let Some((body, wait)) = answer(&tally, "read", reply).await else { continue };
            if let Some(wait) = wait {
                tokio::time::sleep_until(deadline.min(Instant::now() + wait)).await;
                continue;
            }
            let Some(minimum) = body["data"]["min_next_bid"].as_str().and_then(cents) else { continue };
            if me.is_some() && body["data"]["leader_id"].as_str() == me.as_deref() {
                // Leading: its maximum bids for it. Look again a little later.
                tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(50))).await;
                continue;
            }
            let (field, steps) = if self.proxy { ("max_amount", 30) } else { ("amount", 10) };
            let amount = minimum + 100 * rand::thread_rng().gen_range(0..steps);
            let text = format!("{}.{:02}", amount / 100, amount % 100);
            let reply = self.client.post(&bids_url).bearer_auth(&self.token).json(&json!({ field: text })).send().await;
            let Some((body, wait)) = answer(&tally, "bid", reply).await else { continue };
            if let Some(wait) = wait {
                tokio::time::sleep_until(deadline.min(Instant::now() + wait)).await;
            } else if body["error"] == "AUCTION_CLOSED" {
                return;
            }
        }
    }

    async fn user_id(&self) -> Option<String> {
        let base = self.auction_url.split("/api/v1/").next()?;
        let reply = self.client.get(format!("{base}/api/v1/users/me")).bearer_auth(&self.token).send().await.ok()?;
        let body = reply.json::<Value>().await.ok()?;
        body["data"]["id"].as_str().map(str::to_owned)
    }
}

/// Counts one answer as "<what> <status> <error name>" and returns its body, plus how long
/// to wait when it was a 429. `None` when there was no answer at all (counted too; the
/// robot pauses briefly so a server that is down is not hammered).
async fn answer(
    tally: &Tally,
    what: &str,
    reply: reqwest::Result<reqwest::Response>,
) -> Option<(Value, Option<Duration>)> {
    let reply = match reply {
        Ok(reply) => reply,
        Err(_) => {
            tally.count(format!("{what} no answer"));
            tokio::time::sleep(Duration::from_millis(100)).await;
            return None;
        }
    };
    let status = reply.status();
    let wait = (status == StatusCode::TOO_MANY_REQUESTS).then(|| retry_after(&reply));
    let body = reply.json::<Value>().await.unwrap_or(Value::Null);
    match body["error"].as_str() {
        Some(error) => tally.count(format!("{what} {} {error}", status.as_u16())),
        None => tally.count(format!("{what} {}", status.as_u16())),
    }
    Some((body, wait))
}

/// The `Retry-After` of a 429 (whole seconds), or one second when it has none.
fn retry_after(reply: &reqwest::Response) -> Duration {
    let secs = reply.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Duration::from_secs(secs.unwrap_or(1))
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
                let auto = event["auto"].as_bool().unwrap_or(false);
                if auto {
                    tally.auto.fetch_add(1, Ordering::Relaxed);
                }
                if out_of_line((last_price, last_seq), (price, seq, auto)) {
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

/// Whether a live bid (price, seq, automatic?) breaks the rule after the last one seen: the
/// seq must rise, and the price too, except for the tie of proxy bidding (an automatic
/// answer at the leader's maximum, equal to the bid it answers). A slow watcher may skip
/// messages, so only the order is checked, not the gaps.
fn out_of_line((last_price, last_seq): (i64, i64), (price, seq, auto): (i64, i64, bool)) -> bool {
    seq <= last_seq || price < last_price || (price == last_price && !auto)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_bids_answered_429_is_a_failure_that_says_how_to_lift_the_limits() {
        let verdict = Throttled { bids: 6, all_bids: 10, reads: 0 }.verdict().expect("a verdict");
        assert!(verdict.starts_with("Most bids were throttled: 6 of 10"), "{verdict}");
        assert!(verdict.contains("SPIKE__RATE_LIMIT__ENABLED=false"), "{verdict}");
    }

    #[test]
    fn a_live_price_must_rise_with_seq_except_for_an_automatic_tie() {
        assert!(!out_of_line((1_000, 1), (1_100, 2, false)));
        assert!(!out_of_line((1_000, 1), (1_200, 5, true)), "a slow watcher skips bids");
        assert!(!out_of_line((5_000, 6), (5_000, 7, true)), "the leader's maximum answers a tie");
        assert!(out_of_line((5_000, 6), (5_000, 7, false)), "a plain bid never ties");
        assert!(out_of_line((5_000, 6), (4_900, 7, true)), "nothing goes down");
        assert!(out_of_line((5_000, 6), (5_100, 6, false)), "nor does the seq stand still");
    }

    #[test]
    fn a_few_429s_among_many_bids_pass() {
        assert!(Throttled { bids: 5, all_bids: 10, reads: 3 }.verdict().is_none());
    }

    #[test]
    fn reads_throttled_so_that_no_bid_was_sent_is_a_failure() {
        let verdict = Throttled { bids: 0, all_bids: 0, reads: 4 }.verdict().expect("a verdict");
        assert!(verdict.starts_with("No bid was sent"), "{verdict}");
    }
}
