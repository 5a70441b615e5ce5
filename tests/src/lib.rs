//! Support for end-to-end tests: finding the third-party peers, running them bounded in time,
//! and reading what they produced.
//!
//! A missing peer is a test failure with instructions, never a skip: `cargo xtask test`
//! installs them all.

pub mod http;
pub mod llhls;
pub mod logs;
pub mod lossy;
pub mod peers;
pub mod server;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Where `cargo xtask peers` put the venv, npm packages and `bin/ffmpeg9`.
pub fn peers_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEERS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/tidegate-peers")
}

/// The path of a peer program; panics (failing the test) when it is missing.
pub fn peer(name: &str) -> PathBuf {
    let local = peers_dir().join("bin").join(name);
    if local.exists() {
        return local;
    }
    let venv = peers_dir().join("venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "test peer '{name}' is missing: run `cargo xtask test` (or `cargo xtask peers`), which installs every peer"
    );
}

/// The server binary built beside the test binaries (`cargo test --workspace --all-targets`
/// builds it), for tests that run it as a process of its own.
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .join("tidegate");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p tidegate",
        bin.display()
    );
    bin
}

/// A self-signed certificate for 127.0.0.1/localhost, written as `key.pem` and `cert.pem`
/// into `dir`. Returns (key path, cert path).
pub fn self_signed(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (key, crt, _) = self_signed_pinned(dir);
    (key, crt)
}

/// As [`self_signed`], with the certificate's SHA-256 fingerprint in the colon form openssl
/// prints (`AB:CD:…`), as a `sourceFingerprint` would be written.
pub fn self_signed_pinned(dir: &std::path::Path) -> (PathBuf, PathBuf, String) {
    use sha2::Digest;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("rcgen");
    let key = dir.join("key.pem");
    let crt = dir.join("cert.pem");
    std::fs::write(&key, cert.signing_key.serialize_pem()).expect("write key");
    std::fs::write(&crt, cert.cert.pem()).expect("write cert");
    let fingerprint = sha2::Sha256::digest(cert.cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    (key, crt, fingerprint)
}

/// Checks `check` every 50 ms until it gives a value, for at most `limit`; panics with
/// `what()` after. For what has no event to wait on (a file a hook writes, a log line, a
/// counter a scrape shows): the one place where tests poll.
pub fn poll<T>(
    limit: Duration,
    what: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < limit, "within {limit:?}: {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The decode times (s) of the video of a file after checking it: H.264 video and some audio,
/// both with decode times that never go back.
pub fn video_timeline(file: &std::path::Path) -> Vec<f64> {
    let p = ffprobe(
        file.to_str().expect("a UTF-8 path"),
        &[],
        Duration::from_secs(30),
    );
    let f = file.display();
    assert_eq!(p.codec("video").as_deref(), Some("h264"), "{f}");
    assert!(p.codec("audio").is_some(), "{f}: no audio");
    assert!(p.dts_monotonic("video"), "{f}: video DTS go back");
    assert!(p.dts_monotonic("audio"), "{f}: audio DTS go back");
    p.dts_seconds("video")
}

/// The port of a `scheme://host:port/…` URL.
pub fn port_of(url: &str) -> u16 {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// A scratch directory for one test, removed and recreated.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidegate-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs a command to completion, killing it (and its process group: what it started too)
/// after `limit`. Panics on timeout.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    use std::os::unix::process::CommandExt;
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{shown}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!("{shown} did not finish within {limit:?}");
        }
    }
}

/// One decoded-or-demuxed packet as ffprobe reports it.
#[derive(Debug, Clone)]
pub struct Packet {
    pub stream: usize,
    pub pts: Option<i64>,
    pub dts: Option<i64>,
    pub keyframe: bool,
}

/// What ffprobe sees in a file or URL: streams (codec, width, height) and packets.
#[derive(Debug, Clone)]
pub struct Probe {
    pub streams: Vec<serde_json::Value>,
    pub packets: Vec<Packet>,
}

impl Probe {
    pub fn codec(&self, kind: &str) -> Option<String> {
        self.streams
            .iter()
            .find(|s| s["codec_type"] == kind)
            .and_then(|s| s["codec_name"].as_str().map(str::to_string))
    }

    pub fn stream_index(&self, kind: &str) -> Option<usize> {
        self.streams
            .iter()
            .find(|s| s["codec_type"] == kind)
            .and_then(|s| s["index"].as_u64())
            .map(|i| i as usize)
    }

    pub fn dimensions(&self) -> Option<(u64, u64)> {
        let v = self.streams.iter().find(|s| s["codec_type"] == "video")?;
        Some((v["width"].as_u64()?, v["height"].as_u64()?))
    }

    pub fn packets_of(&self, kind: &str) -> Vec<&Packet> {
        match self.stream_index(kind) {
            Some(i) => self.packets.iter().filter(|p| p.stream == i).collect(),
            None => Vec::new(),
        }
    }

    /// The decode times (s) of a stream's packets, in its time base.
    pub fn dts_seconds(&self, kind: &str) -> Vec<f64> {
        let tb = self
            .streams
            .iter()
            .find(|s| s["codec_type"] == kind)
            .and_then(|s| s["time_base"].as_str())
            .and_then(|t| t.split_once('/'))
            .and_then(|(n, d)| Some(n.parse::<f64>().ok()? / d.parse::<f64>().ok()?))
            .unwrap_or(1.0);
        self.packets_of(kind)
            .iter()
            .filter_map(|p| p.dts)
            .map(|d| d as f64 * tb)
            .collect()
    }

    /// Whether the DTS of a stream's packets never go backwards.
    pub fn dts_monotonic(&self, kind: &str) -> bool {
        let dts: Vec<i64> = self.packets_of(kind).iter().filter_map(|p| p.dts).collect();
        dts.windows(2).all(|w| w[0] <= w[1])
    }
}

/// Runs ffprobe on a file or URL and returns streams and packets.
pub fn ffprobe(input: &str, extra: &[&str], limit: Duration) -> Probe {
    ffprobe_via(|c| c, input, extra, limit)
}

/// [`ffprobe`], its command passed through `wrap` first (e.g. to run it in a namespace).
pub fn ffprobe_via(
    wrap: impl FnOnce(Command) -> Command,
    input: &str,
    extra: &[&str],
    limit: Duration,
) -> Probe {
    let mut cmd = Command::new(peer("ffprobe"));
    cmd.args([
        "-v",
        "error",
        "-of",
        "json",
        "-show_streams",
        "-show_packets",
    ])
    .args(["-show_entries", "packet=stream_index,pts,dts,flags:stream"])
    .args(extra)
    .arg(input);
    let out = run_bounded(&mut wrap(cmd), limit);
    assert!(
        out.status.success(),
        "ffprobe {input} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe prints JSON");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let packets = v["packets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| Packet {
                    stream: p["stream_index"].as_u64().unwrap_or(0) as usize,
                    pts: p["pts"].as_i64(),
                    dts: p["dts"].as_i64(),
                    keyframe: p["flags"].as_str().is_some_and(|f| f.starts_with('K')),
                })
                .collect()
        })
        .unwrap_or_default();
    Probe { streams, packets }
}

/// The first raw-video caps a `gst-launch-1.0 -v` log shows (e.g. `… width=(int)640, …`), or
/// an empty string. Caps appear as notify lines or, escaped, in a sink's caps event: the log is
/// unescaped first.
pub fn gst_video_caps(log: &str) -> String {
    log.replace('\\', "")
        .lines()
        .find(|l| l.contains("video/x-raw") && l.contains("width=(int)"))
        .unwrap_or("")
        .to_string()
}

/// Runs `tests/js/<script>` (a headless-Chromium page script) with `args` and the peers'
/// `node_modules` as its last argument, bounded by `limit`; fails with its output unless it
/// succeeds, and returns the JSON report it prints.
pub fn page_script(script: &str, args: &[&str], limit: Duration) -> serde_json::Value {
    let out = run_bounded(
        Command::new(peer("node"))
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("js")
                    .join(script),
            )
            .args(args)
            .arg(peers_dir().join("node/node_modules")),
        limit,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"));
    eprintln!("{script}: {report}");
    report
}

/// The strongest frequency of `pcm` between 200 Hz and 4 kHz, 5 Hz steps (Goertzel).
pub fn tone_peak(pcm: &[f32], rate: u32) -> f64 {
    let power = |freq: f64| {
        let c = 2.0 * (2.0 * std::f64::consts::PI * freq / f64::from(rate)).cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in pcm {
            let s = f64::from(x) + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - c * s1 * s2
    };
    (40..800)
        .map(|i| f64::from(i) * 5.0)
        .max_by(|a, b| power(*a).total_cmp(&power(*b)))
        .unwrap_or(0.0)
}

/// The first audio track of `file`, decoded by ffmpeg to mono 48 kHz samples.
pub fn decode_audio(file: &std::path::Path) -> Vec<f32> {
    let out = run_bounded(
        Command::new(peer("ffmpeg"))
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
            .arg(file)
            .args(["-vn", "-ac", "1", "-ar", "48000", "-f", "f32le", "-"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "ffmpeg decoding {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// `cmd`, run inside the network namespace of process `pid` (`nsenter --net`), in the same
/// working directory.
pub fn in_ns(pid: u32, cmd: &Command) -> Command {
    let mut c = Command::new(peer("nsenter"));
    c.arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// An SRT induction handshake from caller socket `id` (HSv4, as libsrt sends it), with no
/// connection to follow: a stranger's, for flood and port-reuse tests.
pub fn srt_induction(id: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for word in [4, 2, id, 1500, 8192, 1, id, 0] {
        // version, extension field, initial sequence number, MTU, flow window,
        // handshake type (induction), socket id, SYN cookie
        p.extend_from_slice(&u32::to_be_bytes(word));
    }
    p.extend_from_slice(&[127, 0, 0, 1]);
    p.extend_from_slice(&[0; 12]);
    p
}
