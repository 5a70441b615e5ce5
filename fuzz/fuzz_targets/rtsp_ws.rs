#![no_main]
use libfuzzer_sys::fuzz_target;

// RTSP over WebSocket: frames from a client (masked) and from a server, fed in pieces: a
// frame or a refusal, never a panic, never a payload over the 1 MiB limit.
fuzz_target!(|data: &[u8]| {
    for masked in [true, false] {
        let mut d = tidegate_rtsp::ws::Decoder::new(masked);
        for piece in data.chunks(97) {
            d.feed(piece);
            loop {
                match d.poll() {
                    Ok(Some(tidegate_rtsp::ws::Frame::Data(p))) => {
                        assert!(p.len() <= tidegate_rtsp::ws::MAX_PAYLOAD)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    let head = String::from_utf8_lossy(data);
    if tidegate_rtsp::ws::is_upgrade(&head) {
        let _ = tidegate_rtsp::ws::handshake_answer(&head);
    }
});
