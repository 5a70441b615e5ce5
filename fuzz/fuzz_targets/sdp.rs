#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(media) = tidegate_rtsp::sdp::parse(&text) {
        for m in &media {
            let _ = tidegate_rtsp::sdp::incoming(m);
        }
    }
});
