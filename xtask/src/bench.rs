//! `cargo xtask bench`: performance figures, printed as a table.
//!
//! Protocol benchmarks are measured as ratios against a reference peer in the same run
//! (nginx-rtmp for RTMP fan-out) as the protocols land. The core fan-out figure needs no peer:
//! it is the ceiling every egress shares. The benchmarks are built in release mode.

use std::path::Path;
use std::process::Command;

pub fn run(root: &Path, peers: &Path, extra: &[String]) -> Result<(), String> {
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .env("PEERS_DIR", peers)
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "xtask",
                "--bin",
                "tidegate-bench",
                "--",
            ])
            .args(extra),
    )
}
