//! RTCP (RFC 3550 §6.4): sender reports, the NTP ↔ RTP timestamp mapping players use for A/V
//! sync; and the report blocks of the sender and receiver reports a reader sends back, which
//! say how much it lost and how much jitter it sees.

use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};

use crate::RtpError;

/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX: i128 = 2_208_988_800;

/// NTP timestamp (seconds since 1900, 32.32 fixed point) of `t` (times before 1900 give 0).
pub fn ntp(t: SystemTime) -> u64 {
    let unix_ns: i128 = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let ns = (unix_ns + NTP_UNIX * 1_000_000_000).max(0);
    let secs = (ns / 1_000_000_000) as u64;
    let frac = (((ns % 1_000_000_000) as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The time an NTP timestamp (32.32 fixed point since 1900) stands for.
pub fn ntp_time(ntp: u64) -> SystemTime {
    let ns = i128::from(ntp >> 32) * 1_000_000_000
        + ((i128::from(ntp & 0xffff_ffff) * 1_000_000_000) >> 32);
    let unix_ns = ns - NTP_UNIX * 1_000_000_000;
    let d = Duration::from_nanos(unix_ns.unsigned_abs() as u64);
    if unix_ns >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    }
}

/// What a sender report says: its sender's SSRC, and the NTP time of an RTP time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderInfo {
    pub ssrc: u32,
    pub ntp: u64,
    pub rtp_ts: u32,
}

/// The first sender report (200) of a compound RTCP packet, if it has one.
pub fn sender_info(mut compound: &[u8]) -> Option<SenderInfo> {
    while compound.len() >= 4 {
        if compound[0] >> 6 != 2 {
            return None;
        }
        let len = (usize::from(u16::from_be_bytes([compound[2], compound[3]])) + 1) * 4;
        if len > compound.len() {
            return None;
        }
        if compound[1] == 200 && len >= 28 {
            let b = &compound[..len];
            return Some(SenderInfo {
                ssrc: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                ntp: u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
                rtp_ts: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
            });
        }
        compound = &compound[len..];
    }
    None
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

/// The most report blocks one RTCP packet holds (its count is five bits).
const MAX_BLOCKS: usize = 31;

/// What one receiver reports of one source (a report block, RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: u32,
    /// Packets lost since the last report, in 256ths.
    pub fraction_lost: u8,
    /// Packets lost since the receiver started (24-bit signed: duplicates can make it negative).
    pub packets_lost: i32,
    /// The highest sequence number received, extended by the count of wraps.
    pub highest_seq: u32,
    /// Interarrival jitter, in the track's RTP clock units.
    pub jitter: u32,
}

/// The report blocks of the sender (200) and receiver (201) reports in a compound RTCP packet;
/// other packet types (SDES, BYE, feedback) are skipped. Allocates at most one entry per 24
/// bytes of input.
pub fn report_blocks(mut compound: &[u8]) -> Result<Vec<ReportBlock>, RtpError> {
    let mut out = Vec::new();
    if compound.is_empty() {
        return Err(RtpError::RtcpTruncated);
    }
    while !compound.is_empty() {
        let head = compound.get(..4).ok_or(RtpError::RtcpTruncated)?;
        if head[0] >> 6 != 2 {
            return Err(RtpError::RtcpVersion);
        }
        let size = (usize::from(u16::from_be_bytes([head[2], head[3]])) + 1) * 4;
        let pkt = compound.get(..size).ok_or(RtpError::RtcpTruncated)?;
        compound = &compound[size..];
        let count = usize::from(head[0] & 0x1f).min(MAX_BLOCKS);
        let first = match head[1] {
            200 => 28,
            201 => 8,
            _ => continue,
        };
        let blocks = pkt
            .get(first..first + 24 * count)
            .ok_or(RtpError::RtcpCount)?;
        for b in blocks.chunks_exact(24) {
            let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            // The 24-bit count, sign-extended.
            let lost = ((word(4) << 8) as i32) >> 8;
            out.push(ReportBlock {
                ssrc: word(0),
                fraction_lost: b[4],
                packets_lost: lost,
                highest_seq: word(8),
                jitter: word(12),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn ntp_times_go_both_ways_before_and_after_1970() {
        for t in [
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_400_987_250),
            SystemTime::UNIX_EPOCH - Duration::from_secs(2_208_988_790),
        ] {
            let back = ntp_time(ntp(t));
            let diff = match back.duration_since(t) {
                Ok(d) => d,
                Err(e) => e.duration(),
            };
            assert!(diff < Duration::from_micros(1), "{t:?} -> {back:?}");
        }
        let sr = sender_report(7, ntp(SystemTime::UNIX_EPOCH), 1234, 1, 2);
        let mut compound = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        compound.extend_from_slice(&sr);
        assert_eq!(
            sender_info(&compound),
            Some(SenderInfo {
                ssrc: 7,
                ntp: 2_208_988_800 << 32,
                rtp_ts: 1234
            })
        );
        assert_eq!(sender_info(&compound[..20]), None);
    }
    use super::*;

    /// A receiver report from `from` with one block on `of`.
    fn rr(from: u32, of: u32, fraction: u8, lost: i32, jitter: u32) -> Vec<u8> {
        let mut b = vec![0x81, 201, 0, 7];
        b.extend_from_slice(&from.to_be_bytes());
        b.extend_from_slice(&of.to_be_bytes());
        let lost = (lost as u32) & 0x00ff_ffff;
        b.extend_from_slice(&((u32::from(fraction) << 24) | lost).to_be_bytes());
        b.extend_from_slice(&70_000u32.to_be_bytes());
        b.extend_from_slice(&jitter.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b
    }

    #[test]
    fn report_blocks_of_a_compound_packet() {
        let mut c = rr(9, 0x1234, 64, 17, 450);
        // An SDES after it, as RFC 3550 requires, is skipped.
        c.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 9, 0, 0, 0, 0]);
        let b = report_blocks(&c).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(
            b[0],
            ReportBlock {
                ssrc: 0x1234,
                fraction_lost: 64,
                packets_lost: 17,
                highest_seq: 70_000,
                jitter: 450
            }
        );
        // Duplicates make the cumulative count negative.
        assert_eq!(
            report_blocks(&rr(1, 2, 0, -3, 0)).unwrap()[0].packets_lost,
            -3
        );
        // A sender report's blocks come after its sender info.
        let mut sr = sender_report(5, 0, 0, 0, 0).to_vec();
        sr[0] |= 1;
        sr[3] = 12;
        sr.extend_from_slice(&rr(0, 0x77, 1, 2, 3)[8..]);
        assert_eq!(report_blocks(&sr).unwrap()[0].ssrc, 0x77);
    }

    #[test]
    fn malformed_reports_are_refused() {
        let c = rr(9, 1, 0, 0, 0);
        assert_eq!(report_blocks(&c[..30]), Err(RtpError::RtcpTruncated));
        assert_eq!(report_blocks(&[]), Err(RtpError::RtcpTruncated));
        let mut v1 = c.clone();
        v1[0] = 0x41;
        assert_eq!(report_blocks(&v1), Err(RtpError::RtcpVersion));
        // Two blocks announced, room for one.
        let mut two = c.clone();
        two[0] = 0x82;
        assert_eq!(report_blocks(&two), Err(RtpError::RtcpCount));
    }

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
