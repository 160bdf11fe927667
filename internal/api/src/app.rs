//! Wiring: connect to the services, build the routes, run the HTTP server and the
//! background workers, and shut everything down in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use platform::{Broker, Settings, Unreachable, connect};
use poem::endpoint::make_sync;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::web::Html;
use poem::{Endpoint, EndpointExt, Route, Server, get};
use poem_openapi::OpenApiService;
use service::{Deps, Services};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthContext;
use crate::middleware::{self, HttpPolicy};
use crate::rate_limit::Limits;
use crate::routes::{
    auctions::{AuctionsApi, KeepAlive},
    auth::AuthApi,
    catalog::CatalogApi,
    health,
    orders::OrdersApi,
    page,
    sales::SalesApi,
    users::UsersApi,
};
use crate::spec;

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
    fn api(self) -> bool {
        matches!(self, Mode::Serve | Mode::Api)
    }

    fn workers(self) -> bool {
        matches!(self, Mode::Serve | Mode::Worker)
    }
}

/// Connects to Postgres, Redis and RabbitMQ. With a non-zero `wait` each one is retried
/// with backoff until it answers or `wait` runs out.
pub async fn connect(settings: Arc<Settings>, wait: Duration, name: &str) -> Result<Deps, Unreachable> {
    let db = connect::with_retry(wait, || connect::postgres(&settings.database)).await?;
    let (redis_client, redis) = connect::with_retry(wait, || connect::redis(&settings.redis)).await?;
    let broker = connect::with_retry(wait, || Broker::connect(&settings.amqp, name)).await?;
    Ok(Deps { settings, db, redis_client, redis, broker: Arc::new(broker) })
}

/// How long shutdown waits for a dependency to answer a close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Application {
    services: Services,
    mode: Mode,
    acceptor: TcpAcceptor,
    limits: Arc<Limits>,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and wires the services.
    pub async fn build(deps: Deps, mode: Mode) -> anyhow::Result<Self> {
        let settings = deps.settings.clone();
        // Install the Prometheus recorder before the first request records anything.
        let _ = platform::metrics::handle();
        let services = Services::new(deps)?;
        services.declare_topology().await.context("declaring the RabbitMQ topology")?;
        // A worker listens too, for its probes and /metrics.
        let addr = settings.http.addr;
        let acceptor = TcpListener::bind(addr)
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {addr} (http.addr)"))?;
        let limits = Arc::new(Limits::new(&settings.rate_limit));
        Ok(Self { services, mode, acceptor, limits })
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The port the HTTP server listens on.
    pub fn port(&self) -> Option<u16> {
        self.acceptor.local_addr().first()?.as_socket_addr().map(|addr| addr.port())
    }

    /// Runs until `shutdown` resolves, then stops accepting, gives in-flight requests
    /// `http.shutdown_grace_secs` to finish, stops the workers and closes the connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let settings = self.services.deps.settings.clone();
        let stop = CancellationToken::new();
        let grace = Duration::from_secs(settings.http.shutdown_grace_secs);
        self.limits.spawn_sweeper(Duration::from_secs(settings.rate_limit.idle_secs.get()), stop.clone());

        if self.mode.api() {
            self.services.spawn_listeners(stop.clone());
        }
        let workers =
            if self.mode.workers() { Some(service::worker::spawn(&self.services, stop.clone())) } else { None };

        tracing::info!(addr = ?self.acceptor.local_addr(), mode = ?self.mode, "serving HTTP");
        let server = Server::new_with_acceptor(self.acceptor);
        let served = if self.mode.api() {
            let app = routes(&self.services, self.limits.clone());
            server.run_with_graceful_shutdown(app, shutdown, Some(grace)).await
        } else {
            server.run_with_graceful_shutdown(probes(&self.services), shutdown, Some(grace)).await
        };
        served.context("HTTP server failed")?;

        tracing::info!("shutting down");
        stop.cancel();
        if let Some(workers) = workers {
            workers.join(grace).await;
        }
        // Both closes are bounded and run side by side. A stalled Postgres never answers,
        // and a request the server stopped waiting for may still hold a connection: the pool
        // gets a few seconds, then is dropped.
        let deps = &self.services.deps;
        let db = async {
            if tokio::time::timeout(CLOSE_TIMEOUT, deps.db.clone().close()).await.is_err() {
                tracing::warn!("postgres connections did not close within {CLOSE_TIMEOUT:?}; dropping them");
            }
        };
        tokio::join!(deps.broker.close(), db);
        Ok(())
    }
}

/// What a worker serves: `/healthz`, `/readyz` and `/metrics`, nothing else.
pub fn probes(services: &Services) -> impl Endpoint + use<> {
    let probes = Route::new()
        .at("/healthz", get(health::healthz))
        .at("/readyz", get(health::readyz))
        .at("/metrics", get(health::metrics))
        .data(Arc::new(services.clone()));
    probes.around(|ep, mut req| async move {
        req.set_data(middleware::RequestId(uuid::Uuid::now_v7().to_string()));
        ep.call(req).await.map(poem::IntoResponse::into_response)
    })
}

/// The whole HTTP surface: `/api/v1` (OpenAPI), `/openapi.json`, `/docs`, probes and
/// `/metrics`, all behind the middleware pipeline.
pub fn routes(services: &Services, limits: Arc<Limits>) -> impl Endpoint + use<> {
    let settings = &services.deps.settings;
    let api = OpenApiService::new(
        (
            AuthApi { auth: services.auth.clone() },
            UsersApi { auth: services.auth.clone() },
            CatalogApi { catalog: services.catalog.clone() },
            OrdersApi { orders: services.orders.clone() },
            SalesApi { sales: services.sales.clone() },
            AuctionsApi {
                auctions: services.auctions.clone(),
                closer: services.auction_closer.clone(),
                orders: services.orders.clone(),
                live: services.live.clone(),
                keep_alive: KeepAlive {
                    ping: Duration::from_millis(settings.http.ws_ping_ms.get()),
                    idle: Duration::from_millis(settings.http.ws_idle_ms.get()),
                },
            },
        ),
        "Spike",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Flash sales and live auctions. Errors use the envelope described in docs/errors.md.")
    .server("/api/v1");
    let raw_spec = api.spec();
    let spec = spec::complete(&raw_spec);
    // Swagger UI embeds the document it shows; it shows the completed one.
    let docs_html = api.swagger_ui_html().replacen(&raw_spec, &spec, 1);
    let docs = Route::new().at("/", get(make_sync(move |_| Html(docs_html.clone()))));
    let spec = make_sync(move |_| {
        poem::Response::builder().content_type("application/json; charset=utf-8").body(spec.clone())
    });
    let auth_context = Arc::new(AuthContext { jwt: services.auth.jwt().clone(), limits: limits.clone() });
    let policy = HttpPolicy {
        limits,
        sold_out: services.sales.flags().clone(),
        timeout: Duration::from_millis(settings.http.request_timeout_ms.get()),
        body_limit: settings.http.body_limit_bytes.get(),
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
        .at("/", get(page::index))
        .at("/static/app.js", get(page::script))
        .at("/static/style.css", get(page::style))
        .data(auth_context)
        .data(Arc::new(services.clone()));
    middleware::wrap(routes, policy)
}
