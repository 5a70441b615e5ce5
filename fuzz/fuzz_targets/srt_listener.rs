#![no_main]
use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use srt_protocol::listener::{Input, MultiplexListener, NextInputContext};
use srt_protocol::settings::ConnInitSettings;

// Datagrams (each prefixed by a one-byte length) as the SRT listener's UDP socket reads them:
// srt-protocol's packet parser (guarded by ours), then its listener state machine, which Tidegate drives itself
// (crates/srt/src/io.rs). Every action is answered as done, as the I/O loop would.
fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts before any unwinding; our parser guard catches the
    // panics srt-protocol's parser raises, so a quiet hook stands in for it. A panic that
    // escapes still ends in libfuzzer-sys's own catch, which aborts and reports it.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let local: SocketAddr = "127.0.0.1:8890".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut listener = MultiplexListener::new(Instant::now(), local, ConnInitSettings::default());
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (dgram, next) = tail.split_at(n);
        rest = next;
        let Ok(packet) = tidegate_srt::io::parse_datagram(dgram, false) else {
            continue;
        };
        let mut input = Input::Packet(Ok((packet, peer)));
        for _ in 0..8 {
            let action = listener.handle_input(Instant::now(), input);
            let next = NextInputContext::for_action(&action);
            if matches!(
                action,
                srt_protocol::listener::Action::WaitForInput | srt_protocol::listener::Action::Close
            ) {
                break;
            }
            input = next.input_from(Ok::<(), ()>(()));
        }
    }
});
