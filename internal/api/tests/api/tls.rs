//! TLS to every dependency. Private TLS-only Redis, RabbitMQ and Postgres servers (their own
//! ports and folders, a CA made here; the shared services are never touched) carry a purchase
//! end to end, and a server the settings do not trust, or a plain-text port behind an
//! `amqps://` URL, stops the connection instead of falling back to plain text.
//!
//! The servers run as the users their Debian packages created (`rabbitmq`, `postgres`), so
//! these tests must run as root, as CI does.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use platform::config::TlsSettings;
use platform::{Broker, connect};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use sea_orm::ConnectionTrait;
use secrecy::{ExposeSecret, SecretString};

use crate::helpers::{spawn_app_with, test_settings};
use crate::sales::{buy, confirmed, sale};

#[tokio::test]
async fn a_purchase_goes_end_to_end_over_tls() {
    let pki = Pki::new();
    let rabbit = TlsRabbit::start(&pki);
    let redis = start_tls_redis(&pki);
    wait_for_port(redis.port, "redis-server").await;
    wait_for_port(rabbit.port, "rabbitmq-server").await;

    let app = spawn_app_with(|settings| {
        settings.redis.url = SecretString::from(format!("rediss://127.0.0.1:{}", redis.port));
        settings.redis.tls = pki.client_tls();
        settings.amqp.url = SecretString::from(format!("amqps://guest:guest@127.0.0.1:{}/%2f", rabbit.port));
        settings.amqp.tls = pki.client_tls();
    })
    .await;
    let admin = app.admin().await;
    let shopper = app.shopper().await;
    let sale = sale(&app, &admin, 3, 1, 300).await;
    let reply = buy(&app, &shopper, &sale, 1).await;
    let id = reply.data(202)["reservation_id"].as_str().unwrap().to_owned();
    let status = confirmed(&app, &shopper, &id).await;
    assert_eq!(status["status"], "confirmed", "{status}");
    let order = app.get(&format!("/api/v1/orders/{}", status["order_id"].as_str().unwrap()), shopper.token()).await;
    assert_eq!(order.data(200)["status"], "pending_payment");

    // The same servers refuse a client that does not trust their CA or brings no certificate.
    let mut amqp = app.settings.amqp.clone();
    amqp.tls.ca_file = Some(pki.path("other-ca.pem"));
    let err = Broker::connect(&amqp, "spike-test-wrong-ca").await.err().expect("an unknown CA is refused");
    assert_eq!(err.service, "rabbitmq");
    let mut amqp = app.settings.amqp.clone();
    amqp.tls = TlsSettings { ca_file: Some(pki.path("ca.pem")), ..TlsSettings::default() };
    assert!(Broker::connect(&amqp, "spike-test-no-cert").await.is_err(), "the broker demands a client certificate");
    let mut redis_settings = app.settings.redis.clone();
    redis_settings.tls.ca_file = Some(pki.path("other-ca.pem"));
    let err = connect::redis(&redis_settings).await.expect_err("an unknown CA is refused");
    assert_eq!(err.service, "redis");

    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn amqps_to_a_plain_text_broker_fails_instead_of_falling_back() {
    // The shared broker speaks only plain AMQP on 5672: a TLS client must not get through.
    let mut settings = test_settings().amqp;
    let tls_url = settings.url.expose_secret().replacen("amqp://", "amqps://", 1);
    settings.url = SecretString::from(tls_url);
    let result = Broker::connect(&settings, "spike-test-amqps-to-plain").await;
    assert!(result.is_err(), "amqps:// connected to a plain-text port");
}

#[tokio::test]
async fn postgres_verify_full_trusts_the_configured_ca() {
    let pki = Pki::new();
    let postgres = start_tls_postgres(&pki);
    wait_for_port(postgres.port, "postgres").await;

    let mut settings = test_settings().database;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full", postgres.port);
    let err = connect::postgres_at(&settings, &url).await.expect_err("a private CA is not trusted by default");
    assert_eq!(err.service, "postgres");

    settings.tls.ca_file = Some(pki.path("ca.pem"));
    let db = connect::postgres_at(&settings, &url).await.expect("verify-full with the CA file");
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ))
        .await
        .unwrap()
        .expect("a row for this connection");
    assert!(row.try_get_by_index::<bool>(0).unwrap(), "the connection is encrypted");
    db.close().await.unwrap();
}

/// A throw-away folder with a CA, a server certificate for 127.0.0.1 and localhost, a client
/// certificate, and a second CA that signed neither.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = temp_dir("pki");
        let (ca_params, ca_key) = ca("Spike test CA");
        std::fs::write(dir.join("ca.pem"), ca_params.self_signed(&ca_key).unwrap().pem()).unwrap();
        let (other_params, other_key) = ca("Some other CA");
        std::fs::write(dir.join("other-ca.pem"), other_params.self_signed(&other_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        for (name, purpose) in
            [("server", ExtendedKeyUsagePurpose::ServerAuth), ("client", ExtendedKeyUsagePurpose::ClientAuth)]
        {
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, format!("spike test {name}"));
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), params.signed_by(&key, &issuer).unwrap().pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// What a client needs: the CA and the client certificate with its key.
    fn client_tls(&self) -> TlsSettings {
        TlsSettings {
            ca_file: Some(self.path("ca.pem")),
            client_cert_file: Some(self.path("client.pem")),
            client_key_file: Some(self.path("client.key")),
        }
    }

    /// A server's own folder holding the CA, its certificate and its key (readable only by
    /// `owner`, as Postgres insists), owned by the user the server runs as.
    fn server_dir(&self, name: &str, owner: Option<&str>) -> PathBuf {
        let dir = temp_dir(name);
        for file in ["ca.pem", "server.pem", "server.key"] {
            std::fs::copy(self.path(file), dir.join(file)).unwrap();
        }
        std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some(owner) = owner {
            let status = Command::new("chown").args(["-R", &format!("{owner}:{owner}")]).arg(&dir).status().unwrap();
            assert!(status.success(), "chown {owner} {}", dir.display());
        }
        dir
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params, KeyPair::generate().unwrap())
}

/// A server process started by a test, with its own folder. Dropping it sends SIGINT, a fast
/// shutdown for both redis-server and postgres that does not wait for clients (a failed
/// test may still hold connections), and removes the folder.
struct Server {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-server with only a TLS port, asking clients for a certificate (its default).
fn start_tls_redis(pki: &Pki) -> Server {
    let dir = pki.server_dir("redis", None);
    let port = free_port();
    let file = |name: &str| dir.join(name).display().to_string();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir", &dir.display().to_string()])
        .args(["--tls-cert-file", &file("server.pem"), "--tls-key-file", &file("server.key")])
        .args(["--tls-ca-cert-file", &file("ca.pem"), "--tls-auth-clients", "yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    Server { port, dir, child }
}

/// A RabbitMQ node of its own with only a TLS listener that demands a client certificate.
/// It needs its own config file: the system one pins the shared node's listener.
struct TlsRabbit {
    port: u16,
    node: String,
    dir: PathBuf,
}

impl TlsRabbit {
    fn start(pki: &Pki) -> Self {
        let dir = pki.server_dir("rabbitmq", None);
        let (port, dist_port) = (free_port(), free_port());
        let node = format!("spike-tls-{}@localhost", uuid::Uuid::new_v4().simple());
        let file = |name: &str| dir.join(name).display().to_string();
        let config = format!(
            "listeners.tcp = none\n\
             listeners.ssl.default = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             loopback_users = none\n",
            file("ca.pem"),
            file("server.pem"),
            file("server.key"),
        );
        std::fs::write(dir.join("rabbitmq.conf"), config).unwrap();
        std::fs::write(dir.join("plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("env.conf"), format!("NODENAME={node}\n")).unwrap();
        if as_root() {
            let status = Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&dir).status().unwrap();
            assert!(status.success());
        }
        // From here on Drop stops the node, also when it never comes up.
        let rabbit = Self { port, node, dir: dir.clone() };
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &rabbit.node)
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", file("mnesia"))
            .env("RABBITMQ_LOG_BASE", file("log"))
            .env("RABBITMQ_PID_FILE", file("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", file("plugins"))
            .env("RABBITMQ_CONFIG_FILE", file("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", file("env.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server is installed");
        assert!(status.success(), "rabbitmq-server -detached failed");
        rabbit
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // A node that never answered rabbitmqctl is ended through its pid file.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Postgres cluster of its own (initdb in a temp folder) that accepts TLS.
fn start_tls_postgres(pki: &Pki) -> Server {
    let owner = as_root().then_some("postgres");
    let dir = pki.server_dir("postgres", owner);
    let bin = postgres_bin_dir();
    let data = dir.join("data");
    let status = as_user(Command::new(bin.join("initdb")), owner)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("initdb runs");
    assert!(status.success(), "initdb failed");
    let port = free_port();
    let file = |name: &str| dir.join(name).display().to_string();
    let child = as_user(Command::new(bin.join("postgres")), owner)
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k", &file(""), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", "ssl=on", "-c", &format!("ssl_cert_file={}", file("server.pem"))])
        .args(["-c", &format!("ssl_key_file={}", file("server.key"))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
    Server { port, dir, child }
}

/// The newest installed server's binaries, e.g. /usr/lib/postgresql/15/bin.
fn postgres_bin_dir() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").expect("postgresql is installed");
    let newest = versions.filter_map(|v| v.ok()?.file_name().to_str()?.parse::<u32>().ok()).max().unwrap();
    Path::new("/usr/lib/postgresql").join(newest.to_string()).join("bin")
}

/// `command`, run as `user` (with that user's groups dropped to its primary one) when given.
fn as_user(mut command: Command, user: Option<&str>) -> Command {
    if let Some(user) = user {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let entry = passwd.lines().find(|l| l.starts_with(&format!("{user}:"))).expect("the user exists");
        let fields: Vec<&str> = entry.split(':').collect();
        command.uid(fields[2].parse().unwrap()).gid(fields[3].parse().unwrap());
    }
    command
}

fn as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spike-tls-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until something listens on `port`; a TLS server is ready for clients from then on.
async fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not listen on {port} within 60 s");
}
