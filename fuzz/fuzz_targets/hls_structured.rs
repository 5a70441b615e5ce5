#![no_main]
//! An HLS request built from structure: the path's segments, a file name of every kind the
//! server serves (playlists, segments, parts, init sections of the muxer's prefix or another,
//! with numbers at the edges of their types), a query with the LL-HLS directives, credentials
//! and CDN signatures, and an Authorization header (Basic, Bearer or raw bytes), through
//! everything the HLS server parses out of a request.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "common/sdp.rs"]
mod sdp;

#[derive(Arbitrary, Debug)]
enum Prefix {
    Muxer,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Number {
    Small(u8),
    Any(u64),
    Text(String),
}

impl Number {
    fn text(&self) -> String {
        match self {
            Number::Small(n) => n.to_string(),
            Number::Any(n) => n.to_string(),
            Number::Text(t) => t.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum File {
    Index,
    Stream,
    Variant(Number),
    Segment(Prefix, Number, bool),
    Part(Prefix, Number, Number),
    Init(Prefix, Number),
    Player,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Param {
    Msn(Number),
    Part(Number),
    Skip(String),
    User(String),
    Pass(String),
    Jwt(String),
    Token(String),
    Other(String, String),
}

#[derive(Arbitrary, Debug)]
enum Auth {
    Basic(String, String),
    Bearer(String),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Request {
    path: Vec<String>,
    file: File,
    query: Vec<Param>,
    auth: Option<Auth>,
}

fuzz_target!(|r: Request| {
    let prefix = |p: &Prefix| match p {
        Prefix::Muxer => "abc".to_string(),
        Prefix::Other(o) => o.clone(),
    };
    let file = match &r.file {
        File::Index => "index.m3u8".to_string(),
        File::Stream => "stream.m3u8".to_string(),
        File::Variant(n) => format!("video{}_stream.m3u8", n.text()),
        File::Segment(p, n, ts) => {
            format!("{}_seg{}.{}", prefix(p), n.text(), if *ts { "ts" } else { "mp4" })
        }
        File::Part(p, m, n) => format!("{}_part{}_{}.mp4", prefix(p), m.text(), n.text()),
        File::Init(p, v) => format!("{}_init{}.mp4", prefix(p), v.text()),
        File::Player => String::new(),
        File::Other(o) => o.clone(),
    };
    let query: Vec<String> = r
        .query
        .iter()
        .map(|p| match p {
            Param::Msn(n) => format!("_HLS_msn={}", n.text()),
            Param::Part(n) => format!("_HLS_part={}", n.text()),
            Param::Skip(s) => format!("_HLS_skip={s}"),
            Param::User(u) => format!("user={u}"),
            Param::Pass(p) => format!("pass={p}"),
            Param::Jwt(t) => format!("jwt={t}"),
            Param::Token(t) => format!("token={t}"),
            Param::Other(k, v) => format!("{k}={v}"),
        })
        .collect();
    let mut target = format!("/{}/{file}", r.path.join("/"));
    if !query.is_empty() {
        target.push('?');
        target.push_str(&query.join("&"));
    }
    let auth = match &r.auth {
        Some(Auth::Basic(u, p)) => format!("Basic {}", sdp::base64(format!("{u}:{p}").as_bytes())).into_bytes(),
        Some(Auth::Bearer(t)) => format!("Bearer {t}").into_bytes(),
        Some(Auth::Raw(b)) => b.clone(),
        None => Vec::new(),
    };
    let _ = tidegate_hls::http::parse_request_for_fuzzing(&target, &auth);
});
