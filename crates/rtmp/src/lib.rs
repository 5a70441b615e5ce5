//! RTMP for Tidegate: a sans-IO protocol core (handshake, chunk streams, AMF0, the server
//! session) and a thin tokio driver that connects publishers and players to the path registry.

pub mod amf0;
pub mod chunk;
pub mod client;
mod error;
pub mod flv;
pub mod handshake;
mod ingest;
mod mux;
mod relay;
pub mod rtmpt;
mod server;
pub mod session;

pub use error::RtmpError;
pub use relay::{pull, push, redact, RelayStatus};
pub use server::{serve, spawn_conn, RtmpConfig, RtmpListener};
pub use tidegate_core::{ConnInfo, ConnRegistry, ConnState};
pub use tokio_rustls::TlsAcceptor;
