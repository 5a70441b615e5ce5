//! The `tidegate` binary's library: configuration, wiring of protocol servers onto the core
//! path registry, the control API and metrics, and orderly shutdown.

pub mod api;
pub mod api_keys;
pub mod cli;
pub mod config;
pub mod config_api;
pub mod console;
pub mod guard;
pub mod h1;
pub mod hls_source;
mod hooks;
pub mod http;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod offline;
pub mod pprof;
pub mod relays;
pub mod reload;
pub mod tls;
pub mod ts_source;
pub mod upgrade;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidegate_core::{PathManager, StreamConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    paths: PathManager,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    api_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    pprof_addr: Option<SocketAddr>,
    rtmp_addr: Option<SocketAddr>,
    rtmps_addr: Option<SocketAddr>,
    srt_addr: Option<SocketAddr>,
    hls_addr: Option<SocketAddr>,
    rtsp_addr: Option<SocketAddr>,
    rtsp_udp_ports: Option<(u16, u16)>,
    rtsps_addr: Option<SocketAddr>,
    webrtc_addr: Option<SocketAddr>,
    webrtc_udp_addr: Option<SocketAddr>,
    webrtc_tcp_addr: Option<SocketAddr>,
    playback_addr: Option<SocketAddr>,
    recorder: tidegate_record::Recorder,
    reloader: Arc<reload::Reloader>,
    /// The HLS listener's router, which an upgrade also serves to the new process.
    hls_router: Option<axum::Router>,
}

/// The configured exact-name paths (for `runOnInit`).
fn exact_paths(config: &Config) -> Vec<tidegate_core::PathConf> {
    config
        .paths
        .iter()
        .filter(|p| !p.name.starts_with('~') && p.name != "all_others" && p.name != "all")
        .cloned()
        .collect()
}

/// How long shutdown waits for sessions to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    tidegate_core::handover::tcp(what, addr).map_err(|source| StartError::Bind {
        what,
        addr,
        source,
    })
}

/// The layers every HTTP surface but HLS and WebRTC takes: the permission `action` asked of
/// the auth manager (named `protocol` in logs and to an auth server), then CORS for `origins`.
fn guarded(
    router: axum::Router,
    paths: &PathManager,
    action: tidegate_core::Action,
    protocol: &'static str,
    origins: &[String],
) -> axum::Router {
    router
        .layer(axum::middleware::from_fn_with_state(
            guard::Guard {
                paths: paths.clone(),
                action,
                protocol,
            },
            guard::require,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(origins.to_vec()),
            http::cors,
        ))
}

/// Serves RTSP(S) on `listener`, movable by a reload (its UDP sockets stay where they are).
fn serve_rtsp(
    movable: &listeners::Listeners,
    (key, name, configured): (&'static str, &'static str, SocketAddr),
    listener: TcpListener,
    (tls, udp, conns): (
        Option<tokio_rustls::TlsAcceptor>,
        Option<Arc<tidegate_rtsp::Udp>>,
        Arc<tidegate_rtsp::RtspConns>,
    ),
    (paths, rtsp_config): (PathManager, tidegate_rtsp::RtspConfig),
    (shutdown, tasks): (&CancellationToken, &TaskTracker),
) {
    let (sd, t) = (shutdown.clone(), tasks.clone());
    let first = std::sync::atomic::AtomicBool::new(true);
    movable.start(
        key,
        name,
        configured,
        listener,
        shutdown,
        Box::new(move |listener, stop| {
            t.spawn(tidegate_rtsp::serve(
                tidegate_rtsp::RtspListener {
                    listener,
                    tls: tls.clone(),
                    udp: udp.clone(),
                    conns: conns.clone(),
                    stop,
                    receive_udp: first.swap(false, std::sync::atomic::Ordering::Relaxed),
                },
                paths.clone(),
                rtsp_config.clone(),
                sd.clone(),
                t.clone(),
            ))
        }),
    );
}

/// Serves `router` over HTTP(S) on `listener`, movable by a reload under `key`.
fn serve_http(
    movable: &listeners::Listeners,
    (key, name): (&'static str, &'static str),
    configured: SocketAddr,
    listener: TcpListener,
    router: axum::Router,
    (tls, trusted, header_timeout, hls_lane): (
        Option<tokio_rustls::TlsAcceptor>,
        Vec<ipnet::IpNet>,
        Duration,
        Option<tidegate_hls::Hls>,
    ),
    (shutdown, tasks): (&CancellationToken, &TaskTracker),
) {
    let (sd, t) = (shutdown.clone(), tasks.clone());
    let trusted = Arc::new(trusted);
    movable.start(
        key,
        name,
        configured,
        listener,
        shutdown,
        Box::new(move |l, stop| {
            t.spawn(http::serve(
                name,
                l,
                router.clone(),
                http::Options {
                    tls: tls.clone(),
                    trusted_proxies: trusted.clone(),
                    stop: Some(stop),
                    header_timeout,
                    hls_lane: hls_lane.clone(),
                },
                sd.clone(),
                t.clone(),
            ))
        }),
    );
}

/// The TLS acceptor (ALPN `h2`, `http/1.1`) of an HTTPS listener, when `enabled`; a bad key
/// or certificate stops start-up, naming `what`.
fn https(
    enabled: bool,
    key: &str,
    cert: &str,
    what: &'static str,
    certs: &mut Vec<(&'static str, Arc<tls::CertStore>)>,
) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    if !enabled {
        return Ok(None);
    }
    let (acceptor, store) = tls::acceptor_with_alpn(key, cert, &[b"h2", b"http/1.1"])
        .map_err(|message| StartError::Config { key: what, message })?;
    certs.push((what, store));
    Ok(Some(acceptor))
}

/// The key and certificate files a listener's TLS comes from, by the keys' names.
fn cert_files<'a>(c: &'a Config, what: &str) -> Option<(&'a str, &'a str)> {
    Some(match what {
        "rtmpServerKey/rtmpServerCert" => (&c.rtmp_server_key, &c.rtmp_server_cert),
        "rtspServerKey/rtspServerCert" => (&c.rtsp_server_key, &c.rtsp_server_cert),
        "webrtcServerKey/webrtcServerCert" => (&c.webrtc_server_key, &c.webrtc_server_cert),
        "hlsServerKey/hlsServerCert" => (&c.hls_server_key, &c.hls_server_cert),
        "apiServerKey/apiServerCert" => (&c.api_server_key, &c.api_server_cert),
        "metricsServerKey/metricsServerCert" => (&c.metrics_server_key, &c.metrics_server_cert),
        "playbackServerKey/playbackServerCert" => (&c.playback_server_key, &c.playback_server_cert),
        _ => return None,
    })
}

/// The RTP/RTCP (or SRTP/SRTCP) socket pair of an RTSP listener, when `enabled`.
async fn bind_udp(
    enabled: bool,
    what: &'static str,
    rtp: SocketAddr,
    rtcp: SocketAddr,
    dump_prefix: &'static str,
) -> Result<Option<Arc<tidegate_rtsp::Udp>>, StartError> {
    if !enabled {
        return Ok(None);
    }
    tidegate_rtsp::Udp::bind(rtp, rtcp, dump_prefix)
        .await
        .map(Some)
        .map_err(|source| StartError::Bind {
            what,
            addr: rtp,
            source,
        })
}

impl Server {
    /// Binds every enabled listener and starts serving. All listeners are bound before any is
    /// served, so a port conflict stops start-up with nothing half-started.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        // Contained third-party panics print no message per input.
        tidegate_core::guard::install_panic_hook();
        // `dumpPackets`: into the working directory, as MediaMTX.
        tidegate_core::dump::configure(config.dump_packets, std::path::PathBuf::from("."));
        tidegate_core::guard::set_connection_limits(
            u64::from(config.max_connections),
            u64::from(config.max_connections_per_ip),
        );
        tidegate_core::udp::configure(
            config.udp_read_buffer_size as usize,
            config.udp_max_payload_size as usize,
        );
        if config.moq {
            tracing::warn!(
                "moq: Media over QUIC is not built in Tidegate yet: no MoQ listener is opened \
                 (set moq: no to silence this)"
            );
        }
        let paths = PathManager::new(
            config.matcher(),
            StreamConfig {
                ring_capacity: config.write_queue_size as usize,
                audio_coalesce: config.audio_coalesce,
                ..StreamConfig::default()
            },
        );
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let keys = tidegate_auth::keys::KeyStore::open(&config.key_store)
            .map(Arc::new)
            .map_err(|message| StartError::Config {
                key: "keyStore",
                message: message.to_string(),
            })?;
        let auth = tidegate_auth::AuthManager::with_keys(config.auth.clone(), Some(keys));
        paths.set_authenticator(auth.clone());

        // TLS material is loaded before anything is bound, so a bad file stops start-up cleanly.
        let mut certs = Vec::new();
        let rtmps_tls = match config.rtmp && config.rtmp_encryption != config::Encryption::No {
            true => {
                let what = "rtmpServerKey/rtmpServerCert";
                let (acceptor, store) =
                    tls::acceptor(&config.rtmp_server_key, &config.rtmp_server_cert)
                        .map_err(|message| StartError::Config { key: what, message })?;
                certs.push((what, store));
                Some(acceptor)
            }
            false => None,
        };
        let webrtc_tls = https(
            config.webrtc && config.webrtc_encryption,
            &config.webrtc_server_key,
            &config.webrtc_server_cert,
            "webrtcServerKey/webrtcServerCert",
            &mut certs,
        )?;
        let hls_tls = https(
            config.hls && config.hls_encryption,
            &config.hls_server_key,
            &config.hls_server_cert,
            "hlsServerKey/hlsServerCert",
            &mut certs,
        )?;
        let api_tls = https(
            config.api && config.api_encryption,
            &config.api_server_key,
            &config.api_server_cert,
            "apiServerKey/apiServerCert",
            &mut certs,
        )?;
        let metrics_tls = https(
            config.metrics && config.metrics_encryption,
            &config.metrics_server_key,
            &config.metrics_server_cert,
            "metricsServerKey/metricsServerCert",
            &mut certs,
        )?;
        let playback_tls = https(
            config.playback && config.playback_encryption,
            &config.playback_server_key,
            &config.playback_server_cert,
            "playbackServerKey/playbackServerCert",
            &mut certs,
        )?;
        let playback = match config.playback {
            true => Some(bind("playback", config.playback_address).await?),
            false => None,
        };
        let playback_addr = playback.as_ref().and_then(|l| l.local_addr().ok());
        let api = match config.api {
            true => Some(bind("API", config.api_address).await?),
            false => None,
        };
        let metrics = match config.metrics {
            true => Some(bind("metrics", config.metrics_address).await?),
            false => None,
        };
        let pprof_tls = https(
            config.pprof && config.pprof_encryption,
            &config.pprof_server_key,
            &config.pprof_server_cert,
            "pprofServerKey/pprofServerCert",
            &mut certs,
        )?;
        let pprof_listener = match config.pprof {
            true => Some(bind("pprof", config.pprof_address).await?),
            false => None,
        };
        let pprof_addr = pprof_listener.as_ref().and_then(|l| l.local_addr().ok());
        let rtmp_plain = config.rtmp && config.rtmp_encryption != config::Encryption::Strict;
        let rtmp = match rtmp_plain {
            true => Some(bind("RTMP", config.rtmp_address).await?),
            false => None,
        };
        let rtmps = match rtmps_tls {
            Some(_) => Some(bind("RTMPS", config.rtmps_address).await?),
            None => None,
        };
        let srt = match config.srt {
            true => Some(
                tidegate_srt::bind(config.srt_address)
                    .await
                    .map_err(|source| StartError::Bind {
                        what: "SRT",
                        addr: config.srt_address,
                        source,
                    })?,
            ),
            false => None,
        };
        let hls_listener = match config.hls {
            true => Some(bind("HLS", config.hls_address).await?),
            false => None,
        };
        let hls_addr = hls_listener.as_ref().and_then(|l| l.local_addr().ok());
        let rtsp_listener =
            match config.rtsp && config.rtsp_encryption != config::Encryption::Strict {
                true => Some(bind("RTSP", config.rtsp_address).await?),
                false => None,
            };
        let rtsp_addr = rtsp_listener.as_ref().and_then(|l| l.local_addr().ok());
        let rtsps_tls = match config.rtsp && config.rtsp_encryption != config::Encryption::No {
            true => {
                let what = "rtspServerKey/rtspServerCert";
                let (acceptor, store) =
                    tls::acceptor(&config.rtsp_server_key, &config.rtsp_server_cert)
                        .map_err(|message| StartError::Config { key: what, message })?;
                certs.push((what, store));
                Some(acceptor)
            }
            false => None,
        };
        let rtsps_listener = match rtsps_tls {
            Some(_) => Some(bind("RTSPS", config.rtsps_address).await?),
            None => None,
        };
        let rtsps_addr = rtsps_listener.as_ref().and_then(|l| l.local_addr().ok());
        let udp = config.rtsp_transports.iter().any(|t| t == "udp");
        let rtsp_udp = bind_udp(
            config.rtsp && udp,
            "RTP/RTCP (UDP)",
            config.rtp_address,
            config.rtcp_address,
            "rtsp_server_packet_conn",
        )
        .await?;
        let rtsp_udp_ports = rtsp_udp.as_ref().map(|u| u.ports());
        // RTSPS over UDP: SRTP and SRTCP on their own ports, as MediaMTX.
        let srtp_udp = bind_udp(
            rtsps_listener.is_some() && udp,
            "SRTP/SRTCP (UDP)",
            config.srtp_address,
            config.srtcp_address,
            "rtsps_server_packet_conn",
        )
        .await?;
        let srt_addr = srt.as_ref().map(|s| s.local);
        let rtmp_addr = rtmp.as_ref().and_then(|l| l.local_addr().ok());
        let rtmps_addr = rtmps.as_ref().and_then(|l| l.local_addr().ok());
        let api_addr = api.as_ref().and_then(|l| l.local_addr().ok());
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());

        let rtmp_config = tidegate_rtmp::RtmpConfig {
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            trusted_proxies: Arc::new(config.rtmp_trusted_proxies.clone()),
        };
        let rtmp_conns = Arc::new(tidegate_rtmp::ConnRegistry::default());
        let rtmps_conns = Arc::new(tidegate_rtmp::ConnRegistry::default());
        let srt_conns = Arc::new(tidegate_core::ConnRegistry::<tidegate_srt::SrtStats>::default());
        let webrtc_listener = match config.webrtc {
            true => Some(bind("WebRTC", config.webrtc_address).await?),
            false => None,
        };
        let webrtc_addr = webrtc_listener.as_ref().and_then(|l| l.local_addr().ok());
        let webrtc = match config.webrtc {
            true => Some(
                tidegate_webrtc::WebRtc::start(
                    paths.clone(),
                    config.webrtc_local_udp_address,
                    config.webrtc_local_tcp_address,
                    tidegate_webrtc::WebRtcConfig {
                        additional_hosts: config.webrtc_additional_hosts.clone(),
                        ips_from_interfaces: config.webrtc_ips_from_interfaces,
                        handshake_timeout: config.webrtc_handshake_timeout,
                        allow_origins: config.webrtc_allow_origins.clone(),
                        interfaces: config.webrtc_ips_from_interfaces_list.clone(),
                        ice_servers: config.webrtc_ice_servers.clone(),
                    },
                    shutdown.clone(),
                    tasks.clone(),
                )
                .await
                .map_err(|e| match e {
                    tidegate_webrtc::WebRtcError::Bind(addr, source) => StartError::Bind {
                        what: "WebRTC UDP/TCP",
                        addr,
                        source,
                    },
                })?,
            ),
            false => None,
        };
        let webrtc_udp_addr = webrtc.as_ref().and_then(|w| w.udp_addr());
        let webrtc_tcp_addr = webrtc.as_ref().and_then(|w| w.tcp_addr());
        let webrtc_sessions = webrtc.as_ref().map(|w| w.sessions()).unwrap_or_default();
        let rtsp_conns = Arc::new(tidegate_rtsp::RtspConns::default());
        let rtsps_conns = Arc::new(tidegate_rtsp::RtspConns::default());
        let relays = relays::start(&config, &paths, &tasks, &shutdown);
        // Every template a path may record with: their roots are indexed for playback.
        let mut templates = Vec::new();
        for c in std::iter::once(&config.path_defaults).chain(config.paths.iter()) {
            if let Ok(t) = tidegate_record::Template::new(&c.record.path) {
                if !templates
                    .iter()
                    .any(|x: &tidegate_record::Template| x.raw() == t.raw())
                {
                    templates.push(t);
                }
            }
        }
        let recorder = tidegate_record::Recorder::start(
            paths.clone(),
            templates,
            shutdown.clone(),
            tasks.clone(),
        );
        let runner = hooks::Runner::new(tasks.clone(), shutdown.clone());
        hooks::record_hooks(
            &recorder,
            runner.clone(),
            &paths,
            rtsp_addr.map(|a| a.port()),
            &tasks,
            &shutdown,
        );
        let (conn_tx, conn_rx) = tokio::sync::broadcast::channel(4096);
        rtmp_conns.observe("rtmpConn", conn_tx.clone());
        rtmps_conns.observe("rtmpsConn", conn_tx.clone());
        srt_conns.observe("srtConn", conn_tx.clone());
        rtsp_conns.observe("rtspConn", conn_tx.clone());
        rtsps_conns.observe("rtspsConn", conn_tx.clone());
        webrtc_sessions.observe("webRTCSession", conn_tx.clone());
        let conn_lists: Vec<(&'static str, Arc<dyn hooks::ConnIds>)> = vec![
            ("rtmpConn", rtmp_conns.clone()),
            ("rtmpsConn", rtmps_conns.clone()),
            ("srtConn", srt_conns.clone()),
            ("rtspConn", rtsp_conns.clone()),
            ("rtspsConn", rtsps_conns.clone()),
            ("webRTCSession", webrtc_sessions.clone()),
        ];
        let webhooks = webhooks::start(
            config.webhooks.clone(),
            paths.events(),
            conn_tx.subscribe(),
            &recorder,
            &tasks,
            &shutdown,
        );
        let hooks_handle = hooks::start(
            runner.clone(),
            hooks::GlobalHooks {
                run_on_connect: config.run_on_connect.clone(),
                run_on_connect_restart: config.run_on_connect_restart,
                run_on_disconnect: config.run_on_disconnect.clone(),
            },
            exact_paths(&config),
            paths.clone(),
            conn_rx,
            conn_lists,
            rtsp_addr.map(|a| a.port()),
            &tasks,
            shutdown.clone(),
        );
        let movable = Arc::new(listeners::Listeners::default());
        if let (Some(listener), Some(addr)) = (playback, playback_addr) {
            tracing::info!(
                "[playback] listener opened on {addr} ({})",
                if playback_tls.is_some() {
                    "HTTPS"
                } else {
                    "HTTP"
                }
            );
            let router = tidegate_record::playback::router(tidegate_record::playback::Playback {
                index: recorder.index().clone(),
            });
            let router = guarded(
                router,
                &paths,
                tidegate_core::Action::Playback,
                "playback",
                &config.playback_allow_origins,
            );
            serve_http(
                &movable,
                ("playbackAddress", "playback"),
                config.playback_address,
                listener,
                router,
                (
                    playback_tls,
                    config.playback_trusted_proxies.clone(),
                    config.read_timeout,
                    None,
                ),
                (&shutdown, &tasks),
            );
        }
        let hls = tidegate_hls::Hls::new(
            paths.clone(),
            tidegate_hls::HlsConfig {
                variant: match config.hls_variant {
                    config::HlsVariant::LowLatency => tidegate_hls::Variant::LowLatency,
                    config::HlsVariant::Fmp4 => tidegate_hls::Variant::Fmp4,
                    config::HlsVariant::Mpegts => tidegate_hls::Variant::MpegTs,
                },
                segment_duration: config.hls_segment_duration,
                part_duration: config.hls_part_duration,
                segment_count: config.hls_segment_count,
                always_remux: config.hls && config.hls_always_remux,
                muxer_close_after: config.hls_muxer_close_after,
                allow_origins: config.hls_allow_origins.clone(),
                segment_max_size: config.hls_segment_max_size,
                cdn_secret: config.hls_cdn_secret.clone(),
                directory: config.hls_directory.clone(),
            },
            shutdown.clone(),
            tasks.clone(),
        );
        let reloader = Arc::new(reload::Reloader {
            listeners: movable.clone(),
            current: std::sync::Mutex::new((config.clone(), None)),
            paths: paths.clone(),
            relays: relays.clone(),
            hooks: hooks_handle,
            auth: auth.clone(),
            certs,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            serial: tokio::sync::Mutex::new(()),
            api: tokio::sync::Mutex::new(()),
            source: std::sync::Mutex::new((None, Vec::new())),
            seen: std::sync::Mutex::new(None),
        });
        let api_state = api::ApiState {
            paths: paths.clone(),
            rtmp_conns: rtmp_conns.clone(),
            rtmps_conns: rtmps_conns.clone(),
            srt_conns: srt_conns.clone(),
            relays: relays.clone(),
            hls: hls.clone(),
            rtsp_conns: rtsp_conns.clone(),
            rtsps_conns: rtsps_conns.clone(),
            webrtc_sessions: webrtc_sessions.clone(),
            auth: auth.clone(),
            recorder: recorder.clone(),
            webhooks: webhooks.clone(),
            started: std::time::SystemTime::now(),
        };
        if let (Some(listener), Some(addr)) = (api, api_addr) {
            tracing::info!(
                "[API] listener opened on {addr} ({})",
                if api_tls.is_some() { "HTTPS" } else { "HTTP" }
            );
            let mut listeners = console::Listeners::new();
            let scheme = |tls: bool, plain: &'static str, secure: &'static str| {
                if tls {
                    secure
                } else {
                    plain
                }
            };
            for (name, addr, s) in [
                ("hls", hls_addr, scheme(hls_tls.is_some(), "http", "https")),
                (
                    "webrtc",
                    webrtc_addr,
                    scheme(webrtc_tls.is_some(), "http", "https"),
                ),
                ("rtmp", rtmp_addr, "rtmp"),
                ("rtmps", rtmps_addr, "rtmps"),
                ("rtsp", rtsp_addr, "rtsp"),
                ("rtsps", rtsps_addr, "rtsps"),
                ("srt", srt_addr, "srt"),
            ] {
                if let Some(a) = addr {
                    listeners.insert(
                        name,
                        console::Listener {
                            port: a.port(),
                            scheme: s,
                        },
                    );
                }
            }
            let console = console::Console::start(
                paths.clone(),
                webrtc.clone(),
                listeners,
                &tasks,
                shutdown.clone(),
            );
            let router = api::router(api_state.clone())
                .merge(config_api::router(reloader.clone()))
                .merge(console.router());
            let router = guarded(
                router,
                &paths,
                tidegate_core::Action::Api,
                "api",
                &config.api_allow_origins,
            )
            .merge(api::health_router());
            serve_http(
                &movable,
                ("apiAddress", "API"),
                config.api_address,
                listener,
                router,
                (
                    api_tls,
                    config.api_trusted_proxies.clone(),
                    config.read_timeout,
                    None,
                ),
                (&shutdown, &tasks),
            );
        }
        if let (Some(listener), Some(addr)) = (metrics, metrics_addr) {
            tracing::info!(
                "[metrics] listener opened on {addr} ({})",
                if metrics_tls.is_some() {
                    "HTTPS"
                } else {
                    "HTTP"
                }
            );
            let router = metrics::router(
                api_state.clone(),
                config.hls,
                webrtc.clone(),
                runner.stats.clone(),
            );
            let router = guarded(
                router,
                &paths,
                tidegate_core::Action::Metrics,
                "metrics",
                &config.metrics_allow_origins,
            );
            serve_http(
                &movable,
                ("metricsAddress", "metrics"),
                config.metrics_address,
                listener,
                router,
                (
                    metrics_tls,
                    config.metrics_trusted_proxies.clone(),
                    config.read_timeout,
                    None,
                ),
                (&shutdown, &tasks),
            );
        }
        if let (Some(listener), Some(addr)) = (pprof_listener, pprof_addr) {
            tracing::info!(
                "[pprof] listener opened on {addr} ({})",
                if pprof_tls.is_some() { "HTTPS" } else { "HTTP" }
            );
            let router = pprof::router();
            let router = guarded(
                router,
                &paths,
                tidegate_core::Action::Pprof,
                "pprof",
                &config.pprof_allow_origins,
            );
            serve_http(
                &movable,
                ("pprofAddress", "pprof"),
                config.pprof_address,
                listener,
                router,
                (
                    pprof_tls,
                    config.pprof_trusted_proxies.clone(),
                    config.read_timeout,
                    None,
                ),
                (&shutdown, &tasks),
            );
        }
        for (listener, addr, tls, conns, (key, name, configured)) in [
            (
                rtmp,
                rtmp_addr,
                None,
                &rtmp_conns,
                ("rtmpAddress", "RTMP", config.rtmp_address),
            ),
            (
                rtmps,
                rtmps_addr,
                rtmps_tls,
                &rtmps_conns,
                ("rtmpsAddress", "RTMPS", config.rtmps_address),
            ),
        ] {
            if let (Some(listener), Some(addr)) = (listener, addr) {
                tracing::info!(
                    "[{name}] listener opened on {addr} (TCP{})",
                    if tls.is_some() { ", TLS" } else { "" }
                );
                let (conns, paths, rtmp_config) =
                    (conns.clone(), paths.clone(), rtmp_config.clone());
                let (sd, t) = (shutdown.clone(), tasks.clone());
                movable.start(
                    key,
                    name,
                    configured,
                    listener,
                    &shutdown,
                    Box::new(move |listener, stop| {
                        t.spawn(tidegate_rtmp::serve(
                            tidegate_rtmp::RtmpListener {
                                listener,
                                tls: tls.clone(),
                                conns: conns.clone(),
                                stop,
                            },
                            paths.clone(),
                            rtmp_config.clone(),
                            sd.clone(),
                            t.clone(),
                        ))
                    }),
                );
            }
        }
        if let Some(srt) = srt {
            tracing::info!("[SRT] listener opened on {} (UDP)", srt.local);
            tasks.spawn(tidegate_srt::serve(
                srt,
                paths.clone(),
                tidegate_srt::SrtConfig {
                    read_timeout: config.read_timeout,
                },
                srt_conns.clone(),
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        let predecessor = upgrade::predecessor(&paths);
        if let Some(b) = &predecessor {
            paths.set_fallback(Some(b.clone()));
        }
        let mut hls_router = None;
        if let (Some(listener), Some(addr)) = (hls_listener, hls_addr) {
            tracing::info!(
                "[HLS] listener opened on {addr} ({})",
                if hls_tls.is_some() {
                    "HTTPS, HTTP/2"
                } else {
                    "HTTP"
                }
            );
            // RTMPT (RTMP over HTTP) beside HLS, while RTMP is on.
            let router = if config.rtmp {
                let rtmpt = tidegate_rtmp::rtmpt::Rtmpt::new(
                    rtmp_conns.clone(),
                    paths.clone(),
                    rtmp_config.clone(),
                    shutdown.clone(),
                    tasks.clone(),
                );
                hls.router().merge(rtmpt.router())
            } else {
                hls.router()
            };
            hls_router = Some(router.clone());
            // Started by an upgrade: what is still published on the previous process is
            // answered from there.
            let router = match &predecessor {
                Some(b) => router.layer(axum::middleware::from_fn_with_state(
                    b.clone(),
                    upgrade::hls_proxy,
                )),
                None => router,
            };
            serve_http(
                &movable,
                ("hlsAddress", "HLS"),
                config.hls_address,
                listener,
                router,
                (
                    hls_tls,
                    config.hls_trusted_proxies.clone(),
                    config.read_timeout,
                    // Answers bridged to a previous process go through the router's proxy
                    // layer: hyper's path then.
                    predecessor.is_none().then(|| hls.clone()),
                ),
                (&shutdown, &tasks),
            );
        }
        let rtsp_config = tidegate_rtsp::RtspConfig {
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            trusted_proxies: Arc::new(config.rtsp_trusted_proxies.clone()),
            auth_methods: tidegate_rtsp::auth::Methods {
                basic: config.rtsp_auth_methods.iter().any(|m| m == "basic"),
                digest: config.rtsp_auth_methods.iter().any(|m| m == "digest"),
            },
            allow_tcp: config.rtsp_transports.iter().any(|t| t == "tcp"),
            multicast: config
                .rtsp_transports
                .iter()
                .any(|t| t == "multicast")
                .then(|| {
                    let net = config.multicast_ip_range;
                    Arc::new(tidegate_rtsp::multicast::Groups::new(
                        tidegate_rtsp::multicast::MulticastConf {
                            base: net.network(),
                            size: 1u32 << (32 - u32::from(net.prefix_len())).min(31),
                            rtp_port: config.multicast_rtp_port,
                            rtcp_port: config.multicast_rtcp_port,
                        },
                    ))
                }),
        };
        if let (Some(listener), Some(addr)) = (rtsps_listener, rtsps_addr) {
            match &srtp_udp {
                Some(u) => {
                    let (rtp, rtcp) = u.ports();
                    tracing::info!(
                        "[RTSPS] listener opened on {addr} (TCP, TLS), SRTP on UDP {rtp}, SRTCP on UDP {rtcp}"
                    );
                }
                None => tracing::info!("[RTSPS] listener opened on {addr} (TCP, TLS)"),
            }
            serve_rtsp(
                &movable,
                ("rtspsAddress", "RTSPS", config.rtsps_address),
                listener,
                (rtsps_tls, srtp_udp, rtsps_conns.clone()),
                (paths.clone(), rtsp_config.clone()),
                (&shutdown, &tasks),
            );
        }
        if let (Some(listener), Some(addr)) = (rtsp_listener, rtsp_addr) {
            let (rtp, rtcp) = rtsp_udp_ports.unwrap_or_default();
            tracing::info!(
                "[RTSP] listener opened on {addr} (TCP), RTP on UDP {rtp}, RTCP on UDP {rtcp}"
            );
            serve_rtsp(
                &movable,
                ("rtspAddress", "RTSP", config.rtsp_address),
                listener,
                (None, rtsp_udp, rtsp_conns.clone()),
                (paths.clone(), rtsp_config),
                (&shutdown, &tasks),
            );
        }
        if let (Some(listener), Some(addr), Some(webrtc)) = (webrtc_listener, webrtc_addr, webrtc) {
            tracing::info!(
                "[WebRTC] listener opened on {addr} ({})",
                if webrtc_tls.is_some() {
                    "HTTPS"
                } else {
                    "HTTP"
                }
            );
            serve_http(
                &movable,
                ("webrtcAddress", "WebRTC"),
                config.webrtc_address,
                listener,
                webrtc.router(),
                (
                    webrtc_tls,
                    config.webrtc_trusted_proxies.clone(),
                    config.read_timeout,
                    None,
                ),
                (&shutdown, &tasks),
            );
        }
        Ok(Server {
            reloader,
            paths,
            shutdown,
            tasks,
            api_addr,
            metrics_addr,
            pprof_addr,
            rtmp_addr,
            rtmps_addr,
            srt_addr,
            hls_addr,
            rtsp_addr,
            rtsp_udp_ports,
            rtsps_addr,
            webrtc_addr,
            webrtc_udp_addr,
            webrtc_tcp_addr,
            playback_addr,
            recorder,
            hls_router,
        })
    }

    /// Serves this process's paths and HLS to the process an upgrade starts
    /// ([`upgrade::Predecessor`]).
    pub fn bridge(&self) -> std::io::Result<upgrade::Predecessor> {
        upgrade::Predecessor::serve(self.paths.clone(), self.hls_router.clone(), &self.tasks)
    }

    /// What reloads the configuration (the API, `SIGHUP`).
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        self.reloader.clone()
    }

    /// Watches the configuration file `path` (the one this server was started from, read
    /// with `env`) and reloads it when it changes.
    pub fn watch_config(&self, path: std::path::PathBuf, env: Vec<(String, String)>) {
        if let Ok(text) = std::fs::read_to_string(&path) {
            self.reloader
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .1 = Some(text);
        }
        self.reloader.watch(path, env);
    }

    pub fn playback_addr(&self) -> Option<SocketAddr> {
        self.playback_addr
    }

    /// The recorder: its index and counters.
    pub fn recorder(&self) -> &tidegate_record::Recorder {
        &self.recorder
    }

    /// The path registry, for protocol servers and tests.
    pub fn paths(&self) -> &PathManager {
        &self.paths
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn pprof_addr(&self) -> Option<SocketAddr> {
        self.pprof_addr
    }

    pub fn rtmp_addr(&self) -> Option<SocketAddr> {
        self.rtmp_addr
    }

    pub fn rtmps_addr(&self) -> Option<SocketAddr> {
        self.rtmps_addr
    }

    pub fn srt_addr(&self) -> Option<SocketAddr> {
        self.srt_addr
    }

    pub fn rtsp_addr(&self) -> Option<SocketAddr> {
        self.rtsp_addr
    }

    /// The RTP and RTCP UDP ports of RTSP sessions.
    pub fn rtsp_udp_ports(&self) -> Option<(u16, u16)> {
        self.rtsp_udp_ports
    }

    pub fn webrtc_addr(&self) -> Option<SocketAddr> {
        self.webrtc_addr
    }

    pub fn webrtc_udp_addr(&self) -> Option<SocketAddr> {
        self.webrtc_udp_addr
    }

    pub fn webrtc_tcp_addr(&self) -> Option<SocketAddr> {
        self.webrtc_tcp_addr
    }

    pub fn rtsps_addr(&self) -> Option<SocketAddr> {
        self.rtsps_addr
    }

    pub fn hls_addr(&self) -> Option<SocketAddr> {
        self.hls_addr
    }

    /// Stops accepting, closes every session and waits (bounded) for them to finish.
    /// Drains: readiness (`/readyz`) answers 503, every client listener stops accepting (SRT
    /// and WebRTC refuse new sessions), and the sessions already open go on until they end or
    /// `period` has passed. Then [`Server::shutdown`] closes what is left.
    pub async fn drain(&self, period: Duration) {
        tidegate_core::guard::set_draining(true);
        self.reloader.listeners.stop_clients();
        tidegate_core::handover::release();
        let open = tidegate_core::guard::client_connections();
        tracing::info!(
            "draining: no new clients; {open} connections and sessions may go on for up to {period:?}"
        );
        Self::sessions_end(Some(period)).await;
    }

    /// After an upgrade ([`upgrade::start`]) the new process serves: this one stops accepting on
    /// every listener (the new one accepts on the same sockets) and keeps its open sessions
    /// until they end, or for `period` if it is not zero.
    pub async fn hand_over(&self, period: Duration) {
        tidegate_core::guard::set_draining(true);
        self.reloader.listeners.stop_all();
        tidegate_core::handover::release();
        let open = tidegate_core::guard::client_connections();
        let bound = (!period.is_zero()).then_some(period);
        match bound {
            Some(p) => tracing::info!(
                "[upgrade] the new process serves; {open} connections and sessions here may go on for up to {p:?}"
            ),
            None => tracing::info!(
                "[upgrade] the new process serves; {open} connections and sessions here go on until they end"
            ),
        }
        Self::sessions_end(bound).await;
    }

    /// Waits until no client connection or session is open, or `period` passes.
    async fn sessions_end(period: Option<Duration>) {
        let deadline = period.map(|p| tokio::time::Instant::now() + p);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let open = tidegate_core::guard::client_connections();
            if open == 0 {
                tracing::info!("drained: every client has left");
                return;
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                tracing::info!("drain period over: {open} connections and sessions are closed");
                return;
            }
        }
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not close within {SHUTDOWN_GRACE:?}");
        }
    }
}
