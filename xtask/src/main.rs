//! `cargo xtask <command>`: the project's own tooling.
//!
//! - `test`: installs the third-party test peers that are missing (Debian packages, a Python
//!   venv, npm packages), then runs every test of the workspace, unit and end-to-end.
//! - `lint`: `cargo fmt --check` and `cargo clippy -D warnings`.
//! - `bench`: performance figures (see `bench.rs`).
//! - `peers`: only installs the peers.

mod bench;
mod peers;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("test") => peers::install(&root).and_then(|dir| test(&root, &dir, &args[1..])),
        Some("peers") => peers::install(&root).map(|dir| {
            println!("peers ready in {}", dir.display());
        }),
        Some("lint") => lint(&root),
        Some("bench") => peers::install(&root).and_then(|dir| bench::run(&root, &dir, &args[1..])),
        _ => {
            eprintln!("usage: cargo xtask <test|lint|bench|peers> [args passed to cargo test]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

pub fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed: {status}"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test(root: &Path, peers: &Path, extra: &[String]) -> Result<(), String> {
    // Tests find the peers through PEERS_DIR, and fail (never skip) when one is missing.
    run(cargo()
        .current_dir(root)
        .env("PEERS_DIR", peers)
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .args(extra))
}

fn lint(root: &Path) -> Result<(), String> {
    run(cargo().current_dir(root).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
