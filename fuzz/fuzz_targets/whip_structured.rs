#![no_main]
//! A WHIP/WHEP offer built from structure: media sections, codecs with fmtp parameters (some of
//! them arbitrary parameter sets), ICE and DTLS attributes, simulcast, and candidates, through
//! str0m's parser, our answer and its completion, as the HTTP handler takes them (64 KiB).
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "common/sdp.rs"]
mod sdp;

fuzz_target!(|offer: sdp::Sdp| {
    let text = offer.render(64);
    if text.len() <= 64 * 1024 {
        tidegate_webrtc::fuzzing::offer(&text);
    }
});
