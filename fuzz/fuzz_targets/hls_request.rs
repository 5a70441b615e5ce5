#![no_main]
use libfuzzer_sys::fuzz_target;

// An HLS request target (path and query) and an Authorization header, split at the first 0.
fuzz_target!(|data: &[u8]| {
    let (target, auth) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let target = String::from_utf8_lossy(target);
    let _ = tidegate_hls::http::parse_request_for_fuzzing(&target, auth);
});
