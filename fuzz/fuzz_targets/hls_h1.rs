#![no_main]
use libfuzzer_sys::fuzz_target;

// A request head as the HLS listener's HTTP/1.1 lane reads it: which heads it takes, and the
// path, query and headers it hands to the routes.
fuzz_target!(|data: &[u8]| {
    let _ = tidegate_hls::h1::parse_for_fuzzing(data);
});
