//! A private Redis Cluster of three masters for one test: three `redis-server`s on free
//! ports (never the shared 6379), joined by `redis-cli --cluster create`, stopped and
//! removed when dropped.

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
        if Command::new("redis-server").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "redis-server is not installed, and CI is set");
            eprintln!("SKIPPED: redis-server is not installed; the Redis Cluster tests did not run");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("spike-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self { ports: Vec::new(), dir, children: Vec::new() };
        for _ in 0..3 {
            let port = free_port_with_bus();
            cluster.children.push(cluster.server(port));
            cluster.ports.push(port);
        }
        for port in &cluster.ports {
            wait_for_ping(*port).await;
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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

    fn server(&self, port: u16) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed")
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

async fn cluster_info(port: u16) -> redis::RedisResult<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await
}
