//! The Redis connection every call goes through, on one server or on a Redis Cluster, and
//! the subscription that carries the live notices.
//!
//! Code above this layer sees one type, [`Redis`], and calls scripts and commands on it as
//! on any redis-rs connection: on a cluster, redis-rs sends each command to the master that
//! owns its key's slot and follows MOVED/ASK redirections and failovers by itself. That
//! works because every script touches the keys of one sale or one auction only, and those
//! share a hash tag (`{sale:<id>}`): one slot. What differs between the two modes is
//! pub/sub and key scans, and both are handled here.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, PushKind, RedisFuture, RedisResult, ToRedisArgs, Value};

/// A multiplexed connection that is cheap to clone.
#[derive(Clone)]
pub enum Redis {
    /// One server: reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster: routes by slot, follows MOVED/ASK, picks up a promoted replica.
    Cluster(ClusterConnection),
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_cluster() { "Redis::Cluster" } else { "Redis::Single" })
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Redis::Single(conn) => conn.req_packed_command(cmd),
            Redis::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Redis::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(conn) if !pipeline.is_transaction() => Box::pin(each_on_its_slot(conn.clone(), pipeline)),
            Redis::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::Single(conn) => conn.get_db(),
            Redis::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A plain (non-atomic) pipeline on a cluster: redis-rs sends a pipeline to one node and
/// refuses one whose keys hash to different slots (a batch of reservation statuses, say),
/// so each command goes on its own, all at once: the connection to each node multiplexes
/// them, and the replies come back in the pipeline's order, errors in place as with a
/// pipeline.
async fn each_on_its_slot(conn: ClusterConnection, pipeline: &redis::Pipeline) -> RedisResult<Vec<Value>> {
    let replies = pipeline.cmd_iter().map(|cmd| {
        let mut conn = conn.clone();
        async move { conn.req_packed_command(cmd).await }
    });
    futures::future::try_join_all(replies).await
}

impl Redis {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }

    /// Publishes `message` on `channel` the way this deployment's subscribers listen
    /// ([`RedisClient::subscribe`]): PUBLISH on one server, sharded SPUBLISH on a cluster,
    /// where a plain PUBLISH would be copied to every node and never reach an SSUBSCRIBE.
    /// Deliberately named like `AsyncCommands::publish`, which it shadows: every notice
    /// sent through [`Redis`] goes out the right way.
    pub async fn publish(&mut self, channel: impl ToRedisArgs, message: impl ToRedisArgs) -> RedisResult<()> {
        let command = if self.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
        redis::cmd(command).arg(channel).arg(message).query_async::<i64>(self).await.map(|_| ())
    }

    /// Every key matching `pattern`, from every master (SCAN walks one node only).
    pub async fn keys_matching(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        let Redis::Cluster(conn) = self else { return self.scan(pattern, None).await };
        let mut keys = Vec::new();
        for (host, port) in masters(conn).await? {
            let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            keys.extend(self.scan(pattern, Some(node)).await?);
        }
        Ok(keys)
    }

    /// SCAN to the end, on `node` of a cluster or on the one server.
    async fn scan(&mut self, pattern: &str, node: Option<RoutingInfo>) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut command = redis::cmd("SCAN");
            command.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let reply = match (&mut *self, node.clone()) {
                (Redis::Cluster(conn), Some(node)) => conn.route_command(command, node).await?,
                (conn, _) => command.query_async(conn).await?,
            };
            let (next, batch): (u64, Vec<String>) = redis::from_redis_value(reply)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}

/// The masters' `host:port`s, from `CLUSTER NODES` (lines of `id host:port@bus flags ...`).
async fn masters(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect())
}

/// What a subscription hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Message {
        channel: String,
        payload: String,
    },
    /// The subscription was (re)established: notices sent in between may have been lost.
    Subscribed,
}

pub type Notices = Pin<Box<dyn Stream<Item = Notice> + Send>>;

/// Opens subscriptions; one per process, separate from [`Redis`].
#[derive(Clone)]
pub enum RedisClient {
    Single(Box<redis::Client>),
    /// A builder for the subscribing cluster client (it needs its own push channel).
    Cluster(Arc<dyn Fn() -> ClusterClientBuilder + Send + Sync>),
}

impl fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisClient::Single(_) => "RedisClient::Single",
            RedisClient::Cluster(_) => "RedisClient::Cluster",
        })
    }
}

impl RedisClient {
    /// Subscribes to `channels`. On one server the stream ends when the connection is lost
    /// (subscribe again). On a cluster the channels are sharded (SSUBSCRIBE, each on the
    /// master owning its slot) and redis-rs subscribes again by itself after a lost
    /// connection or a failover, which the stream reports as [`Notice::Subscribed`].
    pub async fn subscribe(&self, channels: &[String]) -> RedisResult<Notices> {
        match self {
            RedisClient::Single(client) => {
                let mut pubsub = client.get_async_pubsub().await?;
                for channel in channels {
                    pubsub.subscribe(channel).await?;
                }
                let messages = pubsub.into_on_message().filter_map(|message| async move {
                    let payload = message.get_payload::<String>().ok()?;
                    Some(Notice::Message { channel: message.get_channel_name().to_owned(), payload })
                });
                Ok(futures::stream::once(async { Notice::Subscribed }).chain(messages).boxed())
            }
            RedisClient::Cluster(builder) => {
                let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                let client = builder().use_protocol(redis::ProtocolVersion::RESP3).push_sender(sender).build()?;
                let mut conn = client.get_async_connection().await?;
                for channel in channels {
                    conn.ssubscribe(channel).await?;
                }
                // The connection lives as long as the stream: dropping it ends the subscription.
                let notices = futures::stream::unfold((receiver, conn), |(mut receiver, conn)| async move {
                    let push = receiver.recv().await?;
                    Some((notice(push), (receiver, conn)))
                });
                Ok(notices.filter_map(|notice| async move { notice }).boxed())
            }
        }
    }
}

fn notice(push: redis::PushInfo) -> Option<Notice> {
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            let text = |i: usize| push.data.get(i).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
            Some(Notice::Message { channel: text(0)?, payload: text(1)? })
        }
        PushKind::SSubscribe | PushKind::Subscribe | PushKind::Disconnection => Some(Notice::Subscribed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_messages_and_resubscriptions_become_notices() {
        let push = |kind, data: &[&str]| redis::PushInfo {
            kind,
            data: data.iter().map(|d| Value::BulkString(d.as_bytes().to_vec())).collect(),
        };
        assert_eq!(
            notice(push(PushKind::SMessage, &["spike:sales:restock", "42"])),
            Some(Notice::Message { channel: "spike:sales:restock".into(), payload: "42".into() })
        );
        assert_eq!(notice(push(PushKind::SSubscribe, &["spike:sales:restock"])), Some(Notice::Subscribed));
        assert_eq!(notice(push(PushKind::Disconnection, &[])), Some(Notice::Subscribed));
        assert_eq!(notice(push(PushKind::Invalidate, &[])), None);
    }
}
