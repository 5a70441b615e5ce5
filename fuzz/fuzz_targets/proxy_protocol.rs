#![no_main]
use libfuzzer_sys::fuzz_target;

// What a trusted proxy (or anyone at its address) sends first: a PROXY header, v1 or v2.
fuzz_target!(|data: &[u8]| {
    use tidegate_core::proxy_protocol::{parse_v1, parse_v2};
    let _ = parse_v1(data);
    if data.len() >= 16 {
        let mut head = [0u8; 16];
        head.copy_from_slice(&data[..16]);
        let _ = parse_v2(&head, &data[16..]);
    }
});
