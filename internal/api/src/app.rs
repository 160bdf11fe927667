//! Wiring: connect to the services, build the routes, run the HTTP server and the
//! background workers, and shut everything down in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use platform::{Broker, Settings, Unreachable, connect};
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::{Endpoint, EndpointExt, Route, Server, get};
use poem_openapi::OpenApiService;
use service::{Deps, Services};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthContext;
use crate::middleware::{self, HttpPolicy};
use crate::rate_limit::Limits;
use crate::routes::{auth::AuthApi, health, users::UsersApi};

/// Which parts of Spike a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP API and background workers.
    Serve,
    /// Only the HTTP API.
    Api,
    /// Only consumers, relays and schedulers.
    Worker,
}

impl Mode {
    fn http(self) -> bool {
        matches!(self, Mode::Serve | Mode::Api)
    }

    fn workers(self) -> bool {
        matches!(self, Mode::Serve | Mode::Worker)
    }
}

/// Connects to Postgres, Redis and RabbitMQ. With a non-zero `wait` each one is retried
/// with backoff until it answers or `wait` runs out.
pub async fn connect(
    settings: Arc<Settings>,
    wait: Duration,
    name: &str,
) -> Result<Deps, Unreachable> {
    let db = connect::with_retry(wait, || connect::postgres(&settings.database)).await?;
    let (redis_client, redis) =
        connect::with_retry(wait, || connect::redis(&settings.redis)).await?;
    let broker = connect::with_retry(wait, || Broker::connect(&settings.amqp, name)).await?;
    Ok(Deps {
        settings,
        db,
        redis_client,
        redis,
        broker: Arc::new(broker),
    })
}

pub struct Application {
    services: Services,
    mode: Mode,
    acceptor: Option<TcpAcceptor>,
    limits: Arc<Limits>,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and wires the services.
    pub async fn build(deps: Deps, mode: Mode) -> anyhow::Result<Self> {
        let settings = deps.settings.clone();
        // Install the Prometheus recorder before the first request records anything.
        let _ = platform::metrics::handle();
        let services = Services::new(deps)?;
        let acceptor = if mode.http() {
            let addr = settings.http.socket_addr();
            let acceptor = TcpListener::bind(addr)
                .into_acceptor()
                .await
                .with_context(|| format!("cannot listen on {addr} (http.addr)"))?;
            Some(acceptor)
        } else {
            None
        };
        let limits = Arc::new(Limits::new(&settings.rate_limit));
        Ok(Self {
            services,
            mode,
            acceptor,
            limits,
        })
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The port the HTTP server listens on, if this mode serves HTTP.
    pub fn port(&self) -> Option<u16> {
        let acceptor = self.acceptor.as_ref()?;
        acceptor
            .local_addr()
            .first()?
            .as_socket_addr()
            .map(|addr| addr.port())
    }

    /// Runs until `shutdown` resolves, then stops accepting, gives in-flight requests
    /// `http.shutdown_grace_secs` to finish, stops the workers and closes the connections.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let settings = self.services.deps.settings.clone();
        let stop = CancellationToken::new();
        let grace = Duration::from_secs(settings.http.shutdown_grace_secs);
        self.limits.spawn_sweeper(
            Duration::from_secs(settings.rate_limit.idle_secs.max(1)),
            stop.clone(),
        );

        let workers = if self.mode.workers() {
            Some(service::worker::spawn(&self.services, stop.clone()))
        } else {
            None
        };

        match self.acceptor {
            Some(acceptor) => {
                let app = routes(&self.services, self.limits.clone());
                tracing::info!(addr = ?acceptor.local_addr(), mode = ?self.mode, "serving HTTP");
                Server::new_with_acceptor(acceptor)
                    .run_with_graceful_shutdown(app, shutdown, Some(grace))
                    .await
                    .context("HTTP server failed")?;
            }
            None => {
                tracing::info!(mode = ?self.mode, "running workers");
                shutdown.await;
            }
        }

        tracing::info!("shutting down");
        stop.cancel();
        if let Some(workers) = workers {
            workers.join(grace).await;
        }
        self.services.deps.broker.close().await;
        self.services.deps.db.clone().close().await.ok();
        Ok(())
    }
}

/// The whole HTTP surface: `/api/v1` (OpenAPI), `/openapi.json`, `/docs`, probes and
/// `/metrics`, all behind the middleware pipeline.
pub fn routes(services: &Services, limits: Arc<Limits>) -> impl Endpoint + use<> {
    let settings = &services.deps.settings;
    let api = OpenApiService::new(
        (
            AuthApi {
                auth: services.auth.clone(),
            },
            UsersApi {
                auth: services.auth.clone(),
            },
        ),
        "Spike",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Flash sales and live auctions. Errors use the envelope described in docs/errors.md.",
    )
    .server("/api/v1");
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let auth_context = Arc::new(AuthContext {
        jwt: services.auth.jwt().clone(),
        limits: limits.clone(),
    });
    let policy = HttpPolicy {
        limits,
        timeout: Duration::from_millis(settings.http.request_timeout_ms),
        body_limit: settings.http.body_limit_bytes,
        cors_origins: settings.http.cors_origins.clone(),
        trust_forwarded_for: settings.http.trust_forwarded_for,
    };
    let routes = Route::new()
        .nest("/api/v1", api)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .at("/healthz", get(health::healthz))
        .at("/readyz", get(health::readyz))
        .at("/metrics", get(health::metrics))
        .data(auth_context)
        .data(services.clone());
    middleware::wrap(routes, policy)
}
