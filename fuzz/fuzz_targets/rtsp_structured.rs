#![no_main]
//! An RTSP session built from structure: requests (OPTIONS, DESCRIBE, ANNOUNCE with an SDP the
//! fuzzer shapes, SETUP with Transport headers, PLAY, RECORD, GET_PARAMETER, TEARDOWN, and
//! others) with CSeq, Session, Authorization (Basic and Digest) and arbitrary headers,
//! interleaved RTP frames between them, fed in pieces to the message splitter; each request's
//! SDP, credentials and key management go through the parsers the server uses.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tidegate_rtsp::message::{Input, Parser};

#[allow(dead_code)]
#[path = "common/sdp.rs"]
mod sdp;

#[derive(Arbitrary, Debug)]
enum Method {
    Options,
    Describe,
    Announce,
    Setup,
    Play,
    Record,
    Pause,
    GetParameter,
    Teardown,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Auth {
    Basic(String, String),
    Digest(Vec<(String, String)>),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Transport {
    tcp: bool,
    secure: bool,
    multicast: bool,
    ports: Option<(u16, u16)>,
    interleaved: Option<(u8, u8)>,
    record: bool,
    extra: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Piece {
    Request {
        method: Method,
        path: Vec<String>,
        query: Option<String>,
        cseq: Option<u32>,
        session: Option<String>,
        transport: Option<Transport>,
        auth: Option<Auth>,
        key_mgmt: Option<Vec<u8>>,
        headers: Vec<(String, String)>,
        sdp: Option<sdp::Sdp>,
        body_length_delta: i8,
    },
    Interleaved { channel: u8, data: Vec<u8> },
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Session {
    pieces: Vec<Piece>,
    cut: u8,
}

fn request(p: &Piece) -> Vec<u8> {
    let Piece::Request {
        method,
        path,
        query,
        cseq,
        session,
        transport,
        auth,
        key_mgmt,
        headers,
        sdp,
        body_length_delta,
    } = p
    else {
        return Vec::new();
    };
    let m = match method {
        Method::Options => "OPTIONS",
        Method::Describe => "DESCRIBE",
        Method::Announce => "ANNOUNCE",
        Method::Setup => "SETUP",
        Method::Play => "PLAY",
        Method::Record => "RECORD",
        Method::Pause => "PAUSE",
        Method::GetParameter => "GET_PARAMETER",
        Method::Teardown => "TEARDOWN",
        Method::Other(o) => o,
    };
    let mut uri = format!("rtsp://127.0.0.1:8554/{}", path.join("/"));
    if let Some(q) = query {
        uri.push('?');
        uri.push_str(q);
    }
    let mut s = format!("{m} {uri} RTSP/1.0\r\n");
    if let Some(c) = cseq {
        s.push_str(&format!("CSeq: {c}\r\n"));
    }
    if let Some(id) = session {
        s.push_str(&format!("Session: {id}\r\n"));
    }
    if let Some(t) = transport {
        let mut v = format!(
            "RTP/{}{}",
            if t.secure { "SAVP" } else { "AVP" },
            if t.tcp { "/TCP" } else { "" }
        );
        v.push_str(if t.multicast { ";multicast" } else { ";unicast" });
        if let Some((a, b)) = t.ports {
            v.push_str(&format!(";client_port={a}-{b}"));
        }
        if let Some((a, b)) = t.interleaved {
            v.push_str(&format!(";interleaved={a}-{b}"));
        }
        if t.record {
            v.push_str(";mode=record");
        }
        if let Some(e) = &t.extra {
            v.push(';');
            v.push_str(e);
        }
        s.push_str(&format!("Transport: {v}\r\n"));
    }
    match auth {
        Some(Auth::Basic(u, p)) => s.push_str(&format!(
            "Authorization: Basic {}\r\n",
            sdp::base64(format!("{u}:{p}").as_bytes())
        )),
        Some(Auth::Digest(fields)) => {
            let f: Vec<String> = fields.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            s.push_str(&format!("Authorization: Digest {}\r\n", f.join(", ")));
        }
        Some(Auth::Raw(r)) => s.push_str(&format!("Authorization: {r}\r\n")),
        None => {}
    }
    if let Some(k) = key_mgmt {
        s.push_str(&format!("KeyMgmt: prot=mikey; uri=\"{uri}\"; data=\"{}\"\r\n", sdp::base64(k)));
    }
    for (k, v) in headers.iter().take(64) {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = sdp.as_ref().map(|d| d.render(64)).unwrap_or_default();
    if !body.is_empty() {
        let len = (body.len() as i64 + i64::from(*body_length_delta)).max(0);
        s.push_str(&format!("Content-Type: application/sdp\r\nContent-Length: {len}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(&body);
    s.into_bytes()
}

fuzz_target!(|s: Session| {
    let mut wire = Vec::new();
    for p in &s.pieces {
        match p {
            Piece::Request { .. } => wire.extend(request(p)),
            Piece::Interleaved { channel, data } => {
                let n = data.len().min(65_535);
                wire.push(b'$');
                wire.push(*channel);
                wire.extend((n as u16).to_be_bytes());
                wire.extend(&data[..n]);
            }
            Piece::Garbage(g) => wire.extend(g),
        }
    }
    let mut parser = Parser::default();
    let cut = usize::from(s.cut).max(1);
    for piece in wire.chunks(cut) {
        parser.feed(piece);
        loop {
            match parser.poll() {
                Ok(Some(Input::Request(req))) => {
                    let header = |name: &str| {
                        req.headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.as_str())
                    };
                    let _ = tidegate_rtsp::auth::parse(header("Authorization"));
                    if let Some(k) = header("KeyMgmt") {
                        if let Some(d) = tidegate_rtsp::mikey::key_mgmt_header_data(k) {
                            let _ = tidegate_rtsp::mikey::parse_base64(d);
                        }
                    }
                    if let Ok(text) = std::str::from_utf8(&req.body) {
                        if let Ok(media) = tidegate_rtsp::sdp::parse(text) {
                            for m in &media {
                                let _ = tidegate_rtsp::sdp::incoming(m);
                            }
                        }
                    }
                }
                Ok(Some(Input::Interleaved { .. } | Input::Response(_))) => {}
                Ok(None) => break,
                // The server closes the connection there.
                Err(_) => return,
            }
        }
    }
});
