//! Settings: `configs/default.toml` -> `configs/$SPIKE_ENV.toml` -> `SPIKE__SECTION__KEY`.
//!
//! The defaults are compiled into the binary, so `spike-server` runs from any directory;
//! files on disk and the environment override them. Everything is checked once here and
//! a bad value stops start-up with a message naming its key. Secrets are `SecretString`s,
//! so printing the settings (`{:?}`) shows `[REDACTED]` instead of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../../../configs/default.toml");

/// The development JWT secret from `default.toml`; every environment but `dev` and `test`
/// refuses to start with it.
const DEV_JWT_SECRET: &str = "dev-only-secret-change-me-0123456789abcdef";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("invalid configuration: {0}")]
    Load(config::ConfigError),
}

impl From<config::ConfigError> for ConfigError {
    /// A value its type refuses (`http.addr = "nowhere"`, a zero where zero makes no
    /// sense) reads like the checks in `validate`: `invalid configuration: <key>: <why>`.
    fn from(err: config::ConfigError) -> Self {
        match err {
            config::ConfigError::At { error, origin, key: Some(key) } => match *error {
                config::ConfigError::Message(message) if message.contains("expected a nonzero") => {
                    invalid(&key, "must be greater than 0")
                }
                config::ConfigError::Message(message) => invalid(&key, message),
                error => ConfigError::Load(config::ConfigError::At { error: Box::new(error), origin, key: Some(key) }),
            },
            other => ConfigError::Load(other),
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message: message.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub app: AppSettings,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub amqp: AmqpSettings,
    pub jwt: JwtSettings,
    pub argon2: Argon2Settings,
    pub rate_limit: RateLimitSettings,
    pub orders: OrderSettings,
    pub cache: CacheSettings,
    pub sales: SaleSettings,
    pub auctions: AuctionSettings,
    pub idempotency: IdempotencySettings,
    pub outbox: OutboxSettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub env: AppEnv,
}

/// Where a process runs; `prod` is stricter about secrets and destructive commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AppEnv {
    Dev,
    Test,
    Staging,
    Prod,
}

impl TryFrom<String> for AppEnv {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        use AppEnv::*;
        one_of(&name, &[("dev", Dev), ("test", Test), ("staging", Staging), ("prod", Prod)])
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    pub request_timeout_ms: NonZeroU64,
    pub body_limit_bytes: NonZeroUsize,
    pub cors_origins: Vec<String>,
    pub shutdown_grace_secs: u64,
    pub trust_forwarded_for: bool,
    /// A WebSocket watcher gets a ping this often ...
    pub ws_ping_ms: NonZeroU64,
    /// ... and is dropped when nothing (not even a pong) came from it for this long.
    pub ws_idle_ms: NonZeroU64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: NonZeroU32,
    pub min_connections: u32,
    pub connect_timeout_secs: u64,
    pub acquire_timeout_secs: u64,
    #[serde(default)]
    pub tls: TlsSettings,
}

impl DatabaseSettings {
    /// The URL with the database name swapped, e.g. to create a test database.
    pub fn url_for_database(&self, name: &str) -> String {
        let url = self.url.expose_secret();
        let (url, query) = url.split_once('?').map_or((url, None), |(u, q)| (u, Some(q)));
        let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
        match query {
            Some(query) => format!("{base}/{name}?{query}"),
            None => format!("{base}/{name}"),
        }
    }

    pub fn database_name(&self) -> &str {
        let url = self.url.expose_secret();
        let tail = url.rsplit_once('/').map_or("", |(_, name)| name);
        tail.split('?').next().unwrap_or(tail)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// One server, or in `cluster` mode a comma-separated list of seed nodes.
    pub url: SecretString,
    pub mode: RedisMode,
    pub prefix: String,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    #[serde(default)]
    pub tls: TlsSettings,
}

impl RedisSettings {
    /// The URLs in `url`: one in `single` mode, the seed nodes in `cluster` mode.
    pub fn urls(&self) -> Vec<&str> {
        self.url.expose_secret().split(',').map(str::trim).filter(|url| !url.is_empty()).collect()
    }
}

/// How Spike talks to Redis: one server (or a primary behind a proxy), or a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RedisMode {
    Single,
    Cluster,
}

impl TryFrom<String> for RedisMode {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        one_of(&name, &[("single", RedisMode::Single), ("cluster", RedisMode::Cluster)])
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: SecretString,
    pub prefix: String,
    pub prefetch: NonZeroU16,
    /// Unacknowledged deliveries per order consumer; all that have arrived go into one
    /// transaction per sale.
    pub order_prefetch: NonZeroU16,
    pub confirm_timeout_ms: NonZeroU64,
    pub publishers: NonZeroUsize,
    pub max_batch: NonZeroUsize,
    /// Reservation messages a publisher channel may have waiting for their confirms at once.
    pub confirms_in_flight: NonZeroUsize,
    pub retry_delays_ms: Vec<u64>,
    pub queue_expires_ms: u64,
    /// The type of the consumer and dead-letter queues; TTL queues are always classic.
    pub queue_type: QueueType,
    #[serde(default)]
    pub tls: TlsSettings,
}

/// `classic`: one broker node holds each queue. `quorum`: replicated over the broker
/// cluster by Raft (RabbitMQ 3.8+; at-least-once dead-lettering needs 3.10+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl TryFrom<String> for QueueType {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        one_of(&name, &[("classic", QueueType::Classic), ("quorum", QueueType::Quorum)])
    }
}

/// PEM files for a TLS connection (`sslmode=verify-full`, `rediss://`, `amqps://`): the CA
/// that signed the server's certificate, for a private CA the system does not trust, and a
/// client certificate with its key, for servers that ask for one. All optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl TlsSettings {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none()
    }

    /// The CA file's contents, if one is set.
    pub fn ca_pem(&self) -> std::io::Result<Option<Vec<u8>>> {
        self.ca_file.as_ref().map(std::fs::read).transpose()
    }

    /// The client certificate and key files' contents, if they are set.
    pub fn client_pem(&self) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Ok(Some((std::fs::read(cert)?, std::fs::read(key)?))),
            _ => Ok(None),
        }
    }

    /// Each file must hold what its name says, and the URL must actually use TLS: a CA file
    /// next to a plain-text URL would be ignored without a word.
    fn validate(&self, section: &str, url_uses_tls: bool, needs: &str) -> Result<(), ConfigError> {
        let files = [
            ("ca_file", &self.ca_file, "CERTIFICATE-----"),
            ("client_cert_file", &self.client_cert_file, "CERTIFICATE-----"),
            ("client_key_file", &self.client_key_file, "PRIVATE KEY-----"),
        ];
        for (name, path, marker) in files {
            let Some(path) = path else { continue };
            let key = format!("{section}.tls.{name}");
            let text = std::fs::read_to_string(path)
                .map_err(|err| invalid(&key, format!("cannot read {}: {err}", path.display())))?;
            if !text.contains(marker) {
                return Err(invalid(
                    &key,
                    format!("{} holds no PEM `{}`", path.display(), marker.trim_end_matches('-')),
                ));
            }
            if !url_uses_tls {
                return Err(invalid(&key, format!("is set, but {section}.url would not use it: it needs {needs}")));
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(invalid(
                &format!("{section}.tls.client_key_file"),
                "client_cert_file and client_key_file go together",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    pub secret: SecretString,
    pub issuer: String,
    pub access_ttl_secs: NonZeroU64,
    pub refresh_ttl_secs: NonZeroU64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: NonZeroU32,
    pub parallelism: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub ip_per_sec: NonZeroU32,
    pub ip_burst: NonZeroU32,
    pub user_per_sec: NonZeroU32,
    pub user_burst: NonZeroU32,
    pub idle_secs: NonZeroU64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSettings {
    pub payment_timeout_secs: NonZeroU32,
    pub sweep_interval_secs: NonZeroU64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub product_ttl_secs: NonZeroU64,
    pub product_ttl_jitter_secs: u64,
    pub negative_ttl_secs: NonZeroU64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleSettings {
    pub sold_out_flag_ms: u64,
    pub reservation_status_ttl_secs: NonZeroU64,
    /// How long a reservation may stay unconfirmed by the broker before the worker's
    /// reaper undoes it (its API process died, or its Redis reply was lost).
    pub reservation_deadline_ms: NonZeroU64,
    /// How long purchases wait (503) for one rebuild barrier after Redis lost a sale's hot
    /// state; a barrier that has not passed by then is replaced by a new one.
    pub rebuild_barrier_timeout_ms: NonZeroU64,
    /// How often the sweeper puts back in Redis the units of closed or cancelled sale
    /// orders whose `sale.restock` message never arrived.
    pub restock_sweep_interval_secs: NonZeroU64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuctionSettings {
    pub bid_write_timeout_ms: NonZeroU64,
    pub sweep_interval_secs: NonZeroU64,
    /// How many times an unpaid winner's lot goes to the next bidder (0: never).
    pub second_chance_offers: u32,
}

/// At most this many second-chance offers: each one waits a whole payment timeout.
pub const MAX_SECOND_CHANCE_OFFERS: u32 = 10;

/// How long a purchase or a bid sent again with the same `Idempotency-Key` replays the
/// first answer. (Orders keep their keys in Postgres, for good.)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    pub ttl_secs: NonZeroU64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    pub poll_interval_ms: NonZeroU64,
    pub batch_size: NonZeroU64,
    pub retention_hours: u64,
    pub max_attempts: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
    pub otlp_endpoint: String,
    pub service_name: String,
    /// The share of new traces exported (0.0 to 1.0). A request or message that arrives
    /// with a trace context follows its caller's decision instead (parent-based).
    pub sample_ratio: f64,
    /// Adds each span's thread, source location and busy/idle times as attributes: useful
    /// when profiling, noise otherwise.
    pub span_details: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        one_of(&name, &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)])
    }
}

/// The choice called `name`, or "must be a, b or c".
fn one_of<T: Copy>(name: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, choice)) = choices.iter().find(|(known, _)| *known == name) {
        return Ok(*choice);
    }
    let names: Vec<&str> = choices.iter().map(|(known, _)| *known).collect();
    let (last, rest) = names.split_last().expect("at least one choice");
    Err(format!("must be {} or {last}", rest.join(", ")))
}

impl Settings {
    /// Loads the layers from the process environment: `SPIKE_ENV` picks the overlay file,
    /// `SPIKE_CONFIG_DIR` (default: the nearest `configs/` folder up from the current
    /// directory) says where the files are.
    pub fn load() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let dir = vars.get("SPIKE_CONFIG_DIR").map(PathBuf::from).or_else(find_config_dir);
        Self::load_with(dir.as_deref(), vars.get("SPIKE_ENV").map(String::as_str), &vars)
    }

    /// Loads the layers from explicit inputs; tests use this to stay independent of the
    /// process environment. `vars` may hold any variables: only `SPIKE__*` are read.
    pub fn load_with(
        config_dir: Option<&Path>,
        env_name: Option<&str>,
        vars: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(dir) = config_dir {
            builder = builder.add_source(File::from(dir.join("default.toml")).required(false));
        }
        if let Some(name) = env_name.filter(|n| !n.is_empty()) {
            let dir =
                config_dir.ok_or_else(|| invalid("SPIKE_ENV", format!("no configs/ folder found for `{name}`")))?;
            let path = dir.join(format!("{name}.toml"));
            if !path.exists() {
                return Err(invalid("SPIKE_ENV", format!("`{name}` has no file {}", path.display())));
            }
            builder = builder.add_source(File::from(path));
        }
        let env = Environment::with_prefix("SPIKE")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("http.cors_origins")
            .with_list_parse_key("amqp.retry_delays_ms")
            .source(Some(vars.clone().into_iter().collect()));
        // A value that does not fit its type (`http.addr = "nowhere"`, a zero where zero makes
        // no sense) is refused here, with a message that names its key.
        let settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The rules a type cannot say: addresses, prefixes, secrets, relations between keys.
    /// (Zeros where zero makes no sense are refused by the non-zero types.)
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, url, schemes) in [
            ("database.url", &self.database.url, &["postgres://", "postgresql://"][..]),
            ("redis.url", &self.redis.url, &["redis://", "rediss://"][..]),
            ("amqp.url", &self.amqp.url, &["amqp://", "amqps://"][..]),
        ] {
            if !schemes.iter().any(|s| url.expose_secret().starts_with(s)) {
                return Err(invalid(key, format!("must start with {}", schemes.join(" or "))));
            }
        }
        self.validate_redis_urls()?;
        self.database.tls.validate(
            "database",
            verifies_server(self.database.url.expose_secret()),
            "sslmode=verify-full",
        )?;
        self.redis.tls.validate("redis", self.redis.url.expose_secret().starts_with("rediss://"), "rediss://")?;
        self.amqp.tls.validate("amqp", self.amqp.url.expose_secret().starts_with("amqps://"), "amqps://")?;
        if self.database.min_connections > self.database.max_connections.get() {
            return Err(invalid("database.min_connections", "must not exceed max_connections"));
        }
        for (key, prefix) in [("redis.prefix", &self.redis.prefix), ("amqp.prefix", &self.amqp.prefix)] {
            let ok = !prefix.is_empty() && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
            if !ok {
                return Err(invalid(key, "must be non-empty: letters, digits, - _ . :"));
            }
        }
        if self.sales.reservation_deadline_ms.get() <= 2 * self.amqp.confirm_timeout_ms.get() + 1000 {
            // The longest a purchase waits for its confirm: a shorter deadline would undo
            // reservations whose confirm is merely slow.
            return Err(invalid("sales.reservation_deadline_ms", "must exceed 2 x amqp.confirm_timeout_ms + 1000"));
        }
        if self.jwt.secret.expose_secret().len() < 32 {
            return Err(invalid("jwt.secret", "must be at least 32 bytes"));
        }
        let shared = !matches!(self.app.env, AppEnv::Dev | AppEnv::Test);
        if shared && self.jwt.secret.expose_secret() == DEV_JWT_SECRET {
            return Err(invalid("jwt.secret", "is the development secret; set SPIKE__JWT__SECRET"));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(invalid("telemetry.sample_ratio", "must be between 0.0 and 1.0"));
        }
        if self.argon2.memory_kib < 8 * self.argon2.parallelism.get() {
            return Err(invalid("argon2.memory_kib", "must be at least 8 x parallelism"));
        }
        if self.auctions.second_chance_offers > MAX_SECOND_CHANCE_OFFERS {
            return Err(invalid(
                "auctions.second_chance_offers",
                format!("must be between 0 and {MAX_SECOND_CHANCE_OFFERS}"),
            ));
        }
        if self.amqp.retry_delays_ms.is_empty() {
            return Err(invalid("amqp.retry_delays_ms", "must list at least one delay"));
        }
        // A barrier must be able to wait out the confirms of purchases made before the loss
        // and make two rounds through the first retry queue before it is replaced.
        let barrier_needs = 2 * self.amqp.confirm_timeout_ms.get() + 1000 + 4 * self.amqp.retry_delays_ms[0];
        if self.sales.rebuild_barrier_timeout_ms.get() <= barrier_needs {
            return Err(invalid(
                "sales.rebuild_barrier_timeout_ms",
                format!("must exceed 2 x amqp.confirm_timeout_ms + 1000 + 4 x the first retry delay ({barrier_needs})"),
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// One URL in `single` mode; in `cluster` mode seed nodes that all speak the same
    /// protocol (TLS or not: one `redis.tls` applies to all of them).
    fn validate_redis_urls(&self) -> Result<(), ConfigError> {
        let urls = self.redis.urls();
        match self.redis.mode {
            RedisMode::Single if urls.len() != 1 => {
                Err(invalid("redis.url", "holds several URLs: list seed nodes only with redis.mode = \"cluster\""))
            }
            RedisMode::Cluster if urls.is_empty() => Err(invalid("redis.url", "must list at least one seed node")),
            _ => {
                let tls = urls[0].starts_with("rediss://");
                let schemes_ok = urls.iter().all(|u| u.starts_with(if tls { "rediss://" } else { "redis://" }));
                if schemes_ok {
                    Ok(())
                } else {
                    Err(invalid("redis.url", "every node must use the same scheme: all redis:// or all rediss://"))
                }
            }
        }
    }
}

/// Whether a Postgres URL checks the server's certificate (`sslmode=verify-ca|verify-full`):
/// with any weaker mode a CA file would not be used.
fn verifies_server(url: &str) -> bool {
    let query = url.split_once('?').map_or("", |(_, query)| query);
    query
        .split('&')
        .any(|pair| matches!(pair.split_once('='), Some(("sslmode" | "ssl-mode", "verify-ca" | "verify-full"))))
}

/// The nearest `configs/` folder holding a `default.toml`, from the current directory up.
fn find_config_dir() -> Option<PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join("configs");
        if candidate.join("default.toml").is_file() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
    }

    fn load(env_name: Option<&str>, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::load_with(Some(&dir()), env_name, &vars)
    }

    #[test]
    fn defaults_load_and_listen_on_8080() {
        let settings = load(None, &[]).unwrap();
        assert_eq!(settings.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.orders.payment_timeout_secs.get(), 900);
        assert!(settings.rate_limit.enabled);
    }

    #[test]
    fn env_file_then_variables_override_the_defaults() {
        let settings = load(
            Some("test"),
            &[
                ("SPIKE__HTTP__ADDR", "127.0.0.1:9000"),
                ("SPIKE__RATE_LIMIT__USER_PER_SEC", "7"),
                ("SPIKE__ORDERS__PAYMENT_TIMEOUT_SECS", "2"),
                ("SPIKE__HTTP__CORS_ORIGINS", "https://a.example,https://b.example"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(settings.app.env, AppEnv::Test);
        assert_eq!(settings.argon2.memory_kib, 1024);
        assert_eq!(settings.http.addr.to_string(), "127.0.0.1:9000");
        assert_eq!(settings.rate_limit.user_per_sec.get(), 7);
        assert_eq!(settings.orders.payment_timeout_secs.get(), 2);
        assert_eq!(settings.http.cors_origins, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = load(None, &[("SPIKE__HTTP__ADDR", "nowhere")]).unwrap_err();
        assert!(err.to_string().starts_with("invalid configuration: http.addr: "), "{err}");
        let err = load(None, &[("SPIKE__JWT__SECRET", "short")]).unwrap_err();
        assert!(err.to_string().contains("jwt.secret"), "{err}");
        let err = load(None, &[("SPIKE__DATABASE__MAX_CONNECTIONS", "lots")]).unwrap_err();
        assert!(err.to_string().contains("max_connections"), "{err}");
    }

    #[test]
    fn a_sample_ratio_outside_0_to_1_is_refused() {
        assert_eq!(load(None, &[]).unwrap().telemetry.sample_ratio, 1.0);
        let err = load(None, &[("SPIKE__TELEMETRY__SAMPLE_RATIO", "1.5")]).unwrap_err();
        assert_eq!(err.to_string(), "invalid configuration: telemetry.sample_ratio: must be between 0.0 and 1.0");
    }

    #[test]
    fn a_zero_where_zero_makes_no_sense_names_its_key() {
        for (var, key) in [
            ("SPIKE__AMQP__PREFETCH", "amqp.prefetch"),
            ("SPIKE__ORDERS__SWEEP_INTERVAL_SECS", "orders.sweep_interval_secs"),
            ("SPIKE__IDEMPOTENCY__TTL_SECS", "idempotency.ttl_secs"),
            ("SPIKE__AUCTIONS__SWEEP_INTERVAL_SECS", "auctions.sweep_interval_secs"),
            ("SPIKE__OUTBOX__MAX_ATTEMPTS", "outbox.max_attempts"),
        ] {
            let err = load(None, &[(var, "0")]).unwrap_err();
            assert_eq!(err.to_string(), format!("invalid configuration: {key}: must be greater than 0"));
        }
    }

    #[test]
    fn second_chance_offers_default_to_two_and_zero_turns_them_off() {
        assert_eq!(load(None, &[]).unwrap().auctions.second_chance_offers, 2);
        let off = load(None, &[("SPIKE__AUCTIONS__SECOND_CHANCE_OFFERS", "0")]).unwrap();
        assert_eq!(off.auctions.second_chance_offers, 0);
        let err = load(None, &[("SPIKE__AUCTIONS__SECOND_CHANCE_OFFERS", "11")]).unwrap_err();
        assert!(err.to_string().contains("auctions.second_chance_offers: must be between 0 and 10"), "{err}");
    }

    #[test]
    fn only_known_environments_and_log_formats_load() {
        let err = load(None, &[("SPIKE__APP__ENV", "production")]).unwrap_err();
        assert_eq!(err.to_string(), "invalid configuration: app.env: must be dev, test, staging or prod");
        let err = load(None, &[("SPIKE__TELEMETRY__LOG_FORMAT", "xml")]).unwrap_err();
        assert!(err.to_string().contains("telemetry.log_format"), "{err}");
        assert_eq!(
            load(Some("prod"), &[("SPIKE__JWT__SECRET", "a-real-secret-that-is-long-enough-123")])
                .unwrap()
                .telemetry
                .log_format,
            LogFormat::Json
        );
    }

    #[test]
    fn a_misspelt_key_is_refused() {
        let err = load(None, &[("SPIKE__HTTP__ADRESS", "127.0.0.1:1")]).unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn an_unknown_environment_is_refused() {
        let err = load(Some("qa"), &[]).unwrap_err();
        assert!(err.to_string().contains("SPIKE_ENV"), "{err}");
    }

    #[test]
    fn every_shared_environment_refuses_the_development_secret() {
        for env in ["staging", "prod"] {
            let err = load(Some(env), &[]).unwrap_err();
            assert!(err.to_string().contains("jwt.secret"), "{env}: {err}");
            let ok = load(Some(env), &[("SPIKE__JWT__SECRET", "a-real-secret-that-is-long-enough-123")]);
            assert!(ok.is_ok(), "{env}");
        }
        for env in ["dev", "test"] {
            assert!(load(Some(env), &[]).is_ok(), "{env}");
        }
    }

    /// A file in the temp folder, unique to this test run; removed when dropped.
    struct TempFile(String);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!("spike-config-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path.display().to_string())
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    #[test]
    fn tls_files_load_for_tls_urls() {
        let (ca, key) = (TempFile::new("ca.pem", PEM_CERT), TempFile::new("client.key", PEM_KEY));
        let (ca, key) = (&ca.0, &key.0);
        let settings = load(
            None,
            &[
                ("SPIKE__DATABASE__URL", "postgres://u@db:5432/spike?sslmode=verify-full"),
                ("SPIKE__DATABASE__TLS__CA_FILE", ca),
                ("SPIKE__REDIS__URL", "rediss://cache:6380"),
                ("SPIKE__REDIS__TLS__CA_FILE", ca),
                ("SPIKE__AMQP__URL", "amqps://u:p@mq:5671/%2f"),
                ("SPIKE__AMQP__TLS__CA_FILE", ca),
                ("SPIKE__AMQP__TLS__CLIENT_CERT_FILE", ca),
                ("SPIKE__AMQP__TLS__CLIENT_KEY_FILE", key),
            ],
        )
        .unwrap();
        assert_eq!(settings.amqp.tls.ca_pem().unwrap().unwrap(), PEM_CERT.as_bytes());
        assert_eq!(settings.amqp.tls.client_pem().unwrap().unwrap().1, PEM_KEY.as_bytes());
        assert!(settings.database.tls.client_pem().unwrap().is_none());
        assert!(load(None, &[]).unwrap().redis.tls.is_empty());
    }

    #[test]
    fn a_tls_file_next_to_a_plain_text_url_is_refused() {
        let ca = TempFile::new("plain-ca.pem", PEM_CERT);
        for (url_key, url, file_key) in [
            ("SPIKE__REDIS__URL", "redis://cache:6379", "SPIKE__REDIS__TLS__CA_FILE"),
            ("SPIKE__AMQP__URL", "amqp://u:p@mq:5672/%2f", "SPIKE__AMQP__TLS__CA_FILE"),
            ("SPIKE__DATABASE__URL", "postgres://u@db/spike?sslmode=require", "SPIKE__DATABASE__TLS__CA_FILE"),
        ] {
            let err = load(None, &[(url_key, url), (file_key, &ca.0)]).unwrap_err().to_string();
            let section = file_key.split("__").nth(1).unwrap().to_lowercase();
            assert!(err.contains(&format!("{section}.tls.ca_file")), "{err}");
        }
    }

    #[test]
    fn a_missing_or_wrong_tls_file_names_its_key() {
        let url = ("SPIKE__AMQP__URL", "amqps://u:p@mq:5671/%2f");
        let err = load(None, &[url, ("SPIKE__AMQP__TLS__CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
        assert!(err.to_string().contains("amqp.tls.ca_file"), "{err}");
        let key = TempFile::new("not-a-cert.pem", PEM_KEY);
        let err = load(None, &[url, ("SPIKE__AMQP__TLS__CA_FILE", &key.0)]).unwrap_err();
        assert!(err.to_string().contains("no PEM `CERTIFICATE`"), "{err}");
        let cert = TempFile::new("lonely-cert.pem", PEM_CERT);
        let err = load(None, &[url, ("SPIKE__AMQP__TLS__CLIENT_CERT_FILE", &cert.0)]).unwrap_err();
        assert!(err.to_string().contains("amqp.tls.client_key_file"), "{err}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let settings = load(None, &[("SPIKE__DATABASE__URL", "postgres://app:hunter2@db/spike")]).unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("dev-only-secret"));
        assert!(!shown.contains("guest:guest"));
    }

    #[test]
    fn cluster_mode_takes_a_list_of_seed_nodes() {
        let seeds = "redis://127.0.0.1:7001,redis://127.0.0.1:7002, redis://127.0.0.1:7003";
        let settings = load(None, &[("SPIKE__REDIS__MODE", "cluster"), ("SPIKE__REDIS__URL", seeds)]).unwrap();
        assert_eq!(settings.redis.mode, RedisMode::Cluster);
        assert_eq!(
            settings.redis.urls(),
            ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"]
        );
        assert_eq!(load(None, &[]).unwrap().redis.mode, RedisMode::Single);
    }

    #[test]
    fn redis_modes_and_seed_lists_are_checked() {
        let err = load(None, &[("SPIKE__AMQP__QUEUE_TYPE", "stream")]).unwrap_err();
        assert_eq!(err.to_string(), "invalid configuration: amqp.queue_type: must be classic or quorum");
        let settings = load(None, &[("SPIKE__AMQP__QUEUE_TYPE", "quorum")]).unwrap();
        assert_eq!(settings.amqp.queue_type, QueueType::Quorum);
        let err = load(None, &[("SPIKE__REDIS__MODE", "sentinel")]).unwrap_err();
        assert_eq!(err.to_string(), "invalid configuration: redis.mode: must be single or cluster");
        let two = "redis://a:7001,redis://b:7002";
        let err = load(None, &[("SPIKE__REDIS__URL", two)]).unwrap_err();
        assert!(err.to_string().contains("redis.url: holds several URLs"), "{err}");
        let mixed = "redis://a:7001,rediss://b:7002";
        let err = load(None, &[("SPIKE__REDIS__MODE", "cluster"), ("SPIKE__REDIS__URL", mixed)]).unwrap_err();
        assert!(err.to_string().contains("same scheme"), "{err}");
        let bad = "redis://a:7001,http://b:7002";
        let err = load(None, &[("SPIKE__REDIS__MODE", "cluster"), ("SPIKE__REDIS__URL", bad)]).unwrap_err();
        assert!(err.to_string().contains("redis.url"), "{err}");
    }

    #[test]
    fn database_urls_can_be_pointed_at_another_database() {
        let settings = load(None, &[("SPIKE__DATABASE__URL", "postgres://u@h:5432/spike?sslmode=disable")]).unwrap();
        assert_eq!(settings.database.database_name(), "spike");
        assert_eq!(settings.database.url_for_database("other"), "postgres://u@h:5432/other?sslmode=disable");
    }
}
