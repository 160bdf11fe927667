//! Writes accepted bids to Postgres before they are answered: in `seq` order, many per
//! statement.
//!
//! Redis decides which bid wins a step and hands out `seq`; a bid counts (201) only once
//! Postgres holds it and every bid before it. The writes of one auction go through one task
//! of this process (the auction id picks it), which gathers whatever has arrived while its
//! previous statement ran and writes the longest run of consecutive seqs in one statement
//! ([`auctions::append_bids`]). Bids that arrive ahead of an earlier one (two requests
//! racing from Lua to here, or the earlier one in another instance) wait for it, up to
//! `auctions.bid_write_timeout_ms`; then they are refused and the caller undoes them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use repo::db::auctions::{self, Append, NewBid};
use rust_decimal::Decimal;
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

/// Tasks writing bids; each auction always goes to the same one, so its bids arrive in one
/// queue.
const TASKS: usize = 4;

/// How soon a task looks again at bids waiting for an earlier seq when nothing new arrives.
const RECHECK: Duration = Duration::from_millis(5);

struct Pending {
    auction_id: Uuid,
    generation: String,
    bid: NewBid,
    since: Instant,
    done: oneshot::Sender<bool>,
}

/// Hands accepted bids to the writer tasks and waits for the outcome.
#[derive(Clone)]
pub struct BidWriter {
    db: DatabaseConnection,
    tasks: Vec<mpsc::Sender<Pending>>,
    timeout: Duration,
}

impl BidWriter {
    pub fn start(db: DatabaseConnection, timeout: Duration) -> Self {
        let tasks = (0..TASKS)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(4096);
                tokio::spawn(WriterTask { db: db.clone(), receiver, timeout }.run());
                sender
            })
            .collect();
        Self { db, tasks, timeout }
    }

    /// True once Postgres holds the bids of one script call (written now, or by an earlier
    /// attempt with the same `Idempotency-Key`); false when one was refused or could not be
    /// written in time. They are queued together, so they usually go in one statement.
    pub async fn write(&self, auction_id: Uuid, generation: &str, bids: Vec<NewBid>) -> bool {
        let task = &self.tasks[(auction_id.as_u128() % self.tasks.len() as u128) as usize];
        let mut answers = Vec::with_capacity(bids.len());
        for bid in bids {
            let (done, written) = oneshot::channel();
            let pending = Pending { auction_id, generation: generation.to_owned(), bid, since: Instant::now(), done };
            if task.send(pending).await.is_err() {
                return false;
            }
            answers.push(written);
        }
        // The task answers within the timeout plus one statement; this only guards a task
        // stuck on a hung connection.
        let all = futures::future::join_all(answers);
        matches!(tokio::time::timeout(self.timeout * 2, all).await, Ok(answers) if answers.iter().all(|a| matches!(a, Ok(true))))
    }

    /// True once Postgres holds the leader's raised maximum behind its bid `seq`. That bid
    /// may still be on its way (from this instance or another): the raise waits for it, up
    /// to the same timeout as a bid waiting for an earlier one.
    pub async fn raise(&self, auction_id: Uuid, generation: &str, seq: i64, user_id: Uuid, max: Decimal) -> bool {
        let since = Instant::now();
        loop {
            match auctions::raise_max(&self.db, auction_id, generation, seq, user_id, max).await {
                Ok(Append::Written) => return true,
                Ok(Append::Refused { generation: now, bid_count })
                    if now == generation && bid_count < seq && since.elapsed() < self.timeout =>
                {
                    tokio::time::sleep(RECHECK).await;
                }
                Ok(Append::Refused { .. }) => return false,
                Err(err) => {
                    tracing::warn!(%auction_id, error = %err, "writing a raised maximum failed");
                    return false;
                }
            }
        }
    }
}

struct WriterTask {
    db: DatabaseConnection,
    receiver: mpsc::Receiver<Pending>,
    timeout: Duration,
}

/// The bids of one auction and generation in a round, by seq (a retry with the same
/// `Idempotency-Key` may bring one seq twice).
type Group = BTreeMap<i64, Vec<Pending>>;

impl WriterTask {
    async fn run(mut self) {
        let mut waiting: Vec<Pending> = Vec::new();
        loop {
            // Something new, or (with bids waiting for an earlier one) a little time passed.
            let next = if waiting.is_empty() {
                self.receiver.recv().await
            } else {
                tokio::time::timeout(RECHECK, self.receiver.recv()).await.unwrap_or_else(|_| waiting.pop())
            };
            let Some(next) = next else {
                answer(waiting, false); // the service is shutting down
                return;
            };
            waiting.push(next);
            while let Ok(more) = self.receiver.try_recv() {
                waiting.push(more);
            }
            waiting = self.round(waiting).await;
        }
    }

    /// Writes what it can; returns the bids that still wait for an earlier seq.
    async fn round(&self, pending: Vec<Pending>) -> Vec<Pending> {
        let mut groups: HashMap<(Uuid, String), Group> = HashMap::new();
        for p in pending {
            let group = groups.entry((p.auction_id, p.generation.clone())).or_default();
            group.entry(p.bid.seq).or_default().push(p);
        }
        let mut left = Vec::new();
        for ((auction_id, generation), group) in groups {
            left.extend(self.write_group(auction_id, &generation, group).await);
        }
        let (expired, left): (Vec<_>, Vec<_>) = left.into_iter().partition(|p| p.since.elapsed() >= self.timeout);
        if !expired.is_empty() {
            tracing::warn!(bids = expired.len(), "bids waited too long for the bids before them; refusing them");
            answer(expired, false);
        }
        left
    }

    async fn write_group(&self, auction_id: Uuid, generation: &str, mut group: Group) -> Vec<Pending> {
        let Some(&first) = group.keys().next() else { return Vec::new() };
        let run: Vec<NewBid> = group
            .iter()
            .enumerate()
            .take_while(|(i, (seq, _))| **seq == first + *i as i64)
            .map(|(_, (_, bids))| bids[0].bid.clone())
            .collect();
        let last = first + run.len() as i64 - 1;
        let (generation_now, bid_count) = match auctions::append_bids(&self.db, auction_id, generation, &run).await {
            Ok(Append::Written) => {
                metrics::counter!("bids_written_total").increment(run.len() as u64);
                metrics::histogram!("bid_write_batch_size").record(run.len() as f64);
                let rest = group.split_off(&(last + 1));
                answer(group.into_values().flatten(), true);
                return rest.into_values().flatten().collect();
            }
            Ok(Append::Refused { generation, bid_count }) => (generation, bid_count),
            Err(err) => {
                tracing::warn!(%auction_id, error = %err, bids = group.len(), "writing bids failed");
                answer(group.into_values().flatten(), false);
                return Vec::new();
            }
        };
        let current = generation_now == generation;
        if current && bid_count < first - 1 {
            return group.into_values().flatten().collect(); // an earlier bid is on its way
        }
        // In already (a retry that another attempt wrote), or refused: Postgres tells which.
        let top = *group.keys().next_back().unwrap_or(&first);
        let stored = match auctions::bids_between(&self.db, auction_id, first, top).await {
            Ok(rows) => rows.into_iter().map(|r| (r.seq, (r.user_id, r.amount))).collect::<HashMap<_, _>>(),
            Err(err) => {
                tracing::warn!(%auction_id, error = %err, "reading written bids failed");
                answer(group.into_values().flatten(), false);
                return Vec::new();
            }
        };
        let mut left = Vec::new();
        for (seq, bids) in group {
            for p in bids {
                match stored.get(&seq) {
                    Some(&(user, amount)) => {
                        let ours = user == p.bid.user_id && amount == p.bid.amount;
                        let _ = p.done.send(ours);
                    }
                    None if current && seq > bid_count => left.push(p),
                    None => {
                        let _ = p.done.send(false);
                    }
                }
            }
        }
        left
    }
}

fn answer(bids: impl IntoIterator<Item = Pending>, written: bool) {
    for p in bids {
        let _ = p.done.send(written);
    }
}
