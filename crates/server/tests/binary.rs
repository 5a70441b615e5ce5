//! The `tidegate` binary as users run it: configuration errors, start-up and signals.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidegate-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary to completion (bounded) and returns (exit code, stderr).
fn run_to_end(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        let _ = tx.send(s);
    });
    let text = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the binary exits within 20 s");
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), text)
}

#[test]
fn configuration_errors_exit_1_naming_key_and_line() {
    let port = free_port();
    let cfg = write_config(
        "bad.yml",
        &format!("apiAddress: 127.0.0.1:{port}\n\nhlsSegmentCount: lots\n"),
    );
    let (code, stderr) = run_to_end(&[cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.yml:3: hlsSegmentCount: expected a whole number, found 'lots'"),
        "{stderr}"
    );
    // Nothing was bound: the port is still free.
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());

    let cfg = write_config("typo.yml", "paths:\n  cam:\n    readPas: x\n");
    let (code, stderr) = run_to_end(&[cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("typo.yml:3: paths.cam.readPas: unknown key (did you mean 'readPass'?)"),
        "{stderr}"
    );

    let (code, stderr) = run_to_end(&["/nonexistent/tidegate.yml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read /nonexistent/tidegate.yml"),
        "{stderr}"
    );
}

#[test]
fn starts_serves_and_stops_on_sigterm() {
    let api = free_port();
    let metrics = free_port();
    let cfg = write_config(
        "ok.yml",
        &format!(
            "apiAddress: 127.0.0.1:{api}\nmetricsAddress: 127.0.0.1:{metrics}\nlogFormat: json\n\
             rtmpAddress: 127.0.0.1:0\nrtmpsAddress: 127.0.0.1:0\nrtspAddress: 127.0.0.1:0\n\
             hlsAddress: 127.0.0.1:0\nwebrtcAddress: 127.0.0.1:0\nwebrtcLocalUDPAddress: 127.0.0.1:0\n\
             srtAddress: 127.0.0.1:0\n"
        ),
    );
    let mut child = Command::new(BIN)
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut opened = 0;
    while opened < 4 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("listeners open within 10 s; log so far: {lines:#?}"));
        if line.contains("listener opened") {
            opened += 1;
        }
        lines.push(line);
    }
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("logFormat json: {l}"));
        assert!(v["level"].is_string());
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", api)).is_ok());
    assert!(std::net::TcpStream::connect(("127.0.0.1", metrics)).is_ok());

    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    // The log reader ends when the process's stderr closes.
    let mut rest = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(l) => rest.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("stderr still open 5 s after exit"),
        }
    }
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:#?}");
}
