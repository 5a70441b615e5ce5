//! AAC (LC) → Opus 48 kHz, for WebRTC viewers of publishers that send AAC (OBS, cameras and
//! encoders over RTMP, SRT and RTSP).
//!
//! Decoding is symphonia's pure-Rust AAC-LC decoder; resampling (for AAC not at 48 kHz) is
//! rubato's FFT resampler, whose fixed input size is the AAC frame's 1024 samples; encoding is
//! libopus ([`crate::opus`]) in 20 ms frames.
//!
//! Lip sync: the output's timestamps come from the input's. At the first frame (and after any
//! jump in the input's timestamps) the output is anchored at that frame's time minus the
//! resampler's and the encoder's delays, then counts the samples it encodes; the frames of
//! other tracks pass through with their own times, so audio and video keep their relation.

use bytes::Bytes;
use rubato::{FftFixedIn, Resampler};
use symphonia_core::audio::SampleBuffer;
use symphonia_core::codecs::{CodecParameters, Decoder as _, DecoderOptions, CODEC_TYPE_AAC};
use symphonia_core::formats::Packet;
use tidegate_core::{rescale, CodecParams, Frame, TrackTranscoder};

use crate::opus;
use crate::TranscodeError;

/// Samples per channel of one AAC-LC frame.
const AAC_FRAME: usize = 1024;
/// 20 ms at 48 kHz: Opus's usual frame, what browsers send.
const OPUS_FRAME: usize = 960;
/// An input jump (or gap) longer than this re-anchors the output (in 48 kHz samples: 100 ms).
const JUMP: i64 = 4800;

/// Why an AAC track cannot be transcoded here, or None when it can.
pub fn why_not(config: &[u8]) -> Option<String> {
    if let Err(e) = opus::available() {
        return Some(e.to_string());
    }
    match tidegate_codec::aac::AudioSpecificConfig::parse(config) {
        Err(e) => Some(format!("AAC configuration: {e}")),
        Ok(asc) if asc.object_type != 2 => Some(format!(
            "only AAC-LC is transcoded, not object type {} (HE-AAC decoding is not built)",
            asc.object_type
        )),
        Ok(asc) if !(1..=2).contains(&asc.channels) => Some(format!(
            "only mono and stereo AAC is transcoded, not {} channels",
            asc.channels
        )),
        Ok(_) => None,
    }
}

pub struct AacToOpus {
    clock_rate: u32,
    sample_rate: u32,
    channels: usize,
    config: Bytes,
    decoder: symphonia_codec_aac::AacDecoder,
    resampler: Option<FftFixedIn<f32>>,
    encoder: opus::Encoder,
    /// Planar input waiting for the resampler (it takes AAC_FRAME per call).
    planar: Vec<Vec<f32>>,
    /// Interleaved 48 kHz samples waiting for the encoder.
    pending: Vec<f32>,
    /// Time (48 kHz ticks) of `pending[0]`; None until anchored.
    pending_at: Option<i64>,
    /// Where the next input frame is expected (48 kHz ticks).
    next_in: i64,
    delay: i64,
    errors: u64,
    interleaved: Option<SampleBuffer<f32>>,
}

impl AacToOpus {
    /// For an AAC track with this AudioSpecificConfig and clock rate.
    pub fn new(config: &[u8], clock_rate: u32, bitrate: u32) -> Result<AacToOpus, TranscodeError> {
        opus::available()?;
        if let Some(why) = why_not(config) {
            return Err(TranscodeError::Unsupported(why));
        }
        let asc = tidegate_codec::aac::AudioSpecificConfig::parse(config)
            .map_err(|e| TranscodeError::Unsupported(format!("AAC configuration: {e}")))?;
        let channels = usize::from(asc.channels);
        let decoder = new_decoder(config).map_err(TranscodeError::Codec)?;
        let resampler = if asc.sample_rate == 48_000 {
            None
        } else {
            Some(
                FftFixedIn::<f32>::new(asc.sample_rate as usize, 48_000, AAC_FRAME, 2, channels)
                    .map_err(|e| TranscodeError::Codec(format!("resampler: {e}")))?,
            )
        };
        let encoder = opus::Encoder::new(asc.channels, bitrate)?;
        let delay = i64::from(encoder.lookahead())
            + resampler.as_ref().map_or(0, |r| r.output_delay() as i64);
        Ok(AacToOpus {
            clock_rate: clock_rate.max(1),
            sample_rate: asc.sample_rate,
            channels,
            config: Bytes::copy_from_slice(config),
            decoder,
            resampler,
            encoder,
            planar: vec![Vec::new(); channels],
            pending: Vec::new(),
            pending_at: None,
            next_in: 0,
            delay,
            errors: 0,
            interleaved: None,
        })
    }

    /// Output channels (the Opus track's).
    pub fn channels(&self) -> u8 {
        self.channels as u8
    }

    fn decode(&mut self, data: &[u8]) -> Option<Vec<f32>> {
        let packet = Packet::new_from_slice(0, 0, AAC_FRAME as u64, data);
        match self.decoder.decode(&packet) {
            Ok(buf) => {
                // One interleaving buffer for the stream's life, not one per frame.
                let sb = self.interleaved.get_or_insert_with(|| {
                    SampleBuffer::<f32>::new(buf.capacity() as u64, *buf.spec())
                });
                if sb.capacity() < buf.capacity() * buf.spec().channels.count() {
                    *sb = SampleBuffer::<f32>::new(buf.capacity() as u64, *buf.spec());
                }
                sb.copy_interleaved_ref(buf);
                Some(sb.samples().to_vec())
            }
            Err(e) => {
                self.errors += 1;
                if self.errors.is_power_of_two() {
                    tracing::warn!(errors = self.errors, "AAC frame not decoded: {e}");
                }
                None
            }
        }
    }
}

fn new_decoder(config: &[u8]) -> Result<symphonia_codec_aac::AacDecoder, String> {
    let mut params = CodecParameters::new();
    params
        .for_codec(CODEC_TYPE_AAC)
        .with_extra_data(config.to_vec().into_boxed_slice());
    symphonia_codec_aac::AacDecoder::try_new(&params, &DecoderOptions::default())
        .map_err(|e| format!("AAC decoder: {e}"))
}

impl TrackTranscoder for AacToOpus {
    fn push(&mut self, frame: &Frame, out: &mut Vec<Frame>) {
        if let Some(p) = &frame.params {
            if let CodecParams::Aac { config } = p.as_ref() {
                if *config != self.config {
                    // A new configuration mid-stream: a new decoder (same rate and channels
                    // only; anything else needs a new view, made by the next reader).
                    match new_decoder(config) {
                        Ok(d) => {
                            self.decoder = d;
                            self.config = config.clone();
                        }
                        Err(e) => tracing::warn!("AAC configuration change not taken: {e}"),
                    }
                }
            }
        }
        let at = rescale(frame.pts, self.clock_rate, 48_000);
        if self.pending_at.is_none() || (at - self.next_in).abs() > JUMP {
            // First frame, or a jump: start again from this frame's time.
            if let Some(r) = &mut self.resampler {
                r.reset();
            }
            for p in &mut self.planar {
                p.clear();
            }
            self.pending.clear();
            self.pending_at = Some(at - self.delay);
        }
        self.next_in = at + (AAC_FRAME as i64 * 48_000 / i64::from(self.sample_rate));
        let Some(pcm) = self.decode(&frame.data) else {
            return;
        };
        match &mut self.resampler {
            None => self.pending.extend_from_slice(&pcm),
            Some(r) => {
                for (i, s) in pcm.iter().enumerate() {
                    self.planar[i % self.channels].push(*s);
                }
                while self.planar[0].len() >= r.input_frames_next() {
                    let n = r.input_frames_next();
                    let input: Vec<&[f32]> = self.planar.iter().map(|p| &p[..n]).collect();
                    match r.process(&input, None) {
                        Ok(res) => {
                            for k in 0..res[0].len() {
                                for ch in &res {
                                    self.pending.push(ch[k]);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!("resampler: {e}");
                        }
                    }
                    for p in &mut self.planar {
                        p.drain(..n);
                    }
                }
            }
        }
        let step = OPUS_FRAME * self.channels;
        while self.pending.len() >= step {
            let at = self.pending_at.unwrap_or(0);
            match self.encoder.encode(&self.pending[..step]) {
                Ok(data) => out.push(Frame {
                    track: frame.track,
                    pts: at,
                    dts: at,
                    keyframe: true,
                    data: Bytes::from(data),
                    received: frame.received,
                    params: None,
                }),
                Err(e) => tracing::warn!("Opus encoder: {e}"),
            }
            self.pending.drain(..step);
            self.pending_at = Some(at + OPUS_FRAME as i64);
        }
    }
}
