//! MediaMTX's `pprof` listener (`pprofAddress`, default `:9999`), behind the `pprof`
//! permission: a CPU profile of the whole process on demand, taken by sampling stacks
//! (the `pprof` crate, 99 Hz) for `?seconds=N` (default 30, as Go's; at most 300).
//!
//! - `GET /debug/pprof/` — what is served here;
//! - `GET /debug/pprof/profile?seconds=N` — a flame graph (SVG) of the samples;
//! - `GET /debug/pprof/profile?seconds=N&format=folded` — the same samples as folded stacks
//!   (`thread;outer;…;inner count`), the input of flamegraph.pl, inferno and speedscope.
//!
//! Go's protobuf profile is not served: building it needs protoc at build time, which a
//! fresh machine lacks (the README's first command must build there).
//! One profile runs at a time; a second request meanwhile is answered 409.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const DEFAULT_SECONDS: u64 = 30;
const MAX_SECONDS: u64 = 300;
const FREQUENCY: i32 = 99;

#[derive(Clone, Default)]
struct Profiling {
    busy: Arc<AtomicBool>,
}

pub fn router() -> Router {
    Router::new()
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof", get(index))
        .route("/debug/pprof/profile", get(profile))
        .with_state(Profiling::default())
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Tidegate profiling\n\n\
         /debug/pprof/profile?seconds=30                 CPU profile, flame graph (SVG)\n\
         /debug/pprof/profile?seconds=30&format=folded   CPU profile, folded stacks (text)\n",
    )
}

fn text(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

async fn profile(State(p): State<Profiling>, Query(q): Query<HashMap<String, String>>) -> Response {
    let seconds = match q.get("seconds").map(|s| s.parse::<u64>()) {
        None => DEFAULT_SECONDS,
        Some(Ok(n)) if (1..=MAX_SECONDS).contains(&n) => n,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("seconds: expected 1 to {MAX_SECONDS}\n"),
            )
        }
    };
    let folded = match q.get("format").map(String::as_str) {
        None | Some("flamegraph") | Some("svg") => false,
        Some("folded") => true,
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("format: expected flamegraph or folded, found '{other}'\n"),
            )
        }
    };
    if p.busy.swap(true, Ordering::AcqRel) {
        return text(
            StatusCode::CONFLICT,
            "a profile is being taken; try again when it is done\n".into(),
        );
    }
    tracing::info!("[pprof] CPU profile for {seconds} s started");
    let busy = p.busy.clone();
    // The profiler samples every thread from a signal handler; this thread only waits.
    let result = tokio::task::spawn_blocking(move || {
        let r = take(Duration::from_secs(seconds), folded);
        busy.store(false, Ordering::Release);
        r
    })
    .await;
    match result {
        Ok(Ok(body)) => {
            let kind = if folded {
                "text/plain; charset=utf-8"
            } else {
                "image/svg+xml"
            };
            ([(header::CONTENT_TYPE, kind)], body).into_response()
        }
        Ok(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile failed: {e}\n"),
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile failed: {e}\n"),
        ),
    }
}

/// Samples for `d` and renders the report.
fn take(d: Duration, folded: bool) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    // The profile's length: the wait is what is asked for, on a blocking thread of its own.
    std::thread::sleep(d);
    let report = guard.report().build().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if folded {
        let mut lines: Vec<(String, isize)> = report
            .data
            .iter()
            .map(|(frames, count)| {
                let mut stack = vec![frames.thread_name.replace(';', ":")];
                for f in frames.frames.iter().rev() {
                    for s in f.iter().rev() {
                        stack.push(s.name().replace(';', ":"));
                    }
                }
                (stack.join(";"), *count)
            })
            .collect();
        lines.sort();
        for (stack, count) in lines {
            out.extend_from_slice(format!("{stack} {count}\n").as_bytes());
        }
    } else if report.data.is_empty() {
        // An idle process: nothing to draw, and the SVG says so.
        out.extend_from_slice(
            format!(
                "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
                 width=\"600\" height=\"40\"><text x=\"10\" y=\"25\">no CPU time was used in {} s: \
                 no samples</text></svg>\n",
                d.as_secs()
            )
            .as_bytes(),
        );
    } else {
        report.flamegraph(&mut out).map_err(|e| e.to_string())?;
    }
    Ok(out)
}
