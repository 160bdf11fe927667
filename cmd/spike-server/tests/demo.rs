//! The demo as a newcomer meets it: `seed --demo` run again and again, `seed --reset`, and
//! the robots against a server that throttles them and one that does not. Each test has its
//! own database, Redis prefix and RabbitMQ prefix; the commands run as the real binary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::{Application, Mode};
use platform::Settings;
use sea_orm::{ConnectionTrait, Database};

/// A database and prefixes of its own, described as the `SPIKE__*` variables that both the
/// in-process server and the binary read.
struct Sandbox {
    env: Vec<(String, String)>,
    db_name: String,
}

impl Sandbox {
    async fn new(extra: &[(&str, &str)]) -> Self {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        // `spike_t<secs>_...`: the API tests' clean-up drops such databases once an hour old.
        // Not dropped here: DROP DATABASE waits for a checkpoint, which takes a minute on a
        // busy machine.
        let name = format!("t{secs}_demo{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let db_name = format!("spike_{name}");
        let admin_url = settings(&[]).database.url_for_database("postgres");
        let admin = Database::connect(&admin_url).await.expect("postgres reachable");
        admin.execute_unprepared(&format!("CREATE DATABASE {db_name}")).await.expect("create database");
        admin.close().await.ok();
        let url = settings(&[]).database.url_for_database(&db_name);
        let mut env = vec![
            ("SPIKE__DATABASE__URL".to_owned(), url),
            ("SPIKE__REDIS__PREFIX".to_owned(), format!("test:{name}")),
            ("SPIKE__AMQP__PREFIX".to_owned(), format!("test.{name}")),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let sandbox = Self { env, db_name };
        let (ok, _, stderr) = sandbox.spike(&["migrate", "up"]);
        assert!(ok, "{stderr}");
        sandbox
    }

    fn settings(&self) -> Settings {
        let pairs: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        settings(&pairs)
    }

    fn spike(&self, args: &[&str]) -> (bool, String, String) {
        spike(&self.env, args)
    }

    async fn count(&self, table: &str) -> i64 {
        let db = Database::connect(&self.settings().database.url_for_database(&self.db_name)).await.unwrap();
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("SELECT count(*) AS n FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        db.close().await.ok();
        row.try_get::<i64>("", "n").unwrap()
    }

    /// A server in this process on a free port, as `serve` would run it.
    async fn serve(&self) -> (String, tokio::sync::oneshot::Sender<()>) {
        let deps = api::connect(Arc::new(self.settings()), Duration::ZERO, "spike-demo-test").await.unwrap();
        let app = Application::build(deps, Mode::Serve).await.unwrap();
        let address = format!("http://127.0.0.1:{}", app.port().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        (address, stop)
    }
}

/// Runs the binary with these `SPIKE__*` variables: (success, stdout, stderr).
fn spike(env: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spike-server"));
    command.args(args).env("SPIKE_ENV", "test").env_remove("RUST_LOG").envs(env.iter().cloned());
    let output = command.output().expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `configs/test.toml` plus these variables, on a free port.
fn settings(vars: &[(&str, &str)]) -> Settings {
    let configs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    vars.insert("SPIKE__HTTP__ADDR".into(), "127.0.0.1:0".into());
    Settings::load_with(Some(&configs), Some("test"), &vars).expect("settings load")
}

/// The id after `label` in `seed --demo`'s output ("sale    <id> (new, ends ...)").
fn id_of(stdout: &str, label: &str) -> String {
    let line = stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} in:\n{stdout}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn seeding_twice_keeps_one_demo_sale_and_one_demo_auction_and_reset_starts_over() {
    let sandbox = Sandbox::new(&[]).await;

    let (ok, first, stderr) = sandbox.spike(&["seed", "--demo"]);
    assert!(ok, "{stderr}");
    let (ok, second, stderr) = sandbox.spike(&["seed", "--demo"]);
    assert!(ok, "{stderr}");
    assert_eq!(id_of(&first, "sale"), id_of(&second, "sale"), "{first}\n{second}");
    assert_eq!(id_of(&first, "auction"), id_of(&second, "auction"), "{first}\n{second}");
    assert!(second.contains("(reused, ends"), "{second}");
    assert_eq!(sandbox.count("products").await, 1);
    assert_eq!(sandbox.count("sales").await, 1);
    assert_eq!(sandbox.count("auctions").await, 1);

    let (ok, fresh, stderr) = sandbox.spike(&["seed", "--reset", "--demo"]);
    assert!(ok, "{stderr}");
    assert!(fresh.contains("clean slate: database recreated"), "{fresh}");
    assert_ne!(id_of(&first, "sale"), id_of(&fresh, "sale"), "{fresh}");
    assert!(fresh.contains("(new, ends"), "{fresh}");
    assert_eq!(sandbox.count("sales").await, 1);
    assert_eq!(sandbox.count("auctions").await, 1);
}

#[test]
fn seed_without_a_choice_says_what_to_pass() {
    let (ok, _, stderr) = spike(&[], &["seed"]);
    assert!(!ok);
    assert!(stderr.contains("pass --demo for demo data, --reset for a clean slate"), "{stderr}");
}

// Multi-threaded: the server runs on the runtime's workers while the test thread waits
// for the robots' process.
#[tokio::test(flavor = "multi_thread")]
async fn robots_against_a_throttling_server_count_the_429s_and_fail_saying_why() {
    // One request per second per IP: every bid right after its read is refused.
    let sandbox = Sandbox::new(&[
        ("SPIKE__RATE_LIMIT__ENABLED", "true"),
        ("SPIKE__RATE_LIMIT__IP_PER_SEC", "1"),
        ("SPIKE__RATE_LIMIT__IP_BURST", "1"),
    ])
    .await;
    let (ok, seeded, stderr) = sandbox.spike(&["seed", "--demo"]);
    assert!(ok, "{stderr}");
    let (address, stop) = sandbox.serve().await;

    let auction = id_of(&seeded, "auction");
    let (ok, stdout, stderr) =
        sandbox.spike(&["bots", "--auction", &auction, "--bidders", "2", "--secs", "3", "--url", &address]);

    assert!(!ok, "a throttled run must fail:\n{stdout}\n{stderr}");
    let counted_429s: u64 = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("bid 429") || l.trim_start().starts_with("read 429"))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(counted_429s > 0, "no 429 counted:\n{stdout}");
    assert!(stdout.contains("throttled (429)"), "the progress line shows the 429s:\n{stdout}");
    assert!(stdout.contains("Most bids were throttled") || stdout.contains("No bid was sent"), "no verdict:\n{stdout}");
    assert!(stdout.contains("SPIKE__RATE_LIMIT__ENABLED=false"), "{stdout}");

    let _ = stop.send(());
}

// Multi-threaded: the server runs on the runtime's workers while the test thread waits
// for the robots' process.
#[tokio::test(flavor = "multi_thread")]
async fn robots_against_an_open_server_pass_and_every_bid_is_verified() {
    let sandbox = Sandbox::new(&[]).await;
    let (ok, seeded, stderr) = sandbox.spike(&["seed", "--demo"]);
    assert!(ok, "{stderr}");
    let (address, stop) = sandbox.serve().await;

    let auction = id_of(&seeded, "auction");
    let (ok, stdout, stderr) =
        sandbox.spike(&["bots", "--auction", &auction, "--bidders", "2", "--secs", "2", "--url", &address]);

    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("bid 201")), "no accepted bid:\n{stdout}");
    assert!(stdout.contains("all invariants hold"), "{stdout}");
    assert!(!stdout.contains("Most bids were throttled"), "{stdout}");

    let _ = stop.send(());
}
