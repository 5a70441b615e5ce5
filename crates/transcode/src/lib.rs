//! Tidegate's audio bridge: audio tracks re-encoded for readers whose protocol cannot carry
//! them (AAC → Opus for WebRTC, Opus → AAC for RTMP and HLS-TS), once per stream and target, on the core's
//! [`Stream::transcoded`] views. A path whose readers all take the publisher's codecs never
//! starts one, and never loads a codec library.
//!
//! Why these libraries: docs/design.md, "The audio bridge".

pub mod aac_to_opus;
pub mod aacenc;
mod error;
pub mod opus;
pub mod opus_to_aac;

use std::sync::Arc;

use tidegate_core::{CodecParams, Plan, Stream, Track, TrackTranscoder, Transcoded};

pub use aac_to_opus::AacToOpus;
pub use error::TranscodeError;
pub use opus_to_aac::OpusToAac;

/// Key of the AAC → Opus view at `bitrate` among a stream's transcoded views.
fn key(target: u64, bitrate: u32) -> u64 {
    (target << 32) | u64::from(bitrate)
}

/// Why the first AAC track of `desc`'s tracks cannot be bridged to Opus here (None: it can, or
/// there is none).
pub fn why_not_opus(track: &Track) -> Option<String> {
    match &track.params {
        CodecParams::Aac { config } => aac_to_opus::why_not(config),
        other => Some(format!("no transcoder from {}", other.codec().name())),
    }
}

/// The stream's view with its first AAC track as Opus 48 kHz at `bitrate` bit/s (started by the
/// first caller, shared by the others, stopped with the last handle).
pub fn aac_to_opus(stream: &Arc<Stream>, bitrate: u32) -> Result<Arc<Transcoded>, TranscodeError> {
    stream
        .transcoded(key(1, bitrate), |desc| {
            let Some(track) = desc
                .tracks
                .iter()
                .find(|t| matches!(t.params, CodecParams::Aac { .. }))
            else {
                return Err("the stream has no AAC track".into());
            };
            let CodecParams::Aac { config } = &track.params else {
                return Err("the stream has no AAC track".into());
            };
            let tc =
                AacToOpus::new(config, track.clock_rate, bitrate).map_err(|e| e.to_string())?;
            let mut out = desc.clone();
            for t in &mut out.tracks {
                if t.id == track.id {
                    t.params = CodecParams::Opus {
                        channels: tc.channels(),
                    };
                    t.clock_rate = 48_000;
                }
            }
            let boxed: Box<dyn TrackTranscoder> = Box::new(tc);
            Ok(Plan {
                desc: out,
                transcoders: vec![(track.id, boxed)],
                label: format!("MPEG-4 Audio → Opus {} kbit/s", bitrate / 1000),
            })
        })
        .map_err(TranscodeError::Bridge)
}

/// Why the first Opus track of a stream cannot be bridged to AAC here (None: it can).
pub fn why_not_aac(track: &Track) -> Option<String> {
    match &track.params {
        CodecParams::Opus { channels } => opus_to_aac::why_not(*channels),
        other => Some(format!("no transcoder from {}", other.codec().name())),
    }
}

/// The stream's view with its first Opus track as AAC-LC 48 kHz at `bitrate` bit/s (started by
/// the first caller, shared by the others, stopped with the last handle).
pub fn opus_to_aac(stream: &Arc<Stream>, bitrate: u32) -> Result<Arc<Transcoded>, TranscodeError> {
    stream
        .transcoded(key(2, bitrate), |desc| {
            let Some(track) = desc
                .tracks
                .iter()
                .find(|t| matches!(t.params, CodecParams::Opus { .. }))
            else {
                return Err("the stream has no Opus track".into());
            };
            let CodecParams::Opus { channels } = track.params else {
                return Err("the stream has no Opus track".into());
            };
            let tc =
                OpusToAac::new(channels, track.clock_rate, bitrate).map_err(|e| e.to_string())?;
            let mut out = desc.clone();
            for t in &mut out.tracks {
                if t.id == track.id {
                    t.params = CodecParams::Aac {
                        config: tc.config(),
                    };
                    t.clock_rate = 48_000;
                }
            }
            let boxed: Box<dyn TrackTranscoder> = Box::new(tc);
            Ok(Plan {
                desc: out,
                transcoders: vec![(track.id, boxed)],
                label: format!("Opus → MPEG-4 Audio {} kbit/s", bitrate / 1000),
            })
        })
        .map_err(TranscodeError::Bridge)
}
