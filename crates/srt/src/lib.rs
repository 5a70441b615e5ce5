//! SRT for Tidegate: a listener on `srtAddress` taking MPEG-TS from publishers and giving it to
//! readers, built on srt-protocol (pure Rust; interoperates with libsrt 1.5: stream ids, AES,
//! retransmission) driven by our own I/O loop ([`io`]), and pulls and pushes on srt-tokio's
//! socket ([`caller`]). The TS work is `tidegate-mpegts`.

pub mod caller;
pub mod io;
mod server;
pub mod streamid;

pub use server::{bind, serve, Figure, SrtConfig, SrtServer, SrtStats};
