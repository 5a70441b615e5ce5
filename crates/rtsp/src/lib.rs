//! RTSP for Tidegate: a sans-IO message parser ([`message`]), SDP ([`sdp`]), Basic and Digest
//! auth ([`auth`]), packetize-once per stream ([`mux`]), one sender per stream for UDP readers ([`fanout`])
//! and the tokio server ([`server`]):
//! publish with ANNOUNCE/SETUP/RECORD, read with DESCRIBE/SETUP/PLAY, over TCP (interleaved)
//! or UDP unicast and multicast; over RTSPS, SRTP keyed by MIKEY ([`mikey`]).

pub mod auth;
pub mod client;
mod error;
pub mod fanout;
pub mod ingest;
pub mod message;
pub mod mikey;
pub mod multicast;
pub mod mux;
pub mod sdp;
pub mod server;
mod session;
pub mod source;
pub mod tunnel;
pub mod ws;

pub use error::RtspError;
pub use server::{serve, RtspConfig, RtspConns, RtspListener, RtspStats, Udp};
