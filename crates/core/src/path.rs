//! Path configuration and name matching: exact names, `~regex` names with capture groups,
//! and `all_others` (alias `all`).

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use regex::Regex;

/// One track of a generated offline stream (`alwaysAvailableTracks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineTrack {
    /// MediaMTX's codec name: `H264`, `H265`, `VP9`, `AV1`, `Opus`, `MPEG4Audio`, `G711`,
    /// `LPCM`.
    pub codec: String,
    /// Audio: samples a second and channels (MediaMTX's defaults 48000 and 2; G.711 8000, 1).
    pub sample_rate: u32,
    pub channel_count: u8,
    /// G.711: µ-law, else A-law.
    pub mu_law: bool,
}

/// The settings of one configured path (or of `pathDefaults`). Plain data: the server crate
/// fills it from YAML.
#[derive(Clone, Debug, PartialEq)]
pub struct PathConf {
    /// The name as written in the configuration: `cam1`, `~^cam(\d+)$` or `all_others`.
    pub name: String,
    /// `publisher` (a client publishes) or a URL the server pulls from.
    pub source: String,
    /// `sourceFailover` (Tidegate's): more URLs to pull the same stream from, tried in turn
    /// after `source` when a pull fails (an edge's second origin). Readers stay attached.
    pub source_failover: Vec<String>,
    pub publish_user: String,
    pub publish_pass: String,
    pub publish_ips: Vec<IpNet>,
    pub read_user: String,
    pub read_pass: String,
    pub read_ips: Vec<IpNet>,
    pub srt_publish_passphrase: String,
    pub srt_read_passphrase: String,
    /// A new publisher replaces the current one instead of being refused.
    pub override_publisher: bool,
    /// 0 means no limit.
    pub max_readers: u32,
    /// Destinations the stream is pushed to while the path has a publisher.
    pub push: Vec<String>,
    /// How a pulled `rtsp://` source asks for RTP: `automatic`, `udp`, `tcp` or `multicast`.
    pub rtsp_transport: String,
    /// The SHA-256 fingerprint (hex) a pulled `rtsps://` or `rtmps://` server's certificate
    /// must have, instead of a Web PKI check: for self-signed cameras. Empty: Web PKI.
    pub source_fingerprint: String,
    /// A pulled `rtsp://` camera over UDP may send from ports other than those it announced.
    pub rtsp_any_port: bool,
    /// Pull the source only while someone reads the path.
    pub source_on_demand: bool,
    /// How long a reader waits for an on-demand source to become ready.
    pub source_on_demand_start_timeout: std::time::Duration,
    /// An on-demand source is closed this long after its last reader left.
    pub source_on_demand_close_after: std::time::Duration,
    /// Publishing needs a valid stream key.
    pub stream_key_required: bool,
    /// `<name>/<key>` means this path with that stream key (OBS: server `rtmp://host/<name>`,
    /// stream key `<key>`).
    pub stream_key_in_path: bool,
    /// Recording: see `tidegate-record`.
    pub record: RecordConf,
    /// Commands run on the path's events (`runOn…`).
    pub hooks: HookConf,
    /// `publisherReconnectGrace`: when the publisher leaves, its readers stay attached this
    /// long; a new publisher with the same tracks continues their stream. Zero ends them at
    /// once.
    pub publisher_reconnect_grace: std::time::Duration,
    /// `audioTranscode`: readers whose protocol cannot carry the publisher's audio codec get
    /// it transcoded (AAC → Opus for WebRTC), once per stream.
    pub audio_transcode: bool,
    /// `audioTranscodeBitrate`, bits per second of the transcoded audio.
    pub audio_transcode_bitrate: u32,
    /// `forward`, MediaMTX's newer name for pushes: destinations with their options.
    pub forward: Vec<ForwardDest>,
    /// `useAbsoluteTimestamp`: frames keep the source's absolute (NTP) time.
    pub use_absolute_timestamp: bool,
    /// `alwaysAvailable`, `alwaysAvailableTracks`, `alwaysAvailableFile`: the offline stream
    /// readers get while nobody publishes.
    pub always_available: bool,
    pub always_available_tracks: Vec<OfflineTrack>,
    pub always_available_file: String,
    /// `rtspDemuxMpegts`: see docs/configuration.md (Tidegate always demuxes MP2T).
    pub rtsp_demux_mpegts: bool,
    /// `rtspRangeType` (`clock`, `npt`, `smpte` or empty) and `rtspRangeStart`: the `Range`
    /// a pulled RTSP source is asked to PLAY from.
    pub rtsp_range_type: String,
    pub rtsp_range_start: String,
    /// `rtspScale`: the `Scale` header sent with PLAY (empty: none).
    pub rtsp_scale: String,
    /// `rtspUDPSourcePortRange`: the local ports a pulled RTSP source's UDP sockets use.
    pub rtsp_udp_source_port_range: (u16, u16),
    /// `rtpSDP`: the session description of a `udp+rtp://` source.
    pub rtp_sdp: String,
    /// `moqTransport`: `quic` or `webtransport` (MoQ is not built).
    pub moq_transport: String,
    /// `whepBearerToken` and the WHEP source's timeouts.
    pub whep_bearer_token: String,
    pub whep_stun_gather_timeout: std::time::Duration,
    pub whep_handshake_timeout: std::time::Duration,
    pub whep_track_gather_timeout: std::time::Duration,
    /// `sourceRedirect`: where readers are sent when `source` is `redirect`.
    pub source_redirect: String,
    /// MediaMTX's deprecated `fallback`: where RTSP readers are sent while the path has no
    /// stream (and no on-demand source to start).
    pub fallback: String,
}

/// One `forward` destination (MediaMTX's `dest`, `destFingerprint`, `whipBearerToken`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardDest {
    pub dest: String,
    pub dest_fingerprint: String,
    pub whip_bearer_token: String,
}

/// The path's hooks (`runOn…` keys), MediaMTX's. Plain data, run by the server crate.
#[derive(Clone, Debug, PartialEq)]
pub struct HookConf {
    pub run_on_init: String,
    pub run_on_init_restart: bool,
    pub run_on_demand: String,
    pub run_on_demand_restart: bool,
    pub run_on_demand_start_timeout: std::time::Duration,
    pub run_on_demand_close_after: std::time::Duration,
    pub run_on_un_demand: String,
    pub run_on_available: String,
    pub run_on_available_restart: bool,
    pub run_on_unavailable: String,
    pub run_on_online: String,
    pub run_on_online_restart: bool,
    pub run_on_offline: String,
    pub run_on_read: String,
    pub run_on_read_restart: bool,
    pub run_on_unread: String,
}

impl Default for HookConf {
    fn default() -> Self {
        HookConf {
            run_on_init: String::new(),
            run_on_init_restart: false,
            run_on_demand: String::new(),
            run_on_demand_restart: false,
            run_on_demand_start_timeout: std::time::Duration::from_secs(10),
            run_on_demand_close_after: std::time::Duration::from_secs(10),
            run_on_un_demand: String::new(),
            run_on_available: String::new(),
            run_on_available_restart: false,
            run_on_unavailable: String::new(),
            run_on_online: String::new(),
            run_on_online_restart: false,
            run_on_offline: String::new(),
            run_on_read: String::new(),
            run_on_read_restart: false,
            run_on_unread: String::new(),
        }
    }
}

/// How a path is recorded (`record*` keys). Plain data, read by `tidegate-record`.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordConf {
    pub enabled: bool,
    /// `recordPath`: a template with `%path` and time placeholders, no extension.
    pub path: String,
    /// `recordFormat`: `fmp4` or `mpegts`.
    pub format: String,
    pub part_duration: std::time::Duration,
    pub max_part_size: u64,
    pub segment_duration: std::time::Duration,
    /// Zero keeps segments forever.
    pub delete_after: std::time::Duration,
    /// `recordSync`: when written data is forced to disk: `part`, `segment` or `off`.
    pub sync: String,
    pub run_on_segment_create: String,
    pub run_on_segment_complete: String,
}

impl Default for RecordConf {
    fn default() -> Self {
        RecordConf {
            enabled: false,
            path: "./recordings/%path/%Y-%m-%d_%H-%M-%S-%f".into(),
            format: "fmp4".into(),
            part_duration: std::time::Duration::from_secs(1),
            max_part_size: 50 * 1024 * 1024,
            segment_duration: std::time::Duration::from_secs(3600),
            delete_after: std::time::Duration::from_secs(86400),
            sync: "part".into(),
            run_on_segment_create: String::new(),
            run_on_segment_complete: String::new(),
        }
    }
}

impl Default for PathConf {
    fn default() -> Self {
        PathConf {
            name: String::new(),
            source: "publisher".into(),
            publish_user: String::new(),
            publish_pass: String::new(),
            publish_ips: Vec::new(),
            read_user: String::new(),
            read_pass: String::new(),
            read_ips: Vec::new(),
            srt_publish_passphrase: String::new(),
            srt_read_passphrase: String::new(),
            override_publisher: false,
            max_readers: 0,
            push: Vec::new(),
            rtsp_transport: "automatic".into(),
            source_fingerprint: String::new(),
            source_failover: Vec::new(),
            rtsp_any_port: false,
            source_on_demand: false,
            source_on_demand_start_timeout: std::time::Duration::from_secs(10),
            source_on_demand_close_after: std::time::Duration::from_secs(10),
            stream_key_required: false,
            stream_key_in_path: false,
            record: RecordConf::default(),
            hooks: HookConf::default(),
            publisher_reconnect_grace: std::time::Duration::ZERO,
            audio_transcode: true,
            audio_transcode_bitrate: 128_000,
            forward: Vec::new(),
            use_absolute_timestamp: false,
            always_available: false,
            always_available_tracks: Vec::new(),
            always_available_file: String::new(),
            rtsp_demux_mpegts: false,
            rtsp_range_type: String::new(),
            rtsp_range_start: String::new(),
            rtsp_scale: String::new(),
            rtsp_udp_source_port_range: (32768, 60999),
            rtp_sdp: String::new(),
            moq_transport: "quic".into(),
            whep_bearer_token: String::new(),
            whep_stun_gather_timeout: std::time::Duration::from_secs(5),
            whep_handshake_timeout: std::time::Duration::from_secs(10),
            whep_track_gather_timeout: std::time::Duration::from_secs(2),
            source_redirect: String::new(),
            fallback: String::new(),
        }
    }
}

/// Why a path name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathNameError {
    #[error("path name is empty")]
    Empty,
    #[error("path name is longer than {0} characters")]
    TooLong(usize),
    #[error("path name must not begin or end with a slash")]
    Slash,
    #[error("path name must not contain '//' or '..'")]
    BadSegment,
    #[error("path name may only contain letters, digits and _ - . ~ /, found {0:?}")]
    BadChar(char),
    #[error("invalid regular expression: {0}")]
    Regex(String),
}

/// The longest path name accepted from a client.
pub const MAX_PATH_NAME_LEN: usize = 256;

/// Checks a concrete path name (what a client asks for).
pub fn validate_path_name(name: &str) -> Result<(), PathNameError> {
    if name.is_empty() {
        return Err(PathNameError::Empty);
    }
    if name.len() > MAX_PATH_NAME_LEN {
        return Err(PathNameError::TooLong(MAX_PATH_NAME_LEN));
    }
    if name.starts_with('/') || name.ends_with('/') {
        return Err(PathNameError::Slash);
    }
    if name.contains("//") || name.split('/').any(|s| s == ".." || s == ".") {
        return Err(PathNameError::BadSegment);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '~' | '/')))
    {
        return Err(PathNameError::BadChar(c));
    }
    Ok(())
}

/// The configuration a concrete path name resolved to.
#[derive(Clone, Debug)]
pub struct PathMatch {
    pub conf: Arc<PathConf>,
    /// Capture groups of a regex path; index 0 is the whole name.
    pub captures: Vec<String>,
}

/// Resolves client path names to configured paths: exact names first, then regex paths in
/// configuration order, then `all_others`.
#[derive(Debug, Default)]
pub struct PathMatcher {
    exact: HashMap<String, Arc<PathConf>>,
    regexes: Vec<(Regex, Arc<PathConf>)>,
    all_others: Option<Arc<PathConf>>,
}

impl PathMatcher {
    /// Builds a matcher from paths in configuration order.
    pub fn new(paths: Vec<PathConf>) -> Result<PathMatcher, (String, PathNameError)> {
        let mut m = PathMatcher::default();
        for conf in paths {
            let name = conf.name.clone();
            if name == "all_others" || name == "all" {
                m.all_others = Some(Arc::new(conf));
            } else if let Some(re) = name.strip_prefix('~') {
                let re = Regex::new(re)
                    .map_err(|e| (name.clone(), PathNameError::Regex(e.to_string())))?;
                m.regexes.push((re, Arc::new(conf)));
            } else {
                validate_path_name(&name).map_err(|e| (name.clone(), e))?;
                m.exact.insert(name, Arc::new(conf));
            }
        }
        Ok(m)
    }

    /// The configuration of an exactly-named path (no regex, no `all_others`).
    pub fn exact(&self, name: &str) -> Option<&Arc<PathConf>> {
        self.exact.get(name)
    }

    pub fn find(&self, name: &str) -> Option<PathMatch> {
        if let Some(conf) = self.exact.get(name) {
            return Some(PathMatch {
                conf: conf.clone(),
                captures: vec![name.to_string()],
            });
        }
        for (re, conf) in &self.regexes {
            if let Some(caps) = re.captures(name) {
                return Some(PathMatch {
                    conf: conf.clone(),
                    captures: caps
                        .iter()
                        .map(|c| c.map(|m| m.as_str().to_string()).unwrap_or_default())
                        .collect(),
                });
            }
        }
        self.all_others.as_ref().map(|conf| PathMatch {
            conf: conf.clone(),
            captures: vec![name.to_string()],
        })
    }

    /// Exact-name paths, which exist (for the API) even before anyone publishes.
    pub fn exact_names(&self) -> impl Iterator<Item = &String> {
        self.exact.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(name: &str) -> PathConf {
        PathConf {
            name: name.into(),
            ..PathConf::default()
        }
    }

    #[test]
    fn exact_then_regex_then_all_others() {
        let m = PathMatcher::new(vec![
            conf("all_others"),
            conf(r"~^cam(\d+)/(main|sub)$"),
            conf("cam1/main"),
        ])
        .unwrap();
        assert_eq!(m.find("cam1/main").unwrap().conf.name, "cam1/main");
        let re = m.find("cam42/sub").unwrap();
        assert_eq!(re.conf.name, r"~^cam(\d+)/(main|sub)$");
        assert_eq!(re.captures, vec!["cam42/sub", "42", "sub"]);
        assert_eq!(m.find("other").unwrap().conf.name, "all_others");
    }

    #[test]
    fn no_match_without_all_others() {
        let m = PathMatcher::new(vec![conf("~^live/.+$")]).unwrap();
        assert!(m.find("live/x").is_some());
        assert!(m.find("vod/x").is_none());
    }

    #[test]
    fn optional_capture_groups_are_empty() {
        let m = PathMatcher::new(vec![conf(r"~^a(b)?$")]).unwrap();
        assert_eq!(m.find("a").unwrap().captures, vec!["a", ""]);
    }

    #[test]
    fn bad_regex_is_reported() {
        let err = PathMatcher::new(vec![conf("~^(unclosed$")]).unwrap_err();
        assert_eq!(err.0, "~^(unclosed$");
        assert!(matches!(err.1, PathNameError::Regex(_)));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_path_name("live/stream-1_a.b~c").is_ok());
        assert_eq!(validate_path_name(""), Err(PathNameError::Empty));
        assert_eq!(validate_path_name("/a"), Err(PathNameError::Slash));
        assert_eq!(validate_path_name("a/"), Err(PathNameError::Slash));
        assert_eq!(validate_path_name("a//b"), Err(PathNameError::BadSegment));
        assert_eq!(validate_path_name("a/../b"), Err(PathNameError::BadSegment));
        assert_eq!(validate_path_name("a b"), Err(PathNameError::BadChar(' ')));
        assert_eq!(validate_path_name("a?b"), Err(PathNameError::BadChar('?')));
        assert!(matches!(
            validate_path_name(&"a".repeat(300)),
            Err(PathNameError::TooLong(_))
        ));
    }
}
