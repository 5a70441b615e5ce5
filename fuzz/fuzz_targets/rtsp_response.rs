#![no_main]
use libfuzzer_sys::fuzz_target;

// What a camera answers our client (status line, headers, body, interleaved data before it).
fuzz_target!(|data: &[u8]| {
    tidegate_rtsp::client::fuzz_response(data);
});
