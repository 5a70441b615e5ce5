//! `cargo xtask bench transcode [paths...]`: what the audio bridge costs.
//!
//! 1. In process: the AAC → Opus transcoder (symphonia decode, rubato resample, libopus at
//!    128 kbit/s) on 60 s of stereo AAC at 48 and at 44.1 kHz, and the Opus → AAC transcoder
//!    (libopus decode, our AAC-LC encoder at 128 kbit/s) on 60 s of stereo Opus: CPU per
//!    transcoded stream, in % of one core.
//! 2. The server: N paths (default 50), each published over RTSP by ffmpeg (`-c copy`, a 10 s
//!    loop of a 320x180 H.264 + audio clip) and read by one str0m WHEP viewer in this process.
//!    Once with AAC (every path transcodes), once with Opus from the publisher (nothing to
//!    transcode): the server's CPU with the viewers, less the publishers alone, per path; the
//!    difference is the bridge's cost per stream on the fan-out path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate_core::{Frame, TrackTranscoder};

use super::bench_webrtc::{rtsp_publisher, start_rtsp_webrtc, viewer, ViewerCount};
use super::{bench_dirs, cpu_seconds, wait_port};

/// Seconds of CPU measurement per round.
const WINDOW: f64 = 10.0;

fn in_process(rate: u32) -> Result<f64, String> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate={rate}:duration=60,aeval=val(0)|val(0)*0.5:c=stereo"
        ))
        .args(["-c:a", "aac", "-b:a", "128k", "-f", "adts", "-"])
        .output()
        .map_err(|e| format!("ffmpeg: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let frames = tidegate_codec::aac::split_adts(&out.stdout).map_err(|e| e.to_string())?;
    let asc = frames.first().ok_or("no AAC")?.config.to_bytes();
    let mut tc =
        tidegate_transcode::AacToOpus::new(&asc, rate, 128_000).map_err(|e| e.to_string())?;
    let mut made = Vec::new();
    // The loop runs on this one thread, busy throughout: its wall time is its CPU time.
    let t0 = std::time::Instant::now();
    for (i, f) in frames.iter().enumerate() {
        let frame = Frame {
            track: 1,
            pts: i as i64 * 1024,
            dts: i as i64 * 1024,
            keyframe: true,
            data: bytes::Bytes::copy_from_slice(f.payload),
            received: Instant::now(),
            params: None,
        };
        tc.push(&frame, &mut made);
    }
    let busy = t0.elapsed().as_secs_f64();
    let seconds = frames.len() as f64 * 1024.0 / f64::from(rate);
    if made.len() < (seconds * 49.0) as usize {
        return Err(format!("{} Opus frames for {seconds:.0} s", made.len()));
    }
    Ok(busy / seconds)
}

/// Opus → AAC on 60 s of stereo Opus (two tones and noise, as libopus makes it at 128 kbit/s).
fn in_process_opus() -> Result<f64, String> {
    let mut enc = tidegate_transcode::opus::Encoder::new(2, 128_000).map_err(|e| e.to_string())?;
    let mut seed = 7u32;
    let mut packets = Vec::new();
    for i in 0..3000usize {
        let pcm: Vec<f32> = (0..960 * 2)
            .map(|k| {
                let t = (i * 960 + k / 2) as f32 / 48_000.0;
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                0.3 * (std::f32::consts::TAU * 440.0 * t).sin()
                    + 0.15 * (std::f32::consts::TAU * 1320.0 * t).sin()
                    + 0.05 * noise
            })
            .collect();
        packets.push(enc.encode(&pcm).map_err(|e| e.to_string())?);
    }
    let mut tc =
        tidegate_transcode::OpusToAac::new(2, 48_000, 128_000).map_err(|e| e.to_string())?;
    let mut made = Vec::new();
    let t0 = std::time::Instant::now();
    for (i, p) in packets.iter().enumerate() {
        let frame = Frame {
            track: 1,
            pts: i as i64 * 960,
            dts: i as i64 * 960,
            keyframe: true,
            data: bytes::Bytes::copy_from_slice(p),
            received: Instant::now(),
            params: None,
        };
        tc.push(&frame, &mut made);
    }
    let busy = t0.elapsed().as_secs_f64();
    if made.len() < 2800 {
        return Err(format!("{} AAC frames for 60 s", made.len()));
    }
    let bits: usize = made.iter().map(|f| f.data.len() * 8).sum();
    let kbits = bits as f64 / (made.len() as f64 * 1024.0 / 48_000.0) / 1000.0;
    if !(100.0..=140.0).contains(&kbits) {
        return Err(format!("the AAC came out at {kbits:.0} kbit/s, not 128"));
    }
    Ok(busy / 60.0)
}

fn make_clip(dir: &Path, audio: &str) -> Result<PathBuf, String> {
    let clip = dir.join(format!("transcode-{audio}.mkv"));
    if clip.exists() {
        return Ok(clip);
    }
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", "10", "-c:v", "libx264", "-preset", "veryfast"])
        .args([
            "-profile:v",
            "baseline",
            "-bf",
            "0",
            "-g",
            "30",
            "-b:v",
            "300k",
        ])
        .args(["-c:a", audio, "-b:a", "128k", "-ar", "48000", "-ac", "2"])
        .arg(&clip)
        .status()
        .map_err(|e| format!("ffmpeg: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&clip);
        return Err("ffmpeg could not make the clip".into());
    }
    Ok(clip)
}

struct Round {
    base: f64,
    with_viewers: f64,
    fewest_audio: u64,
}

fn round(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    dir: &Path,
    clip: &Path,
    paths: usize,
) -> Result<Round, String> {
    let (server, http, rtsp) = start_rtsp_webrtc(root, dir, "transcode.yml", None)?;
    let pid = server.child.id();
    rt.block_on(wait_port(rtsp))?;
    rt.block_on(wait_port(http))?;
    let mut publishers: Vec<Child> = Vec::new();
    let result = (|| -> Result<Round, String> {
        for i in 0..paths {
            publishers.push(rtsp_publisher(clip, rtsp, &format!("p{i}"))?);
        }
        // Publishers settle, then the server alone with them.
        rt.block_on(async { tokio::time::sleep(Duration::from_secs(3)).await });
        let c0 = cpu_seconds(pid);
        let t0 = Instant::now();
        rt.block_on(async { tokio::time::sleep(Duration::from_secs_f64(WINDOW / 2.0)).await });
        let base = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
        let stop = Arc::new(AtomicBool::new(false));
        let views: Vec<Arc<ViewerCount>> = (0..paths)
            .map(|_| Arc::new(ViewerCount::default()))
            .collect();
        let mut tasks = Vec::new();
        for (i, c) in views.iter().enumerate() {
            let (c, stop) = (c.clone(), stop.clone());
            tasks.push(rt.spawn(viewer(http, format!("/p{i}/whep"), c, stop)));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while views
            .iter()
            .any(|v| v.audio_packets.load(Ordering::Relaxed) == 0)
        {
            if Instant::now() > deadline || tasks.iter().any(|t| t.is_finished()) {
                stop.store(true, Ordering::Relaxed);
                let waiting = views
                    .iter()
                    .filter(|v| v.audio_packets.load(Ordering::Relaxed) == 0)
                    .count();
                for t in tasks {
                    if t.is_finished() {
                        if let Ok(Err(e)) = rt.block_on(t) {
                            return Err(format!("a viewer ended: {e}"));
                        }
                    }
                }
                return Err(format!("{waiting} viewer(s) without audio after 60 s"));
            }
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        }
        let a0: Vec<u64> = views
            .iter()
            .map(|v| v.audio_packets.load(Ordering::Relaxed))
            .collect();
        let c1 = cpu_seconds(pid);
        let t1 = Instant::now();
        rt.block_on(async { tokio::time::sleep(Duration::from_secs_f64(WINDOW)).await });
        let with_viewers = (cpu_seconds(pid) - c1) / t1.elapsed().as_secs_f64();
        let fewest_audio = views
            .iter()
            .zip(&a0)
            .map(|(v, a)| v.audio_packets.load(Ordering::Relaxed) - a)
            .min()
            .unwrap_or(0);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = rt.block_on(t);
        }
        Ok(Round {
            base,
            with_viewers,
            fewest_audio,
        })
    })();
    for mut p in publishers {
        let _ = p.kill();
        let _ = p.wait();
    }
    drop(server);
    result
}

pub fn transcode(rt: &tokio::runtime::Runtime, counts: &[usize]) -> Result<(), String> {
    println!("Audio bridge, in process: AAC-LC stereo 128 kbit/s -> Opus 128 kbit/s");
    // Best of three runs: one thread's wall time is its CPU time only when nothing else runs.
    let best = |f: &dyn Fn() -> Result<f64, String>| -> Result<f64, String> {
        let mut b = f64::MAX;
        for _ in 0..3 {
            b = b.min(f()?);
        }
        Ok(b)
    };
    for rate in [48_000, 44_100] {
        let share = best(&|| in_process(rate))?;
        println!(
            "  from {:>5} Hz: {:.2}% of a core per stream",
            rate,
            share * 100.0
        );
    }
    println!("Audio bridge, in process: Opus stereo 128 kbit/s -> AAC-LC 128 kbit/s (ours)");
    let share = best(&in_process_opus)?;
    println!(
        "  from 48000 Hz: {:.2}% of a core per stream",
        share * 100.0
    );
    let (root, dir) = bench_dirs()?;
    let aac = make_clip(&dir, "aac")?;
    let opus = make_clip(&dir, "libopus")?;
    for &n in counts {
        println!(
            "Audio bridge, server: {n} paths (RTSP publish, -c copy, 320x180 H.264 + audio), one \
             str0m WHEP viewer each; CPU over {WINDOW} s"
        );
        println!(
            "{:>14} {:>16} {:>16} {:>16} {:>13}",
            "publish", "publishers only", "with viewers", "per path", "fewest audio"
        );
        let mut per = Vec::new();
        for (name, clip) in [("AAC (bridged)", &aac), ("Opus", &opus)] {
            let r = round(rt, &root, &dir, clip, n)?;
            let p = (r.with_viewers - r.base) / n as f64;
            per.push(p);
            println!(
                "{name:>14} {:>15.1}% {:>15.1}% {:>15.3}% {:>13}",
                r.base * 100.0,
                r.with_viewers * 100.0,
                p * 100.0,
                r.fewest_audio
            );
        }
        println!(
            "  the bridge costs {:.3}% of a core per stream (AAC path less Opus path)",
            (per[0] - per[1]) * 100.0
        );
    }
    Ok(())
}
