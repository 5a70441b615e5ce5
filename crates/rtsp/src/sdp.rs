//! The SDP RTSP needs (RFC 4566): media lines with rtpmap, fmtp and control, parsed from
//! ANNOUNCE and built for DESCRIBE.

use crate::RtspError;
use base64::Engine;
use bytes::Bytes;
use std::fmt::Write;
use tidegate_core::{CodecParams, G711Law, StreamDesc, TrackId};
use tidegate_rtp::depack::Depacketizer;
use tidegate_rtp::pack::PackKind;

/// At most this many media in one SDP.
pub const MAX_MEDIA: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Media {
    pub kind: String,
    pub pt: u8,
    pub encoding: String,
    pub clock: u32,
    pub channels: Option<u8>,
    pub fmtp: Vec<(String, String)>,
    pub control: Option<String>,
    /// The transport profile of the m= line (`RTP/AVP`, `RTP/SAVP`, …).
    pub profile: String,
    /// `a=key-mgmt:mikey <base64>` of the media, or of the session when the media has none.
    pub key_mgmt: Option<String>,
}

impl Media {
    fn fmtp(&self, key: &str) -> Option<&str> {
        self.fmtp
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse(sdp: &str) -> Result<Vec<Media>, RtspError> {
    parse_text(sdp).map_err(RtspError::Sdp)
}

fn parse_text(sdp: &str) -> Result<Vec<Media>, String> {
    let mut out: Vec<Media> = Vec::new();
    let mut session_key = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(k) = line.strip_prefix("a=key-mgmt:mikey ") {
            match out.last_mut() {
                Some(m) => m.key_mgmt = Some(k.trim().to_string()),
                None => session_key = Some(k.trim().to_string()),
            }
            continue;
        }
        if let Some(m) = line.strip_prefix("m=") {
            if out.len() >= MAX_MEDIA {
                return Err(format!("more than {MAX_MEDIA} media"));
            }
            let f: Vec<&str> = m.split_whitespace().collect();
            let pt = f.get(3).and_then(|p| p.parse().ok()).ok_or("bad m= line")?;
            let mut media = Media {
                kind: f[0].to_string(),
                profile: f.get(2).unwrap_or(&"").to_string(),
                pt,
                ..Media::default()
            };
            // Static payload types.
            match pt {
                0 => (media.encoding, media.clock, media.channels) = ("PCMU".into(), 8000, Some(1)),
                8 => (media.encoding, media.clock, media.channels) = ("PCMA".into(), 8000, Some(1)),
                9 => (media.encoding, media.clock, media.channels) = ("G722".into(), 8000, Some(1)),
                10 => {
                    (media.encoding, media.clock, media.channels) = ("L16".into(), 44_100, Some(2))
                }
                11 => {
                    (media.encoding, media.clock, media.channels) = ("L16".into(), 44_100, Some(1))
                }
                14 => (media.encoding, media.clock) = ("MPA".into(), 90_000),
                26 => (media.encoding, media.clock) = ("JPEG".into(), 90_000),
                32 => (media.encoding, media.clock) = ("MPV".into(), 90_000),
                33 => (media.encoding, media.clock) = ("MP2T".into(), 90_000),
                _ => {}
            }
            out.push(media);
            continue;
        }
        let Some(media) = out.last_mut() else {
            continue;
        };
        if let Some(a) = line.strip_prefix("a=rtpmap:") {
            let (pt, rest) = a.split_once(' ').ok_or("bad rtpmap")?;
            if pt.parse() != Ok(media.pt) {
                continue;
            }
            let mut it = rest.split('/');
            media.encoding = it.next().unwrap_or("").to_ascii_uppercase();
            media.clock = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            media.channels = it.next().and_then(|c| c.parse().ok());
        } else if let Some(a) = line.strip_prefix("a=fmtp:") {
            let (pt, rest) = a.split_once(' ').unwrap_or((a, ""));
            if pt.parse() != Ok(media.pt) {
                continue;
            }
            media.fmtp = rest
                .split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .take(32)
                .collect();
        } else if let Some(c) = line.strip_prefix("a=control:") {
            media.control = Some(c.to_string());
        }
    }
    for m in &mut out {
        if m.key_mgmt.is_none() {
            m.key_mgmt.clone_from(&session_key);
        }
    }
    Ok(out)
}

/// The DESCRIBE SDP for an RTSPS reader: every media `RTP/SAVP`, with `key_mgmt` (a base64
/// MIKEY message) as its `a=key-mgmt:mikey` at the end of its section (RFC 4567).
pub fn secure(sdp: &str, key_mgmt: impl Fn(usize) -> String) -> String {
    let mut out = String::with_capacity(sdp.len() + 256);
    let mut media = 0;
    let key_line = |i: usize| format!("a=key-mgmt:mikey {}\r\n", key_mgmt(i));
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            if media > 0 {
                out.push_str(&key_line(media - 1));
            }
            media += 1;
            out.push_str("m=");
            out.push_str(&m.replacen(" RTP/AVP ", " RTP/SAVP ", 1));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    if media > 0 {
        out.push_str(&key_line(media - 1));
    }
    out
}

fn b64(s: &str) -> Option<Bytes> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
        .filter(|v| !v.is_empty())
        .map(Bytes::from)
}

/// Hex bytes of an fmtp value (an AAC AudioSpecificConfig, an MPEG-4 Visual header), at most
/// 512 bytes.
fn hex(s: &str) -> Option<Bytes> {
    if !s.len().is_multiple_of(2) || s.len() > 1024 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

/// What a published media becomes: its parameters (None when they only come in band), its
/// clock and its depacketizer.
pub struct Incoming {
    pub params: Option<CodecParams>,
    pub clock: u32,
    pub depack: Depacketizer,
    pub video: bool,
    /// H.265 (parameter sets in band are VPS/SPS/PPS).
    pub h265: bool,
}

/// The track a published media becomes, or why it cannot be carried.
pub fn incoming(m: &Media) -> Result<Incoming, RtspError> {
    incoming_track(m).map_err(RtspError::Sdp)
}

fn incoming_track(m: &Media) -> Result<Incoming, String> {
    let enc = m.encoding.as_str();
    Ok(match enc {
        "H264" => {
            let params = m.fmtp("sprop-parameter-sets").and_then(|s| {
                let mut it = s.split(',');
                Some(CodecParams::H264 {
                    sps: b64(it.next()?)?,
                    pps: b64(it.next()?)?,
                })
            });
            Incoming {
                params,
                clock: 90_000,
                depack: Depacketizer::h264(),
                video: true,
                h265: false,
            }
        }
        "H265" => {
            let params = (|| {
                Some(CodecParams::H265 {
                    vps: b64(m.fmtp("sprop-vps")?)?,
                    sps: b64(m.fmtp("sprop-sps")?)?,
                    pps: b64(m.fmtp("sprop-pps")?)?,
                })
            })();
            Incoming {
                params,
                clock: 90_000,
                depack: Depacketizer::h265(),
                video: true,
                h265: true,
            }
        }
        "MPEG4-GENERIC" => {
            let config = m.fmtp("config").and_then(hex).ok_or("AAC without config")?;
            let size = m
                .fmtp("sizelength")
                .and_then(|v| v.parse().ok())
                .unwrap_or(13);
            let index = m
                .fmtp("indexlength")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3);
            Incoming {
                params: Some(CodecParams::Aac { config }),
                clock: m.clock.max(1),
                depack: Depacketizer::aac(size, index),
                video: false,
                h265: false,
            }
        }
        "OPUS" => Incoming {
            params: Some(CodecParams::Opus {
                channels: m.channels.unwrap_or(2),
            }),
            clock: 48_000,
            depack: Depacketizer::frame(),
            video: false,
            h265: false,
        },
        "PCMU" | "PCMA" => Incoming {
            params: Some(CodecParams::G711 {
                law: if enc == "PCMU" {
                    G711Law::MuLaw
                } else {
                    G711Law::ALaw
                },
                sample_rate: m.clock.max(1),
                channels: m.channels.unwrap_or(1),
            }),
            clock: m.clock.max(1),
            depack: Depacketizer::frame(),
            video: false,
            h265: false,
        },
        "MPA" => Incoming {
            params: Some(CodecParams::Mp3),
            clock: 90_000,
            depack: Depacketizer::mpa(),
            video: false,
            h265: false,
        },
        "MP2T" => Incoming {
            // The tracks are in the TS: demuxed by the ingest (see `InTrack`).
            params: None,
            clock: 90_000,
            depack: Depacketizer::mp2t(),
            video: false,
            h265: false,
        },
        "AV1" => Incoming {
            // The sequence header comes in band, with the first keyframe.
            params: None,
            clock: 90_000,
            depack: Depacketizer::av1(),
            video: true,
            h265: false,
        },
        "VP8" | "VP9" => Incoming {
            params: Some(if enc == "VP8" {
                CodecParams::Vp8
            } else {
                CodecParams::Vp9
            }),
            clock: 90_000,
            depack: if enc == "VP8" {
                Depacketizer::vp8()
            } else {
                Depacketizer::vp9()
            },
            video: true,
            h265: false,
        },
        "AC3" => Incoming {
            params: Some(CodecParams::Ac3 {
                sample_rate: m.clock.max(1),
                channels: m.channels.unwrap_or(2),
            }),
            clock: m.clock.max(1),
            depack: Depacketizer::ac3(),
            video: false,
            h265: false,
        },
        "JPEG" => Incoming {
            params: Some(CodecParams::Mjpeg),
            clock: 90_000,
            depack: Depacketizer::jpeg(),
            video: true,
            h265: false,
        },
        "MP4V-ES" => Incoming {
            params: Some(CodecParams::Mpeg4Video {
                config: m.fmtp("config").and_then(hex).unwrap_or_default(),
            }),
            clock: 90_000,
            depack: Depacketizer::mpeg4_video(),
            video: true,
            h265: false,
        },
        "MPV" => Incoming {
            params: Some(CodecParams::Mpeg12Video),
            clock: 90_000,
            depack: Depacketizer::mpeg12_video(),
            video: true,
            h265: false,
        },
        "G722" => Incoming {
            params: Some(CodecParams::G722),
            clock: 8000,
            depack: Depacketizer::frame(),
            video: false,
            h265: false,
        },
        "L16" | "L24" => {
            let channels = m.channels.unwrap_or(1);
            if channels == 0 || channels > 8 {
                return Err(format!("{enc} with {channels} channels"));
            }
            Incoming {
                params: Some(CodecParams::Lpcm {
                    bits: if enc == "L16" { 16 } else { 24 },
                    sample_rate: m.clock.max(1),
                    channels,
                }),
                clock: m.clock.max(1),
                depack: Depacketizer::frame(),
                video: false,
                h265: false,
            }
        }
        g if g.starts_with("G726-") || g.starts_with("AAL2-G726-") => {
            let big_endian = g.starts_with("AAL2-");
            let rate: u32 = g
                .rsplit('-')
                .next()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            if !matches!(rate, 16 | 24 | 32 | 40) {
                return Err(format!("{g}: G.726 runs at 16, 24, 32 or 40 kbit/s"));
            }
            Incoming {
                params: Some(CodecParams::G726 {
                    bits: (rate / 8) as u8,
                    big_endian,
                }),
                clock: 8000,
                depack: Depacketizer::frame(),
                video: false,
                h265: false,
            }
        }
        other => return Err(format!("codec {other} is not supported over RTSP yet")),
    })
}

/// One track as DESCRIBE offers it.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub track: TrackId,
    pub pt: u8,
    pub clock: u32,
    pub kind: PackKind,
}

/// The SDP of a stream offered as one MPEG-TS track (MP2T, static payload type 33).
pub fn build_mpegts() -> (String, Vec<Outgoing>) {
    let s = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Tidegate\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
             a=control:*\r\nm=video 0 RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\n\
             a=control:trackID=0\r\n"
        .to_string();
    let out = vec![Outgoing {
        track: 0,
        pt: 33,
        clock: 90_000,
        kind: PackKind::Mp2t,
    }];
    (s, out)
}

/// The SDP of `desc` for DESCRIBE, and how each offered track is packetized.
pub fn build(desc: &StreamDesc) -> (String, Vec<Outgoing>) {
    let mut s = String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Tidegate\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=control:*\r\n");
    let mut out = Vec::new();
    let b64e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for t in &desc.tracks {
        let i = out.len();
        // MPEG-1/2 video keeps its static payload type: ffmpeg finds the RFC 2250 depacketizer
        // by it, not by the name (with a dynamic one it would leave the video headers in).
        let pt = if matches!(t.params, CodecParams::Mpeg12Video) {
            32
        } else {
            96 + i as u8
        };
        let (media, rtpmap, fmtp, clock, kind) = match &t.params {
            CodecParams::H264 { sps, pps } => {
                let pli = sps
                    .get(1..4)
                    .map(|b| format!("{:02X}{:02X}{:02X}", b[0], b[1], b[2]))
                    .unwrap_or_default();
                (
                    "video",
                    "H264/90000".to_string(),
                    format!(
                        "packetization-mode=1;profile-level-id={pli};sprop-parameter-sets={},{}",
                        b64e(sps),
                        b64e(pps)
                    ),
                    90_000,
                    PackKind::H264,
                )
            }
            CodecParams::H265 { vps, sps, pps } => (
                "video",
                "H265/90000".to_string(),
                format!(
                    "sprop-vps={};sprop-sps={};sprop-pps={}",
                    b64e(vps),
                    b64e(sps),
                    b64e(pps)
                ),
                90_000,
                PackKind::H265,
            ),
            CodecParams::Aac { config } => {
                let asc = tidegate_codec::aac::AudioSpecificConfig::parse(config);
                let (rate, ch) = asc
                    .map(|a| (a.sample_rate, a.channels))
                    .unwrap_or((t.clock_rate, 2));
                let cfg: String = config.iter().map(|b| format!("{b:02X}")).collect();
                (
                    "audio",
                    format!("MPEG4-GENERIC/{rate}/{ch}"),
                    format!("profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config={cfg}"),
                    rate,
                    PackKind::Aac,
                )
            }
            CodecParams::Opus { channels } => (
                "audio",
                "opus/48000/2".to_string(),
                format!("sprop-stereo={}", u8::from(*channels >= 2)),
                48_000,
                PackKind::Frame,
            ),
            CodecParams::G711 {
                law,
                sample_rate,
                channels,
            } => (
                "audio",
                format!(
                    "{}/{sample_rate}/{channels}",
                    if *law == G711Law::MuLaw {
                        "PCMU"
                    } else {
                        "PCMA"
                    }
                ),
                String::new(),
                *sample_rate,
                PackKind::Frame,
            ),
            CodecParams::Mp3 => (
                "audio",
                "MPA/90000".to_string(),
                String::new(),
                90_000,
                PackKind::Mpa,
            ),
            CodecParams::Vp8 => (
                "video",
                "VP8/90000".to_string(),
                String::new(),
                90_000,
                PackKind::Vp8,
            ),
            CodecParams::Vp9 => (
                "video",
                "VP9/90000".to_string(),
                String::new(),
                90_000,
                PackKind::Vp9,
            ),
            CodecParams::Av1 { sequence_header } => (
                "video",
                "AV1/90000".to_string(),
                tidegate_codec::av1::parse_sequence_header(sequence_header)
                    .map(|i| {
                        format!(
                            "profile={};level-idx={};tier={}",
                            i.seq_profile,
                            i.seq_level_idx_0,
                            u8::from(i.seq_tier_0)
                        )
                    })
                    .unwrap_or_default(),
                90_000,
                PackKind::Av1,
            ),
            CodecParams::Ac3 {
                sample_rate,
                channels,
            } => (
                "audio",
                format!("AC3/{sample_rate}/{channels}"),
                String::new(),
                *sample_rate,
                PackKind::Ac3,
            ),
            CodecParams::Mjpeg => (
                "video",
                "JPEG/90000".to_string(),
                String::new(),
                90_000,
                PackKind::Jpeg,
            ),
            CodecParams::Mpeg4Video { config } => (
                "video",
                "MP4V-ES/90000".to_string(),
                if config.is_empty() {
                    "profile-level-id=1".to_string()
                } else {
                    let hex: String = config.iter().map(|b| format!("{b:02X}")).collect();
                    format!("profile-level-id=1;config={hex}")
                },
                90_000,
                PackKind::Mpeg4Video,
            ),
            CodecParams::Mpeg12Video => (
                "video",
                "MPV/90000".to_string(),
                String::new(),
                90_000,
                PackKind::Mpeg12Video,
            ),
            CodecParams::G722 => (
                "audio",
                "G722/8000".to_string(),
                String::new(),
                8000,
                // One byte is two 16 kHz samples: one tick of the 8 kHz RTP clock.
                PackKind::Samples { bytes: 1, ticks: 1 },
            ),
            CodecParams::G726 { bits, big_endian } => (
                "audio",
                format!(
                    "{}G726-{}/8000",
                    if *big_endian { "AAL2-" } else { "" },
                    u32::from(*bits) * 8
                ),
                String::new(),
                8000,
                // `bits` bytes hold eight samples.
                PackKind::Samples {
                    bytes: u32::from(*bits),
                    ticks: 8,
                },
            ),
            CodecParams::Lpcm {
                bits,
                sample_rate,
                channels,
            } => (
                "audio",
                format!("L{bits}/{sample_rate}/{channels}"),
                String::new(),
                *sample_rate,
                PackKind::Samples {
                    bytes: u32::from(*bits / 8) * u32::from(*channels),
                    ticks: 1,
                },
            ),
        };
        let _ = write!(s, "m={media} 0 RTP/AVP {pt}\r\na=rtpmap:{pt} {rtpmap}\r\n");
        if !fmtp.is_empty() {
            let _ = write!(s, "a=fmtp:{pt} {fmtp}\r\n");
        }
        let _ = write!(s, "a=control:trackID={i}\r\n");
        out.push(Outgoing {
            track: t.id,
            pt,
            clock,
            kind,
        });
    }
    (s, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG_ANNOUNCE: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=tool:libavformat 59.27.100\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LAHtkDxWhAAAADAEAAAA8DxYuS,aMuMsg==; profile-level-id=42C01E\r\na=control:streamid=0\r\nm=audio 0 RTP/AVP 97\r\nb=AS:128\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=1190\r\na=control:streamid=1\r\n";

    #[test]
    fn gstreamer_ac3_parses_into_a_track() {
        let sdp = "v=0\r\nm=audio 0 RTP/AVP 97\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:97 AC3/48000\r\n\
                   a=control:stream=1\r\na=ts-refclk:local\r\na=mediaclk:sender\r\n";
        let m = parse(sdp).unwrap();
        let inc = incoming(&m[0]).unwrap();
        assert_eq!(
            inc.params,
            Some(CodecParams::Ac3 {
                sample_rate: 48_000,
                channels: 2
            })
        );
        assert_eq!(inc.clock, 48_000);
    }

    #[test]
    fn ffmpeg_announce_parses_into_tracks() {
        let m = parse(FFMPEG_ANNOUNCE).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].control.as_deref(), Some("streamid=0"));
        let v = incoming(&m[0]).unwrap();
        assert!(matches!(v.params, Some(CodecParams::H264 { .. })));
        let a = incoming(&m[1]).unwrap();
        assert_eq!(a.clock, 48_000);
        assert_eq!(
            a.params,
            Some(CodecParams::Aac {
                config: Bytes::from_static(&[0x11, 0x90])
            })
        );
    }

    #[test]
    fn built_sdp_parses_back() {
        let m = parse(FFMPEG_ANNOUNCE).unwrap();
        let desc = StreamDesc {
            tracks: m
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let inc = incoming(m).unwrap();
                    tidegate_core::Track {
                        id: i as u32,
                        params: inc.params.unwrap(),
                        clock_rate: inc.clock,
                    }
                })
                .collect(),
        };
        let (sdp, out) = build(&desc);
        assert_eq!(out.len(), 2);
        let back = parse(&sdp).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].fmtp("config"), Some("1190"));
        assert_eq!(back[0].control.as_deref(), Some("trackID=0"));
        assert_eq!(
            incoming(&back[0]).unwrap().params,
            desc.tracks[0].params.clone().into()
        );
        // The RTSPS form: SAVP media, each with its key.
        let secure = secure(&sdp, |i| format!("AQID{i}"));
        assert_eq!(secure.matches("RTP/SAVP").count(), 2);
        assert!(!secure.contains("RTP/AVP "));
        let back = parse(&secure).unwrap();
        assert!(back.iter().all(|m| m.profile == "RTP/SAVP"));
        assert_eq!(back[0].key_mgmt.as_deref(), Some("AQID0"));
        assert_eq!(back[1].key_mgmt.as_deref(), Some("AQID1"));
        assert_eq!(back[1].fmtp("config"), Some("1190"));
        // A session-level key applies to every media.
        let session = FFMPEG_ANNOUNCE.replace("t=0 0\r\n", "t=0 0\r\na=key-mgmt:mikey BBBB\r\n");
        let m = parse(&session).unwrap();
        assert!(m.iter().all(|m| m.key_mgmt.as_deref() == Some("BBBB")));
        assert_eq!(m[0].profile, "RTP/AVP");
    }

    #[test]
    fn too_many_media_is_an_error() {
        let sdp: String = (0..10_000).map(|_| "m=video 0 RTP/AVP 96\r\n").collect();
        assert!(parse(&sdp).is_err());
    }
}
