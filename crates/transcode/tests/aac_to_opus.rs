//! AAC made by ffmpeg (a 1 kHz tone) → our bridge → libopus decoder: the tone survives, at
//! its frequency, and the Opus frames' timestamps follow the AAC frames'.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use tidegate_core::{CodecParams, Frame, TrackTranscoder};
use tidegate_transcode::{opus, AacToOpus};

mod common;
use common::peak;

fn aac_frames(rate: u32, channels: u8) -> (Vec<u8>, Vec<Vec<u8>>) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=1000:sample_rate={rate}:duration=3"))
        .args([
            "-ac",
            &channels.to_string(),
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-f",
            "adts",
            "-",
        ])
        .output()
        .expect("ffmpeg is needed (cargo xtask peers installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = tidegate_codec::aac::split_adts(&out.stdout).expect("ADTS");
    let asc = frames[0].config.to_bytes().to_vec();
    (asc, frames.iter().map(|f| f.payload.to_vec()).collect())
}

fn run(rate: u32, channels: u8) {
    let (asc, frames) = aac_frames(rate, channels);
    assert!(frames.len() > 100, "{} AAC frames", frames.len());
    let mut tc = AacToOpus::new(&asc, rate, 64_000).expect("a transcoder");
    let mut dec = opus::Decoder::new(channels).expect("libopus");
    let mut out = Vec::new();
    let start = 90_000i64 * 7;
    for (i, f) in frames.iter().enumerate() {
        let frame = Frame {
            track: 1,
            pts: start * i64::from(rate) / 90_000 + i as i64 * 1024,
            dts: 0,
            keyframe: true,
            data: f.clone().into(),
            received: Instant::now(),
            params: (i == 0).then(|| {
                Arc::new(CodecParams::Aac {
                    config: asc.clone().into(),
                })
            }),
        };
        tc.push(&frame, &mut out);
    }
    let expected = (frames.len() * 1024) as f64 * 48_000.0 / f64::from(rate) / 960.0;
    assert!(
        (out.len() as f64) > expected - 3.0 && (out.len() as f64) <= expected + 0.5,
        "{} Opus frames for {expected:.1} expected",
        out.len()
    );
    // Timestamps: 48 kHz, 960 apart, starting at the first AAC frame's time less the delays.
    let first = start * 48_000 / 90_000;
    assert!(
        out[0].pts <= first && out[0].pts > first - 2000,
        "first pts {}",
        out[0].pts
    );
    for w in out.windows(2) {
        assert_eq!(w[1].pts - w[0].pts, 960);
    }
    let mut pcm = Vec::new();
    for f in &out {
        let s = dec.decode(&f.data).expect("Opus decodes");
        pcm.extend(s.iter().step_by(usize::from(channels)));
    }
    let second = &pcm[48_000..96_000];
    let p = peak(second);
    assert!((p - 1000.0).abs() <= 20.0, "peak at {p} Hz");
    let rms = (second.iter().map(|s| s * s).sum::<f32>() / second.len() as f32).sqrt();
    assert!(rms > 0.05, "rms {rms}");
}

#[test]
fn aac_48k_stereo_becomes_opus_with_its_tone() {
    run(48_000, 2);
}

#[test]
fn aac_44k1_mono_is_resampled_with_its_tone() {
    run(44_100, 1);
}
