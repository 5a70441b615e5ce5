//! Recording and playback with real peers: ffmpeg publishes (RTMP, SRT, RTSP), the server
//! records in fMP4 and MPEG-TS, ffprobe and ffmpeg check every segment (codecs, dimensions,
//! monotonic timestamps, every frame decodes), segments meet with no gap and no overlap, the
//! playback server lists them and cuts a window across two of them, hooks run with MediaMTX's
//! variables, retention deletes what is old and nothing else.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use tidegate_tests::http::fetch;
use tidegate_tests::peers::{ffmpeg_publish, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, peer, run_bounded, scratch};

const READY: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(60);

/// ffmpeg decodes every frame of `file` without an error line.
fn decodes_cleanly(file: &Path) {
    let out = run_bounded(
        Command::new(peer("ffmpeg"))
            .args(["-hide_banner", "-v", "error", "-nostdin", "-i"])
            .arg(file)
            // Frames keep their own timestamps and time base: with ffmpeg's defaults (a time
            // base of 1/frame rate), a frame that came early (a browser's irregular pacing)
            // lands on its neighbour's tick and the null muxer complains, though the file's
            // DTS increase.
            .args(["-fps_mode", "passthrough", "-enc_time_base", "-1"])
            .args(["-f", "null", "-"]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "{} does not decode cleanly: {err}",
        file.display()
    );
}

/// Video frames of `file`, after checking codecs, size and timestamps.
fn check_segment(file: &Path, video: &str, audio: &str) -> usize {
    let p = ffprobe(file.to_str().unwrap(), &[], Duration::from_secs(30));
    assert_eq!(
        p.codec("video").as_deref(),
        Some(video),
        "{}",
        file.display()
    );
    assert_eq!(
        p.codec("audio").as_deref(),
        Some(audio),
        "{}",
        file.display()
    );
    assert_eq!(p.dimensions(), Some((640, 360)));
    assert!(p.dts_monotonic("video") && p.dts_monotonic("audio"));
    let v = p.packets_of("video");
    assert!(v[0].keyframe, "{} starts on a key frame", file.display());
    decodes_cleanly(file);
    v.len()
}

fn wait_lines(file: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RTMP (H.264 + AAC) recorded in fMP4 and in MPEG-TS at once, in 2 s segments: every
/// segment plays, they meet exactly, nothing published is missing, hooks ran for each, and
/// playback lists one span and cuts a window across two segments.
#[test]
fn rtmp_recorded_in_fmp4_and_mpegts_with_playback() {
    let dir = scratch("record-rtmp");
    let rec = dir.join("rec");
    let hooks = dir.join("hooks.txt");
    let created = dir.join("created.txt");
    let server = TestServer::start(&format!(
        "playback: yes\nplaybackAddress: 127.0.0.1:0\n\
         pathDefaults:\n  record: yes\n  recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n  \
         recordSegmentDuration: 2s\n  \
         runOnRecordSegmentCreate: sh -c 'echo \"$MTX_PATH $MTX_SEGMENT_PATH\" >> {}'\n  \
         runOnRecordSegmentComplete: sh -c 'echo \"$MTX_PATH $MTX_SEGMENT_PATH $MTX_SEGMENT_DURATION $RTSP_PORT\" >> {}'\n\
         paths:\n  mp4:\n  ts:\n    recordFormat: mpegts\n",
        rec.display(),
        created.display(),
        hooks.display()
    ));
    let mut watch_mp4 = server.segment_watch();
    let mut watch_ts = server.segment_watch();
    let mut a = ffmpeg_publish(&server.rtmp_url("mp4"), 7, "flv", &dir);
    let mut b = ffmpeg_publish(&server.rtmp_url("ts"), 7, "flv", &dir);
    server.wait_ready("mp4", READY);
    assert!(a.wait(LIMIT).success() && b.wait(LIMIT).success());
    server.wait_not_ready("mp4", READY);
    server.wait_not_ready("ts", READY);

    for (path, watch, video, audio) in [
        ("mp4", &mut watch_mp4, "h264", "aac"),
        ("ts", &mut watch_ts, "h264", "aac"),
    ] {
        let index = server.recorder().index().segments(path, None, None);
        assert!(index.len() >= 3, "{path}: {index:?}");
        let done = watch.wait_complete(path, index.len(), LIMIT);
        let index = server.recorder().index().segments(path, None, None);
        let mut frames = 0;
        for (i, s) in index.iter().enumerate() {
            assert!(!s.recording);
            assert_eq!(s.file, done[i].0);
            assert!(s.file.extension().unwrap() == if path == "ts" { "ts" } else { "mp4" });
            frames += check_segment(&s.file, video, audio);
            if i + 1 < index.len() {
                // 2 s each (key frames every second), and the next starts where this ends.
                assert!((s.duration - 2.0).abs() < 0.05, "{path}: {s:?}");
                let gap = index[i + 1].start - s.end();
                assert!(
                    gap.abs() <= 1_000,
                    "{path}: {gap} µs between segments {i} and {}",
                    i + 1
                );
            }
        }
        // 7 s at 30 fps: all of it (the last part is written when the publisher leaves).
        assert!(
            frames >= 205,
            "{path}: {frames} video frames recorded of 210"
        );
        if path == "mp4" {
            // Each fMP4 segment's timestamps start at zero, and its last frame ends where the
            // next segment begins: no gap, no overlap (first and last timestamps).
            for (i, s) in index.iter().enumerate() {
                let p = ffprobe(s.file.to_str().unwrap(), &[], Duration::from_secs(30));
                let v = p.packets_of("video");
                assert_eq!(v[0].dts, Some(0), "{}", s.file.display());
                if i + 1 < index.len() {
                    let last = v.iter().filter_map(|p| p.pts).max().unwrap();
                    let end = last + 3000; // one frame at 30 fps, 90 kHz
                    let next = (index[i + 1].start - s.start) * 9 / 100;
                    assert!(
                        (end - next).abs() <= 90,
                        "segment {i} ends at {end}, the next starts at {next} (90 kHz)"
                    );
                }
            }
        }
    }

    // Hooks: one line per segment created and per segment complete, with the duration.
    let n = server.recorder().index().segments("mp4", None, None).len()
        + server.recorder().index().segments("ts", None, None).len();
    let complete = wait_lines(&hooks, n);
    assert_eq!(complete.len(), n, "{complete:?}");
    assert_eq!(wait_lines(&created, n).len(), n);
    for l in &complete {
        let f: Vec<&str> = l.split(' ').collect();
        assert!(f[0] == "mp4" || f[0] == "ts", "{l}");
        assert!(Path::new(f[1]).exists(), "{l}");
        let d: f64 = f[2].parse().unwrap();
        assert!(d > 0.5 && d < 2.1, "{l}");
        let rtsp_port = server
            .rtsp_url("x")
            .rsplit(':')
            .next()
            .unwrap()
            .replace("/x", "");
        assert_eq!(f[3], rtsp_port, "{l}");
    }

    // Playback: one span for the whole recording.
    let pb = server.playback_addr();
    let list = fetch(pb, "/list?path=mp4", &[]);
    assert_eq!(list.status, 200, "{}", list.text());
    let spans: serde_json::Value = serde_json::from_str(&list.text()).unwrap();
    let spans = spans.as_array().unwrap();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let total = spans[0]["duration"].as_f64().unwrap();
    assert!((total - 7.0).abs() < 0.2, "{spans:?}");
    // MediaMTX's URL: query keys sorted, the span's own start and duration.
    let url = spans[0]["url"].as_str().unwrap();
    assert!(
        url.contains("/get?duration=") && url.contains("&path=mp4&start="),
        "{url}"
    );

    // A 2 s window from 1.5 s in: across the first two segments.
    let first = server.recorder().index().segments("mp4", None, None)[0].start;
    let start = tidegate_record::playback::format_time(first + 1_500_000);
    let got = fetch(
        pb,
        &format!(
            "/get?path=mp4&start={}&duration=2",
            tidegate_core::text::percent_encode(&start)
        ),
        &[],
    );
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("video/mp4"));
    let file = dir.join("window.mp4");
    std::fs::write(&file, &got.body).unwrap();
    let p = ffprobe(file.to_str().unwrap(), &[], Duration::from_secs(30));
    let v = p.packets_of("video");
    assert!(v[0].keyframe);
    // Decoding starts on the key frame at 1 s, one GOP at most before the asked start; the
    // edit list puts the asked start (1.5 s) at time zero, so that frame is at -0.5 s and
    // the window ends 2 s after zero.
    let first = v[0].pts.unwrap() as f64 / 90_000.0;
    assert!((first + 0.5).abs() < 0.05, "the key frame is at {first} s");
    let last = v.last().unwrap().pts.unwrap() as f64 / 90_000.0;
    assert!((last - 2.0).abs() < 0.1, "the window ends at {last} s");
    assert!(
        v.len() >= 70 && v.len() <= 80,
        "{} frames in the window",
        v.len()
    );
    assert!(p.dts_monotonic("video") && p.dts_monotonic("audio"));
    decodes_cleanly(&file);

    // The same window as a non-fragmented MP4: one moov with every sample table, and the edit
    // list applied by ffmpeg: it starts at the asked time and lasts exactly the asked 2 s.
    let got = fetch(
        pb,
        &format!(
            "/get?path=mp4&start={}&duration=2&format=mp4",
            tidegate_core::text::percent_encode(&start)
        ),
        &[],
    );
    assert_eq!(got.status, 200, "{}", got.text());
    let file = dir.join("window-plain.mp4");
    std::fs::write(&file, &got.body).unwrap();
    let out = run_bounded(
        Command::new(peer("ffprobe"))
            .args(["-v", "error", "-count_frames", "-of", "json"])
            .args([
                "-show_entries",
                "format=duration,start_time:stream=codec_type,nb_read_frames",
            ])
            .arg(&file),
        Duration::from_secs(30),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let num = |x: &serde_json::Value| x.as_str().unwrap().parse::<f64>().unwrap();
    assert!((num(&v["format"]["duration"]) - 2.0).abs() < 0.05, "{v}");
    assert!(num(&v["format"]["start_time"]).abs() < 0.05, "{v}");
    let video = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "video")
        .unwrap();
    let frames = num(&video["nb_read_frames"]);
    assert!(
        (58.0..=62.0).contains(&frames),
        "{frames} frames shown of 2 s at 30 fps"
    );
    assert!(!got.body.windows(4).any(|w| w == b"moof"), "not fragmented");
    decodes_cleanly(&file);

    // Errors: no such path, a bad time, a TS recording.
    assert_eq!(fetch(pb, "/list?path=nothing", &[]).status, 404);
    assert_eq!(
        fetch(pb, "/get?path=mp4&start=yesterday&duration=1", &[]).status,
        400
    );
    let ts_first = server.recorder().index().segments("ts", None, None)[0].start;
    let ts_start =
        tidegate_core::text::percent_encode(&tidegate_record::playback::format_time(ts_first));
    assert_eq!(
        fetch(
            pb,
            &format!("/get?path=ts&start={ts_start}&duration=1"),
            &[]
        )
        .status,
        400
    );

    // The control API lists both recordings with their segments, and deletes one.
    let api = server.api_addr();
    let list: serde_json::Value =
        serde_json::from_str(&fetch(api, "/v3/recordings/list", &[]).text()).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mp4", "ts"], "{list}");
    let mp4 = server.recorder().index().segments("mp4", None, None);
    let got: serde_json::Value =
        serde_json::from_str(&fetch(api, "/v3/recordings/get/mp4", &[]).text()).unwrap();
    assert_eq!(
        got["segments"].as_array().unwrap().len(),
        mp4.len(),
        "{got}"
    );
    let first_start = got["segments"][0]["start"].as_str().unwrap().to_string();
    let del = tidegate_tests::http::send(
        api,
        "DELETE",
        &format!(
            "/v3/recordings/deletesegment?path=mp4&start={}",
            tidegate_core::text::percent_encode(&first_start)
        ),
        &[],
        b"",
    );
    assert_eq!(del.status, 200, "{}", del.text());
    assert!(!mp4[0].file.exists());
    assert_eq!(
        server.recorder().index().segments("mp4", None, None).len(),
        mp4.len() - 1
    );
    assert_eq!(fetch(api, "/v3/recordings/get/nothing", &[]).status, 404);

    // Metrics count what was written.
    let m = fetch(server.metrics_addr(), "/metrics", &[]).text();
    let written: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_record_bytes_written_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(written > 500_000, "{written} bytes written");
    assert!(m.contains("tidegate_record_parts_dropped_total 0"), "{m}");
}

/// Retention: segments that ended longer ago than `recordDeleteAfter` are deleted, newer ones
/// and paths that keep forever are not, and emptied directories go.
#[test]
fn retention_deletes_what_is_old_and_nothing_else() {
    let dir = scratch("record-retention");
    let rec = dir.join("rec");
    let server = TestServer::start(&format!(
        "pathDefaults:\n  record: yes\n  recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n  \
         recordSegmentDuration: 1s\n  recordDeleteAfter: 1h\n\
         paths:\n  old:\n  forever:\n    recordDeleteAfter: 0s\n",
        rec.display(),
    ));
    let mut w1 = server.segment_watch();
    let mut w2 = server.segment_watch();
    let mut a = ffmpeg_publish(&server.rtmp_url("old"), 4, "flv", &dir);
    let mut b = ffmpeg_publish(&server.rtmp_url("forever"), 4, "flv", &dir);
    assert!(a.wait(LIMIT).success() && b.wait(LIMIT).success());
    server.wait_not_ready("old", READY);
    server.wait_not_ready("forever", READY);
    let n_old = server.recorder().index().segments("old", None, None).len();
    let n_forever = server
        .recorder()
        .index()
        .segments("forever", None, None)
        .len();
    w1.wait_complete("old", n_old, LIMIT);
    w2.wait_complete("forever", n_forever, LIMIT);
    let old = server.recorder().index().segments("old", None, None);
    assert!(old.len() >= 3);

    // Now: nothing is an hour old.
    assert!(server.recorder().clean_once(SystemTime::now()).is_empty());
    // An hour and two seconds from the second segment's end: the first two go.
    let cut = old[1].end() + 3_600_000_000 + 1;
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(cut as u64);
    let deleted = server.recorder().clean_once(at);
    assert_eq!(deleted, vec![old[0].file.clone(), old[1].file.clone()]);
    assert!(!old[0].file.exists() && !old[1].file.exists());
    assert!(old[2..].iter().all(|s| s.file.exists()));
    assert_eq!(
        server.recorder().index().segments("old", None, None).len(),
        old.len() - 2
    );
    // A year later: every segment of `old` goes (and its directory), none of `forever`.
    let year = SystemTime::now() + Duration::from_secs(365 * 86400);
    server.recorder().clean_once(year);
    assert!(server
        .recorder()
        .index()
        .segments("old", None, None)
        .is_empty());
    assert!(
        !rec.join("old").exists(),
        "the emptied directory is removed"
    );
    assert_eq!(
        server
            .recorder()
            .index()
            .segments("forever", None, None)
            .len(),
        n_forever
    );
    let journal = std::fs::read_to_string(rec.join(".tidegate-index.jsonl")).unwrap();
    assert!(journal.contains("\"op\":\"del\""));
}

/// The server binary as a process of its own, recording every path to `rec` with 1 s parts.
fn recording_server(dir: &Path, rec: &Path, rtmp: u16, playback: u16) -> PeerProcess {
    let conf = dir.join("tidegate.yml");
    std::fs::write(
        &conf,
        format!(
            "logLevel: info\napi: no\nmetrics: no\nrtsp: no\nhls: no\nwebrtc: no\nsrt: no\n\
             rtmpAddress: 127.0.0.1:{rtmp}\nplayback: yes\nplaybackAddress: 127.0.0.1:{playback}\n\
             keyStore: {}\n\
             pathDefaults:\n  record: yes\n  recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n  \
             recordPartDuration: 1s\n  recordSegmentDuration: 3s\n",
            dir.join("keys.db").display(),
            rec.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(tidegate_tests::server_binary());
    cmd.arg(&conf);
    let p = PeerProcess::spawn("tidegate", &mut cmd, dir);
    tidegate_tests::peers::wait_listening(rtmp, Duration::from_secs(20));
    tidegate_tests::peers::wait_listening(playback, Duration::from_secs(20));
    p
}

fn mp4_files(rec: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(rec.join("cam"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "mp4"));
    v.sort();
    v
}

/// Video frames ffmpeg decodes from `file` (errors on a cut last part allowed).
fn decoded_video_frames(file: &Path) -> usize {
    let out = run_bounded(
        Command::new(peer("ffprobe"))
            .args(["-v", "quiet", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
            .arg(file),
        Duration::from_secs(60),
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// GStreamer demuxes and decodes `file` to its end (qtdemux, h264parse, avdec_h264): the
/// pipeline reaches end-of-stream with no error.
fn gstreamer_plays(file: &Path) {
    let out = run_bounded(
        Command::new(peer("gst-launch-1.0"))
            .args(["-m", "filesrc"])
            .arg(format!("location={}", file.display()))
            .args([
                "!",
                "qtdemux",
                "!",
                "h264parse",
                "!",
                "avdec_h264",
                "!",
                "fakesink",
            ]),
        Duration::from_secs(60),
    );
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && log.contains("EOS") && !log.contains("ERROR"),
        "GStreamer cannot play {}: {log}{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn micros_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// kill -9 of the server mid-recording, at three random instants: every file on disk plays in
/// ffmpeg and GStreamer up to its last whole part, at most about a part of media is lost, and after a
/// restart the cut file is trimmed (it then decodes without an error), `/list` shows every
/// segment, and recording resumes in a new segment.
#[test]
fn kill_9_mid_recording_loses_at_most_a_part() {
    let dir = scratch("record-kill9");
    let rec = dir.join("rec");
    let rtmp = tidegate_tests::peers::free_port();
    let playback = tidegate_tests::peers::free_port();
    let template =
        tidegate_record::Template::new(&format!("{}/%path/%Y-%m-%d_%H-%M-%S-%f", rec.display()))
            .unwrap();
    let mut seed = (micros_now() as u64) | 1;
    for round in 0..3 {
        let mut server = recording_server(&dir, &rec, rtmp, playback);
        let before = mp4_files(&rec).len();
        let mut publisher =
            ffmpeg_publish(&format!("rtmp://127.0.0.1:{rtmp}/cam"), 60, "flv", &dir);
        // Wait for the new segment's first whole part on disk (the init alone is ~1 kB).
        let deadline = std::time::Instant::now() + READY;
        let file = loop {
            let files = mp4_files(&rec);
            if files.len() > before {
                let f = files.last().unwrap().clone();
                if std::fs::metadata(&f).map_or(0, |m| m.len()) > 20_000 {
                    break f;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: nothing recorded"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // A random instant 0.5 s to 4.5 s later (xorshift: a different one each run).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(500 + seed % 4000));
        server.kill9();
        let killed_at = micros_now();
        publisher.kill9();

        // Every file plays up to its last whole part, before any repair.
        let files = mp4_files(&rec);
        let mut latest_end = 0;
        for f in &files {
            let scan = tidegate_record::read::scan(&mut std::fs::File::open(f).unwrap())
                .unwrap_or_else(|e| panic!("round {round}: {} unreadable: {e}", f.display()));
            let whole: usize = scan
                .parts
                .iter()
                .flat_map(|p| p.trafs.iter().filter(|t| t.track_id == 1))
                .map(|t| t.samples.len())
                .sum();
            let decoded = decoded_video_frames(f);
            assert!(
                decoded >= whole,
                "round {round}: {} decodes {decoded} of its {whole} whole frames",
                f.display()
            );
            // A segment created just before the kill may hold its init alone: nothing to play
            // (the restart below removes it).
            if whole > 0 {
                gstreamer_plays(f);
            }
            let (_, start, _) = template.parse(f).unwrap();
            latest_end = latest_end.max(start + (scan.duration() * 1e6) as i64);
        }
        assert!(latest_end > 0, "round {round}: no media on disk");
        let lost = (killed_at - latest_end) as f64 / 1e6;
        assert!(
            lost <= 1.5,
            "round {round}: {lost:.3} s of media lost at kill -9 (parts are 1 s; {} cut at {})",
            file.display(),
            killed_at
        );
        eprintln!("round {round}: {lost:.3} s lost at kill -9");

        // Restart: the cut part is trimmed (a file cut before its first part, holding no
        // media, is removed), every segment is listed as one span per run.
        let server = recording_server(&dir, &rec, rtmp, playback);
        let files = mp4_files(&rec);
        for f in &files {
            decodes_cleanly(f);
        }
        let list = fetch(([127, 0, 0, 1], playback).into(), "/list?path=cam", &[]);
        assert_eq!(list.status, 200);
        let spans: serde_json::Value = serde_json::from_str(&list.text()).unwrap();
        let listed: f64 = spans
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["duration"].as_f64().unwrap())
            .sum();
        // Runs closer than a second (a quick restart) are one span; together they hold every
        // segment on disk.
        let on_disk: f64 = files
            .iter()
            .map(|f| {
                tidegate_record::read::scan(&mut std::fs::File::open(f).unwrap())
                    .unwrap()
                    .duration()
            })
            .sum();
        assert!(
            (listed - on_disk).abs() < 0.1 * files.len() as f64 + 1.5 * round as f64,
            "listed {listed} s, on disk {on_disk} s: {spans}"
        );
        drop(server);
    }
    // Each round made at least one segment of its own, and all are on disk.
    assert!(mp4_files(&rec).len() >= 3);
}

/// ffmpeg publishing testsrc2 (640x360, 30 fps, 1 s GOP) and a sine with `venc`/`aenc` to
/// `url` in `format`, for `seconds`.
fn publish_with(
    url: &str,
    venc: &[&str],
    aenc: &[&str],
    format: &str,
    seconds: u32,
    dir: &Path,
) -> PeerProcess {
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000"])
        .args(["-t", &seconds.to_string(), "-map", "0:v", "-map", "1:a"])
        .args(["-pix_fmt", "yuv420p", "-g", "30", "-keyint_min", "30"])
        .args(venc)
        .args(aenc)
        .args(["-f", format, url]);
    PeerProcess::spawn(&format!("publish-{format}"), &mut cmd, dir)
}

/// Waits for every segment of `path` to be complete once its publisher has left, and checks
/// each (codecs, size, timestamps, clean decode); returns the recorded seconds.
fn recorded(
    server: &TestServer,
    watch: &mut tidegate_tests::server::SegmentWatch,
    path: &str,
    video: Option<(&str, (u64, u64))>,
    audio: &str,
) -> f64 {
    server.wait_not_ready(path, READY);
    let n = server.recorder().index().segments(path, None, None).len();
    assert!(n >= 1, "{path}: nothing recorded");
    watch.wait_complete(path, n, LIMIT);
    let mut seconds = 0.0;
    for s in server.recorder().index().segments(path, None, None) {
        let p = ffprobe(s.file.to_str().unwrap(), &[], Duration::from_secs(30));
        assert_eq!(
            p.codec("audio").as_deref(),
            Some(audio),
            "{}",
            s.file.display()
        );
        assert!(p.dts_monotonic("audio"), "{}", s.file.display());
        match video {
            Some((codec, size)) => {
                assert_eq!(
                    p.codec("video").as_deref(),
                    Some(codec),
                    "{}",
                    s.file.display()
                );
                assert_eq!(p.dimensions(), Some(size), "{}", s.file.display());
                assert!(p.dts_monotonic("video"));
                assert!(p.packets_of("video")[0].keyframe);
            }
            None => assert_eq!(p.codec("video"), None, "{}", s.file.display()),
        }
        decodes_cleanly(&s.file);
        seconds += s.duration;
    }
    seconds
}

fn record_config(rec: &Path) -> String {
    format!(
        "pathDefaults:\n  record: yes\n  recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n  \
         recordSegmentDuration: 2s\n\
         paths:\n  ~mp4$:\n  ~ts$:\n    recordFormat: mpegts\n",
        rec.display()
    )
}

/// Publishes with `venc`/`aenc` to `<name>-mp4` (fMP4) and `<name>-ts` (MPEG-TS) at once, for
/// 5 s, with `url` making each path's URL; checks both recordings.
fn both_formats(
    name: &str,
    url: impl Fn(&TestServer, &str) -> String,
    venc: &[&str],
    aenc: &[&str],
    format: &str,
    codecs: (&str, &str),
) {
    let dir = scratch(&format!("record-{name}"));
    let server = TestServer::start(&record_config(&dir.join("rec")));
    let paths = [format!("{name}-mp4"), format!("{name}-ts")];
    let mut watches = [server.segment_watch(), server.segment_watch()];
    let mut publishers: Vec<PeerProcess> = paths
        .iter()
        .map(|p| publish_with(&url(&server, p), venc, aenc, format, 5, &dir))
        .collect();
    for p in &mut publishers {
        assert!(p.wait(LIMIT).success(), "{}", p.stderr());
    }
    for (path, w) in paths.iter().zip(&mut watches) {
        let s = recorded(&server, w, path, Some((codecs.0, (640, 360))), codecs.1);
        // Within one part (1 s) of what was published.
        assert!((s - 5.0).abs() <= 1.0, "{path}: {s} s recorded of 5");
    }
}

/// SRT (H.265 + AAC in MPEG-TS from ffmpeg) recorded in fMP4 (hvc1) and MPEG-TS.
#[test]
fn srt_h265_recorded_in_both_formats() {
    both_formats(
        "srt",
        |s, p| s.srt_url(&format!("publish:{p}"), "&latency=200000"),
        &[
            "-c:v",
            "libx265",
            "-x265-params",
            "log-level=none:bframes=0",
            "-preset",
            "ultrafast",
        ],
        &["-c:a", "aac", "-ac", "2", "-ar", "48000"],
        "mpegts",
        ("hevc", "aac"),
    );
}

/// RTSP (H.264 + Opus from ffmpeg) recorded in fMP4 and MPEG-TS (Opus in both).
#[test]
fn rtsp_h264_opus_recorded_in_both_formats() {
    both_formats(
        "rtsp",
        |s, p| s.rtsp_url(p),
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ],
        &["-c:a", "libopus", "-b:a", "64k", "-ac", "2", "-ar", "48000"],
        "rtsp",
        ("h264", "opus"),
    );
}

/// Chromium publishing `codec` + Opus over WHIP, for 4 s, to `path`.
fn chromium_whip(server: &TestServer, path: &str, codec: &str) {
    let mut cmd = Command::new(peer("node"));
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/js/webrtc_pages.mjs"))
        .arg(tidegate_tests::peers_dir().join("node/node_modules"))
        .arg("4")
        .arg("--publish")
        .arg(server.webrtc_url(path, &format!("publish?autostart=yes&codec={codec}")))
        .arg("--play")
        .arg(server.webrtc_url(path, ""));
    let out = run_bounded(&mut cmd, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// WHIP from Chromium: VP9 + Opus and AV1 + Opus in fMP4; in MPEG-TS, which cannot hold VP9,
/// the Opus track alone, and the log says why.
#[test]
fn whip_vp9_and_av1_recorded() {
    let dir = scratch("record-whip");
    let server = TestServer::start(&record_config(&dir.join("rec")));
    for (codec, ffprobe_name) in [("VP9", "vp9"), ("AV1", "av1")] {
        let path = format!("{}-mp4", codec.to_ascii_lowercase());
        let mut w = server.segment_watch();
        chromium_whip(&server, &path, codec);
        let s = recorded(
            &server,
            &mut w,
            &path,
            Some((ffprobe_name, (640, 480))),
            "opus",
        );
        assert!(s > 2.0, "{path}: {s} s recorded");
    }
    let mut w = server.segment_watch();
    chromium_whip(&server, "vp9-ts", "VP9");
    let s = recorded(&server, &mut w, "vp9-ts", None, "opus");
    assert!(s > 2.0, "vp9-ts: {s} s recorded");
    let said = tidegate_tests::logs::lines_with(&["vp9-ts", "VP9 cannot be stored in mpegts"]);
    assert!(!said.is_empty(), "the log says VP9 was left out");
}

/// The recording directory becomes read-only mid-stream (a read-only file system is mounted
/// over it, in the server's own mount namespace): the live reader sees no gap, the error is
/// logged once per segment that could not be created (not once per frame), and what was
/// recorded before stays whole.
#[test]
fn read_only_directory_mid_stream_spares_the_live_stream() {
    disk_trouble("record-readonly", "ro,size=1m", "Read-only file system");
}

/// The disk fills up mid-stream (a 300 kB file system mounted over the directory): segments
/// are cut short or not created, one error line each, the live reader has no gap, and what
/// was recorded before stays whole.
#[test]
fn full_disk_mid_stream_spares_the_live_stream() {
    disk_trouble("record-full", "size=300k", "No space left on device");
}

/// Runs the disk-trouble scenario: after two segments, a tmpfs mounted with `mount_opts` over
/// the directory; `error` is what the log must say.
fn disk_trouble(name: &str, mount_opts: &str, error: &str) {
    let dir = scratch(name);
    let rec = dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    let rtmp = tidegate_tests::peers::free_port();
    let conf = dir.join("tidegate.yml");
    std::fs::write(
        &conf,
        format!(
            "logLevel: info\napi: no\nmetrics: no\nrtsp: no\nhls: no\nwebrtc: no\nsrt: no\n\
             rtmpAddress: 127.0.0.1:{rtmp}\nkeyStore: {}\n\
             pathDefaults:\n  record: yes\n  recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n  \
             recordSegmentDuration: 1s\n",
            dir.join("keys.db").display(),
            rec.display()
        ),
    )
    .unwrap();
    // The server in a mount namespace of its own: `unshare` execs it, so its pid is the
    // server's, and `nsenter` can mount over the directory for it alone.
    let mut cmd = Command::new(peer("unshare"));
    cmd.args(["--mount", "--propagation", "private"])
        .arg(tidegate_tests::server_binary())
        .arg(&conf);
    let mut server = PeerProcess::spawn("tidegate", &mut cmd, &dir);
    tidegate_tests::peers::wait_listening(rtmp, Duration::from_secs(20));
    let url = format!("rtmp://127.0.0.1:{rtmp}/cam");
    let mut publisher = ffmpeg_publish(&url, 9, "flv", &dir);
    // A live reader for the whole time.
    let live = dir.join("live.mkv");
    let deadline = std::time::Instant::now() + READY;
    while !server.stderr().contains("recording to") {
        assert!(std::time::Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut reader = tidegate_tests::peers::ffmpeg_read(&url, 7, &live, &dir);
    // Two segments done, then the directory goes read-only.
    let deadline = std::time::Instant::now() + READY;
    while server.stderr().matches("complete (").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mounted = run_bounded(
        Command::new(peer("nsenter"))
            .args(["-t", &server.pid().to_string(), "-m"])
            .args(["mount", "-t", "tmpfs", "-o", mount_opts, "none"])
            .arg(&rec),
        Duration::from_secs(10),
    );
    assert!(
        mounted.status.success(),
        "{}",
        String::from_utf8_lossy(&mounted.stderr)
    );
    let kept: Vec<PathBuf> = mp4_files(&rec);
    assert!(publisher.wait(LIMIT).success());
    assert!(reader.wait(LIMIT).success(), "{}", reader.stderr());
    server.kill9();
    let log = server.stderr();

    // The live reader: 7 s of video with no hole.
    let p = ffprobe(live.to_str().unwrap(), &[], Duration::from_secs(30));
    let v = p.packets_of("video");
    assert!(v.len() >= 190, "{} live frames of 210", v.len());
    let pts: Vec<i64> = v.iter().filter_map(|p| p.pts).collect();
    let mut sorted = pts.clone();
    sorted.sort();
    let hole = sorted.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(hole <= 100, "a {hole} ms hole in the live stream");

    // Refused segments: one error line each, a few in all, never one per frame.
    let errors = log.matches("is not recorded").count();
    assert!(
        (1..=8).contains(&errors),
        "{errors} error lines for ~6 segments refused:\n{log}"
    );
    assert!(log.contains(error), "{log}");
    // What was recorded before is whole.
    assert!(kept.len() >= 2);
    for f in &kept {
        decodes_cleanly(f);
    }
}

/// The codecs fMP4 holds beyond HLS's: MP3 and G.711 A-law over RTMP, AC-3 over SRT (ffmpeg),
/// VP8 over WHIP (aiortc), each recorded as it arrived and decoded by ffmpeg without an error.
#[test]
fn mp3_g711_ac3_and_vp8_recorded_in_fmp4() {
    let dir = scratch("record-codecs");
    let server = TestServer::start(&record_config(&dir.join("rec")));
    let x264 = [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
    ];
    let cases: [(&str, &[&str], &str, String); 3] = [
        (
            "mp3-mp4",
            &["-c:a", "libmp3lame", "-ar", "44100", "-b:a", "96k"],
            "flv",
            server.rtmp_url("mp3-mp4"),
        ),
        (
            "alaw-mp4",
            &["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"],
            "flv",
            server.rtmp_url("alaw-mp4"),
        ),
        (
            "ac3-mp4",
            &["-c:a", "ac3", "-ar", "48000", "-ac", "2"],
            "mpegts",
            server.srt_url("publish:ac3-mp4", "&latency=200000"),
        ),
    ];
    let mut watches = Vec::new();
    let mut publishers = Vec::new();
    for (path, aenc, format, url) in &cases {
        watches.push(server.segment_watch());
        publishers.push((path, publish_with(url, &x264, aenc, format, 4, &dir)));
    }
    for (path, p) in &mut publishers {
        assert!(p.wait(LIMIT).success(), "{path}: {}", p.stderr());
    }
    for ((path, _, _, _), (w, audio)) in cases
        .iter()
        .zip(watches.iter_mut().zip(["mp3", "pcm_alaw", "ac3"]))
    {
        let s = recorded(&server, w, path, Some(("h264", (640, 360))), audio);
        assert!((s - 4.0).abs() <= 1.0, "{path}: {s} s recorded of 4");
    }
    // VP8 from aiortc (its publisher sends video only with --codec VP8).
    let mut w = server.segment_watch();
    let mut cmd = Command::new(peer("python"));
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/webrtc_peer.py"))
        .args([
            "whip",
            &server.webrtc_url("vp8-mp4", "whip"),
            "--seconds",
            "4",
        ])
        .args(["--codec", "VP8"]);
    let mut whip = PeerProcess::spawn("aiortc-whip", &mut cmd, &dir);
    assert!(whip.wait(LIMIT).success(), "{}", whip.stderr());
    server.wait_not_ready("vp8-mp4", READY);
    let n = server
        .recorder()
        .index()
        .segments("vp8-mp4", None, None)
        .len();
    assert!(n >= 1, "VP8 recorded");
    w.wait_complete("vp8-mp4", n, LIMIT);
    for s in server.recorder().index().segments("vp8-mp4", None, None) {
        let p = ffprobe(s.file.to_str().unwrap(), &[], Duration::from_secs(30));
        assert_eq!(
            p.codec("video").as_deref(),
            Some("vp8"),
            "{}",
            s.file.display()
        );
        assert!(p.packets_of("video").len() >= 30);
        assert!(p.dts_monotonic("video"));
        decodes_cleanly(&s.file);
    }
}

/// Playback is behind the `playback` permission (401 with a Basic challenge without it, the
/// path checked), and served over HTTPS with `playbackEncryption` (curl, TLS).
#[test]
fn playback_needs_its_permission_and_speaks_https() {
    let dir = scratch("record-playback-auth");
    let (key, cert) = tidegate_tests::self_signed(&dir);
    let server = TestServer::start(&format!(
        "playback: yes\nplaybackAddress: 127.0.0.1:0\nplaybackEncryption: yes\n\
         playbackServerKey: {}\nplaybackServerCert: {}\n\
         authInternalUsers:\n\
         \x20 - user: any\n    permissions:\n      - action: publish\n      - action: read\n\
         \x20 - user: archivist\n    pass: secret\n    permissions:\n      - action: playback\n        path: cam\n\
         \x20 - user: any\n    ips: [127.0.0.1]\n    permissions:\n      - action: api\n\
         pathDefaults:\n  record: yes\n  recordPath: {}/%path/%Y-%m-%d_%H-%M-%S-%f\n\
         paths:\n  cam:\n  other:\n",
        key.display(),
        cert.display(),
        dir.join("rec").display()
    ));
    let mut w = server.segment_watch();
    let mut p = ffmpeg_publish(&server.rtmp_url("cam"), 3, "flv", &dir);
    assert!(p.wait(LIMIT).success());
    server.wait_not_ready("cam", READY);
    let n = server.recorder().index().segments("cam", None, None).len();
    w.wait_complete("cam", n, LIMIT);
    let addr = server.playback_addr();
    let curl = |user: Option<&str>, target: &str| -> (String, String) {
        let mut cmd = Command::new(peer("curl"));
        cmd.args(["-sk", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}"]);
        if let Some(u) = user {
            cmd.args(["-u", u]);
        }
        cmd.arg(format!("https://{addr}{target}"));
        let out = run_bounded(&mut cmd, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let code = text.lines().last().unwrap_or("").to_string();
        (code, text)
    };
    let (code, head) = curl(None, "/list?path=cam");
    assert_eq!(code, "401", "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    assert_eq!(curl(Some("archivist:wrong"), "/list?path=cam").0, "401");
    assert_eq!(curl(Some("archivist:secret"), "/list?path=cam").0, "200");
    // The permission is for `cam` only.
    assert_eq!(curl(Some("archivist:secret"), "/list?path=other").0, "401");
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = run_bounded(
        Command::new(peer("curl"))
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{addr}/list?path=cam")),
        Duration::from_secs(30),
    );
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
}
