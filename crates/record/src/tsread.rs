//! Reading an MPEG-TS segment back for the index: its duration (first to last timestamp of
//! its streams, plus one frame) and its codecs. A cut trailing packet is ignored.

use std::io::Read;
use std::path::Path;

use tidegate_mpegts::demux::{DemuxEvent, Demuxer};
use tidegate_mpegts::stream_type;

/// Duration (seconds), size and codec names of the MPEG-TS file at `path`.
pub fn scan(path: &Path) -> std::io::Result<(f64, u64, Vec<String>)> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut demux = Demuxer::default();
    let mut buf = vec![0u8; 188 * 1024];
    let mut first: Option<i64> = None;
    let mut last: Option<i64> = None;
    let mut gap = 0i64;
    let mut codecs = Vec::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        demux.feed(&buf[..n]);
        while let Some(ev) = demux.poll_event() {
            match ev {
                DemuxEvent::Program(streams) => {
                    codecs = streams
                        .iter()
                        .map(|s| {
                            match s.stream_type {
                                stream_type::H264 => "H264",
                                stream_type::H265 => "H265",
                                stream_type::AAC_ADTS => "MPEG-4 Audio",
                                stream_type::MPEG1_AUDIO | stream_type::MPEG2_AUDIO => {
                                    "MPEG-1/2 Audio"
                                }
                                stream_type::AC3 => "AC3",
                                stream_type::PRIVATE_DATA => "Opus",
                                _ => "unknown",
                            }
                            .to_string()
                        })
                        .collect();
                }
                DemuxEvent::Pes(p) => {
                    if let Some(t) = p.dts.or(p.pts) {
                        first = Some(first.map_or(t, |f| f.min(t)));
                        if let Some(l) = last {
                            if t > l {
                                gap = t - l;
                            }
                        }
                        last = Some(last.map_or(t, |l| l.max(t)));
                    }
                }
            }
        }
    }
    let duration = match (first, last) {
        (Some(a), Some(b)) => (b - a + gap.min(90_000)) as f64 / 90_000.0,
        _ => 0.0,
    };
    Ok((duration, size, codecs))
}
