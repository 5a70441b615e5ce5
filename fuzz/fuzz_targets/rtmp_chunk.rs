#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidegate_rtmp::chunk::ChunkReader;

fuzz_target!(|data: &[u8]| {
    let mut r = ChunkReader::default();
    // The first byte picks a chunk size, the rest is the stream, fed in uneven pieces.
    let Some((&size, rest)) = data.split_first() else { return };
    let _ = r.set_chunk_size(u32::from(size) * 16 + 1);
    let mut input = BytesMut::new();
    for piece in rest.chunks(usize::from(size % 64) + 1) {
        input.extend_from_slice(piece);
        loop {
            match r.read(&mut input) {
                Ok(Some(m)) => assert!(m.payload.len() < 1 << 24),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
