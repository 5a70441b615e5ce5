//! The configuration: one YAML file, MediaMTX's key names where the meaning is the same.
//!
//! Defaults live in one place, the embedded `configs/tidegate.yml`: it is loaded first and the
//! user's file is applied on top of it, then `MTX_<KEY>` and `TIDEGATE_<KEY>` environment
//! variables (a variable that names no setting is a warning, not an error). Every key
//! is known to the tables below; an unknown key, a value of the wrong type or a bad value is an
//! error that names the key and its line.

mod value;
pub mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tidegate_core::{PathConf, PathMatcher};

use value::*;
use yaml::{Node, Value};

/// The embedded default configuration, compiled into the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../../../../configs/tidegate.yml");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    No,
    Optional,
    Strict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HlsVariant {
    LowLatency,
    Fmp4,
    Mpegts,
}

/// Every setting, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    pub log_level: String,
    pub log_format: LogFormat,
    /// `logDestinations`: any of `stdout` (the console: standard error), `file`, `syslog`.
    pub log_destinations: Vec<String>,
    /// `logStructured`: JSON lines, as `logFormat: json`.
    pub log_structured: bool,
    pub log_file: String,
    pub syslog_prefix: String,
    /// `dumpPackets`: every TCP connection of the servers dumped to pcapng files in the
    /// working directory (`tidegate_core::dump`).
    pub dump_packets: bool,
    /// `udpMaxPayloadSize`: the largest UDP payload sent (RTP over UDP, WebRTC).
    pub udp_max_payload_size: u32,
    /// `udpReadBufferSize`: SO_RCVBUF of every UDP socket; 0 keeps the system's.
    pub udp_read_buffer_size: u64,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `drainPeriod`: on SIGTERM, how long open sessions may go on once no new client is
    /// taken (0: closed at once).
    pub drain_period: Duration,
    pub write_queue_size: u32,
    /// `maxConnections`: open connections per listener (0: no limit).
    pub max_connections: u32,
    /// `maxConnectionsPerIP`: open connections per listener from one address (0: no limit).
    pub max_connections_per_ip: u32,
    pub audio_coalesce: Duration,

    pub api: bool,
    pub api_address: SocketAddr,
    pub api_encryption: bool,
    pub api_server_key: String,
    pub api_server_cert: String,
    pub api_allow_origins: Vec<String>,
    pub api_trusted_proxies: Vec<ipnet::IpNet>,
    pub metrics: bool,
    pub metrics_address: SocketAddr,
    pub metrics_encryption: bool,
    pub metrics_server_key: String,
    pub metrics_server_cert: String,
    pub metrics_allow_origins: Vec<String>,
    pub metrics_trusted_proxies: Vec<ipnet::IpNet>,
    /// MediaMTX's `pprof*`: a CPU profile on demand (`/debug/pprof/profile`).
    pub pprof: bool,
    pub pprof_address: SocketAddr,
    pub pprof_encryption: bool,
    pub pprof_server_key: String,
    pub pprof_server_cert: String,
    pub pprof_allow_origins: Vec<String>,
    pub pprof_trusted_proxies: Vec<ipnet::IpNet>,
    pub hls_trusted_proxies: Vec<ipnet::IpNet>,
    pub webrtc_trusted_proxies: Vec<ipnet::IpNet>,

    pub rtmp: bool,
    pub rtmp_address: SocketAddr,
    pub rtmp_encryption: Encryption,
    pub rtmps_address: SocketAddr,
    pub rtmp_server_key: String,
    pub rtmp_server_cert: String,

    pub rtsp: bool,
    pub rtsp_address: SocketAddr,
    pub rtsp_encryption: Encryption,
    pub rtsps_address: SocketAddr,
    pub rtsp_server_key: String,
    pub rtsp_server_cert: String,
    pub rtp_address: SocketAddr,
    /// `rtspTransports`: any of `udp`, `multicast`, `tcp`.
    pub rtsp_transports: Vec<String>,
    pub multicast_ip_range: ipnet::Ipv4Net,
    pub multicast_rtp_port: u16,
    pub multicast_rtcp_port: u16,
    pub multicast_srtp_port: u16,
    pub multicast_srtcp_port: u16,
    /// `rtspTrustedProxies`, `rtmpTrustedProxies`: peers whose PROXY protocol header is believed.
    pub rtsp_trusted_proxies: Vec<ipnet::IpNet>,
    pub rtmp_trusted_proxies: Vec<ipnet::IpNet>,
    /// `rtspAuthMethods`: any of `basic`, `digest`.
    pub rtsp_auth_methods: Vec<String>,
    pub rtcp_address: SocketAddr,
    /// UDP ports for SRTP and SRTCP of RTSPS sessions.
    pub srtp_address: SocketAddr,
    pub srtcp_address: SocketAddr,

    pub hls: bool,
    pub hls_address: SocketAddr,
    pub hls_variant: HlsVariant,
    pub hls_segment_duration: Duration,
    pub hls_part_duration: Duration,
    pub hls_segment_count: u32,
    /// `hlsAllowOrigins` (MediaMTX's older `hlsAllowOrigin`: one entry).
    pub hls_allow_origins: Vec<String>,
    /// `hlsSegmentMaxSize`: the most an open segment may hold before it is cut.
    pub hls_segment_max_size: u64,
    /// `hlsDirectory`: complete HLS segments are kept in files under it (one directory per
    /// path) instead of memory.
    pub hls_directory: String,
    /// `hlsCDNSecret`: requests carrying `Authorization: Bearer <secret>` come from the CDN.
    pub hls_cdn_secret: String,
    pub hls_always_remux: bool,
    pub hls_encryption: bool,
    pub hls_server_key: String,
    pub hls_server_cert: String,
    pub hls_muxer_close_after: Duration,

    pub webrtc: bool,
    pub webrtc_address: SocketAddr,
    pub webrtc_local_udp_address: Option<SocketAddr>,
    pub webrtc_local_tcp_address: Option<SocketAddr>,
    pub webrtc_additional_hosts: Vec<String>,
    /// `webrtcAllowOrigins` (MediaMTX's older `webrtcAllowOrigin`: one entry).
    pub webrtc_allow_origins: Vec<String>,
    pub webrtc_encryption: bool,
    pub webrtc_server_key: String,
    pub webrtc_server_cert: String,
    pub webrtc_ips_from_interfaces: bool,
    /// `webrtcIPsFromInterfacesList`: interface names; empty: all.
    pub webrtc_ips_from_interfaces_list: Vec<String>,
    pub webrtc_stun_gather_timeout: Duration,
    pub webrtc_track_gather_timeout: Duration,
    pub webrtc_handshake_timeout: Duration,
    pub webrtc_ice_servers: Vec<tidegate_webrtc::IceServer>,

    pub srt: bool,
    pub srt_address: SocketAddr,

    /// `moq…`: Media over QUIC is not built; `moq: yes` (MediaMTX's default) logs a warning.
    pub moq: bool,
    pub moq_http2_address: SocketAddr,
    pub moq_http3_address: SocketAddr,
    pub moq_quic_address: SocketAddr,
    pub moq_server_key: String,
    pub moq_server_cert: String,
    pub moq_allow_origins: Vec<String>,
    pub moq_trusted_proxies: Vec<ipnet::IpNet>,

    pub playback: bool,
    pub playback_address: SocketAddr,
    pub playback_encryption: bool,
    pub playback_server_key: String,
    pub playback_server_cert: String,
    pub playback_allow_origins: Vec<String>,
    pub playback_trusted_proxies: Vec<ipnet::IpNet>,

    /// `authMethod`, `authInternalUsers`, `authHTTP…`, `authJWT…`.
    pub auth: tidegate_auth::AuthConfig,
    /// `keyStore`: the SQLite file, or the PostgreSQL URL, stream keys live in.
    pub key_store: String,

    /// `runOnConnect`, `runOnConnectRestart`, `runOnDisconnect`.
    pub run_on_connect: String,
    pub run_on_connect_restart: bool,
    pub run_on_disconnect: String,
    /// `webhooks`: where events are POSTed (docs/operations.md).
    pub webhooks: Vec<crate::webhooks::WebhookConf>,

    pub path_defaults: PathConf,
    /// Configured paths in file order.
    pub paths: Vec<PathConf>,

    /// What loading noticed but did not refuse (environment variables that name no setting),
    /// for the log once it is up.
    pub warnings: Vec<String>,
}

type Setter<T> = fn(&mut T, &Node) -> Result<(), String>;

macro_rules! set {
    ($field:ident, $parse:expr) => {
        |c, v| {
            c.$field = $parse(v)?;
            Ok(())
        }
    };
}

macro_rules! set_rec {
    ($field:ident, $parse:expr) => {
        |c, v| {
            c.record.$field = $parse(v)?;
            Ok(())
        }
    };
}

macro_rules! set_hook {
    ($field:ident, $parse:expr) => {
        |c, v| {
            c.hooks.$field = $parse(v)?;
            Ok(())
        }
    };
}

macro_rules! set_auth {
    ($($field:ident).+, $parse:expr) => {
        |c, v| {
            c.auth.$($field).+ = $parse(v)?;
            Ok(())
        }
    };
}

/// An older spelling of a top-level key: the same as `$new` (or the closure given).
macro_rules! old {
    ($new:literal) => {
        |c, v| match find(GLOBAL_KEYS, $new) {
            Some(set) => set(c, v),
            None => Ok(()),
        }
    };
    ($new:literal, $f:expr) => {
        $f
    };
}

/// A top-level older spelling of a `pathDefaults` key (MediaMTX's global `record…` keys).
macro_rules! old_path {
    ($new:literal) => {
        |c: &mut Config, v| match find(PATH_KEYS, $new) {
            Some(set) => set(&mut c.path_defaults, v),
            None => Ok(()),
        }
    };
}

/// Every top-level key but `pathDefaults` and `paths`.
pub static GLOBAL_KEYS: &[(&str, Setter<Config>)] = &[
    (
        "logLevel",
        set!(log_level, |v| one_of(
            v,
            &["error", "warn", "info", "debug"]
        )),
    ),
    ("logFormat", set!(log_format, log_format)),
    (
        "logDestinations",
        set!(log_destinations, |v| subset_of(
            v,
            &["stdout", "file", "syslog"]
        )),
    ),
    ("logStructured", set!(log_structured, boolean)),
    ("logFile", set!(log_file, string)),
    ("sysLogPrefix", set!(syslog_prefix, string)),
    ("dumpPackets", set!(dump_packets, boolean)),
    (
        "udpMaxPayloadSize",
        set!(udp_max_payload_size, |v| uint_in(v, 576, 65_507)),
    ),
    (
        "udpReadBufferSize",
        set!(udp_read_buffer_size, size_or_zero),
    ),
    ("readTimeout", set!(read_timeout, duration)),
    (
        "maxConnections",
        set!(max_connections, |v| uint_in(v, 0, u32::MAX)),
    ),
    (
        "maxConnectionsPerIP",
        set!(max_connections_per_ip, |v| uint_in(v, 0, u32::MAX)),
    ),
    ("writeTimeout", set!(write_timeout, duration)),
    ("drainPeriod", set!(drain_period, duration)),
    (
        "writeQueueSize",
        set!(write_queue_size, |v| uint_in(v, 16, 1 << 20)),
    ),
    (
        "audioCoalesce",
        set!(audio_coalesce, |v| {
            let d = duration(v)?;
            if d > Duration::from_secs(1) {
                return Err("at most 1s".to_string());
            }
            Ok(d)
        }),
    ),
    ("api", set!(api, boolean)),
    ("apiAddress", set!(api_address, address)),
    ("apiEncryption", set!(api_encryption, boolean)),
    ("apiServerKey", set!(api_server_key, string)),
    ("apiServerCert", set!(api_server_cert, string)),
    ("apiAllowOrigins", set!(api_allow_origins, string_list)),
    ("apiTrustedProxies", set!(api_trusted_proxies, ip_list)),
    ("metrics", set!(metrics, boolean)),
    ("metricsAddress", set!(metrics_address, address)),
    ("metricsEncryption", set!(metrics_encryption, boolean)),
    ("metricsServerKey", set!(metrics_server_key, string)),
    ("metricsServerCert", set!(metrics_server_cert, string)),
    (
        "metricsAllowOrigins",
        set!(metrics_allow_origins, string_list),
    ),
    (
        "metricsTrustedProxies",
        set!(metrics_trusted_proxies, ip_list),
    ),
    ("pprof", set!(pprof, boolean)),
    ("pprofAddress", set!(pprof_address, address)),
    ("pprofEncryption", set!(pprof_encryption, boolean)),
    ("pprofServerKey", set!(pprof_server_key, string)),
    ("pprofServerCert", set!(pprof_server_cert, string)),
    ("pprofAllowOrigins", set!(pprof_allow_origins, string_list)),
    ("pprofTrustedProxies", set!(pprof_trusted_proxies, ip_list)),
    ("hlsTrustedProxies", set!(hls_trusted_proxies, ip_list)),
    (
        "webrtcTrustedProxies",
        set!(webrtc_trusted_proxies, ip_list),
    ),
    ("rtmp", set!(rtmp, boolean)),
    ("rtmpAddress", set!(rtmp_address, address)),
    ("rtmpEncryption", set!(rtmp_encryption, encryption)),
    ("rtmpsAddress", set!(rtmps_address, address)),
    ("rtmpServerKey", set!(rtmp_server_key, string)),
    ("rtmpServerCert", set!(rtmp_server_cert, string)),
    ("rtsp", set!(rtsp, boolean)),
    ("rtspAddress", set!(rtsp_address, address)),
    ("rtspEncryption", set!(rtsp_encryption, encryption)),
    ("rtspsAddress", set!(rtsps_address, address)),
    ("rtspServerKey", set!(rtsp_server_key, string)),
    ("rtspServerCert", set!(rtsp_server_cert, string)),
    ("rtpAddress", set!(rtp_address, address)),
    (
        "rtspTransports",
        set!(rtsp_transports, |v| subset_of(
            v,
            &["udp", "multicast", "tcp"]
        )),
    ),
    ("multicastIPRange", set!(multicast_ip_range, ipv4_net)),
    ("multicastRTPPort", set!(multicast_rtp_port, port)),
    ("multicastRTCPPort", set!(multicast_rtcp_port, port)),
    ("multicastSRTPPort", set!(multicast_srtp_port, port)),
    ("multicastSRTCPPort", set!(multicast_srtcp_port, port)),
    ("rtspTrustedProxies", set!(rtsp_trusted_proxies, ip_list)),
    ("rtmpTrustedProxies", set!(rtmp_trusted_proxies, ip_list)),
    (
        "rtspAuthMethods",
        set!(rtsp_auth_methods, |v| subset_of(v, &["basic", "digest"])),
    ),
    ("rtcpAddress", set!(rtcp_address, address)),
    ("srtpAddress", set!(srtp_address, address)),
    ("srtcpAddress", set!(srtcp_address, address)),
    ("hls", set!(hls, boolean)),
    ("hlsAddress", set!(hls_address, address)),
    ("hlsVariant", set!(hls_variant, hls_variant)),
    ("hlsSegmentDuration", set!(hls_segment_duration, duration)),
    ("hlsPartDuration", set!(hls_part_duration, duration)),
    (
        "hlsSegmentCount",
        set!(hls_segment_count, |v| uint_in(v, 3, 100)),
    ),
    ("hlsAllowOrigins", set!(hls_allow_origins, string_list)),
    ("hlsSegmentMaxSize", set!(hls_segment_max_size, size)),
    ("hlsDirectory", set!(hls_directory, string)),
    ("hlsCDNSecret", set!(hls_cdn_secret, plain_credential)),
    ("hlsAlwaysRemux", set!(hls_always_remux, boolean)),
    ("hlsEncryption", set!(hls_encryption, boolean)),
    ("hlsServerKey", set!(hls_server_key, string)),
    ("hlsServerCert", set!(hls_server_cert, string)),
    ("hlsMuxerCloseAfter", set!(hls_muxer_close_after, duration)),
    ("webrtc", set!(webrtc, boolean)),
    ("webrtcAddress", set!(webrtc_address, address)),
    (
        "webrtcLocalUDPAddress",
        set!(webrtc_local_udp_address, optional_address),
    ),
    (
        "webrtcLocalTCPAddress",
        set!(webrtc_local_tcp_address, optional_address),
    ),
    (
        "webrtcAdditionalHosts",
        set!(webrtc_additional_hosts, string_list),
    ),
    (
        "webrtcAllowOrigins",
        set!(webrtc_allow_origins, string_list),
    ),
    ("webrtcEncryption", set!(webrtc_encryption, boolean)),
    ("webrtcServerKey", set!(webrtc_server_key, string)),
    ("webrtcServerCert", set!(webrtc_server_cert, string)),
    (
        "webrtcIPsFromInterfaces",
        set!(webrtc_ips_from_interfaces, boolean),
    ),
    (
        "webrtcIPsFromInterfacesList",
        set!(webrtc_ips_from_interfaces_list, string_list),
    ),
    (
        "webrtcSTUNGatherTimeout",
        set!(webrtc_stun_gather_timeout, positive_duration),
    ),
    (
        "webrtcHandshakeTimeout",
        set!(webrtc_handshake_timeout, duration),
    ),
    (
        "webrtcTrackGatherTimeout",
        set!(webrtc_track_gather_timeout, positive_duration),
    ),
    ("webrtcICEServers2", set!(webrtc_ice_servers, ice_servers)),
    ("srt", set!(srt, boolean)),
    ("srtAddress", set!(srt_address, address)),
    ("moq", set!(moq, boolean)),
    ("moqHTTP2Address", set!(moq_http2_address, address)),
    ("moqHTTP3Address", set!(moq_http3_address, address)),
    ("moqQUICAddress", set!(moq_quic_address, address)),
    ("moqServerKey", set!(moq_server_key, string)),
    ("moqServerCert", set!(moq_server_cert, string)),
    ("moqAllowOrigins", set!(moq_allow_origins, string_list)),
    ("moqTrustedProxies", set!(moq_trusted_proxies, ip_list)),
    ("authMethod", set_auth!(method, auth_method)),
    (
        "authInternalUsers",
        set_auth!(internal_users, internal_users),
    ),
    ("authHTTPAddress", set_auth!(http_address, http_url)),
    (
        "authHTTPFingerprint",
        set_auth!(http_fingerprint, fingerprint),
    ),
    ("authHTTPExclude", set_auth!(http_exclude, permissions)),
    ("authHTTPRecheckPeriod", set_auth!(http_recheck, duration)),
    ("authJWTJWKS", set_auth!(jwt.jwks, http_url)),
    (
        "authJWTJWKSFingerprint",
        set_auth!(jwt.jwks_fingerprint, fingerprint),
    ),
    ("authJWTClaimKey", set_auth!(jwt.claim_key, string)),
    ("authJWTIssuer", set_auth!(jwt.issuer, string)),
    ("authJWTAudience", set_auth!(jwt.audience, string)),
    ("authJWTExclude", set_auth!(jwt_exclude, permissions)),
    ("authJWTInHTTPQuery", set_auth!(jwt_in_http_query, boolean)),
    ("keyStore", set!(key_store, key_store)),
    ("runOnConnect", set!(run_on_connect, string)),
    ("runOnConnectRestart", set!(run_on_connect_restart, boolean)),
    ("runOnDisconnect", set!(run_on_disconnect, string)),
    ("webhooks", set!(webhooks, webhooks)),
    ("playback", set!(playback, boolean)),
    ("playbackAddress", set!(playback_address, address)),
    ("playbackEncryption", set!(playback_encryption, boolean)),
    ("playbackServerKey", set!(playback_server_key, string)),
    ("playbackServerCert", set!(playback_server_cert, string)),
    (
        "playbackAllowOrigins",
        set!(playback_allow_origins, string_list),
    ),
    (
        "playbackTrustedProxies",
        set!(playback_trusted_proxies, ip_list),
    ),
    // MediaMTX's older spellings, still read (each logs that it is deprecated).
    ("readBufferCount", old!("writeQueueSize")),
    (
        "externalAuthenticationURL",
        old!("authHTTPAddress", |c, v| {
            c.auth.http_address = http_url(v)?;
            if !c.auth.http_address.is_empty() {
                c.auth.method = tidegate_auth::Method::Http;
            }
            Ok(())
        }),
    ),
    (
        "apiAllowOrigin",
        old!("apiAllowOrigins", |c, v| {
            c.api_allow_origins = vec![string(v)?];
            Ok(())
        }),
    ),
    (
        "metricsAllowOrigin",
        old!("metricsAllowOrigins", |c, v| {
            c.metrics_allow_origins = vec![string(v)?];
            Ok(())
        }),
    ),
    (
        "pprofAllowOrigin",
        old!("pprofAllowOrigins", |c, v| {
            c.pprof_allow_origins = vec![string(v)?];
            Ok(())
        }),
    ),
    (
        "playbackAllowOrigin",
        old!("playbackAllowOrigins", |c, v| {
            c.playback_allow_origins = vec![string(v)?];
            Ok(())
        }),
    ),
    (
        "hlsAllowOrigin",
        old!("hlsAllowOrigins", |c, v| {
            c.hls_allow_origins = vec![string(v)?];
            Ok(())
        }),
    ),
    (
        "webrtcAllowOrigin",
        old!("webrtcAllowOrigins", |c, v| {
            c.webrtc_allow_origins = vec![string(v)?];
            Ok(())
        }),
    ),
    (
        "rtspDisable",
        old!("rtsp", |c, v| {
            c.rtsp = !boolean(v)?;
            Ok(())
        }),
    ),
    (
        "rtmpDisable",
        old!("rtmp", |c, v| {
            c.rtmp = !boolean(v)?;
            Ok(())
        }),
    ),
    (
        "hlsDisable",
        old!("hls", |c, v| {
            c.hls = !boolean(v)?;
            Ok(())
        }),
    ),
    (
        "webrtcDisable",
        old!("webrtc", |c, v| {
            c.webrtc = !boolean(v)?;
            Ok(())
        }),
    ),
    ("protocols", old!("rtspTransports")),
    ("encryption", old!("rtspEncryption")),
    ("serverKey", old!("rtspServerKey")),
    ("serverCert", old!("rtspServerCert")),
    ("authMethods", old!("rtspAuthMethods")),
    ("rtspUDPReadBufferSize", old!("udpReadBufferSize")),
    ("webrtcICEUDPMuxAddress", old!("webrtcLocalUDPAddress")),
    ("webrtcICETCPMuxAddress", old!("webrtcLocalTCPAddress")),
    ("webrtcICEHostNAT1To1IPs", old!("webrtcAdditionalHosts")),
    (
        "webrtcICEServers",
        old!("webrtcICEServers2", |c, v| {
            c.webrtc_ice_servers = legacy_ice_servers(v)?;
            Ok(())
        }),
    ),
    ("moqHTTPS2Address", old!("moqHTTP2Address")),
    ("moqHTTPS3Address", old!("moqHTTP3Address")),
    ("record", old_path!("record")),
    ("recordPath", old_path!("recordPath")),
    ("recordFormat", old_path!("recordFormat")),
    ("recordPartDuration", old_path!("recordPartDuration")),
    ("recordSegmentDuration", old_path!("recordSegmentDuration")),
    ("recordDeleteAfter", old_path!("recordDeleteAfter")),
];

/// MediaMTX's older top-level spellings in [`GLOBAL_KEYS`] and what replaced them: the embedded
/// defaults do not set them, and a file that does gets a warning.
pub static DEPRECATED_GLOBAL_KEYS: &[(&str, &str)] = &[
    ("readBufferCount", "writeQueueSize"),
    ("externalAuthenticationURL", "authHTTPAddress"),
    ("apiAllowOrigin", "apiAllowOrigins"),
    ("metricsAllowOrigin", "metricsAllowOrigins"),
    ("pprofAllowOrigin", "pprofAllowOrigins"),
    ("playbackAllowOrigin", "playbackAllowOrigins"),
    ("hlsAllowOrigin", "hlsAllowOrigins"),
    ("webrtcAllowOrigin", "webrtcAllowOrigins"),
    ("rtspDisable", "rtsp"),
    ("rtmpDisable", "rtmp"),
    ("hlsDisable", "hls"),
    ("webrtcDisable", "webrtc"),
    ("protocols", "rtspTransports"),
    ("encryption", "rtspEncryption"),
    ("serverKey", "rtspServerKey"),
    ("serverCert", "rtspServerCert"),
    ("authMethods", "rtspAuthMethods"),
    ("rtspUDPReadBufferSize", "udpReadBufferSize"),
    ("webrtcICEUDPMuxAddress", "webrtcLocalUDPAddress"),
    ("webrtcICETCPMuxAddress", "webrtcLocalTCPAddress"),
    ("webrtcICEHostNAT1To1IPs", "webrtcAdditionalHosts"),
    ("webrtcICEServers", "webrtcICEServers2"),
    ("moqHTTPS2Address", "moqHTTP2Address"),
    ("moqHTTPS3Address", "moqHTTP3Address"),
    ("record", "record"),
    ("recordPath", "recordPath"),
    ("recordFormat", "recordFormat"),
    ("recordPartDuration", "recordPartDuration"),
    ("recordSegmentDuration", "recordSegmentDuration"),
    ("recordDeleteAfter", "recordDeleteAfter"),
];

/// Keys of `pathDefaults` and of each entry of `paths`.
pub static PATH_KEYS: &[(&str, Setter<PathConf>)] = &[
    ("source", set!(source, source)),
    ("sourceFailover", set!(source_failover, source_list)),
    ("publishUser", set!(publish_user, string)),
    ("publishPass", set!(publish_pass, string)),
    ("publishIPs", set!(publish_ips, ip_list)),
    ("readUser", set!(read_user, string)),
    ("readPass", set!(read_pass, string)),
    ("readIPs", set!(read_ips, ip_list)),
    (
        "srtPublishPassphrase",
        set!(srt_publish_passphrase, srt_passphrase),
    ),
    (
        "srtReadPassphrase",
        set!(srt_read_passphrase, srt_passphrase),
    ),
    ("overridePublisher", set!(override_publisher, boolean)),
    (
        "publisherReconnectGrace",
        set!(publisher_reconnect_grace, |v| {
            let d = duration(v)?;
            if d > Duration::from_secs(300) {
                return Err("at most 5m".to_string());
            }
            Ok(d)
        }),
    ),
    ("maxReaders", set!(max_readers, |v| uint_in(v, 0, u32::MAX))),
    ("audioTranscode", set!(audio_transcode, boolean)),
    (
        "audioTranscodeBitrate",
        set!(audio_transcode_bitrate, |v| uint_in(v, 6_000, 510_000)),
    ),
    ("push", set!(push, push_list)),
    ("forward", set!(forward, forward_list)),
    (
        "useAbsoluteTimestamp",
        set!(use_absolute_timestamp, boolean),
    ),
    ("alwaysAvailable", set!(always_available, boolean)),
    (
        "alwaysAvailableTracks",
        set!(always_available_tracks, always_available_tracks),
    ),
    ("alwaysAvailableFile", set!(always_available_file, string)),
    ("rtspDemuxMpegts", set!(rtsp_demux_mpegts, boolean)),
    (
        "rtspRangeType",
        set!(rtsp_range_type, |v| one_of(
            v,
            &["", "clock", "npt", "smpte"]
        )),
    ),
    ("rtspRangeStart", set!(rtsp_range_start, string)),
    ("rtspScale", set!(rtsp_scale, rtsp_scale)),
    (
        "rtspUDPSourcePortRange",
        set!(rtsp_udp_source_port_range, port_range),
    ),
    ("rtpSDP", set!(rtp_sdp, string)),
    (
        "moqTransport",
        set!(moq_transport, |v| one_of(v, &["quic", "webtransport"])),
    ),
    ("whepBearerToken", set!(whep_bearer_token, string)),
    (
        "whepSTUNGatherTimeout",
        set!(whep_stun_gather_timeout, positive_duration),
    ),
    (
        "whepHandshakeTimeout",
        set!(whep_handshake_timeout, positive_duration),
    ),
    (
        "whepTrackGatherTimeout",
        set!(whep_track_gather_timeout, positive_duration),
    ),
    ("sourceRedirect", set!(source_redirect, redirect_target)),
    ("rtspTransport", set!(rtsp_transport, rtsp_transport)),
    ("sourceFingerprint", set!(source_fingerprint, fingerprint)),
    ("rtspAnyPort", set!(rtsp_any_port, boolean)),
    ("sourceOnDemand", set!(source_on_demand, boolean)),
    (
        "sourceOnDemandStartTimeout",
        set!(source_on_demand_start_timeout, duration),
    ),
    (
        "sourceOnDemandCloseAfter",
        set!(source_on_demand_close_after, duration),
    ),
    ("streamKeyRequired", set!(stream_key_required, boolean)),
    ("streamKeyInPath", set!(stream_key_in_path, boolean)),
    ("record", set_rec!(enabled, boolean)),
    ("recordPath", set_rec!(path, record_path)),
    (
        "recordFormat",
        set_rec!(format, |v| one_of(v, &["fmp4", "mpegts"])),
    ),
    (
        "recordPartDuration",
        set_rec!(part_duration, positive_duration),
    ),
    ("recordMaxPartSize", set_rec!(max_part_size, size)),
    (
        "recordSegmentDuration",
        set_rec!(segment_duration, positive_duration),
    ),
    ("recordDeleteAfter", set_rec!(delete_after, duration)),
    (
        "recordSync",
        set_rec!(sync, |v| one_of(v, &["part", "segment", "off"])),
    ),
    (
        "runOnRecordSegmentCreate",
        set_rec!(run_on_segment_create, string),
    ),
    (
        "runOnRecordSegmentComplete",
        set_rec!(run_on_segment_complete, string),
    ),
    ("runOnInit", set_hook!(run_on_init, string)),
    ("runOnInitRestart", set_hook!(run_on_init_restart, boolean)),
    ("runOnDemand", set_hook!(run_on_demand, string)),
    (
        "runOnDemandRestart",
        set_hook!(run_on_demand_restart, boolean),
    ),
    (
        "runOnDemandStartTimeout",
        set_hook!(run_on_demand_start_timeout, positive_duration),
    ),
    (
        "runOnDemandCloseAfter",
        set_hook!(run_on_demand_close_after, duration),
    ),
    ("runOnUnDemand", set_hook!(run_on_un_demand, string)),
    ("runOnAvailable", set_hook!(run_on_available, string)),
    (
        "runOnAvailableRestart",
        set_hook!(run_on_available_restart, boolean),
    ),
    ("runOnUnavailable", set_hook!(run_on_unavailable, string)),
    ("runOnOnline", set_hook!(run_on_online, string)),
    (
        "runOnOnlineRestart",
        set_hook!(run_on_online_restart, boolean),
    ),
    ("runOnOffline", set_hook!(run_on_offline, string)),
    ("runOnRead", set_hook!(run_on_read, string)),
    ("runOnReadRestart", set_hook!(run_on_read_restart, boolean)),
    ("runOnUnread", set_hook!(run_on_unread, string)),
    // MediaMTX's older spellings, still read: the same settings as runOnAvailable….
    ("runOnReady", set_hook!(run_on_available, string)),
    (
        "runOnReadyRestart",
        set_hook!(run_on_available_restart, boolean),
    ),
    ("runOnNotReady", set_hook!(run_on_unavailable, string)),
    ("disablePublisherOverride", |c, v| {
        c.override_publisher = !boolean(v)?;
        Ok(())
    }),
    ("sourceProtocol", set!(rtsp_transport, rtsp_transport)),
    ("sourceAnyPortEnable", set!(rtsp_any_port, boolean)),
    // Per-path UDP buffer sizes became the global udpReadBufferSize.
    ("rtspUDPReadBufferSize", |_, v| size_or_zero(v).map(drop)),
    ("mpegtsUDPReadBufferSize", |_, v| size_or_zero(v).map(drop)),
    ("rtpUDPReadBufferSize", |_, v| size_or_zero(v).map(drop)),
    // MediaMTX: "has no effect".
    ("playback", |_, v| boolean(v).map(drop)),
    // MediaMTX's deprecated `fallback`: RTSP readers of a path with no stream are sent there.
    ("fallback", set!(fallback, redirect_target)),
];

/// Older spellings in [`PATH_KEYS`] and what replaced them: the embedded defaults do not set
/// them, and a file that does gets a warning.
pub static DEPRECATED_PATH_KEYS: &[(&str, &str)] = &[
    ("runOnReady", "runOnAvailable"),
    ("runOnReadyRestart", "runOnAvailableRestart"),
    ("runOnNotReady", "runOnUnavailable"),
    ("disablePublisherOverride", "overridePublisher"),
    ("sourceProtocol", "rtspTransport"),
    ("sourceAnyPortEnable", "rtspAnyPort"),
    ("rtspUDPReadBufferSize", "udpReadBufferSize"),
    ("mpegtsUDPReadBufferSize", "udpReadBufferSize"),
    ("rtpUDPReadBufferSize", "udpReadBufferSize"),
    ("playback", "the playback server (it has no effect)"),
    ("fallback", "alwaysAvailable"),
];

/// `rpiCamera…`: the Raspberry Pi camera source's keys. Tidegate drives no camera hardware:
/// the keys are read (so a MediaMTX file runs) and have no effect; `source: rpiCamera` is
/// refused.
pub static RPI_CAMERA_KEYS: &[&str] = &[
    "rpiCameraCamID",
    "rpiCameraSecondary",
    "rpiCameraWidth",
    "rpiCameraHeight",
    "rpiCameraHFlip",
    "rpiCameraVFlip",
    "rpiCameraBrightness",
    "rpiCameraContrast",
    "rpiCameraSaturation",
    "rpiCameraSharpness",
    "rpiCameraExposure",
    "rpiCameraAWB",
    "rpiCameraAWBGains",
    "rpiCameraDenoise",
    "rpiCameraShutter",
    "rpiCameraMetering",
    "rpiCameraGain",
    "rpiCameraEV",
    "rpiCameraROI",
    "rpiCameraHDR",
    "rpiCameraTuningFile",
    "rpiCameraMode",
    "rpiCameraFPS",
    "rpiCameraAfMode",
    "rpiCameraAfRange",
    "rpiCameraAfSpeed",
    "rpiCameraLensPosition",
    "rpiCameraAfWindow",
    "rpiCameraFlickerPeriod",
    "rpiCameraTextOverlayEnable",
    "rpiCameraTextOverlay",
    "rpiCameraCodec",
    "rpiCameraIDRPeriod",
    "rpiCameraBitrate",
    "rpiCameraH264Profile",
    "rpiCameraH264Level",
    "rpiCameraMJPEGQuality",
    // older spellings
    "rpiCameraProfile",
    "rpiCameraLevel",
    "rpiCameraHardwareH264Profile",
    "rpiCameraHardwareH264Level",
    "rpiCameraSoftwareH264Profile",
    "rpiCameraSoftwareH264Level",
    "rpiCameraJPEGQuality",
];

/// Where a configuration error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name, or `environment`.
    pub origin: String,
    /// 1-based line in the file; 0 when not from a file.
    pub line: usize,
    /// The key, dotted for nested keys (`paths.cam1.maxReaders`); empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.origin, self.line)?;
        } else {
            write!(f, "{}: ", self.origin)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

struct Ctx<'a> {
    origin: &'a str,
    /// Deprecated spellings met, for the log.
    warnings: std::cell::RefCell<Vec<String>>,
}

impl<'a> Ctx<'a> {
    fn new(origin: &'a str) -> Ctx<'a> {
        Ctx {
            origin,
            warnings: Default::default(),
        }
    }

    fn deprecated(&self, line: usize, key: &str, table: &[(&str, &str)]) {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        if let Some((_, new)) = table.iter().find(|(old, _)| *old == leaf) {
            self.warnings.borrow_mut().push(format!(
                "{}:{line}: {key} is deprecated (MediaMTX's older name): use {new}",
                self.origin
            ));
        }
    }

    fn err(&self, line: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_string(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// A path as written: its name, line, and settings node (applied over `pathDefaults` at the end).
#[derive(Clone, Debug)]
struct RawPath {
    name: String,
    line: usize,
    node: Node,
    origin: String,
}

impl Config {
    /// Loads the embedded defaults, then `file` (name and text) if given, then environment
    /// overrides (`MTX_<KEY>`, then `TIDEGATE_<KEY>` pairs).
    pub fn load(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::blank();
        let mut paths = Vec::new();
        config.apply_file("embedded default", DEFAULT_CONFIG, &mut paths)?;
        if let Some((name, text)) = file {
            config.apply_file(name, text, &mut paths)?;
        }
        config.apply_env(env, &mut paths)?;
        config.paths = Vec::with_capacity(paths.len());
        for raw in &paths {
            let ctx = Ctx::new(&raw.origin);
            let key = format!("paths.{}", raw.name);
            let mut conf = config.path_defaults.clone();
            conf.name = raw.name.clone();
            apply_map(&ctx, &raw.node, &key, PATH_KEYS, &mut conf)?;
            config.warnings.append(&mut ctx.warnings.borrow_mut());
            if conf.source != "publisher" && !conf.hooks.run_on_demand.is_empty() {
                return Err(ctx.err(
                    raw.line,
                    &format!("{key}.runOnDemand"),
                    "can be used only when source is 'publisher' (a pulled source starts on demand with sourceOnDemand)",
                ));
            }
            let regex = raw.name.starts_with('~') || raw.name == "all_others" || raw.name == "all";
            if regex
                && conf.source != "publisher"
                && conf.source != "redirect"
                && !conf.source_on_demand
            {
                return Err(ctx.err(
                    raw.line,
                    &format!("{key}.sourceOnDemand"),
                    "a path with a regular expression (or all_others) and a pulled source must \
                     have sourceOnDemand: yes (the source is pulled per name when a reader asks; \
                     $G1, $G2… in the URL are the name's capture groups)",
                ));
            }
            if regex && !conf.hooks.run_on_init.is_empty() {
                return Err(ctx.err(
                    raw.line,
                    &format!("{key}.runOnInit"),
                    "a path with a regular expression (or all_others) does not support runOnInit: \
                     it runs when the server starts, before any name matches; use a path with an exact name",
                ));
            }
            config.paths.push(conf);
        }
        // Names and regexes are checked here so that the error can name the path's line.
        for (raw, conf) in paths.iter().zip(&config.paths) {
            PathMatcher::new(vec![conf.clone()]).map_err(|(_, e)| {
                Ctx::new(&raw.origin).err(raw.line, &format!("paths.{}", raw.name), e.to_string())
            })?;
        }
        config.resolve_auth()?;
        config.validate()?;
        Ok(config)
    }

    /// The per-path `publishUser`/`readUser`/`…IPs` keys, as in MediaMTX: when any path (or
    /// `pathDefaults`) has one, those keys decide publish and read on their path, and the
    /// users list keeps only playback for anyone and api/metrics/pprof from localhost. They
    /// cannot be combined with an `authInternalUsers` of one's own.
    fn resolve_auth(&mut self) -> Result<(), ConfigError> {
        let ctx = Ctx::new("configuration");
        self.auth.timeout = self.read_timeout;
        let legacy = |p: &PathConf| {
            !p.publish_user.is_empty()
                || !p.publish_pass.is_empty()
                || !p.publish_ips.is_empty()
                || !p.read_user.is_empty()
                || !p.read_pass.is_empty()
                || !p.read_ips.is_empty()
        };
        if legacy(&self.path_defaults) || self.paths.iter().any(legacy) {
            if self.auth.internal_users != tidegate_auth::default_users() {
                return Err(ctx.err(
                    0,
                    "authInternalUsers",
                    "cannot be used together with the per-path publishUser, publishPass, publishIPs, readUser, readPass, readIPs keys",
                ));
            }
            self.auth.path_credentials = true;
            self.auth.internal_users = tidegate_auth::default_users()
                .into_iter()
                .map(|mut u| {
                    u.permissions.retain(|p| {
                        p.action != tidegate_core::Action::Publish
                            && p.action != tidegate_core::Action::Read
                    });
                    u
                })
                .collect();
        }
        let a = &self.auth;
        if a.method == tidegate_auth::Method::Http && a.http_address.is_empty() {
            return Err(ctx.err(0, "authHTTPAddress", "must be set when authMethod is http"));
        }
        if a.method == tidegate_auth::Method::Jwt && a.jwt.jwks.is_empty() {
            return Err(ctx.err(0, "authJWTJWKS", "must be set when authMethod is jwt"));
        }
        Ok(())
    }

    /// Every field set to a placeholder; [`Config::load`] always overwrites them all with the
    /// embedded defaults (a test checks that the embedded file sets every key).
    fn blank() -> Config {
        let any: SocketAddr = ([0, 0, 0, 0], 0).into();
        Config {
            log_level: String::new(),
            log_format: LogFormat::Text,
            log_destinations: Vec::new(),
            log_structured: false,
            log_file: String::new(),
            syslog_prefix: String::new(),
            dump_packets: false,
            udp_max_payload_size: 0,
            udp_read_buffer_size: 0,
            read_timeout: Duration::ZERO,
            write_timeout: Duration::ZERO,
            drain_period: Duration::ZERO,
            write_queue_size: 0,
            max_connections: 0,
            max_connections_per_ip: 0,
            audio_coalesce: Duration::ZERO,
            api: false,
            api_address: any,
            api_encryption: false,
            api_server_key: String::new(),
            api_server_cert: String::new(),
            api_allow_origins: Vec::new(),
            api_trusted_proxies: Vec::new(),
            metrics: false,
            metrics_address: any,
            metrics_encryption: false,
            metrics_server_key: String::new(),
            metrics_server_cert: String::new(),
            metrics_allow_origins: Vec::new(),
            metrics_trusted_proxies: Vec::new(),
            pprof: false,
            pprof_address: any,
            pprof_encryption: false,
            pprof_server_key: String::new(),
            pprof_server_cert: String::new(),
            pprof_allow_origins: Vec::new(),
            pprof_trusted_proxies: Vec::new(),
            hls_trusted_proxies: Vec::new(),
            webrtc_trusted_proxies: Vec::new(),
            rtmp: false,
            rtmp_address: any,
            rtmp_encryption: Encryption::No,
            rtmps_address: any,
            rtmp_server_key: String::new(),
            rtmp_server_cert: String::new(),
            rtsp: false,
            rtsp_address: any,
            rtsp_encryption: Encryption::No,
            rtsps_address: any,
            rtsp_server_key: String::new(),
            rtsp_server_cert: String::new(),
            rtp_address: any,
            rtsp_transports: vec!["udp".into(), "multicast".into(), "tcp".into()],
            rtsp_auth_methods: vec!["basic".into(), "digest".into()],
            multicast_ip_range: ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(224, 1, 0, 0), 16)
                .unwrap_or_default(),
            multicast_rtp_port: 8002,
            multicast_rtcp_port: 8003,
            multicast_srtp_port: 8006,
            multicast_srtcp_port: 8007,
            rtsp_trusted_proxies: Vec::new(),
            rtmp_trusted_proxies: Vec::new(),
            rtcp_address: any,
            srtp_address: any,
            srtcp_address: any,
            hls: false,
            hls_address: any,
            hls_variant: HlsVariant::LowLatency,
            hls_segment_duration: Duration::ZERO,
            hls_part_duration: Duration::ZERO,
            hls_segment_count: 0,
            hls_allow_origins: Vec::new(),
            hls_segment_max_size: 0,
            hls_directory: String::new(),
            hls_cdn_secret: String::new(),
            hls_always_remux: false,
            hls_encryption: false,
            hls_server_key: String::new(),
            hls_server_cert: String::new(),
            hls_muxer_close_after: Duration::ZERO,
            webrtc: false,
            webrtc_address: any,
            webrtc_local_udp_address: Some(any),
            webrtc_local_tcp_address: None,
            webrtc_additional_hosts: Vec::new(),
            webrtc_allow_origins: Vec::new(),
            webrtc_encryption: false,
            webrtc_server_key: String::new(),
            webrtc_server_cert: String::new(),
            webrtc_ips_from_interfaces: true,
            webrtc_ips_from_interfaces_list: Vec::new(),
            webrtc_stun_gather_timeout: Duration::from_secs(5),
            webrtc_track_gather_timeout: Duration::from_secs(2),
            webrtc_handshake_timeout: Duration::from_secs(10),
            webrtc_ice_servers: Vec::new(),
            srt: false,
            srt_address: any,
            moq: false,
            moq_http2_address: any,
            moq_http3_address: any,
            moq_quic_address: any,
            moq_server_key: String::new(),
            moq_server_cert: String::new(),
            moq_allow_origins: Vec::new(),
            moq_trusted_proxies: Vec::new(),
            playback: false,
            playback_address: any,
            playback_encryption: false,
            playback_server_key: String::new(),
            playback_server_cert: String::new(),
            playback_allow_origins: Vec::new(),
            playback_trusted_proxies: Vec::new(),
            auth: tidegate_auth::AuthConfig {
                internal_users: Vec::new(),
                ..tidegate_auth::AuthConfig::default()
            },
            key_store: String::new(),
            run_on_connect: String::new(),
            run_on_connect_restart: false,
            run_on_disconnect: String::new(),
            webhooks: Vec::new(),
            path_defaults: PathConf::default(),
            paths: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn apply_file(
        &mut self,
        origin: &str,
        text: &str,
        paths: &mut Vec<RawPath>,
    ) -> Result<(), ConfigError> {
        let ctx = Ctx::new(origin);
        let root = yaml::parse(text).map_err(|e| ctx.err(e.line, "", e.message))?;
        let Some(root) = root else {
            return Ok(()); // an empty file changes nothing
        };
        let Value::Map(entries) = &root.value else {
            return Err(ctx.err(root.line, "", "the configuration must be a map of keys"));
        };
        for e in entries {
            match e.key.as_str() {
                "pathDefaults" => {
                    let mut defaults = self.path_defaults.clone();
                    apply_map(&ctx, &e.value, "pathDefaults", PATH_KEYS, &mut defaults)?;
                    self.path_defaults = defaults;
                }
                "paths" => {
                    // A file that has `paths` replaces the paths of the files before it.
                    paths.clear();
                    match &e.value.value {
                        Value::Map(items) => {
                            for p in items {
                                paths.push(RawPath {
                                    name: p.key.clone(),
                                    line: p.line,
                                    node: p.value.clone(),
                                    origin: origin.to_string(),
                                });
                            }
                        }
                        _ if e.value.is_null() => {}
                        _ => return Err(ctx.err(e.line, "paths", "expected a map of path names")),
                    }
                }
                key => {
                    ctx.deprecated(e.line, key, DEPRECATED_GLOBAL_KEYS);
                    let setter = find(GLOBAL_KEYS, key).ok_or_else(|| {
                        ctx.err(
                            e.line,
                            key,
                            unknown_key(key, GLOBAL_KEYS, &["pathDefaults", "paths"]),
                        )
                    })?;
                    setter(self, &e.value).map_err(|m| ctx.err(e.line, key, m))?;
                }
            }
        }
        self.warnings.append(&mut ctx.warnings.borrow_mut());
        Ok(())
    }

    /// `TIDEGATE_<KEY>` and MediaMTX's `MTX_<KEY>` overrides; `TIDEGATE_` wins where both set
    /// a key. A variable that names no setting is not an error (a deploy script's own
    /// `TIDEGATE_BIN` must not stop the server): it becomes a warning, with the nearest
    /// setting's name. A setting with a bad value is still an error.
    fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
        paths: &mut Vec<RawPath>,
    ) -> Result<(), ConfigError> {
        let ctx = Ctx::new("environment");
        let mut vars: Vec<(usize, String, String)> = env
            .into_iter()
            .filter_map(|(k, v)| {
                let rank = ENV_PREFIXES.iter().position(|p| k.starts_with(p))?;
                Some((rank, k, v))
            })
            .collect();
        // MTX_ first, then TIDEGATE_, so that TIDEGATE_ wins; by name within each.
        vars.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (rank, var, text) in vars {
            let node = Node {
                value: Value::Scalar(text, false),
                line: 0,
            };
            let prefix = ENV_PREFIXES[rank];
            let rest = &var[prefix.len()..];
            if let Some(key) = rest.strip_prefix("PATHDEFAULTS_") {
                let Some((name, setter)) = find_env(PATH_KEYS, key) else {
                    self.warn_env(&var, prefix, "PATHDEFAULTS_", key, PATH_KEYS);
                    continue;
                };
                setter(&mut self.path_defaults, &node)
                    .map_err(|m| ctx.err(0, &var, format!("(pathDefaults.{name}) {m}")))?;
            } else if let Some(rest) = rest.strip_prefix("PATHS_") {
                // <PREFIX>PATHS_<NAME>_<KEY>: NAME matches a configured path case-insensitively;
                // with none, a path of that name (lower case, up to the first `_`) is created,
                // as MediaMTX does.
                let found = paths.iter().enumerate().find_map(|(i, p)| {
                    let upper = p.name.to_ascii_uppercase();
                    let key = rest.strip_prefix(&upper)?.strip_prefix('_')?;
                    let (name, _) = find_env(PATH_KEYS, key)?;
                    Some((i, name))
                });
                let (index, key) = match found {
                    Some(f) => f,
                    None => {
                        let (name, key) = rest.split_once('_').unwrap_or((rest, ""));
                        let Some((key, _)) = find_env(PATH_KEYS, key).filter(|_| !name.is_empty())
                        else {
                            let scope = format!("PATHS_{name}_");
                            self.warn_env(&var, prefix, &scope, key, PATH_KEYS);
                            continue;
                        };
                        paths.push(RawPath {
                            name: name.to_ascii_lowercase(),
                            line: 0,
                            node: Node {
                                value: Value::Map(Vec::new()),
                                line: 0,
                            },
                            origin: "environment".to_string(),
                        });
                        (paths.len() - 1, key)
                    }
                };
                set_in_map(&mut paths[index].node, key, node);
            } else {
                let Some((name, setter)) = find_env(GLOBAL_KEYS, rest) else {
                    self.warn_env(&var, prefix, "", rest, GLOBAL_KEYS);
                    continue;
                };
                setter(self, &node).map_err(|m| ctx.err(0, &var, format!("({name}) {m}")))?;
            }
        }
        Ok(())
    }

    /// Records that `var` names no setting, with the nearest one's variable name if any.
    fn warn_env<T>(
        &mut self,
        var: &str,
        prefix: &str,
        scope: &str,
        key: &str,
        table: &[(&'static str, Setter<T>)],
    ) {
        let upper: Vec<String> = table.iter().map(|(k, _)| k.to_ascii_uppercase()).collect();
        let hint = closest(key, upper.iter().map(String::as_str))
            .map(|k| format!(" (did you mean {prefix}{scope}{k}?)"))
            .unwrap_or_default();
        self.warnings.push(format!(
            "environment: {var} is not a setting{hint}; ignored"
        ));
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let ctx = Ctx::new("configuration");
        if self.hls_part_duration >= self.hls_segment_duration {
            return Err(ctx.err(
                0,
                "hlsPartDuration",
                "must be shorter than hlsSegmentDuration",
            ));
        }
        if self.hls_part_duration < Duration::from_millis(50) {
            return Err(ctx.err(0, "hlsPartDuration", "must be at least 50ms"));
        }
        if self.hls_segment_max_size < 64 * 1024 {
            return Err(ctx.err(0, "hlsSegmentMaxSize", "must be at least 64K"));
        }
        for p in std::iter::once(&self.path_defaults).chain(&self.paths) {
            let key = |k: &str| {
                if p.name.is_empty() {
                    format!("pathDefaults.{k}")
                } else {
                    format!("paths.{}.{k}", p.name)
                }
            };
            match tidegate_rtsp::client::PlayOptions::new(
                &p.rtsp_range_type,
                &p.rtsp_range_start,
                &p.rtsp_scale,
                p.rtsp_udp_source_port_range,
            ) {
                Err(e) => {
                    let k = if e.starts_with("rtspRangeStart") {
                        "rtspRangeStart"
                    } else {
                        "rtspRangeType"
                    };
                    return Err(ctx.err(0, &key(k), e));
                }
                Ok(play) if play.needs_own_client() && p.rtsp_transport == "tcp" => {
                    return Err(ctx.err(
                        0,
                        &key("rtspTransport"),
                        "rtspRangeType, rtspScale and rtspUDPSourcePortRange are sent by \
                         Tidegate's own RTSP client, which reads over UDP: use rtspTransport \
                         udp or automatic with them",
                    ));
                }
                Ok(_) => {}
            }
            if p.rtsp_udp_source_port_range.0 > p.rtsp_udp_source_port_range.1
                || p.rtsp_udp_source_port_range.1 - p.rtsp_udp_source_port_range.0 < 2
            {
                return Err(ctx.err(
                    0,
                    &key("rtspUDPSourcePortRange"),
                    "must be [low, high] with room for a port pair",
                ));
            }
            if p.always_available {
                let why = if crate::relays::is_template(&p.name) {
                    Some("'alwaysAvailable' cannot be used in a path with a regular expression (or path 'all_others')".to_string())
                } else if p.source_on_demand {
                    Some("'sourceOnDemand' is not compatible with 'alwaysAvailable'".into())
                } else if !p.hooks.run_on_demand.is_empty() || !p.hooks.run_on_un_demand.is_empty()
                {
                    Some(
                        "'runOnDemand' and 'runOnUnDemand' cannot be used with 'alwaysAvailable'"
                            .into(),
                    )
                } else if p.use_absolute_timestamp {
                    Some("'useAbsoluteTimestamp' cannot be used with 'alwaysAvailable'".into())
                } else if !p.always_available_file.is_empty() {
                    if !p.always_available_tracks.is_empty() {
                        Some("'alwaysAvailableFile' and 'alwaysAvailableTracks' cannot be used together".into())
                    } else {
                        crate::offline::OfflineMedia::load(&p.always_available_file)
                            .err()
                            .map(|e| format!("invalid 'alwaysAvailableFile': {e}"))
                    }
                } else if p.always_available_tracks.is_empty() {
                    Some("'alwaysAvailableTracks' must contain at least one track".into())
                } else {
                    crate::offline::OfflineMedia::generated(&p.always_available_tracks).err()
                };
                if let Some(why) = why {
                    return Err(ctx.err(0, &key("alwaysAvailable"), why));
                }
            }
            if p.forward.iter().any(|d| {
                !d.dest_fingerprint.is_empty()
                    && !d.dest.starts_with("rtsps://")
                    && !d.dest.starts_with("whips://")
            }) {
                return Err(ctx.err(
                    0,
                    &key("forward"),
                    "destFingerprint is built for rtsps:// and whips:// destinations only: \
                     rtmps:// ones are checked against the Web PKI roots",
                ));
            }
            if let Some(d) = p.forward.iter().find(|d| {
                ![
                    "rtmp://", "rtmps://", "srt://", "rtsp://", "rtsps://", "whip://", "whips://",
                ]
                .iter()
                .any(|s| d.dest.starts_with(s))
            }) {
                return Err(ctx.err(
                    0,
                    &key("forward"),
                    format!(
                        "Tidegate does not forward to {}: rtmp(s)://, rtsp(s)://, srt:// and \
                         whip(s):// destinations",
                        d.dest.split("://").next().unwrap_or_default()
                    ),
                ));
            }
            if p.source == "redirect" && p.source_redirect.is_empty() {
                return Err(ctx.err(
                    0,
                    &key("sourceRedirect"),
                    "must be set when source is redirect",
                ));
            }
        }
        for p in std::iter::once(&self.path_defaults).chain(&self.paths) {
            let r = &p.record;
            let key = if p.name.is_empty() {
                "pathDefaults.recordDeleteAfter".to_string()
            } else {
                format!("paths.{}.recordDeleteAfter", p.name)
            };
            if !r.delete_after.is_zero() && r.delete_after < r.segment_duration {
                return Err(ctx.err(0, &key, "must be 0s or at least recordSegmentDuration"));
            }
        }
        Ok(())
    }

    /// The path matcher for the registry.
    pub fn matcher(&self) -> PathMatcher {
        // Every path was checked in `load`, so this cannot fail; fall back to no paths if the
        // impossible happens rather than panic.
        PathMatcher::new(self.paths.clone()).unwrap_or_default()
    }
}

/// Prefixes of environment overrides, the stronger first: ours, then MediaMTX's.
const ENV_PREFIXES: [&str; 2] = ["TIDEGATE_", "MTX_"];

fn find<T>(table: &[(&'static str, Setter<T>)], key: &str) -> Option<Setter<T>> {
    table.iter().find(|(k, _)| *k == key).map(|(_, s)| *s)
}

fn find_env<T>(
    table: &[(&'static str, Setter<T>)],
    upper: &str,
) -> Option<(&'static str, Setter<T>)> {
    table
        .iter()
        .find(|(k, _)| k.to_ascii_uppercase() == upper)
        .copied()
}

fn apply_map<T>(
    ctx: &Ctx,
    node: &Node,
    prefix: &str,
    table: &[(&'static str, Setter<T>)],
    target: &mut T,
) -> Result<(), ConfigError> {
    if node.is_null() {
        return Ok(());
    }
    let Value::Map(entries) = &node.value else {
        return Err(ctx.err(node.line, prefix, "expected a map of settings"));
    };
    for e in entries {
        let key = format!("{prefix}.{}", e.key);
        if RPI_CAMERA_KEYS.contains(&e.key.as_str()) {
            continue;
        }
        ctx.deprecated(e.line, &key, DEPRECATED_PATH_KEYS);
        let setter = find(table, &e.key)
            .ok_or_else(|| ctx.err(e.line, &key, unknown_key(&e.key, table, &[])))?;
        setter(target, &e.value).map_err(|m| ctx.err(e.line, &key, m))?;
    }
    Ok(())
}

fn set_in_map(node: &mut Node, key: &str, value: Node) {
    if !matches!(node.value, Value::Map(_)) {
        node.value = Value::Map(Vec::new());
    }
    if let Value::Map(entries) = &mut node.value {
        entries.retain(|e| e.key != key);
        entries.push(yaml::Entry {
            key: key.to_string(),
            line: 0,
            value,
        });
    }
}

fn unknown_key<T>(key: &str, table: &[(&'static str, Setter<T>)], extra: &[&str]) -> String {
    let names = table.iter().map(|(k, _)| *k).chain(extra.iter().copied());
    match closest(key, names) {
        Some(s) => format!("unknown key (did you mean '{s}'?)"),
        None => "unknown key".to_string(),
    }
}

/// The known key nearest to a mistyped one, if it is near enough to be a typo.
fn closest<'a>(key: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    names
        .map(|n| (edit_distance(&lower, &n.to_ascii_lowercase()), n))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
