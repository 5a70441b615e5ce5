//! RTMP for Tidegate: a sans-IO protocol core (handshake, chunk streams, AMF0, the server
//! session) and a thin tokio driver that connects publishers and players to the path registry.

pub mod amf0;
pub mod chunk;
pub mod flv;
pub mod handshake;
mod mux;
mod server;
pub mod session;

pub use server::{serve, RtmpConfig};
