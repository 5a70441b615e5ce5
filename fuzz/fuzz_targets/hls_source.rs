#![no_main]
use libfuzzer_sys::fuzz_target;

// What another server sends an HLS source: playlist text (multivariant and media, followed
// from every cursor it could be at) and fMP4 bytes (an init section, then fragments read
// with the tracks of a valid or invalid init).
fuzz_target!(|data: &[u8]| {
    use tidegate_hls::follow::{best_variant, parse_media, step, Cursor};
    let text = String::from_utf8_lossy(data);
    let _ = best_variant(&text);
    if let Ok(p) = parse_media(&text) {
        let _ = p.start();
        for msn in p.media_sequence.saturating_sub(1)..p.next_msn().saturating_add(2) {
            for part in [None, Some(0), Some(1), Some(usize::MAX)] {
                let _ = step(&p, Cursor { msn, part });
            }
        }
    }
    let bytes = bytes::Bytes::copy_from_slice(data);
    let tracks = tidegate_record::demux::parse_init(data).unwrap_or_default();
    let _ = tidegate_record::demux::fragment_frames(&tracks, &bytes);
});
