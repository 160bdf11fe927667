//! The live side at scale: N WebSocket watchers on one auction while a bidder bids at a
//! fixed rate; reports how long each bid took from its 201 to each watcher.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::open_loop::percentile_ms;

#[derive(clap::Args)]
pub struct WatchArgs {
    /// The server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    base: String,
    #[arg(long)]
    auction: String,
    /// A file with bearer tokens, one per line; the bids rotate through them.
    #[arg(long)]
    tokens: String,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Bids per second.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// The first bid's amount in cents; each next bid is a whole unit higher.
    #[arg(long, default_value_t = 100)]
    cents_start: u64,
}

/// What one watcher saw: each bid's `seq` and when it arrived.
type Seen = Vec<(i64, Instant)>;

pub async fn run(args: WatchArgs) -> anyhow::Result<Value> {
    let ws_url = format!("{}/api/v1/auctions/{}/live", args.base.replacen("http", "ws", 1), args.auction);
    let connecting = Instant::now();
    let mut watchers = JoinSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // A few hundred handshakes at a time: a burst of thousands would measure the accept queue.
    for chunk in (0..args.watchers).collect::<Vec<_>>().chunks(200) {
        let mut handshakes = JoinSet::new();
        for _ in chunk {
            let url = ws_url.clone();
            handshakes.spawn(async move { tokio_tungstenite::connect_async(url).await.map(|(socket, _)| socket) });
        }
        while let Some(socket) = handshakes.join_next().await {
            let (_, mut incoming) = socket??.split();
            // The first message is the state; only bids after it count.
            incoming.next().await;
            let mut stop = stop_rx.clone();
            watchers.spawn(async move {
                let mut seen = Seen::new();
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        message = incoming.next() => match message {
                            Some(Ok(Message::Text(text))) => {
                                if let Some(seq) = bid_seq(&text) {
                                    seen.push((seq, Instant::now()));
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                    }
                }
                seen
            });
        }
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    let answered = bid(&args).await?;
    // Let the last bids arrive, then stop every watcher and collect what it saw.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true)?;
    let mut seen_all = Vec::new();
    while let Some(seen) = watchers.join_next().await {
        seen_all.push(seen?);
    }
    let (mut delays, mut missed) = (Vec::new(), 0usize);
    for seen in &seen_all {
        let arrived: HashMap<i64, Instant> = seen.iter().copied().collect();
        for (seq, answered_at) in &answered {
            match arrived.get(seq) {
                Some(at) => delays.push(at.saturating_duration_since(*answered_at)),
                None => missed += 1,
            }
        }
    }
    delays.sort_unstable();
    Ok(json!({
        "watchers": args.watchers,
        "connect_secs": (connect_secs * 100.0).round() / 100.0,
        "bids": answered.len(),
        "deliveries": delays.len(),
        "missed": missed,
        "p50_ms": percentile_ms(&delays, 0.50),
        "p99_ms": percentile_ms(&delays, 0.99),
        "max_ms": percentile_ms(&delays, 1.0),
    }))
}

/// Bids at a fixed rate, each a whole unit above the last; returns each accepted bid's
/// `seq` and the moment its 201 arrived.
async fn bid(args: &WatchArgs) -> anyhow::Result<Vec<(i64, Instant)>> {
    let tokens: Vec<String> = std::fs::read_to_string(&args.tokens)?.lines().map(str::to_owned).collect();
    anyhow::ensure!(!tokens.is_empty(), "{} holds no tokens", args.tokens);
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/auctions/{}/bids", args.base, args.auction);
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let started = Instant::now();
    let mut answered = Vec::new();
    for i in 0..args.rate * args.secs {
        tokio::time::sleep_until(started + gap.mul_f64(i as f64)).await;
        let cents = args.cents_start + i * 100;
        let body = json!({ "amount": format!("{}.{:02}", cents / 100, cents % 100) });
        let response = client.post(&url).bearer_auth(&tokens[i as usize % tokens.len()]).json(&body).send().await?;
        let at = Instant::now();
        if response.status().as_u16() == 201 {
            let reply: Value = response.json().await?;
            if let Some(seq) = reply["data"]["seq"].as_i64() {
                answered.push((seq, at));
            }
        }
    }
    Ok(answered)
}

/// The `seq` of a bid message. A scan, not a JSON parse: with 5,000 watchers the load
/// generator reads 250,000 messages a second on the server's own cores, and parsing each
/// into a `Value` made it the largest process on the box (more CPU than the server).
fn bid_seq(text: &str) -> Option<i64> {
    if !text.contains(r#""type":"bid""#) {
        return None;
    }
    let rest = text[text.find(r#""seq":"#)? + r#""seq":"#.len()..].trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bid_messages_carry_a_seq() {
        assert_eq!(bid_seq(r#"{"type":"bid","seq":7,"price":"1.00"}"#), Some(7));
        assert_eq!(bid_seq(r#"{"type":"state","seq":7}"#), None);
        assert_eq!(bid_seq("not json"), None);
        assert_eq!(bid_seq(r#"{"auto":false,"seq":12,"type":"bid"}"#), Some(12), "keys in any order");
    }
}
