//! What a use case can answer besides success. The API maps each variant to an HTTP
//! status and a stable error code (docs/errors.md); nothing here knows about HTTP.

use domain::{Invalid, Money};
use repo::mq::Outcome;
use sea_orm::DbErr;
use uuid::Uuid;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("missing or invalid access token")]
    Unauthenticated,
    #[error("invalid email or password")]
    BadCredentials,
    #[error("invalid or expired refresh token")]
    BadRefreshToken,
    #[error("this requires the admin role")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("email already registered")]
    EmailTaken,
    #[error("not enough stock for product {product_id}: {available} left, {requested} requested")]
    InsufficientStock { product_id: Uuid, available: i64, requested: i64 },
    #[error("order is {status}: only a pending_payment order can be {action}")]
    OrderNotPending { status: String, action: &'static str },
    #[error("the payment window of this order has passed")]
    OrderExpired,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("{0}")]
    SoldOut(String),
    #[error("per-user limit reached: you hold {held} of {limit}")]
    LimitReached { held: i64, limit: i64 },
    #[error("{0}")]
    NotActive(&'static str),
    #[error("bid too low: the minimum bid is {minimum}")]
    BidTooLow { current: Option<Money>, minimum: Money },
    /// Shown to the bidder who owns the maximum only.
    #[error("your maximum is {maximum}: it can be raised, not lowered")]
    MaxAmountLowered { maximum: Money },
    #[error("the auction is not accepting bids")]
    AuctionClosed { current: Option<Money> },
    #[error("{0}")]
    BuyNowUnavailable(&'static str),
    /// Redis lost the sale's hot state; its purchases wait until the reservations accepted
    /// before the loss are processed (`crate::barrier`).
    #[error("the sale is being restored after a cache failure; try again in a moment")]
    Rebuilding,
    /// A dependency did not answer. The cause goes to the log with the request (once, by
    /// the API layer), never to the client.
    #[error("{service} is unavailable")]
    Unavailable { service: &'static str, cause: Option<anyhow::Error> },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// A dependency that did not answer, with nothing more to say about why.
    pub fn unavailable(service: &'static str) -> Self {
        Error::Unavailable { service, cause: None }
    }

    /// The consumer outcome of a failed message: a dependency that did not answer holds the
    /// message until it answers again (the message is not at fault); anything else is
    /// retried and, when the attempts run out, dead-lettered.
    pub fn outcome(self, what: &str) -> Outcome {
        match self {
            Error::Unavailable { service, .. } => {
                Outcome::Unavailable(anyhow::anyhow!("{what}: {service} is unavailable"))
            }
            other => Outcome::Retry(anyhow::anyhow!("{what}: {other}")),
        }
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        if repo::db::is_unreachable(&err) {
            Error::Unavailable { service: "postgres", cause: Some(err.into()) }
        } else {
            Error::Internal(anyhow::Error::new(err).context("postgres"))
        }
    }
}

/// Whether Redis could not serve the command right now, rather than refused it: lost or
/// refused connections and timeouts, and on a Redis Cluster what a failover answers while
/// it is under way (`CLUSTERDOWN`, a `MOVED`/`ASK`/`TRYAGAIN` the client's retries did not
/// get past, `MASTERDOWN`, `READONLY` from a demoted master, `LOADING`, no connection to
/// the slot's node). Each is a 503, never a 500: the command did not run, or (a lost reply)
/// its effect is reconciled like any other unanswered call.
fn redis_unavailable(err: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_cluster_error()
        || matches!(
            err.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::MasterDown | ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading
                )
        )
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        if redis_unavailable(&err) {
            Error::Unavailable { service: "redis", cause: Some(err.into()) }
        } else {
            Error::Internal(anyhow::Error::new(err).context("redis"))
        }
    }
}

impl From<lapin::Error> for Error {
    fn from(err: lapin::Error) -> Self {
        Error::Unavailable { service: "rabbitmq", cause: Some(err.into()) }
    }
}

#[cfg(test)]
mod redis_errors {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::Error;

    #[test]
    fn what_a_cluster_answers_during_a_failover_is_unavailable_not_internal() {
        for kind in [
            ServerErrorKind::ClusterDown,
            ServerErrorKind::Moved,
            ServerErrorKind::Ask,
            ServerErrorKind::TryAgain,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::BusyLoading,
        ] {
            let err = Error::from(RedisError::from((ErrorKind::Server(kind), "failover")));
            assert!(matches!(err, Error::Unavailable { service: "redis", .. }), "{kind:?}: {err:?}");
        }
        let err = Error::from(RedisError::from((ErrorKind::ClusterConnectionNotFound, "no node")));
        assert!(matches!(err, Error::Unavailable { service: "redis", .. }));
        let err = Error::from(RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "script")));
        assert!(matches!(err, Error::Internal(_)), "other errors stay internal");
    }
}
