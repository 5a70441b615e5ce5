//! `cargo xtask soak --minutes N`: hours of churn in minutes, and a verdict on leaks.
//!
//! One Tidegate runs with every TCP listener and SRT on loopback. Around it, for N minutes:
//! - a persistent RTMP publisher (`soak/main`) with a decoding RTMP reader and an HLS reader
//!   that must play throughout (their frame counts must keep growing);
//! - churn cycles: RTMP, RTMPS, RTSP, RTSPS, SRT and WHIP (ffmpeg 9) publishers that come and
//!   go (the RTMPS
//!   one recorded, its recording listed and played back while it runs); RTMP, RTMPS, RTSP (TCP
//!   and UDP), RTSPS, SRT, HLS and WHEP readers that join, leave, stall (SIGSTOP) and die
//!   (SIGKILL), each of which must get frames;
//! - a pulled source (`soak/pulled` ← `rtsp://…/soak/upstream`) whose upstream publisher dies
//!   and comes back every cycle;
//! - the API and `/metrics` polled every two seconds, and the configuration file rewritten
//!   (a path added or removed: a reload) every three minutes.
//!
//! The server's RSS, open descriptors, threads and async tasks (`tidegate_runtime_alive_tasks`)
//! are sampled every ten seconds, and at the end of each cycle once every churning peer has
//! left ("baseline" rows). After the warm-up (the first fifth of the run, at least two
//! cycles) the verdict asks: RSS growth under 5 %, no growth of descriptors or tasks between
//! the first and the last baselines, no panic in the log, the persistent readers playing.
//!
//! Usage: `tidegate-soak <server binary> <minutes> <work dir>`; peers (ffmpeg) from PATH.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../whep_viewer.rs"]
mod whep_viewer;

/// One churn cycle.
const CYCLE: Duration = Duration::from_secs(60);
/// How often the server is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How often the configuration is rewritten.
const RELOAD_EVERY: Duration = Duration::from_secs(180);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(bin), Some(minutes), Some(dir)) = (
        args.first(),
        args.get(1).and_then(|m| m.parse::<u64>().ok()),
        args.get(2),
    ) else {
        eprintln!("usage: tidegate-soak <server binary> <minutes> <work dir>");
        std::process::exit(2);
    };
    match soak(
        Path::new(bin),
        Duration::from_secs(minutes * 60),
        Path::new(dir),
    ) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    }
}

struct Ports {
    rtmp: u16,
    rtmps: u16,
    rtsp: u16,
    rtsps: u16,
    rtp: u16,
    srtp: u16,
    srt: u16,
    hls: u16,
    api: u16,
    metrics: u16,
    webrtc: u16,
    webrtc_udp: u16,
    playback: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// Two consecutive free UDP ports (RTP, RTCP).
fn free_udp_pair() -> u16 {
    for _ in 0..100 {
        let Ok(a) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = a.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port % 2 == 0 && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    0
}

fn config(p: &Ports, dir: &Path, reload_round: u64) -> String {
    let extra = if reload_round % 2 == 1 {
        format!("  reloaded{reload_round}:\n")
    } else {
        String::new()
    };
    let (key, cert) = (
        dir.join("server.key").display().to_string(),
        dir.join("server.crt").display().to_string(),
    );
    format!(
        "logLevel: info\nrtmpAddress: 127.0.0.1:{}\nrtspAddress: 127.0.0.1:{}\n\
         rtpAddress: 127.0.0.1:{}\nrtcpAddress: 127.0.0.1:{}\nsrtAddress: 127.0.0.1:{}\n\
         hlsAddress: 127.0.0.1:{}\napiAddress: 127.0.0.1:{}\nmetricsAddress: 127.0.0.1:{}\n\
         metrics: yes\nkeyStore: {}\n\
         rtmpEncryption: optional\nrtmpsAddress: 127.0.0.1:{}\n\
         rtmpServerKey: {key}\nrtmpServerCert: {cert}\n\
         rtspEncryption: optional\nrtspsAddress: 127.0.0.1:{}\n\
         srtpAddress: 127.0.0.1:{}\nsrtcpAddress: 127.0.0.1:{}\n\
         rtspServerKey: {key}\nrtspServerCert: {cert}\n\
         webrtc: yes\nwebrtcAddress: 127.0.0.1:{}\nwebrtcLocalUDPAddress: 127.0.0.1:{}\n\
         playback: yes\nplaybackAddress: 127.0.0.1:{}\n\
         paths:\n  soak/pulled:\n    source: rtsp://127.0.0.1:{}/soak/upstream\n\
         \x20   rtspTransport: tcp\n\
         \x20 \"~^soak/rec\":\n    record: yes\n    recordPath: {}/%path/%s\n\
         \x20   recordSegmentDuration: 10s\n    recordDeleteAfter: 30s\n\
         \x20 all_others:\n{extra}",
        p.rtmp,
        p.rtsp,
        p.rtp,
        p.rtp + 1,
        p.srt,
        p.hls,
        p.api,
        p.metrics,
        dir.join("keys.db").display(),
        p.rtmps,
        p.rtsps,
        p.srtp,
        p.srtp + 1,
        p.webrtc,
        p.webrtc_udp,
        p.playback,
        p.rtsp,
        dir.join("recordings").display(),
    )
}

/// A self-signed certificate for 127.0.0.1 (RTMPS, RTSPS), made with openssl.
fn certificate(dir: &Path) -> Result<(), String> {
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "7"])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(dir.join("server.crt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("openssl: {e}"))?
        .success();
    ok.then_some(())
        .ok_or_else(|| "openssl could not make a certificate".into())
}

/// WHEP viewers of `target` for `seconds`: the video frames each got (or why it failed).
fn whep_viewers(port: u16, target: &str, n: usize, seconds: u64) -> Vec<Result<u64, String>> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return vec![Err("no runtime".into()); n];
    };
    rt.block_on(async {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts: Vec<Arc<whep_viewer::ViewerCount>> = (0..n)
            .map(|_| Arc::new(whep_viewer::ViewerCount::default()))
            .collect();
        let tasks: Vec<_> = counts
            .iter()
            .map(|c| {
                tokio::spawn(whep_viewer::viewer(
                    port,
                    target.to_string(),
                    c.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for (t, c) in tasks.into_iter().zip(&counts) {
            let ended = tokio::time::timeout(Duration::from_secs(5), t).await;
            out.push(match ended {
                Ok(Ok(Ok(()))) => Ok(c.video_frames.load(Ordering::Relaxed)),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("did not stop".into()),
            });
        }
        out
    })
}

/// Whether playback lists `path` and serves a few seconds of it as fMP4.
fn played_back(port: u16, path: &str) -> bool {
    let Some(list) = http_get(port, &format!("/list?path={path}")) else {
        return false;
    };
    let Ok(spans) = serde_json::from_str::<serde_json::Value>(&list) else {
        return false;
    };
    let Some(start) = spans
        .as_array()
        .and_then(|a| a.first())
        .and_then(|s| s.get("start"))
        .and_then(|s| s.as_str())
    else {
        return false;
    };
    let start = start.replace(':', "%3A").replace('+', "%2B");
    http_get_bytes(port, &format!("/get?path={path}&start={start}&duration=3"))
        .is_some_and(|body| body.windows(4).any(|w| w == b"moof"))
}

/// A GET over HTTP/1.0; the body (text), or None.
fn http_get(port: u16, target: &str) -> Option<String> {
    http_get_bytes(port, target).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A GET over HTTP/1.0; the body, or None unless the answer is 200.
fn http_get_bytes(port: u16, target: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {target} HTTP/1.0\r\nHost: soak\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    s.take(64 << 20).read_to_end(&mut out).ok()?;
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &out[..end];
    (head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
        .then(|| out[end + 4..].to_vec())
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn alive_tasks(metrics: u16) -> Option<u64> {
    http_get(metrics, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_runtime_alive_tasks "))
        .and_then(|v| v.trim().parse().ok())
}

#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
    baseline: bool,
}

/// An ffmpeg generating a test pattern with a tone, published to `url` as `format`.
fn publisher(url: &str, format: &str, seconds: u64, log: &Path) -> Option<Child> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
        ]);
    if format == "rtsp" {
        cmd.args(["-rtsp_transport", "tcp"]);
    }
    cmd.args(["-f", format, url]);
    spawn(cmd, log)
}

/// Where `cargo xtask peers` put `bin/ffmpeg9` (ffmpeg 9, which has a WHIP muxer).
fn ffmpeg9() -> std::path::PathBuf {
    let dir = std::env::var_os("PEERS_DIR").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            Path::new(&home).join(".cache/tidegate-peers")
        },
        std::path::PathBuf::from,
    );
    dir.join("bin/ffmpeg9")
}

/// An ffmpeg 9 publishing a test pattern (H.264 baseline) with a tone (Opus) over WHIP.
fn whip_publisher(url: &str, seconds: u64, log: &Path) -> Option<Child> {
    let mut cmd = Command::new(ffmpeg9());
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-profile:v", "baseline", "-bf", "0"])
        .args(["-preset", "ultrafast", "-tune", "zerolatency", "-g", "25"])
        .args([
            "-pix_fmt", "yuv420p", "-c:a", "libopus", "-ar", "48000", "-ac", "2",
        ])
        .args(["-f", "whip", url]);
    spawn(cmd, log)
}

/// An ffmpeg reading `url` (decoding the video) for `seconds`, reporting its frame count.
fn reader(url: &str, extra: &[&str], seconds: u64, log: &Path) -> Option<Child> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(extra)
        .args(["-t", &seconds.to_string(), "-i", url])
        .args([
            "-map",
            "0:v",
            "-f",
            "null",
            "-",
            "-progress",
            "pipe:1",
            "-nostats",
        ]);
    spawn(cmd, log)
}

fn spawn(mut cmd: Command, log: &Path) -> Option<Child> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ok()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .ok()
}

/// The frame count an ffmpeg `-progress` reader reports, updated as it reads.
fn follow_frames(child: &mut Child) -> Arc<AtomicU64> {
    let frames = Arc::new(AtomicU64::new(0));
    if let Some(out) = child.stdout.take() {
        let f = frames.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line
                    .strip_prefix("frame=")
                    .and_then(|v| v.trim().parse().ok())
                {
                    f.store(n, Ordering::Relaxed);
                }
            }
        });
    }
    frames
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

fn finish(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The persistent peers: restarted when they end (they are given a long duration).
struct Persistent {
    publisher: Child,
    rtmp_reader: Child,
    rtmp_frames: Arc<AtomicU64>,
    hls_reader: Child,
    hls_frames: Arc<AtomicU64>,
}

fn soak(bin: &Path, length: Duration, dir: &Path) -> Result<bool, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let peers_log = dir.join("peers.log");
    let server_log = dir.join("server.log");
    let ports = Ports {
        rtmp: free_port(),
        rtmps: free_port(),
        rtsp: free_port(),
        rtsps: free_port(),
        rtp: free_udp_pair(),
        srtp: free_udp_pair(),
        srt: free_port(),
        hls: free_port(),
        api: free_port(),
        metrics: free_port(),
        webrtc: free_port(),
        webrtc_udp: free_udp_pair(),
        playback: free_port(),
    };
    certificate(dir)?;
    let conf = dir.join("tidegate.yml");
    std::fs::write(&conf, config(&ports, dir, 0)).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(&server_log).map_err(|e| e.to_string())?;
    let mut server = Command::new(bin)
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let pid = server.id();
    let up = Instant::now();
    while http_get(ports.api, "/v3/paths/list").is_none() {
        if up.elapsed() > Duration::from_secs(30) {
            let _ = server.kill();
            return Err("the server's API did not answer within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rtmp = |p: &str| format!("rtmp://127.0.0.1:{}/{p}", ports.rtmp);
    let rtsp = |p: &str| format!("rtsp://127.0.0.1:{}/{p}", ports.rtsp);
    let rtmps = |p: &str| format!("rtmps://127.0.0.1:{}/{p}", ports.rtmps);
    let rtsps = |p: &str| format!("rtsps://127.0.0.1:{}/{p}", ports.rtsps);
    let srt = |p: &str, mode: &str| {
        format!(
            "srt://127.0.0.1:{}?streamid={mode}:{p}&latency=200000&pkt_size=1316",
            ports.srt
        )
    };
    let hls = format!("http://127.0.0.1:{}/soak/main/index.m3u8", ports.hls);
    let long = length.as_secs() + 600;
    let start_persistent = || -> Option<Persistent> {
        let publisher = publisher(&rtmp("soak/main"), "flv", long, &peers_log)?;
        // The readers start once the path is ready.
        let t = Instant::now();
        while !http_get(ports.api, "/v3/paths/get/soak/main")
            .is_some_and(|b| b.contains("\"ready\":true"))
        {
            if t.elapsed() > Duration::from_secs(30) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut rtmp_reader = reader(&rtmp("soak/main"), &[], long, &peers_log)?;
        let rtmp_frames = follow_frames(&mut rtmp_reader);
        let mut hls_reader = reader(&hls, &[], long, &peers_log)?;
        let hls_frames = follow_frames(&mut hls_reader);
        Some(Persistent {
            publisher,
            rtmp_reader,
            rtmp_frames,
            hls_reader,
            hls_frames,
        })
    };
    let persistent =
        start_persistent().ok_or("the persistent publisher and readers did not start")?;

    // API polling, for the whole run.
    let stop_polling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, polls, api, metrics) = (
            stop_polling.clone(),
            polls.clone(),
            ports.api,
            ports.metrics,
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (port, target) in [
                    (api, "/v3/paths/list"),
                    (api, "/v3/rtmpconns/list"),
                    (api, "/v3/rtspsessions/list"),
                    (api, "/v3/srtconns/list"),
                    (api, "/v3/hlsmuxers/list"),
                    (api, "/v3/webrtcsessions/list"),
                    (api, "/v3/rtspssessions/list"),
                    (api, "/v3/rtmpsconns/list"),
                    (api, "/v3/recordings/list"),
                    (metrics, "/metrics"),
                ] {
                    if http_get(port, target).is_some() {
                        polls.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        })
    };

    let began = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let sample = |baseline: bool| Sample {
        at: began.elapsed(),
        rss_kb: proc_status(pid, "VmRSS:"),
        fds: open_fds(pid),
        threads: proc_status(pid, "Threads:"),
        tasks: alive_tasks(ports.metrics).unwrap_or(0),
        baseline,
    };
    println!(
        "{:>8} {:>9} {:>5} {:>8} {:>6}  when",
        "t (s)", "RSS (MB)", "fds", "threads", "tasks"
    );
    let show = |s: &Sample| {
        println!(
            "{:>8} {:>9.1} {:>5} {:>8} {:>6}  {}",
            s.at.as_secs(),
            s.rss_kb as f64 / 1024.0,
            s.fds,
            s.threads,
            s.tasks,
            if s.baseline {
                "baseline (churn gone)"
            } else {
                "churn"
            }
        );
    };
    let mut cycle = 0u64;
    let mut reloads = 0u64;
    let mut next_reload = RELOAD_EVERY;
    let mut stalls = Vec::new();
    let mut progress: Vec<(u64, u64, u64)> = Vec::new();
    // Churn readers that got no frame, by kind; WHEP viewers that failed or got nothing;
    // cycles whose recording could not be played back.
    let mut silent: Vec<String> = Vec::new();
    let mut whep_failed: Vec<String> = Vec::new();
    let mut playback_failed = 0u64;
    let mut readers_run = 0u64;
    while began.elapsed() + CYCLE <= length {
        cycle += 1;
        let cycle_start = Instant::now();
        let tag = |what: &str| format!("soak/{what}{}", cycle % 4);
        // Churn: publishers on every ingest, the pulled source's upstream, readers on every
        // egress; one reader stalled then killed, one killed outright.
        let mut churn: Vec<Child> = Vec::new();
        churn.extend(publisher(&rtmp(&tag("rtmp")), "flv", 35, &peers_log));
        churn.extend(publisher(&rtsp(&tag("rtsp")), "rtsp", 35, &peers_log));
        churn.extend(publisher(
            &srt(&tag("srt"), "publish"),
            "mpegts",
            35,
            &peers_log,
        ));
        churn.extend(publisher(&rtmp("soak/upstream"), "flv", 30, &peers_log));
        churn.extend(publisher(&rtmps(&tag("rec")), "flv", 35, &peers_log));
        churn.extend(publisher(&rtsps(&tag("rtsps")), "rtsp", 35, &peers_log));
        churn.extend(whip_publisher(
            &format!("http://127.0.0.1:{}/{}/whip", ports.webrtc, tag("whip")),
            35,
            &peers_log,
        ));
        std::thread::sleep(Duration::from_secs(6));
        let tcp: &[&str] = &["-rtsp_transport", "tcp"];
        let mut readers: Vec<(String, Child, Arc<AtomicU64>)> = Vec::new();
        for (kind, url, extra, seconds) in [
            ("RTMP", rtmp(&tag("rtmp")), &[][..], 20),
            ("RTSP/TCP", rtsp(&tag("rtsp")), tcp, 15),
            (
                "RTSP/UDP",
                rtsp("soak/main"),
                &["-rtsp_transport", "udp"][..],
                15,
            ),
            ("SRT", srt(&tag("srt"), "read"), &[][..], 15),
            (
                "RTMP of the pulled source",
                rtmp("soak/pulled"),
                &[][..],
                15,
            ),
            ("HLS", hls.clone(), &[][..], 20),
            ("RTMPS", rtmps(&tag("rec")), &[][..], 15),
            ("RTSPS", rtsps(&tag("rtsps")), tcp, 15),
            ("RTMP of a WHIP publish", rtmp(&tag("whip")), &[][..], 15),
        ] {
            if let Some(mut c) = reader(&url, extra, seconds, &peers_log) {
                let frames = follow_frames(&mut c);
                readers.push((kind.to_string(), c, frames));
            }
        }
        let whep = {
            let port = ports.webrtc;
            std::thread::spawn(move || whep_viewers(port, "/soak/main/whep", 3, 15))
        };
        let stalled = reader(&rtmp("soak/main"), &[], 60, &peers_log);
        let doomed = reader(
            &rtsp("soak/main"),
            &["-rtsp_transport", "tcp"],
            60,
            &peers_log,
        );
        std::thread::sleep(Duration::from_secs(4));
        if let Some(s) = &stalled {
            signal(s, "-STOP");
        }
        if let Some(d) = doomed {
            signal(&d, "-KILL");
            finish(d);
        }
        // Samples while the churn runs; the recording is played back while it grows.
        let mut next_sample = Instant::now();
        let mut playback_checked = false;
        while cycle_start.elapsed() < Duration::from_secs(40) {
            if !playback_checked && cycle_start.elapsed() >= Duration::from_secs(30) {
                playback_checked = true;
                if !played_back(ports.playback, &tag("rec")) {
                    playback_failed += 1;
                }
            }
            if Instant::now() >= next_sample {
                let s = sample(false);
                show(&s);
                samples.push(s);
                next_sample += SAMPLE_EVERY;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // The stalled reader dies; the rest end by their own `-t` or are stopped.
        if let Some(s) = stalled {
            signal(&s, "-KILL");
            stalls.push(s);
        }
        for (kind, c, frames) in readers {
            finish(c);
            readers_run += 1;
            if frames.load(Ordering::Relaxed) == 0 {
                silent.push(format!("{kind} (cycle {cycle})"));
            }
        }
        match whep.join() {
            Ok(results) => {
                for r in results {
                    readers_run += 1;
                    match r {
                        Ok(0) => whep_failed.push(format!("no frame (cycle {cycle})")),
                        Ok(_) => {}
                        Err(e) => whep_failed.push(format!("{e} (cycle {cycle})")),
                    }
                }
            }
            Err(_) => whep_failed.push(format!("the viewers' thread panicked (cycle {cycle})")),
        }
        for c in churn.into_iter().chain(stalls.drain(..)) {
            finish(c);
        }
        if began.elapsed() >= next_reload {
            reloads += 1;
            let _ = std::fs::write(&conf, config(&ports, dir, reloads));
            next_reload += RELOAD_EVERY;
        }
        // The baseline: every churning peer gone and the server given time to notice.
        while cycle_start.elapsed() < CYCLE {
            std::thread::sleep(Duration::from_millis(250));
        }
        let s = sample(true);
        show(&s);
        samples.push(s);
        progress.push((
            began.elapsed().as_secs(),
            persistent.rtmp_frames.load(Ordering::Relaxed),
            persistent.hls_frames.load(Ordering::Relaxed),
        ));
    }
    stop_polling.store(true, Ordering::Relaxed);
    let _ = poller.join();

    // The verdict.
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    let panics = log.lines().filter(|l| l.contains("panicked")).count();
    let warm = (length / 5).max(CYCLE * 2);
    let baselines: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.baseline && s.at >= warm)
        .collect();
    let mut ok = true;
    println!();
    println!(
        "{} cycles, {} reloads, {} API/metrics answers, {} log lines, {panics} panics",
        cycle,
        reloads,
        polls.load(Ordering::Relaxed),
        log.lines().count()
    );
    if baselines.len() < 2 {
        println!("too short: fewer than two baselines after the warm-up of {warm:?}");
        ok = false;
    } else {
        let (first, last) = (baselines[0], baselines[baselines.len() - 1]);
        let growth =
            (last.rss_kb as f64 - first.rss_kb as f64) / first.rss_kb.max(1) as f64 * 100.0;
        let rss_ok = growth < 5.0;
        let fds_ok = last.fds <= first.fds;
        let tasks_ok = last.tasks <= first.tasks;
        println!(
            "after the warm-up ({} s): RSS {:.1} → {:.1} MB ({growth:+.1} %, under 5 %: {}), \
             fds {} → {} ({}), tasks {} → {} ({}), threads {} → {}",
            warm.as_secs(),
            first.rss_kb as f64 / 1024.0,
            last.rss_kb as f64 / 1024.0,
            if rss_ok { "yes" } else { "NO" },
            first.fds,
            last.fds,
            if fds_ok { "no growth" } else { "GREW" },
            first.tasks,
            last.tasks,
            if tasks_ok { "no growth" } else { "GREW" },
            first.threads,
            last.threads,
        );
        ok &= rss_ok && fds_ok && tasks_ok;
    }
    // The persistent readers played throughout: frames grew every cycle, by at least 80 %
    // of 25 fps over the cycle.
    let mut stalled_cycles = 0;
    for w in progress.windows(2) {
        let secs = (w[1].0 - w[0].0) as f64;
        let want = (secs * 25.0 * 0.8) as u64;
        if w[1].1 - w[0].1 < want || w[1].2 - w[0].2 < want {
            stalled_cycles += 1;
        }
    }
    println!(
        "persistent readers: RTMP {} frames, HLS {} frames; cycles where one fell behind: {stalled_cycles}",
        persistent.rtmp_frames.load(Ordering::Relaxed),
        persistent.hls_frames.load(Ordering::Relaxed)
    );
    println!(
        "churn readers (RTMP, RTMPS, RTSP/TCP, RTSP/UDP, RTSPS, SRT, HLS, RTMP of WHIP, WHEP): {readers_run}; \
         without a frame: {} {:?}; WHEP failures: {} {:?}; recordings not played back: \
         {playback_failed} of {cycle}",
        silent.len(),
        silent.iter().take(10).collect::<Vec<_>>(),
        whep_failed.len(),
        whep_failed.iter().take(10).collect::<Vec<_>>(),
    );
    ok &= stalled_cycles == 0
        && panics == 0
        && silent.is_empty()
        && whep_failed.is_empty()
        && playback_failed == 0;
    println!("verdict: {}", if ok { "PASS" } else { "FAIL" });
    for c in [
        persistent.publisher,
        persistent.rtmp_reader,
        persistent.hls_reader,
    ] {
        finish(c);
    }
    let _ = server.kill();
    let _ = server.wait();
    Ok(ok)
}
