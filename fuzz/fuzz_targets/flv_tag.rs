#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidegate_rtmp::flv::{AudioState, VideoState};

fuzz_target!(|data: &[u8]| {
    // Several tags in a row, split on a marker byte, through the same state (a sequence
    // header followed by frames is the interesting case).
    let mut v = VideoState::default();
    let mut a = AudioState::default();
    for (i, tag) in data.split(|&b| b == 0xfe).enumerate() {
        let tag = Bytes::copy_from_slice(tag);
        let _ = v.parse(i as i64, &tag);
        let _ = a.parse(i as i64, &tag);
    }
});
