//! RTCP sender reports (RFC 3550 §6.4.1): the NTP ↔ RTP timestamp mapping players use for
//! A/V sync.

use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};

/// NTP timestamp (seconds since 1900, 32.32 fixed point) of `t`.
pub fn ntp(t: SystemTime) -> u64 {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs() + 2_208_988_800;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// A sender report with no report blocks.
pub fn sender_report(ssrc: u32, ntp: u64, rtp_ts: u32, packets: u32, octets: u32) -> BytesMut {
    let mut b = BytesMut::with_capacity(28);
    b.put_u8(0x80);
    b.put_u8(200);
    b.put_u16(6); // length in 32-bit words minus one
    b.put_u32(ssrc);
    b.put_u64(ntp);
    b.put_u32(rtp_ts);
    b.put_u32(packets);
    b.put_u32(octets);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_report_layout_and_ntp_epoch() {
        let sr = sender_report(1, ntp(SystemTime::UNIX_EPOCH), 90_000, 3, 4);
        assert_eq!(sr.len(), 28);
        assert_eq!(&sr[..4], &[0x80, 200, 0, 6]);
        assert_eq!(
            u64::from_be_bytes(sr[8..16].try_into().unwrap()) >> 32,
            2_208_988_800
        );
        assert_eq!(u32::from_be_bytes(sr[16..20].try_into().unwrap()), 90_000);
    }
}
