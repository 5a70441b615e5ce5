//! The HTTP side: `/<path>/index.m3u8` (multivariant), `/<path>/stream.m3u8` (media, with
//! `_HLS_msn` / `_HLS_part` blocking reload and `_HLS_skip` delta updates), init segments,
//! segments, parts (streamed while written), and `/<path>/` (a player page); DASH beside it:
//! `/<path>/index.mpd`, its tracks' init segments and segments, `/<path>/dash` (a dash.js
//! page).

use std::borrow::Cow;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use tidegate_core::{Action, AuthRequest, CoreError, Credentials};

use crate::muxer::Muxer;
use crate::reply::{Reply, ReplyBody, Request, Verb};
use crate::segmenter::Variant;
use crate::Inner;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new().fallback(handle).with_state(inner)
}

fn decode(v: &str) -> String {
    tidegate_core::text::percent_decode(v, true)
}

struct Query {
    msn: Option<Result<u64, ()>>,
    part: Option<Result<u64, ()>>,
    skip: bool,
    user: Option<String>,
    pass: Option<String>,
    token: Option<String>,
    /// What sub-resource URIs carry along (credentials), with its leading `?`.
    forward: String,
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query {
        msn: None,
        part: None,
        skip: false,
        user: None,
        pass: None,
        token: None,
        forward: String::new(),
    };
    let mut fwd = Vec::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "_HLS_msn" => out.msn = Some(v.parse().map_err(|_| ())),
            "_HLS_part" => out.part = Some(v.parse().map_err(|_| ())),
            "_HLS_skip" => out.skip = v == "YES" || v == "v2",
            "user" => {
                out.user = Some(decode(v));
                fwd.push(pair);
            }
            "pass" => {
                out.pass = Some(decode(v));
                fwd.push(pair);
            }
            "token" | "jwt" => {
                out.token = Some(tidegate_core::text::percent_decode(v, false));
                fwd.push(pair);
            }
            _ => {}
        }
    }
    if !fwd.is_empty() {
        out.forward = format!("?{}", fwd.join("&"));
    }
    out
}

fn basic_auth(authorization: Option<&str>) -> Option<(String, String)> {
    use base64::Engine;
    let v = authorization?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Whether the client takes `Content-Encoding: gzip`.
fn takes_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

pub(crate) fn gzip(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 3), level);
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// `Authorization: Bearer <token>`.
fn bearer(authorization: Option<&str>) -> Option<String> {
    let v = authorization?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// `Access-Control-Allow-Origin` for `origin` (`hlsAllowOrigins`).
fn cors(inner: &Inner, origin: Option<&str>, r: &mut Reply) {
    r.allow_origin = match tidegate_core::text::allowed_origin(&inner.cfg.allow_origins, origin) {
        Some("*") => Some(Cow::Borrowed("*")),
        other => other.map(|a| Cow::Owned(a.to_string())),
    };
}

fn text(status: u16, msg: impl Into<String>) -> Reply {
    let mut r = Reply::new(
        status,
        "text/plain; charset=utf-8",
        ReplyBody::Full(Bytes::from(msg.into())),
    );
    r.cache_control = Cow::Borrowed("no-store");
    r
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    // Taken apart, not extracted piece by piece: the extractors clone the URI and headers.
    let (parts, _) = req.into_parts();
    let req = Request::of(&parts);
    answer(&inner, remote, &req)
        .await
        .into_response(req.verb == Verb::Head)
}

/// The reply to `req` from `remote` (the client's address), CORS headers included; a HEAD
/// request's reply still carries its body, which the front does not send.
pub(crate) async fn answer(inner: &Arc<Inner>, remote: SocketAddr, req: &Request<'_>) -> Reply {
    let mut r = route(inner, remote, req).await;
    cors(inner, req.origin, &mut r);
    r
}

enum File {
    Page,
    Multivariant,
    Media,
    Init(u32),
    Segment(u64),
    Part(u64, u64),
    /// DASH: the MPD, the player page, a track's init segment (version, track) and a
    /// track's segment (number, track).
    Mpd,
    DashPage,
    DashInit(u32, u32),
    DashSegment(u64, u32),
    Other,
}

fn parse_file(file: &str, prefix: Option<&str>) -> File {
    match file {
        "" => return File::Page,
        "index.m3u8" => return File::Multivariant,
        "stream.m3u8" => return File::Media,
        "index.mpd" => return File::Mpd,
        "dash" => return File::DashPage,
        _ => {}
    }
    let Some(rest) = prefix
        .and_then(|p| file.strip_prefix(p))
        .and_then(|r| r.strip_prefix('_'))
    else {
        return File::Other;
    };
    let stem = rest.rsplit_once('.').map_or(rest, |(s, _)| s);
    let pair = |v: &str| -> Option<(u64, u32)> {
        let (a, b) = v.split_once('_')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    if let Some((v, t)) = stem.strip_prefix("dinit").and_then(pair) {
        return u32::try_from(v).map_or(File::Other, |v| File::DashInit(v, t));
    }
    if let Some((m, t)) = stem.strip_prefix("dseg").and_then(pair) {
        return File::DashSegment(m, t);
    }
    if let Some(v) = stem.strip_prefix("init").and_then(|v| v.parse().ok()) {
        return File::Init(v);
    }
    if let Some(m) = stem.strip_prefix("seg").and_then(|v| v.parse().ok()) {
        return File::Segment(m);
    }
    if let Some((m, p)) = stem.strip_prefix("part").and_then(|v| v.split_once('_')) {
        if let (Ok(m), Ok(p)) = (m.parse(), p.parse()) {
            return File::Part(m, p);
        }
    }
    File::Other
}

async fn route(inner: &Arc<Inner>, remote: SocketAddr, req: &Request<'_>) -> Reply {
    if req.verb == Verb::Options {
        let mut r = text(204, "");
        r.preflight = true;
        return r;
    }
    if req.verb != Verb::Get && req.verb != Verb::Head {
        return text(405, "method not allowed\n");
    }
    let full = req.path.trim_start_matches('/');
    // The player's library, served from the binary: public code, no credentials needed, and
    // no request leaves the machine for it.
    // `<file>` or `…/<file>`, without a string made per request.
    let is_file = |name: &str| {
        full.strip_suffix(name)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('/'))
    };
    if is_file(HLS_JS_FILE) {
        return hls_js(req.accept_encoding);
    }
    if is_file(DASH_JS_FILE) {
        return dash_js(req.accept_encoding);
    }
    let Some((path, file)) = full.rsplit_once('/') else {
        if full.is_empty() {
            return text(404, "no path given\n");
        }
        // `/cam1` → `/cam1/` (the player page), keeping the query.
        let loc = match req.query {
            Some(q) => format!("/{full}/?{q}"),
            None => format!("/{full}/"),
        };
        let mut r = text(301, "");
        // What a header may carry (the axum front would refuse the rest).
        if loc.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            r.location = Some(loc);
        }
        return r;
    };
    let q = parse_query(req.query);
    let (user, pass) = match basic_auth(req.authorization) {
        Some((u, p)) => (Some(u), Some(p)),
        None => (q.user.clone(), q.pass.clone()),
    };
    let mut creds = Credentials::new(user, pass, remote.ip());
    creds.token = bearer(req.authorization);
    if creds.token.is_none() && q.token.is_some() {
        creds.token = q.token.clone();
        creds.token_from_query = true;
    }
    let mut ask =
        AuthRequest::new(Action::Read, path, "hls", creds).with_query(req.query.unwrap_or(""));
    // A `streamKeyInPath` name (`live/<key>/index.m3u8`) is read as its path.
    // `hlsCDNSecret`: the CDN enforces its own access rules; its requests need no others.
    let from_cdn = !inner.cfg.cdn_secret.is_empty()
        && ask.creds.token.as_deref() == Some(inner.cfg.cdn_secret.as_str())
        && !ask.creds.token_from_query;
    let authorized = if from_cdn {
        inner.paths.find(&ask.path).map(drop)
    } else {
        inner.paths.authorize_path(&mut ask).await.map(drop)
    };
    let path: &str = &ask.path;
    // An answer to the CDN is cached and served to every viewer: no viewer's credentials go
    // into the URIs it lists.
    let mut q = q;
    if from_cdn {
        q.forward.clear();
    }
    if let Err(e) = authorized {
        return match e {
            CoreError::Auth(e) => {
                tracing::info!("[HLS] {remote} refused on '{path}': {e}");
                let mut r = text(401, format!("{e}\n"));
                r.www_authenticate = true;
                r
            }
            other => text(404, format!("{other}\n")),
        };
    }
    let existing = inner.existing(path);
    let prefix = existing.as_ref().map(|m| m.state().prefix.clone());
    let kind = parse_file(file, prefix.as_deref());
    let session = match kind {
        File::Page | File::DashPage | File::Other => None,
        _ => {
            let user = ask.creds.user.clone().unwrap_or_default();
            let user_agent = req.user_agent.unwrap_or("");
            let seen = crate::sessions::Seen {
                path,
                remote,
                user: &user,
                user_agent,
                query: req.query.unwrap_or(""),
                is_cdn: from_cdn,
                entry: matches!(parse_file(file, None), File::Multivariant | File::Mpd),
            };
            match inner.sessions.track(seen) {
                Some(s) => Some(s),
                None => return text(401, "this session was kicked: load the stream again\n"),
            }
        }
    };
    let mut r = serve(inner, path, existing, kind, file, &q, req).await;
    // What a viewer got with credentials is theirs: shared caches must not serve it to
    // others (the CDN's own requests, made with hlsCDNSecret, stay public).
    let credentials =
        ask.creds.user.is_some() || ask.creds.pass.is_some() || ask.creds.token.is_some();
    if credentials && !from_cdn {
        if let Some(rest) = r.cache_control.strip_prefix("public") {
            r.cache_control = Cow::Owned(format!("private{rest}"));
        }
    }
    match session {
        // A HEAD answer's body is not sent.
        Some(s) if r.is_success() && req.verb != Verb::Head => s.count(r),
        _ => r,
    }
}

/// Serves `file` of `path` once the request is authorised.
async fn serve(
    inner: &Arc<Inner>,
    path: &str,
    existing: Option<Arc<Muxer>>,
    kind: File,
    file: &str,
    q: &Query,
    req: &Request<'_>,
) -> Reply {
    match kind {
        File::Page => page(path),
        File::DashPage => dash_page(path),
        File::Mpd => {
            if inner.cfg.variant == Variant::MpegTs {
                return text(
                    404,
                    "DASH needs fMP4 segments: set hlsVariant to lowLatency or fmp4\n",
                );
            }
            let mux = match existing {
                Some(m) => m,
                None => match inner.muxer_or_demand(path).await {
                    Ok(m) => m,
                    Err(e) => return text(404, format!("{e}\n")),
                },
            };
            mux.touch();
            mpd(inner, &mux, q).await
        }
        File::Multivariant | File::Media => {
            let mux = match existing {
                Some(m) => m,
                None => match inner.muxer_or_demand(path).await {
                    Ok(m) => m,
                    Err(e) => return text(404, format!("{e}\n")),
                },
            };
            mux.touch();
            let multivariant = matches!(parse_file(file, None), File::Multivariant);
            playlist(inner, &mux, multivariant, q, req.accept_encoding).await
        }
        File::Other => text(404, "not found\n"),
        f => {
            let Some(mux) = existing else {
                return text(404, "no muxer for this path\n");
            };
            mux.touch();
            media_file(&mux, f).await
        }
    }
}

fn target(mux: &Muxer) -> Duration {
    Duration::from_secs(mux.state().target_duration.max(1))
}

async fn playlist(
    inner: &Inner,
    mux: &Arc<Muxer>,
    multivariant: bool,
    q: &Query,
    accept_encoding: Option<&str>,
) -> Reply {
    // The first segment: up to a GOP away. hls.js waits 10 s for a manifest by default.
    let first_wait = Duration::from_secs(8).max(inner.cfg.segment_duration * 3);
    if !mux
        .wait_for(first_wait, |s| s.ready() || s.refused.is_some())
        .await
    {
        return text(503, "the muxer has no segment yet\n");
    }
    if let Some(why) = mux.state().refused.clone() {
        return text(404, format!("{why}\n"));
    }
    let ll = inner.cfg.variant == Variant::LowLatency;
    let mut blocking = false;
    if !multivariant && ll {
        let msn = match q.msn {
            Some(Ok(m)) => Some(m),
            Some(Err(())) => return text(400, "bad _HLS_msn\n"),
            None => None,
        };
        let part = match q.part {
            Some(Ok(p)) => Some(p),
            Some(Err(())) => return text(400, "bad _HLS_part\n"),
            None => None,
        };
        if part.is_some() && msn.is_none() {
            return text(400, "_HLS_part needs _HLS_msn\n");
        }
        if let Some(msn) = msn {
            let last = mux.state().last_msn().unwrap_or(0);
            if msn > last + 2 {
                return text(
                    400,
                    format!("_HLS_msn {msn} is too far ahead of the playlist (last {last})\n"),
                );
            }
            blocking = true;
            let limit = target(mux) * 3;
            if !mux.wait_for(limit, |s| s.has(msn, part)).await {
                return text(503, "the requested part did not appear in time\n");
            }
        }
    }
    let gz = takes_gzip(accept_encoding);
    let body = mux.playlist(multivariant, q.skip && ll && !multivariant, &q.forward, gz);
    mux.bytes_sent
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut r = Reply::new(200, "application/vnd.apple.mpegurl", ReplyBody::Full(body));
    r.gzip = gz;
    r.vary = true;
    let target = mux.state().target_duration.max(1);
    r.cache_control = playlist_cache_control(blocking, ll, target);
    r
}

/// How long an HTTP cache may keep a playlist answer, so that a cache in front (nginx's
/// `proxy_cache`, a CDN) sends about one request per playlist version to the server:
/// - a blocking reload's answer (`_HLS_msn`/`_HLS_part`) holds the part it was asked for for as
///   long as that part is listed (parts stay for about three target durations), whatever
///   newer versions come: kept that long;
/// - a plain LL-HLS playlist changes with every part: one second (as AWS MediaPackage does;
///   a player's next request is a blocking one, which catches up at once);
/// - a plain HLS playlist changes with every segment: half a target duration, at least 1 s.
fn playlist_cache_control(
    blocking: bool,
    low_latency: bool,
    target_secs: u64,
) -> Cow<'static, str> {
    let secs = if blocking {
        3 * target_secs
    } else if low_latency {
        1
    } else {
        (target_secs / 2).max(1)
    };
    match secs {
        1 => Cow::Borrowed("public, max-age=1"),
        3 => Cow::Borrowed("public, max-age=3"),
        _ => Cow::Owned(format!("public, max-age={secs}")),
    }
}

fn media_response(mux: &Muxer, body: ReplyBody, ts: bool) -> Reply {
    if let Some(n) = body.whole_len() {
        mux.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    let mut r = Reply::new(200, if ts { "video/mp2t" } else { "video/mp4" }, body);
    // File names are unique per muxer: their content never changes.
    r.cache_control = Cow::Borrowed("public, max-age=31536000, immutable");
    r
}

async fn media_file(mux: &Arc<Muxer>, f: File) -> Reply {
    let limit = target(mux) * 3;
    let ts = mux.state().variant == Variant::MpegTs;
    match f {
        File::Init(v) => {
            let data = mux
                .state()
                .inits
                .iter()
                .find(|(n, _)| *n == v)
                .map(|(_, d)| d.clone());
            match data {
                Some(d) => media_response(mux, ReplyBody::Full(d), false),
                None => text(404, "no such init segment\n"),
            }
        }
        File::Segment(msn) => {
            // A segment being written is answered once complete.
            let ok = mux
                .wait_for(limit, |s| {
                    s.segment(msn).is_none_or(|seg| seg.complete)
                        || s.last_msn().is_some_and(|l| l < msn)
                })
                .await;
            let (parts, file) = {
                let st = mux.state();
                match st.segment(msn) {
                    Some(seg) if seg.complete && ok => match &seg.file {
                        Some(f) => (None, Some(f.clone())),
                        None => (
                            Some(
                                seg.parts
                                    .iter()
                                    .map(|p| p.data.clone())
                                    .collect::<Vec<Bytes>>(),
                            ),
                            None,
                        ),
                    },
                    _ => (None, None),
                }
            };
            // `hlsDirectory`: from the segment's file.
            let parts = match file {
                Some(f) => tokio::fs::read(&f).await.ok().map(|d| vec![Bytes::from(d)]),
                None => parts,
            };
            match parts {
                Some(parts) => media_response(mux, ReplyBody::Parts(parts), ts),
                None => text(404, "no such segment\n"),
            }
        }
        File::Part(msn, idx) => part(mux, msn, idx, limit).await,
        File::DashInit(v, track) => {
            let data = mux
                .state()
                .track_inits
                .iter()
                .find(|(n, _)| *n == v)
                .and_then(|(_, t)| t.iter().find(|t| t.id == track))
                .map(|t| t.init.clone());
            match data {
                Some(d) => media_response(mux, ReplyBody::Full(d), false),
                None => text(404, "no such init segment\n"),
            }
        }
        File::DashSegment(msn, track) => dash_segment(mux, msn, track, limit).await,
        _ => text(404, "not found\n"),
    }
}

/// The MPD: the first request turns DASH on for the muxer (segments keep their chunks by
/// track from the next one) and waits for a segment made that way.
async fn mpd(inner: &Inner, mux: &Arc<Muxer>, q: &Query) -> Reply {
    mux.state().dash = true;
    let first_wait = Duration::from_secs(10).max(inner.cfg.segment_duration * 4);
    if !mux.wait_for(first_wait, crate::dash::ready).await {
        return text(503, "the muxer has no DASH segment yet\n");
    }
    let body = crate::dash::mpd(&mux.state(), &q.forward, std::time::SystemTime::now());
    mux.bytes_sent
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut r = Reply::new(
        200,
        "application/dash+xml",
        ReplyBody::Full(Bytes::from(body)),
    );
    r.cache_control = Cow::Borrowed("no-cache");
    r
}

enum SegNow {
    /// The track's chunks from the one asked for, and whether the segment is complete.
    Chunks(Vec<Bytes>, bool),
    Gone,
    Later,
}

fn seg_now(s: &crate::state::State, msn: u64, track: u32, from: usize) -> SegNow {
    match s.segment(msn) {
        Some(seg) if !seg.dash => SegNow::Gone,
        Some(seg) => SegNow::Chunks(
            seg.track(track).iter().skip(from).cloned().collect(),
            seg.complete,
        ),
        None if s.last_msn().is_none_or(|l| msn > l) => SegNow::Later,
        None => SegNow::Gone,
    }
}

/// A track's DASH segment: a complete one at once; the one being written (LL-DASH) streamed
/// chunk by chunk as the muxer cuts them, until it completes.
async fn dash_segment(mux: &Arc<Muxer>, msn: u64, track: u32, limit: Duration) -> Reply {
    let started = mux
        .wait_for(limit, |s| {
            !matches!(seg_now(s, msn, track, 0), SegNow::Later)
        })
        .await;
    if !started {
        return text(404, "the segment did not start in time\n");
    }
    let now = seg_now(&mux.state(), msn, track, 0);
    match now {
        SegNow::Gone | SegNow::Later => text(404, "no such segment\n"),
        SegNow::Chunks(chunks, true) => {
            if chunks.is_empty() {
                return text(404, "no such track in the segment\n");
            }
            media_response(mux, ReplyBody::Parts(chunks), false)
        }
        SegNow::Chunks(_, false) => {
            let rx = mux.subscribe();
            let deadline = tokio::time::Instant::now() + limit;
            let stream = futures::stream::unfold(
                (mux.clone(), rx, 0usize, false),
                move |(mux, mut rx, sent, done)| async move {
                    if done {
                        return None;
                    }
                    loop {
                        let (chunks, complete) = match seg_now(&mux.state(), msn, track, sent) {
                            SegNow::Chunks(c, complete) => (c, complete),
                            _ => (Vec::new(), true),
                        };
                        // One chunk at a time, shared with the muxer (no copy).
                        if let Some(chunk) = chunks.into_iter().next() {
                            mux.bytes_sent
                                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            return Some((
                                Ok::<_, std::io::Error>(chunk),
                                (mux, rx, sent + 1, false),
                            ));
                        }
                        if complete {
                            return None;
                        }
                        match tokio::time::timeout_at(deadline, rx.changed()).await {
                            Ok(Ok(())) => {}
                            _ => {
                                return Some((
                                    Err(std::io::Error::other("segment did not complete in time")),
                                    (mux, rx, sent, true),
                                ))
                            }
                        }
                    }
                },
            );
            media_response(mux, ReplyBody::Stream(stream.boxed()), false)
        }
    }
}

enum PartNow {
    Done(Bytes),
    /// Done, in its segment's file (`hlsDirectory`): file, offset, length.
    OnDisk(std::path::PathBuf, u64, u64),
    Open,
    Gone,
    Later,
}

fn part_now(s: &crate::state::State, msn: u64, idx: u64) -> PartNow {
    match s.segment(msn) {
        Some(seg) => match seg.parts.get(idx as usize) {
            Some(p) => match &seg.file {
                Some(f) if p.data.is_empty() && p.len > 0 => {
                    PartNow::OnDisk(f.clone(), p.offset, p.len)
                }
                _ => PartNow::Done(p.data.clone()),
            },
            None if seg.complete => PartNow::Gone,
            None if idx == seg.parts.len() as u64 => PartNow::Open,
            None => PartNow::Later,
        },
        None if s.last_msn().is_some_and(|l| msn > l) => PartNow::Later,
        None => PartNow::Gone,
    }
}

/// `len` bytes at `at` of a segment file (`hlsDirectory`).
async fn read_range(path: &std::path::Path, at: u64, len: u64) -> std::io::Result<Bytes> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(std::io::SeekFrom::Start(at)).await?;
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// A part: complete ones at once; the part being written (the preload hint) streamed chunk
/// by chunk as the muxer writes it; one further ahead held until it starts.
async fn part(mux: &Arc<Muxer>, msn: u64, idx: u64, limit: Duration) -> Reply {
    let started = mux
        .wait_for(limit, |s| !matches!(part_now(s, msn, idx), PartNow::Later))
        .await;
    if !started {
        return text(404, "the part did not start in time\n");
    }
    let now = part_now(&mux.state(), msn, idx);
    match now {
        PartNow::Done(d) => media_response(mux, ReplyBody::Full(d), false),
        PartNow::OnDisk(f, at, len) => match read_range(&f, at, len).await {
            Ok(d) => media_response(mux, ReplyBody::Full(d), false),
            Err(_) => text(404, "no such part\n"),
        },
        PartNow::Gone | PartNow::Later => text(404, "no such part\n"),
        PartNow::Open => {
            let mux2 = mux.clone();
            let rx = mux.subscribe();
            let deadline = tokio::time::Instant::now() + limit;
            let stream = futures::stream::unfold(
                (mux2, rx, 0usize, false),
                move |(mux, mut rx, sent, done)| async move {
                    if done {
                        return None;
                    }
                    loop {
                        let on_disk = match part_now(&mux.state(), msn, idx) {
                            PartNow::OnDisk(f, at, len) => Some((f, at, len)),
                            _ => None,
                        };
                        if let Some((f, at, len)) = on_disk {
                            // The part ended and its segment went to disk meanwhile: the rest
                            // from the file.
                            let skip = (sent as u64).min(len);
                            let rest = read_range(&f, at + skip, len - skip).await;
                            return match rest {
                                Ok(d) if !d.is_empty() => {
                                    let n = sent + d.len();
                                    Some((Ok(d), (mux, rx, n, true)))
                                }
                                _ => None,
                            };
                        }
                        let (chunk, finished) = {
                            let st = mux.state();
                            match part_now(&st, msn, idx) {
                                PartNow::Done(d) => (d.slice(sent.min(d.len())..), true),
                                PartNow::Open => {
                                    // The next chunk not sent yet, as a slice of the
                                    // muxer's own (no copy per request).
                                    let mut skip = sent;
                                    let mut next = Bytes::new();
                                    for c in &st.open_part {
                                        if skip >= c.len() {
                                            skip -= c.len();
                                            continue;
                                        }
                                        next = c.slice(skip..);
                                        break;
                                    }
                                    (next, false)
                                }
                                _ => (Bytes::new(), true),
                            }
                        };
                        if !chunk.is_empty() || finished {
                            if chunk.is_empty() {
                                return None;
                            }
                            mux.bytes_sent
                                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            let n = sent + chunk.len();
                            return Some((Ok::<_, std::io::Error>(chunk), (mux, rx, n, finished)));
                        }
                        match tokio::time::timeout_at(deadline, rx.changed()).await {
                            Ok(Ok(())) => {}
                            _ => {
                                return Some((
                                    Err(std::io::Error::other("part did not complete in time")),
                                    (mux, rx, sent, true),
                                ))
                            }
                        }
                    }
                },
            );
            media_response(mux, ReplyBody::Stream(stream.boxed()), false)
        }
    }
}

fn page(path: &str) -> Reply {
    player_page(
        PLAYER_PAGE,
        path,
        "{{HLSJS}}",
        &format!("{HLS_JS_FILE}?v={}", hls_js_version()),
    )
}

/// A player page for `path`: `template` with the path and the library's URL filled in.
fn player_page(template: &str, path: &str, lib_key: &str, lib_url: &str) -> Reply {
    let html = template
        .replace("{{PATH}}", &html_escape(path))
        .replace(lib_key, lib_url);
    let mut r = Reply::new(
        200,
        "text/html; charset=utf-8",
        ReplyBody::Full(Bytes::from(html)),
    );
    r.cache_control = Cow::Borrowed("no-cache");
    r
}

fn dash_page(path: &str) -> Reply {
    player_page(
        DASH_PAGE,
        path,
        "{{DASHJS}}",
        &format!("{DASH_JS_FILE}?v={}", dash_js_version()),
    )
}

const DASH_PAGE: &str = include_str!("dash.html");

/// The name the DASH page asks for, next to itself (`/<path>/dash.min.js`).
const DASH_JS_FILE: &str = "dash.min.js";

/// dash.js (its media player, without DRM), vendored by `cargo xtask vendor dash.js`.
const DASH_JS: &str = include_str!("../assets/dash.js/dash.min.js");

/// The vendored dash.js version.
pub fn dash_js_version() -> &'static str {
    include_str!("../assets/dash.js/VERSION").trim()
}

fn dash_js(accept_encoding: Option<&str>) -> Reply {
    static GZIPPED: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    library(accept_encoding, DASH_JS, &GZIPPED)
}

/// The name the player page asks for, next to itself (`/<path>/hls.min.js`).
const HLS_JS_FILE: &str = "hls.min.js";

/// hls.js, vendored by `cargo xtask vendor hls.js` (its licence is beside it).
const HLS_JS: &str = include_str!("../assets/hls.js/hls.min.js");

/// The vendored hls.js version; the page's URL carries it so a new binary is never served a
/// stale cached copy.
pub fn hls_js_version() -> &'static str {
    include_str!("../assets/hls.js/VERSION").trim()
}

/// hls.js, gzipped once (to about a third) for every client that takes gzip.
fn hls_js(accept_encoding: Option<&str>) -> Reply {
    static GZIPPED: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    library(accept_encoding, HLS_JS, &GZIPPED)
}

/// A player library, gzipped once for every client that takes gzip.
fn library(
    accept_encoding: Option<&str>,
    js: &'static str,
    gzipped_once: &'static std::sync::OnceLock<Bytes>,
) -> Reply {
    let gzipped = takes_gzip(accept_encoding);
    let body = if gzipped {
        gzipped_once
            .get_or_init(|| Bytes::from(gzip(js.as_bytes(), flate2::Compression::best())))
            .clone()
    } else {
        Bytes::from_static(js.as_bytes())
    };
    let mut r = Reply::new(200, "text/javascript; charset=utf-8", ReplyBody::Full(body));
    r.cache_control = Cow::Borrowed("public, max-age=86400");
    r.vary = true;
    r.gzip = gzipped;
    r
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PLAYER_PAGE: &str = include_str!("player.html");

/// For the fuzz target: everything this module parses out of a request (path split, file
/// name, query, Basic credentials), without a server.
#[doc(hidden)]
pub fn parse_request_for_fuzzing(target: &str, authorization: &[u8]) -> usize {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // A checksum of what was parsed (so that nothing is optimised away), wrapping: the
    // numbers in file names go up to u64::MAX.
    let mut n: usize = 0;
    if let Some((_, file)) = path.trim_start_matches('/').rsplit_once('/') {
        n = n.wrapping_add(match parse_file(file, Some("abc")) {
            File::Part(m, p) => (m ^ p) as usize,
            File::Segment(m) => m as usize,
            File::Init(v) => v as usize,
            _ => 0,
        });
    }
    let q = parse_query(Some(query));
    n = n
        .wrapping_add(q.forward.len())
        .wrapping_add(q.user.map_or(0, |u| u.len()))
        .wrapping_add(usize::from(q.skip));
    let authorization = std::str::from_utf8(authorization).ok();
    n.wrapping_add(basic_auth(authorization).map_or(0, |(u, p)| u.len() + p.len()))
}

#[cfg(test)]
mod fuzz_regressions {
    /// Found by `hls_structured`: a segment number near u64::MAX overflowed the fuzz helper's
    /// own checksum (the parser itself was right).
    #[test]
    fn huge_numbers_in_file_names_parse() {
        let top = u64::MAX;
        let _ = super::parse_request_for_fuzzing(&format!("/a/abc_seg{top}.mp4?x=1"), b"");
        let _ = super::parse_request_for_fuzzing(
            &format!("/a/abc_part{top}_{}.mp4", top - 1),
            b"Basic dTpw",
        );
    }
}

#[cfg(test)]
mod cache_tests {
    use super::playlist_cache_control;

    #[test]
    fn playlists_are_cacheable_for_their_version_lifetime() {
        // Blocking answers: while the part asked for is listed (three target durations).
        assert_eq!(playlist_cache_control(true, true, 1), "public, max-age=3");
        assert_eq!(playlist_cache_control(true, true, 2), "public, max-age=6");
        // Plain LL-HLS playlists: a second; plain HLS: half a target duration, at least 1 s.
        assert_eq!(playlist_cache_control(false, true, 4), "public, max-age=1");
        assert_eq!(playlist_cache_control(false, false, 1), "public, max-age=1");
        assert_eq!(playlist_cache_control(false, false, 6), "public, max-age=3");
    }
}
