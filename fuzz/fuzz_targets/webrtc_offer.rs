#![no_main]
use libfuzzer_sys::fuzz_target;

// A WHIP/WHEP offer, as the HTTP handler takes it (at most 64 KiB there).
fuzz_target!(|data: &[u8]| {
    if data.len() <= 64 * 1024 {
        tidegate_webrtc::fuzzing::offer(&String::from_utf8_lossy(data));
    }
});
