//! `cargo xtask bench [core|rtmp-fanout|hls-readers|rtsp-fanout|webrtc|webrtc-aiortc|rtmp-idle|record|transcode] [n...]`: performance figures, printed as
//! tables.
//!
//! - `core`: the in-process fan-out rate of one stream (no peer: the ceiling every egress
//!   shares).
//! - `rtmp-fanout`: Tidegate and nginx-rtmp under the same load in the same run (default 100
//!   and 1000 readers), as a ratio, beside the loopback floors. `TIDEGATE_BENCH_ROUNDS=K`
//!   alternates the servers K times per size and prints the medians; with 1 among the sizes it
//!   also prints each server's fixed cost (one reader) and what each further reader adds.
//! - `hls-readers`: 0 and 200 LL-HLS clients polling with blocking reload beside one RTMP
//!   reader: server CPU, and whether the RTMP reader's latency moves.
//! - `rtsp-fanout`: RTSP readers over TCP and UDP and SRT readers beside RTMP readers of the same clip
//!   (`--mbps=8` for the 8 Mbit/s publish the RTSP issue names; the default clip is 1 Mbit/s).
//! - `webrtc`: one RTSP publisher of a 720p 2 Mbit/s clip and 1, 100 and 300 str0m WHEP viewers
//!   (DTLS-SRTP, every packet decrypted): server CPU per viewer, memory, the added latency
//!   (frame ingress -> datagrams sent, the server's histogram); then the same viewers against
//!   the WHEP floor (one thread, the same str0m and UDP sender, no publisher), as a ratio.
//! - `webrtc-aiortc`: one ffmpeg 9 WHIP publisher and 1 and 20 aiortc WHEP viewers that decode.
//! - `transcode`: the audio bridge (AAC -> Opus, Opus -> AAC) per stream, in process, and AAC -> Opus with 50 paths each
//!   read by one WHEP viewer, against the same paths publishing Opus.
//!
//! Everything is built in release mode.

use std::path::Path;
use std::process::Command;

pub fn run(root: &Path, peers: &Path, extra: &[String]) -> Result<(), String> {
    // The benchmark starts the release binary of the server.
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args(["build", "--release", "--quiet", "-p", "tidegate"]),
    )?;
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .env("PEERS_DIR", peers)
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "xtask",
                "--bin",
                "tidegate-bench",
                "--",
            ])
            .args(extra),
    )
}
