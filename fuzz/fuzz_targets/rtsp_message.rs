#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate_rtsp::message::Parser;

// Arbitrary bytes fed in two pieces to the request / interleaved-frame splitter.
fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut p = Parser::default();
    for piece in [&data[..cut], &data[cut..]] {
        p.feed(piece);
        while let Ok(Some(_)) = p.poll() {}
    }
});
