//! AMF0 (Action Message Format 0), the encoding of RTMP commands and metadata.
//!
//! Decoding is bounded: nesting depth is limited and every length is checked against the
//! bytes actually present before anything is allocated.

use crate::RtmpError;
use bytes::{BufMut, BytesMut};

#[derive(Clone, Debug, PartialEq)]
pub enum Amf0 {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Amf0)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Amf0)>),
    StrictArray(Vec<Amf0>),
    Date(f64),
}

pub(crate) const MAX_DEPTH: usize = 16;

impl Amf0 {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf0::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A property of an object or ECMA array.
    pub fn get(&self, key: &str) -> Option<&Amf0> {
        match self {
            Amf0::Object(props) | Amf0::EcmaArray(props) => {
                props.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    pub fn object(props: &[(&str, Amf0)]) -> Amf0 {
        Amf0::Object(
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    pub fn string(s: &str) -> Amf0 {
        Amf0::String(s.to_string())
    }

    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Amf0::Number(n) => {
                out.put_u8(0x00);
                out.put_f64(*n);
            }
            Amf0::Boolean(b) => {
                out.put_u8(0x01);
                out.put_u8(u8::from(*b));
            }
            Amf0::String(s) => {
                if s.len() > 0xffff {
                    out.put_u8(0x0c);
                    out.put_u32(s.len() as u32);
                } else {
                    out.put_u8(0x02);
                    out.put_u16(s.len() as u16);
                }
                out.put_slice(s.as_bytes());
            }
            Amf0::Object(props) => {
                out.put_u8(0x03);
                encode_props(props, out);
            }
            Amf0::Null => out.put_u8(0x05),
            Amf0::Undefined => out.put_u8(0x06),
            Amf0::EcmaArray(props) => {
                out.put_u8(0x08);
                out.put_u32(props.len() as u32);
                encode_props(props, out);
            }
            Amf0::StrictArray(items) => {
                out.put_u8(0x0a);
                out.put_u32(items.len() as u32);
                for i in items {
                    i.encode(out);
                }
            }
            Amf0::Date(ms) => {
                out.put_u8(0x0b);
                out.put_f64(*ms);
                out.put_i16(0);
            }
        }
    }
}

fn encode_props(props: &[(String, Amf0)], out: &mut BytesMut) {
    for (k, v) in props {
        let k = &k.as_bytes()[..k.len().min(0xffff)];
        out.put_u16(k.len() as u16);
        out.put_slice(k);
        v.encode(out);
    }
    out.put_slice(&[0, 0, 0x09]);
}

/// Encodes a sequence of values (a command: name, transaction id, object, args...).
pub fn encode_all(values: &[Amf0]) -> BytesMut {
    let mut out = BytesMut::new();
    for v in values {
        v.encode(&mut out);
    }
    out
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RtmpError> {
        let end = self.pos.checked_add(n).ok_or(RtmpError::AmfTruncated)?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(RtmpError::AmfTruncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, RtmpError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RtmpError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, RtmpError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, RtmpError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn string(&mut self, len: usize) -> Result<String, RtmpError> {
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| RtmpError::AmfNotUtf8)
    }

    fn props(&mut self, depth: usize) -> Result<Vec<(String, Amf0)>, RtmpError> {
        let mut props = Vec::new();
        loop {
            let len = usize::from(self.u16()?);
            if len == 0 {
                // Object end marker (0x09) after an empty key. Some encoders omit it at the
                // very end of the message; tolerate that.
                if self.pos < self.data.len() {
                    let marker = self.u8()?;
                    if marker != 0x09 {
                        return Err(RtmpError::AmfMarker(marker));
                    }
                }
                return Ok(props);
            }
            let key = self.string(len)?;
            let value = self.value(depth + 1)?;
            props.push((key, value));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Amf0, RtmpError> {
        if depth > MAX_DEPTH {
            return Err(RtmpError::AmfTooDeep);
        }
        let marker = self.u8()?;
        Ok(match marker {
            0x00 => Amf0::Number(self.f64()?),
            0x01 => Amf0::Boolean(self.u8()? != 0),
            0x02 => {
                let len = usize::from(self.u16()?);
                Amf0::String(self.string(len)?)
            }
            0x03 => Amf0::Object(self.props(depth)?),
            0x05 => Amf0::Null,
            0x06 => Amf0::Undefined,
            0x08 => {
                let _count = self.u32()?; // a hint only; the end marker is what counts
                Amf0::EcmaArray(self.props(depth)?)
            }
            0x0a => {
                let count = self.u32()? as usize;
                // Each element takes at least one byte: a count beyond the input is a lie.
                if count > self.data.len() - self.pos {
                    return Err(RtmpError::AmfTruncated);
                }
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Amf0::StrictArray(items)
            }
            0x0b => {
                let ms = self.f64()?;
                self.take(2)?;
                Amf0::Date(ms)
            }
            0x0c => {
                let len = self.u32()? as usize;
                Amf0::String(self.string(len)?)
            }
            // AMF3 switch inside AMF0 data (some encoders): not supported, reported clearly.
            m => return Err(RtmpError::AmfMarker(m)),
        })
    }
}

/// Decodes every value in `data`.
pub fn decode_all(data: &[u8]) -> Result<Vec<Amf0>, RtmpError> {
    let mut r = Reader { data, pos: 0 };
    let mut out = Vec::new();
    while r.pos < data.len() {
        out.push(r.value(0)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let values = vec![
            Amf0::string("connect"),
            Amf0::Number(1.0),
            Amf0::object(&[
                ("app", Amf0::string("live")),
                ("tcUrl", Amf0::string("rtmp://127.0.0.1/live")),
                ("fpad", Amf0::Boolean(false)),
                ("nested", Amf0::object(&[("x", Amf0::Null)])),
            ]),
            Amf0::Null,
            Amf0::Undefined,
            Amf0::EcmaArray(vec![("width".into(), Amf0::Number(640.0))]),
            Amf0::StrictArray(vec![Amf0::Number(1.0), Amf0::string("a")]),
            Amf0::Date(1.5e12),
            Amf0::String("x".repeat(70_000)),
        ];
        let bytes = encode_all(&values);
        assert_eq!(decode_all(&bytes).unwrap(), values);
        let obj = &values[2];
        assert_eq!(obj.get("app").and_then(Amf0::as_str), Some("live"));
    }

    #[test]
    fn truncations_and_lies_are_errors() {
        let bytes = encode_all(&[
            Amf0::string("connect"),
            Amf0::object(&[("a", Amf0::Number(1.0))]),
        ]);
        let boundary = 1 + 2 + "connect".len(); // a cut between two values is a valid prefix
        for cut in (1..bytes.len() - 3).filter(|&c| c != boundary) {
            assert!(decode_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A strict array claiming 4 billion elements.
        assert_eq!(
            decode_all(&[0x0a, 0xff, 0xff, 0xff, 0xff]),
            Err(RtmpError::AmfTruncated)
        );
        // Deep nesting.
        let mut deep = vec![];
        for _ in 0..100 {
            deep.extend_from_slice(&[0x03, 0, 1, b'a']);
        }
        assert_eq!(decode_all(&deep), Err(RtmpError::AmfTooDeep));
        assert_eq!(decode_all(&[0x11]), Err(RtmpError::AmfMarker(0x11)));
    }
}
