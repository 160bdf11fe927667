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
    for command in ["serve", "api", "worker", "migrate", "admin"] {
        assert!(stdout.contains(command), "{command} missing from:\n{stdout}");
    }
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
