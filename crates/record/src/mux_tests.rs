use std::time::Instant;

use bytes::Bytes;
use tidegate_core::{CodecParams, Frame, StreamDesc, Track};

use super::*;

/// SPS and PPS of a real 640x360 stream (the codec crate's ffmpeg fixture).
fn params() -> (Bytes, Bytes) {
    let data = include_bytes!("../../codec/tests/fixtures/h264_640x360.h264");
    let nals = tidegate_codec::nal::split_annexb(data);
    let (sps, pps) = tidegate_codec::h264::find_params(nals).unwrap();
    (Bytes::copy_from_slice(sps), Bytes::copy_from_slice(pps))
}

fn desc() -> StreamDesc {
    let (sps, pps) = params();
    StreamDesc {
        tracks: vec![
            Track {
                id: 0,
                params: CodecParams::H264 { sps, pps },
                clock_rate: 90_000,
            },
            Track {
                id: 1,
                params: CodecParams::Aac {
                    config: Bytes::from_static(&[0x11, 0x90]),
                },
                clock_rate: 48_000,
            },
        ],
    }
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

fn cfg(format: Format) -> MuxConfig {
    MuxConfig {
        format,
        part_duration: 90_000,
        max_part_size: 1 << 20,
        segment_duration: 4 * 90_000,
    }
}

/// 10 s of 25 fps video with a key frame every second, and 48 kHz AAC.
fn run(format: Format) -> Vec<Out> {
    let mut m = RecordMuxer::new(&desc(), cfg(format));
    let mut out = Vec::new();
    let mut audio = 0i64;
    for i in 0..250i64 {
        let v = i * 3600;
        m.push(&frame(0, v, i % 25 == 0), &mut out);
        while rescale(audio, 48_000, 90_000) < v + 3600 {
            m.push(&frame(1, audio, true), &mut out);
            audio += 1024;
        }
    }
    m.finish(&mut out);
    out
}

fn segments(out: &[Out]) -> Vec<(i64, f64, usize)> {
    let mut v = Vec::new();
    for o in out {
        match o {
            Out::SegmentStart { start, .. } => v.push((*start, 0.0, 0)),
            Out::Part { .. } => v.last_mut().unwrap().2 += 1,
            Out::SegmentEnd { duration } => v.last_mut().unwrap().1 = *duration,
        }
    }
    v
}

#[test]
fn fmp4_segments_meet_and_parts_last_a_second() {
    let out = run(Format::Fmp4);
    let segs = segments(&out);
    assert_eq!(segs.len(), 3, "{segs:?}");
    assert_eq!(segs[0], (0, 4.0, 4));
    assert_eq!(segs[1].0, 4 * 90_000);
    assert_eq!(segs[1].1, 4.0);
    // The last one ends with the last frame.
    assert_eq!(segs[2].0, 8 * 90_000);
    assert!((segs[2].1 - 2.0).abs() < 0.05, "{segs:?}");
    for o in &out {
        if let Out::SegmentStart { init, codecs, .. } = o {
            assert_eq!(&init[4..8], b"ftyp");
            assert_eq!(codecs.len(), 2);
        }
        if let Out::Part { data, duration } = o {
            assert_eq!(&data[4..8], b"moof");
            // The last part ends with the last audio frame, a little after the video.
            assert!(*duration <= 1.0 + 1024.0 / 48_000.0, "{duration}");
        }
    }
}

#[test]
fn fmp4_decode_times_restart_at_each_segment() {
    let out = run(Format::Fmp4);
    let mut firsts = Vec::new();
    let mut new_seg = false;
    for o in &out {
        match o {
            Out::SegmentStart { .. } => new_seg = true,
            Out::Part { data, .. } if new_seg => {
                let parts = crate::read::parse_moof(&data[..]).unwrap();
                firsts.push(parts.iter().map(|r| r.base_decode_time).collect::<Vec<_>>());
                new_seg = false;
            }
            _ => {}
        }
    }
    assert_eq!(firsts.len(), 3);
    for f in firsts {
        assert!(f.iter().all(|t| *t < 2048), "{f:?}");
    }
}

#[test]
fn mpegts_segments_start_with_a_pat() {
    let out = run(Format::MpegTs);
    let segs = segments(&out);
    assert_eq!(segs.len(), 3, "{segs:?}");
    assert_eq!(segs[0].1, 4.0);
    let mut first_part = false;
    for o in &out {
        match o {
            Out::SegmentStart { .. } => first_part = true,
            Out::Part { data, .. } => {
                assert_eq!(data.len() % 188, 0);
                if first_part {
                    // PID 0 first.
                    assert_eq!(data[0], 0x47);
                    assert_eq!(u16::from(data[1] & 0x1f) << 8 | u16::from(data[2]), 0);
                    first_part = false;
                }
            }
            Out::SegmentEnd { .. } => {}
        }
    }
}

#[test]
fn nothing_is_written_before_the_first_key_frame() {
    let mut m = RecordMuxer::new(&desc(), cfg(Format::Fmp4));
    let mut out = Vec::new();
    m.push(&frame(0, 0, false), &mut out);
    m.push(&frame(1, 0, true), &mut out);
    m.push(&frame(0, 3600, false), &mut out);
    m.push(&frame(0, 7200, false), &mut out);
    assert!(out.is_empty());
}

#[test]
fn wild_timestamps_do_not_panic() {
    // A publisher's timestamps are whatever it sends: jumps to the ends of i64 and back.
    for format in [Format::Fmp4, Format::MpegTs] {
        let mut m = RecordMuxer::new(&desc(), cfg(format));
        let mut out = Vec::new();
        for (i, ts) in [
            0,
            i64::MAX - 5,
            i64::MIN + 5,
            3600,
            i64::MAX,
            -1,
            i64::MIN,
            7200,
        ]
        .into_iter()
        .enumerate()
        {
            m.push(&frame(0, ts, i % 2 == 0), &mut out);
            m.push(&frame(1, ts, true), &mut out);
        }
        m.finish(&mut out);
    }
}
