#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate_mpegts::demux::Demuxer;
use tidegate_mpegts::frames::TsToFrames;

fuzz_target!(|data: &[u8]| {
    // Whole packets and odd splits, through the demuxer and the frame converter.
    let mut d = Demuxer::default();
    let mut conv = TsToFrames::default();
    for piece in data.chunks(200) {
        d.feed(piece);
        while let Some(ev) = d.poll_event() {
            let _ = conv.on_event(ev);
        }
    }
    d.flush();
    while let Some(ev) = d.poll_event() {
        let _ = conv.on_event(ev);
    }
});
