//! The RTP fixed header (RFC 3550 §5.1).

use bytes::{BufMut, BytesMut};

use crate::RtpError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    pub fn parse(data: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        if data.len() < 12 {
            return Err(RtpError::Truncated);
        }
        if data[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let padding = data[0] & 0x20 != 0;
        let extension = data[0] & 0x10 != 0;
        let csrcs = usize::from(data[0] & 0x0f);
        let mut start = 12 + 4 * csrcs;
        if extension {
            let ext = data.get(start..start + 4).ok_or(RtpError::Truncated)?;
            start += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        }
        let mut end = data.len();
        if padding {
            let n = usize::from(*data.last().ok_or(RtpError::Truncated)?);
            if n == 0 || n > end.saturating_sub(start) {
                return Err(RtpError::Padding);
            }
            end -= n;
        }
        let payload = data.get(start..end).ok_or(RtpError::Truncated)?;
        Ok(RtpPacket {
            marker: data[1] & 0x80 != 0,
            payload_type: data[1] & 0x7f,
            sequence: u16::from_be_bytes([data[2], data[3]]),
            timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            payload,
        })
    }
}

/// Appends a 12-byte header.
pub fn write_header(out: &mut BytesMut, marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32) {
    out.put_u8(0x80);
    out.put_u8((u8::from(marker) << 7) | (pt & 0x7f));
    out.put_u16(seq);
    out.put_u32(ts);
    out.put_u32(ssrc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_bad_packets() {
        let mut b = BytesMut::new();
        write_header(&mut b, true, 96, 65535, 0xdead_beef, 7);
        b.extend_from_slice(b"xyz");
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(
            (p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc),
            (true, 96, 65535, 0xdead_beef, 7)
        );
        assert_eq!(p.payload, b"xyz");
        assert_eq!(RtpPacket::parse(&b[..11]), Err(RtpError::Truncated));
        let mut v1 = b.to_vec();
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1), Err(RtpError::Version));
        let mut pad = b.to_vec();
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 200;
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::Padding));
        // CSRCs and an extension that claim more than there is.
        let mut ext = b.to_vec();
        ext[0] |= 0x1f;
        assert!(RtpPacket::parse(&ext).is_err());
    }
}
