use std::time::Instant;

use bytes::Bytes;
use tidegate_core::{CodecParams, Frame, StreamDesc, Track};

use super::segmenter::{Event, Segmenter, SegmenterConfig};
use super::*;

/// SPS and PPS of a real 640x360 stream (the codec crate's ffmpeg fixture).
fn params() -> (Bytes, Bytes) {
    let data = include_bytes!("../../codec/tests/fixtures/h264_640x360.h264");
    let nals = tidegate_codec::nal::split_annexb(data);
    let (sps, pps) = tidegate_codec::h264::find_params(nals).unwrap();
    (Bytes::copy_from_slice(sps), Bytes::copy_from_slice(pps))
}

fn desc(video: bool, audio: bool) -> StreamDesc {
    let mut tracks = Vec::new();
    if video {
        tracks.push(Track {
            id: 0,
            params: {
                let (sps, pps) = params();
                CodecParams::H264 { sps, pps }
            },
            clock_rate: 90_000,
        });
    }
    if audio {
        tracks.push(Track {
            id: 1,
            params: CodecParams::Aac {
                config: Bytes::from_static(&[0x11, 0x90]),
            },
            clock_rate: 48_000,
        });
    }
    StreamDesc { tracks }
}

fn frame(track: u32, ts: i64, keyframe: bool) -> Frame {
    Frame {
        track,
        pts: ts,
        dts: ts,
        keyframe,
        data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
        received: Instant::now(),
        params: None,
    }
}

fn cfg(variant: Variant) -> SegmenterConfig {
    SegmenterConfig {
        variant,
        segment_duration: 1.0,
        part_duration: 0.2,
        max_segment_bytes: 0,
    }
}

/// Runs `seconds` of video at `fps` (GOP of `gop` frames) plus AAC, returns the events.
fn run(variant: Variant, fps: f64, gop: u32, seconds: f64, audio: bool) -> Vec<Event> {
    let mut s = Segmenter::new(&desc(true, audio), cfg(variant), 0.0, false);
    let mut out = Vec::new();
    let mut frames: Vec<(f64, Frame)> = Vec::new();
    let n = (seconds * fps) as u32;
    for i in 0..n {
        let t = f64::from(i) / fps;
        frames.push((t, frame(0, (t * 90_000.0).round() as i64, i % gop == 0)));
    }
    if audio {
        let mut i = 0i64;
        while (i * 1024) as f64 / 48_000.0 < seconds {
            frames.push(((i * 1024) as f64 / 48_000.0, frame(1, i * 1024, true)));
            i += 1;
        }
    }
    frames.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, f) in &frames {
        s.push(f, &mut out);
    }
    s.finish(&mut out);
    out
}

struct Summary {
    segments: Vec<f64>,
    parts: Vec<Vec<(f64, bool)>>,
    chunks: usize,
    /// Chunks of track 1 (video).
    video_chunks: usize,
}

fn summarize(events: &[Event]) -> Summary {
    let mut sum = Summary {
        segments: Vec::new(),
        parts: Vec::new(),
        chunks: 0,
        video_chunks: 0,
    };
    let mut open = false;
    for e in events {
        match e {
            Event::SegmentStart { .. } => {
                assert!(!open, "segment started inside a segment");
                open = true;
                sum.parts.push(Vec::new());
            }
            Event::PartEnd {
                duration,
                independent,
            } => {
                assert!(open);
                sum.parts
                    .last_mut()
                    .unwrap()
                    .push((*duration, *independent));
            }
            Event::SegmentEnd { duration } => {
                assert!(open);
                open = false;
                sum.segments.push(*duration);
            }
            Event::Chunk(c, track) => {
                assert!(open, "chunk outside a segment");
                sum.chunks += 1;
                if *track == 1 {
                    sum.video_chunks += 1;
                }
                assert!(!c.is_empty());
            }
            Event::Init { .. } => {}
        }
    }
    assert!(!open);
    sum
}

#[test]
fn low_latency_cuts_one_second_segments_of_200ms_parts() {
    let events = run(Variant::LowLatency, 30.0, 30, 5.0, true);
    assert!(matches!(events[0], Event::Init { .. }));
    let s = summarize(&events);
    assert_eq!(s.segments.len(), 5);
    for (seg, parts) in s.segments.iter().zip(&s.parts) {
        let total: f64 = parts.iter().map(|p| p.0).sum();
        assert!((total - seg).abs() < 1e-6, "{parts:?} vs {seg}");
        assert!(parts[0].1, "first part independent");
        assert!(parts[1..].iter().all(|p| !p.1));
        for p in parts {
            assert!(p.0 <= 0.2 + 1e-9, "part {p:?}");
        }
    }
    for seg in &s.segments[..4] {
        assert!((seg - 1.0).abs() < 1e-6, "{:?}", s.segments);
        assert_eq!(s.parts[0].len(), 5);
    }
    // One fMP4 chunk per video frame (the audio in chunks of its own beside them).
    assert_eq!(s.video_chunks, 150, "{} video chunks", s.video_chunks);
    assert!(s.chunks > s.video_chunks, "{} chunks", s.chunks);
}

#[test]
fn parts_never_exceed_the_target_at_awkward_frame_rates() {
    for fps in [24.0, 25.0, 29.97, 50.0, 59.94, 7.0] {
        let s = summarize(&run(
            Variant::LowLatency,
            fps,
            (fps * 2.0) as u32,
            6.0,
            true,
        ));
        for parts in &s.parts {
            for p in parts {
                assert!(p.0 <= 0.2 + 1e-6 || fps < 5.0, "{fps} fps: part {p:?}");
            }
        }
        // Segments start on key frames: 2 s GOPs give 2 s segments.
        for seg in &s.segments[..s.segments.len() - 1] {
            assert!((seg - 2.0).abs() < 0.05, "{fps} fps: {:?}", s.segments);
        }
    }
}

#[test]
fn mpegts_and_fmp4_variants_have_no_parts_inside_segments() {
    let s = summarize(&run(Variant::MpegTs, 30.0, 30, 4.0, true));
    assert_eq!(s.segments.len(), 4);
    assert!(s.parts.iter().all(|p| p.len() == 1));
    let s = summarize(&run(Variant::Fmp4, 30.0, 30, 4.0, true));
    assert_eq!(s.segments.len(), 4);
    assert!(s.parts.iter().all(|p| p.len() == 1));
}

#[test]
fn audio_before_the_first_key_frame_is_dropped_and_audio_only_works() {
    let mut s = Segmenter::new(&desc(true, true), cfg(Variant::LowLatency), 0.0, false);
    let mut out = Vec::new();
    s.push(&frame(1, 0, true), &mut out);
    s.push(&frame(0, 0, false), &mut out);
    assert!(out.is_empty(), "nothing before a key frame");
    let s = summarize(&run_audio_only());
    assert!(s.segments.len() >= 3);
    for parts in &s.parts {
        for p in parts {
            assert!(p.0 <= 0.2 + 1e-9);
        }
    }
}

fn run_audio_only() -> Vec<Event> {
    let mut s = Segmenter::new(&desc(false, true), cfg(Variant::LowLatency), 0.0, false);
    let mut out = Vec::new();
    for i in 0..200 {
        s.push(&frame(1, i * 1024, true), &mut out);
    }
    s.finish(&mut out);
    out
}

#[test]
fn a_second_stream_continues_the_timeline_with_a_discontinuity() {
    let mut s = Segmenter::new(&desc(true, false), cfg(Variant::LowLatency), 12.5, true);
    let mut out = Vec::new();
    for i in 0..40 {
        s.push(&frame(0, 1_000_000 + i * 3000, i % 30 == 0), &mut out);
    }
    match out.iter().find(|e| matches!(e, Event::SegmentStart { .. })) {
        Some(Event::SegmentStart {
            start,
            discontinuity,
        }) => {
            assert!((start - 12.5).abs() < 1e-9);
            assert!(discontinuity);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn state_renders_playlists_and_answers_blocking_requests() {
    let mut st = state::State::new("abc".into(), Variant::LowLatency, 1.0, 0.2, 3);
    for e in run(Variant::LowLatency, 30.0, 30, 5.5, true) {
        st.apply(e);
    }
    // 5 complete segments (the last 0.5 s one closed by finish), 3 kept.
    assert_eq!(st.segments.len(), 3);
    assert_eq!(st.segments[0].msn, 3);
    assert!(st.has(4, None));
    assert!(!st.has(6, Some(0)));
    let text = st.media(false, "");
    assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:3\n"), "{text}");
    assert!(text.contains("#EXT-X-MAP:URI=\"abc_init1.mp4\""));
    assert!(text.contains("abc_seg5.mp4"));
    assert!(text.contains("#EXT-X-PART:DURATION=0.20000,URI=\"abc_part5_0.mp4\",INDEPENDENT=YES"));
    // The last segment ended and none is open (the publisher left): the hint is the next
    // segment's first part, never none (hls.js would keep a stale idea of the open segment).
    assert!(
        text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"abc_part6_0.mp4\"\n"),
        "{text}"
    );
    let mv = st.multivariant("?user=a");
    assert!(
        mv.contains("CODECS=\"avc1.") && mv.contains(",mp4a.40.2\""),
        "{mv}"
    );
    assert!(mv.contains("RESOLUTION=640x360"));
    assert!(mv.contains("stream.m3u8?user=a"));
    assert_eq!(
        state::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123)),
        "2026-11-18T11:06:40.123Z"
    );
    // A source's absolute time may be before 1970 (a camera's RTCP clock from its start).
    assert_eq!(
        state::rfc3339(std::time::UNIX_EPOCH - std::time::Duration::from_millis(2_208_988_794_750)),
        "1900-01-01T00:00:05.250Z"
    );
}

#[test]
fn the_mpd_lists_each_track_with_a_timeline_of_its_segments() {
    let events = run(Variant::LowLatency, 30.0, 30, 5.0, true);
    let mut st = crate::state::State::new("p".into(), Variant::LowLatency, 1.0, 0.2, 7);
    st.dash = true;
    for e in events {
        st.apply(e);
    }
    assert!(crate::dash::ready(&st));
    let mpd = crate::dash::mpd(&st, "?token=x", std::time::SystemTime::now());
    assert_eq!(mpd.matches("<AdaptationSet").count(), 2, "{mpd}");
    assert!(mpd.contains("startNumber=\"0\""), "{mpd}");
    // Five complete segments per track, one timeline each, contiguous (one `t` each).
    assert_eq!(mpd.matches("<S ").count(), 10, "{mpd}");
    assert_eq!(mpd.matches("<S t=").count(), 2, "{mpd}");
    assert!(
        mpd.contains("media=\"p_dseg$Number$_$RepresentationID$.m4s?token=x\""),
        "{mpd}"
    );
    assert!(mpd.contains("availabilityTimeOffset=\"0.800\""), "{mpd}");
    // Every segment holds both tracks' chunks, each a fragment of that track alone.
    for seg in &st.segments {
        for track in [1u32, 2] {
            let chunks = seg.track(track);
            assert!(!chunks.is_empty());
            for c in chunks {
                assert_eq!(&c[4..8], b"moof");
            }
        }
    }
}

#[test]
fn without_a_dash_client_segments_keep_no_chunks_by_track() {
    let events = run(Variant::LowLatency, 30.0, 30, 3.0, true);
    let mut st = crate::state::State::new("p".into(), Variant::LowLatency, 1.0, 0.2, 7);
    for e in events {
        st.apply(e);
    }
    assert!(st.segments.iter().all(|s| s.tracks.is_empty() && !s.dash));
    assert!(!crate::dash::ready(&st));
}

/// A publisher whose GOP never ends: `hlsSegmentMaxSize` bounds each segment's bytes.
#[test]
fn a_segment_without_keyframes_is_cut_at_its_size_bound() {
    for variant in [Variant::LowLatency, Variant::Fmp4, Variant::MpegTs] {
        let mut c = cfg(variant);
        c.max_segment_bytes = 64 * 1024;
        let mut s = Segmenter::new(&desc(true, true), c, 0.0, false);
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        let mut open = 0u64;
        // 30 s at 30 fps, one keyframe at the start only.
        for i in 0..900u32 {
            let t = f64::from(i) / 30.0;
            let mut f = frame(0, (t * 90_000.0).round() as i64, i == 0);
            // One NAL unit of 3996 bytes, length-prefixed.
            let mut data = vec![0u8; 4000];
            data[..5].copy_from_slice(&[0, 0, 0x0f, 0x9c, if i == 0 { 0x65 } else { 0x41 }]);
            f.data = Bytes::from(data);
            s.push(&f, &mut out);
            for e in out.drain(..) {
                match e {
                    Event::Chunk(c, _) => open += c.len() as u64,
                    Event::SegmentEnd { .. } => sizes.push(std::mem::take(&mut open)),
                    _ => {}
                }
            }
        }
        // 3.6 MB of video in 64 KiB segments: about 55 of them, none much past the bound.
        assert!(sizes.len() >= 40, "{variant:?}: {} segments", sizes.len());
        let most = sizes.iter().max().copied().unwrap_or(0);
        assert!(
            most <= 64 * 1024 + 8000,
            "{variant:?}: a segment of {most} bytes"
        );
        assert_eq!(s.cut_by_size, sizes.len() as u64, "{variant:?}");
    }
}

/// A held request (blocking reload) is checked again when what playlists list changes, not at
/// every CMAF chunk of the open part; a reader of the open part sees every chunk.
#[tokio::test]
async fn held_requests_wake_per_listed_change_not_per_chunk() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let st = state::State::new("w".into(), Variant::LowLatency, 1.0, 0.2, 3);
    let mux = std::sync::Arc::new(muxer::Muxer::new("w".into(), st));
    let events = run(Variant::LowLatency, 30.0, 30, 1.5, true);
    let first_part = events
        .iter()
        .position(|e| matches!(e, Event::PartEnd { .. }))
        .expect("a part");
    let checks = std::sync::Arc::new(AtomicUsize::new(0));
    let (m, c) = (mux.clone(), checks.clone());
    let held = tokio::spawn(async move {
        m.wait_for(std::time::Duration::from_secs(10), |s| {
            c.fetch_add(1, Ordering::SeqCst);
            s.has(0, Some(0))
        })
        .await
    });
    let mut open = mux.subscribe();
    // Let the held request make its first check and wait.
    for _ in 0..100 {
        if checks.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(checks.load(Ordering::SeqCst), 1);
    // Everything before the first part ends: the init, the segment's start, then chunks.
    let mut chunks = 0;
    for e in events[..first_part].iter().cloned() {
        let chunk = matches!(e, Event::Chunk(..));
        chunks += usize::from(chunk);
        mux.apply(&mut vec![e]);
        if chunk {
            assert!(
                open.has_changed().unwrap_or(false),
                "a chunk reaches readers of the open part"
            );
            open.borrow_and_update();
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    assert!(chunks >= 3, "{chunks} chunks before the first part ended");
    let before = checks.load(Ordering::SeqCst);
    // Woken by the init and the segment's start (listed), not by any of the chunks.
    assert!(
        before <= 3,
        "the held request was checked {before} times for {chunks} chunks"
    );
    mux.apply(&mut vec![events[first_part].clone()]);
    let ok = tokio::time::timeout(std::time::Duration::from_secs(5), held)
        .await
        .expect("answered in time")
        .expect("task");
    assert!(ok, "the part's end answers the held request");
}
