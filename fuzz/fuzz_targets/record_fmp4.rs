#![no_main]
use libfuzzer_sys::fuzz_target;

// A segment file as the recorder's reader finds it after a crash, or as anyone may have put
// it in the recordings directory: scanned (init, parts, cut tail), each part's runs read,
// the playback edit-list rewrite applied to what was taken as the init; and the same bytes as
// an `alwaysAvailableFile` (every frame of a progressive or fragmented MP4).
fuzz_target!(|data: &[u8]| {
    if let Ok(scan) = tidegate_record::read::scan_bytes(data) {
        let _ = scan.duration();
        for p in &scan.parts {
            let _ = scan.part_start(p);
        }
        let _ = tidegate_record::cut::with_edit_list(&scan.init, 500_000, 2_000_000);
    }
    let _ = tidegate_record::read::parse_moof(data);
    let _ = tidegate_record::read::parse_moov(data);
    let _ = tidegate_record::cut::with_edit_list(data, 1, 1);
    // An `alwaysAvailableFile`: progressive (sample tables) or fragmented.
    let _ = tidegate_record::demux::file_frames(&bytes::Bytes::copy_from_slice(data));
});
