//! The binary as an operator meets it: clear one-line errors, never a panic trace.

use std::process::Command;

fn spike(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spike-server"));
    command.args(args).env("SPIKE_ENV", "test").env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_key() {
    let (ok, _, stderr) = spike(&["migrate", "status"], &[("SPIKE__HTTP__ADDR", "not-an-address")]);
    assert!(!ok);
    assert!(stderr.contains("invalid configuration: http.addr"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unreachable_database_is_named_without_credentials() {
    let (ok, _, stderr) = spike(
        &["migrate", "status"],
        &[
            ("SPIKE__DATABASE__URL", "postgres://app:hunter2@127.0.0.1:1/spike"),
            ("SPIKE__DATABASE__CONNECT_TIMEOUT_SECS", "1"),
            ("SPIKE__DATABASE__ACQUIRE_TIMEOUT_SECS", "1"),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("cannot reach postgres at 127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_lists_the_commands_of_the_spec() {
    let (ok, stdout, _) = spike(&["--help"], &[]);
    assert!(ok);
    let commands: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let expected = ["serve", "api", "worker", "migrate", "admin", "seed", "tokens", "verify", "bots", "dlq", "help"];
    assert_eq!(commands, expected, "in:\n{stdout}");
}

/// A database of its own for one test, dropped at the end.
struct TestDatabase {
    name: String,
}

impl TestDatabase {
    fn create() -> Self {
        let name = format!("spike_cli_{}", uuid::Uuid::now_v7().simple());
        let status = Command::new("createdb").args(["-h", "127.0.0.1", "-U", "postgres", &name]).status().unwrap();
        assert!(status.success(), "createdb {name}");
        Self { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    fn sql(&self, statement: &str) {
        let status =
            Command::new("psql").args(["-q", "-v", "ON_ERROR_STOP=1", &self.url(), "-c", statement]).status().unwrap();
        assert!(status.success(), "{statement}");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new("dropdb").args(["-h", "127.0.0.1", "-U", "postgres", "--force", &self.name]).status();
    }
}

#[test]
fn seed_tokens_verify_and_dlq_work_with_honest_exit_codes() {
    let database = TestDatabase::create();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let (url, redis_prefix, amqp_prefix) = (database.url(), format!("test:cli{tag}"), format!("test.cli{tag}"));
    let env = [
        ("SPIKE__DATABASE__URL", url.as_str()),
        ("SPIKE__REDIS__PREFIX", redis_prefix.as_str()),
        ("SPIKE__AMQP__PREFIX", amqp_prefix.as_str()),
    ];
    let run = |args: &[&str]| spike(args, &env);

    let (ok, stdout, stderr) = run(&["migrate", "up"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("migrations applied"), "{stdout}");

    let (ok, _, stderr) = run(&["seed"]);
    assert!(!ok, "seed without --demo refuses");
    assert!(stderr.contains("--demo"), "{stderr}");
    let (ok, stdout, stderr) = run(&["seed", "--demo"]);
    assert!(ok, "{stderr}");
    let id_of = |what: &str| -> String {
        let line = stdout.lines().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("no {what} in {stdout}"));
        let id = line.split_whitespace().nth(1).unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{line}");
        id
    };
    let (sale, auction) = (id_of("sale"), id_of("auction"));

    let tokens = std::env::temp_dir().join(format!("spike-cli-tokens-{tag}"));
    let (ok, stdout, stderr) = run(&["tokens", "--count", "3", "--out", tokens.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("3 shoppers created"), "{stdout}");
    let written = std::fs::read_to_string(&tokens).unwrap();
    std::fs::remove_file(&tokens).unwrap();
    assert_eq!(written.lines().count(), 3);
    assert!(written.lines().all(|token| token.split('.').count() == 3), "JWTs: {written}");

    let (ok, stdout, stderr) = run(&["verify", "--sale", &sale, "--auction", &auction]);
    assert!(ok, "a fresh seed passes: {stdout}{stderr}");
    let (ok, _, stderr) = run(&["verify"]);
    assert!(!ok);
    assert!(stderr.contains("--sale"), "{stderr}");
    let (ok, _, stderr) = run(&["verify", "--sale", &uuid::Uuid::now_v7().to_string()]);
    assert!(!ok, "an unknown sale is an error");
    assert!(!stderr.contains("panicked"), "{stderr}");

    database.sql(&format!("UPDATE sales SET stock_left = stock_left - 1 WHERE id = '{sale}'"));
    let (ok, stdout, _) = run(&["verify", "--sale", &sale]);
    assert!(!ok, "a violated invariant exits non-zero");
    assert!(stdout.contains("INVARIANTS VIOLATED"), "{stdout}");

    let (ok, stdout, stderr) = run(&["dlq", "list", "--queue", "order.close"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("0 dead letter(s) shown"), "{stdout}");
    let (ok, _, stderr) = run(&["dlq", "list", "--queue", "no.such.queue"]);
    assert!(!ok);
    assert!(stderr.contains("no.such.queue"), "{stderr}");
}

#[tokio::test]
async fn redriving_dead_letters_logs_no_error() {
    let prefix = format!("test.cli.{}", uuid::Uuid::now_v7().simple());
    let env = [("SPIKE__AMQP__PREFIX", prefix.as_str()), ("SPIKE__AMQP__QUEUE_EXPIRES_MS", "120000")];
    let configs = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let settings = platform::Settings::load_with(Some(&configs), Some("test"), &vars).unwrap();
    let broker = std::sync::Arc::new(platform::Broker::connect(&settings.amqp, "spike-cli-test").await.unwrap());
    let topology = repo::mq::Topology::new(&prefix, 120_000, settings.amqp.retry_delays_ms.clone());
    let channel = broker.channel().await.unwrap();
    topology.declare(&channel).await.unwrap();
    channel.close(200, "declared".into()).await.unwrap();
    let publisher = repo::mq::ConfirmPublisher::new(broker.clone(), std::time::Duration::from_secs(5));
    let dead = repo::mq::Message {
        routing_key: topology.dead_letters(repo::mq::topology::ORDER_CLOSE),
        body: br#"{"order_ids":[]}"#.to_vec(),
        mandatory: true,
        ..Default::default()
    };
    publisher.publish_all(&[dead]).await.unwrap();
    publisher.close().await;
    broker.close().await;

    let (ok, stdout, stderr) = spike(&["dlq", "redrive", "--queue", "order.close"], &env);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("re-drove 1 message(s)"), "{stdout}");
    assert!(!stderr.contains("ERROR"), "an expected end logged an error:\n{stderr}");
}
