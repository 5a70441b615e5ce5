//! `cargo xtask bench record`: the recorder and the playback server at archive scale.
//!
//! 1. A synthetic archive, made without real-time publishing: 10 paths × 30 days of 1-minute
//!    fMP4 segments (60 one-second parts each), every 97th missing so that `/list` has gaps to
//!    report; the files are hard links to one segment made by the recorder's own muxer, and
//!    the journal is written as the recorder writes it. Reported: the index load at start
//!    (with the journal; then with a day of one path missing from it, which is scanned), `/list`
//!    latency over the whole month, and `/get` time to first byte for a 10-minute window.
//! 2. 20 paths published at 4 Mbit/s each (the pre-encoded clip, in process), with and without
//!    `record: yes`: the server CPU that recording adds, per recorded Mbit/s.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tidegate_core::{CodecParams, Frame, StreamDesc, Track};
use tidegate_record::mux::{Format, MuxConfig, Out, RecordMuxer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{cpu_seconds, free_port, publish_clip, spawn_tidegate, wait_port};

const PATHS: usize = 10;
const DAYS: i64 = 30;
const SEGMENT_US: i64 = 60_000_000;
/// Seconds of the CPU measurement (after 3 s of warm-up).
const MEASURE: f64 = 15.0;

/// One 60 s segment (init + 60 parts of one 2 kB key frame each) from the recorder's muxer.
fn template_segment() -> Result<Vec<u8>, String> {
    let data = include_bytes!("../../crates/codec/tests/fixtures/h264_640x360.h264");
    let nals = tidegate_codec::nal::split_annexb(data);
    let (sps, pps) = tidegate_codec::h264::find_params(nals).ok_or("no SPS/PPS in the fixture")?;
    let desc = StreamDesc {
        tracks: vec![Track {
            id: 0,
            params: CodecParams::H264 {
                sps: Bytes::copy_from_slice(sps),
                pps: Bytes::copy_from_slice(pps),
            },
            clock_rate: 90_000,
        }],
    };
    let mut m = RecordMuxer::new(
        &desc,
        MuxConfig {
            format: Format::Fmp4,
            part_duration: 90_000,
            max_part_size: 50_000_000,
            segment_duration: 60 * 90_000,
        },
    );
    let mut out = Vec::new();
    let mut payload = vec![0u8; 2048];
    payload[..5].copy_from_slice(&[0, 0, 0x07, 0xfc, 0x65]);
    for i in 0..=60i64 {
        m.push(
            &Frame {
                track: 0,
                pts: i * 90_000,
                dts: i * 90_000,
                keyframe: true,
                data: Bytes::from(payload.clone()),
                received: Instant::now(),
                params: None,
            },
            &mut out,
        );
    }
    let mut file = Vec::new();
    let mut segments = 0;
    for o in out {
        match o {
            Out::SegmentStart { init, .. } => {
                segments += 1;
                if segments > 1 {
                    break;
                }
                file.extend_from_slice(&init);
            }
            Out::Part { data, .. } => file.extend_from_slice(&data),
            Out::SegmentEnd { .. } => {}
        }
    }
    Ok(file)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Makes the archive under `rec`; returns (first segment start, number of segments).
fn make_archive(rec: &Path) -> Result<(i64, usize), String> {
    let _ = std::fs::remove_dir_all(rec);
    std::fs::create_dir_all(rec).map_err(|e| e.to_string())?;
    let seg = template_segment()?;
    let template =
        tidegate_record::Template::new(&format!("{}/%path/%Y-%m-%d_%H-%M-%S-%f", rec.display()))
            .map_err(|e| e.to_string())?;
    let per_path = (DAYS * 86_400_000_000 / SEGMENT_US) as usize;
    let first = (now_us() - DAYS * 86_400_000_000) / 60_000_000 * 60_000_000;
    let mut journal = std::io::BufWriter::new(
        std::fs::File::create(rec.join(tidegate_record::index::JOURNAL))
            .map_err(|e| e.to_string())?,
    );
    let mut n = 0;
    let started = Instant::now();
    for p in 0..PATHS {
        let path = format!("cam{p}");
        std::fs::create_dir_all(rec.join(&path)).map_err(|e| e.to_string())?;
        // One source file per path: a file takes at most 65,000 links on ext4.
        let source = rec.join(format!("template-{p}.bin"));
        std::fs::write(&source, &seg).map_err(|e| e.to_string())?;
        for i in 0..per_path {
            if i % 97 == 96 {
                continue;
            }
            let start = first + i as i64 * SEGMENT_US;
            let file = template.render(&path, start, "mp4");
            std::fs::hard_link(&source, &file).map_err(|e| format!("{}: {e}", file.display()))?;
            let line = serde_json::json!({
                "op": "add", "path": path, "file": file, "start": start,
                "duration": 60.0, "size": seg.len(), "codecs": ["H264"], "format": "fmp4",
            });
            writeln!(journal, "{line}").map_err(|e| e.to_string())?;
            n += 1;
        }
        std::fs::remove_file(&source).map_err(|e| e.to_string())?;
    }
    journal.flush().map_err(|e| e.to_string())?;
    println!(
        "archive: {PATHS} paths x {DAYS} days of 1-minute segments = {n} files, made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((first, n))
}

/// Starts the release server on `conf_text`; returns it, and the index line of its log.
fn start(
    root: &Path,
    dir: &Path,
    conf_text: &str,
    name: &str,
) -> Result<(std::process::Child, String), String> {
    let conf = dir.join(format!("{name}.yml"));
    std::fs::write(&conf, conf_text).map_err(|e| e.to_string())?;
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = spawn_tidegate(root, &conf, Stdio::from(f))?;
    Ok((child, log.display().to_string()))
}

/// (time to the first byte of the response, total time, body bytes) of a GET.
async fn timed_get(port: u16, target: &str) -> Result<(f64, f64, usize, u16), String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut first = None;
    let mut all = Vec::new();
    loop {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64() * 1000.0);
        all.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(all.get(9..12).unwrap_or(b"000"))
        .parse()
        .unwrap_or(0);
    Ok((
        first.unwrap_or(f64::NAN),
        t0.elapsed().as_secs_f64() * 1000.0,
        all.len(),
        status,
    ))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn index_line(log: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("segments (")) {
            return l.split("recordings in ").nth(1).unwrap_or(l).to_string();
        }
        if Instant::now() > deadline {
            return "(no index line)".into();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn record(rt: &tokio::runtime::Runtime, _counts: &[usize]) -> Result<(), String> {
    let _ = super::VIDEO_KBPS.set(4000);
    let (root, dir, tags) = super::setup()?;
    let rec = dir.join("record-archive");
    let (first, _) = make_archive(&rec)?;
    let playback = free_port();
    let conf = format!(
        "logLevel: info\napi: no\nmetrics: no\nrtmp: no\nrtsp: no\nhls: no\nwebrtc: no\nsrt: no\n\
         playback: yes\nplaybackAddress: 127.0.0.1:{playback}\nkeyStore: {}\n\
         pathDefaults:\n  recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n  recordDeleteAfter: 0s\n",
        dir.join("bench-keys.db").display(),
        rec.display()
    );
    for (round, what) in [
        (0, "journal complete"),
        (1, "one day of cam0 missing from the journal"),
    ] {
        if round == 1 {
            // Drop cam0's last day from the journal: those files are scanned at start.
            let journal = rec.join(tidegate_record::index::JOURNAL);
            let text = std::fs::read_to_string(&journal).map_err(|e| e.to_string())?;
            let cut = first + (DAYS - 1) * 86_400_000_000;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                    !(v["path"] == "cam0" && v["start"].as_i64().unwrap_or(0) >= cut)
                })
                .collect();
            std::fs::write(&journal, kept.join("\n") + "\n").map_err(|e| e.to_string())?;
        }
        let started = Instant::now();
        let (mut child, log) = start(&root, &dir, &conf, "record-playback")?;
        rt.block_on(wait_port(playback))?;
        println!(
            "start, {what}: listening after {:.2} s; index: {}",
            started.elapsed().as_secs_f64(),
            index_line(&log, Duration::from_secs(60))
        );
        if round == 1 {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        let (mut list, mut day, mut ttfb, mut total) = (vec![], vec![], vec![], vec![]);
        let mut spans = 0;
        let mut bytes = 0;
        for i in 0..20 {
            let (_, t, n, status) = rt.block_on(timed_get(playback, "/list?path=cam0"))?;
            if status != 200 {
                return Err(format!("/list answered {status}"));
            }
            list.push(t);
            if i == 0 {
                spans = n;
            }
            let from = first + (i as i64 + 3) * 86_400_000_000;
            let q = format!(
                "/list?path=cam0&start={}&end={}",
                tidegate_core::text::percent_encode(&tidegate_record::playback::format_time(from)),
                tidegate_core::text::percent_encode(&tidegate_record::playback::format_time(
                    from + 86_400_000_000
                ))
            );
            day.push(rt.block_on(timed_get(playback, &q))?.1);
            // A 10-minute window starting 30 s into a segment, somewhere in the month.
            let start = first + (i as i64 * 1_000 + 7) * SEGMENT_US + 30_000_000;
            let q = format!(
                "/get?path=cam{}&start={}&duration=600",
                i % PATHS,
                tidegate_core::text::percent_encode(&tidegate_record::playback::format_time(start))
            );
            let (f, t, n, status) = rt.block_on(timed_get(playback, &q))?;
            if status != 200 {
                return Err(format!("/get answered {status}"));
            }
            ttfb.push(f);
            total.push(t);
            bytes = n;
        }
        println!(
            "/list of cam0's month ({} segments, a {} kB answer): p50 {:.1} ms, max {:.1} ms",
            DAYS * 1440 - DAYS * 1440 / 97,
            spans / 1024,
            pct(&mut list.clone(), 0.5),
            pct(&mut list, 1.0)
        );
        println!(
            "/list of one day: p50 {:.1} ms, max {:.1} ms",
            pct(&mut day.clone(), 0.5),
            pct(&mut day, 1.0)
        );
        println!(
            "/get of 10 minutes ({} kB): first byte p50 {:.1} ms, max {:.1} ms; whole p50 {:.1} ms",
            bytes / 1024,
            pct(&mut ttfb.clone(), 0.5),
            pct(&mut ttfb, 1.0),
            pct(&mut total, 0.5)
        );
        println!(
            "playback server peak RSS with the month indexed: {:.0} MB",
            super::peak_rss_mb(child.id())
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&rec);

    // Recording cost: 20 publishers, without and with recording.
    let live = dir.join("record-live");
    let mut shares = Vec::new();
    for record in [false, true] {
        let _ = std::fs::remove_dir_all(&live);
        let rtmp = free_port();
        let conf = format!(
            "logLevel: warn\napi: no\nmetrics: no\nrtsp: no\nhls: no\nwebrtc: no\nsrt: no\n\
             rtmpAddress: 127.0.0.1:{rtmp}\nkeyStore: {}\n\
             pathDefaults:\n  record: {}\n  recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n",
            dir.join("bench-keys.db").display(),
            if record { "yes" } else { "no" },
            live.display()
        );
        let (mut child, _) = start(&root, &dir, &conf, "record-live")?;
        let share = rt.block_on(async {
            wait_port(rtmp).await?;
            let stop = Arc::new(AtomicU64::new(0));
            let mut pubs = Vec::new();
            for i in 0..20 {
                pubs.push(
                    publish_clip(rtmp, &format!("rec{i}"), tags.clone(), None, stop.clone())
                        .await?,
                );
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            let cpu0 = cpu_seconds(child.id());
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(MEASURE)).await;
            let cpu = cpu_seconds(child.id()) - cpu0;
            let wall = t0.elapsed().as_secs_f64();
            stop.store(1, Ordering::Relaxed);
            for p in pubs {
                let _ = p.await;
            }
            Ok::<f64, String>(cpu / wall)
        })?;
        let _ = child.kill();
        let _ = child.wait();
        let written: u64 = walk_size(&live);
        println!(
            "20 x 4 Mbit/s publishers, record: {}: server CPU {:.1}% of a core{}",
            if record { "yes" } else { "no " },
            share * 100.0,
            if record {
                format!(", {:.0} MB written", written as f64 / 1e6)
            } else {
                String::new()
            }
        );
        shares.push((share, written));
    }
    if let [(off, _), (on, written)] = shares[..] {
        // Bytes written cover the warm-up too: the rate is over the whole run.
        let mbits = written as f64 * 8.0 / 1e6 / (MEASURE + 3.0);
        println!(
            "recording adds {:.1}% of a core for {mbits:.0} Mbit/s recorded: {:.2}% of a core per 100 Mbit/s",
            (on - off) * 100.0,
            (on - off) * 100.0 / mbits * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&live);
    Ok(())
}

fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += walk_size(&e.path()),
                Ok(_) => total += e.metadata().map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    total
}
