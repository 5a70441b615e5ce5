//! Opus → AAC-LC 48 kHz, for RTMP and HLS-TS readers of publishers that send Opus (browsers and
//! OBS over WHIP, RTSP cameras with Opus).
//!
//! Decoding is libopus ([`crate::opus`]); encoding is Tidegate's own AAC-LC encoder
//! ([`crate::aacenc`]), 1024 samples per frame, at the same 48 kHz (no resampling).
//!
//! Lip sync: at the first packet (and after any jump in the input's timestamps) the output is
//! anchored at that packet's time, then counts the samples it encodes. The encoder's frame k
//! decodes to its input block k − 1, so each frame is stamped with the time of the block
//! before the one just given to it.

use bytes::Bytes;
use tidegate_core::{rescale, Frame, TrackTranscoder};

use crate::aacenc::{self, FRAME};
use crate::opus;
use crate::TranscodeError;

/// An input jump (or gap) longer than this re-anchors the output (48 kHz samples: 100 ms).
const JUMP: i64 = 4800;

/// Why an Opus track of `channels` cannot be transcoded here, or None when it can.
pub fn why_not(channels: u8) -> Option<String> {
    if let Err(e) = opus::available() {
        return Some(e.to_string());
    }
    if !(1..=2).contains(&channels) {
        return Some(format!(
            "only mono and stereo Opus is transcoded, not {channels} channels"
        ));
    }
    None
}

pub struct OpusToAac {
    clock_rate: u32,
    channels: usize,
    decoder: opus::Decoder,
    encoder: aacenc::Encoder,
    /// Interleaved 48 kHz samples waiting for the encoder.
    pending: Vec<f32>,
    /// Time (48 kHz ticks) of `pending[0]`; None until anchored.
    pending_at: Option<i64>,
    /// Where the next input packet is expected (48 kHz ticks).
    next_in: i64,
    planar: Vec<Vec<f32>>,
    errors: u64,
}

impl OpusToAac {
    pub fn new(channels: u8, clock_rate: u32, bitrate: u32) -> Result<OpusToAac, TranscodeError> {
        opus::available()?;
        if let Some(why) = why_not(channels) {
            return Err(TranscodeError::Unsupported(why));
        }
        Ok(OpusToAac {
            clock_rate: clock_rate.max(1),
            channels: usize::from(channels),
            decoder: opus::Decoder::new(channels)?,
            encoder: aacenc::Encoder::new(48_000, channels, bitrate)?,
            pending: Vec::new(),
            pending_at: None,
            next_in: 0,
            planar: vec![vec![0.0; FRAME]; usize::from(channels)],
            errors: 0,
        })
    }

    /// The output track's AudioSpecificConfig.
    pub fn config(&self) -> Bytes {
        Bytes::from(self.encoder.audio_specific_config())
    }

    pub fn channels(&self) -> u8 {
        self.channels as u8
    }
}

impl TrackTranscoder for OpusToAac {
    fn push(&mut self, frame: &Frame, out: &mut Vec<Frame>) {
        let at = rescale(frame.pts, self.clock_rate, 48_000);
        let pcm = match self.decoder.decode(&frame.data) {
            Ok(p) => p,
            Err(e) => {
                self.errors += 1;
                if self.errors.is_power_of_two() {
                    tracing::warn!(errors = self.errors, "Opus packet not decoded: {e}");
                }
                return;
            }
        };
        if self.pending_at.is_none() || (at - self.next_in).abs() > JUMP {
            // First packet, or a jump: start again from this packet's time.
            self.pending.clear();
            self.pending_at = Some(at);
        }
        self.next_in = at + (pcm.len() / self.channels) as i64;
        self.pending.extend_from_slice(pcm);
        let step = FRAME * self.channels;
        while self.pending.len() >= step {
            let block_at = self.pending_at.unwrap_or(0);
            for (i, s) in self.pending[..step].iter().enumerate() {
                self.planar[i % self.channels][i / self.channels] = *s;
            }
            let input: Vec<&[f32]> = self.planar.iter().map(|p| &p[..]).collect();
            let data = self.encoder.encode(&input);
            // This frame decodes to the block before `block_at`.
            let pts = block_at - FRAME as i64;
            if pts >= 0 {
                out.push(Frame {
                    track: frame.track,
                    pts,
                    dts: pts,
                    keyframe: true,
                    data: Bytes::from(data),
                    received: frame.received,
                    params: None,
                });
            }
            self.pending.drain(..step);
            self.pending_at = Some(block_at + FRAME as i64);
        }
    }
}
