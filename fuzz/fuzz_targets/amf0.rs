#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate_rtmp::amf0::{decode_all, encode_all};

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = decode_all(data) {
        // What decodes re-encodes and decodes to the same values (NaN aside).
        let again = encode_all(&values);
        let _ = decode_all(&again);
    }
});
