#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate_codec::{aac, h264, h265, nal, opus, vp9};

fuzz_target!(|data: &[u8]| {
    let _ = h264::parse_sps(data);
    let _ = h265::parse_sps(data);
    let _ = h264::AvcConfig::parse(data);
    let _ = h265::HevcConfig::parse(data);
    let _ = aac::AudioSpecificConfig::parse(data);
    let _ = aac::split_adts(data);
    let _ = opus::OpusHead::parse(data);
    let _ = opus::packet_samples(data);
    let _ = nal::split_annexb(data);
    let _ = nal::split_length_prefixed(data, 4);
    let _ = nal::length_prefixed_to_annexb(data);
    let _ = vp9::parse_keyframe(data);
});
