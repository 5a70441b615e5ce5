//! RTP for Tidegate: packets ([`packet`]), RTCP sender reports ([`rtcp`]), SRTP ([`srtp`]), and one
//! depacketizer and packetizer per codec behind one enum ([`depack`], [`pack`]). Shared by
//! RTSP and, later, WebRTC.
//!
//! Depacketizers take packets off the network: they survive loss, reordering and a missing
//! start of frame (the access unit is dropped, counted, and the next key frame awaited), and
//! never hold more than [`MAX_UNIT`] bytes.

pub mod ac3;
pub mod av1;
pub mod depack;
pub mod jpeg;
pub mod mpa;
pub mod mpv;
pub mod pack;
pub mod packet;
pub mod rtcp;
pub mod srtp;
pub mod vpx;

pub use depack::{Depacketizer, Unit};
pub use pack::Packetizer;
pub use packet::RtpPacket;

/// The largest access unit a depacketizer assembles (a 4K intra frame is well below).
pub const MAX_UNIT: usize = 8 * 1024 * 1024;

/// The crate's one error: why an RTP, RTCP or SRTP packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("truncated RTP packet")]
    Truncated,
    #[error("not RTP version 2")]
    Version,
    #[error("bad padding")]
    Padding,
    #[error("truncated RTCP packet")]
    RtcpTruncated,
    #[error("not RTCP version 2")]
    RtcpVersion,
    #[error("RTCP packet shorter than its report count says")]
    RtcpCount,
    #[error("SRTP packet too short")]
    SrtpTruncated,
    #[error("SRTP authentication failed")]
    SrtpAuth,
    #[error("SRTP replay")]
    SrtpReplay,
    #[error("too many SSRCs in one SRTP session")]
    SrtpTooManySsrcs,
    #[error("SRTP cipher failure")]
    SrtpCipher,
}
