//! A flash-sale reservation after the 202: queued until the order consumer decides, then
//! confirmed with an order or failed with a reason.

use uuid::Uuid;

use crate::names::named;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Queued,
    Confirmed,
    Failed,
}

named!(ReservationStatus, "status", "reservation status", {
    Queued => "queued",
    Confirmed => "confirmed",
    Failed => "failed",
});

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Postgres had no units left: Redis had drifted ahead (a rebuilt Redis sold again the
    /// units of reservations from before the rebuild). Its units still go back to Redis,
    /// which counted that drift below zero when those older reservations settled.
    SoldOut,
    /// The database's per-user limit said no (Redis had forgotten a holding): the unit is
    /// real and goes back on sale.
    LimitReached,
    /// The broker did not confirm the message; the reservation was undone (the buyer got 503).
    BrokerUnavailable,
    /// The order consumer gave up after its last attempt; the units were released.
    NotProcessed,
}

named!(FailureReason, "reason", "failure reason", {
    SoldOut => "sold_out",
    LimitReached => "limit_reached",
    BrokerUnavailable => "broker_unavailable",
    NotProcessed => "not_processed",
});

/// Where one reservation stands, as its buyer polls it. Build it with the constructors: a
/// confirmed one always has its order and a failed one its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationProgress {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub user_id: Uuid,
    pub status: ReservationStatus,
    pub order_id: Option<Uuid>,
    pub reason: Option<FailureReason>,
}

impl ReservationProgress {
    pub fn queued(id: Uuid, sale_id: Uuid, user_id: Uuid) -> Self {
        Self { id, sale_id, user_id, status: ReservationStatus::Queued, order_id: None, reason: None }
    }

    pub fn confirmed(id: Uuid, sale_id: Uuid, user_id: Uuid, order_id: Uuid) -> Self {
        Self { id, sale_id, user_id, status: ReservationStatus::Confirmed, order_id: Some(order_id), reason: None }
    }

    pub fn failed(id: Uuid, sale_id: Uuid, user_id: Uuid, reason: FailureReason) -> Self {
        Self { id, sale_id, user_id, status: ReservationStatus::Failed, order_id: None, reason: Some(reason) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons_round_trip_through_their_names() {
        for status in [ReservationStatus::Queued, ReservationStatus::Confirmed, ReservationStatus::Failed] {
            assert_eq!(status.to_string().parse::<ReservationStatus>().unwrap(), status);
        }
        for reason in [
            FailureReason::SoldOut,
            FailureReason::LimitReached,
            FailureReason::BrokerUnavailable,
            FailureReason::NotProcessed,
        ] {
            assert_eq!(reason.to_string().parse::<FailureReason>().unwrap(), reason);
        }
        assert_eq!("pending".parse::<ReservationStatus>().unwrap_err().field, "status");
    }

    #[test]
    fn a_confirmed_reservation_carries_its_order_and_a_failed_one_its_reason() {
        let (id, sale, user, order) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let confirmed = ReservationProgress::confirmed(id, sale, user, order);
        assert_eq!(
            (confirmed.status, confirmed.order_id, confirmed.reason),
            (ReservationStatus::Confirmed, Some(order), None)
        );
        let failed = ReservationProgress::failed(id, sale, user, FailureReason::NotProcessed);
        assert_eq!((failed.status, failed.order_id), (ReservationStatus::Failed, None));
        assert_eq!(failed.reason.map(|r| r.to_string()).as_deref(), Some("not_processed"));
    }
}
