#![no_main]
use libfuzzer_sys::fuzz_target;

// MIKEY messages as RTSPS peers send them (KeyMgmt, a=key-mgmt), raw and in base64.
fuzz_target!(|data: &[u8]| {
    let _ = tidegate_rtsp::mikey::parse(data);
    let _ = tidegate_rtsp::mikey::parse_base64(&String::from_utf8_lossy(data));
    if let Ok(h) = std::str::from_utf8(data) {
        let _ = tidegate_rtsp::mikey::key_mgmt_header_data(h);
    }
});
