//! The control API (`/v3/...`), with MediaMTX's routes and JSON shapes so its tooling works.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tidegate_core::{PathInfo, PathManager};
use tidegate_rtmp::{ConnInfo, ConnRegistry};

/// What the API reads: the path registry and each protocol's session lists.
#[derive(Clone)]
pub struct ApiState {
    pub paths: PathManager,
    pub rtmp_conns: Arc<ConnRegistry>,
    pub rtmps_conns: Arc<ConnRegistry>,
    pub srt_conns: Arc<ConnRegistry<tidegate_srt::SrtStats>>,
    pub relays: Arc<crate::relays::Relays>,
    pub hls: tidegate_hls::Hls,
    pub rtsp_conns: Arc<tidegate_rtsp::RtspConns>,
    pub rtsps_conns: Arc<tidegate_rtsp::RtspConns>,
    pub webrtc_sessions: Arc<tidegate_webrtc::WebRtcSessions>,
    pub auth: Arc<tidegate_auth::AuthManager>,
    pub recorder: tidegate_record::Recorder,
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// When the server started, for `/v3/info`.
    pub started: std::time::SystemTime,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v3/info", get(info))
        .route("/v3/openapi.yaml", get(openapi))
        .route("/v3/paths/list", get(paths_list))
        .route("/v3/paths/get/{*name}", get(paths_get))
        .route("/v3/rtmpconns/list", get(|s, q| rtmp_list(s, q, false)))
        .route("/v3/rtmpconns/get/{id}", get(|s, p| rtmp_get(s, p, false)))
        .route(
            "/v3/rtmpconns/kick/{id}",
            post(|s, p| rtmp_kick(s, p, false)),
        )
        .route("/v3/rtmpsconns/list", get(|s, q| rtmp_list(s, q, true)))
        .route("/v3/rtmpsconns/get/{id}", get(|s, p| rtmp_get(s, p, true)))
        .route(
            "/v3/rtmpsconns/kick/{id}",
            post(|s, p| rtmp_kick(s, p, true)),
        )
        .route("/v3/webrtcsessions/list", get(webrtc_list))
        .route("/v3/webrtcsessions/get/{id}", get(webrtc_get))
        .route("/v3/webrtcsessions/kick/{id}", post(webrtc_kick))
        .route("/v3/srtconns/list", get(srt_list))
        .route("/v3/srtconns/get/{id}", get(srt_get))
        .route("/v3/srtconns/kick/{id}", post(srt_kick))
        .route("/v3/rtspconns/list", get(|s, q| rtsp_list(s, q, false)))
        .route("/v3/rtspconns/get/{id}", get(|s, p| rtsp_get(s, p, false)))
        .route("/v3/rtspsessions/list", get(|s, q| rtsp_list(s, q, false)))
        .route(
            "/v3/rtspsessions/get/{id}",
            get(|s, p| rtsp_get(s, p, false)),
        )
        .route(
            "/v3/rtspsessions/kick/{id}",
            post(|s, p| rtsp_kick(s, p, false)),
        )
        .route("/v3/rtspsconns/list", get(|s, q| rtsp_list(s, q, true)))
        .route("/v3/rtspsconns/get/{id}", get(|s, p| rtsp_get(s, p, true)))
        .route("/v3/rtspssessions/list", get(|s, q| rtsp_list(s, q, true)))
        .route(
            "/v3/rtspssessions/get/{id}",
            get(|s, p| rtsp_get(s, p, true)),
        )
        .route(
            "/v3/rtspssessions/kick/{id}",
            post(|s, p| rtsp_kick(s, p, true)),
        )
        .route("/v3/paths/forward/list", get(forward_list))
        .route("/v3/paths/forward/get", get(forward_get))
        .route("/v3/moqsessions/list", get(moq_list))
        .route("/v3/moqsessions/get/{id}", get(moq_missing))
        .route("/v3/moqsessions/kick/{id}", post(moq_missing))
        .route("/v3/hlssessions/list", get(hls_sessions_list))
        .route("/v3/hlssessions/get/{id}", get(hls_sessions_get))
        .route("/v3/hlssessions/kick/{id}", post(hls_sessions_kick))
        .route("/v3/hlsmuxers/list", get(hls_list))
        .route("/v3/hlsmuxers/get/{*name}", get(hls_get))
        .route("/v3/recordings/list", get(recordings_list))
        .route("/v3/recordings/get/{*name}", get(recordings_get))
        .route(
            "/v3/recordings/deletesegment",
            axum::routing::delete(recordings_delete),
        )
        .route("/v3/auth/jwks/refresh", post(jwks_refresh))
        .route("/v3/webhooks/list", get(webhooks_list))
        .route("/v3/keys/list", get(crate::api_keys::list))
        .route("/v3/keys/get/{id}", get(crate::api_keys::get))
        .route("/v3/keys/create", post(crate::api_keys::create))
        .route("/v3/keys/rotate/{id}", post(crate::api_keys::rotate))
        .route("/v3/keys/revoke/{id}", post(crate::api_keys::revoke))
        .fallback(not_found)
        .with_state(state)
}

/// `GET /livez` (the process serves) and `GET /readyz` (it takes new clients: 503 while
/// draining), without credentials: what load balancers' and Kubernetes' probes ask.
pub fn health_router() -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new()
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(|| async {
                if tidegate_core::guard::draining() {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    (StatusCode::OK, "ok\n")
                }
            }),
        )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiWebhook {
    url: String,
    events: Vec<String>,
    queued: usize,
    delivered: u64,
    failed_attempts: u64,
    given_up: u64,
    dropped: u64,
    last_error: String,
    last_delivery: Option<String>,
}

/// `GET /v3/webhooks/list` (Tidegate's own): each webhook's delivery figures. Secrets are
/// not shown.
async fn webhooks_list(
    State(s): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let items: Vec<ApiWebhook> = s
        .webhooks
        .hooks
        .iter()
        .map(|h| ApiWebhook {
            url: h.conf.url.clone(),
            events: h.conf.events.clone(),
            queued: h.queued(),
            delivered: h.stats.delivered.load(Relaxed),
            failed_attempts: h.stats.failed_attempts.load(Relaxed),
            given_up: h.stats.given_up.load(Relaxed),
            dropped: h.stats.dropped.load(Relaxed),
            last_error: h
                .stats
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
            last_delivery: h
                .stats
                .last_delivery
                .lock()
                .ok()
                .and_then(|t| *t)
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        })
        .collect();
    match paginate(items, &query) {
        Ok(p) => Json(p).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v3/info`: MediaMTX's `{version, started}`.
async fn info(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let started = s.started;
    Json(serde_json::json!({
        "version": concat!("v", env!("CARGO_PKG_VERSION")),
        "started": humantime::format_rfc3339_millis(started).to_string(),
    }))
}

/// `POST /v3/auth/jwks/refresh`: the JWKS is fetched again for the next token.
async fn jwks_refresh(State(s): State<ApiState>) -> Response {
    s.auth.refresh_jwks().await;
    ok()
}

/// An action's answer: `{"status": "ok"}` (MediaMTX's).
pub fn ok() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

#[derive(Serialize)]
struct SessionRef {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiPath {
    name: String,
    conf_name: String,
    source: Option<SessionRef>,
    ready: bool,
    ready_time: Option<String>,
    tracks: Vec<&'static str>,
    bytes_received: u64,
    bytes_sent: u64,
    readers: Vec<SessionRef>,
    reader_skips: u64,
    inbound_frames_in_error: u64,
    /// MediaMTX 1.20's names: `available` (readers may read: the same as `ready`) and
    /// `online` (a publisher or source feeds it, not the offline stream of
    /// `alwaysAvailable`), `inboundBytes`/`outboundBytes`, `tracks2`.
    available: bool,
    available_time: Option<String>,
    online: bool,
    online_time: Option<String>,
    inbound_bytes: u64,
    outbound_bytes: u64,
    tracks2: Vec<ApiTrack>,
    /// Tidegate's addition: the running audio transcoders (`audioTranscode`).
    transcoders: Vec<String>,
    /// Tidegate's addition: the `push:` destinations and their state.
    push: Vec<ApiRelay>,
    /// Tidegate's addition: the state of a pulled `source`, if any.
    source_relay: Option<ApiRelay>,
}

/// MediaMTX's `PathTrack`: the codec (Tidegate's names are MediaMTX's), and its properties.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiTrack {
    codec: &'static str,
    codec_props: Option<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiRelay {
    url: String,
    state: &'static str,
    bytes: u64,
    reconnects: u64,
    drops: u64,
    last_error: String,
}

impl From<&tidegate_rtmp::RelayStatus> for ApiRelay {
    fn from(r: &tidegate_rtmp::RelayStatus) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        ApiRelay {
            url: r.url.clone(),
            state: r.state(),
            bytes: r.bytes.load(Relaxed),
            reconnects: r.reconnects.load(Relaxed),
            drops: r.drops.load(Relaxed),
            last_error: r.last_error(),
        }
    }
}

/// MediaMTX's `codecProps` of a track, from its parameters; None where MediaMTX has none or
/// the parameters do not say.
fn codec_props(t: &tidegate_core::Track) -> Option<serde_json::Value> {
    use tidegate_core::CodecParams as P;
    Some(match &t.params {
        P::H264 { sps, .. } => {
            let i = tidegate_codec::h264::parse_sps(sps).ok()?;
            let profile = match i.profile_idc {
                66 => "Baseline".to_string(),
                77 => "Main".into(),
                88 => "Extended".into(),
                100 => "High".into(),
                110 => "High 10".into(),
                122 => "High 4:2:2".into(),
                244 => "High 4:4:4 Predictive".into(),
                n => n.to_string(),
            };
            let level = match (i.level_idc / 10, i.level_idc % 10) {
                (major, 0) => major.to_string(),
                (major, minor) => format!("{major}.{minor}"),
            };
            serde_json::json!({"width": i.width, "height": i.height, "profile": profile, "level": level})
        }
        P::H265 { sps, .. } => {
            let i = tidegate_codec::h265::parse_sps(sps).ok()?;
            let profile = match i.profile_idc {
                1 => "Main".to_string(),
                2 => "Main 10".into(),
                3 => "Main Still Picture".into(),
                4 => "Range Extensions".into(),
                n => n.to_string(),
            };
            // level_idc is 30 times the level.
            let level = match (i.level_idc / 30, (i.level_idc % 30) / 3) {
                (major, 0) => major.to_string(),
                (major, minor) => format!("{major}.{minor}"),
            };
            serde_json::json!({"width": i.width, "height": i.height, "profile": profile, "level": level})
        }
        P::Av1 { sequence_header } => {
            let i = tidegate_codec::av1::parse_sequence_header(sequence_header).ok()?;
            serde_json::json!({
                "width": i.max_width, "height": i.max_height, "profile": i.seq_profile,
                "level": i.seq_level_idx_0, "tier": u8::from(i.seq_tier_0),
            })
        }
        P::Aac { config } => {
            let c = tidegate_codec::aac::AudioSpecificConfig::parse(config).ok()?;
            serde_json::json!({"sampleRate": c.sample_rate, "channelCount": c.channels})
        }
        P::Opus { channels } => serde_json::json!({"channelCount": channels}),
        P::Ac3 {
            sample_rate,
            channels,
        } => serde_json::json!({"sampleRate": sample_rate, "channelCount": channels}),
        P::G711 {
            law,
            sample_rate,
            channels,
        } => serde_json::json!({
            "muLaw": *law == tidegate_core::G711Law::MuLaw,
            "sampleRate": sample_rate, "channelCount": channels,
        }),
        P::Lpcm {
            bits,
            sample_rate,
            channels,
        } => {
            serde_json::json!({"bitDepth": bits, "sampleRate": sample_rate, "channelCount": channels})
        }
        _ => return None,
    })
}

impl ApiPath {
    fn new(p: PathInfo, state: &ApiState) -> ApiPath {
        let push = state
            .relays
            .pushes(&p.name)
            .iter()
            .map(|r| ApiRelay::from(&**r))
            .collect();
        let source_relay = state.relays.source(&p.name).map(|r| ApiRelay::from(&*r));
        let desc = state.paths.stream(&p.name).map(|(s, _)| s.desc());
        let mut api = ApiPath::from(p);
        if let Some(desc) = desc {
            api.tracks2 = desc
                .tracks
                .iter()
                .map(|t| ApiTrack {
                    codec: t.codec().name(),
                    codec_props: codec_props(t),
                })
                .collect();
        }
        api.push = push;
        api.source_relay = source_relay;
        api
    }
}

impl From<PathInfo> for ApiPath {
    fn from(p: PathInfo) -> Self {
        let time = p
            .ready_time
            .map(|t| humantime::format_rfc3339_millis(t).to_string());
        ApiPath {
            available: p.ready,
            available_time: time.clone(),
            online: p.online,
            online_time: time.filter(|_| p.online),
            inbound_bytes: p.bytes_received,
            outbound_bytes: p.bytes_sent,
            tracks2: p
                .tracks
                .iter()
                .map(|c| ApiTrack {
                    codec: c,
                    codec_props: None,
                })
                .collect(),
            name: p.name,
            conf_name: p.conf_name,
            source: p.source.map(|(kind, id)| SessionRef {
                kind,
                id: id.to_string(),
            }),
            ready: p.ready,
            ready_time: p
                .ready_time
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            tracks: p.tracks,
            bytes_received: p.bytes_received,
            bytes_sent: p.bytes_sent,
            readers: p
                .readers
                .into_iter()
                .map(|(kind, id)| SessionRef {
                    kind,
                    id: id.to_string(),
                })
                .collect(),
            reader_skips: p.reader_skips,
            inbound_frames_in_error: p.frames_in_error,
            transcoders: p.transcoders,
            push: Vec::new(),
            source_relay: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    item_count: usize,
    page_count: usize,
    items: Vec<T>,
}

/// MediaMTX's `?page=P&itemsPerPage=N`: P from 0 (to 2^63 - 1), N from 1 (more than 10000
/// is taken as 10000); anything else is an error to answer with 400.
pub fn page_params(query: &HashMap<String, String>) -> Result<(usize, usize), String> {
    let num = |key: &str, default: i64, min: i64| -> Result<i64, String> {
        match query.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| format!("invalid {key}")),
        }
    };
    let per_page = num("itemsPerPage", 100, 1)?.min(10_000) as usize;
    let page = usize::try_from(num("page", 0, 0)?).unwrap_or(usize::MAX);
    Ok((page, per_page))
}

/// Applies MediaMTX's `?itemsPerPage=N&page=P` (page from 0) to a list.
fn paginate<T>(
    items: Vec<T>,
    query: &HashMap<String, String>,
) -> Result<Page<T>, (StatusCode, Json<ApiError>)> {
    let (page, per_page) = page_params(query).map_err(|e| error(StatusCode::BAD_REQUEST, &e))?;
    let item_count = items.len();
    let page_count = item_count.div_ceil(per_page);
    let items = items
        .into_iter()
        .skip(page.saturating_mul(per_page))
        .take(per_page)
        .collect();
    Ok(Page {
        item_count,
        page_count,
        items,
    })
}

#[derive(Serialize)]
pub struct ApiError {
    /// Always "error" (MediaMTX's shape).
    status: &'static str,
    error: String,
}

fn error(status: StatusCode, msg: &str) -> (StatusCode, Json<ApiError>) {
    (
        status,
        Json(ApiError {
            status: "error",
            error: msg.to_string(),
        }),
    )
}

/// The API's OpenAPI 3 document (docs/openapi.yaml, checked against the router in a test).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        OPENAPI,
    )
        .into_response()
}

async fn paths_list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let items: Vec<ApiPath> = state
        .paths
        .list()
        .into_iter()
        .map(|p| ApiPath::new(p, &state))
        .collect();
    match paginate(items, &query) {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn paths_get(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.paths.get(&name) {
        Some(p) => Json(ApiPath::new(p, &state)).into_response(),
        None => error(StatusCode::NOT_FOUND, "path not found").into_response(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiConn {
    id: String,
    created: String,
    remote_addr: String,
    state: &'static str,
    path: String,
    query: String,
    bytes_received: u64,
    bytes_sent: u64,
    /// MediaMTX's: media frames this reader lost by falling behind (readers whose egress
    /// reports it: RTMP, RTMPS, SRT, RTSP over TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound_frames_discarded: Option<u64>,
    /// Tidegate's: the reader's lag (frames and bytes waiting for its socket) and how often
    /// it skipped to a keyframe.
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound_queued_frames: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound_queued_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbound_skips: Option<u64>,
    /// Tidegate's: a reader's tracks, those its egress carries and those it leaves out.
    #[serde(skip_serializing_if = "Option::is_none")]
    tracks: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_tracks: Option<Vec<DroppedTrack>>,
    /// Protocol statistics (SRT), flattened into the object as MediaMTX does.
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct DroppedTrack {
    codec: &'static str,
    reason: String,
}

/// What a protocol adds to its connections in the API.
pub(crate) trait ConnExtra: Default + Send + Sync + 'static {
    fn json(&self) -> serde_json::Map<String, serde_json::Value>;

    /// Numeric figures for the metrics: (MediaMTX's suffix, value), given the session's state.
    fn metrics(&self, _state: tidegate_core::ConnState) -> Vec<(String, f64)> {
        Vec::new()
    }
}

impl ConnExtra for () {
    fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}

impl ConnExtra for tidegate_srt::SrtStats {
    fn metrics(&self, _state: tidegate_core::ConnState) -> Vec<(String, f64)> {
        self.snapshot()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    tidegate_srt::Figure::Count(n) => n as f64,
                    tidegate_srt::Figure::Float(f) => f,
                };
                (crate::metrics::snake(k), v)
            })
            .collect()
    }

    fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.snapshot()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    tidegate_srt::Figure::Count(n) => serde_json::Value::from(n),
                    tidegate_srt::Figure::Float(f) => serde_json::Value::from(f),
                };
                (k.to_string(), v)
            })
            .collect()
    }
}

impl ConnExtra for tidegate_webrtc::WebRtcStats {
    fn metrics(&self, _state: tidegate_core::ConnState) -> Vec<(String, f64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            (
                "inbound_rtp_packets".into(),
                self.rtp_packets_received.load(Relaxed) as f64,
            ),
            (
                "inbound_rtp_packets_lost".into(),
                self.rtp_packets_lost.load(Relaxed) as f64,
            ),
            (
                "outbound_rtp_packets".into(),
                self.rtp_packets_sent.load(Relaxed) as f64,
            ),
        ]
    }

    fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        use std::sync::atomic::Ordering::Relaxed;
        let notes = self.notes();
        let mut m = serde_json::Map::new();
        m.insert(
            "peerConnectionEstablished".into(),
            self.peer_connection_established.load(Relaxed).into(),
        );
        m.insert("localCandidate".into(), notes.local_candidate.into());
        m.insert("remoteCandidate".into(), notes.remote_candidate.into());
        m.insert(
            "rtpPacketsReceived".into(),
            self.rtp_packets_received.load(Relaxed).into(),
        );
        m.insert(
            "rtpPacketsSent".into(),
            self.rtp_packets_sent.load(Relaxed).into(),
        );
        m.insert(
            "rtpPacketsLost".into(),
            self.rtp_packets_lost.load(Relaxed).into(),
        );
        m.insert("nacks".into(), self.nacks.load(Relaxed).into());
        m.insert(
            "rttMs".into(),
            (self.rtt_us.load(Relaxed) as f64 / 1000.0).into(),
        );
        if !notes.simulcast_layer.is_empty() {
            m.insert("simulcastLayer".into(), notes.simulcast_layer.into());
        }
        m.insert("warnings".into(), notes.warnings.into());
        m
    }
}

async fn webrtc_list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    conns_list(&state.webrtc_sessions, &query)
}

async fn webrtc_get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    conns_get(&state.webrtc_sessions, &id)
}

async fn webrtc_kick(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    conns_kick(&state.webrtc_sessions, &id)
}

impl ConnExtra for tidegate_rtsp::RtspStats {
    fn metrics(&self, state: tidegate_core::ConnState) -> Vec<(String, f64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed) as f64;
        let mut v = vec![
            (
                "inbound_rtp_packets".to_string(),
                n(&self.rtp_packets_received),
            ),
            (
                "inbound_rtp_packets_in_error".to_string(),
                n(&self.srtp_packets_refused),
            ),
            (
                "inbound_rtcp_packets".to_string(),
                n(&self.rtcp_packets_received),
            ),
            (
                "outbound_rtp_packets".to_string(),
                n(&self.rtp_packets_sent),
            ),
        ];
        let jitter = n(&self.jitter_us) / 1e6;
        if state == tidegate_core::ConnState::Publish {
            v.push(("inbound_rtp_packets_lost".into(), n(&self.rtp_packets_lost)));
            v.push(("inbound_rtp_packets_jitter".into(), jitter));
        } else {
            // What the reader's receiver reports say.
            v.push((
                "outbound_rtp_packets_reported_lost".into(),
                n(&self.rtp_packets_lost),
            ));
            v.push(("outbound_rtp_packets_reported_jitter".into(), jitter));
        }
        v
    }

    fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut m = serde_json::Map::new();
        // The report count first: the figures it stands for are stored before it.
        let reports = self
            .rtcp_packets_received
            .load(std::sync::atomic::Ordering::Acquire);
        m.insert("transport".into(), self.transport().into());
        let profile = if self.srtp.load(Relaxed) {
            "SAVP"
        } else {
            "AVP"
        };
        m.insert("profile".into(), profile.into());
        m.insert(
            "srtpPacketsRefused".into(),
            self.srtp_packets_refused.load(Relaxed).into(),
        );
        m.insert(
            "rtpPacketsReceived".into(),
            self.rtp_packets_received.load(Relaxed).into(),
        );
        m.insert(
            "rtpPacketsSent".into(),
            self.rtp_packets_sent.load(Relaxed).into(),
        );
        m.insert(
            "rtpPacketsLost".into(),
            self.rtp_packets_lost.load(Relaxed).into(),
        );
        m.insert("rtcpPacketsReceived".into(), reports.into());
        // Seconds, as a reader's receiver reports give it.
        m.insert(
            "rtpPacketsJitter".into(),
            (self.jitter_us.load(Relaxed) as f64 / 1e6).into(),
        );
        m
    }
}

fn rtsp_registry(state: &ApiState, tls: bool) -> &tidegate_rtsp::RtspConns {
    if tls {
        &state.rtsps_conns
    } else {
        &state.rtsp_conns
    }
}

async fn rtsp_list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
    tls: bool,
) -> Response {
    conns_list(rtsp_registry(&state, tls), &query)
}

async fn rtsp_get(State(state): State<ApiState>, Path(id): Path<String>, tls: bool) -> Response {
    conns_get(rtsp_registry(&state, tls), &id)
}

async fn rtsp_kick(State(state): State<ApiState>, Path(id): Path<String>, tls: bool) -> Response {
    conns_kick(rtsp_registry(&state, tls), &id)
}

fn api_conn<X: ConnExtra>(c: ConnInfo<X>) -> ApiConn {
    ApiConn {
        id: c.id.to_string(),
        created: humantime::format_rfc3339_millis(c.created).to_string(),
        remote_addr: c.remote.to_string(),
        state: c.state.as_str(),
        path: c.path,
        query: c.query,
        bytes_received: c.bytes_received,
        bytes_sent: c.bytes_sent,
        outbound_frames_discarded: c.reader.map(|r| r.frames_discarded),
        outbound_queued_frames: c.reader.map(|r| r.queued_frames),
        outbound_queued_bytes: c.reader.map(|r| r.queued_bytes),
        outbound_skips: c.reader.map(|r| r.skips),
        tracks: c.carriage.as_ref().map(|k| k.carried.clone()),
        dropped_tracks: c.carriage.map(|k| {
            k.dropped
                .into_iter()
                .map(|(codec, reason)| DroppedTrack { codec, reason })
                .collect()
        }),
        extra: c.extra.json(),
    }
}

fn conns_list<X: ConnExtra>(reg: &ConnRegistry<X>, query: &HashMap<String, String>) -> Response {
    let items: Vec<ApiConn> = reg.list().into_iter().map(api_conn).collect();
    match paginate(items, query) {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

fn conns_get<X: ConnExtra>(reg: &ConnRegistry<X>, id: &str) -> Response {
    match id.parse().ok().and_then(|id| reg.get(id)) {
        Some(c) => Json(api_conn(c)).into_response(),
        None => error(StatusCode::NOT_FOUND, "connection not found").into_response(),
    }
}

fn conns_kick<X: ConnExtra>(reg: &ConnRegistry<X>, id: &str) -> Response {
    if id.parse().is_ok_and(|id| reg.kick(id)) {
        ok()
    } else {
        error(StatusCode::NOT_FOUND, "connection not found").into_response()
    }
}

fn rtmp_registry(state: &ApiState, tls: bool) -> &ConnRegistry {
    if tls {
        &state.rtmps_conns
    } else {
        &state.rtmp_conns
    }
}

async fn rtmp_list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
    tls: bool,
) -> Response {
    conns_list(rtmp_registry(&state, tls), &query)
}

async fn rtmp_get(State(state): State<ApiState>, Path(id): Path<String>, tls: bool) -> Response {
    conns_get(rtmp_registry(&state, tls), &id)
}

async fn rtmp_kick(State(state): State<ApiState>, Path(id): Path<String>, tls: bool) -> Response {
    conns_kick(rtmp_registry(&state, tls), &id)
}

async fn srt_list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    conns_list(&state.srt_conns, &query)
}

async fn srt_get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    conns_get(&state.srt_conns, &id)
}

async fn srt_kick(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    conns_kick(&state.srt_conns, &id)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiHlsMuxer {
    path: String,
    created: String,
    last_request: String,
    bytes_sent: u64,
}

fn api_hls(m: tidegate_hls::MuxerInfo) -> ApiHlsMuxer {
    ApiHlsMuxer {
        path: m.path,
        created: humantime::format_rfc3339_millis(m.created).to_string(),
        last_request: humantime::format_rfc3339_millis(m.last_request).to_string(),
        bytes_sent: m.bytes_sent,
    }
}

async fn hls_list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let items: Vec<ApiHlsMuxer> = state.hls.muxers().into_iter().map(api_hls).collect();
    match paginate(items, &query) {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One `forward` (or `push`) destination, MediaMTX's `ForwardDest`, with Tidegate's counters.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiForward {
    id: String,
    created: String,
    conf: ApiForwardConf,
    protocol: String,
    /// `idle`, `forwarding` or `error`.
    state: &'static str,
    last_error: String,
    outbound_bytes: u64,
    /// Tidegate's own: reconnections and frames dropped for a slow destination.
    reconnects: u64,
    drops: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiForwardConf {
    /// The destination with its stream key or passphrase hidden.
    dest: String,
    dest_fingerprint: String,
    whip_bearer_token: String,
}

fn api_forward(r: &tidegate_rtmp::RelayStatus) -> ApiForward {
    use std::sync::atomic::Ordering::Relaxed;
    let state = match r.state() {
        "running" => "forwarding",
        "failed" | "reconnecting" => "error",
        _ => "idle",
    };
    ApiForward {
        id: r.id.clone(),
        created: humantime::format_rfc3339_millis(r.created).to_string(),
        conf: ApiForwardConf {
            dest: r.url.clone(),
            dest_fingerprint: String::new(),
            whip_bearer_token: String::new(),
        },
        protocol: r.url.split("://").next().unwrap_or_default().to_string(),
        state,
        last_error: r.last_error(),
        outbound_bytes: r.bytes.load(Relaxed),
        reconnects: r.reconnects.load(Relaxed),
        drops: r.drops.load(Relaxed),
    }
}

/// The forward destinations of `?path=`: 400 without it, 404 for a path that does not exist.
fn forwards_of(
    state: &ApiState,
    query: &HashMap<String, String>,
) -> Result<Vec<std::sync::Arc<tidegate_rtmp::RelayStatus>>, Box<Response>> {
    let Some(path) = query.get("path") else {
        return Err(Box::new(
            error(StatusCode::BAD_REQUEST, "path is missing").into_response(),
        ));
    };
    if state.paths.get(path).is_none() && state.paths.find(path).is_err() {
        return Err(Box::new(
            error(StatusCode::NOT_FOUND, "path not found").into_response(),
        ));
    }
    Ok(state.relays.pushes(path))
}

async fn forward_list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let items = match forwards_of(&state, &query) {
        Ok(f) => f.iter().map(|r| api_forward(r)).collect::<Vec<_>>(),
        Err(r) => return *r,
    };
    match paginate(items, &query) {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn forward_get(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = query.get("id") else {
        return error(StatusCode::BAD_REQUEST, "id is missing").into_response();
    };
    match forwards_of(&state, &query) {
        Ok(f) => match f.iter().find(|r| &r.id == id) {
            Some(r) => Json(api_forward(r)).into_response(),
            None => error(StatusCode::NOT_FOUND, "forward destination not found").into_response(),
        },
        Err(r) => *r,
    }
}

/// One HLS viewer, MediaMTX's `HLSSession`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiHlsSession {
    id: String,
    created: String,
    path: String,
    query: String,
    remote_addr: String,
    user: String,
    user_agent: String,
    #[serde(rename = "isCDN")]
    is_cdn: bool,
    outbound_bytes: u64,
}

fn api_hls_session(s: &tidegate_hls::sessions::Session) -> ApiHlsSession {
    use std::sync::atomic::Ordering::Relaxed;
    ApiHlsSession {
        id: s.id.clone(),
        created: humantime::format_rfc3339_millis(s.created).to_string(),
        path: s.path.clone(),
        query: s.query.clone(),
        remote_addr: s
            .remote_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .to_string(),
        user: s.user.clone(),
        user_agent: s.user_agent.clone(),
        is_cdn: s.is_cdn,
        outbound_bytes: s.outbound_bytes.load(Relaxed),
    }
}

async fn hls_sessions_list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let items: Vec<ApiHlsSession> = state
        .hls
        .sessions()
        .iter()
        .map(|s| api_hls_session(s))
        .collect();
    match paginate(items, &query) {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn hls_sessions_get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.hls.sessions().iter().find(|s| s.id == id) {
        Some(s) => Json(api_hls_session(s)).into_response(),
        None => error(StatusCode::NOT_FOUND, "session not found").into_response(),
    }
}

async fn hls_sessions_kick(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    if state.hls.kick_session(&id) {
        ok()
    } else {
        error(StatusCode::NOT_FOUND, "session not found").into_response()
    }
}

/// MoQ is not built: no sessions, ever.
async fn moq_list(Query(query): Query<HashMap<String, String>>) -> Response {
    match paginate(Vec::<serde_json::Value>::new(), &query) {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn moq_missing() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "session not found (MoQ is not built in Tidegate yet)",
    )
    .into_response()
}

async fn hls_get(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.hls.muxers().into_iter().find(|m| m.path == name) {
        Some(m) => Json(api_hls(m)).into_response(),
        None => error(StatusCode::NOT_FOUND, "HLS muxer not found").into_response(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiSegment {
    start: String,
    /// Tidegate's own: seconds, size in bytes, format, codecs, still being written.
    duration: f64,
    size: u64,
    format: String,
    codecs: Vec<String>,
    recording: bool,
}

#[derive(Serialize)]
struct ApiRecording {
    name: String,
    segments: Vec<ApiSegment>,
}

fn api_recording(state: &ApiState, name: &str) -> ApiRecording {
    ApiRecording {
        name: name.to_string(),
        segments: state
            .recorder
            .index()
            .segments(name, None, None)
            .into_iter()
            .map(|s| ApiSegment {
                start: tidegate_record::playback::format_time(s.start),
                duration: s.duration,
                size: s.size,
                format: s.format.name().to_string(),
                codecs: s.codecs.to_vec(),
                recording: s.recording,
            })
            .collect(),
    }
}

async fn recordings_list(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    state
        .recorder
        .index()
        .wait_loaded(std::time::Duration::from_secs(30))
        .await;
    let names = state.recorder.index().paths();
    match paginate(names, &q) {
        Ok(page) => Json(Page {
            item_count: page.item_count,
            page_count: page.page_count,
            items: page
                .items
                .iter()
                .map(|n| api_recording(&state, n))
                .collect::<Vec<_>>(),
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn recordings_get(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    state
        .recorder
        .index()
        .wait_loaded(std::time::Duration::from_secs(30))
        .await;
    let r = api_recording(&state, &name);
    if r.segments.is_empty() {
        return error(StatusCode::NOT_FOUND, "recording not found").into_response();
    }
    Json(r).into_response()
}

async fn recordings_delete(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(path), Some(start)) = (q.get("path"), q.get("start")) else {
        return error(StatusCode::BAD_REQUEST, "path and start are needed").into_response();
    };
    let Some(start) = tidegate_record::playback::parse_time(start) else {
        return error(StatusCode::BAD_REQUEST, "start is not RFC 3339").into_response();
    };
    state
        .recorder
        .index()
        .wait_loaded(std::time::Duration::from_secs(30))
        .await;
    let Some(seg) = state
        .recorder
        .index()
        .segments(path, Some(start), Some(start + 1))
        .into_iter()
        .find(|s| (s.start - start).abs() < 1_000)
    else {
        return error(StatusCode::NOT_FOUND, "segment not found").into_response();
    };
    if seg.recording {
        return error(StatusCode::BAD_REQUEST, "the segment is being recorded").into_response();
    }
    let template = state
        .paths
        .find(path)
        .map(|m| m.conf.record.path.clone())
        .unwrap_or_default();
    let recorder = state.recorder.clone();
    let done = tokio::task::spawn_blocking(move || recorder.delete(&seg, &template)).await;
    match done {
        Ok(Ok(())) => Json(serde_json::json!({ "status": "ok" })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such API endpoint").into_response()
}

#[cfg(test)]
mod openapi_tests {
    /// docs/openapi.yaml lists exactly the routes the API's routers serve.
    #[test]
    fn the_document_lists_every_route_and_no_other() {
        let mut routes = std::collections::BTreeSet::new();
        for src in [
            include_str!("api.rs"),
            include_str!("config_api.rs"),
            include_str!("console.rs"),
        ] {
            for part in src.split(".route(").skip(1) {
                let Some(rest) = part.trim_start().strip_prefix("\"/") else {
                    continue;
                };
                let path = rest.split('"').next().unwrap_or_default();
                routes.insert(format!("/{}", path.replace("{*", "{")));
            }
        }
        let doc = yaml_rust2::YamlLoader::load_from_str(super::OPENAPI).expect("YAML");
        let documented: std::collections::BTreeSet<String> = doc[0]["paths"]
            .as_hash()
            .expect("paths")
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        let missing: Vec<_> = routes.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "not documented: {missing:?}; documented but not served: {extra:?}"
        );
    }
}
