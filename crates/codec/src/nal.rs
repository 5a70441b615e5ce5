//! NAL unit framing shared by H.264 and H.265: Annex-B start codes and 4-byte length prefixes
//! (the canonical form inside Tidegate).

use bytes::{BufMut, Bytes, BytesMut};

use crate::CodecError;

/// Splits an Annex-B byte stream into NAL units (without start codes). Empty units and
/// trailing zero bytes are dropped.
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut start: Option<usize> = None;
    while i + 2 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                push_trimmed(&mut out, &data[s..i]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    match start {
        Some(s) => push_trimmed(&mut out, &data[s..]),
        // No start code at all: treat the whole input as one NAL unit.
        None if !data.is_empty() => out.push(data),
        None => {}
    }
    out
}

fn push_trimmed<'a>(out: &mut Vec<&'a [u8]>, mut nal: &'a [u8]) {
    // A 4-byte start code leaves a zero at the end of the previous unit.
    while let [rest @ .., 0] = nal {
        nal = rest;
    }
    if !nal.is_empty() {
        out.push(nal);
    }
}

/// Joins NAL units as 4-byte length-prefixed units.
pub fn to_length_prefixed<'a>(nals: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::new();
    for nal in nals {
        out.put_u32(nal.len() as u32);
        out.put_slice(nal);
    }
    out.freeze()
}

/// Converts an Annex-B access unit to 4-byte length-prefixed NAL units.
pub fn annexb_to_length_prefixed(data: &[u8]) -> Bytes {
    to_length_prefixed(split_annexb(data))
}

/// Splits length-prefixed NAL units (`len_size` 1, 2 or 4 bytes).
pub fn split_length_prefixed(data: &[u8], len_size: usize) -> Result<Vec<&[u8]>, CodecError> {
    if !matches!(len_size, 1 | 2 | 4) {
        return Err(crate::invalid("NAL length size", "must be 1, 2 or 4"));
    }
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < len_size {
            return Err(CodecError::Truncated("NAL length prefix"));
        }
        let len = rest[..len_size]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[len_size..];
        if len > rest.len() {
            return Err(CodecError::Truncated("NAL unit"));
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(out)
}

/// Converts 4-byte length-prefixed NAL units to Annex-B with 4-byte start codes.
pub fn length_prefixed_to_annexb(data: &[u8]) -> Result<Bytes, CodecError> {
    let nals = split_length_prefixed(data, 4)?;
    let mut out = BytesMut::with_capacity(data.len());
    for nal in nals {
        out.put_slice(&[0, 0, 0, 1]);
        out.put_slice(nal);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_round_trip() {
        let stream = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5, 6, 0,
        ];
        let nals = split_annexb(&stream);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4, 5, 6]]);
        let lp = annexb_to_length_prefixed(&stream);
        assert_eq!(&lp[..7], &[0, 0, 0, 3, 0x67, 1, 2]);
        let back = length_prefixed_to_annexb(&lp).unwrap();
        assert_eq!(split_annexb(&back), nals);
    }

    #[test]
    fn bad_length_prefix_is_an_error() {
        assert!(split_length_prefixed(&[0, 0, 0, 9, 1, 2], 4).is_err());
        assert!(split_length_prefixed(&[0, 0], 4).is_err());
        assert!(split_length_prefixed(&[1, 0xaa, 2, 0xbb, 0xcc], 1).is_ok());
        assert!(split_length_prefixed(&[], 3).is_err());
    }
}
