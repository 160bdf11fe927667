//! The RabbitMQ connection, shared by every publisher and consumer of a process.
//!
//! Channel strategy: one AMQP connection per process; every consumer and every publisher
//! task opens its own long-lived channel from it (lapin channels are cheap, and a channel
//! per task keeps publisher-confirm sequences and prefetch windows independent). When the
//! connection dies, the next `channel()` call reconnects; the tasks that lost their channel
//! ask for a new one with a backoff.

use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Channel, Connection, ConnectionProperties, DefaultConnectionBuilder};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::config::{AmqpSettings, TlsSettings};
use crate::connect::{Unreachable, address_of, use_ring_for_tls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Broker {
    url: SecretString,
    name: String,
    tls: OwnedTLSConfig,
    connection: Mutex<Option<Connection>>,
}

impl Broker {
    /// Connects once, so that start-up fails fast with a clear message when RabbitMQ is
    /// unreachable. `name` shows up in the management UI's connection list.
    pub async fn connect(settings: &AmqpSettings, name: &str) -> Result<Self, Unreachable> {
        use_ring_for_tls();
        let mut broker = Self {
            url: settings.url.clone(),
            name: name.to_owned(),
            tls: OwnedTLSConfig::default(),
            connection: Mutex::new(None),
        };
        broker.tls =
            tls_config(&settings.tls).map_err(|err| broker.unreachable(format!("reading amqp.tls files: {err}")))?;
        let channel = broker.channel().await.map_err(|err| broker.unreachable(err))?;
        let _ = channel.close(200, "start-up check".into()).await;
        Ok(broker)
    }

    pub fn unreachable(&self, err: impl std::fmt::Display) -> Unreachable {
        Unreachable { service: "rabbitmq", address: address_of(self.url.expose_secret()), detail: err.to_string() }
    }

    /// A fresh channel on the current connection, reconnecting first if it was lost.
    ///
    /// Every step is bounded: a connection cut half-way can still look connected and
    /// never answer, and whoever waits here holds the lock every other task needs. A
    /// connection that cannot open a channel in time is dropped, so the next call
    /// reconnects.
    pub async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut connection = self.connection.lock().await;
        if let Some(current) = connection.as_ref()
            && current.status().connected()
        {
            let opened = bounded("opening a channel", current.create_channel()).await;
            if opened.is_err() {
                *connection = None;
            }
            return opened;
        }
        let properties = ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let builder = DefaultConnectionBuilder::new()?
            .with_uri_str(self.url.expose_secret().to_owned())
            .with_properties(properties)
            .with_tls_config(self.tls.clone());
        let fresh = bounded("connecting", builder.connect()).await?;
        let channel = bounded("opening a channel", fresh.create_channel()).await?;
        *connection = Some(fresh);
        Ok(channel)
    }

    /// Closes the connection (on shutdown); in-flight confirms are answered first by the
    /// broker's close handshake. Bounded like every other step: a stalled broker never
    /// answers the close, and a task stuck in [`Broker::channel`] holds the lock; after
    /// [`CONNECT_TIMEOUT`] the connection is simply dropped and the broker requeues what it
    /// had not seen acknowledged.
    pub async fn close(&self) {
        let closed = tokio::time::timeout(CONNECT_TIMEOUT, async {
            if let Some(connection) = self.connection.lock().await.take() {
                let _ = connection.close(200, "shutting down".into()).await;
            }
        })
        .await;
        if closed.is_err() {
            tracing::warn!("rabbitmq did not answer the close within {CONNECT_TIMEOUT:?}; dropping the connection");
        }
    }
}

/// The CA and client certificate for `amqps://`. The CA is trusted on top of the system's
/// roots.
fn tls_config(tls: &TlsSettings) -> std::io::Result<OwnedTLSConfig> {
    let cert_chain = tls.ca_pem()?.map(|pem| String::from_utf8_lossy(&pem).into_owned());
    let identity = tls.client_pem()?.map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key });
    Ok(OwnedTLSConfig { identity, cert_chain })
}

/// `step`, or a timed-out error after [`CONNECT_TIMEOUT`].
async fn bounded<T>(step: &str, work: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, lapin::Error> {
    tokio::time::timeout(CONNECT_TIMEOUT, work).await.map_err(|_| {
        let message = format!("{step} timed out after {CONNECT_TIMEOUT:?}");
        lapin::Error::from(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
    })?
}
