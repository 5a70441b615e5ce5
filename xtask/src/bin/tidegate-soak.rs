//! `cargo xtask soak --minutes N`: hours of churn in minutes, and a verdict on leaks.
//!
//! One Tidegate runs with every TCP listener and SRT on loopback. Around it, for N minutes:
//! - a persistent RTMP publisher (`soak/main`) with a decoding RTMP reader and an HLS reader
//!   that must play throughout (their frame counts must keep growing);
//! - churn cycles: RTMP, RTSP and SRT publishers that come and go; RTMP, RTSP (TCP and UDP),
//!   SRT and HLS readers that join, leave, stall (SIGSTOP) and die (SIGKILL);
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
    rtsp: u16,
    rtp: u16,
    srt: u16,
    hls: u16,
    api: u16,
    metrics: u16,
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
    format!(
        "logLevel: info\nrtmpAddress: 127.0.0.1:{}\nrtspAddress: 127.0.0.1:{}\n\
         rtpAddress: 127.0.0.1:{}\nrtcpAddress: 127.0.0.1:{}\nsrtAddress: 127.0.0.1:{}\n\
         hlsAddress: 127.0.0.1:{}\napiAddress: 127.0.0.1:{}\nmetricsAddress: 127.0.0.1:{}\n\
         metrics: yes\nwebrtc: no\nplayback: no\nkeyStore: {}\n\
         paths:\n  soak/pulled:\n    source: rtsp://127.0.0.1:{}/soak/upstream\n\
         \x20   rtspTransport: tcp\n  all_others:\n{extra}",
        p.rtmp,
        p.rtsp,
        p.rtp,
        p.rtp + 1,
        p.srt,
        p.hls,
        p.api,
        p.metrics,
        dir.join("keys.db").display(),
        p.rtsp,
    )
}

/// A GET over HTTP/1.0; the body, or None.
fn http_get(port: u16, target: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {target} HTTP/1.0\r\nHost: soak\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// A `/proc` figure of the server.
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
        rtsp: free_port(),
        rtp: free_udp_pair(),
        srt: free_port(),
        hls: free_port(),
        api: free_port(),
        metrics: free_port(),
    };
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
        std::thread::sleep(Duration::from_secs(6));
        let mut readers: Vec<Child> = Vec::new();
        readers.extend(reader(&rtmp(&tag("rtmp")), &[], 20, &peers_log));
        readers.extend(reader(
            &rtsp(&tag("rtsp")),
            &["-rtsp_transport", "tcp"],
            15,
            &peers_log,
        ));
        readers.extend(reader(
            &rtsp("soak/main"),
            &["-rtsp_transport", "udp"],
            15,
            &peers_log,
        ));
        readers.extend(reader(&srt(&tag("srt"), "read"), &[], 15, &peers_log));
        readers.extend(reader(&rtmp("soak/pulled"), &[], 15, &peers_log));
        readers.extend(reader(&hls, &[], 20, &peers_log));
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
        // Samples while the churn runs.
        let mut next_sample = Instant::now();
        while cycle_start.elapsed() < Duration::from_secs(40) {
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
        for c in churn.into_iter().chain(readers).chain(stalls.drain(..)) {
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
    ok &= stalled_cycles == 0 && panics == 0;
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
