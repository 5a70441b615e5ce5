#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate_rtmp::session::ServerSession;

fuzz_target!(|data: &[u8]| {
    // A valid handshake prefix, then the fuzzer's bytes as chunk data.
    let mut s = ServerSession::new(0);
    let mut hs = vec![3u8];
    hs.extend(std::iter::repeat(0u8).take(1536 * 2));
    if s.feed(&hs).is_err() {
        return;
    }
    for piece in data.chunks(97) {
        if s.feed(piece).is_err() {
            return;
        }
        while s.poll_event().is_some() {}
        let _ = s.take_output();
    }
});
