//! Release-mode benchmarks behind `cargo xtask bench [core|rtmp-fanout|rtsp-fanout|hls-readers|webrtc|...] [n...]`.
//!
//! `rtsp-fanout` runs RTMP, RTSP/TCP, RTSP/UDP and SRT readers of the same publish in one run
//! and reports each one's server CPU per delivered Gbit as a ratio to RTMP's.
//!
//! `hls-readers` runs N LL-HLS clients (blocking reload on every part, then the part) beside
//! one RTMP reader, and reports the server's CPU, the RTMP reader's frame latency (does HLS
//! load slow the publisher's other readers?) and how long blocking reloads waited; then the
//! same clients against the LL-HLS floor (`bench_hls_floor`), sized on what they got.
//!
//! `rtmp-fanout` runs the same load against Tidegate and nginx-rtmp in one invocation: one
//! publisher sends a pre-encoded clip in real time, N readers in this process play it. For each
//! server it reports the server's CPU time per delivered Gbit (from /proc), its peak RSS, and
//! the frame delivery latency (publisher send → reader arrival, matched by payload) p50/p99.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidegate_core::{CodecParams, Frame, Stream, StreamConfig, StreamDesc, Track};
use tidegate_rtmp::client::{ClientEvent, ClientSession, Mode};
use tidegate_rtmp::flv::FileTag as Tag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../bench_hls_floor.rs"]
mod bench_hls_floor;
#[path = "../bench_record.rs"]
mod bench_record;
#[path = "../bench_transcode.rs"]
mod bench_transcode;
#[path = "../bench_webrtc.rs"]
mod bench_webrtc;
#[path = "../bench_whep_floor.rs"]
mod bench_whep_floor;
#[path = "../whep_viewer.rs"]
mod whep_viewer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let (Some("__floor"), Some(port)) = (
        args.first().map(String::as_str),
        args.get(1).and_then(|p| p.parse::<u16>().ok()),
    ) {
        floor_main(port, args.get(2).is_some_and(|a| a == "av"));
    }
    if let (Some("__hls_floor"), Some(port), Some(playlist), Some(part)) = (
        args.first().map(String::as_str),
        args.get(1).and_then(|p| p.parse::<u16>().ok()),
        args.get(2).and_then(|p| p.parse::<usize>().ok()),
        args.get(3).and_then(|p| p.parse::<usize>().ok()),
    ) {
        bench_hls_floor::main(port, playlist, part);
    }
    if let (Some("__whep_floor"), Some(http), Some(udp), Some(clip)) = (
        args.first().map(String::as_str),
        args.get(1).and_then(|p| p.parse::<u16>().ok()),
        args.get(2).and_then(|p| p.parse::<u16>().ok()),
        args.get(3),
    ) {
        bench_whep_floor::main(http, udp, std::path::Path::new(clip));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    // `--mbps=N`: the clip's video bitrate (the RTSP issue's figure is 8).
    if let Some(m) = args
        .iter()
        .find_map(|a| a.strip_prefix("--mbps="))
        .and_then(|v| v.parse::<f64>().ok())
    {
        let _ = VIDEO_KBPS.set((m * 1000.0) as u32);
    }
    let _ = UDP_GRO.set(args.iter().any(|a| a == "--udp-gro"));
    let which = args.first().map(String::as_str).unwrap_or("all");
    if which == "core" || which == "all" {
        core_fanout(&rt);
    }
    type Bench = fn(&tokio::runtime::Runtime, &[usize]) -> Result<(), String>;
    let benches: [(&str, &[usize], Bench); 9] = [
        ("edge", &[200], edge),
        ("record", &[20], bench_record::record),
        ("transcode", &[50], bench_transcode::transcode),
        ("rtmp-idle", &[10_000], rtmp_idle),
        ("hls-readers", &[0, 200], hls_readers),
        ("webrtc", &[1, 100, 300], bench_webrtc::webrtc),
        ("webrtc-aiortc", &[1, 20], webrtc_aiortc),
        ("rtsp-fanout", &[100, 1000], rtsp_fanout),
        ("rtmp-fanout", &[100, 1000], rtmp_fanout),
    ];
    for (name, defaults, run) in benches {
        if which != name && which != "all" {
            continue;
        }
        let given: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
        let counts = if given.is_empty() || which == "all" {
            defaults.to_vec()
        } else {
            given
        };
        if let Err(e) = run(&rt, &counts) {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// core fan-out

async fn fanout(readers: usize, frames: u64, size: usize) -> (f64, u64, u64) {
    let desc = StreamDesc {
        tracks: vec![Track {
            id: 0,
            params: CodecParams::H264 {
                sps: Bytes::from_static(b"\x67"),
                pps: Bytes::from_static(b"\x68"),
            },
            clock_rate: 90_000,
        }],
    };
    let stream = Arc::new(Stream::new(desc, StreamConfig::default()));
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let mut r = stream.subscribe();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while r.recv().await.is_ok() {
                n += 1;
            }
            (n, r.skips())
        }));
    }
    let payload = Bytes::from(vec![0u8; size]);
    let start = Instant::now();
    for i in 0..frames {
        stream.write(Frame {
            track: 0,
            pts: i as i64 * 3000,
            dts: i as i64 * 3000,
            keyframe: i % 30 == 0,
            data: payload.clone(),
            received: Instant::now(),
            params: None,
        });
        if i % 32 == 0 {
            tokio::task::yield_now().await;
        }
    }
    stream.close();
    let (mut delivered, mut skips) = (0, 0);
    for t in tasks {
        if let Ok((n, s)) = t.await {
            delivered += n;
            skips += s;
        }
    }
    (start.elapsed().as_secs_f64(), delivered, skips)
}

fn core_fanout(rt: &tokio::runtime::Runtime) {
    println!("core fan-out (one stream, frames of 5 kB, written at full speed; in-process)");
    println!(
        "{:>8} {:>10} {:>16} {:>14} {:>8}",
        "readers", "frames", "deliveries/s", "ns/delivery", "skips"
    );
    for readers in [1usize, 100, 1000] {
        let frames = 20_000;
        let (secs, delivered, skips) = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(120), fanout(readers, frames, 5000)).await
            })
            .unwrap_or((f64::NAN, 0, 0));
        println!(
            "{readers:>8} {frames:>10} {:>16.0} {:>14.1} {skips:>8}",
            delivered as f64 / secs,
            secs * 1e9 / delivered.max(1) as f64
        );
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// RTMP fan-out against nginx-rtmp

fn read_flv(path: &Path) -> Result<Vec<Tag>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    tidegate_rtmp::flv::read_file(&data).map_err(|e| e.to_string())
}

/// The video bitrate of the clip, in kbit/s: 1000 unless `--mbps=N` was given.
static VIDEO_KBPS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// `--udp-gro`: the RTSP/UDP readers take GSO sends whole (`UDP_GRO`), as a reader on another
/// host spares the server: on loopback the receiving side's work runs on the sender's CPU.
static UDP_GRO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// One read from a UDP reader's RTP socket: the bytes, and the datagram size when the kernel
/// handed over a GSO send whole (`UDP_GRO`).
async fn recv_gro(
    sock: &tokio::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<usize>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    loop {
        sock.readable().await?;
        let r = sock.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!(i32);
            let msg = recvmsg::<SockaddrStorage>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )?;
            let seg = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::UdpGroSegments(n) => usize::try_from(n).ok(),
                    _ => None,
                })
            });
            Ok((msg.bytes, seg))
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

fn video_kbps() -> u32 {
    *VIDEO_KBPS.get().unwrap_or(&1000)
}

fn make_clip(dir: &Path) -> Result<PathBuf, String> {
    let kbps = video_kbps();
    let clip = if kbps == 1000 {
        dir.join("clip.flv")
    } else {
        dir.join(format!("clip-{kbps}k.flv"))
    };
    let (rate, buf) = (format!("{kbps}k"), format!("{}k", kbps / 2));
    if clip.exists() {
        return Ok(clip);
    }
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=48000",
            "-t",
            "10",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "baseline",
        ])
        .args([
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-b:v",
            &rate,
            "-maxrate",
            &rate,
            "-bufsize",
            &buf,
        ])
        .args(["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-f", "flv"])
        .arg(&clip)
        .status()
        .map_err(|e| format!("ffmpeg: {e}"))?;
    if !status.success() {
        return Err("ffmpeg could not make the clip".into());
    }
    Ok(clip)
}

fn payload_key(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// A process's CPU time at one moment: per thread, in nanoseconds (`/proc/PID/task/TID/
/// schedstat`), and the process's total in clock ticks (`/proc/PID/stat`, which also counts
/// threads that have ended). Subtracting two gives the CPU seconds between them.
///
/// The ticks alone are 10 ms steps: at 100 readers a server uses about 200 of them in a 10 s
/// window, so one tick more or less moved a result by half a percent, and a rounding of
/// both ends by up to 1 %. The threads' nanoseconds are exact. A thread that ended between
/// the two moments takes its time with it: tokio's blocking-pool threads end after 10 idle
/// seconds, inside most windows, having done nothing in it. So an ended thread counts for
/// nothing, unless the ticks say the process used more than the threads' sum by over 3
/// ticks (the ended thread did work in the window): the ticks are used then.
#[derive(Clone, Debug, Default)]
pub struct CpuTime {
    threads: std::collections::HashMap<u32, u64>,
    ticks: f64,
}

impl std::ops::Sub for CpuTime {
    type Output = f64;
    fn sub(self, before: CpuTime) -> f64 {
        &self - &before
    }
}

impl std::ops::Sub for &CpuTime {
    type Output = f64;
    fn sub(self, before: &CpuTime) -> f64 {
        let ticks = (self.ticks - before.ticks) / 100.0;
        if self.threads.is_empty() {
            return ticks;
        }
        let ns: u64 = self
            .threads
            .iter()
            .map(|(t, n)| n.saturating_sub(before.threads.get(t).copied().unwrap_or(0)))
            .sum();
        let threads = ns as f64 / 1e9;
        let ended = before.threads.keys().any(|t| !self.threads.contains_key(t));
        if ended && ticks > threads + 0.03 {
            return ticks;
        }
        threads
    }
}

/// CPU time (user + system) of a process, from /proc (see [`CpuTime`]).
fn cpu_seconds(pid: u32) -> CpuTime {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let mut threads = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            if let Some(ns) = ns {
                threads.insert(tid, ns);
            }
        }
    }
    CpuTime { threads, ticks }
}

/// The CPU time of several processes together.
fn cpu_of(pids: &[u32]) -> CpuTime {
    let mut all = CpuTime::default();
    for p in pids {
        let c = cpu_seconds(*p);
        all.threads.extend(c.threads);
        all.ticks += c.ticks;
    }
    all
}

/// The resident set now (VmRSS), in KiB.
fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The repository root and the bench's scratch directory (made).
fn bench_dirs() -> Result<(PathBuf, PathBuf), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dir = std::env::temp_dir().join("tidegate-bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok((root, dir))
}

/// The repository root, the bench's scratch directory and the clip's FLV tags.
fn setup() -> Result<(PathBuf, PathBuf, Arc<Vec<Tag>>), String> {
    let (root, dir) = bench_dirs()?;
    let clip = make_clip(&dir)?;
    let tags = Arc::new(read_flv(&clip)?);
    Ok((root, dir, tags))
}

/// An even UDP port whose next two are free too (RTP, RTCP, and the SRT listener above them).
fn free_udp_pair() -> u16 {
    for _ in 0..100 {
        let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(p) = s.local_addr().map(|a| a.port()) else {
            continue;
        };
        let p = p & !1;
        drop(s);
        if p < 60000 && (p..p + 3).all(|q| std::net::UdpSocket::bind(("127.0.0.1", q)).is_ok()) {
            return p;
        }
    }
    40000
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

struct Server {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tidegate(root: &Path, dir: &Path, hls_port: Option<u16>) -> Result<Server, String> {
    start_tidegate_with(root, dir, hls_port, None)
}

/// With `rtsp`: (RTSP TCP port, RTP UDP port, RTCP UDP port).
fn start_tidegate_with(
    root: &Path,
    dir: &Path,
    hls_port: Option<u16>,
    rtsp: Option<(u16, u16, u16)>,
) -> Result<Server, String> {
    let port = free_port();
    let conf = dir.join("tidegate.yml");
    let mut hls = match hls_port {
        Some(p) => format!("hls: yes\nhlsAddress: 127.0.0.1:{p}\n"),
        None => "hls: no\n".to_string(),
    };
    match rtsp {
        Some((t, rtp, rtcp)) => hls.push_str(&format!(
            "rtspAddress: 127.0.0.1:{t}\nrtpAddress: 127.0.0.1:{rtp}\nrtcpAddress: 127.0.0.1:{rtcp}\n"
        )),
        None => hls.push_str("rtsp: no\n"),
    }
    // The SRT listener (readers in `rtsp-fanout`) two ports above RTP (see `free_udp_pair`).
    match rtsp {
        Some((_, rtp, _)) => hls.push_str(&format!("srtAddress: 127.0.0.1:{}\n", rtp + 2)),
        None => hls.push_str("srt: no\n"),
    }
    std::fs::write(
        &conf,
        format!(
            "logLevel: warn\napi: no\nmetrics: no\nrtmpAddress: 127.0.0.1:{port}\n{hls}webrtc: no\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = spawn_tidegate(root, &conf, Stdio::null())?;
    Ok(Server {
        name: "tidegate",
        child,
        port,
    })
}

/// The release binary on `conf`, its log to `stderr`.
/// The release build of the workspace, or the binary `TIDEGATE_BENCH_SERVER` names (to measure
/// an earlier build beside the current one).
fn spawn_tidegate(root: &Path, conf: &Path, stderr: Stdio) -> Result<Child, String> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = std::env::var_os("TIDEGATE_BENCH_SERVER")
        .map_or_else(|| target.join("release/tidegate"), PathBuf::from);
    Command::new(&bin)
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| {
            format!(
                "{}: {e} (build it with cargo build --release)",
                bin.display()
            )
        })
}

fn start_nginx(dir: &Path) -> Result<Server, String> {
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\nworker_rlimit_nofile 65536;\n\
         events {{ worker_connections 8192; }}\n\
         rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n application live {{ live on; record off; }} }} }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join("nginx-stderr.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e}"))?;
    Ok(Server {
        name: "nginx-rtmp",
        child,
        port,
    })
}

async fn wait_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {port} after 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rtmp_connect(
    port: u16,
    mode: Mode,
) -> Result<(TcpStream, ClientSession, Vec<ClientEvent>), String> {
    rtmp_connect_to(port, mode, "bench").await
}

/// An RTMP client session on `live/<stream>`, started.
async fn rtmp_connect_to(
    port: u16,
    mode: Mode,
    stream: &str,
) -> Result<(TcpStream, ClientSession, Vec<ClientEvent>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let tc = format!("rtmp://127.0.0.1:{port}/live");
    let mut session = ClientSession::new(mode, "live", &tc, stream);
    let mut buf = vec![0u8; 64 * 1024];
    let mut early = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = session.take_output();
        s.write_all(&out).await.map_err(|e| e.to_string())?;
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Started => return Ok((s, session, early)),
                ClientEvent::Error { code, .. } => return Err(code),
                m => early.push(m),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut buf))
            .await
            .map_err(|_| "start timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        session.feed(&buf[..n]).map_err(|e| e.to_string())?;
    }
}

#[derive(Default)]
struct Totals {
    bytes: AtomicU64,
    video: AtomicU64,
}

struct RunResult {
    cpu_per_gbit: f64,
    cpu_share: f64,
    rss_mb: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Audio messages' latency (RTMP readers only; NaN otherwise).
    audio_p50_ms: f64,
    audio_p99_ms: f64,
    gbits: f64,
    readers_ok: usize,
}

/// What the readers of a load run speak.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ReaderKind {
    Rtmp,
    /// RTSP on this port, TCP-interleaved or UDP.
    Rtsp {
        port: u16,
        udp: bool,
    },
    /// SRT (caller, `read:live/bench`) to this UDP port.
    Srt {
        port: u16,
    },
}

/// Publishes the clip to `live/<stream>` in real time, looped, until `stop` is 1. With
/// `sent`, records when each video payload went out (for latency).
async fn publish_clip(
    port: u16,
    stream: &str,
    tags: Arc<Vec<Tag>>,
    sent: Option<Arc<Mutex<HashMap<u64, Instant>>>>,
    stop: Arc<AtomicU64>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let (mut ps, mut psession, _) = rtmp_connect_to(port, Mode::Publish, stream).await?;
    Ok(tokio::spawn(async move {
        let start = Instant::now();
        let clip_ms = tags.last().map_or(1, |t| t.timestamp + 40);
        let mut lap = 0u32;
        let mut buf = vec![0u8; 4096];
        'outer: loop {
            for t in tags.iter() {
                let ts = lap * clip_ms + t.timestamp;
                if lap > 0 && t.type_id == 18 {
                    continue;
                }
                let due = start + Duration::from_millis(u64::from(ts));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                if stop.load(Ordering::Relaxed) == 1 {
                    break 'outer;
                }
                // AAC frames of a steady tone repeat: make each one unique (its last 4 bytes
                // numbered; nothing decodes them) so that its latency can be matched.
                let mut body = t.body.clone();
                if t.type_id == 8 && body.len() > 6 && body.get(1) == Some(&1) {
                    let mut b = body.to_vec();
                    let at = b.len() - 4;
                    b[at..].copy_from_slice(&(ts ^ 0x5a5a_0000).to_be_bytes());
                    body = Bytes::from(b);
                }
                if let (8 | 9, Some(sent)) = (t.type_id, &sent) {
                    sent.lock()
                        .map(|mut m| m.insert(payload_key(&body), Instant::now()))
                        .ok();
                }
                psession.send_media(t.type_id, ts, &body);
                let out = psession.take_output();
                if ps.write_all(&out).await.is_err() {
                    break 'outer;
                }
                // Drain acknowledgements so the server never stalls on our window.
                while let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, ps.read(&mut buf)).await
                {
                    if n == 0 {
                        break 'outer;
                    }
                    let _ = psession.feed(&buf[..n]);
                }
            }
            lap += 1;
        }
    }))
}

async fn run_load(
    server: &Server,
    tags: Arc<Vec<Tag>>,
    readers: usize,
    seconds: u64,
) -> Result<RunResult, String> {
    run_load_with(server, tags, readers, seconds, ReaderKind::Rtmp).await
}

async fn run_load_with(
    server: &Server,
    tags: Arc<Vec<Tag>>,
    readers: usize,
    seconds: u64,
    kind: ReaderKind,
) -> Result<RunResult, String> {
    wait_port(server.port).await?;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    // Publisher: the clip in real time, looped.
    let stop = Arc::new(AtomicU64::new(0));
    let publisher = publish_clip(
        server.port,
        "bench",
        tags.clone(),
        Some(sent.clone()),
        stop.clone(),
    )
    .await?;
    // Let the stream start (the first keyframe reaches the server).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let totals = Arc::new(Totals::default());
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let audio_latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let measuring = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let port = server.port;
    for _ in 0..readers {
        let totals = totals.clone();
        let sent = sent.clone();
        let latencies = latencies.clone();
        let audio_latencies = audio_latencies.clone();
        let measuring = measuring.clone();
        let stop = stop.clone();
        if let ReaderKind::Rtsp { port, udp } = kind {
            handles.push(tokio::spawn(rtsp_reader(
                port, udp, totals, latencies, measuring, stop,
            )));
            continue;
        }
        if let ReaderKind::Srt { port } = kind {
            handles.push(tokio::spawn(srt_reader(port, totals, measuring, stop)));
            continue;
        }
        handles.push(tokio::spawn(rtmp_play_reader(
            port,
            totals,
            sent,
            latencies,
            audio_latencies,
            measuring,
            stop,
        )));
    }
    // Warm-up while readers connect, then a measured window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    measuring.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(2, Ordering::Relaxed);
    let cpu1 = cpu_seconds(pid);
    let wall = t0.elapsed().as_secs_f64();
    stop.store(1, Ordering::Relaxed);
    let mut ok = 0;
    for h in handles {
        if let Ok(true) = h.await {
            ok += 1;
        }
    }
    let _ = publisher.await;
    let bytes = totals.bytes.load(Ordering::Relaxed) as f64;
    let gbits = bytes * 8.0 / 1e9;
    let sorted = |l: &Mutex<Vec<f64>>| {
        let mut v = l.lock().map(|l| l.clone()).unwrap_or_default();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let (lat, alat) = (sorted(&latencies), sorted(&audio_latencies));
    let quantile = |v: &[f64], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let pct = |p: f64| quantile(&lat, p);
    Ok(RunResult {
        cpu_per_gbit: (&cpu1 - &cpu0) / gbits.max(1e-9),
        cpu_share: (&cpu1 - &cpu0) / wall,
        rss_mb: peak_rss_mb(pid),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        audio_p50_ms: quantile(&alat, 0.5),
        audio_p99_ms: quantile(&alat, 0.99),
        gbits: gbits / wall,
        readers_ok: ok,
    })
}

/// An RTMP player of `port`'s `bench` stream until `stop`: bytes and video frames counted
/// while `measuring` is 1, per-message latency matched against `sent`. False if it could not
/// play.
async fn rtmp_play_reader(
    port: u16,
    totals: Arc<Totals>,
    sent: Arc<Mutex<HashMap<u64, Instant>>>,
    latencies: Arc<Mutex<Vec<f64>>>,
    audio_latencies: Arc<Mutex<Vec<f64>>>,
    measuring: Arc<AtomicU64>,
    stop: Arc<AtomicU64>,
) -> bool {
    let Ok((mut s, mut session, _)) = rtmp_connect(port, Mode::Play).await else {
        return false;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut mine = Vec::new();
    let mut mine_audio = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 {
        let n = match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => continue,
        };
        let now = Instant::now();
        if measuring.load(Ordering::Relaxed) == 1 {
            totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        if session.feed(&buf[..n]).is_err() {
            break;
        }
        let out = session.take_output();
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            break;
        }
        while let Some(ev) = session.poll_event() {
            if let ClientEvent::Media {
                type_id: type_id @ (8 | 9),
                payload,
                ..
            } = ev
            {
                if measuring.load(Ordering::Relaxed) == 1 {
                    if type_id == 9 {
                        totals.video.fetch_add(1, Ordering::Relaxed);
                    }
                    let key = payload_key(&payload);
                    if let Some(t0) = sent.lock().ok().and_then(|m| m.get(&key).copied()) {
                        let ms = now.duration_since(t0).as_secs_f64() * 1000.0;
                        if type_id == 9 {
                            mine.push(ms);
                        } else {
                            mine_audio.push(ms);
                        }
                    }
                }
            }
        }
    }
    latencies.lock().map(|mut l| l.extend(mine)).ok();
    audio_latencies
        .lock()
        .map(|mut l| l.extend(mine_audio))
        .ok();
    true
}

// ---------------------------------------------------------------------------------------------
// Edges: the origin's cost as readers move to edges

/// An edge of the origin whose RTSP listener is on `origin_rtsp`: every path pulled on demand.
fn start_edge(root: &Path, dir: &Path, i: usize, origin_rtsp: u16) -> Result<Server, String> {
    let port = free_port();
    let conf = dir.join(format!("edge-{i}.yml"));
    std::fs::write(
        &conf,
        format!(
            "logLevel: warn\napi: no\nmetrics: no\nrtmpAddress: 127.0.0.1:{port}\nhls: no\nrtsp: no\nwebrtc: no\nsrt: no\n\
             paths:\n  '~^(.+)$':\n    source: rtsp://127.0.0.1:{origin_rtsp}/$G1\n    rtspTransport: tcp\n    sourceOnDemand: yes\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = spawn_tidegate(root, &conf, Stdio::null())?;
    Ok(Server {
        name: "edge",
        child,
        port,
    })
}

struct EdgeResult {
    origin_cpu: f64,
    origin_rss_mb: f64,
    edges_cpu: f64,
    gbits: f64,
    p50_ms: f64,
    p99_ms: f64,
    readers_ok: usize,
}

/// The clip published to `origin`, `readers` RTMP players spread over `ports` in turn; the
/// origin's and the edges' CPU over the measured window.
async fn run_edges(
    origin: &Server,
    edges: &[Server],
    ports: &[u16],
    tags: Arc<Vec<Tag>>,
    readers: usize,
    seconds: u64,
) -> Result<EdgeResult, String> {
    wait_port(origin.port).await?;
    for e in edges {
        wait_port(e.port).await?;
    }
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicU64::new(0));
    let publisher = publish_clip(
        origin.port,
        "bench",
        tags.clone(),
        Some(sent.clone()),
        stop.clone(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let totals = Arc::new(Totals::default());
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let audio: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let measuring = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for i in 0..readers {
        handles.push(tokio::spawn(rtmp_play_reader(
            ports[i % ports.len()],
            totals.clone(),
            sent.clone(),
            latencies.clone(),
            audio.clone(),
            measuring.clone(),
            stop.clone(),
        )));
    }
    // Warm-up: the edges start their pulls on their first reader.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cpu = cpu_of;
    let edge_pids: Vec<u32> = edges.iter().map(|e| e.child.id()).collect();
    let (o0, e0) = (cpu(&[origin.child.id()]), cpu(&edge_pids));
    let t0 = Instant::now();
    measuring.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(2, Ordering::Relaxed);
    let (o1, e1) = (cpu(&[origin.child.id()]), cpu(&edge_pids));
    let wall = t0.elapsed().as_secs_f64();
    stop.store(1, Ordering::Relaxed);
    let mut ok = 0;
    for h in handles {
        if let Ok(true) = h.await {
            ok += 1;
        }
    }
    let _ = publisher.await;
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(EdgeResult {
        origin_cpu: (o1 - o0) / wall,
        origin_rss_mb: peak_rss_mb(origin.child.id()),
        edges_cpu: (e1 - e0) / wall,
        gbits: totals.bytes.load(Ordering::Relaxed) as f64 * 8.0 / 1e9 / wall,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        readers_ok: ok,
    })
}

/// `edge [N]`: the origin's CPU when 1, 2 and 4 edges each serve N RTMP players (default 200),
/// beside the same 4 x N players on the origin alone. An edge pulls each path once over RTSP,
/// so the origin's cost should stay flat as players move to edges.
fn edge(rt: &tokio::runtime::Runtime, counts: &[usize]) -> Result<(), String> {
    let (root, dir, tags) = setup()?;
    let per_edge = counts.first().copied().unwrap_or(200);
    let seconds = 10;
    println!(
        "Edges: origin CPU with 1, 2, 4 edges of {per_edge} RTMP players each, beside {} players on the origin alone, {seconds} s measured",
        4 * per_edge
    );
    println!(
        "{:>6} {:>8} {:>11} {:>10} {:>11} {:>9} {:>16} {:>8}",
        "edges",
        "players",
        "origin CPU",
        "origin RSS",
        "edges CPU",
        "Gbit/s",
        "video p50/p99 ms",
        "playing"
    );
    for edges in [0usize, 1, 2, 4] {
        let (rtsp, rtp) = (free_port(), free_udp_pair());
        let origin = start_tidegate_with(&root, &dir, None, Some((rtsp, rtp, rtp + 1)))?;
        let edge_servers = (0..edges)
            .map(|i| start_edge(&root, &dir, i, rtsp))
            .collect::<Result<Vec<_>, _>>()?;
        let (ports, players): (Vec<u16>, usize) = if edges == 0 {
            (vec![origin.port], 4 * per_edge)
        } else {
            (
                edge_servers.iter().map(|e| e.port).collect(),
                edges * per_edge,
            )
        };
        let r = rt.block_on(run_edges(
            &origin,
            &edge_servers,
            &ports,
            tags.clone(),
            players,
            seconds,
        ))?;
        println!(
            "{edges:>6} {players:>8} {:>10.1}% {:>7.1} MB {:>10.1}% {:>9.3} {:>7.2} / {:<6.2} {:>8}",
            r.origin_cpu * 100.0,
            r.origin_rss_mb,
            r.edges_cpu * 100.0,
            r.gbits,
            r.p50_ms,
            r.p99_ms,
            r.readers_ok
        );
        drop(edge_servers);
        drop(origin);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The loopback floor: what any RTMP server must at least spend here

/// A minimal RTMP server in its own process (this binary, `__floor <port>`): it accepts the
/// same publisher and players, and from the publisher's thread writes each message's chunks,
/// made once, to every player with one blocking `write` each. No ring, no tasks, no queues,
/// no coalescing: the cost of the system calls and of loopback itself, which every server pays.
/// With `av` ("floor-av"), an audio message waits for the next video message and leaves in the
/// same write: Tidegate's write pattern (`audioCoalesce`), at the floor's cost.
fn floor_main(port: u16, av: bool) -> ! {
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::exit(1);
        }
    };
    let players: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        let players = players.clone();
        std::thread::spawn(move || floor_conn(s, &players, av));
    }
    std::process::exit(0)
}

fn floor_conn(mut s: std::net::TcpStream, players: &Mutex<Vec<std::net::TcpStream>>, av: bool) {
    use std::io::{Read, Write};
    use tidegate_rtmp::session::{Event, ServerSession, CSID_AUDIO, CSID_VIDEO, MEDIA_STREAM_ID};
    let _ = s.set_nodelay(true);
    let mut session = ServerSession::new(0);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = bytes::BytesMut::new();
    let mut out_sent = true;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if session.feed(&buf[..n]).is_err() {
            return;
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                Event::Publish { .. } => session.accept_publish(),
                Event::Play { .. } => {
                    session.accept_play();
                    if s.write_all(&session.take_output()).is_err() {
                        return;
                    }
                    if let (Ok(w), Ok(mut p)) = (s.try_clone(), players.lock()) {
                        p.push(w);
                    }
                    // The player only sends acknowledgements from now on.
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    return;
                }
                Event::Media {
                    type_id,
                    timestamp,
                    payload,
                } if type_id == 8 || type_id == 9 => {
                    // floor-av: audio stays in `out` until a video message follows it.
                    if !av || out_sent {
                        out.clear();
                    }
                    let csid = if type_id == 9 { CSID_VIDEO } else { CSID_AUDIO };
                    tidegate_rtmp::chunk::write_message(
                        &mut out,
                        csid,
                        timestamp,
                        type_id,
                        MEDIA_STREAM_ID,
                        &payload,
                        tidegate_rtmp::session::OUT_CHUNK_SIZE,
                    );
                    out_sent = !av || type_id == 9;
                    if !out_sent {
                        continue;
                    }
                    if let Ok(mut p) = players.lock() {
                        p.retain_mut(|w| w.write_all(&out).is_ok());
                    }
                }
                _ => {}
            }
        }
        let reply = session.take_output();
        if !reply.is_empty() && s.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Whether `name` is measured: the environment variable `var` lists the chosen ones
/// (comma-separated); unset, all are.
fn chosen(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |o| o.split(',').any(|x| x == name))
}

fn start_floor(av: bool) -> Result<Server, String> {
    let port = free_port();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args(["__floor", &port.to_string(), if av { "av" } else { "" }])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("floor: {e}"))?;
    Ok(Server {
        name: if av { "floor-av" } else { "floor" },
        child,
        port,
    })
}

fn rtmp_fanout(rt: &tokio::runtime::Runtime, counts: &[usize]) -> Result<(), String> {
    let (root, dir, tags) = setup()?;
    let seconds = 10;
    println!(
        "RTMP fan-out: 640x360 30 fps H.264 {:.1} Mbit/s + AAC 128 kbit/s, {seconds} s measured per run",
        f64::from(video_kbps()) / 1000.0
    );
    println!(
        "{:>8} {:>11} {:>9} {:>11} {:>10} {:>8} {:>16} {:>16} {:>8}",
        "readers",
        "server",
        "Gbit/s",
        "CPU s/Gbit",
        "CPU share",
        "RSS MB",
        "video p50/p99 ms",
        "audio p50/p99 ms",
        "readers"
    );
    // TIDEGATE_BENCH_SERVERS=tidegate,floor-av measures only those (for A/B runs of two
    // builds; the ratios then print only for the servers measured).
    let servers: Vec<&str> = ["tidegate", "nginx-rtmp", "floor", "floor-av"]
        .into_iter()
        .filter(|k| chosen("TIDEGATE_BENCH_SERVERS", k))
        .collect();
    // TIDEGATE_BENCH_ROUNDS=K runs every server K times per size, alternating, and prints the
    // median of each figure and of each ratio: on a shared machine the hour moves a figure by a
    // fifth or more, so one run per server can put a ratio on either side of a goal.
    let rounds = rounds();
    let mut all: Runs = Vec::new();
    for &n in counts {
        let mut per_round: Vec<Vec<(usize, f64)>> = Vec::new();
        for _ in 0..rounds {
            let mut results = Vec::new();
            for &which in &servers {
                let server = match which {
                    "tidegate" => start_tidegate(&root, &dir, None)?,
                    "nginx-rtmp" => start_nginx(&dir)?,
                    _ => start_floor(which == "floor-av")?,
                };
                let r = rt.block_on(run_load(&server, tags.clone(), n, seconds))?;
                println!(
                    "{n:>8} {:>11} {:>9.3} {:>11.3} {:>9.1}% {:>8.1} {:>7.2} / {:<6.2} {:>7.2} / {:<6.2} {:>8}",
                    server.name,
                    r.gbits,
                    r.cpu_per_gbit,
                    r.cpu_share * 100.0,
                    r.rss_mb,
                    r.p50_ms,
                    r.p99_ms,
                    r.audio_p50_ms,
                    r.audio_p99_ms,
                    r.readers_ok
                );
                match all.iter_mut().find(|(m, w, _)| *m == n && *w == which) {
                    Some((_, _, v)) => v.push((r.cpu_share, r.cpu_per_gbit)),
                    None => all.push((n, which, vec![(r.cpu_share, r.cpu_per_gbit)])),
                }
                results.push((which, r.cpu_per_gbit));
                drop(server);
            }
            // Every ratio whose two servers ran. floor-av writes as Tidegate does: what any
            // server with one write per video frame can reach here, against nginx-rtmp.
            let got = |name: &str| results.iter().find(|(w, _)| *w == name).map(|r| r.1);
            let ratios: Vec<(usize, f64)> = RATIOS
                .iter()
                .enumerate()
                .filter_map(|(i, (a, b))| Some((i, got(a)? / got(b)?)))
                .collect();
            if !ratios.is_empty() {
                let text: Vec<String> = ratios
                    .iter()
                    .map(|&(i, r)| format!("{} / {} = {r:.2}", RATIOS[i].0, RATIOS[i].1))
                    .collect();
                println!("{n:>8} {:>11} CPU per Gbit: {}", "ratio", text.join(", "));
            }
            per_round.push(ratios);
        }
        if rounds > 1 {
            for &which in &servers {
                if let Some((_, _, v)) = all.iter().find(|(m, w, _)| *m == n && *w == which) {
                    let per_gbit: Vec<f64> = v.iter().map(|x| x.1).collect();
                    println!(
                        "{n:>8} {which:>11} median of {rounds}: {:.3} CPU s per Gbit (runs {})",
                        median(&per_gbit),
                        spread(&per_gbit, 3),
                    );
                }
            }
            let medians: Vec<String> = (0..RATIOS.len())
                .filter_map(|i| {
                    let col: Vec<f64> = per_round
                        .iter()
                        .filter_map(|r| r.iter().find(|x| x.0 == i).map(|x| x.1))
                        .collect();
                    (!col.is_empty()).then(|| {
                        format!(
                            "{} / {} = {:.2} ({})",
                            RATIOS[i].0,
                            RATIOS[i].1,
                            median(&col),
                            spread(&col, 2)
                        )
                    })
                })
                .collect();
            if !medians.is_empty() {
                println!(
                    "{n:>8} {:>11} median of {rounds} rounds: {}",
                    "ratio",
                    medians.join(", ")
                );
            }
        }
    }
    // With one reader among the sizes: each server's fixed cost (its CPU share with one
    // reader) and what each further reader adds, from the medians. At small sizes the fixed
    // cost is most of a ratio; per reader is where the write pattern shows.
    if counts.contains(&1) {
        for &n in counts.iter().filter(|&&n| n > 1) {
            for &which in &servers {
                let share = |m: usize| {
                    all.iter()
                        .find(|(k, w, _)| *k == m && *w == which)
                        .map(|(_, _, v)| median(&v.iter().map(|x| x.0).collect::<Vec<_>>()))
                };
                if let (Some(one), Some(many)) = (share(1), share(n)) {
                    println!(
                        "{n:>8} {which:>11} fixed (1 reader) {:.3} % of a core, each further reader {:.4} %",
                        one * 100.0,
                        (many - one) / (n - 1) as f64 * 100.0,
                    );
                }
            }
        }
    }
    Ok(())
}

/// The ratios the RTMP fan-out prints, when both servers ran (CPU s per Gbit).
const RATIOS: [(&str, &str); 5] = [
    ("tidegate", "nginx-rtmp"),
    ("tidegate", "floor"),
    ("nginx-rtmp", "floor"),
    ("floor-av", "nginx-rtmp"),
    ("tidegate", "floor-av"),
];

/// Per (readers, server): the CPU share and the CPU s per Gbit of each round.
type Runs<'a> = Vec<(usize, &'a str, Vec<(f64, f64)>)>;

/// `TIDEGATE_BENCH_ROUNDS` (default 1): how many times each server runs per size.
fn rounds() -> usize {
    std::env::var("TIDEGATE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&k: &usize| (1..=50).contains(&k))
        .unwrap_or(1)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The runs' figures, in run order, for the reader to judge the spread.
fn spread(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Memory per idle RTMP reader

/// `rtmp-idle N`: a publisher sends the clip's first second (two keyframes) and then nothing,
/// its connection kept open; N players connect and play (each gets the GOP, then waits). The
/// server's RSS before and after, per player.
fn rtmp_idle(rt: &tokio::runtime::Runtime, counts: &[usize]) -> Result<(), String> {
    let (root, dir, tags) = setup()?;
    println!(
        "RTMP idle readers: memory per player of one stream (publisher idle after 1 s of clip)"
    );
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>16}",
        "readers", "playing", "RSS before", "RSS after", "per reader"
    );
    for &n in counts {
        let (port, api) = (free_port(), free_port());
        let conf = dir.join("tidegate-idle.yml");
        std::fs::write(
            &conf,
            format!(
                "logLevel: warn\napiAddress: 127.0.0.1:{api}\nmetrics: no\nrtmpAddress: 127.0.0.1:{port}\nhls: no\nrtsp: no\nwebrtc: no\nsrt: no\nreadTimeout: 300s\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let server = Server {
            name: "tidegate",
            child: spawn_tidegate(&root, &conf, Stdio::null())?,
            port,
        };
        let tags = tags.clone();
        let r = rt.block_on(async move {
            wait_port(port).await?;
            let (mut ps, mut psession, _) = rtmp_connect_to(port, Mode::Publish, "bench").await?;
            for t in tags.iter().filter(|t| t.timestamp < 1100) {
                psession.send_media(t.type_id, t.timestamp, &t.body);
                let out = psession.take_output();
                ps.write_all(&out).await.map_err(|e| e.to_string())?;
            }
            // The stream is ready (the API says so) before the baseline is taken.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let mut s = tokio::io::BufStream::new(
                    TcpStream::connect(("127.0.0.1", api))
                        .await
                        .map_err(|e| e.to_string())?,
                );
                if let Ok((200, body)) = http_get(&mut s, "/v3/paths/get/live/bench").await {
                    if String::from_utf8_lossy(&body).contains("\"ready\":true") {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    return Err("the stream is not ready after 10 s".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let pid = server.child.id();
            let before = rss_kib(pid);
            let playing = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicU64::new(0));
            let received = Arc::new(AtomicU64::new(0));
            let mut handles = Vec::new();
            // In waves, so that the listen backlog never overflows.
            for wave in (0..n).collect::<Vec<_>>().chunks(200) {
                let mut joins = Vec::new();
                for _ in wave {
                    let (playing, stop, received) =
                        (playing.clone(), stop.clone(), received.clone());
                    joins.push(tokio::spawn(async move {
                        let Ok((mut s, _, _)) = rtmp_connect(port, Mode::Play).await else {
                            return None;
                        };
                        playing.fetch_add(1, Ordering::Relaxed);
                        Some(tokio::spawn(async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            while stop.load(Ordering::Relaxed) == 0 {
                                match tokio::time::timeout(
                                    Duration::from_millis(500),
                                    s.read(&mut buf),
                                )
                                .await
                                {
                                    Ok(Ok(0)) | Ok(Err(_)) => break,
                                    Ok(Ok(n)) => {
                                        received.fetch_add(n as u64, Ordering::Relaxed);
                                    }
                                    Err(_) => {}
                                }
                            }
                        }))
                    }));
                }
                for j in joins {
                    if let Ok(Some(h)) = j.await {
                        handles.push(h);
                    }
                }
            }
            // Once the players' GOP bursts are all in (nothing received for 500 ms, within
            // 60 s), what is left is what an idle player costs.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut last = u64::MAX;
            loop {
                let now = received.load(Ordering::Relaxed);
                if now == last || Instant::now() > deadline {
                    break;
                }
                last = now;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let after = rss_kib(pid);
            stop.store(1, Ordering::Relaxed);
            for h in handles {
                let _ = h.await;
            }
            drop(ps);
            drop(server);
            Ok::<_, String>((playing.load(Ordering::Relaxed), before, after))
        })?;
        let (playing, before, after) = r;
        println!(
            "{n:>8} {playing:>10} {:>9.1} MB {:>9.1} MB {:>12.1} KiB",
            before / 1024.0,
            after / 1024.0,
            (after - before) / playing.max(1) as f64
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HLS readers: N LL-HLS clients polling with blocking reload beside one RTMP reader

#[derive(Default)]
struct HlsTotals {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    /// Playlists and parts answered 200, and their bytes (the floor is sized on them).
    playlists: AtomicU64,
    playlist_bytes: AtomicU64,
    parts: AtomicU64,
    part_bytes: AtomicU64,
}

/// One HTTP/1.1 keep-alive GET; returns the status and body (Content-Length bodies only).
/// The connection is buffered (`BufStream`): the head is read line by line from the buffer,
/// as a player's HTTP stack does, not a system call per byte.
async fn http_get<S>(s: &mut S, target: &str) -> Result<(u16, Vec<u8>), String>
where
    S: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    let req = format!("GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if s.read_until(b'\n', &mut head)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("closed".into());
        }
        if head.len() > 16 * 1024 {
            return Err("header too long".into());
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let len: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    if let Some(len) = len {
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        return Ok((status, body));
    }
    if !head.contains("transfer-encoding: chunked") {
        return Err(format!("neither a length nor chunks in {head:?}"));
    }
    // Chunked: size line, data, CRLF, until the empty chunk (no trailers expected).
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        s.read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        let size = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| usize::from_str_radix(l.trim().split(';').next()?, 16).ok())
            .ok_or("bad chunk size")?;
        if size > 64 << 20 || body.len() > 64 << 20 {
            return Err("chunked body too large".into());
        }
        let at = body.len();
        body.resize(at + size + 2, 0);
        s.read_exact(&mut body[at..])
            .await
            .map_err(|e| e.to_string())?;
        body.truncate(at + size);
        if size == 0 {
            return Ok((status, body));
        }
    }
}

/// A player's loop: blocking reload for the next part, then the newest listed part.
async fn hls_client(
    port: u16,
    totals: Arc<HlsTotals>,
    waits: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicU64>,
) {
    let mut s = loop {
        if stop.load(Ordering::Relaxed) != 0 {
            return;
        }
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            break tokio::io::BufStream::new(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut next: Option<(u64, u64)> = None;
    let mut mine = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 {
        let target = match next {
            Some((m, p)) => format!("/live/bench/stream.m3u8?_HLS_msn={m}&_HLS_part={p}"),
            None => "/live/bench/stream.m3u8".to_string(),
        };
        let t0 = Instant::now();
        let (status, body) = match http_get(&mut s, &target).await {
            Ok(v) => v,
            Err(e) => {
                if stop.load(Ordering::Relaxed) == 0
                    && totals.errors.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("hls client: {target}: {e}");
                }
                return;
            }
        };
        totals.requests.fetch_add(1, Ordering::Relaxed);
        totals.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if status != 200 {
            // Before the stream starts, 404/503 are expected; after, they are errors, unless the
            // run is over (the publisher has left: blocking reloads then time out).
            if next.is_some()
                && stop.load(Ordering::Relaxed) == 0
                && totals.errors.fetch_add(1, Ordering::Relaxed) == 0
            {
                eprintln!("hls client: {target}: {status}");
            }
            next = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        totals.playlists.fetch_add(1, Ordering::Relaxed);
        totals
            .playlist_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        if next.is_some() {
            mine.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        let text = String::from_utf8_lossy(&body);
        // The preload hint names the next part: ..._part<msn>_<i>.mp4
        next = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
            .and_then(|u| u.rsplit_once("_part"))
            .and_then(|(_, r)| r.strip_suffix(".mp4\""))
            .and_then(|r| r.split_once('_'))
            .and_then(|(m, p)| Some((m.parse().ok()?, p.parse().ok()?)));
        let newest = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("#EXT-X-PART:"))
            .and_then(|l| l.split("URI=\"").nth(1))
            .and_then(|u| u.split('"').next())
            .map(str::to_string);
        if let Some(uri) = newest {
            match http_get(&mut s, &format!("/live/bench/{uri}")).await {
                Ok((200, b)) => {
                    totals.requests.fetch_add(1, Ordering::Relaxed);
                    totals.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    totals.parts.fetch_add(1, Ordering::Relaxed);
                    totals
                        .part_bytes
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                other => {
                    if stop.load(Ordering::Relaxed) == 0
                        && totals.errors.fetch_add(1, Ordering::Relaxed) == 0
                    {
                        eprintln!("hls client: part {uri}: {:?}", other.map(|(s, _)| s));
                    }
                    return;
                }
            }
        }
    }
    waits.lock().map(|mut w| w.extend(mine)).ok();
}

fn hls_readers(rt: &tokio::runtime::Runtime, counts: &[usize]) -> Result<(), String> {
    let (root, dir, tags) = setup()?;
    let seconds = 10;
    println!("LL-HLS readers (blocking reload on every part, 200 ms parts) beside one RTMP reader, {seconds} s measured");
    println!(
        "{:>8} {:>10} {:>9} {:>13} {:>13} {:>10} {:>12} {:>12} {:>7}",
        "clients",
        "CPU share",
        "RSS MB",
        "RTMP p50 ms",
        "RTMP p99 ms",
        "HLS req/s",
        "reload p50",
        "reload p99",
        "errors"
    );
    for &n in counts {
        let hls_port = free_port();
        let server = start_tidegate(&root, &dir, Some(hls_port))?;
        let totals = Arc::new(HlsTotals::default());
        let waits: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(rt.spawn(hls_client(
                hls_port,
                totals.clone(),
                waits.clone(),
                stop.clone(),
            )));
        }
        let t0 = Instant::now();
        let r = rt.block_on(run_load(&server, tags.clone(), 1, seconds))?;
        let wall = t0.elapsed().as_secs_f64();
        stop.store(1, Ordering::Relaxed);
        rt.block_on(join_clients(clients));
        let pct = percentiles(&waits);
        println!(
            "{n:>8} {:>9.1}% {:>9.1} {:>13.2} {:>13.2} {:>10.0} {:>12.1} {:>12.1} {:>7}",
            r.cpu_share * 100.0,
            r.rss_mb,
            r.p50_ms,
            r.p99_ms,
            totals.requests.load(Ordering::Relaxed) as f64 / wall,
            pct(0.5),
            pct(0.99),
            totals.errors.load(Ordering::Relaxed)
        );
        drop(server);
        if n > 0 {
            let avg = |bytes: &AtomicU64, count: &AtomicU64| {
                let c = count.load(Ordering::Relaxed).max(1);
                (bytes.load(Ordering::Relaxed) / c) as usize
            };
            let sizes = (
                avg(&totals.playlist_bytes, &totals.playlists),
                avg(&totals.part_bytes, &totals.parts),
            );
            let floor = rt.block_on(hls_floor_run(n, sizes, seconds))?;
            println!(
                "{:>8} {:>9.1}% {:>9.1} {:>13} {:>13} {:>10.0} {:>12.1} {:>12.1} {:>7}   floor ({} B playlists, {} B parts)",
                "floor",
                floor.cpu_share * 100.0,
                floor.rss_mb,
                "-",
                "-",
                floor.rate,
                floor.p50,
                floor.p99,
                floor.errors,
                sizes.0,
                sizes.1
            );
            println!(
                "{:>8} Tidegate / floor: {:.2}x CPU (per request: {:.1} / {:.1} us)",
                "",
                r.cpu_share / floor.cpu_share.max(1e-9),
                r.cpu_share * 1e6
                    / (totals.requests.load(Ordering::Relaxed) as f64 / wall).max(1.0),
                floor.cpu_share * 1e6 / floor.rate.max(1.0)
            );
        }
    }
    Ok(())
}

/// Waits (5 s each at most) for the load clients to stop.
async fn join_clients(clients: Vec<tokio::task::JoinHandle<()>>) {
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }
}

/// The p-th fraction (0..=1) of the recorded waits, NaN with none.
fn percentiles(waits: &Mutex<Vec<f64>>) -> impl Fn(f64) -> f64 {
    let mut w = waits.lock().map(|w| w.clone()).unwrap_or_default();
    w.sort_by(|a, b| a.total_cmp(b));
    move |p: f64| {
        w.get(((w.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

struct FloorRun {
    cpu_share: f64,
    rss_mb: f64,
    rate: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

/// The same N clients against the LL-HLS floor (`bench_hls_floor`), measured as the server
/// is: warm-up, then the floor process's CPU over `seconds`.
async fn hls_floor_run(
    n: usize,
    (playlist_bytes, part_bytes): (usize, usize),
    seconds: u64,
) -> Result<FloorRun, String> {
    let port = free_port();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args([
            "__hls_floor",
            &port.to_string(),
            &playlist_bytes.to_string(),
            &part_bytes.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("hls floor: {e}"))?;
    let floor = Server {
        name: "hls-floor",
        child,
        port,
    };
    wait_port(port).await?;
    let totals = Arc::new(HlsTotals::default());
    let waits: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(hls_client(
                port,
                totals.clone(),
                waits.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = floor.child.id();
    let (cpu0, req0) = (cpu_seconds(pid), totals.requests.load(Ordering::Relaxed));
    let t0 = Instant::now();
    waits.lock().map(|mut w| w.clear()).ok();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, req1) = (cpu_seconds(pid), totals.requests.load(Ordering::Relaxed));
    let wall = t0.elapsed().as_secs_f64();
    let rss_mb = rss_kib(pid) / 1024.0;
    stop.store(1, Ordering::Relaxed);
    join_clients(clients).await;
    let pct = percentiles(&waits);
    drop(floor);
    Ok(FloorRun {
        cpu_share: (cpu1 - cpu0) / wall,
        rss_mb,
        rate: (req1 - req0) as f64 / wall,
        p50: pct(0.5),
        p99: pct(0.99),
        errors: totals.errors.load(Ordering::Relaxed),
    })
}

// ---------------------------------------------------------------------------------------------
// RTSP fan-out: RTSP readers (TCP-interleaved or UDP) of the same publish, beside RTMP readers

/// Reads one RTSP response (head and Content-Length body).
async fn rtsp_response(s: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed".into());
        }
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    if !text.starts_with("RTSP/1.0 200") {
        return Err(text.lines().next().unwrap_or("").to_string());
    }
    Ok(text + &String::from_utf8_lossy(&body))
}

async fn rtsp_request(s: &mut TcpStream, req: String) -> Result<String, String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    rtsp_response(s).await
}

/// Sender report of a track: (wall clock of the RTP time, RTP time).
type SrMap = Option<(std::time::SystemTime, u32)>;

fn on_rtcp(data: &[u8], sr: &mut SrMap) {
    if data.len() >= 20 && data[1] == 200 {
        let ntp = u64::from_be_bytes(data[8..16].try_into().unwrap_or([0; 8]));
        let secs = (ntp >> 32).saturating_sub(2_208_988_800);
        let nanos = ((ntp & 0xffff_ffff) * 1_000_000_000) >> 32;
        let wall = std::time::UNIX_EPOCH + Duration::new(secs, nanos as u32);
        let ts = u32::from_be_bytes(data[16..20].try_into().unwrap_or([0; 4]));
        *sr = Some((wall, ts));
    }
}

/// Latency of a video packet that ends a frame: now minus the ingest time the last sender
/// report maps its RTP time to.
fn rtp_latency_ms(pkt: &[u8], sr: &SrMap) -> Option<f64> {
    if pkt.len() < 12 || pkt[1] & 0x80 == 0 {
        return None;
    }
    let (wall, sr_ts) = (*sr)?;
    let ts = u32::from_be_bytes(pkt[4..8].try_into().ok()?);
    let offset = f64::from(ts.wrapping_sub(sr_ts) as i32) / 90_000.0;
    let ingest = if offset >= 0.0 {
        wall + Duration::from_secs_f64(offset)
    } else {
        wall - Duration::from_secs_f64(-offset)
    };
    std::time::SystemTime::now()
        .duration_since(ingest)
        .ok()
        .map(|d| d.as_secs_f64() * 1000.0)
}

/// An SRT reader of `live/bench`: counts the TS bytes it receives while measuring.
async fn srt_reader(
    port: u16,
    totals: Arc<Totals>,
    measuring: Arc<AtomicU64>,
    stop: Arc<AtomicU64>,
) -> bool {
    use futures::StreamExt;
    let how = tidegate_srt::io::CallSettings {
        stream_id: Some("read:live/bench".into()),
        latency: Some(Duration::from_millis(120)),
        encryption: None,
    };
    let remote = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut conn) = tidegate_srt::io::call(remote, &how, Duration::from_secs(10)).await else {
        return false;
    };
    while stop.load(Ordering::Relaxed) == 0 {
        match tokio::time::timeout(Duration::from_millis(500), conn.next()).await {
            Ok(Some(Ok((_, data)))) => {
                if measuring.load(Ordering::Relaxed) == 1 {
                    totals.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Ok(_) => return false,
            Err(_) => continue,
        }
    }
    true
}

async fn rtsp_reader(
    port: u16,
    udp: bool,
    totals: Arc<Totals>,
    latencies: Arc<Mutex<Vec<f64>>>,
    measuring: Arc<AtomicU64>,
    stop: Arc<AtomicU64>,
) -> bool {
    let url = format!("rtsp://127.0.0.1:{port}/live/bench");
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let Ok(sdp) = rtsp_request(
        &mut s,
        format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
    )
    .await
    else {
        return false;
    };
    // Track 0 is the video (the publisher sends H.264 + AAC).
    let tracks = sdp.matches("a=control:trackID=").count();
    let mut session = String::new();
    let mut socks = Vec::new();
    for i in 0..tracks {
        let transport = if udp {
            let (Ok(rtp), Ok(rtcp)) = (
                tokio::net::UdpSocket::bind("127.0.0.1:0").await,
                tokio::net::UdpSocket::bind("127.0.0.1:0").await,
            ) else {
                return false;
            };
            if *UDP_GRO.get().unwrap_or(&false) {
                let _ = nix::sys::socket::setsockopt(
                    &rtp,
                    nix::sys::socket::sockopt::UdpGroSegment,
                    &true,
                );
            }
            let p = |u: &tokio::net::UdpSocket| u.local_addr().map(|a| a.port()).unwrap_or(0);
            let t = format!("RTP/AVP;unicast;client_port={}-{}", p(&rtp), p(&rtcp));
            socks.push((rtp, rtcp));
            t
        } else {
            format!("RTP/AVP/TCP;unicast;interleaved={}-{}", 2 * i, 2 * i + 1)
        };
        let req = format!(
            "SETUP {url}/trackID={i} RTSP/1.0\r\nCSeq: {}\r\nTransport: {transport}\r\n{session}\r\n",
            i + 2
        );
        let Ok(resp) = rtsp_request(&mut s, req).await else {
            return false;
        };
        if let Some(id) = resp.lines().find_map(|l| l.strip_prefix("Session: ")) {
            session = format!("Session: {}\r\n", id.split(';').next().unwrap_or(""));
        }
    }
    if rtsp_request(
        &mut s,
        format!("PLAY {url} RTSP/1.0\r\nCSeq: 9\r\n{session}\r\n"),
    )
    .await
    .is_err()
    {
        return false;
    }
    let mut mine = Vec::new();
    let mut sr: SrMap = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut rtp_buf = vec![0u8; 65_536];
    let mut rtcp_buf = vec![0u8; 2048];
    while stop.load(Ordering::Relaxed) == 0 {
        let on = measuring.load(Ordering::Relaxed) == 1;
        if udp {
            let (vrtp, vrtcp) = (&socks[0].0, &socks[0].1);
            tokio::select! {
                r = recv_gro(vrtp, &mut rtp_buf) => {
                    let Ok((n, seg)) = r else { break };
                    if on {
                        totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        for pkt in rtp_buf[..n].chunks(seg.unwrap_or(n).max(1)) {
                            if pkt.len() > 1 && pkt[1] & 0x80 != 0 {
                                totals.video.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(l) = rtp_latency_ms(pkt, &sr) {
                                mine.push(l);
                            }
                        }
                    }
                }
                r = vrtcp.recv(&mut rtcp_buf) => {
                    if let Ok(n) = r {
                        on_rtcp(&rtcp_buf[..n], &mut sr);
                    }
                }
                r = async {
                    match socks.get(1) {
                        Some((a, _)) => a.recv(&mut buf).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let (Ok(n), true) = (r, on) {
                        totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        let n = match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => continue,
        };
        if on {
            totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while pending.len() >= at + 4 && pending[at] == b'$' {
            let ch = pending[at + 1];
            let len = usize::from(u16::from_be_bytes([pending[at + 2], pending[at + 3]]));
            if pending.len() < at + 4 + len {
                break;
            }
            let pkt = &pending[at + 4..at + 4 + len];
            match ch {
                0 if on && pkt.len() > 1 && pkt[1] & 0x80 != 0 => {
                    totals.video.fetch_add(1, Ordering::Relaxed);
                    if let Some(l) = rtp_latency_ms(pkt, &sr) {
                        mine.push(l);
                    }
                }
                1 => on_rtcp(pkt, &mut sr),
                _ => {}
            }
            at += 4 + len;
        }
        pending.drain(..at);
    }
    latencies.lock().map(|mut l| l.extend(mine)).ok();
    true
}

fn rtsp_fanout(rt: &tokio::runtime::Runtime, counts: &[usize]) -> Result<(), String> {
    let (root, dir, tags) = setup()?;
    let seconds = 10;
    println!(
        "RTSP fan-out against RTMP fan-out of the same clip ({} kbit/s video + 128 kbit/s audio) in the same run, {seconds} s measured",
        video_kbps()
    );
    println!("(RTSP latency: ingest → reader, from each track's RTCP sender report; RTMP: publisher send → reader)");
    println!(
        "{:>8} {:>10} {:>11} {:>12} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "readers",
        "reader",
        "Gbit/s",
        "CPU s/Gbit",
        "CPU share",
        "RSS MB",
        "p50 ms",
        "p99 ms",
        "readers"
    );
    // TIDEGATE_BENCH_READERS=rtmp,srt measures only those kinds (RTMP first: the others'
    // ratios are to it).
    let kinds: Vec<&str> = ["rtmp", "rtsp-tcp", "rtsp-udp", "srt"]
        .into_iter()
        .filter(|k| chosen("TIDEGATE_BENCH_READERS", k))
        .collect();
    for &n in counts {
        let mut rtmp_cost = None;
        for &name in &kinds {
            let rtsp_ports = (free_port(), free_udp_pair(), 0);
            let rtsp_ports = (rtsp_ports.0, rtsp_ports.1, rtsp_ports.1 + 1);
            let server = start_tidegate_with(&root, &dir, None, Some(rtsp_ports))?;
            let kind = match name {
                "rtmp" => ReaderKind::Rtmp,
                "srt" => ReaderKind::Srt {
                    port: rtsp_ports.1 + 2,
                },
                _ => ReaderKind::Rtsp {
                    port: rtsp_ports.0,
                    udp: name == "rtsp-udp",
                },
            };
            let r = rt.block_on(run_load_with(&server, tags.clone(), n, seconds, kind))?;
            println!(
                "{n:>8} {name:>10} {:>11.3} {:>12.3} {:>9.1}% {:>9.1} {:>9.2} {:>9.2} {:>8}",
                r.gbits,
                r.cpu_per_gbit,
                r.cpu_share * 100.0,
                r.rss_mb,
                r.p50_ms,
                r.p99_ms,
                r.readers_ok
            );
            match rtmp_cost {
                None => rtmp_cost = Some(r.cpu_per_gbit),
                Some(base) => println!(
                    "{n:>8} {name:>10} CPU per Gbit / RTMP's = {:.2}",
                    r.cpu_per_gbit / base
                ),
            }
            drop(server);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// WebRTC: one WHIP publisher (ffmpeg 9), N WHEP viewers (aiortc, decoding), the added latency
// (frame ingress -> packets sent, the server's own histogram) and the server's CPU and memory.

/// The metrics page, through the bench's one HTTP client ([`http_get`]).
fn webrtc_metrics(rt: &tokio::runtime::Runtime, metrics_port: u16) -> Result<String, String> {
    rt.block_on(async {
        let mut s = tokio::io::BufStream::new(
            TcpStream::connect(("127.0.0.1", metrics_port))
                .await
                .map_err(|e| e.to_string())?,
        );
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), http_get(&mut s, "/metrics"))
                .await
                .map_err(|_| "metrics: no answer in 5 s".to_string())??;
        if status != 200 {
            return Err(format!("metrics: HTTP {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    })
}

/// Cumulative (le seconds, count) buckets of `webrtc_egress_latency_seconds`.
fn webrtc_latency_buckets(
    rt: &tokio::runtime::Runtime,
    metrics_port: u16,
) -> Result<Vec<(f64, u64)>, String> {
    let text = webrtc_metrics(rt, metrics_port)?;
    let mut out = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("webrtc_egress_latency_seconds_bucket{le=\"") {
            if let Some((le, n)) = rest.split_once("\"} ") {
                out.push((
                    le.parse().unwrap_or(f64::INFINITY),
                    n.trim().parse().unwrap_or(0),
                ));
            }
        }
    }
    Ok(out)
}

/// The bucket bound (ms) under which fraction `q` of the observations fall.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let b = before.iter().find(|x| x.0 == *le).map_or(0, |x| x.1);
            (*le, n.saturating_sub(b))
        })
        .collect();
    let total = delta.last().map_or(0, |d| d.1);
    let want = (total as f64 * q).ceil() as u64;
    delta
        .iter()
        .find(|d| d.1 >= want && total > 0)
        .map_or(f64::NAN, |d| d.0 * 1000.0)
}

fn webrtc_aiortc(rt: &tokio::runtime::Runtime, counts: &[usize]) -> Result<(), String> {
    let (root, dir, _) = setup()?;
    let peers = std::env::var("PEERS_DIR")
        .map(PathBuf::from)
        .map_err(|_| "PEERS_DIR unset")?;
    let python = peers.join("venv/bin/python");
    let ffmpeg9 = peers.join("bin/ffmpeg9");
    let script = root.join("tests/py/webrtc_peer.py");
    let seconds = 12;
    println!("WebRTC: ffmpeg 9 WHIP publisher (640x360 30 fps H264 + Opus), aiortc WHEP viewers for {seconds} s");
    println!(
        "{:>8} {:>10} {:>9} {:>16} {:>16} {:>14}",
        "viewers", "CPU share", "RSS MB", "added p50 ms <=", "added p99 ms <=", "fewest frames"
    );
    for &n in counts {
        let (http, udp, metrics) = (free_port(), free_port(), free_port());
        let conf = dir.join("webrtc.yml");
        std::fs::write(
            &conf,
            format!(
                "logLevel: warn\napi: no\nmetricsAddress: 127.0.0.1:{metrics}\nrtmp: no\nrtsp: no\nhls: no\nsrt: no\n\
                 webrtcAddress: 127.0.0.1:{http}\nwebrtcLocalUDPAddress: 127.0.0.1:{udp}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        let child = Command::new(target.join("release/tidegate"))
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("tidegate: {e}"))?;
        let server = Server {
            name: "tidegate",
            child,
            port: http,
        };
        let pid = server.child.id();
        rt.block_on(wait_port(metrics))?;
        let mut publisher = Command::new(&ffmpeg9)
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
            .args([
                "-t",
                &(seconds + 20).to_string(),
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
            ])
            .args([
                "-tune",
                "zerolatency",
                "-profile:v",
                "baseline",
                "-g",
                "30",
                "-bf",
                "0",
            ])
            .args(["-c:a", "libopus", "-ar", "48000", "-ac", "2", "-f", "whip"])
            .arg(format!("http://127.0.0.1:{http}/bench/whip"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", ffmpeg9.display()))?;
        // The publisher is in once its path is ready (its tracks known, frames flowing).
        let deadline = Instant::now() + Duration::from_secs(15);
        while !webrtc_metrics(rt, metrics)?.contains("paths{name=\"bench\",state=\"ready\"} 1") {
            if Instant::now() > deadline {
                return Err("the WHIP publisher's path was not ready within 15 s".into());
            }
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        }
        let before = webrtc_latency_buckets(rt, metrics)?;
        let cpu0 = cpu_seconds(pid);
        let t0 = Instant::now();
        let out = Command::new(&python)
            .arg(&script)
            .args(["whep", &format!("http://127.0.0.1:{http}/bench/whep")])
            .args([
                "--seconds",
                &seconds.to_string(),
                "--viewers",
                &n.to_string(),
            ])
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", python.display()))?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(pid) - cpu0) / wall;
        let after = webrtc_latency_buckets(rt, metrics)?;
        let report = String::from_utf8_lossy(&out.stdout);
        let fewest = report
            .split("\"frames\": ")
            .skip(1)
            .filter_map(|p| p.split(',').next()?.trim().parse::<u64>().ok())
            .min()
            .unwrap_or(0);
        println!(
            "{n:>8} {:>9.1}% {:>9.1} {:>16.1} {:>16.1} {:>14}",
            cpu * 100.0,
            peak_rss_mb(pid),
            bucket_quantile(&before, &after, 0.5),
            bucket_quantile(&before, &after, 0.99),
            fewest
        );
        let _ = publisher.kill();
        let _ = publisher.wait();
        let _ = server.name;
        drop(server);
    }
    Ok(())
}
