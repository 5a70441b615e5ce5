//! An SDP the fuzzer shapes field by field (shared by the RTSP and WHIP structured targets):
//! media sections with the codecs, attributes, candidates and fmtp parameters real offers and
//! ANNOUNCEs carry, some of their values arbitrary bytes.
use arbitrary::Arbitrary;

#[derive(Arbitrary, Debug)]
pub struct Sdp {
    session: Vec<Attr>,
    media: Vec<Media>,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Video,
    Audio,
    Application,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Proto {
    Avp,
    Savp,
    Savpf,
    DtlsSavpf,
    TcpAvp,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Codec {
    H264,
    H265,
    Vp8,
    Vp9,
    Av1,
    Opus,
    Mpeg4Generic,
    Mp4aLatm,
    Pcmu,
    Pcma,
    L16,
    Mp2t,
    Rtx,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct RtpMap {
    pt: u8,
    codec: Codec,
    clock: u32,
    channels: Option<u8>,
    fmtp: Vec<Fmtp>,
}

#[derive(Arbitrary, Debug)]
enum Fmtp {
    ProfileLevelId(u32),
    PacketizationMode(u8),
    SpropParameterSets(Vec<Vec<u8>>),
    SpropVps(Vec<u8>),
    SpropSps(Vec<u8>),
    SpropPps(Vec<u8>),
    Config(Vec<u8>),
    Mode(String),
    SizeLength(u8),
    IndexLength(u8),
    Apt(u8),
    Other(String, String),
}

#[derive(Arbitrary, Debug)]
enum Attr {
    Mid(String),
    Direction(u8),
    IceUfrag(String),
    IcePwd(String),
    IceLite,
    Fingerprint(Vec<u8>),
    Setup(u8),
    Ssrc(u32, String),
    SsrcGroup(Vec<u32>),
    Extmap(u8, String),
    RtcpMux,
    RtcpFb(u8, String),
    Rid(String, String),
    Simulcast(String),
    Group(Vec<String>),
    Control(String),
    KeyMgmt(Vec<u8>),
    Range(String),
    Framerate(f32),
    Candidate(Candidate),
    EndOfCandidates,
    Other(String, String),
}

#[derive(Arbitrary, Debug)]
struct Candidate {
    foundation: u32,
    component: u8,
    tcp: bool,
    priority: u32,
    ip: [u8; 4],
    port: u16,
    kind: u8,
    tcptype: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Media {
    kind: Kind,
    port: u16,
    proto: Proto,
    rtpmaps: Vec<RtpMap>,
    extra_formats: Vec<u8>,
    attrs: Vec<Attr>,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(data: &[u8]) -> String {
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

impl Attr {
    fn render(&self) -> String {
        match self {
            Attr::Mid(m) => format!("a=mid:{m}"),
            Attr::Direction(d) => {
                format!("a={}", ["sendrecv", "sendonly", "recvonly", "inactive"][usize::from(*d) % 4])
            }
            Attr::IceUfrag(u) => format!("a=ice-ufrag:{u}"),
            Attr::IcePwd(p) => format!("a=ice-pwd:{p}"),
            Attr::IceLite => "a=ice-lite".into(),
            Attr::Fingerprint(f) => format!("a=fingerprint:sha-256 {}", hex(f)),
            Attr::Setup(s) => format!("a=setup:{}", ["actpass", "active", "passive", "holdconn"][usize::from(*s) % 4]),
            Attr::Ssrc(s, c) => format!("a=ssrc:{s} cname:{c}"),
            Attr::SsrcGroup(v) => format!(
                "a=ssrc-group:FID {}",
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
            ),
            Attr::Extmap(i, u) => format!("a=extmap:{i} {u}"),
            Attr::RtcpMux => "a=rtcp-mux".into(),
            Attr::RtcpFb(pt, f) => format!("a=rtcp-fb:{pt} {f}"),
            Attr::Rid(r, d) => format!("a=rid:{r} {d}"),
            Attr::Simulcast(s) => format!("a=simulcast:{s}"),
            Attr::Group(m) => format!("a=group:BUNDLE {}", m.join(" ")),
            Attr::Control(c) => format!("a=control:{c}"),
            Attr::KeyMgmt(k) => format!("a=key-mgmt:mikey {}", base64(k)),
            Attr::Range(r) => format!("a=range:{r}"),
            Attr::Framerate(f) => format!("a=framerate:{f}"),
            Attr::Candidate(c) => {
                let kind = ["host", "srflx", "prflx", "relay"][usize::from(c.kind) % 4];
                let [a, b, d, e] = c.ip;
                let mut s = format!(
                    "a=candidate:{} {} {} {} {a}.{b}.{d}.{e} {} typ {kind}",
                    c.foundation,
                    c.component,
                    if c.tcp { "tcp" } else { "udp" },
                    c.priority,
                    c.port
                );
                if let Some(t) = c.tcptype {
                    s.push_str(&format!(" tcptype {}", ["active", "passive", "so"][usize::from(t) % 3]));
                }
                s
            }
            Attr::EndOfCandidates => "a=end-of-candidates".into(),
            Attr::Other(k, v) => format!("a={k}:{v}"),
        }
    }
}

impl Fmtp {
    fn render(&self) -> String {
        match self {
            Fmtp::ProfileLevelId(p) => format!("profile-level-id={:06x}", p & 0xff_ffff),
            Fmtp::PacketizationMode(m) => format!("packetization-mode={m}"),
            Fmtp::SpropParameterSets(v) => format!(
                "sprop-parameter-sets={}",
                v.iter().map(|p| base64(p)).collect::<Vec<_>>().join(",")
            ),
            Fmtp::SpropVps(p) => format!("sprop-vps={}", base64(p)),
            Fmtp::SpropSps(p) => format!("sprop-sps={}", base64(p)),
            Fmtp::SpropPps(p) => format!("sprop-pps={}", base64(p)),
            Fmtp::Config(c) => format!("config={}", c.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            Fmtp::Mode(m) => format!("mode={m}"),
            Fmtp::SizeLength(n) => format!("sizelength={n}"),
            Fmtp::IndexLength(n) => format!("indexlength={n}"),
            Fmtp::Apt(pt) => format!("apt={pt}"),
            Fmtp::Other(k, v) => format!("{k}={v}"),
        }
    }
}

impl Sdp {
    /// The SDP text, with at most `max_media` media sections.
    pub fn render(&self, max_media: usize) -> String {
        let mut s = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n");
        for a in &self.session {
            s.push_str(&a.render());
            s.push_str("\r\n");
        }
        for m in self.media.iter().take(max_media) {
            let kind = match &m.kind {
                Kind::Video => "video",
                Kind::Audio => "audio",
                Kind::Application => "application",
                Kind::Other(o) => o,
            };
            let proto = match &m.proto {
                Proto::Avp => "RTP/AVP",
                Proto::Savp => "RTP/SAVP",
                Proto::Savpf => "RTP/SAVPF",
                Proto::DtlsSavpf => "UDP/TLS/RTP/SAVPF",
                Proto::TcpAvp => "RTP/AVP/TCP",
                Proto::Other(o) => o,
            };
            let formats: Vec<String> = m
                .rtpmaps
                .iter()
                .map(|r| r.pt)
                .chain(m.extra_formats.iter().copied())
                .map(|p| p.to_string())
                .collect();
            s.push_str(&format!("m={kind} {} {proto} {}\r\n", m.port, formats.join(" ")));
            for r in &m.rtpmaps {
                let name = match &r.codec {
                    Codec::H264 => "H264",
                    Codec::H265 => "H265",
                    Codec::Vp8 => "VP8",
                    Codec::Vp9 => "VP9",
                    Codec::Av1 => "AV1",
                    Codec::Opus => "opus",
                    Codec::Mpeg4Generic => "mpeg4-generic",
                    Codec::Mp4aLatm => "MP4A-LATM",
                    Codec::Pcmu => "PCMU",
                    Codec::Pcma => "PCMA",
                    Codec::L16 => "L16",
                    Codec::Mp2t => "MP2T",
                    Codec::Rtx => "rtx",
                    Codec::Other(o) => o,
                };
                s.push_str(&format!("a=rtpmap:{} {name}/{}", r.pt, r.clock));
                if let Some(c) = r.channels {
                    s.push_str(&format!("/{c}"));
                }
                s.push_str("\r\n");
                if !r.fmtp.is_empty() {
                    let p: Vec<String> = r.fmtp.iter().map(Fmtp::render).collect();
                    s.push_str(&format!("a=fmtp:{} {}\r\n", r.pt, p.join(";")));
                }
            }
            for a in &m.attrs {
                s.push_str(&a.render());
                s.push_str("\r\n");
            }
        }
        s
    }
}
