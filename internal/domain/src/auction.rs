//! Live auctions: what an admin may create, the lowest bid to show, and the status a
//! bidder sees.
//!
//! The live rules (which bid is high enough, how the end moves, sold or unsold) are decided
//! in one place only: the Lua scripts in `repo` (`place_bid.lua`, `close_auction.lua`),
//! atomically and in integer cents. Their tests run the scripts against Redis.

use chrono::{DateTime, SubsecRound, Utc};

use crate::names::named;
use crate::{Invalid, Money};

pub const MAX_EXTEND_SECS: i64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuction {
    pub title: String,
    pub description: String,
    pub start_price: Money,
    pub min_increment: Money,
    pub reserve_price: Option<Money>,
    pub buy_now_price: Option<Money>,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub extend_window_secs: u32,
    pub extend_by_secs: u32,
    pub payment_timeout_secs: u32,
}

/// The raw fields of `POST /auctions`, before any rule was checked.
#[derive(Debug, Clone)]
pub struct AuctionFields<'a> {
    pub title: &'a str,
    pub description: &'a str,
    pub start_price: &'a str,
    pub min_increment: &'a str,
    pub reserve_price: Option<&'a str>,
    pub buy_now_price: Option<&'a str>,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub extend_window_secs: i64,
    pub extend_by_secs: i64,
    pub payment_timeout_secs: i64,
}

impl NewAuction {
    pub fn parse(fields: AuctionFields<'_>) -> Result<Self, Invalid> {
        let title = crate::page::text("title", fields.title, 1, crate::page::TITLE_MAX_CHARS)?;
        let description = crate::page::text("description", fields.description, 0, crate::page::DESCRIPTION_MAX_CHARS)?;
        let start_price = Money::parse_positive("start_price", fields.start_price)?;
        let min_increment = Money::parse_positive("min_increment", fields.min_increment)?;
        let reserve_price = fields.reserve_price.map(|raw| Money::parse_positive("reserve_price", raw)).transpose()?;
        let buy_now_price = fields.buy_now_price.map(|raw| Money::parse_positive("buy_now_price", raw)).transpose()?;
        if let Some(buy_now) = buy_now_price {
            // Buying at once must never cost less than winning by bidding could.
            let floor = reserve_price.map_or(start_price, |reserve| reserve.max(start_price));
            if buy_now < floor {
                return Err(Invalid::new(
                    "buy_now_price",
                    format!("must be at least the start price and the reserve price ({floor})"),
                ));
            }
        }
        if fields.end_at.trunc_subsecs(3) <= fields.start_at.trunc_subsecs(3) {
            return Err(Invalid::new("end_at", "must be after start_at"));
        }
        for (name, value) in
            [("extend_window_secs", fields.extend_window_secs), ("extend_by_secs", fields.extend_by_secs)]
        {
            if !(0..=MAX_EXTEND_SECS).contains(&value) {
                return Err(Invalid::new(name, format!("must be between 0 and {MAX_EXTEND_SECS}")));
            }
        }
        if fields.extend_window_secs > 0 && fields.extend_by_secs == 0 {
            return Err(Invalid::new("extend_by_secs", "must be at least 1 when extend_window_secs is set"));
        }
        if !(1..=crate::sale::MAX_PAYMENT_TIMEOUT_SECS).contains(&fields.payment_timeout_secs) {
            return Err(Invalid::new(
                "payment_timeout_secs",
                format!("must be between 1 and {}", crate::sale::MAX_PAYMENT_TIMEOUT_SECS),
            ));
        }
        Ok(Self {
            title,
            description,
            start_price,
            min_increment,
            reserve_price,
            buy_now_price,
            // Redis keeps times in milliseconds; so does everything else, so they compare equal.
            start_at: fields.start_at.trunc_subsecs(3),
            end_at: fields.end_at.trunc_subsecs(3),
            extend_window_secs: fields.extend_window_secs as u32,
            extend_by_secs: fields.extend_by_secs as u32,
            payment_timeout_secs: fields.payment_timeout_secs as u32,
        })
    }
}

/// The lowest acceptable bid, to show next to the price: the start price for the first bid,
/// otherwise the current price plus the minimum increment (`place_bid.lua` decides).
pub fn min_next_bid(current: Option<Money>, start_price: Money, min_increment: Money) -> Money {
    match current {
        None => start_price,
        Some(price) => price.plus(min_increment),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuctionStatus {
    Scheduled,
    Live,
    Sold,
    Unsold,
}

named!(AuctionStatus, "status", "auction status", {
    Scheduled => "scheduled",
    Live => "live",
    Sold => "sold",
    Unsold => "unsold",
});

impl AuctionStatus {
    /// Whether the auction has ended (the scripts and Postgres say `sold` or `unsold`).
    pub fn is_closed(self) -> bool {
        matches!(self, AuctionStatus::Sold | AuctionStatus::Unsold)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn m(raw: &str) -> Money {
        Money::parse("x", raw).unwrap()
    }

    fn fields(now: DateTime<Utc>) -> AuctionFields<'static> {
        AuctionFields {
            title: "Lot 1",
            description: "",
            start_price: "10.00",
            min_increment: "1.00",
            reserve_price: None,
            buy_now_price: None,
            start_at: now,
            end_at: now + Duration::minutes(5),
            extend_window_secs: 0,
            extend_by_secs: 0,
            payment_timeout_secs: 60,
        }
    }

    #[test]
    fn the_first_bid_needs_the_start_price() {
        assert_eq!(min_next_bid(None, m("10.00"), m("1.00")), m("10.00"));
    }

    #[test]
    fn a_bid_equal_to_the_current_price_is_too_low() {
        let min = min_next_bid(Some(m("12.00")), m("10.00"), m("0.50"));
        assert_eq!(min, m("12.50"));
        assert!(m("12.00") < min);
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [AuctionStatus::Scheduled, AuctionStatus::Live, AuctionStatus::Sold, AuctionStatus::Unsold] {
            assert_eq!(status.to_string().parse::<AuctionStatus>().unwrap(), status);
        }
        assert!("open".parse::<AuctionStatus>().is_err());
    }

    #[test]
    fn bad_auction_fields_name_the_field() {
        let now = Utc::now();
        let cases: Vec<(&str, AuctionFields)> = vec![
            ("title", AuctionFields { title: " ", ..fields(now) }),
            ("start_price", AuctionFields { start_price: "-1", ..fields(now) }),
            ("min_increment", AuctionFields { min_increment: "0", ..fields(now) }),
            ("reserve_price", AuctionFields { reserve_price: Some("1.001"), ..fields(now) }),
            ("buy_now_price", AuctionFields { buy_now_price: Some("9.99"), ..fields(now) }),
            (
                "buy_now_price",
                AuctionFields { reserve_price: Some("50.00"), buy_now_price: Some("49.99"), ..fields(now) },
            ),
            ("buy_now_price", AuctionFields { buy_now_price: Some("0"), ..fields(now) }),
            ("end_at", AuctionFields { end_at: now - Duration::seconds(1), ..fields(now) }),
            ("extend_by_secs", AuctionFields { extend_window_secs: 10, ..fields(now) }),
            ("payment_timeout_secs", AuctionFields { payment_timeout_secs: 0, ..fields(now) }),
        ];
        for (field, raw) in cases {
            assert_eq!(NewAuction::parse(raw).unwrap_err().field, field);
        }
    }

    #[test]
    fn a_buy_now_price_may_equal_the_reserve() {
        let now = Utc::now();
        let ok = AuctionFields { reserve_price: Some("50.00"), buy_now_price: Some("50.00"), ..fields(now) };
        assert_eq!(NewAuction::parse(ok).unwrap().buy_now_price, Some(m("50.00")));
    }
}
