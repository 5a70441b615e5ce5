//! MPEG-TS for Tidegate: a sans-IO demuxer (TS bytes → PES units → frames of the packet
//! model) and a muxer (frames → 188-byte TS packets), shared by SRT, UDP and HLS (TS variant).
//!
//! Every length read off the wire is bounded: PES units are capped, and so is the number of
//! elementary streams a program may declare.

pub mod demux;
pub mod frames;
pub mod ingest;
pub mod mux;
mod psi;

pub const PACKET_SIZE: usize = 188;
pub const SYNC_BYTE: u8 = 0x47;

/// Stream types of the PMT that Tidegate maps to codecs.
pub mod stream_type {
    pub const MPEG1_AUDIO: u8 = 0x03;
    pub const MPEG2_AUDIO: u8 = 0x04;
    pub const PRIVATE_DATA: u8 = 0x06;
    pub const AAC_ADTS: u8 = 0x0f;
    pub const METADATA: u8 = 0x15;
    pub const H264: u8 = 0x1b;
    pub const H265: u8 = 0x24;
    pub const AC3: u8 = 0x81;
}
