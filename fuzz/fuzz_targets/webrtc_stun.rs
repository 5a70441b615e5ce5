#![no_main]
use libfuzzer_sys::fuzz_target;

// The UDP router's first look at every datagram: is it STUN, and whose ufrag does it name?
fuzz_target!(|data: &[u8]| {
    let _ = tidegate_webrtc::stun::is_stun(data);
    let _ = tidegate_webrtc::stun::local_ufrag(data);
});
