//! A private Redis Cluster for one test: three masters (or three masters with a replica
//! each) as `redis-server`s on free ports (never the shared 6379), joined by
//! `redis-cli --cluster create`, stopped and removed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct PrivateCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl PrivateCluster {
    /// Starts the cluster. Without redis-server on this machine it says so and returns
    /// `None` (the caller skips), except under CI, where a skipped cluster test would hide
    /// that the cluster support went untested: there it fails.
    pub async fn start() -> Option<Self> {
        Self::start_with(0).await
    }

    /// Three masters with one replica each, a short `cluster-node-timeout` (1 s) so a
    /// replica takes over soon after its master dies, and `cluster-replica-validity-factor
    /// 0`: a replica promotes itself however long it was cut off from its master (a test
    /// cuts the link on purpose to lose the writes made after it). Returns once every
    /// replica is in sync.
    pub async fn with_replicas() -> Option<Self> {
        let cluster = Self::start_with(1).await?;
        for port in &cluster.ports {
            if cluster.role(*port).await == "slave" {
                cluster.wait_for_sync(*port).await;
            }
        }
        Some(cluster)
    }

    async fn start_with(replicas: usize) -> Option<Self> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "redis-server is not installed, and CI is set");
            eprintln!("SKIPPED: redis-server is not installed; the Redis Cluster tests did not run");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("spike-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self { ports: Vec::new(), dir, children: Vec::new() };
        for _ in 0..3 * (1 + replicas) {
            let port = free_port_with_bus();
            cluster.children.push(cluster.server(port, replicas > 0));
            cluster.ports.push(port);
        }
        for port in &cluster.ports {
            wait_for_ping(*port).await;
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok().await;
        Some(cluster)
    }

    /// The seed list for `redis.url` in cluster mode.
    pub fn url(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    fn server(&self, port: u16, failover: bool) -> Child {
        let timeout = if failover { "1000" } else { "2000" };
        let mut command = Command::new("redis-server");
        command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).args([
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            timeout,
        ]);
        if failover {
            command.args(["--cluster-replica-validity-factor", "0"]);
        }
        command
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed")
    }

    /// The port of the master that serves `key`'s slot now, as the first node that answers
    /// sees it (a killed node does not).
    pub async fn master_of(&self, key: &str) -> u16 {
        for port in &self.ports {
            let Ok(slot) = query::<i64>(*port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await else { continue };
            let Ok(slots) = query::<Vec<redis::Value>>(*port, redis::cmd("CLUSTER").arg("SLOTS")).await else {
                continue;
            };
            for range in slots {
                let redis::Value::Array(range) = range else { continue };
                let (Some(redis::Value::Int(from)), Some(redis::Value::Int(to)), Some(redis::Value::Array(master))) =
                    (range.first(), range.get(1), range.get(2))
                else {
                    continue;
                };
                if (*from..=*to).contains(&slot)
                    && let Some(redis::Value::Int(port)) = master.get(1)
                {
                    return u16::try_from(*port).unwrap();
                }
            }
            return 0; // the slot has no master in this node's view
        }
        panic!("no node answers");
    }

    /// The port of the replica of the master on `master`.
    pub async fn replica_of(&self, master: u16) -> u16 {
        for port in &self.ports {
            let info: String = query(*port, redis::cmd("INFO").arg("replication")).await.unwrap();
            if info.contains("role:slave") && info.contains(&format!("master_port:{master}\r")) {
                return *port;
            }
        }
        panic!("no replica of {master}");
    }

    /// `master` or `slave`, as the node on `port` sees itself in `CLUSTER NODES`.
    pub async fn role(&self, port: u16) -> String {
        let nodes: String = query(port, redis::cmd("CLUSTER").arg("NODES")).await.unwrap();
        let myself = nodes.lines().find(|l| l.contains("myself")).expect("a myself line").to_owned();
        let flags = myself.split(' ').nth(2).unwrap_or_default();
        if flags.contains("master") { "master" } else { "slave" }.to_owned()
    }

    /// Until the replica on `port` has its link to the master up and the initial sync done.
    async fn wait_for_sync(&self, port: u16) {
        for _ in 0..200 {
            let info: String = query(port, redis::cmd("INFO").arg("replication")).await.unwrap_or_default();
            if info.contains("master_link_status:up") && !info.contains("master_sync_in_progress:1") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the replica on {port} did not sync");
    }

    /// kill -9 of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let child = &mut self.children[self.ports.iter().position(|p| *p == port).unwrap()];
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`) to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let pid = self.children[self.ports.iter().position(|p| *p == port).unwrap()].id();
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Until every node reports `cluster_state:ok` (all slots covered, the nodes agree).
    async fn wait_until_ok(&self) {
        for _ in 0..200 {
            let mut ok = true;
            for port in &self.ports {
                let info = cluster_info(*port).await.unwrap_or_default();
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the private Redis Cluster did not reach cluster_state:ok");
    }

    /// Sharded (SSUBSCRIBE) subscribers of `channel`, over all nodes: only the master that
    /// owns the channel's slot has any.
    pub async fn shard_subscribers(&self, channel: &str) -> i64 {
        let mut total = 0;
        for port in &self.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let reply: (String, i64) =
                redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel).query_async(&mut conn).await.unwrap();
            total += reply.1;
        }
        total
    }

    /// Keys held by each master, in port order.
    pub async fn keys_per_node(&self) -> Vec<i64> {
        let mut counts = Vec::new();
        for port in &self.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            counts.push(redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap());
        }
        counts
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_port_with_bus() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

async fn wait_for_ping(port: u16) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    for _ in 0..100 {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server on {port} did not start");
}

/// One command on the node on `port` (no cluster routing).
pub async fn query<T: redis::FromRedisValue>(port: u16, command: &mut redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    command.query_async(&mut conn).await
}

async fn cluster_info(port: u16) -> redis::RedisResult<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await
}
