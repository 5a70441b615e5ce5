//! `cargo xtask <command>`: the project's own tooling.
//!
//! - `test`: installs the third-party test peers that are missing (Debian packages, a Python
//!   venv, npm packages), then runs every test of the workspace, unit and end-to-end.
//! - `lint`: `cargo fmt --check` and `cargo clippy -D warnings`.
//! - `bench`: performance figures (see `bench.rs`).
//! - `soak [--minutes N] [--debug]`: N minutes (default 60) of churn against one server, with
//!   a table of its RSS, descriptors, threads and tasks and a verdict on leaks (see
//!   `bin/tidegate-soak.rs`).
//! - `peers`: only installs the peers.
//! - `vendor hls.js|dash.js [VERSION]`: refreshes a player library the binary serves (see `vendor.rs`).

mod bench;
mod leftovers;
mod peers;
mod vendor;

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
        Some("fuzz") => fuzz(&root, &args[1..]),
        Some("soak") => peers::install(&root).and_then(|_| soak(&root, &args[1..])),
        Some("vendor") => vendor::run_vendor(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test [cargo test args] | lint | peers | soak [--minutes N] [--debug] | bench [core|rtmp-fanout|hls-readers|rtsp-fanout|webrtc] [n...] | fuzz [seconds] [--jobs N] [target...] | vendor hls.js|dash.js [version]"
            );
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
    // Every process the tests start inherits this marker; whatever still carries it once
    // cargo test is done was left behind by a test, which fails the run.
    let marker = format!("{}-{}", std::process::id(), unix_time());
    // Tests find the peers through PEERS_DIR, and fail (never skip) when one is missing.
    let tests = run(cargo()
        .current_dir(root)
        .env("PEERS_DIR", peers)
        .env(SUITE_MARKER, &marker)
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .args(extra));
    let left = leftovers::reap(SUITE_MARKER, &marker);
    tests?;
    if left.is_empty() {
        eprintln!("xtask: no process started by the tests is left running");
        Ok(())
    } else {
        Err(format!(
            "{} process(es) started by the tests were still running after them (now killed):\n{}",
            left.len(),
            left.join("\n")
        ))
    }
}

/// The environment variable that marks the processes of one `cargo xtask test` run.
const SUITE_MARKER: &str = "E2E_SUITE_TIDEGATE";

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs every fuzz target (or those named) for `seconds` each (default 60), `--jobs N` of them
/// at a time (default 1). Each starts from its committed seeds (`fuzz/seeds/<target>/`) and the
/// corpus earlier runs left (`fuzz/corpus/<target>/`, not committed); libFuzzer's output goes
/// to `fuzz/logs/<target>.log`. Prints a table of runs, coverage, corpus size and the outcome
/// of each; fails if any target crashed (its input is in `fuzz/artifacts/<target>/`). Installs
/// cargo-fuzz if missing; uses RUSTC_BOOTSTRAP because the machine has a stable toolchain only.
fn fuzz(root: &Path, args: &[String]) -> Result<(), String> {
    let mut jobs = 1usize;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--jobs" {
            jobs = it.next().and_then(|j| j.parse().ok()).unwrap_or(1).max(1);
        } else {
            rest.push(a.clone());
        }
    }
    let seconds: u64 = rest.first().and_then(|s| s.parse().ok()).unwrap_or(60);
    let named: Vec<&String> = rest.iter().filter(|a| a.parse::<u64>().is_err()).collect();
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = root.join("fuzz");
    let list = Command::new("cargo")
        .current_dir(&dir)
        .args(["fuzz", "list"])
        .output()
        .map_err(|e| e.to_string())?;
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .filter(|t| named.is_empty() || named.contains(&t))
        .collect();
    // Built once, before the runs share the machine.
    run(Command::new("cargo")
        .current_dir(&dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "build"]))?;
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
    let queue = std::sync::Mutex::new(targets.clone());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let Some(t) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                    return;
                };
                let r = fuzz_one(&dir, &t, seconds);
                // Each run's row as it ends, so a campaign cut short keeps what it measured.
                let row = format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    r.target, r.seconds, r.runs, r.cov, r.ft, r.corpus, r.outcome
                );
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("logs").join("runs.tsv"))
                    .and_then(|mut f| std::io::Write::write_all(&mut f, row.as_bytes()));
                results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by(|a, b| a.target.cmp(&b.target));
    println!(
        "{:<18} {:>7} {:>12} {:>8} {:>8} {:>7}  result",
        "target", "seconds", "runs", "cov", "ft", "corpus"
    );
    for r in &results {
        println!(
            "{:<18} {:>7} {:>12} {:>8} {:>8} {:>7}  {}",
            r.target, r.seconds, r.runs, r.cov, r.ft, r.corpus, r.outcome
        );
    }
    let crashed: Vec<&str> = results
        .iter()
        .filter(|r| r.outcome != "clean")
        .map(|r| r.target.as_str())
        .collect();
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzz targets that failed: {crashed:?} (see fuzz/logs/)"
        ))
    }
}

/// One target's run, as [`fuzz`] reports it.
struct FuzzRun {
    target: String,
    seconds: u64,
    runs: u64,
    cov: u64,
    ft: u64,
    corpus: usize,
    outcome: String,
}

fn fuzz_one(dir: &Path, t: &str, seconds: u64) -> FuzzRun {
    let corpus = dir.join("corpus").join(t);
    let _ = std::fs::create_dir_all(&corpus);
    if let Ok(seeds) = std::fs::read_dir(dir.join("seeds").join(t)) {
        for s in seeds.flatten() {
            let _ = std::fs::copy(s.path(), corpus.join(s.file_name()));
        }
    }
    eprintln!("xtask: fuzzing {t} for {seconds} s");
    let log = dir.join("logs").join(format!("{t}.log"));
    let started = std::time::Instant::now();
    let status = std::fs::File::create(&log).and_then(|f| {
        Command::new("cargo")
            .current_dir(dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", t])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(f)
            .status()
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // libFuzzer's last status line ("#N ... cov: X ft: Y corp: ...") and final stats.
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("cov:"))
        .unwrap_or("");
    let runs = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let outcome = match status {
        Ok(s) if s.success() => "clean".to_string(),
        Ok(s) => format!("FAILED ({s}): {}", log.display()),
        Err(e) => format!("FAILED: {e}"),
    };
    FuzzRun {
        target: t.to_string(),
        seconds: started.elapsed().as_secs(),
        runs,
        cov: field(last, "cov:"),
        ft: field(last, "ft:"),
        corpus: std::fs::read_dir(&corpus).map_or(0, |d| d.count()),
        outcome,
    }
}

/// `soak [--minutes N] [--debug]`: builds the server (release unless `--debug`) and the soak
/// driver, and runs it; its table and verdict go to stdout, its files to `target/soak/`.
fn soak(root: &Path, args: &[String]) -> Result<(), String> {
    let minutes: u64 = args
        .iter()
        .position(|a| a == "--minutes")
        .and_then(|i| args.get(i + 1))
        .and_then(|m| m.parse().ok())
        .unwrap_or(60);
    let debug = args.iter().any(|a| a == "--debug");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "--quiet", "-p", "tidegate"]);
    if !debug {
        build.arg("--release");
    }
    run(&mut build)?;
    let bin = target
        .join(if debug { "debug" } else { "release" })
        .join("tidegate");
    let dir = target.join("soak").join(unix_time().to_string());
    // The driver only starts processes and reads /proc: its debug build is enough.
    run(cargo()
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "-p",
            "xtask",
            "--bin",
            "tidegate-soak",
            "--",
        ])
        .arg(&bin)
        .arg(minutes.to_string())
        .arg(&dir))
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
