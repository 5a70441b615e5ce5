//! Stream keys with real clients and the real binary: created with `tidegate keys`, used
//! OBS-style (`rtmp://host/live` + stream key as the last URL segment) and as `?key=`, refused
//! when missing or wrong, ending their sessions when they expire, are rotated out after the
//! grace period or revoked (also from another Tidegate process sharing the key store), and
//! still valid after a restart.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tidegate_tests::http::request;
use tidegate_tests::peers::{ffmpeg_publish, free_port, PeerProcess};
use tidegate_tests::{peer, run_bounded, scratch, server_binary};

struct Node {
    process: PeerProcess,
    api: SocketAddr,
    rtmp: u16,
}

/// The binary on ports picked by [`free_port`]. Such a port can be taken by another socket
/// before the server binds it (outgoing connections draw from the same ephemeral range), and
/// the server then exits at start: it is started again on other ports, up to five times. It
/// has started when both its listeners (API and RTMP, the only ones enabled) take
/// connections while it runs.
fn start(dir: &Path, name: &str, store: &str) -> Node {
    let mut logs = String::new();
    for _attempt in 0..5 {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let rtmp = free_port();
        let conf = dir.join(format!("{name}.yml"));
        std::fs::write(
            &conf,
            format!(
                "metrics: no\nrtsp: no\nhls: no\nwebrtc: no\nsrt: no\n\
                 apiAddress: {api}\nrtmpAddress: 127.0.0.1:{rtmp}\nkeyStore: {}\n\
                 paths:\n  live:\n    streamKeyRequired: yes\n    streamKeyInPath: yes\n\
                 \x20 studio/cam:\n    streamKeyRequired: yes\n",
                store
            ),
        )
        .unwrap();
        let mut process = PeerProcess::spawn(name, Command::new(server_binary()).arg(&conf), dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if process.exited() {
                logs.push_str(&process.stderr());
                break;
            }
            let rtmp_addr: SocketAddr = format!("127.0.0.1:{rtmp}").parse().unwrap();
            if std::net::TcpStream::connect(api).is_ok()
                && std::net::TcpStream::connect(rtmp_addr).is_ok()
                && !process.exited()
            {
                return Node { process, api, rtmp };
            }
            assert!(Instant::now() < deadline, "{}", process.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("{name} did not start in five attempts:\n{logs}");
}

impl Node {
    fn ready(&self) -> bool {
        self.ready_at("live")
    }

    fn ready_at(&self, path: &str) -> bool {
        request(self.api, "GET", &format!("/v3/paths/get/{path}"))
            .1
            .contains("\"ready\":true")
    }

    fn wait_ready(&self, publisher: &mut PeerProcess) {
        self.wait_ready_at("live", publisher)
    }

    fn wait_ready_at(&self, path: &str, publisher: &mut PeerProcess) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ready_at(path) {
            assert!(
                Instant::now() < deadline,
                "not ready:\n{}\n{}",
                publisher.stderr(),
                self.process.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for the path to lose its publisher; returns when that happened.
    fn wait_gone(&self, limit: Duration) -> Instant {
        self.wait_gone_at("live", limit)
    }

    fn wait_gone_at(&self, path: &str, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        while self.ready_at(path) {
            assert!(
                Instant::now() < deadline,
                "the publish did not end:\n{}",
                self.process.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Instant::now()
    }

    fn url(&self, tail: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{tail}", self.rtmp)
    }

    /// `tidegate keys --api … ARGS`: (the key it printed, if any; the JSON).
    fn keys(&self, args: &[&str]) -> (Option<String>, serde_json::Value) {
        let out = run_bounded(
            Command::new(server_binary())
                .args(["keys", "--api", &format!("http://{}", self.api)])
                .args(args),
            Duration::from_secs(20),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("key: "))
            .map(str::to_string);
        let json = text
            .lines()
            .filter(|l| !l.starts_with("key: "))
            .collect::<String>();
        (key, serde_json::from_str(&json).unwrap())
    }
}

fn refused(url: &str, dir: &Path) -> bool {
    let mut p = ffmpeg_publish(url, 10, "flv", dir);
    !p.wait(Duration::from_secs(20)).success()
}

fn within(t: Duration, from: Duration, to: Duration) -> bool {
    t >= from && t <= to
}

#[test]
fn stream_keys_end_to_end() {
    let dir = scratch("keys");
    let store: PathBuf = dir.join("store/keys.db");
    let store = store.to_str().unwrap();
    let a = start(&dir, "a", store);

    // OBS-style: server rtmp://host/live, stream key K.
    let (k1, rec) = a.keys(&["create", "live", "--label", "Sunday service"]);
    let k1 = k1.expect("the key is printed once");
    assert_eq!(rec["label"], "Sunday service");
    assert!(rec.get("hash").is_none(), "{rec}");
    assert!(refused(&a.url("live"), &dir), "no key: let in");
    assert!(
        refused(&a.url("live/tgk_0123456789abcdef0123456789abcdef"), &dir),
        "wrong key: let in"
    );
    assert!(!a.ready());
    let mut obs = ffmpeg_publish(&a.url(&format!("live/{k1}")), 60, "flv", &dir);
    a.wait_ready(&mut obs);
    // The API shows the use, and never the key.
    let (_, got) = a.keys(&["get", rec["id"].as_str().unwrap()]);
    assert_eq!(got["uses"], 1, "{got}");
    assert_eq!(got["lastUsedIp"], "127.0.0.1");
    let (_, list) = a.keys(&["list", "--path", "live"]);
    assert!(!list.to_string().contains(&k1));

    // Revocation ends the live publish within a second.
    let t = Instant::now();
    a.keys(&["revoke", rec["id"].as_str().unwrap()]);
    let gone = a.wait_gone(Duration::from_secs(5)).duration_since(t);
    eprintln!("revoked: the publish ended {gone:?} after the revoke answered");
    assert!(gone <= Duration::from_secs(1), "{gone:?}");
    assert!(!obs.wait(Duration::from_secs(20)).success());
    assert!(
        refused(&a.url(&format!("live/{k1}")), &dir),
        "a revoked key still publishes"
    );

    // Expiry: a key valid for 6 s, as ?key= on another path; the publish ends when it expires.
    let t0 = Instant::now();
    let (k2, _) = a.keys(&["create", "studio/cam", "--valid-for", "6s"]);
    let k2 = k2.unwrap();
    assert!(
        refused(&a.url(&format!("studio/cam?key={k1}")), &dir),
        "another path's key"
    );
    let mut p2 = ffmpeg_publish(&a.url(&format!("studio/cam?key={k2}")), 60, "flv", &dir);
    a.wait_ready_at("studio/cam", &mut p2);
    let end = a
        .wait_gone_at("studio/cam", Duration::from_secs(15))
        .duration_since(t0);
    eprintln!("expiry: the publish ended {end:?} after a 6 s key was made");
    assert!(
        within(
            end,
            Duration::from_millis(5500),
            Duration::from_millis(7500)
        ),
        "{end:?}"
    );
    assert!(!p2.wait(Duration::from_secs(20)).success());

    // Rotation with a 3 s grace: the old key's session goes on until the grace ends, the new
    // key publishes, the old one is refused after.
    let (k3, r3) = a.keys(&["create", "live"]);
    let k3 = k3.unwrap();
    let mut p3 = ffmpeg_publish(&a.url(&format!("live/{k3}")), 60, "flv", &dir);
    a.wait_ready(&mut p3);
    let t = Instant::now();
    let (k4, r4) = a.keys(&["rotate", r3["id"].as_str().unwrap(), "--grace", "3s"]);
    let k4 = k4.unwrap();
    assert_ne!(k4, k3);
    let end = a.wait_gone(Duration::from_secs(10)).duration_since(t);
    eprintln!("rotation: the old key's publish ended {end:?} after the rotation (grace 3 s)");
    assert!(
        within(
            end,
            Duration::from_millis(2500),
            Duration::from_millis(4500)
        ),
        "{end:?}"
    );
    assert!(
        refused(&a.url(&format!("live/{k3}")), &dir),
        "the old key after its grace"
    );
    let (_, old) = a.keys(&["get", r3["id"].as_str().unwrap()]);
    assert_eq!(old["rotatedTo"], r4["id"]);

    // A restart loses no key: the rotated-in key publishes on the restarted server.
    drop(a);
    let a = start(&dir, "a2", store);
    let mut p4 = ffmpeg_publish(&a.url(&format!("live/{k4}")), 60, "flv", &dir);
    a.wait_ready(&mut p4);
    p4.kill9();
    a.wait_gone(Duration::from_secs(10));

    // Two processes sharing the store: a key made and revoked on one ends a publish on the
    // other.
    let b = start(&dir, "b", store);
    let (k5, r5) = a.keys(&["create", "live"]);
    let mut p5 = ffmpeg_publish(&b.url(&format!("live/{}", k5.unwrap())), 60, "flv", &dir);
    b.wait_ready(&mut p5);
    let t = Instant::now();
    a.keys(&["revoke", r5["id"].as_str().unwrap()]);
    let gone = b.wait_gone(Duration::from_secs(5)).duration_since(t);
    eprintln!("revoked on one process: the publish on the other ended after {gone:?}");
    assert!(gone <= Duration::from_secs(1), "{gone:?}");
    let log = b.process.stderr();
    assert!(log.contains("its stream key was revoked"), "{log}");
}

/// A PostgreSQL server from Debian's package, on loopback, in `dir`, run as the `postgres`
/// user (it refuses root), trusting local connections. Killed with the test.
fn postgres(dir: &Path) -> (PeerProcess, u16) {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path().join("bin")).max())
        .filter(|b| b.join("initdb").exists())
        .expect("PostgreSQL is missing: run `cargo xtask test` (or `cargo xtask peers`), which installs it");
    let data = dir.join("pgdata");
    std::fs::create_dir_all(&data).unwrap();
    let as_postgres = |args: &[&str]| {
        let mut c = Command::new(peer("runuser"));
        c.args(["-u", "postgres", "--"]).args(args);
        c
    };
    let chown = run_bounded(
        Command::new(peer("chown"))
            .args(["-R", "postgres:postgres"])
            .arg(&data),
        Duration::from_secs(10),
    );
    assert!(chown.status.success());
    let init = run_bounded(
        &mut as_postgres(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "--auth=trust",
            "-U",
            "postgres",
        ]),
        Duration::from_secs(120),
    );
    assert!(
        init.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let port = free_port();
    let server = PeerProcess::spawn(
        "postgres",
        &mut as_postgres(&[
            bin.join("postgres").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-k",
            data.to_str().unwrap(),
        ]),
        dir,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr().contains("ready to accept connections") {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not start:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

/// Two Tidegate processes share one PostgreSQL key store: a key made through one publishes on
/// the other, and a revocation through the first ends that publish within a second.
#[test]
fn a_postgres_key_store_is_shared_by_two_processes() {
    let dir = scratch("keys-pg");
    let (_pg, port) = postgres(&dir);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let a = start(&dir, "a", &url);
    let b = start(&dir, "b", &url);
    let (key, rec) = a.keys(&["create", "live", "--label", "fleet"]);
    let key = key.unwrap();
    assert!(refused(
        &b.url("live/tgk_0123456789abcdef0123456789abcdef"),
        &dir
    ));
    let mut p = ffmpeg_publish(&b.url(&format!("live/{key}")), 60, "flv", &dir);
    b.wait_ready(&mut p);
    // B recorded the use in the shared store; A sees it.
    let (_, got) = a.keys(&["get", rec["id"].as_str().unwrap()]);
    assert_eq!(got["uses"], 1, "{got}");
    let t = Instant::now();
    a.keys(&["revoke", rec["id"].as_str().unwrap()]);
    let gone = b.wait_gone(Duration::from_secs(5)).duration_since(t);
    eprintln!("PostgreSQL: revoked on one process, the publish on the other ended after {gone:?}");
    assert!(gone <= Duration::from_secs(1), "{gone:?}");
    assert!(!p.wait(Duration::from_secs(20)).success());
    assert!(b.process.stderr().contains("its stream key was revoked"));
}
