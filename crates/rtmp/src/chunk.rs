//! RTMP chunk streams: splitting messages into chunks and joining them back.
//!
//! The reader is a state machine fed with bytes; it never allocates on the strength of a
//! declared length alone: a message buffer grows only as its chunks arrive, the number of
//! chunk streams in flight is bounded, and so is the total of partial messages.

use std::collections::HashMap;

use crate::RtmpError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A whole RTMP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    /// Milliseconds, 32 bits, wrapping.
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

pub const DEFAULT_CHUNK_SIZE: usize = 128;
/// Largest chunk size a peer may set (the spec allows 2^31-1; no encoder needs more).
pub const MAX_CHUNK_SIZE: u32 = 1 << 24;
pub(crate) const MAX_CHUNK_STREAMS: usize = 64;
pub(crate) const MAX_PARTIAL_BYTES: usize = 32 << 20;

#[derive(Default)]
struct ChunkStream {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    started: bool,
    buf: BytesMut,
}

/// Joins chunks into messages.
pub struct ChunkReader {
    chunk_size: usize,
    streams: HashMap<u32, ChunkStream>,
    partial_bytes: usize,
}

impl Default for ChunkReader {
    fn default() -> Self {
        ChunkReader {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
            partial_bytes: 0,
        }
    }
}

fn be24(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
}

impl ChunkReader {
    /// Applies the peer's Set Chunk Size.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), RtmpError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(RtmpError::BadChunkSize(size));
        }
        self.chunk_size = size as usize;
        Ok(())
    }

    /// Discards the partial message of a chunk stream (Abort Message).
    pub fn abort(&mut self, csid: u32) {
        if let Some(s) = self.streams.get_mut(&csid) {
            self.partial_bytes -= s.buf.len();
            s.buf = BytesMut::new();
        }
    }

    /// Consumes whole chunks from `input` until a message is complete (returned) or the input
    /// ends mid-chunk (`Ok(None)`: feed more bytes and call again).
    pub fn read(&mut self, input: &mut BytesMut) -> Result<Option<Message>, RtmpError> {
        loop {
            let Some(consumed) = self.read_chunk(input)? else {
                return Ok(None);
            };
            if let Some(msg) = consumed {
                return Ok(Some(msg));
            }
        }
    }

    /// One chunk: `None` when incomplete, `Some(None)` when consumed without finishing a
    /// message, `Some(Some(msg))` when it finished one.
    #[allow(clippy::type_complexity)]
    fn read_chunk(&mut self, input: &mut BytesMut) -> Result<Option<Option<Message>>, RtmpError> {
        let data = &input[..];
        let Some(&first) = data.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3f {
            0 => match data.get(1) {
                Some(&b) => (64 + u32::from(b), 2),
                None => return Ok(None),
            },
            1 => match data.get(1..3) {
                Some(b) => (64 + u32::from(b[0]) + 256 * u32::from(b[1]), 3),
                None => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        let Some(header) = data.get(pos..pos + header_len) else {
            return Ok(None);
        };
        pos += header_len;
        if !self.streams.contains_key(&csid) && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(RtmpError::TooManyStreams);
        }
        let prev = self.streams.get(&csid);
        if fmt != 0 && !prev.is_some_and(|s| s.started) {
            return Err(RtmpError::NoHeader(csid));
        }
        let ts_field = if fmt < 3 { be24(&header[0..3]) } else { 0 };
        let extended = if fmt < 3 {
            ts_field == 0xff_ffff
        } else {
            prev.is_some_and(|s| s.extended)
        };
        let ext_value = if extended {
            let Some(b) = data.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            None
        };
        // Work out this chunk's message header without committing anything yet.
        let s = prev;
        let new_message = fmt != 3 || s.is_none_or(|s| s.buf.is_empty());
        let (mut timestamp, mut delta, mut length, mut type_id, mut stream_id) = match s {
            Some(s) => (s.timestamp, s.delta, s.length, s.type_id, s.stream_id),
            None => (0, 0, 0, 0, 0),
        };
        let field = ext_value.unwrap_or(ts_field);
        match fmt {
            0 => {
                timestamp = field;
                delta = 0;
                length = be24(&header[3..6]);
                type_id = header[6];
                stream_id = u32::from_le_bytes([header[7], header[8], header[9], header[10]]);
            }
            1 => {
                delta = field;
                length = be24(&header[3..6]);
                type_id = header[6];
            }
            2 => delta = field,
            _ => {}
        }
        if new_message && fmt != 0 {
            timestamp = timestamp.wrapping_add(delta);
        }
        let have = s.map_or(0, |s| if new_message { 0 } else { s.buf.len() });
        let want = (length as usize - have.min(length as usize)).min(self.chunk_size);
        if data.len() < pos + want {
            return Ok(None);
        }
        if new_message && self.partial_bytes + length as usize > MAX_PARTIAL_BYTES {
            return Err(RtmpError::TooMuchBuffered);
        }
        // Commit.
        input.advance(pos);
        let body = input.split_to(want);
        let st = self.streams.entry(csid).or_default();
        st.timestamp = timestamp;
        st.delta = delta;
        st.length = length;
        st.type_id = type_id;
        st.stream_id = stream_id;
        st.extended = extended;
        st.started = true;
        if new_message {
            self.partial_bytes -= st.buf.len();
            st.buf = BytesMut::new();
        }
        st.buf.put_slice(&body);
        self.partial_bytes += body.len();
        if st.buf.len() >= length as usize {
            self.partial_bytes -= st.buf.len();
            let payload = std::mem::take(&mut st.buf).freeze();
            return Ok(Some(Some(Message {
                csid,
                timestamp,
                type_id,
                stream_id,
                payload,
            })));
        }
        Ok(Some(None))
    }
}

/// Serialises one message as chunks: a type-0 header, then type-3 continuation headers.
/// Stateless, so the bytes are the same for every connection using this chunk size: a stream
/// is chunked once and the bytes are shared by all its readers.
pub fn write_message(
    out: &mut BytesMut,
    csid: u32,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: usize,
) {
    let extended = timestamp >= 0xff_ffff;
    let basic = |out: &mut BytesMut, fmt: u8| match csid {
        2..=63 => out.put_u8((fmt << 6) | csid as u8),
        64..=319 => {
            out.put_u8(fmt << 6);
            out.put_u8((csid - 64) as u8);
        }
        _ => {
            out.put_u8((fmt << 6) | 1);
            out.put_u16_le((csid - 64) as u16);
        }
    };
    out.reserve(payload.len() + 18 + payload.len() / chunk_size.max(1) * 5);
    basic(out, 0);
    let ts = if extended { 0xff_ffff } else { timestamp };
    out.put_slice(&ts.to_be_bytes()[1..]);
    out.put_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.put_u8(type_id);
    out.put_u32_le(stream_id);
    if extended {
        out.put_u32(timestamp);
    }
    let mut chunks = payload.chunks(chunk_size.max(1));
    if let Some(first) = chunks.next() {
        out.put_slice(first);
    }
    for c in chunks {
        basic(out, 3);
        if extended {
            out.put_u32(timestamp);
        }
        out.put_slice(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(reader: &mut ChunkReader, bytes: &[u8], step: usize) -> Vec<Message> {
        let mut input = BytesMut::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            input.extend_from_slice(piece);
            while let Some(m) = reader.read(&mut input).unwrap() {
                out.push(m);
            }
        }
        assert!(input.is_empty());
        out
    }

    #[test]
    fn round_trip_across_chunk_sizes_and_byte_splits() {
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        for (chunk_size, csid, ts) in [
            (128, 3, 0),
            (4096, 6, 1000),
            (60, 300, 0x0100_0000),
            (1, 70, 5),
        ] {
            let mut bytes = BytesMut::new();
            write_message(&mut bytes, csid, ts, 9, 1, &payload, chunk_size);
            write_message(&mut bytes, csid, ts + 40, 8, 1, &payload[..10], chunk_size);
            for step in [1, 7, 1000, bytes.len()] {
                let mut r = ChunkReader::default();
                r.set_chunk_size(chunk_size as u32).unwrap();
                let msgs = read_all(&mut r, &bytes, step);
                assert_eq!(msgs.len(), 2);
                assert_eq!(msgs[0].payload.as_ref(), &payload[..]);
                assert_eq!(
                    (
                        msgs[0].csid,
                        msgs[0].timestamp,
                        msgs[0].type_id,
                        msgs[0].stream_id
                    ),
                    (csid, ts, 9, 1)
                );
                assert_eq!(msgs[1].timestamp, ts + 40);
                assert_eq!(msgs[1].payload.as_ref(), &payload[..10]);
            }
        }
    }

    #[test]
    fn compressed_headers_use_deltas() {
        // fmt 0 at t=1000 (len 2), fmt 2 delta 20, fmt 3 (same delta), fmt 1 delta 5 new length.
        let mut b = BytesMut::new();
        b.put_slice(&[0x04, 0x00, 0x03, 0xe8, 0, 0, 2, 8, 1, 0, 0, 0, 0xaa, 0xbb]);
        b.put_slice(&[0x84, 0x00, 0x00, 20, 0xcc, 0xdd]);
        b.put_slice(&[0xc4, 0xee, 0xff]);
        b.put_slice(&[0x44, 0x00, 0x00, 5, 0, 0, 1, 9, 0x11]);
        let mut r = ChunkReader::default();
        let msgs = read_all(&mut r, &b, 1);
        let ts: Vec<u32> = msgs.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![1000, 1020, 1040, 1045]);
        assert_eq!(msgs[3].type_id, 9);
        assert_eq!(msgs[3].payload.as_ref(), &[0x11]);
    }

    #[test]
    fn hostile_input_is_refused() {
        let mut r = ChunkReader::default();
        let mut input = BytesMut::from(&[0x43, 0, 0, 0, 0, 0, 1, 8][..]);
        assert_eq!(r.read(&mut input), Err(RtmpError::NoHeader(3)));

        // A declared 16 MB message with no data allocates nothing up front.
        let mut r = ChunkReader::default();
        let mut input = BytesMut::from(&[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0][..]);
        assert_eq!(r.read(&mut input), Ok(None));
        assert_eq!(r.partial_bytes, 0);

        // Too many chunk streams.
        let mut r = ChunkReader::default();
        let mut err = None;
        for csid in 3..200u32 {
            let mut one = BytesMut::new();
            write_message(&mut one, csid, 0, 9, 1, &[0; 300], 128);
            let mut input = one.split_to(one.len() - 44);
            if let Err(e) = r.read(&mut input) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(RtmpError::TooManyStreams));
        assert!(r.set_chunk_size(0).is_err());
        assert!(r.set_chunk_size(u32::MAX >> 1).is_err());
    }
}
