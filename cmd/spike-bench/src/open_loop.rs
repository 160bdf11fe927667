//! Open-loop load: requests leave at a fixed arrival rate whatever the server does, and
//! each request's latency is counted from the moment it was *due*, not from when it was
//! sent. A closed loop (wrk) slows down when the server does and so hides the queueing a
//! shopper would see; this one does not (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

#[derive(clap::Args)]
pub struct OpenArgs {
    /// The URL every request goes to.
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// A JSON body; `{cents}` in it becomes a climbing amount ("1.00", "1.01", ...).
    #[arg(long)]
    body: Option<String>,
    /// A file with one bearer token per line, used in turn.
    #[arg(long)]
    tokens: Option<String>,
    /// Requests per second.
    #[arg(long)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 100)]
    cents_start: u64,
    #[arg(long, default_value_t = 1)]
    cents_step: u64,
    /// Requests in flight at most; a request due when all are taken is counted as dropped.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
}

/// One finished request: its status (0 when the connection failed) and its latency.
type Done = (u16, Duration);

pub async fn run(args: OpenArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.rate > 0, "--rate must be above 0");
    let client = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(args.max_in_flight).build()?;
    let method: reqwest::Method = args.method.parse()?;
    let tokens = read_tokens(args.tokens.as_deref())?;
    let slots = Arc::new(Semaphore::new(args.max_in_flight));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let total = args.rate * args.secs;
    let gap = Duration::from_secs_f64(1.0 / args.rate as f64);
    let started = Instant::now();
    let mut dropped = 0u64;
    for i in 0..total {
        let due = started + gap.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let mut request = client.request(method.clone(), &args.url);
        if let Some(token) = tokens.get(i as usize % tokens.len().max(1)) {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &args.body {
            let cents = args.cents_start + i * args.cents_step;
            let body = body.replace("{cents}", &format!("{}.{:02}", cents / 100, cents % 100));
            request = request.header("content-type", "application/json").body(body);
        }
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let status = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            let _ = done_tx.send((status, due.elapsed()));
            drop(slot);
        });
    }
    let sending = started.elapsed();
    drop(done_tx);
    let mut done = Vec::with_capacity(total as usize);
    while let Some(finished) = done_rx.recv().await {
        done.push(finished);
    }
    Ok(summary(args.rate, sending, dropped, done))
}

fn read_tokens(path: Option<&str>) -> anyhow::Result<Vec<String>> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

fn summary(rate: u64, sending: Duration, dropped: u64, done: Vec<Done>) -> Value {
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for (status, _) in &done {
        *statuses.entry(status.to_string()).or_default() += 1;
    }
    // Every answer counts, refusals included (a 409 is the server's work too); a failed
    // connection has no latency to speak of and is reported under status "0".
    let mut latencies: Vec<Duration> = done.iter().filter(|(s, _)| *s != 0).map(|(_, l)| *l).collect();
    latencies.sort_unstable();
    json!({
        "rate": rate,
        "achieved": (latencies.len() as f64 / sending.as_secs_f64()).round(),
        "dropped": dropped,
        "statuses": statuses,
        "p50_ms": percentile_ms(&latencies, 0.50),
        "p99_ms": percentile_ms(&latencies, 0.99),
        "p999_ms": percentile_ms(&latencies, 0.999),
        "max_ms": percentile_ms(&latencies, 1.0),
    })
}

/// The latency at or below which `share` of the sorted samples fall, in ms (0 when none).
pub fn percentile_ms(sorted: &[Duration], share: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len());
    (sorted[rank - 1].as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&samples, 0.5), 500.0);
        assert_eq!(percentile_ms(&samples, 0.99), 990.0);
        assert_eq!(percentile_ms(&samples, 0.999), 999.0);
        assert_eq!(percentile_ms(&samples, 1.0), 1000.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
    }

    #[test]
    fn the_summary_counts_statuses_and_leaves_failed_connections_out_of_the_latencies() {
        let done = vec![(202, Duration::from_millis(2)), (409, Duration::from_millis(4)), (0, Duration::from_secs(9))];
        let summary = summary(3, Duration::from_secs(1), 1, done);
        assert_eq!(summary["statuses"], json!({"0": 1, "202": 1, "409": 1}));
        assert_eq!(summary["max_ms"], 4.0);
        assert_eq!(summary["achieved"], 2.0);
        assert_eq!(summary["dropped"], 1);
    }
}
