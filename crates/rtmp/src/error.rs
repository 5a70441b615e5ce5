//! The crate's one error: why the sans-IO core refused what a peer sent (handshake, chunk
//! stream, AMF0, FLV payload, session protocol) or a URL it was given. The driver's reasons
//! for closing a connection (I/O, timeouts, refusals) wrap it privately in `server.rs`.

use crate::amf0::MAX_DEPTH;
use crate::chunk::{MAX_CHUNK_STREAMS, MAX_PARTIAL_BYTES};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtmpError {
    #[error("handshake: RTMP version {0} is not supported (only 3; RTMPE/RTMPT are not)")]
    Version(u8),
    #[error("chunk stream: chunk of stream {0} continues a message that was never started")]
    NoHeader(u32),
    #[error("chunk stream: more than {MAX_CHUNK_STREAMS} chunk streams in flight")]
    TooManyStreams,
    #[error("chunk stream: partial messages exceed {MAX_PARTIAL_BYTES} bytes")]
    TooMuchBuffered,
    #[error("chunk stream: chunk size {0} is out of range")]
    BadChunkSize(u32),
    #[error("command: AMF0 value truncated")]
    AmfTruncated,
    #[error("command: AMF0 marker {0:#04x} is not supported")]
    AmfMarker(u8),
    #[error("command: AMF0 values nested deeper than {MAX_DEPTH}")]
    AmfTooDeep,
    #[error("command: AMF0 string is not UTF-8")]
    AmfNotUtf8,
    #[error("empty or truncated FLV {0} tag")]
    FlvTruncated(&'static str),
    #[error("unsupported FLV {0}")]
    FlvUnsupported(String),
    #[error("bad codec configuration: {0}")]
    CodecConfig(#[from] tidegate_codec::CodecError),
    #[error("coded frame before its sequence header")]
    NoSequenceHeader,
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("{0}")]
    Url(String),
}
