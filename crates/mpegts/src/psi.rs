//! Program-specific information: PAT and PMT sections, and the MPEG-2 CRC.

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, no reflection, no final XOR).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One elementary stream of a PMT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EsInfo {
    pub pid: u16,
    pub stream_type: u8,
    /// The format identifier of a registration descriptor (tag 5), e.g. `Opus`, `KLVA`.
    pub registration: Option<[u8; 4]>,
    /// Whether an AC-3 descriptor (tag 0x6a) is present.
    pub ac3: bool,
}

/// The most elementary streams a PMT may declare (real programs have a handful).
pub const MAX_STREAMS: usize = 32;

/// Checks a section's CRC and returns its body between the 8-byte header and the CRC.
fn section_body(section: &[u8]) -> Option<&[u8]> {
    if section.len() < 12 {
        return None;
    }
    let len = (usize::from(section[1] & 0x0f) << 8) | usize::from(section[2]);
    let total = 3 + len;
    if total > section.len() || total < 12 || crc32(&section[..total]) != 0 {
        return None;
    }
    Some(&section[8..total - 4])
}

/// The PMT PIDs of a PAT section (program 0, the network PID, is skipped).
pub fn parse_pat(section: &[u8]) -> Option<Vec<u16>> {
    if section.first() != Some(&0x00) {
        return None;
    }
    let body = section_body(section)?;
    Some(
        body.chunks_exact(4)
            .filter(|e| u16::from_be_bytes([e[0], e[1]]) != 0)
            .map(|e| u16::from_be_bytes([e[2], e[3]]) & 0x1fff)
            .collect(),
    )
}

/// The elementary streams of a PMT section.
pub fn parse_pmt(section: &[u8]) -> Option<Vec<EsInfo>> {
    if section.first() != Some(&0x02) {
        return None;
    }
    let body = section_body(section)?;
    let info_len = (usize::from(*body.get(2)? & 0x0f) << 8) | usize::from(*body.get(3)?);
    let mut pos = 4 + info_len;
    let mut out = Vec::new();
    while pos + 5 <= body.len() && out.len() < MAX_STREAMS {
        let stream_type = body[pos];
        let pid = u16::from_be_bytes([body[pos + 1], body[pos + 2]]) & 0x1fff;
        let es_len = (usize::from(body[pos + 3] & 0x0f) << 8) | usize::from(body[pos + 4]);
        let descriptors = body.get(pos + 5..pos + 5 + es_len)?;
        let mut es = EsInfo {
            pid,
            stream_type,
            registration: None,
            ac3: false,
        };
        let mut d = descriptors;
        while d.len() >= 2 {
            let (tag, len) = (d[0], usize::from(d[1]));
            let Some(payload) = d.get(2..2 + len) else {
                break;
            };
            match tag {
                0x05 if len >= 4 => {
                    es.registration = Some([payload[0], payload[1], payload[2], payload[3]])
                }
                0x6a => es.ac3 = true,
                _ => {}
            }
            d = &d[2 + len..];
        }
        out.push(es);
        pos += 5 + es_len;
    }
    Some(out)
}

fn finish_section(table_id: u8, id: u16, body: &[u8]) -> Vec<u8> {
    let len = 5 + body.len() + 4;
    let mut s = vec![
        table_id,
        0xb0 | ((len >> 8) as u8 & 0x0f),
        len as u8,
        (id >> 8) as u8,
        id as u8,
        0xc1, // version 0, current
        0,
        0,
    ];
    s.extend_from_slice(body);
    let crc = crc32(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// A PAT with one program.
pub fn build_pat(program: u16, pmt_pid: u16) -> Vec<u8> {
    let body = [
        (program >> 8) as u8,
        program as u8,
        0xe0 | (pmt_pid >> 8) as u8,
        pmt_pid as u8,
    ];
    finish_section(0x00, 1, &body)
}

/// A PMT: (pid, stream type, descriptors) per stream.
pub fn build_pmt(program: u16, pcr_pid: u16, streams: &[(u16, u8, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0xe0 | (pcr_pid >> 8) as u8, pcr_pid as u8, 0xf0, 0];
    for (pid, st, desc) in streams {
        body.push(*st);
        body.push(0xe0 | (pid >> 8) as u8);
        body.push(*pid as u8);
        body.push(0xf0 | ((desc.len() >> 8) as u8 & 0x0f));
        body.push(desc.len() as u8);
        body.extend_from_slice(desc);
    }
    finish_section(0x02, program, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_a_known_pat() {
        // The PAT ffmpeg writes: program 1 on PMT PID 0x1000.
        let pat = build_pat(1, 0x1000);
        assert_eq!(&pat[pat.len() - 4..], &[0x2a, 0xb1, 0x04, 0xb2]);
        assert_eq!(parse_pat(&pat), Some(vec![0x1000]));
    }

    #[test]
    fn pmt_round_trip() {
        let pmt = build_pmt(
            1,
            0x100,
            &[
                (0x100, 0x1b, vec![]),
                (0x101, 0x06, vec![0x05, 4, b'O', b'p', b'u', b's']),
            ],
        );
        let es = parse_pmt(&pmt).unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!(es[1].registration, Some(*b"Opus"));
        let mut bad = pmt.clone();
        bad[10] ^= 1;
        assert_eq!(parse_pmt(&bad), None, "CRC checked");
        for cut in 0..pmt.len() {
            assert!(parse_pmt(&pmt[..cut]).is_none());
        }
    }
}
