//! `source: http(s)://…m3u8`: paths pulled from another server's HLS: Tidegate's own LL-HLS
//! over HTTPS (fMP4 parts, blocking reloads; its certificate pinned with `sourceFingerprint`),
//! and nginx serving directories ffmpeg writes HLS into (MPEG-TS segments; fMP4 segments with
//! an init section). Each is read back over RTMP (ffprobe: frames, codecs, size, monotonic
//! timestamps) and WHEP (aiortc: frames decoded).

use std::process::Command;
use std::time::Duration;

use tidegate_tests::peers::{ffmpeg_publish, ffmpeg_read, free_port, nginx_static, PeerProcess};
use tidegate_tests::server::TestServer;
use tidegate_tests::{ffprobe, peer, poll, scratch};

/// ffmpeg writing the synthetic source as live HLS into `out` (a playlist of 6 one-second
/// segments, old ones deleted), with `extra` options (the segment type).
fn ffmpeg_hls(out: &std::path::Path, extra: &[&str], dir: &std::path::Path) -> PeerProcess {
    std::fs::create_dir_all(out).expect("HLS directory");
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(tidegate_tests::peers::synthetic_source(120, "640x360"))
        .args(["-f", "hls", "-hls_time", "1", "-hls_list_size", "6"])
        .args(["-hls_flags", "delete_segments+independent_segments"])
        .args(extra)
        .arg(out.join("index.m3u8"));
    PeerProcess::spawn("ffmpeg-hls", &mut cmd, dir)
}

/// ffmpeg writing the synthetic source as live HLS with the audio apart: a multivariant
/// `index.m3u8` whose video variant names an audio group, the audio a rendition of its own
/// (`-var_stream_map "v:0,agroup:aud a:0,agroup:aud"`).
fn ffmpeg_hls_audio_apart(
    out: &std::path::Path,
    extra: &[&str],
    dir: &std::path::Path,
) -> PeerProcess {
    std::fs::create_dir_all(out).expect("HLS directory");
    let mut cmd = Command::new(peer("ffmpeg"));
    cmd.args(tidegate_tests::peers::synthetic_source(120, "640x360"))
        .args(["-f", "hls", "-hls_time", "1", "-hls_list_size", "6"])
        .args(["-hls_flags", "delete_segments+independent_segments"])
        .args(["-var_stream_map", "v:0,agroup:aud a:0,agroup:aud"])
        .args(["-master_pl_name", "index.m3u8"])
        .args(extra)
        .arg(out.join("stream_%v.m3u8"));
    PeerProcess::spawn("ffmpeg-hls-apart", &mut cmd, dir)
}

#[test]
fn hls_from_tidegate_and_from_nginx_is_pulled_and_read_over_rtmp_and_whep() {
    let dir = scratch("hls-source");
    // Tidegate's LL-HLS over HTTPS, its self-signed certificate pinned by the edge.
    let (key, cert, fingerprint) = tidegate_tests::self_signed_pinned(&dir);
    let origin = TestServer::start(&format!(
        "hlsEncryption: yes\nhlsServerKey: {}\nhlsServerCert: {}\n",
        key.display(),
        cert.display()
    ));
    let mut publisher = ffmpeg_publish(&origin.rtmp_url("cam"), 120, "flv", &dir);
    origin.wait_ready("cam", Duration::from_secs(20));

    let www = dir.join("www");
    let mut ts = ffmpeg_hls(&www.join("ts"), &[], &dir);
    let mut fmp4 = ffmpeg_hls(
        &www.join("fmp4"),
        &[
            "-hls_segment_type",
            "fmp4",
            "-hls_fmp4_init_filename",
            "init.mp4",
        ],
        &dir,
    );
    // The audio apart, in MPEG-TS and in fMP4 segments.
    let mut ts_apart = ffmpeg_hls_audio_apart(&www.join("tsapart"), &[], &dir);
    let mut fmp4_apart = ffmpeg_hls_audio_apart(
        &www.join("fmp4apart"),
        &[
            "-hls_segment_type",
            "fmp4",
            "-hls_fmp4_init_filename",
            "init_%v.mp4",
        ],
        &dir,
    );
    let port = free_port();
    let mut nginx = nginx_static(port, &www, &dir);
    for v in [
        "ts",
        "fmp4",
        "tsapart/stream_0",
        "tsapart/stream_1",
        "fmp4apart/stream_1",
    ] {
        let file = match v.split_once('/') {
            Some((d, f)) => www.join(d).join(format!("{f}.m3u8")),
            None => www.join(v).join("index.m3u8"),
        };
        poll(
            Duration::from_secs(30),
            || format!("ffmpeg wrote no {}", file.display()),
            || {
                std::fs::read_to_string(&file)
                    .ok()
                    .filter(|t| t.matches("#EXTINF").count() >= 2)
                    .map(drop)
            },
        );
    }

    let edge = TestServer::start(&format!(
        "paths:\n\
         \x20 ll:\n\
         \x20   source: {ll}\n\
         \x20   sourceFingerprint: \"{fingerprint}\"\n\
         \x20   sourceOnDemand: yes\n\
         \x20 ts:\n\
         \x20   source: http://127.0.0.1:{port}/ts/index.m3u8\n\
         \x20   sourceOnDemand: yes\n\
         \x20 fmp4:\n\
         \x20   source: http://127.0.0.1:{port}/fmp4/index.m3u8\n\
         \x20   sourceOnDemand: yes\n\
         \x20 tsapart:\n\
         \x20   source: http://127.0.0.1:{port}/tsapart/index.m3u8\n\
         \x20   sourceOnDemand: yes\n\
         \x20 fmp4apart:\n\
         \x20   source: http://127.0.0.1:{port}/fmp4apart/index.m3u8\n\
         \x20   sourceOnDemand: yes\n",
        ll = origin
            .hls_url("cam", "index.m3u8")
            .replacen("http://", "https://", 1),
    ));

    let master = std::fs::read_to_string(www.join("tsapart/index.m3u8")).unwrap_or_default();
    assert!(
        master.contains("#EXT-X-MEDIA:TYPE=AUDIO") && master.contains("AUDIO=\""),
        "ffmpeg wrote no audio rendition:\n{master}"
    );
    for path in ["ll", "ts", "fmp4", "tsapart", "fmp4apart"] {
        // Over RTMP.
        let file = dir.join(format!("{path}.flv"));
        let mut r = ffmpeg_read(&edge.rtmp_url(path), 5, &file, &dir);
        let status = r.wait(Duration::from_secs(60));
        assert!(status.success(), "{path}: {}", r.stderr());
        let p = ffprobe(file.to_str().unwrap(), &[], Duration::from_secs(30));
        let frames = p.packets_of("video").len();
        let audio = p.packets_of("audio").len();
        eprintln!("{path} over RTMP: {frames} video frames, {audio} audio frames");
        assert_eq!(p.codec("video").as_deref(), Some("h264"), "{path}");
        assert_eq!(p.codec("audio").as_deref(), Some("aac"), "{path}");
        assert_eq!(p.dimensions(), Some((640, 360)), "{path}");
        assert!(frames >= 120, "{path}: {frames} frames in 5 s");
        assert!(audio >= 150, "{path}: {audio} audio frames in 5 s");
        assert!(p.dts_monotonic("video"), "{path}");
        assert!(p.dts_monotonic("audio"), "{path}");
        // Audio and video in step (the renditions merged on one timeline): their first and
        // last decode times within half a second of each other.
        let (v, a) = (p.dts_seconds("video"), p.dts_seconds("audio"));
        let first = (v[0] - a[0]).abs();
        let last = (v[v.len() - 1] - a[a.len() - 1]).abs();
        assert!(
            first < 0.5 && last < 0.5,
            "{path}: A/V apart by {first:.3} s at the start, {last:.3} s at the end"
        );

        // Over WHEP.
        let v =
            &tidegate_tests::peers::aiortc_whep_viewer(|c| c, &edge.webrtc_url(path, "whep"), 4);
        eprintln!("{path} over WHEP: {v}");
        let frames = v["frames"].as_f64().unwrap_or(0.0);
        let fps = v["unique_pts"].as_f64().unwrap_or(0.0)
            / v["pts_span_s"].as_f64().unwrap_or(1.0).max(0.001);
        assert!(frames >= 60.0 && fps >= 25.0, "{path}: {fps:.1} fps: {v}");
        assert_eq!(v["pts_monotonic"], true, "{path}: {v}");
        assert_eq!(v["width"], 640, "{path}: {v}");
        let source = edge.paths().get(path).and_then(|i| i.source).map(|s| s.0);
        assert_eq!(
            source,
            Some("hlsSource"),
            "{path} is published by the HLS source"
        );
    }
    // Tidegate's LL-HLS is followed part by part; ffmpeg's playlists segment by segment.
    let pulls = tidegate_tests::logs::lines_with(&["[HLS source] pulling"]);
    let mode = |name: &str| {
        let l = pulls
            .iter()
            .find(|l| {
                l.contains(&format!("path=\"{name}\"")) || l.contains(&format!("path={name} "))
            })
            .unwrap_or_else(|| panic!("no pull of {name} in the log: {pulls:?}"));
        l.contains("low_latency=true")
    };
    assert!(mode("ll"), "{pulls:?}");
    assert!(!mode("ts") && !mode("fmp4"), "{pulls:?}");
    // The audio renditions are followed beside their variants.
    for name in ["tsapart", "fmp4apart"] {
        assert!(
            pulls
                .iter()
                .any(|l| l.contains("pulling the audio rendition")
                    && (l.contains(&format!("path=\"{name}\""))
                        || l.contains(&format!("path={name} ")))),
            "{name}: {pulls:?}"
        );
    }
    ts_apart.kill9();
    fmp4_apart.kill9();
    publisher.kill9();
    ts.kill9();
    fmp4.kill9();
    nginx.kill9();
}
