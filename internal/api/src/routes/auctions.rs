//! `/auctions`: live auctions, their bids, and the live WebSocket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::auction::{AuctionFields, NewAuction};
use domain::{IdempotencyKey, Money, PageRequest};
use futures::{SinkExt, StreamExt};
use poem::web::websocket::{BoxWebSocketUpgraded, Message, WebSocket, WebSocketConfig, WebSocketStream};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use serde_json::{Value, json};
use service::auctions::{AuctionService, AuctionView, BidView, Offer, Placed};
use service::closer::AuctionCloser;
use service::live::{Event, LiveHub, Watch};
use service::orders::OrderService;
use uuid::Uuid;

use super::ApiTags;
use super::orders::OrderResponse;
use crate::auth::BearerAuth;
use crate::envelope::{Envelope, JsonBody, PageOf, ok};
use crate::error::{ApiError, ApiResult};

pub struct AuctionsApi {
    pub auctions: AuctionService,
    pub closer: AuctionCloser,
    pub orders: OrderService,
    pub live: Arc<LiveHub>,
    pub keep_alive: KeepAlive,
}

/// WebSocket keep-alive: a ping every `ping`; a watcher silent for `idle` is dropped.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub ping: Duration,
    pub idle: Duration,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAuctionRequest {
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The lowest first bid: decimal string.
    pub start_price: String,
    /// Every later bid must beat the current price by at least this much.
    pub min_increment: String,
    /// Below this final price the lot stays unsold.
    pub reserve_price: Option<String>,
    /// Anyone may end the auction at once at this price (`POST /auctions/{id}/buy-now`)
    /// until the first bid that meets the reserve. At least the start and reserve prices.
    pub buy_now_price: Option<String>,
    #[serde(deserialize_with = "crate::envelope::date_time")]
    pub start_at: DateTime<Utc>,
    #[serde(deserialize_with = "crate::envelope::date_time")]
    pub end_at: DateTime<Utc>,
    /// A bid in the last `extend_window_secs` pushes the end out by `extend_by_secs` (0: off).
    #[serde(default)]
    #[oai(default)]
    pub extend_window_secs: i64,
    #[serde(default)]
    #[oai(default)]
    pub extend_by_secs: i64,
    /// How long the winner has to pay.
    pub payment_timeout_secs: i64,
}

/// Exactly one of the two.
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BidRequest {
    /// A bid at exactly this amount: decimal string, e.g. "13.00".
    pub amount: Option<String>,
    /// Or a maximum: the site bids for you the least amount that leads, and raises it by the
    /// minimum increment whenever someone else bids, up to this. Nobody else sees it.
    pub max_amount: Option<String>,
}

impl BidRequest {
    fn offer(&self) -> Result<Offer, ApiError> {
        match (&self.amount, &self.max_amount) {
            (Some(amount), None) => Ok(Offer::Amount(Money::parse_positive("amount", amount)?)),
            (None, Some(max)) => Ok(Offer::Max(Money::parse_positive("max_amount", max)?)),
            (Some(_), Some(_)) => {
                Err(ApiError::invalid("max_amount", "cannot be given with amount: send one of the two"))
            }
            (None, None) => Err(ApiError::invalid("amount", "is required (or max_amount, for a proxy bid)")),
        }
    }
}

#[derive(Debug, Object)]
pub struct AuctionResponse {
    pub id: String,
    pub title: String,
    pub description: String,
    pub start_price: String,
    pub min_increment: String,
    pub reserve_price: Option<String>,
    /// Present only while buy-now is on offer (until a bid meets the reserve).
    pub buy_now_price: Option<String>,
    /// Absent until the first bid.
    pub current_price: Option<String>,
    pub leader_id: Option<String>,
    pub bid_count: i64,
    /// The lowest bid that would be accepted now.
    pub min_next_bid: String,
    pub start_at: DateTime<Utc>,
    /// The end, after any anti-sniping extensions.
    pub end_at: DateTime<Utc>,
    pub extend_window_secs: i32,
    pub extend_by_secs: i32,
    pub payment_timeout_secs: i32,
    /// `scheduled`, `live`, `sold` or `unsold`.
    pub status: String,
    pub winner_id: Option<String>,
    pub order_id: Option<String>,
    /// The server's clock when it answered: count down to `end_at` by this, not by the
    /// client's own clock.
    pub server_time: DateTime<Utc>,
}

impl From<AuctionView> for AuctionResponse {
    fn from(a: AuctionView) -> Self {
        Self {
            id: a.id.to_string(),
            title: a.title,
            description: a.description,
            start_price: a.start_price.to_string(),
            min_increment: a.min_increment.to_string(),
            reserve_price: a.reserve_price.map(|m| m.to_string()),
            buy_now_price: a.buy_now_price.map(|m| m.to_string()),
            current_price: a.current_price.map(|m| m.to_string()),
            leader_id: a.leader_id.map(|id| id.to_string()),
            bid_count: a.bid_count,
            min_next_bid: a.min_next_bid.to_string(),
            start_at: a.start_at,
            end_at: a.end_at,
            extend_window_secs: a.extend_window_secs,
            extend_by_secs: a.extend_by_secs,
            payment_timeout_secs: a.payment_timeout_secs,
            status: a.status.as_str().to_owned(),
            winner_id: a.winner_id.map(|id| id.to_string()),
            order_id: a.order_id.map(|id| id.to_string()),
            server_time: Utc::now(),
        }
    }
}

#[derive(Object)]
pub struct BidPlacedResponse {
    /// The current price after your bid (and the leader's automatic answer, if any).
    pub price: String,
    /// The auction's last seq: your bid's, or the automatic answer's that followed it.
    pub seq: i64,
    /// The end, possibly extended by your bid.
    pub end_at: DateTime<Utc>,
    pub leader_id: String,
    /// Whether you lead: false when a higher maximum answered your bid at once.
    pub leading: bool,
    /// Your maximum (when you bid with one, or lead with one left): only you see it.
    #[oai(skip_serializing_if_is_none)]
    pub max_amount: Option<String>,
}

impl From<Placed> for BidPlacedResponse {
    fn from(p: Placed) -> Self {
        Self {
            price: p.price.to_string(),
            seq: p.seq,
            end_at: p.end_at,
            leader_id: p.leader_id.to_string(),
            leading: p.leading,
            max_amount: p.max_amount.map(|m| m.to_string()),
        }
    }
}

#[derive(Debug, Object)]
pub struct BidResponse {
    pub seq: i64,
    pub user_id: String,
    pub amount: String,
    /// The site's automatic raise for a bidder's maximum (proxy bidding).
    pub auto: bool,
    pub placed_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
}

impl From<BidView> for BidResponse {
    fn from(b: BidView) -> Self {
        Self {
            seq: b.seq,
            user_id: b.user_id.to_string(),
            amount: b.amount.to_string(),
            auto: b.auto,
            placed_at: b.placed_at,
            end_at: b.end_at,
        }
    }
}

#[derive(ApiResponse)]
pub enum AuctionCreated {
    /// The auction exists; it closes itself at `end_at`.
    #[oai(status = 201)]
    Created(Json<Envelope<AuctionResponse>>),
}

#[derive(ApiResponse)]
pub enum AuctionFound {
    /// The auction, with its live price.
    #[oai(status = 200)]
    Ok(Json<Envelope<AuctionResponse>>),
}

#[derive(ApiResponse)]
pub enum AuctionList {
    /// A page of auctions, newest start first.
    #[oai(status = 200)]
    Ok(Json<Envelope<PageOf<AuctionResponse>>>),
}

#[derive(ApiResponse)]
pub enum BidPlaced {
    /// Accepted and written: see `leading` (a higher maximum may have answered your bid).
    #[oai(status = 201)]
    Created(Json<Envelope<BidPlacedResponse>>),
}

#[derive(ApiResponse)]
pub enum BoughtNow {
    /// The auction is yours: pay this order before `expires_at`.
    #[oai(status = 201)]
    Created(Json<Envelope<OrderResponse>>),
}

#[derive(ApiResponse)]
pub enum BidList {
    /// Persisted bids, newest first.
    #[oai(status = 200)]
    Ok(Json<Envelope<PageOf<BidResponse>>>),
}

#[OpenApi(prefix_path = "/auctions", tag = "ApiTags::Auctions")]
impl AuctionsApi {
    /// Create an auction (admin)
    #[oai(path = "/", method = "post")]
    async fn create(&self, auth: BearerAuth, body: JsonBody<CreateAuctionRequest>) -> ApiResult<AuctionCreated> {
        let b = body.0;
        let new = NewAuction::parse(AuctionFields {
            title: &b.title,
            description: b.description.as_deref().unwrap_or(""),
            start_price: &b.start_price,
            min_increment: &b.min_increment,
            reserve_price: b.reserve_price.as_deref(),
            buy_now_price: b.buy_now_price.as_deref(),
            start_at: b.start_at,
            end_at: b.end_at,
            extend_window_secs: b.extend_window_secs,
            extend_by_secs: b.extend_by_secs,
            payment_timeout_secs: b.payment_timeout_secs,
        })?;
        let auction = self.auctions.create(auth.caller(), new).await?;
        Ok(AuctionCreated::Created(ok(auction.into())))
    }

    /// List auctions
    ///
    /// Newest start first; with `current=true` only open ones (scheduled or live), soonest
    /// end first.
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        page: Query<Option<u64>>,
        page_size: Query<Option<u64>>,
        current: Query<Option<bool>>,
    ) -> ApiResult<AuctionList> {
        let request = PageRequest::parse(page.0, page_size.0)?;
        let auctions = self.auctions.list(request, current.0.unwrap_or(false)).await?;
        Ok(AuctionList::Ok(ok(PageOf::new(auctions, request, AuctionResponse::from))))
    }

    /// Get an auction
    #[oai(path = "/:id", method = "get")]
    async fn get(&self, id: Path<Uuid>) -> ApiResult<AuctionFound> {
        Ok(AuctionFound::Ok(ok(self.auctions.get(id.0).await?.into())))
    }

    /// Place a bid, or a maximum (proxy bid)
    ///
    /// Send `amount` (a bid at exactly that amount) or `max_amount` (the site bids for you
    /// the least amount that leads and answers every other bid by the minimum increment,
    /// up to it); both or neither is 400. Accepted when it is at least the current price
    /// plus the minimum increment (the start price for the first bid): 409 `BID_TOO_LOW`
    /// otherwise, with `details.current_price` and `details.min_bid`. A bid at or below
    /// the leader's maximum is recorded and answered at once by the leader's automatic bid
    /// (`leading: false`). The leader may raise its own maximum (no bid, the price stays);
    /// lowering it is 409 `MAX_AMOUNT_LOWERED`. 409 `AUCTION_CLOSED` before the start and
    /// from the (possibly extended) end. A bid in the anti-sniping window moves the end
    /// out. A 201 bid is in Postgres already; 503 when it could not be written (it is
    /// taken back: bid again).
    #[oai(path = "/:id/bids", method = "post")]
    async fn bid(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: JsonBody<BidRequest>,
    ) -> ApiResult<BidPlaced> {
        let offer = body.0.offer()?;
        let key = idempotency_key.0.as_deref().map(IdempotencyKey::parse).transpose()?;
        let placed = self.auctions.bid(auth.caller(), id.0, offer, key.as_ref()).await?;
        Ok(BidPlaced::Created(ok(placed.into())))
    }

    /// Buy it now
    ///
    /// Ends the auction at once, sold to you at its `buy_now_price`: 201 with your order
    /// (`pending_payment`, the auction's payment timeout), and watchers get `closed` naming
    /// you as the winner. On offer from the start until the first bid that meets the
    /// reserve (the first bid when there is none): 409 `BUY_NOW_UNAVAILABLE` after that, or
    /// when the auction has no buy-now price, has not started or has closed. Buying again
    /// what you bought answers with the same order (so a retry, with or without an
    /// `Idempotency-Key`, is safe).
    #[oai(path = "/:id/buy-now", method = "post")]
    async fn buy_now(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
    ) -> ApiResult<BoughtNow> {
        idempotency_key.0.as_deref().map(IdempotencyKey::parse).transpose()?;
        let order_id = self.closer.buy_now(auth.caller(), id.0).await?;
        let order = self.orders.get(auth.caller(), order_id).await?;
        Ok(BoughtNow::Created(ok(order.into())))
    }

    /// The persisted bid history
    #[oai(path = "/:id/bids", method = "get")]
    async fn bids(
        &self,
        id: Path<Uuid>,
        page: Query<Option<u64>>,
        page_size: Query<Option<u64>>,
    ) -> ApiResult<BidList> {
        let request = PageRequest::parse(page.0, page_size.0)?;
        let bids = self.auctions.bids(id.0, request).await?;
        Ok(BidList::Ok(ok(PageOf::new(bids, request, BidResponse::from))))
    }

    /// Watch an auction live (WebSocket)
    ///
    /// On connect: `{"type":"state", ..., "server_time"}`. Then
    /// `{"type":"bid","price","leader_id","seq","end_at","min_next_bid","auto"}` for every
    /// accepted bid (`auto`: the leader's automatic raise; a slow client may skip to the
    /// latest) and
    /// `{"type":"closed","status","winner_id","price"}` at the end (also after a buy-now,
    /// naming the buyer), after which the server closes the socket. A watcher that connects
    /// to a sold auction also hears `{"type":"second_chance","winner_id","price"}` when an
    /// unpaid winner's lot goes to the next bidder, and `closed` with `unsold` when no offer
    /// was paid. It pings every `http.ws_ping_ms` (20 s by default) and drops a
    /// client silent for `http.ws_idle_ms` (60 s).
    #[oai(path = "/:id/live", method = "get")]
    async fn live(&self, id: Path<Uuid>, ws: WebSocket) -> ApiResult<BoxWebSocketUpgraded> {
        let auction = self.auctions.get(id.0).await?;
        let events = self.live.subscribe(id.0);
        let auctions = self.auctions.clone();
        let keep_alive = self.keep_alive;
        // A watcher only sends pongs and its close: tungstenite's default 128 KiB read
        // buffer (zeroed, so resident) per connection was most of the memory 5,000 watchers
        // cost. Larger messages still arrive; the buffer grows for them.
        let config = WebSocketConfig::default().read_buffer_size(WATCHER_READ_BUFFER);
        Ok(ws
            .config(config)
            .on_upgrade(move |socket| watch_auction(socket, auctions, auction, events, keep_alive))
            .boxed())
    }
}

/// The read buffer of a watcher's connection (see [`AuctionsApi::live`]).
const WATCHER_READ_BUFFER: usize = 4 * 1024;

/// Serves one watcher: the state first, then every newer event, with keep-alive pings.
async fn watch_auction(
    socket: WebSocketStream,
    auctions: AuctionService,
    subscribed_at: AuctionView,
    mut events: Watch,
    keep_alive: KeepAlive,
) {
    metrics::gauge!("websocket_connections").increment(1.0);
    let (mut sink, mut incoming) = socket.split();
    // Subscribed before reading the state: nothing can fall between the two.
    let state = auctions.get(subscribed_at.id).await.unwrap_or(subscribed_at);
    let mut last_seq = state.bid_count;
    let mut ping = tokio::time::interval(keep_alive.ping);
    ping.tick().await;
    let mut last_heard = Instant::now();
    if sink.send(Message::Text(state_message(&state).to_string())).await.is_ok() {
        loop {
            tokio::select! {
                changed = events.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(latest) = events.borrow_and_update().clone() else { continue };
                    if !is_news(&latest.event, &mut last_seq) {
                        continue;
                    }
                    let closed = matches!(latest.event, Event::Closed { .. });
                    // Rendered by the first watcher to send it, copied by the others.
                    let text = latest.text(|event| event_message(event).to_string()).to_owned();
                    if sink.send(Message::Text(text)).await.is_err() || closed {
                        break; // after `closed` nothing more will come
                    }
                }
                incoming = incoming.next() => match incoming {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => last_heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > keep_alive.idle || sink.send(Message::Ping(Vec::new())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = sink.close().await;
    metrics::gauge!("websocket_connections").decrement(1.0);
}

fn state_message(a: &AuctionView) -> Value {
    json!({
        "type": "state",
        "auction_id": a.id,
        "status": a.status.as_str(),
        "current_price": a.current_price.map(|m| m.to_string()),
        "leader_id": a.leader_id,
        "seq": a.bid_count,
        "end_at": a.end_at.to_rfc3339(),
        "min_next_bid": a.min_next_bid.to_string(),
        "winner_id": a.winner_id,
        "buy_now_price": a.buy_now_price.map(|m| m.to_string()),
        "server_time": Utc::now().to_rfc3339(),
    })
}

/// False for a bid the watcher has seen already (in the state, or a newer one).
fn is_news(event: &Event, last_seq: &mut i64) -> bool {
    match event {
        Event::Bid { seq, .. } if *seq <= *last_seq => false,
        Event::Bid { seq, .. } => {
            *last_seq = *seq;
            true
        }
        Event::Closed { .. } | Event::SecondChance { .. } => true,
    }
}

/// The live messages (documented on [`AuctionsApi::live`]).
fn event_message(event: &Event) -> Value {
    match event {
        Event::Bid { price, leader, seq, end_at, min_next_bid, auto, .. } => json!({
            "type": "bid", "price": price.to_string(), "leader_id": leader, "seq": seq,
            // Times as the REST answers write them (RFC 3339, `+00:00`).
            "end_at": end_at.to_rfc3339(), "min_next_bid": min_next_bid.to_string(), "auto": auto,
        }),
        Event::Closed { status, winner, price, .. } => json!({
            "type": "closed", "status": status.as_str(), "winner_id": winner, "price": price.map(|p| p.to_string())
        }),
        Event::SecondChance { winner, price, .. } => json!({
            "type": "second_chance", "winner_id": winner, "price": price.to_string()
        }),
    }
}
