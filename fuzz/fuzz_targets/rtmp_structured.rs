#![no_main]
//! A whole RTMP session built from structure (issue #21's structure-aware inputs): a valid
//! handshake, then a sequence of well-framed messages — commands with AMF0 arguments the
//! fuzzer shapes (connect, createStream, publish, play, releaseStream, deleteStream, unknown
//! ones), protocol controls (chunk size, abort, acknowledgements, window sizes, user
//! control) and media — chunked at chunk sizes it picks, on chunk streams it picks, fed to
//! the server session in pieces it picks. The session must answer or refuse, never panic.
use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidegate_rtmp::amf0::{encode_all, Amf0};
use tidegate_rtmp::session::ServerSession;

#[derive(Arbitrary, Debug)]
enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Leaf)>),
    EcmaArray(Vec<(String, Leaf)>),
    StrictArray(Vec<Leaf>),
    Null,
    Undefined,
    Date(f64),
}

#[derive(Arbitrary, Debug)]
enum Leaf {
    Number(f64),
    Boolean(bool),
    String(String),
    Null,
}

impl Leaf {
    fn amf(&self) -> Amf0 {
        match self {
            Leaf::Number(n) => Amf0::Number(*n),
            Leaf::Boolean(b) => Amf0::Boolean(*b),
            Leaf::String(s) => Amf0::String(s.clone()),
            Leaf::Null => Amf0::Null,
        }
    }
}

impl Value {
    fn amf(&self) -> Amf0 {
        let props = |v: &Vec<(String, Leaf)>| v.iter().map(|(k, l)| (k.clone(), l.amf())).collect();
        match self {
            Value::Number(n) => Amf0::Number(*n),
            Value::Boolean(b) => Amf0::Boolean(*b),
            Value::String(s) => Amf0::String(s.clone()),
            Value::Object(v) => Amf0::Object(props(v)),
            Value::EcmaArray(v) => Amf0::EcmaArray(props(v)),
            Value::StrictArray(v) => Amf0::StrictArray(v.iter().map(Leaf::amf).collect()),
            Value::Null => Amf0::Null,
            Value::Undefined => Amf0::Undefined,
            Value::Date(d) => Amf0::Date(*d),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Command {
    Connect { app: String, tc_url: String, extra: Vec<(String, Leaf)> },
    CreateStream,
    ReleaseStream(String),
    FcPublish(String),
    Publish { name: String, kind: String },
    Play { name: String, start: Option<f64> },
    DeleteStream(f64),
    Other { name: String, args: Vec<Value> },
}

#[derive(Arbitrary, Debug)]
enum Msg {
    Command { tx: f64, cmd: Command },
    SetChunkSize(u32),
    Abort(u32),
    Ack(u32),
    WindowAckSize(u32),
    PeerBandwidth(u32, u8),
    UserControl(u16, Vec<u8>),
    Audio(Vec<u8>),
    Video(Vec<u8>),
    Data(Vec<Value>),
    Raw { type_id: u8, payload: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Framed {
    msg: Msg,
    csid: u8,
    stream_id: u8,
    timestamp: u32,
}

#[derive(Arbitrary, Debug)]
struct Session {
    messages: Vec<Framed>,
    piece: u8,
}

fn command(tx: f64, cmd: &Command) -> Vec<Amf0> {
    let s = |v: &str| Amf0::String(v.to_string());
    let head = |name: &str| vec![s(name), Amf0::Number(tx)];
    let mut v = match cmd {
        Command::Connect { app, tc_url, extra } => {
            let mut props = vec![("app".to_string(), s(app)), ("tcUrl".to_string(), s(tc_url))];
            props.extend(extra.iter().map(|(k, l)| (k.clone(), l.amf())));
            let mut v = head("connect");
            v.push(Amf0::Object(props));
            v
        }
        Command::CreateStream => head("createStream"),
        Command::ReleaseStream(n) => [head("releaseStream"), vec![Amf0::Null, s(n)]].concat(),
        Command::FcPublish(n) => [head("FCPublish"), vec![Amf0::Null, s(n)]].concat(),
        Command::Publish { name, kind } => {
            [head("publish"), vec![Amf0::Null, s(name), s(kind)]].concat()
        }
        Command::Play { name, start } => {
            let mut v = [head("play"), vec![Amf0::Null, s(name)]].concat();
            v.extend(start.map(Amf0::Number));
            v
        }
        Command::DeleteStream(id) => [head("deleteStream"), vec![Amf0::Null, Amf0::Number(*id)]].concat(),
        Command::Other { name, args } => {
            let mut v = head(name);
            v.extend(args.iter().map(Value::amf));
            v
        }
    };
    v.truncate(64);
    v
}

fuzz_target!(|s: Session| {
    let mut session = ServerSession::new(0);
    let mut hs = vec![3u8];
    hs.extend(std::iter::repeat(0u8).take(1536 * 2));
    if session.feed(&hs).is_err() {
        return;
    }
    // The chunk size we write with; our own SetChunkSize messages tell the server about it.
    let mut size = 128usize;
    let mut wire = BytesMut::new();
    for f in &s.messages {
        let (type_id, payload): (u8, Vec<u8>) = match &f.msg {
            Msg::Command { tx, cmd } => (20, encode_all(&command(*tx, cmd)).to_vec()),
            Msg::SetChunkSize(n) => (1, n.to_be_bytes().to_vec()),
            Msg::Abort(n) => (2, n.to_be_bytes().to_vec()),
            Msg::Ack(n) => (3, n.to_be_bytes().to_vec()),
            Msg::WindowAckSize(n) => (5, n.to_be_bytes().to_vec()),
            Msg::PeerBandwidth(n, l) => (6, [&n.to_be_bytes()[..], &[*l]].concat()),
            Msg::UserControl(event, data) => (4, [&event.to_be_bytes()[..], data].concat()),
            Msg::Audio(d) => (8, d.clone()),
            Msg::Video(d) => (9, d.clone()),
            Msg::Data(v) => (18, encode_all(&v.iter().map(Value::amf).collect::<Vec<_>>()).to_vec()),
            Msg::Raw { type_id, payload } => (*type_id, payload.clone()),
        };
        let csid = 2 + u32::from(f.csid) % 318;
        tidegate_rtmp::chunk::write_message(
            &mut wire,
            csid,
            f.timestamp,
            type_id,
            u32::from(f.stream_id),
            &payload,
            size,
        );
        // The server reads at the size we announced from the next message on.
        if let Msg::SetChunkSize(n) = f.msg {
            if (1..=0x7fff_ffff).contains(&n) {
                size = n as usize;
            }
        }
    }
    let piece = usize::from(s.piece).max(1);
    for chunk in wire.chunks(piece) {
        if session.feed(chunk).is_err() {
            return;
        }
        while let Some(e) = session.poll_event() {
            match e {
                tidegate_rtmp::session::Event::Publish { .. } => session.accept_publish(),
                tidegate_rtmp::session::Event::Play { .. } => session.accept_play(),
                _ => {}
            }
        }
        let _ = session.take_output();
    }
});
