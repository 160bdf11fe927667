//! `spike-server`: the one binary. Parses the command line, loads the settings, starts
//! telemetry and hands over to the `internal` crates; everything else lives there.

mod bots;
mod cli;
mod commands;
mod setup;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: a request allocates many small objects, and in
/// the benchmark's profile glibc's malloc and free were a sixth of the server's time.
/// Built with `no_thp`: otherwise it asks for transparent huge pages, and every 2 MiB
/// region it touches becomes resident (peak RSS 139–142 MB instead of 161 MB for api + worker
/// in `scripts/bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(commands::run(cli));
    // Whatever is still running (a task stuck on a stalled dependency, a blocking thread)
    // must not keep the process alive once `run` has returned.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line: "cannot reach postgres at
            // 127.0.0.1:5432: ...", never a panic trace.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
