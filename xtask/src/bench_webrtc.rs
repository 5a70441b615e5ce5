//! `webrtc [viewers...]`: WHEP viewers' cost to the server. One RTSP publisher sends a
//! pre-encoded 1280x720 30 fps clip (H.264 at 2 Mbit/s, Opus) in real time with `-c copy`, so
//! that the publish costs next to nothing; N WHEP viewers in this process (str0m, full ICE,
//! DTLS-SRTP, RTP mode: every packet is decrypted and counted, nothing is decoded) watch it.
//! The server's CPU is sampled over a window with the publisher alone, then with the viewers
//! all receiving: the difference per viewer is the figure the fan-out issue asks for. The same
//! viewers then watch the WHEP floor (`bench_whep_floor`): what any server on the same WebRTC
//! library and send path pays per viewer here (`TIDEGATE_BENCH_SERVERS=tidegate` or
//! `whep-floor` runs one of them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::whep_viewer::{viewer, ViewerCount};
use super::{
    bench_dirs, bucket_quantile, cpu_seconds, free_port, peak_rss_mb, spawn_tidegate, wait_port,
    webrtc_latency_buckets, webrtc_metrics,
};

const MBPS: u32 = 2000;

fn make_clip(dir: &Path) -> Result<PathBuf, String> {
    let clip = dir.join(format!("webrtc-720p-{MBPS}k.mkv"));
    if clip.exists() {
        return Ok(clip);
    }
    let rate = format!("{MBPS}k");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", "10", "-c:v", "libx264", "-preset", "veryfast"])
        .args(["-tune", "zerolatency", "-profile:v", "baseline", "-bf", "0"])
        .args(["-g", "30", "-keyint_min", "30", "-sc_threshold", "0"])
        .args(["-b:v", &rate, "-maxrate", &rate, "-bufsize", &rate])
        .args(["-c:a", "libopus", "-b:a", "64k", "-ar", "48000", "-ac", "2"])
        .arg(&clip)
        .status()
        .map_err(|e| format!("ffmpeg: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&clip);
        return Err("ffmpeg could not make the 720p clip".into());
    }
    Ok(clip)
}

fn totals(counts: &[Arc<ViewerCount>]) -> Vec<(u64, u64)> {
    counts
        .iter()
        .map(|c| {
            (
                c.video_frames.load(Ordering::Relaxed),
                c.audio_packets.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// What [`watch`] measured of a server.
struct Watched {
    /// Its CPU share with the viewers all receiving.
    cpu: f64,
    /// Its CPU share before they came.
    base: f64,
    /// The fewest (video frames, audio packets) any viewer got in the window.
    fewest: (u64, u64),
}

/// N viewers of a server (`pid`, WHEP at `http` + `target`), measured over `window` seconds
/// once all of them get video. `around(false)` runs just before the window, `around(true)`
/// just after.
fn watch(
    rt: &tokio::runtime::Runtime,
    pid: u32,
    http: u16,
    target: &str,
    n: usize,
    window: f64,
    mut around: impl FnMut(bool) -> Result<(), String>,
) -> Result<Watched, String> {
    // The server before the viewers (for Tidegate: the publisher alone).
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    rt.block_on(async { tokio::time::sleep(Duration::from_secs_f64(window / 2.0)).await });
    let base = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();

    let stop = Arc::new(AtomicBool::new(false));
    let views: Vec<Arc<ViewerCount>> = (0..n).map(|_| Arc::new(ViewerCount::default())).collect();
    let mut tasks = Vec::new();
    for c in &views {
        let (c, stop) = (c.clone(), stop.clone());
        tasks.push(rt.spawn(viewer(http, target.to_string(), c, stop)));
        // Offers go in at 100 per second, as a crowd arrives.
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while totals(&views).iter().any(|(v, _)| *v == 0) {
        if Instant::now() > deadline || tasks.iter().any(|t| t.is_finished()) {
            stop.store(true, Ordering::Relaxed);
            let failed = tasks.iter().filter(|t| t.is_finished()).count();
            let waiting = totals(&views).iter().filter(|(v, _)| *v == 0).count();
            for t in tasks {
                if t.is_finished() {
                    if let Ok(Err(e)) = rt.block_on(t) {
                        return Err(format!(
                            "{failed} viewer(s) ended, {waiting} without video: {e}"
                        ));
                    }
                }
            }
            return Err(format!("{waiting} viewer(s) without video after 60 s"));
        }
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    }
    around(false)?;
    let counted0 = totals(&views);
    let c1 = cpu_seconds(pid);
    let t1 = Instant::now();
    rt.block_on(async { tokio::time::sleep(Duration::from_secs_f64(window)).await });
    let cpu = (cpu_seconds(pid) - c1) / t1.elapsed().as_secs_f64();
    let counted1 = totals(&views);
    around(true)?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = rt.block_on(t);
    }
    let fewest = counted1
        .iter()
        .zip(&counted0)
        .fold((u64::MAX, u64::MAX), |(v, a), (x, y)| {
            (v.min(x.0 - y.0), a.min(x.1 - y.1))
        });
    Ok(Watched { cpu, base, fewest })
}

/// The WHEP floor (`bench_whep_floor`) under the same viewers, and its peak RSS (MB).
fn floor_run(
    rt: &tokio::runtime::Runtime,
    clip: &Path,
    n: usize,
    window: f64,
) -> Result<(Watched, f64), String> {
    let (http, udp) = (free_port(), free_port());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let floor = super::Server {
        name: "whep-floor",
        child: Command::new(exe)
            .args(["__whep_floor", &http.to_string(), &udp.to_string()])
            .arg(clip)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("whep floor: {e}"))?,
        port: http,
    };
    rt.block_on(wait_port(http))?;
    let pid = floor.child.id();
    let w = watch(rt, pid, http, "/whep", n, window, |_| Ok(()))?;
    let rss = peak_rss_mb(pid);
    drop(floor);
    Ok((w, rss))
}

pub fn webrtc(rt: &tokio::runtime::Runtime, counts: &[usize]) -> Result<(), String> {
    let (root, dir) = bench_dirs()?;
    let clip = make_clip(&dir)?;
    let window = 10.0;
    println!(
        "WebRTC: RTSP publisher (1280x720 30 fps H264 {} Mbit/s + Opus, -c copy), N str0m WHEP \
         viewers (DTLS-SRTP, every packet decrypted); CPU over {window} s with all viewers receiving; \
         the WHEP floor (one thread, same str0m and sender, no publisher) under the same viewers",
        MBPS / 1000
    );
    println!(
        "{:>8} {:>10} {:>10} {:>16} {:>9} {:>14} {:>14} {:>13} {:>12}",
        "viewers",
        "server",
        "CPU share",
        "per viewer",
        "RSS MB",
        "added p50 ms<=",
        "added p99 ms<=",
        "fewest frames",
        "fewest audio"
    );
    let chosen = |name: &str| super::chosen("TIDEGATE_BENCH_SERVERS", name);
    for &n in counts {
        let mut per_viewer = Vec::new();
        if chosen("tidegate") {
            per_viewer.push(tidegate_run(rt, &root, &dir, &clip, n, window)?);
        }
        if chosen("whep-floor") {
            let (f, rss) = floor_run(rt, &clip, n, window)?;
            let pv = (f.cpu - f.base) * 100.0 / n as f64;
            println!(
                "{n:>8} {:>10} {:>9.1}% {:>14.3}% {:>9.1} {:>14} {:>14} {:>13} {:>12}",
                "whep-floor",
                f.cpu * 100.0,
                pv,
                rss,
                "",
                "",
                f.fewest.0,
                f.fewest.1
            );
            per_viewer.push(pv);
        }
        if let [t, f] = per_viewer[..] {
            println!(
                "{n:>8} per viewer: tidegate / whep-floor = {:.2}",
                t / f.max(1e-9)
            );
        }
    }
    Ok(())
}

/// Tidegate with its RTSP publisher under N viewers; prints its row and gives its CPU share
/// per viewer (% of a core).
fn tidegate_run(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    dir: &Path,
    clip: &Path,
    n: usize,
    window: f64,
) -> Result<f64, String> {
    let metrics = free_port();
    let (server, http, rtsp) = start_rtsp_webrtc(root, dir, "webrtc.yml", Some(metrics))?;
    let pid = server.child.id();
    rt.block_on(wait_port(metrics))?;
    rt.block_on(wait_port(rtsp))?;
    let mut publisher = rtsp_publisher(clip, rtsp, "bench")?;
    let result = (|| -> Result<f64, String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !webrtc_metrics(rt, metrics)?.contains("paths{name=\"bench\",state=\"ready\"} 1") {
            if Instant::now() > deadline {
                return Err("the RTSP publisher's path was not ready within 15 s".into());
            }
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        }
        let (mut before, mut after) = (None, None);
        let w = watch(rt, pid, http, "/bench/whep", n, window, |end| {
            let b = webrtc_latency_buckets(rt, metrics)?;
            if end {
                after = Some(b);
            } else {
                before = Some(b);
            }
            Ok(())
        })?;
        let (Some(before), Some(after)) = (before, after) else {
            return Err("no latency histogram".into());
        };
        let pv = (w.cpu - w.base) * 100.0 / n as f64;
        println!(
            "{n:>8} {:>10} {:>9.1}% {:>14.3}% {:>9.1} {:>14.1} {:>14.1} {:>13} {:>12}",
            "tidegate",
            w.cpu * 100.0,
            pv,
            peak_rss_mb(pid),
            bucket_quantile(&before, &after, 0.5),
            bucket_quantile(&before, &after, 0.99),
            w.fewest.0,
            w.fewest.1
        );
        println!(
            "         (publisher alone: {:.1}% of a core)",
            w.base * 100.0
        );
        Ok(pv)
    })();
    let _ = publisher.kill();
    let _ = publisher.wait();
    drop(server);
    result
}

/// Tidegate for the WebRTC benches: RTSP over TCP in, WHEP out, and Prometheus metrics at
/// `metrics` if given (`conf` names its configuration file in `dir`). Gives the server and its
/// (WHEP HTTP, RTSP) ports.
pub fn start_rtsp_webrtc(
    root: &Path,
    dir: &Path,
    conf: &str,
    metrics: Option<u16>,
) -> Result<(super::Server, u16, u16), String> {
    let (http, udp, rtsp) = (free_port(), free_port(), free_port());
    let metrics = match metrics {
        Some(port) => format!("metrics: yes\nmetricsAddress: 127.0.0.1:{port}\n"),
        None => "metrics: no\n".into(),
    };
    let conf = dir.join(conf);
    std::fs::write(
        &conf,
        format!(
            "logLevel: warn\napi: no\n{metrics}rtmp: no\nhls: no\nsrt: no\n\
             rtspAddress: 127.0.0.1:{rtsp}\nrtspTransports: [tcp]\n\
             webrtcAddress: 127.0.0.1:{http}\nwebrtcLocalUDPAddress: 127.0.0.1:{udp}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let server = super::Server {
        name: "tidegate",
        child: spawn_tidegate(root, &conf, Stdio::null())?,
        port: http,
    };
    Ok((server, http, rtsp))
}

/// ffmpeg publishing `clip` in a loop, in real time and unchanged (`-c copy`), over RTSP/TCP
/// to `path`.
pub fn rtsp_publisher(clip: &Path, rtsp: u16, path: &str) -> Result<Child, String> {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-stream_loop", "-1", "-i"])
        .arg(clip)
        .args(["-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp"])
        .arg(format!("rtsp://127.0.0.1:{rtsp}/{path}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("ffmpeg: {e}"))
}
