//! `spawn_app()` and typed request helpers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::{Application, Mode};
use platform::Settings;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub struct TestApp {
    pub address: String,
    pub settings: Arc<Settings>,
    pub db: DatabaseConnection,
    pub services: service::Services,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    finished: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The settings every test starts from: `configs/test.toml` plus any `SPIKE__*` variables
/// of the environment (so CI can point at other servers), on a random port.
pub fn test_settings() -> Settings {
    let configs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let vars: HashMap<String, String> = std::env::vars().collect();
    let mut settings = Settings::load_with(Some(&configs), Some("test"), &vars).expect("test settings load");
    settings.http.addr = ([127, 0, 0, 1], 0).into();
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts an app with its own database, Redis prefix and RabbitMQ prefix; `customize`
/// may change any setting first.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    let name = unique_name();
    settings.database.url = SecretString::from(create_database(&settings, &name).await);
    settings.redis.prefix = format!("test:{name}");
    settings.amqp.prefix = format!("test.{name}");
    customize(&mut settings);
    start(Arc::new(settings), Mode::Serve).await
}

/// Starts another instance on the same database and prefixes (a second API node, a worker),
/// with its own changes to the settings.
pub async fn spawn_sibling(app: &TestApp, mode: Mode, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = (*app.settings).clone();
    settings.http.addr = ([127, 0, 0, 1], 0).into();
    customize(&mut settings);
    start(Arc::new(settings), mode).await
}

async fn start(settings: Arc<Settings>, mode: Mode) -> TestApp {
    // Kept for the whole process: dropping the guard would shut the trace exporter down.
    static TELEMETRY: OnceLock<platform::telemetry::TelemetryGuard> = OnceLock::new();
    if let Ok(guard) = platform::telemetry::init_for_tests(&settings.telemetry) {
        let _ = TELEMETRY.set(guard);
    }
    let deps = api::connect(settings.clone(), Duration::ZERO, "spike-test").await.expect("services reachable");
    let db = deps.db.clone();
    let app = Application::build(deps, mode).await.expect("app builds");
    let services = app.services().clone();
    let address = match app.port() {
        Some(port) => format!("http://127.0.0.1:{port}"),
        None => String::new(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let finished = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        settings,
        db,
        services,
        client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        stop: Some(stop),
        finished: Some(finished),
    }
}

impl TestApp {
    /// Stops the app as SIGTERM would and waits until it has shut down.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.finished.take().unwrap().await.unwrap()
    }
}

fn unique_name() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    format!("t{secs}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Creates and migrates a database for one test; on first use in a process, drops the test
/// databases that earlier runs left behind (older than an hour).
async fn create_database(settings: &Settings, name: &str) -> String {
    let admin_url = settings.database.url_for_database("postgres");
    let admin = Database::connect(&admin_url).await.expect("postgres reachable");
    static CLEANED: OnceLock<()> = OnceLock::new();
    if CLEANED.set(()).is_ok() {
        drop_stale_databases(&admin).await;
    }
    let db_name = format!("spike_{name}");
    admin.execute_unprepared(&format!("CREATE DATABASE {db_name}")).await.expect("create test database");
    admin.close().await.ok();
    let url = settings.database.url_for_database(&db_name);
    let db = Database::connect(&url).await.expect("test database reachable");
    migrations::up(&db).await.expect("migrations apply");
    db.close().await.ok();
    url
}

async fn drop_stale_databases(admin: &DatabaseConnection) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let rows = admin
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT datname FROM pg_database WHERE datname LIKE 'spike_t%'",
        ))
        .await
        .unwrap_or_default();
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "datname") else {
            continue;
        };
        let created = name.trim_start_matches("spike_t").split('_').next().and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|secs| now.saturating_sub(secs) > 3600) {
            let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

/// A response with its status, headers and parsed JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `data` of a success envelope, after checking the status and the envelope.
    pub fn data(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert_eq!(self.body["code"], 0, "{}", self.body);
        assert_eq!(self.body["message"], "OK", "{}", self.body);
        &self.body["data"]
    }

    /// Checks an error envelope: status, stable name, a non-zero code, a request id that
    /// matches the header, and (when given) the field it blames.
    pub fn error(&self, status: u16, name: &str, field: Option<&str>) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert_eq!(self.body["error"], name, "{}", self.body);
        assert!(self.body["code"].as_i64().unwrap_or(0) > 0, "{}", self.body);
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.body);
        let request_id = self.headers.get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id");
        assert_eq!(self.body["request_id"], request_id);
        if let Some(field) = field {
            assert_eq!(self.body["field"], field, "{}", self.body);
        }
        &self.body
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Reply {
        self.send_json(reqwest::Method::POST, path, body, token).await
    }

    pub async fn send_json(&self, method: reqwest::Method, path: &str, body: Value, token: Option<&str>) -> Reply {
        let mut request = self.client.request(method, self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    /// Posts raw bytes as JSON, for malformed bodies.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let request = self.client.post(self.url(path)).header("content-type", "application/json").body(body);
        self.send(request).await
    }

    pub async fn register(&self, email: &str, password: &str) -> Reply {
        self.post("/api/v1/auth/register", json!({"email": email, "password": password}), None).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post("/api/v1/auth/login", json!({"email": email, "password": password}), None).await
    }

    /// Registers a fresh shopper and returns (access token, refresh token, user id).
    pub async fn shopper(&self) -> Session {
        let email = format!("shopper-{}@example.com", uuid::Uuid::new_v4().simple());
        let user_id = self.register(&email, "correct horse").await.data(201)["id"].as_str().unwrap().to_owned();
        let tokens = self.login(&email, "correct horse").await;
        Session::from_login(tokens.data(200), user_id, email)
    }

    /// Creates an admin through the service (as `spike-server admin create` does) and logs in.
    pub async fn admin(&self) -> Session {
        let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
        let (user, _) = self.services.auth.create_admin(&email, "admin password").await.unwrap();
        let tokens = self.login(&email, "admin password").await;
        Session::from_login(tokens.data(200), user.id.to_string(), email)
    }
}

pub struct Session {
    pub access: String,
    pub refresh: String,
    pub user_id: String,
    pub email: String,
}

impl Session {
    fn from_login(data: &Value, user_id: String, email: String) -> Self {
        Self {
            access: data["access_token"].as_str().unwrap().to_owned(),
            refresh: data["refresh_token"].as_str().unwrap().to_owned(),
            user_id,
            email,
        }
    }

    pub fn token(&self) -> Option<&str> {
        Some(&self.access)
    }
}

/// The JWT secret of the test settings, for forging tokens in attack tests.
pub fn jwt_secret(app: &TestApp) -> String {
    app.settings.jwt.secret.expose_secret().to_owned()
}

impl TestApp {
    /// An admin creates a product; returns its id.
    pub async fn product(&self, admin: &Session, price: &str, stock: i64) -> String {
        let body =
            json!({"title": format!("Product {}", uuid::Uuid::new_v4().simple()), "price": price, "stock": stock});
        let reply = self.post("/api/v1/products", body, admin.token()).await;
        reply.data(201)["id"].as_str().unwrap().to_owned()
    }

    pub async fn stock_of(&self, product_id: &str) -> i64 {
        self.get(&format!("/api/v1/products/{product_id}"), None).await.data(200)["stock"].as_i64().unwrap()
    }

    pub async fn order(&self, session: &Session, lines: &[(&str, i64)]) -> Reply {
        let items: Vec<Value> = lines.iter().map(|(id, q)| json!({"product_id": id, "quantity": q})).collect();
        self.post("/api/v1/orders", json!({ "items": items }), session.token()).await
    }

    /// Polls `check` every 100 ms until it is true or `secs` have passed.
    pub async fn eventually<F, Fut>(&self, secs: u64, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not within {secs}s: {what}");
    }

    pub async fn order_status(&self, session: &Session, order_id: &str) -> String {
        let reply = self.get(&format!("/api/v1/orders/{order_id}"), session.token()).await;
        reply.data(200)["status"].as_str().unwrap().to_owned()
    }

    /// One number from SQL, e.g. `SELECT count(*) FROM outbox`.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql.to_owned()))
            .await
            .unwrap()
            .expect("one row");
        row.try_get_by_index::<i64>(0).unwrap()
    }
}

/// The value of one exact series on /metrics, e.g.
/// `amqp_consumed_total{queue="order.close",outcome="ack"}`; 0 while it was never recorded.
/// The recorder is per process and nextest runs every test in a process of its own, so a
/// count is this test's count.
pub fn metric(series: &str) -> f64 {
    let text = platform::metrics::handle().render();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

/// Waits until the series has reached `at_least`: the event a test waits on instead of
/// sleeping (a consumed message, a published row).
pub async fn wait_for_metric(series: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(series) < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 30s: {series} >= {at_least}; it is {}",
            metric(series)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An API-only node with nothing consuming behind it: the app that declared the topology
/// has stopped, so messages wait in their queues and bids in their streams until a test
/// starts a worker.
pub async fn spawn_api_only() -> TestApp {
    let first = spawn_app().await;
    let api = spawn_sibling(&first, Mode::Api, |_| {}).await;
    first.shutdown().await.unwrap();
    api
}
