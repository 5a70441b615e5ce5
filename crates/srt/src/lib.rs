//! SRT for Tidegate: a listener on `srtAddress` taking MPEG-TS from publishers and giving it to
//! readers, and pulls and pushes to remote SRT listeners ([`caller`]), built on srt-protocol
//! (pure Rust; interoperates with libsrt 1.5: stream ids, AES, retransmission) driven by our
//! own I/O loop ([`io`]). The TS work is `tidegate-mpegts`.

pub mod caller;
mod error;
pub mod io;
mod server;
pub mod streamid;

pub use error::SrtError;
pub use server::{bind, serve, write_ts, Figure, SrtConfig, SrtServer, SrtStats};
