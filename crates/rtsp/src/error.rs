//! The crate's one error: why a message, an SDP, a MIKEY key exchange, a WebSocket frame or an
//! HTTP tunnel was refused. The session's own answers to a peer are RTSP status codes; this is
//! what the parsers and the tunnel code return.

use crate::message::{MAX_BODY, MAX_HEAD, MAX_HEADERS};
use crate::mikey::MAX_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtspError {
    #[error("message head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("SDP: {0}")]
    Sdp(String),
    #[error("MIKEY message truncated")]
    MikeyTruncated,
    #[error("MIKEY message larger than {MAX_LEN} bytes")]
    MikeyTooLong,
    #[error("MIKEY: not base64")]
    MikeyBase64,
    #[error("unsupported MIKEY message: {0}")]
    MikeyUnsupported(&'static str),
    #[error("the MIKEY key is {0} bytes; AES_CM_128_HMAC_SHA1_80 needs 30 (key and salt)")]
    MikeyKeyLength(usize),
    #[error("WebSocket frame of {0} bytes (at most 1 MiB)")]
    WsTooLarge(u64),
    #[error("a text WebSocket message where RTSP needs binary")]
    WsText,
    #[error("WebSocket frame with reserved bits or an unknown opcode {0}")]
    WsOpcode(u8),
    #[error("WebSocket control frame over 125 bytes or fragmented")]
    WsControl,
    #[error("WebSocket frame not masked by the client")]
    WsUnmasked,
    #[error("WebSocket handshake: {0}")]
    WsHandshake(String),
    #[error("HTTP tunnel: {0}")]
    Tunnel(String),
}
