//! Bitstream helpers shared by every protocol crate: H.264 and H.265 NAL units (Annex-B and
//! length-prefixed framing, parameter sets, keyframes, decoder configuration records), AAC
//! (AudioSpecificConfig, ADTS) and Opus (the `OpusHead` identification header).
//!
//! Every parser takes bytes off the network: none panics, and none allocates more than the
//! input it was given.

pub mod aac;
pub mod av1;
pub mod bits;
pub mod h264;
pub mod h265;
pub mod mpa;
pub mod nal;
pub mod opus;
pub mod synth;
pub mod vp9;

/// Why a bitstream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("invalid {what}: {why}")]
    Invalid {
        what: &'static str,
        why: &'static str,
    },
    #[error("unsupported {0}")]
    Unsupported(&'static str),
}

pub(crate) fn invalid(what: &'static str, why: &'static str) -> CodecError {
    CodecError::Invalid { what, why }
}
