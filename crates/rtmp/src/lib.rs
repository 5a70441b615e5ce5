//! RTMP for Tidegate: a sans-IO protocol core (handshake, chunk streams, AMF0, the server
//! session) and a thin tokio driver that connects publishers and players to the path registry.

pub mod amf0;
pub mod chunk;
pub mod conns;
pub mod flv;
pub mod handshake;
mod mux;
mod server;
pub mod session;

pub use conns::{ConnInfo, ConnRegistry, ConnState};
pub use server::{serve, RtmpConfig, RtmpListener};
pub use tokio_rustls::TlsAcceptor;
