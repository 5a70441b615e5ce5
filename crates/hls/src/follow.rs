//! Following another server's HLS playlists (the HLS source's client side, without I/O):
//! parsing multivariant and media playlists (LL-HLS parts, preload hints ignored, delta
//! updates numbered right) and deciding what to fetch next from where the client is.
//! Everything is bounded by the text it is given (the caller limits that).

use crate::HlsError;

/// One part of an LL-HLS playlist.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub uri: String,
    pub independent: bool,
}

/// One complete segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub msn: u64,
    pub uri: String,
    pub duration: f64,
    /// Its parts, while the playlist still lists them.
    pub parts: Vec<Part>,
    /// The `EXT-X-MAP` in force (fMP4).
    pub map: Option<String>,
    /// Its `EXT-X-PROGRAM-DATE-TIME`: the absolute time of its first sample.
    pub pdt: Option<std::time::SystemTime>,
}

/// A media playlist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaPlaylist {
    pub target_duration: f64,
    pub part_target: Option<f64>,
    pub media_sequence: u64,
    pub segments: Vec<Segment>,
    /// Parts of the segment being written (its number is `next_msn()`).
    pub trailing_parts: Vec<Part>,
    /// The `EXT-X-MAP` in force at the end (for the trailing parts).
    pub map: Option<String>,
    /// The `EXT-X-PROGRAM-DATE-TIME` of the segment being written (before its parts).
    pub trailing_pdt: Option<std::time::SystemTime>,
    pub can_block_reload: bool,
    pub endlist: bool,
}

impl MediaPlaylist {
    /// The number of the segment after the last complete one.
    pub fn next_msn(&self) -> u64 {
        self.media_sequence + self.segments.len() as u64
    }

    /// Whether it is followed part by part.
    pub fn low_latency(&self) -> bool {
        self.can_block_reload
            && self.part_target.is_some()
            && (!self.trailing_parts.is_empty()
                || self.segments.iter().any(|s| !s.parts.is_empty()))
    }

    /// The `EXT-X-PROGRAM-DATE-TIME` of segment `msn`, when the playlist gives one.
    pub fn pdt(&self, msn: u64) -> Option<std::time::SystemTime> {
        if msn == self.next_msn() {
            return self.trailing_pdt;
        }
        let i = usize::try_from(msn.checked_sub(self.media_sequence)?).ok()?;
        self.segments.get(i)?.pdt
    }

    /// Where a new client starts: the last independent part (LL-HLS), else the last segment.
    pub fn start(&self) -> Option<Cursor> {
        if self.low_latency() {
            if let Some(i) = self.trailing_parts.iter().rposition(|p| p.independent) {
                return Some(Cursor {
                    msn: self.next_msn(),
                    part: Some(i),
                });
            }
            for s in self.segments.iter().rev() {
                if let Some(i) = s.parts.iter().rposition(|p| p.independent) {
                    return Some(Cursor {
                        msn: s.msn,
                        part: Some(i),
                    });
                }
            }
        }
        self.segments.last().map(|s| Cursor {
            msn: s.msn,
            part: None,
        })
    }
}

/// The next thing to fetch: a whole segment (`part: None`) or one of its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub msn: u64,
    pub part: Option<usize>,
}

/// What to do for `at` with playlist `p`.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Fetch this URI (with this init section) and move to `next`.
    Fetch {
        uri: String,
        map: Option<String>,
        next: Cursor,
    },
    /// Not in the playlist yet: reload it (blocking for this segment and part when the server
    /// can).
    Wait,
    /// The cursor fell out of the playlist (the client was too slow): start again at the edge.
    Behind,
}

pub fn step(p: &MediaPlaylist, at: Cursor) -> Step {
    if at.msn < p.media_sequence {
        return Step::Behind;
    }
    let next_msn = p.next_msn();
    match at.part {
        None => match p.segments.get((at.msn - p.media_sequence) as usize) {
            Some(s) => Step::Fetch {
                uri: s.uri.clone(),
                map: s.map.clone(),
                next: Cursor {
                    msn: at.msn + 1,
                    part: None,
                },
            },
            None if at.msn > next_msn => Step::Behind,
            None => Step::Wait,
        },
        Some(i) => {
            let (parts, map) = if at.msn == next_msn {
                (&p.trailing_parts, &p.map)
            } else if at.msn > next_msn {
                return if at.msn == next_msn + 1 && i == 0 {
                    Step::Wait
                } else {
                    Step::Behind
                };
            } else {
                let s = &p.segments[(at.msn - p.media_sequence) as usize];
                if s.parts.is_empty() {
                    // Its parts are no longer listed: the rest of it is lost.
                    return Step::Behind;
                }
                (&s.parts, &s.map)
            };
            match parts.get(i) {
                Some(part) => Step::Fetch {
                    uri: part.uri.clone(),
                    map: map.clone(),
                    next: Cursor {
                        msn: at.msn,
                        part: Some(i + 1),
                    },
                },
                None if at.msn < next_msn => Step::Fetch {
                    // The segment is complete and this was its last part: on to the next.
                    uri: String::new(),
                    map: None,
                    next: Cursor {
                        msn: at.msn + 1,
                        part: Some(0),
                    },
                },
                None => Step::Wait,
            }
        }
    }
}

/// The attributes of a tag (`KEY=value,KEY="quoted, value"`).
fn attributes(list: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = list;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim();
        rest = &rest[eq + 1..];
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            value = &q[..end];
            rest = q.get(end + 1..).unwrap_or("");
            rest = rest.trim_start_matches(',');
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
        }
        out.push((key, value));
    }
    out
}

fn attr<'a>(list: &'a [(&str, &'a str)], key: &str) -> Option<&'a str> {
    list.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The variant to follow in a multivariant playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// The variant's media playlist.
    pub uri: String,
    /// The media playlist of its audio rendition when the audio is not muxed into the
    /// variant (`AUDIO="group"` naming an `EXT-X-MEDIA:TYPE=AUDIO` with a `URI`).
    pub audio: Option<String>,
}

/// A multivariant playlist's variant of highest bandwidth, with its audio rendition (the
/// group's `DEFAULT=YES` one, else its `AUTOSELECT=YES` one, else its first), or None for a
/// media playlist.
pub fn best_variant(text: &str) -> Option<Variant> {
    let mut best: Option<(u64, String, Option<String>)> = None;
    let mut pending: Option<(u64, Option<String>)> = None;
    // (group, uri, rank: 0 default, 1 autoselect, 2 other)
    let mut renditions: Vec<(String, String, u8)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            let a = attributes(a);
            pending = Some((
                attr(&a, "BANDWIDTH")
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(0),
                attr(&a, "AUDIO").map(str::to_string),
            ));
        } else if let Some(a) = line.strip_prefix("#EXT-X-MEDIA:") {
            let a = attributes(a);
            if let (Some("AUDIO"), Some(group), Some(uri)) =
                (attr(&a, "TYPE"), attr(&a, "GROUP-ID"), attr(&a, "URI"))
            {
                let rank = if attr(&a, "DEFAULT") == Some("YES") {
                    0
                } else if attr(&a, "AUTOSELECT") == Some("YES") {
                    1
                } else {
                    2
                };
                renditions.push((group.to_string(), uri.to_string(), rank));
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            if let Some((bw, group)) = pending.take() {
                if best.as_ref().is_none_or(|(b, _, _)| bw > *b) {
                    best = Some((bw, line.to_string(), group));
                }
            }
        }
    }
    let (_, uri, group) = best?;
    let audio = group.and_then(|g| {
        renditions
            .iter()
            .filter(|(group, _, _)| *group == g)
            .min_by_key(|(_, _, rank)| *rank)
            .map(|(_, uri, _)| uri.clone())
    });
    Some(Variant { uri, audio })
}

/// Parses a media playlist.
pub fn parse_media(text: &str) -> Result<MediaPlaylist, HlsError> {
    media(text).map_err(HlsError::Playlist)
}

fn media(text: &str) -> Result<MediaPlaylist, String> {
    if !text.trim_start().starts_with("#EXTM3U") {
        return Err("not a playlist (no #EXTM3U)".into());
    }
    let mut p = MediaPlaylist::default();
    let mut parts = Vec::new();
    let mut duration = None;
    let mut skipped = 0u64;
    let mut pdt = None;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            p.target_duration = v.parse().map_err(|_| "bad EXT-X-TARGETDURATION")?;
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            p.media_sequence = v.parse().map_err(|_| "bad EXT-X-MEDIA-SEQUENCE")?;
        } else if let Some(v) = line.strip_prefix("#EXT-X-MAP:") {
            p.map = attr(&attributes(v), "URI").map(str::to_string);
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART-INF:") {
            p.part_target = attr(&attributes(v), "PART-TARGET").and_then(|v| v.parse().ok());
        } else if let Some(v) = line.strip_prefix("#EXT-X-SERVER-CONTROL:") {
            p.can_block_reload = attr(&attributes(v), "CAN-BLOCK-RELOAD") == Some("YES");
        } else if let Some(v) = line.strip_prefix("#EXT-X-SKIP:") {
            skipped = attr(&attributes(v), "SKIPPED-SEGMENTS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            let a = attributes(v);
            if let Some(uri) = attr(&a, "URI") {
                parts.push(Part {
                    uri: uri.to_string(),
                    independent: attr(&a, "INDEPENDENT") == Some("YES"),
                });
            }
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            let d = v.split(',').next().unwrap_or("");
            duration = Some(d.trim().parse::<f64>().map_err(|_| "bad EXTINF")?);
        } else if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            pdt = parse_date_time(v.trim());
        } else if line == "#EXT-X-ENDLIST" {
            p.endlist = true;
        } else if line.starts_with("#EXT-X-STREAM-INF") {
            return Err("a multivariant playlist where a media playlist was expected".into());
        } else if !line.is_empty() && !line.starts_with('#') {
            let msn = p
                .media_sequence
                .saturating_add(skipped)
                .saturating_add(p.segments.len() as u64);
            p.segments.push(Segment {
                msn,
                uri: line.to_string(),
                duration: duration.take().unwrap_or(p.target_duration),
                parts: std::mem::take(&mut parts),
                map: p.map.clone(),
                pdt: pdt.take(),
            });
        }
    }
    // Skipped segments (a delta update) count as listed without their URIs: drop them from
    // the numbering the way they were dropped from the text.
    // Numbers past 2^53 are refused (no live stream gets near; sums below cannot overflow).
    const MAX_SEQUENCE: u64 = 1 << 53;
    if p.media_sequence > MAX_SEQUENCE || skipped > MAX_SEQUENCE {
        return Err("EXT-X-MEDIA-SEQUENCE or SKIPPED-SEGMENTS out of range".into());
    }
    p.media_sequence += skipped;
    p.trailing_parts = parts;
    p.trailing_pdt = pdt;
    if p.target_duration <= 0.0 {
        return Err("no EXT-X-TARGETDURATION".into());
    }
    Ok(p)
}

/// An RFC 3339 / ISO 8601 date and time as HLS writes it (`2026-12-04T16:40:00.123Z`,
/// `…+01:00`, `…+0100`); None when it is not one.
pub fn parse_date_time(v: &str) -> Option<std::time::SystemTime> {
    let b = v.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = v.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, m, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let mut rest = &v[19..];
    let mut nanos = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in f[..digits].bytes().take(9).enumerate() {
            nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
        }
        rest = &f[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let t = rest[1..].replace(':', "");
            if t.len() != 4 || !t.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let hh: i64 = t[..2].parse().ok()?;
            let mm: i64 = t[2..].parse().ok()?;
            sign * (hh * 3600 + mm * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec - offset;
    let d = std::time::Duration::new(secs.unsigned_abs(), nanos as u32);
    if secs >= 0 {
        std::time::UNIX_EPOCH.checked_add(d)
    } else {
        std::time::UNIX_EPOCH
            .checked_sub(std::time::Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(std::time::Duration::from_nanos(nanos as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LL: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
        #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.6\n\
        #EXT-X-PART-INF:PART-TARGET=0.2\n#EXT-X-MEDIA-SEQUENCE:5\n\
        #EXT-X-MAP:URI=\"init.mp4\"\n\
        #EXTINF:1.0,\nseg5.mp4\n\
        #EXT-X-PART:DURATION=0.2,URI=\"p6_0.mp4\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.2,URI=\"p6_1.mp4\"\n\
        #EXTINF:1.0,\nseg6.mp4\n\
        #EXT-X-PART:DURATION=0.2,URI=\"p7_0.mp4\"\n\
        #EXT-X-PART:DURATION=0.2,URI=\"p7_1.mp4\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.2,URI=\"p7_2.mp4\"\n\
        #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p7_3.mp4\"\n";

    #[test]
    fn an_ll_playlist_is_followed_part_by_part_from_its_last_independent_part() {
        let p = parse_media(LL).unwrap();
        assert_eq!(p.media_sequence, 5);
        assert_eq!(p.next_msn(), 7);
        assert!(p.low_latency());
        assert_eq!(p.segments[1].parts.len(), 2);
        assert_eq!(p.map.as_deref(), Some("init.mp4"));
        let at = p.start().unwrap();
        assert_eq!(
            at,
            Cursor {
                msn: 7,
                part: Some(1)
            }
        );
        let Step::Fetch { uri, next, map } = step(&p, at) else {
            panic!()
        };
        assert_eq!(
            (uri.as_str(), map.as_deref()),
            ("p7_1.mp4", Some("init.mp4"))
        );
        let Step::Fetch { uri, next, .. } = step(&p, next) else {
            panic!()
        };
        assert_eq!(uri, "p7_2.mp4");
        assert_eq!(step(&p, next), Step::Wait);
        // A part of a complete segment, then on to the next segment's first part.
        let Step::Fetch { uri, next, .. } = step(
            &p,
            Cursor {
                msn: 6,
                part: Some(1),
            },
        ) else {
            panic!()
        };
        assert_eq!(uri, "p6_1.mp4");
        let Step::Fetch { uri, next, .. } = step(&p, next) else {
            panic!()
        };
        assert_eq!(
            (uri.as_str(), next),
            (
                "",
                Cursor {
                    msn: 7,
                    part: Some(0)
                }
            )
        );
        assert_eq!(step(&p, Cursor { msn: 4, part: None }), Step::Behind);
        assert_eq!(
            step(
                &p,
                Cursor {
                    msn: 5,
                    part: Some(0)
                }
            ),
            Step::Behind
        );
        assert_eq!(
            step(
                &p,
                Cursor {
                    msn: 8,
                    part: Some(0)
                }
            ),
            Step::Wait
        );
    }

    #[test]
    fn a_plain_playlist_is_followed_segment_by_segment() {
        let p = parse_media(
            "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:10\n\
             #EXTINF:4.0,\na.ts\n#EXTINF:4.0,\nb.ts\n",
        )
        .unwrap();
        assert!(!p.low_latency());
        let at = p.start().unwrap();
        assert_eq!(
            at,
            Cursor {
                msn: 11,
                part: None
            }
        );
        let Step::Fetch { uri, next, map } = step(&p, at) else {
            panic!()
        };
        assert_eq!((uri.as_str(), map), ("b.ts", None));
        assert_eq!(step(&p, next), Step::Wait);
        assert!(parse_media("#EXTM3U\n#EXTINF:x,\na.ts\n").is_err());
        assert!(parse_media("garbage").is_err());
    }

    #[test]
    fn program_date_times_are_read() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(
            parse_date_time("2026-12-04T16:40:00.123Z"),
            Some(UNIX_EPOCH + Duration::from_millis(1_796_402_400_123))
        );
        assert_eq!(
            parse_date_time("2026-12-04T17:40:00.123+01:00"),
            parse_date_time("2026-12-04T16:40:00.123Z")
        );
        assert_eq!(
            parse_date_time("1900-01-01T00:00:05.5Z"),
            Some(UNIX_EPOCH - Duration::from_secs(2_208_988_800) + Duration::from_millis(5500))
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-12-04 garbage",
            "2026-12-04T16:40:00.Z",
        ] {
            assert_eq!(parse_date_time(bad), None, "{bad}");
        }
        let p = parse_media(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:3\n\
             #EXT-X-PROGRAM-DATE-TIME:2001-01-01T00:00:00Z\n#EXTINF:2,\ns3.ts\n\
             #EXTINF:2,\ns4.ts\n#EXT-X-PROGRAM-DATE-TIME:2001-01-01T00:00:04Z\n",
        )
        .unwrap();
        assert_eq!(p.pdt(3), parse_date_time("2001-01-01T00:00:00Z"));
        assert_eq!(p.pdt(4), None);
        assert_eq!(p.pdt(5), parse_date_time("2001-01-01T00:00:04Z"));
    }

    #[test]
    fn the_highest_variant_is_taken() {
        let m = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.64001f,mp4a.40.2\"\nlow.m3u8\n\
                 #EXT-X-STREAM-INF:BANDWIDTH=3000000,RESOLUTION=1280x720\nhigh/index.m3u8\n\
                 #EXT-X-STREAM-INF:BANDWIDTH=1500000\nmid.m3u8\n";
        assert_eq!(
            best_variant(m),
            Some(Variant {
                uri: "high/index.m3u8".into(),
                audio: None
            })
        );
        // ffmpeg's `-var_stream_map "v:0,agroup:aud a:0,agroup:aud"`: the audio apart.
        let m = "#EXTM3U\n#EXT-X-VERSION:3\n\
                 #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"group_aud\",NAME=\"audio_0\",AUTOSELECT=YES,URI=\"a_1.m3u8\"\n\
                 #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"group_aud\",NAME=\"en\",DEFAULT=YES,URI=\"en.m3u8\"\n\
                 #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"other\",NAME=\"x\",DEFAULT=YES,URI=\"x.m3u8\"\n\
                 #EXT-X-STREAM-INF:BANDWIDTH=1140800,CODECS=\"avc1.42c01e,mp4a.40.2\",AUDIO=\"group_aud\"\n\
                 v_0.m3u8\n";
        assert_eq!(
            best_variant(m),
            Some(Variant {
                uri: "v_0.m3u8".into(),
                audio: Some("en.m3u8".into())
            })
        );
        assert_eq!(best_variant(LL), None);
        assert_eq!(
            attributes("A=1,B=\"x, y\",C=YES"),
            vec![("A", "1"), ("B", "x, y"), ("C", "YES")]
        );
    }
}
