#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidegate_rtmp::handshake::Handshake;

fuzz_target!(|data: &[u8]| {
    let mut h = Handshake::new(0);
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for piece in data.chunks(700) {
        input.extend_from_slice(piece);
        if h.feed(&mut input, &mut out).is_err() {
            return;
        }
    }
    assert!(out.len() <= 1 + 2 * 1536);
});
