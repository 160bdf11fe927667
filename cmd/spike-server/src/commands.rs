//! What each command does, in a few lines each: the work happens in `internal`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::{Application, Mode};
use migrations::{Migrator, MigratorTrait};
use platform::config::AppEnv;
use platform::{Broker, Settings, connect};
use repo::mq::Topology;
use repo::mq::topology::ROUTES;

use crate::cli::{AdminAction, Cli, Command, DlqAction, MigrateAction};
use crate::{bots, setup};

/// `serve`, `api` and `worker` wait this long for the services to come up (a compose stack
/// starts them together); the other commands fail at once.
const STARTUP_WAIT: Duration = Duration::from_secs(60);

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Arc::new(Settings::load()?);
    let _telemetry = platform::telemetry::init(&settings.telemetry)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings, Mode::Serve).await?,
        Command::Api => serve(settings, Mode::Api).await?,
        Command::Worker => serve(settings, Mode::Worker).await?,
        Command::Migrate { action } => migrate(&settings, action).await?,
        Command::Admin { action: AdminAction::Create { email, password } } => {
            create_admin(&settings, &email, &password).await?
        }
        Command::Dlq { action } => dead_letters(&settings, action).await?,
        Command::Seed { demo, reset } => seed(settings, demo, reset).await?,
        Command::Tokens { count, out, ttl_secs } => tokens(&settings, count, &out, ttl_secs).await?,
        Command::Verify { sale, auction } => return verify(settings, sale, auction).await,
        Command::Bots { auction, bidders, secs, proxy_share, url } => {
            let url = url.unwrap_or_else(|| local_url(settings.http.addr));
            let robots = bots::Robots { bidders, secs, proxy_share };
            return bots::run(settings, auction, robots, &url).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn seed(settings: Arc<Settings>, demo: bool, reset: bool) -> anyhow::Result<()> {
    if !demo && !reset {
        anyhow::bail!("nothing to seed: pass --demo for demo data, --reset for a clean slate, or both");
    }
    if reset && matches!(settings.app.env, AppEnv::Prod | AppEnv::Staging) {
        let env = format!("{:?}", settings.app.env).to_lowercase();
        anyhow::bail!("refusing to wipe the data of {env}: --reset is for a laptop or a demo");
    }
    let services = setup::services(settings).await?;
    if reset {
        Migrator::fresh(&services.deps.db).await.context("recreating the database")?;
        let forgotten = service::seed::forget_hot_state(&services).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "clean slate: database recreated, {} redis key(s) deleted, {} queued message(s) dropped",
            forgotten.redis_keys, forgotten.messages
        );
    }
    if demo {
        services.declare_topology().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let seeded = service::seed::demo(&services).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("product {}", seeded.product_id);
        println!("sale    {}", describe(seeded.sale));
        println!("auction {}", describe(seeded.auction));
    }
    Ok(())
}

/// "<id> (new, ends 16:40 UTC)": the id first, so scripts can take the second word.
fn describe(demo: service::seed::Demo) -> String {
    let how = if demo.created { "new" } else { "reused" };
    format!("{} ({how}, ends {} UTC)", demo.id, demo.end_at.format("%H:%M"))
}

async fn tokens(settings: &Settings, count: usize, out: &std::path::Path, ttl_secs: u64) -> anyhow::Result<()> {
    if count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let auth = setup::auth(settings).await?;
    let started = std::time::Instant::now();
    let tokens =
        auth.create_shoppers(count, Duration::from_secs(ttl_secs)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut text = tokens.join("\n");
    text.push('\n');
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    println!("{count} shoppers created in {:.1}s; tokens in {}", started.elapsed().as_secs_f32(), out.display());
    Ok(())
}

async fn verify(
    settings: Arc<Settings>,
    sale: Option<uuid::Uuid>,
    auction: Option<uuid::Uuid>,
) -> anyhow::Result<ExitCode> {
    if sale.is_none() && auction.is_none() {
        anyhow::bail!("say what to verify: --sale ID and/or --auction ID");
    }
    let services = setup::services(settings).await?;
    let deps = &services.deps;
    let mut passed = true;
    if let Some(sale) = sale {
        let report = service::verify::sale(&deps.db, &deps.redis, &deps.keys(), sale)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{report}");
        passed &= report.passed();
    }
    if let Some(auction) = auction {
        let report = service::verify::auction(&deps.db, &deps.redis, &deps.keys(), auction)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{report}");
        passed &= report.passed();
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn serve(settings: Arc<Settings>, mode: Mode) -> anyhow::Result<()> {
    let deps = api::connect(settings, STARTUP_WAIT, &format!("spike-{mode:?}").to_lowercase()).await?;
    if mode == Mode::Serve {
        migrations::up(&deps.db).await.context("applying migrations")?;
    }
    let app = Application::build(deps, mode).await?;
    app.run(shutdown_signal()).await
}

async fn migrate(settings: &Settings, action: MigrateAction) -> anyhow::Result<()> {
    let db = connect::postgres(&settings.database).await?;
    match action {
        MigrateAction::Up => {
            migrations::up(&db).await?;
            println!("migrations applied");
        }
        MigrateAction::Down => {
            Migrator::down(&db, Some(1)).await?;
            println!("rolled back the latest migration");
        }
        MigrateAction::Fresh { force } => {
            if settings.app.env == AppEnv::Prod && !force {
                anyhow::bail!("refusing to drop every table in prod; add --force if you mean it");
            }
            Migrator::fresh(&db).await?;
            println!("database recreated");
        }
        MigrateAction::Status => {
            for migration in Migrator::get_migration_with_status(&db).await? {
                println!("{:<10} {}", format!("{:?}", migration.status()).to_lowercase(), migration.name());
            }
        }
    }
    Ok(())
}

async fn create_admin(settings: &Settings, email: &str, password: &str) -> anyhow::Result<()> {
    let auth = setup::auth(settings).await?;
    let (user, created) = auth.create_admin(email, password).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if created {
        println!("created admin {} ({})", user.email, user.id);
    } else {
        println!("promoted {} ({}) to admin; the password was left unchanged", user.email, user.id);
    }
    Ok(())
}

async fn dead_letters(settings: &Settings, action: DlqAction) -> anyhow::Result<()> {
    let queue = match &action {
        DlqAction::List { queue, .. } | DlqAction::Redrive { queue } => queue.as_str(),
    };
    if queue == OUTBOX {
        return parked_outbox_rows(settings, action).await;
    }
    let route = Topology::route_named(queue).ok_or_else(|| {
        let known: Vec<&str> = ROUTES.iter().map(|r| r.queue).chain([OUTBOX]).collect();
        anyhow::anyhow!("unknown queue `{queue}`; one of: {}", known.join(", "))
    })?;
    let broker = Arc::new(Broker::connect(&settings.amqp, "spike-dlq").await?);
    let amqp = &settings.amqp;
    let topology = Topology::new(&amqp.prefix, amqp.queue_expires_ms, amqp.retry_delays_ms.clone())
        .with_queue_type(amqp.queue_type);
    let timeout = Duration::from_millis(amqp.confirm_timeout_ms.get());
    match action {
        DlqAction::List { limit, .. } => {
            let letters = service::dead_letters::list(&broker, &topology, route, limit).await?;
            println!("{} dead letter(s) shown from {}", letters.len(), topology.dead_letters(route));
            for letter in letters {
                println!("- after {} attempt(s): {}\n  {}", letter.attempts, letter.error, letter.body);
            }
        }
        DlqAction::Redrive { .. } => {
            let moved = service::dead_letters::redrive(broker.clone(), &topology, route, timeout).await?;
            println!("re-drove {moved} message(s) to {}", topology.queue(route));
        }
    }
    broker.close().await;
    Ok(())
}

/// The name `dlq` takes for the outbox rows the relay parked.
const OUTBOX: &str = "outbox";

async fn parked_outbox_rows(settings: &Settings, action: DlqAction) -> anyhow::Result<()> {
    let db = connect::postgres(&settings.database).await?;
    match action {
        DlqAction::List { limit, .. } => {
            let letters = service::dead_letters::list_outbox(&db, limit as u64).await?;
            println!("{} parked outbox row(s) shown", letters.len());
            for letter in letters {
                println!("- after {} attempt(s): {}\n  {}", letter.attempts, letter.error, letter.body);
            }
        }
        DlqAction::Redrive { .. } => {
            let moved = service::dead_letters::redrive_outbox(&db).await?;
            println!("{moved} parked outbox row(s) are due again");
        }
    }
    db.close().await.ok();
    Ok(())
}

/// The address a server with these settings answers on, seen from this machine (a server
/// listening on every interface is reached through loopback).
fn local_url(addr: std::net::SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (docker stop, Kubernetes).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
