use secrecy::{ExposeSecret, SecretString};

use crate::helpers::{metric, spawn_app, spawn_app_with};
use crate::proxy::TcpProxy;

#[tokio::test]
async fn healthz_answers_in_the_envelope() {
    let app = spawn_app().await;
    let reply = app.get("/healthz", None).await;
    assert_eq!(reply.data(200)["status"], "alive");
}

#[tokio::test]
async fn readyz_is_ok_when_all_three_services_answer() {
    let app = spawn_app().await;
    let data = app.get("/readyz", None).await.data(200).clone();
    assert_eq!(data["postgres"], "ok");
    assert_eq!(data["redis"], "ok");
    assert_eq!(data["rabbitmq"], "ok");
}

#[tokio::test]
async fn readyz_names_the_service_that_stopped_answering() {
    let postgres = TcpProxy::start("127.0.0.1:5432").await;
    let rabbit = TcpProxy::start("127.0.0.1:5672").await;
    let redis = TcpProxy::start("127.0.0.1:6379").await;
    let app = spawn_app_with(|s| {
        let database = s.database.url.expose_secret().replace("127.0.0.1:5432", &postgres.addr.to_string());
        s.database.url = SecretString::from(database);
        s.amqp.url = SecretString::from(format!("amqp://guest:guest@{}/%2f", rabbit.addr));
        s.redis.url = SecretString::from(format!("redis://{}", redis.addr));
    })
    .await;
    assert_eq!(app.get("/readyz", None).await.status, 200);

    // One service at a time, the others answering: the 503 names exactly that one.
    for (name, proxy) in [("rabbitmq", &rabbit), ("redis", &redis), ("postgres", &postgres)] {
        proxy.cut();
        let reply = app.get("/readyz", None).await;
        let body = reply.error(503, "SERVICE_UNAVAILABLE", None);
        assert!(body["message"].as_str().unwrap().contains(name), "{body}");
        for other in ["postgres", "redis", "rabbitmq"] {
            if other == name {
                assert_ne!(body["details"][other], "ok", "{body}");
            } else {
                assert_eq!(body["details"][other], "ok", "{body}");
                assert!(!body["message"].as_str().unwrap().contains(other), "{body}");
            }
        }
        proxy.restore();
        app.eventually(30, &format!("readyz recovers once {name} answers again"), || async {
            app.get("/readyz", None).await.status == 200
        })
        .await;
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    let healthz = r#"http_requests_total{method="GET",route="/healthz",status="200"}"#;
    let refused = r#"http_requests_total{method="GET",route="/api/v1/users/me",status="401"}"#;
    let (healthz_before, refused_before) = (metric(healthz), metric(refused));
    app.get("/healthz", None).await;
    app.get("/healthz", None).await;
    app.get("/api/v1/users/me", None).await;
    let reply = app.get("/metrics", None).await;
    assert_eq!(reply.status, 200);
    let text = reply.body.as_str().unwrap().to_owned();
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|line| line.starts_with(&format!("{series} "))).unwrap_or_else(|| {
            panic!("{series} missing from:\n{text}");
        });
        line[series.len()..].trim().parse().unwrap()
    };
    assert_eq!(value(healthz) - healthz_before, 2.0, "{text}");
    assert_eq!(value(refused) - refused_before, 1.0, "{text}");
    let durations = r#"http_request_duration_seconds_count{method="GET",route="/healthz",status="200"}"#;
    assert!(value(durations) >= 2.0, "{text}");
    assert!(value("db_pool_max_connections") >= 1.0, "{text}");
}

#[tokio::test]
async fn swagger_ui_and_the_spec_are_served_with_a_bearer_scheme() {
    let app = spawn_app().await;
    let docs = app.get("/docs", None).await;
    assert_eq!(docs.status, 200);
    assert!(docs.body.as_str().unwrap().to_lowercase().contains("swagger"));
    let spec = app.get("/openapi.json", None).await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.body["components"]["securitySchemes"]["BearerAuth"]["scheme"], "bearer");
    assert!(spec.body["paths"]["/users/me"]["get"]["security"].is_array());
    assert_eq!(spec.body["servers"][0]["url"], "/api/v1");
}

#[tokio::test]
async fn shutdown_stops_serving_and_returns() {
    let app = spawn_app().await;
    let url = app.url("/healthz");
    assert_eq!(app.get("/healthz", None).await.status, 200);
    let client = app.client.clone();
    app.shutdown().await.expect("clean shutdown");
    assert!(client.get(url).send().await.is_err(), "the port is closed after shutdown");
}

#[tokio::test]
async fn an_unreachable_dependency_fails_start_up_with_its_name() {
    let mut settings = crate::helpers::test_settings();
    settings.database.url = SecretString::from("postgres://postgres@127.0.0.1:1/spike".to_owned());
    settings.database.connect_timeout_secs = 1;
    settings.database.acquire_timeout_secs = 1;
    let err = api::connect(std::sync::Arc::new(settings), std::time::Duration::ZERO, "t")
        .await
        .err()
        .expect("postgres on port 1 is unreachable");
    let message = err.to_string();
    assert!(message.starts_with("cannot reach postgres at 127.0.0.1:1"), "{message}");
}

#[tokio::test]
async fn a_worker_serves_its_probes_and_metrics_only() {
    let app = spawn_app().await;
    let worker = crate::helpers::spawn_sibling(&app, api::Mode::Worker, |_| {}).await;
    assert_eq!(worker.get("/readyz", None).await.data(200)["rabbitmq"], "ok");
    assert_eq!(worker.get("/metrics", None).await.status, 200);
    assert_eq!(worker.get("/api/v1/products", None).await.status, 404);
}
