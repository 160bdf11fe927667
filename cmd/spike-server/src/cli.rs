//! The command line: one binary, one subcommand per job (docs/runbook.md).

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "spike-server", version, about = "Flash sales and live auctions")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate, then run the HTTP API and the workers in one process (the default).
    Serve,
    /// Run only the HTTP API.
    Api,
    /// Run only the consumers, relays and schedulers.
    Worker,
    /// Manage the database schema.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Manage administrators.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Demo data: a product, an active flash sale and a live auction (reused while they have
    /// time left); prints their ids. `--reset` first wipes everything for a clean slate.
    Seed {
        /// Create (or reuse) the demo product, sale and auction.
        #[arg(long)]
        demo: bool,
        /// Drop every table and migrate again, delete this prefix's Redis keys and empty its
        /// queues (refused in staging and prod). Stop the server first.
        #[arg(long)]
        reset: bool,
    },
    /// Create N shopper accounts and write one access token per line (for k6 and wrk).
    Tokens {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Lifetime of the tokens; long enough for a load test.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
    /// Check the invariants of a sale and/or an auction; non-zero exit on a violation.
    Verify {
        #[arg(long)]
        sale: Option<uuid::Uuid>,
        #[arg(long)]
        auction: Option<uuid::Uuid>,
    },
    /// Bidding robots: N bidders outbid each other over HTTP, with live progress,
    /// then a summary and the invariant check.
    Bots {
        #[arg(long)]
        auction: uuid::Uuid,
        #[arg(long, default_value_t = 50)]
        bidders: usize,
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// The share of robots (0 to 1) that bid with a maximum (proxy bidding) rather than
        /// a plain amount.
        #[arg(long, default_value_t = 0.0)]
        proxy_share: f64,
        /// The server to bid against [default: http:// and the configured http.addr, e.g.
        /// http://127.0.0.1:8080].
        #[arg(long)]
        url: Option<String>,
    },
    /// Inspect and re-drive dead-lettered messages.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Show dead letters (they stay in the queue).
    List {
        /// The consumer queue: order.close, sale.reservations, sale.restock, auction.close; or
        /// outbox, for the rows the outbox relay parked.
        #[arg(long)]
        queue: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send the dead letters back to their consumer.
    Redrive {
        #[arg(long)]
        queue: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Roll back the latest migration.
    Down,
    /// Drop every table and apply all migrations again (refused in prod without --force).
    Fresh {
        #[arg(long)]
        force: bool,
    },
    /// List migrations and whether they are applied.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Create an admin, or promote an existing user to admin.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
    },
}
