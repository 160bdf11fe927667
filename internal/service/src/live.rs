//! The local fan-out of live auction events to WebSocket watchers.
//!
//! One `watch` channel per watched auction: a watcher always sees the latest event and a
//! slow one simply skips the prices it was too slow for, so a connection holds one message
//! at most and a slow client cannot make the server buffer without bound.
//!
//! Each event is serialized once for all its watchers ([`Latest::text`]), not once per
//! watcher: with thousands of watchers on one auction that was most of the fan-out's work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use domain::Money;
use domain::auction::AuctionStatus;
use repo::cache::auctions::LiveEvent;
use tokio::sync::watch;
use uuid::Uuid;

/// A live auction event, decoded from what the bid path and the closer publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Bid {
        auction_id: Uuid,
        price: Money,
        leader: Uuid,
        seq: i64,
        end_at: DateTime<Utc>,
        min_next_bid: Money,
        /// The leader's automatic raise (proxy bidding).
        auto: bool,
    },
    Closed {
        auction_id: Uuid,
        status: AuctionStatus,
        winner: Option<Uuid>,
        price: Option<Money>,
    },
    /// The winner left the order unpaid: the lot went to the next bidder.
    SecondChance {
        auction_id: Uuid,
        winner: Uuid,
        price: Money,
    },
}

impl Event {
    pub fn auction_id(&self) -> Uuid {
        match self {
            Event::Bid { auction_id, .. }
            | Event::Closed { auction_id, .. }
            | Event::SecondChance { auction_id, .. } => *auction_id,
        }
    }

    /// `None` for a message that does not parse (never from our own publishers).
    pub fn decode(raw: LiveEvent) -> Option<Self> {
        Some(match raw {
            LiveEvent::Bid { auction_id, price_cents, leader, seq, end_ms, min_next_cents, auto } => Event::Bid {
                auto,
                auction_id,
                price: Money::from_cents(price_cents.parse().ok()?),
                leader,
                seq,
                end_at: Utc.timestamp_millis_opt(end_ms.parse().ok()?).single()?,
                min_next_bid: Money::from_cents(min_next_cents.parse().ok()?),
            },
            LiveEvent::Closed { auction_id, outcome, leader, price_cents } => {
                let status: AuctionStatus = outcome.parse().ok()?;
                let cents: i64 = price_cents.parse().ok()?;
                Event::Closed {
                    auction_id,
                    winner: if status == AuctionStatus::Sold { leader.parse().ok() } else { None },
                    price: (cents > 0).then(|| Money::from_cents(cents)),
                    status,
                }
            }
            LiveEvent::SecondChance { auction_id, winner, price_cents } => {
                Event::SecondChance { auction_id, winner, price: Money::from_cents(price_cents.parse().ok()?) }
            }
        })
    }
}

/// The latest event of an auction as its watchers share it.
#[derive(Debug)]
pub struct Latest {
    pub event: Event,
    text: OnceLock<String>,
}

impl Latest {
    pub fn new(event: Event) -> Self {
        Self { event, text: OnceLock::new() }
    }

    /// The event's wire text: `render` runs for the first watcher that sends it, every
    /// other watcher reuses its result.
    pub fn text(&self, render: impl FnOnce(&Event) -> String) -> &str {
        self.text.get_or_init(|| render(&self.event))
    }
}

/// What a watcher holds: the latest event of its auction, none before the first.
pub type Watch = watch::Receiver<Option<Arc<Latest>>>;

#[derive(Default)]
pub struct LiveHub {
    channels: Mutex<HashMap<Uuid, watch::Sender<Option<Arc<Latest>>>>>,
}

impl LiveHub {
    pub fn subscribe(&self, auction_id: Uuid) -> Watch {
        let mut channels = self.channels.lock().expect("live hub poisoned");
        channels.entry(auction_id).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// Hands an event from Redis pub/sub to this instance's watchers of that auction, and
    /// forgets auctions nobody watches any more.
    pub fn publish(&self, event: Event) {
        let mut channels = self.channels.lock().expect("live hub poisoned");
        if let Some(sender) = channels.get(&event.auction_id()) {
            sender.send_if_modified(|latest| {
                let newer = is_newer(latest.as_deref().map(|l| &l.event), &event);
                if newer {
                    *latest = Some(Arc::new(Latest::new(event)));
                }
                newer
            });
        }
        channels.retain(|_, sender| sender.receiver_count() > 0);
    }

    pub fn watched(&self) -> usize {
        self.channels.lock().expect("live hub poisoned").len()
    }
}

/// Bids are announced by the request that placed them, once written, so two of them may
/// reach pub/sub in either order: an older price never replaces a newer one, and no bid
/// follows the close (only what happens to the lot afterwards: second-chance offers, and
/// `unsold` when none was paid).
fn is_newer(latest: Option<&Event>, event: &Event) -> bool {
    match (latest, event) {
        (Some(Event::Closed { .. } | Event::SecondChance { .. }), Event::Bid { .. }) => false,
        (Some(Event::Bid { seq: seen, .. }), Event::Bid { seq, .. }) => seq > seen,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latest(watcher: &mut Watch) -> Option<Event> {
        watcher.borrow_and_update().as_ref().map(|l| l.event.clone())
    }

    #[test]
    fn an_event_is_rendered_once_for_all_its_watchers() {
        let latest = Latest::new(bid(Uuid::now_v7(), 1));
        let mut renders = 0;
        for _ in 0..3 {
            assert_eq!(
                latest.text(|_| {
                    renders += 1;
                    "text".into()
                }),
                "text"
            );
        }
        assert_eq!(renders, 1);
    }

    fn bid(auction_id: Uuid, seq: i64) -> Event {
        let end_at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        let (price, min_next_bid) = (Money::from_cents(seq * 100), Money::from_cents(seq * 100 + 100));
        Event::Bid { auction_id, price, leader: Uuid::nil(), seq, end_at, min_next_bid, auto: false }
    }

    #[test]
    fn script_messages_decode_to_money_and_times() {
        let auction = Uuid::now_v7();
        let raw: LiveEvent = serde_json::from_str(&format!(
            r#"{{"t":"bid","a":"{auction}","p":"1250","l":"{}","s":3,"e":"1700000000000","n":"1350"}}"#,
            Uuid::nil()
        ))
        .unwrap();
        let Some(Event::Bid { price, seq, end_at, min_next_bid, .. }) = Event::decode(raw) else { panic!("a bid") };
        assert_eq!((price.to_string(), seq, end_at.timestamp()), ("12.50".into(), 3, 1_700_000_000));
        assert_eq!(min_next_bid.to_string(), "13.50");

        let closed: LiveEvent =
            serde_json::from_str(&format!(r#"{{"t":"closed","a":"{auction}","o":"unsold","l":"","p":"0"}}"#)).unwrap();
        assert_eq!(
            Event::decode(closed),
            Some(Event::Closed { auction_id: auction, status: AuctionStatus::Unsold, winner: None, price: None })
        );
    }

    #[tokio::test]
    async fn a_slow_watcher_skips_to_the_latest_price() {
        let hub = LiveHub::default();
        let auction = Uuid::now_v7();
        let mut watcher = hub.subscribe(auction);
        for seq in 1..=100 {
            hub.publish(bid(auction, seq));
        }
        watcher.changed().await.unwrap();
        assert_eq!(latest(&mut watcher), Some(bid(auction, 100)));
    }

    #[tokio::test]
    async fn a_late_older_bid_or_a_bid_after_the_close_is_dropped() {
        let hub = LiveHub::default();
        let auction = Uuid::now_v7();
        let mut watcher = hub.subscribe(auction);
        hub.publish(bid(auction, 2));
        hub.publish(bid(auction, 1));
        assert_eq!(latest(&mut watcher), Some(bid(auction, 2)));
        let closed = Event::Closed { auction_id: auction, status: AuctionStatus::Sold, winner: None, price: None };
        hub.publish(closed.clone());
        hub.publish(bid(auction, 3));
        assert_eq!(latest(&mut watcher), Some(closed));
        let offer = Event::SecondChance { auction_id: auction, winner: Uuid::nil(), price: Money::from_cents(900) };
        hub.publish(offer.clone());
        hub.publish(bid(auction, 4));
        assert_eq!(latest(&mut watcher), Some(offer), "a second-chance offer follows the close");
    }

    #[test]
    fn unwatched_auctions_are_forgotten() {
        let hub = LiveHub::default();
        let auction = Uuid::now_v7();
        let watcher = hub.subscribe(auction);
        assert_eq!(hub.watched(), 1);
        drop(watcher);
        hub.publish(bid(auction, 1));
        assert_eq!(hub.watched(), 0);
    }
}
