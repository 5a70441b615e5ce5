//! SRT for Tidegate: a listener on `srtAddress` taking MPEG-TS from publishers and giving it to
//! readers, built on srt-tokio (pure Rust; interoperates with libsrt 1.5: stream ids, AES,
//! retransmission). The TS work is `tidegate-mpegts`.

pub mod caller;
pub mod io;
mod server;
pub mod streamid;

pub use server::{bind, serve, Figure, SrtConfig, SrtServer, SrtStats};
