//! The playback server (MediaMTX's API): `GET /list?path=…[&start=…&end=…]` lists the
//! recorded spans of a path, `GET /get?path=…&start=…&duration=…[&format=fmp4]` streams a
//! window of them as one fMP4. Who may use it is checked by the binary (action `playback`)
//! before a request reaches these handlers.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Serialize;

use crate::cut::Cut;
use crate::index::Index;
use crate::RecordError;

/// Consecutive segments closer than this are one span in `/list`.
pub const SPAN_TOLERANCE_US: i64 = 1_000_000;
/// How long a request waits for the archive to be indexed after a start.
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
pub struct Playback {
    pub index: Index,
}

pub fn router(p: Playback) -> Router {
    Router::new()
        .route("/list", get(list))
        .route("/get", get(get_window))
        .with_state(p)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({ "status": "error", "error": msg.into() });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// RFC 3339 (with any offset) to µs since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_microsecond())
}

/// µs since the epoch to RFC 3339 in the server's time zone, to the microsecond.
pub fn format_time(us: i64) -> String {
    let ts = jiff::Timestamp::from_microsecond(us).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let z = ts.to_zoned(jiff::tz::TimeZone::system());
    z.strftime("%Y-%m-%dT%H:%M:%S%.f%:z").to_string()
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Span {
    pub start: String,
    pub duration: f64,
    pub url: String,
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost:9996")
        .to_string()
}

async fn list(
    State(p): State<Playback>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(path) = q.get("path").filter(|p| !p.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "the path parameter is missing");
    };
    let start = match q.get("start").filter(|s| !s.is_empty()) {
        Some(s) => match parse_time(s) {
            Some(t) => Some(t),
            None => return error(StatusCode::BAD_REQUEST, format!("invalid start: {s}")),
        },
        None => None,
    };
    let end = match q.get("end").filter(|s| !s.is_empty()) {
        Some(s) => match parse_time(s) {
            Some(t) => Some(t),
            None => return error(StatusCode::BAD_REQUEST, format!("invalid end: {s}")),
        },
        None => None,
    };
    if !p.index.wait_loaded(LOAD_WAIT).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the recordings are still being indexed",
        );
    }
    let spans = p.index.spans(path, start, end, SPAN_TOLERANCE_US);
    if spans.is_empty() {
        return error(StatusCode::NOT_FOUND, "no recordings found");
    }
    let scheme = if headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        == Some("https")
    {
        "https"
    } else {
        "http"
    };
    let host = host(&headers);
    let list: Vec<Span> = spans
        .into_iter()
        .map(|(s, e)| (s, (e - s) as f64 / 1e6))
        .map(|(mut s, mut d)| {
            // Clipped to the asked window.
            if let Some(a) = start {
                if a > s {
                    d -= (a - s) as f64 / 1e6;
                    s = a;
                }
            }
            if let Some(b) = end {
                let e = s + (d * 1e6) as i64;
                if b < e {
                    d -= (e - b) as f64 / 1e6;
                }
            }
            let start = format_time(s);
            // Query keys sorted, as MediaMTX writes them.
            let url = format!(
                "{scheme}://{host}/get?duration={d}&path={}&start={}",
                tidegate_core::text::percent_encode(path),
                tidegate_core::text::percent_encode(&start),
            );
            Span {
                start,
                duration: d,
                url,
            }
        })
        .filter(|s| s.duration > 0.0)
        .collect();
    axum::Json(list).into_response()
}

async fn get_window(
    State(p): State<Playback>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(path) = q.get("path").filter(|p| !p.is_empty()).cloned() else {
        return error(StatusCode::BAD_REQUEST, "the path parameter is missing");
    };
    let Some(start) = q.get("start").and_then(|s| parse_time(s)) else {
        return error(StatusCode::BAD_REQUEST, "start is missing or not RFC 3339");
    };
    let Some(duration) = q
        .get("duration")
        .and_then(|d| d.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d > 0.0)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "duration is missing or not a positive number of seconds",
        );
    };
    let mp4 = match q.get("format").map(String::as_str) {
        None | Some("") | Some("fmp4") => false,
        Some("mp4") => true,
        Some(f) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid format: {f} (fmp4 or mp4)"),
            )
        }
    };
    if !p.index.wait_loaded(LOAD_WAIT).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the recordings are still being indexed",
        );
    }
    let duration_us = (duration * 1e6).min(i64::MAX as f64 / 2.0) as i64;
    let segments = p
        .index
        .segments(&path, Some(start), Some(start + duration_us));
    if segments.is_empty() {
        return error(StatusCode::NOT_FOUND, "no recordings found");
    }
    if segments.iter().all(|s| s.format != crate::Format::Fmp4) {
        return error(
            StatusCode::BAD_REQUEST,
            "these recordings are MPEG-TS: playback serves fMP4 recordings (recordFormat: fmp4)",
        );
    }
    let planned = tokio::task::spawn_blocking(move || Cut::new(segments, start, duration_us)).await;
    let mut cut = match planned {
        Ok(Ok(c)) => c,
        Ok(Err(RecordError::Nothing)) => {
            return error(StatusCode::NOT_FOUND, "no recordings found")
        }
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    };
    if mp4 {
        return mp4_answer(cut).await;
    }
    // A blocking thread reads part by part; the channel holds a few, so memory stays small
    // and a slow client slows the reading, not the server.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let init = cut.init.clone();
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(Ok(init)).is_err() {
            return;
        }
        loop {
            match cut.next_fragment() {
                Ok(Some(b)) => {
                    if tx.blocking_send(Ok(b)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("[playback] {e}");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
        }
    });
    streamed(rx, None)
}

/// A `video/mp4` answer whose body is what a producer thread sends on `rx`.
fn streamed(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    length: Option<u64>,
) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "video/mp4");
    if let Some(n) = length {
        r = r.header(header::CONTENT_LENGTH, n);
    }
    r.body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

/// `format=mp4`: the header (tables for the whole window) first, then the media read range by
/// range from the segments, as the client takes it.
async fn mp4_answer(cut: Cut) -> Response {
    let plan = match tokio::task::spawn_blocking(move || cut.mp4()).await {
        Ok(Ok(p)) => p,
        Ok(Err(RecordError::Nothing)) => {
            return error(StatusCode::NOT_FOUND, "no recordings found")
        }
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    };
    let length = plan.header.len() as u64 + plan.reads.iter().map(|r| r.2).sum::<u64>();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        if tx.blocking_send(Ok(plan.header)).is_err() {
            return;
        }
        let mut open: Option<(std::path::PathBuf, std::fs::File)> = None;
        for (file, offset, len) in plan.reads {
            let read = (|| -> std::io::Result<Bytes> {
                if open.as_ref().is_none_or(|(p, _)| *p != file) {
                    open = Some((file.clone(), std::fs::File::open(&file)?));
                }
                let f = &mut open
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("closed"))?
                    .1;
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = vec![0u8; len.min(crate::cut::MAX_PART) as usize];
                f.read_exact(&mut buf)?;
                Ok(Bytes::from(buf))
            })();
            let failed = read.is_err();
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
        }
    });
    streamed(rx, Some(length))
}
