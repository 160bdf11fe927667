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
