//! Opus (libopus, as a browser sends it) → our bridge (libopus decoder, our AAC-LC encoder) →
//! ffmpeg's AAC decoder (a real peer): the tone survives at its frequency and level, the AAC
//! frames' timestamps follow the Opus packets', and a tone that starts at a known time starts
//! there in the decoded AAC (lip sync).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use tidegate_core::{Frame, TrackTranscoder};
use tidegate_transcode::{opus, OpusToAac};

mod common;
use common::peak;

/// Decodes ADTS with ffmpeg into mono 48 kHz floats.
fn ffmpeg_decode(adts: &[u8]) -> Vec<f32> {
    let mut child = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "aac",
            "-i",
            "-",
            "-ac",
            "1",
            "-f",
            "f32le",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg is needed (cargo xtask peers installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = adts.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("ffmpeg runs");
    writer.join().expect("writer").expect("ffmpeg reads");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// 4 s: 1 s of silence, then a 1 kHz tone at half scale (stereo, the right channel at a
/// quarter), as 20 ms Opus packets stamped from `start` (48 kHz ticks).
fn opus_packets(start: i64) -> Vec<Frame> {
    let mut enc = opus::Encoder::new(2, 96_000).expect("libopus");
    (0..200)
        .map(|i| {
            let pcm: Vec<f32> = (0..960 * 2)
                .map(|k| {
                    let n = i * 960 + k / 2;
                    if n < 48_000 {
                        return 0.0;
                    }
                    let v = 0.5 * (n as f32 * 2.0 * std::f32::consts::PI * 1000.0 / 48_000.0).sin();
                    if k % 2 == 0 {
                        v
                    } else {
                        v / 2.0
                    }
                })
                .collect();
            let pts = start + (i * 960) as i64;
            Frame {
                track: 2,
                pts,
                dts: pts,
                keyframe: true,
                data: enc.encode(&pcm).expect("encode").into(),
                received: Instant::now(),
                params: None,
            }
        })
        .collect()
}

#[test]
fn opus_becomes_aac_that_ffmpeg_decodes_in_time() {
    let start = 48_000 * 5;
    let packets = opus_packets(start);
    let mut tc = OpusToAac::new(2, 48_000, 128_000).expect("a transcoder");
    let asc = tidegate_codec::aac::AudioSpecificConfig::parse(&tc.config()).expect("ASC");
    assert_eq!(
        (asc.object_type, asc.sample_rate, asc.channels),
        (2, 48_000, 2)
    );
    let mut out = Vec::new();
    for p in &packets {
        tc.push(p, &mut out);
    }
    // 200 × 960 samples make 187 full AAC blocks.
    assert_eq!(out.len(), 200 * 960 / 1024, "AAC frames");
    assert_eq!(
        out[0].pts,
        start - 1024,
        "the first frame decodes to the block before"
    );
    for w in out.windows(2) {
        assert_eq!(w[1].pts - w[0].pts, 1024);
        assert_eq!(w[1].track, 2);
    }
    let mut adts = Vec::new();
    for f in &out {
        adts.extend_from_slice(&tidegate_codec::aac::to_adts(&asc, &f.data).expect("ADTS"));
    }
    let pcm = ffmpeg_decode(&adts);
    assert_eq!(pcm.len(), out.len() * 1024, "ffmpeg decoded every frame");
    // Decoded sample i plays at out[0].pts + i: where does the tone begin?
    let at = |t: i64| (t - out[0].pts) as usize;
    let tone = &pcm[at(start + 96_000)..at(start + 144_000)];
    let p = peak(tone);
    assert!((p - 1000.0).abs() <= 20.0, "peak at {p} Hz");
    // ffmpeg's mono downmix is (L + R) × 0.707: 0.75 × 0.707 in amplitude, 0.375 RMS.
    let rms = (tone.iter().map(|s| s * s).sum::<f32>() / tone.len() as f32).sqrt();
    assert!((0.34..0.41).contains(&rms), "rms {rms}");
    let silence = &pcm[at(start + 4_800)..at(start + 43_200)];
    let quiet = (silence.iter().map(|s| s * s).sum::<f32>() / silence.len() as f32).sqrt();
    assert!(quiet < 0.01, "silence at rms {quiet}");
    // Onset: the first 1 ms window whose level passes half the tone's.
    let onset = (at(start)..pcm.len() - 48)
        .step_by(12)
        .find(|&i| (pcm[i..i + 48].iter().map(|s| s * s).sum::<f32>() / 48.0).sqrt() > rms / 2.0)
        .expect("the tone starts");
    let late_ms = (onset as f64 - at(start + 48_000) as f64) / 48.0;
    eprintln!("onset {late_ms:.1} ms after the tone's time (Opus's own delay included)");
    assert!(
        (-2.0..=12.0).contains(&late_ms),
        "the tone starts {late_ms:.1} ms off its time"
    );
}
