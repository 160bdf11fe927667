//! Connection builders for Postgres and Redis, with a clear "cannot reach X" error and an
//! optional wait-and-retry for processes that start before their dependencies. TLS settings
//! (`*.tls.ca_file`, client certificates) are applied here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use secrecy::ExposeSecret;

use crate::config::{DatabaseSettings, RedisMode, RedisSettings, TlsSettings};
use crate::redis_conn::{Redis, RedisClient};

/// A dependency that did not answer. The message names the service and its host, never
/// the credentials in its URL.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {service} at {address}: {detail}")]
pub struct Unreachable {
    pub service: &'static str,
    pub address: String,
    pub detail: String,
}

/// `host:port` of a URL, without scheme, credentials, path or query.
pub fn address_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// How a lost or refused connection is retried: after 250 ms, then twice as long each time,
/// at most 5 s apart.
pub fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
}

/// Runs `attempt` until it succeeds or `wait` has passed, logging each retry. With a zero
/// `wait` it tries once: commands fail fast, `serve` waits for a compose stack to come up.
pub async fn with_retry<T, F, Fut>(wait: Duration, mut attempt: F) -> Result<T, Unreachable>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Unreachable>>,
{
    if wait.is_zero() {
        return attempt().await;
    }
    (|| attempt())
        .retry(backoff().with_total_delay(Some(wait)))
        .notify(|err: &Unreachable, next: Duration| {
            tracing::warn!("{err}; retrying in {:.1}s", next.as_secs_f32());
        })
        .await
}

pub async fn postgres(settings: &DatabaseSettings) -> Result<DatabaseConnection, Unreachable> {
    postgres_at(settings, settings.url.expose_secret()).await
}

/// Connects to `url` with the pool settings of `settings` (tests point it at their own
/// database).
pub async fn postgres_at(settings: &DatabaseSettings, url: &str) -> Result<DatabaseConnection, Unreachable> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(settings.max_connections.get())
        .min_connections(settings.min_connections)
        .connect_timeout(Duration::from_secs(settings.connect_timeout_secs))
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .sqlx_logging(false);
    let tls = settings.tls.clone();
    options.map_sqlx_postgres_opts(move |mut options| {
        if let Some(ca) = &tls.ca_file {
            options = options.ssl_root_cert(ca);
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
            options = options.ssl_client_cert(cert).ssl_client_key(key);
        }
        options
    });
    Database::connect(options).await.map_err(|err| Unreachable {
        service: "postgres",
        address: address_of(url),
        detail: err.to_string(),
    })
}

/// The client subscriptions are opened from, and the multiplexed connection every request
/// shares. Retries are kept short, so that a Redis outage surfaces as a quick 503 instead of
/// a hung request.
pub async fn redis(settings: &RedisSettings) -> Result<(RedisClient, Redis), Unreachable> {
    use_ring_for_tls();
    match settings.mode {
        RedisMode::Single => redis_single(settings).await,
        RedisMode::Cluster => redis_cluster(settings).await,
    }
}

async fn redis_single(settings: &RedisSettings) -> Result<(RedisClient, Redis), Unreachable> {
    let url = settings.url.expose_secret();
    let unreachable = |err: redis::RedisError| redis_unreachable(settings, err.to_string());
    let client = if settings.tls.is_empty() {
        redis::Client::open(url)
    } else {
        let certificates = redis_certificates(&settings.tls)
            .map_err(|err| redis_unreachable(settings, format!("reading redis.tls files: {err}")))?;
        redis::Client::build_with_tls(url, certificates)
    }
    .map_err(unreachable)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(settings.response_timeout_ms)));
    let manager = ConnectionManager::new_with_config(client.clone(), config).await.map_err(unreachable)?;
    Ok((RedisClient::Single(Box::new(client)), Redis::Single(manager)))
}

/// A Redis Cluster from its seed nodes. A command whose master is failing over is retried
/// (quickly at first, at most 500 ms apart) until `response_timeout_ms` is up, then
/// answered 503: a replica is usually promoted within the cluster's node timeout plus a
/// second, and a request should not hang longer than that.
async fn redis_cluster(settings: &RedisSettings) -> Result<(RedisClient, Redis), Unreachable> {
    let certificates = if settings.tls.is_empty() {
        None
    } else {
        let read = redis_certificates(&settings.tls)
            .map_err(|err| redis_unreachable(settings, format!("reading redis.tls files: {err}")))?;
        Some(read)
    };
    let nodes: Vec<String> = settings.urls().into_iter().map(str::to_owned).collect();
    let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
    let response_timeout = Duration::from_millis(settings.response_timeout_ms);
    let builder = move || {
        let builder = ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout)
            .overall_response_timeout(Some(response_timeout))
            .retries(6)
            .min_retry_wait(20)
            .max_retry_wait(500);
        match &certificates {
            Some(certificates) => builder.certs(certificates.clone()),
            None => builder,
        }
    };
    let unreachable = |err: redis::RedisError| redis_unreachable(settings, err.to_string());
    let client = builder().build().map_err(unreachable)?;
    let conn = client.get_async_connection().await.map_err(unreachable)?;
    Ok((RedisClient::Cluster(Arc::new(builder)), Redis::Cluster(conn)))
}

/// Every node's `host:port`, never the credentials in the URLs.
fn redis_unreachable(settings: &RedisSettings, detail: String) -> Unreachable {
    let address = settings.urls().into_iter().map(address_of).collect::<Vec<_>>().join(",");
    Unreachable { service: "redis", address, detail }
}

fn redis_certificates(tls: &TlsSettings) -> std::io::Result<redis::TlsCertificates> {
    let client_tls =
        tls.client_pem()?.map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key });
    Ok(redis::TlsCertificates { client_tls, root_cert: tls.ca_pem()? })
}

/// Makes ring rustls' process-wide provider. Every TLS stack here is built on ring, but a
/// crate that enabled a second provider would make rustls refuse to pick one by itself.
pub(crate) fn use_ring_for_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_never_show_credentials() {
        assert_eq!(address_of("postgres://app:pw@db:5432/spike?x=1"), "db:5432");
        assert_eq!(address_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "127.0.0.1:5672");
        assert_eq!(address_of("redis://127.0.0.1:6379"), "127.0.0.1:6379");
    }
}
