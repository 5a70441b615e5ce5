//! A load of LL-HLS clients, each looping as a low-latency player does on one keep-alive
//! HTTP/1.1 connection: a blocking playlist reload for the part its last playlist hinted
//! (`_HLS_msn`/`_HLS_part`), then a GET of the newest part listed. Each part's latency is the
//! time its last byte arrived minus the wall-clock time its media ends (the segment's
//! `EXT-X-PROGRAM-DATE-TIME` plus the durations of the parts up to it), so the same figure is
//! comparable direct and through a cache.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct ClientStats {
    pub requests: u64,
    pub parts: u64,
    pub errors: u64,
    /// Per part received, milliseconds behind live.
    pub latencies_ms: Vec<f64>,
    /// The last error, if any.
    pub last_error: String,
}

/// One response: status, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

const LIMIT: usize = 8 << 20;

async fn get(s: &mut TcpStream, host: &str, target: &str) -> Result<Response, String> {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: identity\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head too long".into());
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut rest = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|v| v.parse().ok())
        .ok_or("no status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if len > LIMIT {
            return Err("body too long".into());
        }
        while rest.len() < len {
            read_more(s, &mut rest).await?;
        }
        rest.truncate(len);
        rest
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                read_more(s, &mut rest).await?;
            };
            let size_line = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size '{size_line}'"))?;
            if body.len() + size > LIMIT {
                return Err("body too long".into());
            }
            while rest.len() < line_end + 2 + size + 2 {
                read_more(s, &mut rest).await?;
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
        body
    } else {
        return Err(format!("no length: {head}"));
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

async fn read_more(s: &mut TcpStream, rest: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16384];
    let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("closed".to_string());
    }
    rest.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The parts a media playlist lists, with the wall-clock time each one's media ends, and the
/// preload hint's (msn, part).
struct Playlist {
    parts: Vec<(String, SystemTime)>,
    hint: Option<(u64, u64)>,
}

fn parse_pdt(v: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v.trim().trim_end_matches('Z')).ok()
}

fn parse(text: &str) -> Playlist {
    let mut parts = Vec::new();
    let mut clock: Option<SystemTime> = None;
    let mut hint = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            clock = parse_pdt(v);
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            let dur: f64 = v
                .split(',')
                .find_map(|a| a.strip_prefix("DURATION="))
                .and_then(|d| d.parse().ok())
                .unwrap_or(0.0);
            let uri = v
                .split("URI=\"")
                .nth(1)
                .and_then(|u| u.split('"').next())
                .unwrap_or("")
                .to_string();
            if let Some(c) = clock.as_mut() {
                *c += Duration::from_secs_f64(dur);
                parts.push((uri, *c));
            }
        } else if line.starts_with("#EXTINF:") {
            // The segment's parts end where the segment ends; the next segment has its own
            // date.
            clock = None;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"") {
            hint = v
                .rsplit_once("_part")
                .and_then(|(_, r)| r.split('.').next())
                .and_then(|r| r.split_once('_'))
                .and_then(|(m, p)| Some((m.parse().ok()?, p.parse().ok()?)));
        }
    }
    Playlist { parts, hint }
}

/// One client on `addr` playing `/<path>/stream.m3u8` until `stop`.
pub async fn client(addr: SocketAddr, path: String, stop: Arc<AtomicBool>) -> ClientStats {
    let mut st = ClientStats::default();
    let host = addr.to_string();
    let mut conn: Option<TcpStream> = None;
    let mut next: Option<(u64, u64)> = None;
    let mut last_part = String::new();
    while !stop.load(Ordering::Relaxed) {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    st.errors += 1;
                    st.last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let target = match next {
            Some((m, p)) => format!("/{path}/stream.m3u8?_HLS_msn={m}&_HLS_part={p}"),
            None => format!("/{path}/stream.m3u8"),
        };
        let r = match tokio::time::timeout(Duration::from_secs(10), get(s, &host, &target)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                st.errors += 1;
                st.last_error = e;
                conn = None;
                next = None;
                continue;
            }
            Err(_) => {
                st.errors += 1;
                st.last_error = "playlist timeout".into();
                conn = None;
                next = None;
                continue;
            }
        };
        st.requests += 1;
        if r.status != 200 {
            st.errors += 1;
            st.last_error = format!("playlist status {}", r.status);
            next = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let pl = parse(&String::from_utf8_lossy(&r.body));
        next = pl.hint;
        let Some((uri, ends)) = pl.parts.last().cloned() else {
            continue;
        };
        if uri == last_part {
            continue;
        }
        let target = format!("/{path}/{uri}");
        match tokio::time::timeout(Duration::from_secs(10), get(s, &host, &target)).await {
            Ok(Ok(p)) if p.status == 200 && !p.body.is_empty() => {
                st.requests += 1;
                st.parts += 1;
                let behind = SystemTime::now()
                    .duration_since(ends)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_else(|e| -e.duration().as_secs_f64());
                st.latencies_ms.push(behind * 1000.0);
                last_part = uri;
                let _ = p.headers;
            }
            Ok(Ok(p)) => {
                st.errors += 1;
                st.last_error = format!("part status {}", p.status);
            }
            Ok(Err(e)) => {
                st.errors += 1;
                st.last_error = e;
                conn = None;
            }
            Err(_) => {
                st.errors += 1;
                st.last_error = "part timeout".into();
                conn = None;
            }
        }
    }
    st
}

/// `n` clients for `run`; their stats. Clients start over the first second.
pub fn run_clients(addr: SocketAddr, path: &str, n: usize, run: Duration) -> Vec<ClientStats> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..n {
            let stop = stop.clone();
            let path = path.to_string();
            handles.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((i as u64 * 1000) / n.max(1) as u64))
                    .await;
                client(addr, path, stop).await
            }));
        }
        tokio::time::sleep(run).await;
        stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for h in handles {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(15), h).await {
                out.push(s);
            }
        }
        out
    })
}

/// The `q` quantile of `v` (sorted in place).
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}
