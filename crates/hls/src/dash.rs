//! DASH and LL-DASH from the same CMAF chunks the HLS muxer cuts (no second muxer): each
//! segment keeps its chunks by track once a DASH client asked for the stream, and the MPD
//! lists each track as a representation of its own (dash.js does not take multiplexed
//! representations).
//!
//! - `/<path>/index.mpd`: a live (`dynamic`) MPD, one period per init version, a
//!   `SegmentTemplate` with a `SegmentTimeline` of the complete segments and `$Number$`
//!   addressing (numbers are the HLS media sequence numbers), `UTCTiming` (the server's
//!   clock, `urn:mpeg:dash:utc:direct:2014`).
//! - LL-DASH (the `lowLatency` variant): the segment being written is listed too, with the
//!   segment duration it is expected to have, and `availabilityTimeOffset` (segment duration
//!   less one part) with `availabilityTimeComplete="false"`: a player asks for it early and
//!   gets its chunks as they are cut (chunked transfer), as with LL-HLS's preload hints.
//! - files: `<prefix>_dinit<version>_<track>.mp4` and `<prefix>_dseg<number>_<track>.m4s`.

use std::fmt::Write;
use std::time::SystemTime;

use crate::segmenter::Variant;
use crate::state::{rfc3339, State};

/// XML's five escapes, for attribute values.
fn xml(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `PT1.234S`
fn duration(secs: f64) -> String {
    format!("PT{:.3}S", secs.max(0.0))
}

/// Whether the MPD can be served: a complete segment holds DASH chunks.
pub fn ready(s: &State) -> bool {
    s.segments.iter().any(|seg| seg.complete && seg.dash)
}

/// The MPD of what `s` holds now. `query` is appended to every URL (credentials).
pub fn mpd(s: &State, query: &str, now: SystemTime) -> String {
    let ll = s.variant == Variant::LowLatency;
    let seg_target = s.target_duration.max(1) as f64;
    let part = s.part_target;
    // Segments with their chunks by track, of the newest init version that has one.
    let listed: Vec<&crate::state::Segment> = s
        .segments
        .iter()
        .filter(|seg| seg.dash && (seg.complete || ll))
        .collect();
    let version = listed
        .iter()
        .rev()
        .find(|seg| seg.complete)
        .map(|seg| seg.init)
        .unwrap_or(s.init_version);
    let segs: Vec<&&crate::state::Segment> =
        listed.iter().filter(|seg| seg.init == version).collect();
    let tracks = s
        .track_inits
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, t)| t.clone())
        .unwrap_or_default();
    let window: f64 = s
        .segments
        .iter()
        .filter(|x| x.complete)
        .map(|x| x.duration)
        .sum();
    let mut o = String::new();
    o.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    let _ = writeln!(
        o,
        "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" \
         profiles=\"urn:mpeg:dash:profile:isoff-live:2011{}\" type=\"dynamic\" \
         availabilityStartTime=\"{}\" publishTime=\"{}\" minimumUpdatePeriod=\"{}\" \
         minBufferTime=\"{}\" timeShiftBufferDepth=\"{}\" suggestedPresentationDelay=\"{}\" \
         maxSegmentDuration=\"{}\">",
        if ll {
            ",http://www.dashif.org/guidelines/low-latency-live-v5"
        } else {
            ""
        },
        rfc3339(s.wall0),
        rfc3339(now),
        duration(if ll { part.max(0.2) } else { seg_target }),
        duration(if ll { part * 2.0 } else { seg_target }),
        duration(window.max(seg_target)),
        duration(if ll { seg_target } else { seg_target * 2.0 }),
        duration(seg_target),
    );
    let _ = writeln!(o, "  <Period id=\"{version}\" start=\"{}\">", duration(0.0));
    if ll {
        // Where a player should sit: a part and a half behind the live edge, and how fast
        // it may catch up.
        let _ = writeln!(
            o,
            "    <ServiceDescription id=\"0\"><Latency target=\"{}\" min=\"{}\" max=\"{}\"/>\
             <PlaybackRate min=\"0.96\" max=\"1.04\"/></ServiceDescription>",
            ((seg_target * 1000.0) as u64).max(800),
            ((part * 2000.0) as u64).max(300),
            ((seg_target * 3000.0) as u64).max(3000),
        );
    }
    let bitrate = s.average_bitrate().max(s.max_bitrate).max(100_000.0);
    for (i, t) in tracks.iter().enumerate() {
        let timescale: u64 = if t.video {
            u64::from(tidegate_fmp4::VIDEO_TIMESCALE)
        } else {
            u64::from(t.sample_rate.max(1))
        };
        let kind = if t.video { "video" } else { "audio" };
        let _ = write!(
            o,
            "    <AdaptationSet id=\"{i}\" contentType=\"{kind}\" mimeType=\"{kind}/mp4\" \
             segmentAlignment=\"true\" startWithSAP=\"1\">\n      <Representation id=\"{}\" \
             codecs=\"{}\" bandwidth=\"{}\"",
            t.id,
            xml(&t.codec),
            // The whole stream's rate split roughly: most of it is video.
            if t.video {
                (bitrate * 0.9) as u64
            } else {
                (bitrate * 0.1).max(32_000.0) as u64
            }
        );
        if t.video {
            let _ = write!(o, " width=\"{}\" height=\"{}\"", t.width, t.height);
            if let Some(f) = s.frame_rate {
                let _ = write!(o, " frameRate=\"{}\"", f.round() as u64);
            }
        } else {
            let _ = write!(o, " audioSamplingRate=\"{}\"", t.sample_rate);
        }
        o.push_str(">\n");
        let _ = write!(
            o,
            "        <SegmentTemplate timescale=\"{timescale}\" \
             initialization=\"{p}_dinit{version}_$RepresentationID$.mp4{q}\" \
             media=\"{p}_dseg$Number$_$RepresentationID$.m4s{q}\" startNumber=\"{}\"",
            segs.first().map_or(0, |x| x.msn),
            p = xml(&s.prefix),
            q = xml(query),
        );
        if ll {
            let _ = write!(
                o,
                " availabilityTimeOffset=\"{:.3}\" availabilityTimeComplete=\"false\"",
                (seg_target - part).max(0.0)
            );
        }
        o.push_str(">\n          <SegmentTimeline>\n");
        let mut at: Option<u64> = None;
        for seg in &segs {
            let t0 = (seg.start * timescale as f64).round() as u64;
            let d = if seg.complete {
                seg.duration
            } else {
                seg_target
            };
            let d = (d * timescale as f64).round() as u64;
            // Written with `t` where the timeline does not follow on.
            if at == Some(t0) {
                let _ = writeln!(o, "            <S d=\"{d}\"/>");
            } else {
                let _ = writeln!(o, "            <S t=\"{t0}\" d=\"{d}\"/>");
            }
            at = Some(t0 + d);
        }
        o.push_str("          </SegmentTimeline>\n        </SegmentTemplate>\n");
        o.push_str("      </Representation>\n    </AdaptationSet>\n");
    }
    o.push_str("  </Period>\n");
    let _ = writeln!(
        o,
        "  <UTCTiming schemeIdUri=\"urn:mpeg:dash:utc:direct:2014\" value=\"{}\"/>",
        rfc3339(now)
    );
    o.push_str("</MPD>\n");
    o
}
