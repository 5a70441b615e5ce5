//! One RTMP client connection as a state machine (the mirror of [`crate::session`]): used to
//! push a stream to a remote server and to pull one from it.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::amf0::{decode_all, Amf0};
use crate::chunk::{write_message, ChunkReader};
use crate::handshake::HANDSHAKE_SIZE;
use crate::session::{
    be32, write_command, write_control, Acker, MSG_AUDIO, MSG_COMMAND_AMF0, MSG_DATA_AMF0,
    MSG_SET_CHUNK_SIZE, MSG_USER_CONTROL, MSG_VIDEO, MSG_WINDOW_ACK_SIZE, OUT_CHUNK_SIZE,
};
use crate::RtmpError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Publish,
    Play,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server accepted the publish or play: media may flow.
    Started,
    /// The server refused or ended the stream (`code` like `NetStream.Publish.BadName`).
    Error { code: String, description: String },
    /// Audio, video or data of the played stream.
    Media {
        type_id: u8,
        timestamp: u32,
        payload: Bytes,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    Connecting,
    CreatingStream,
    Starting,
    Started,
}

pub struct ClientSession {
    mode: Mode,
    app: String,
    tc_url: String,
    name: String,
    state: State,
    input: BytesMut,
    output: BytesMut,
    reader: ChunkReader,
    events: VecDeque<ClientEvent>,
    stream_id: u32,
    acker: Acker,
}

const TXN_CONNECT: f64 = 1.0;
const TXN_CREATE_STREAM: f64 = 4.0;

impl ClientSession {
    /// `app` and `name` as split from the URL (`rtmp://host/app/name`); `tc_url` is the URL up
    /// to and including the app.
    pub fn new(mode: Mode, app: &str, tc_url: &str, name: &str) -> ClientSession {
        let mut output = BytesMut::with_capacity(1 + HANDSHAKE_SIZE);
        output.put_u8(3);
        output.put_u32(0); // time
        output.put_u32(0); // zero: the plain handshake
        for i in 0..HANDSHAKE_SIZE - 8 {
            output.put_u8((i as u8).wrapping_mul(151).wrapping_add(7));
        }
        ClientSession {
            mode,
            app: app.to_string(),
            tc_url: tc_url.to_string(),
            name: name.to_string(),
            state: State::Handshake,
            input: BytesMut::new(),
            output,
            reader: ChunkReader::default(),
            events: VecDeque::new(),
            stream_id: 0,
            acker: Acker::default(),
        }
    }

    pub fn is_started(&self) -> bool {
        self.state == State::Started
    }

    pub fn take_output(&mut self) -> BytesMut {
        std::mem::take(&mut self.output)
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<(), RtmpError> {
        let ack = self.acker.received(data.len());
        self.input.extend_from_slice(data);
        if self.state == State::Handshake {
            if self.input.len() < 1 + 2 * HANDSHAKE_SIZE {
                return Ok(());
            }
            if self.input[0] != 3 {
                return Err(RtmpError::Protocol(
                    "server answered with another RTMP version",
                ));
            }
            let s = self.input.split_to(1 + 2 * HANDSHAKE_SIZE);
            // C2 echoes S1.
            self.output.put_slice(&s[1..1 + HANDSHAKE_SIZE]);
            self.control(MSG_SET_CHUNK_SIZE, &(OUT_CHUNK_SIZE as u32).to_be_bytes());
            let connect = [
                Amf0::string("connect"),
                Amf0::Number(TXN_CONNECT),
                Amf0::object(&[
                    ("app", Amf0::string(&self.app)),
                    ("type", Amf0::string("nonprivate")),
                    ("flashVer", Amf0::string("FMLE/3.0 (compatible; Tidegate)")),
                    ("tcUrl", Amf0::string(&self.tc_url)),
                    // Enhanced RTMP: the codecs our ingest reads (a Tidegate serving this pull
                    // sends Opus as is instead of bridging it to AAC).
                    (
                        "fourCcList",
                        Amf0::StrictArray(
                            ["avc1", "hvc1", "av01", "vp09", "mp4a", "Opus"]
                                .map(Amf0::string)
                                .to_vec(),
                        ),
                    ),
                ]),
            ];
            self.command(0, &connect);
            self.state = State::Connecting;
        }
        while let Some(msg) = self.reader.read(&mut self.input)? {
            self.handle(msg.type_id, msg.timestamp, msg.payload)?;
        }
        if let Some(seq) = ack {
            self.control(crate::session::MSG_ACK, &seq.to_be_bytes());
        }
        Ok(())
    }

    fn control(&mut self, type_id: u8, payload: &[u8]) {
        write_control(&mut self.output, type_id, payload);
    }

    fn command(&mut self, stream_id: u32, values: &[Amf0]) {
        write_command(&mut self.output, stream_id, values);
    }

    fn handle(&mut self, type_id: u8, timestamp: u32, payload: Bytes) -> Result<(), RtmpError> {
        match type_id {
            MSG_SET_CHUNK_SIZE if payload.len() >= 4 => {
                self.reader.set_chunk_size(be32(&payload) & 0x7fff_ffff)?
            }
            MSG_WINDOW_ACK_SIZE if payload.len() >= 4 => self.acker.window = be32(&payload),
            MSG_USER_CONTROL if payload.len() >= 6 && payload[1] == 6 => {
                let mut b = [0u8; 6];
                b[1] = 7;
                b[2..].copy_from_slice(&payload[2..6]);
                self.control(MSG_USER_CONTROL, &b);
            }
            MSG_AUDIO | MSG_VIDEO | MSG_DATA_AMF0 if self.mode == Mode::Play => {
                self.events.push_back(ClientEvent::Media {
                    type_id,
                    timestamp,
                    payload,
                })
            }
            MSG_COMMAND_AMF0 => {
                let values = decode_all(&payload)?;
                self.on_command(&values);
            }
            _ => {}
        }
        Ok(())
    }

    fn on_command(&mut self, values: &[Amf0]) {
        let name = values.first().and_then(Amf0::as_str).unwrap_or("");
        let txn = values.get(1).and_then(Amf0::as_f64).unwrap_or(0.0);
        let info = values.get(3);
        let code = info
            .and_then(|i| i.get("code"))
            .and_then(Amf0::as_str)
            .unwrap_or("")
            .to_string();
        let description = info
            .and_then(|i| i.get("description"))
            .and_then(Amf0::as_str)
            .unwrap_or("")
            .to_string();
        match (name, self.state) {
            ("_result", State::Connecting) if txn == TXN_CONNECT => {
                if self.mode == Mode::Publish {
                    let n = Amf0::string(&self.name);
                    self.command(
                        0,
                        &[
                            Amf0::string("releaseStream"),
                            Amf0::Number(2.0),
                            Amf0::Null,
                            n.clone(),
                        ],
                    );
                    self.command(
                        0,
                        &[Amf0::string("FCPublish"), Amf0::Number(3.0), Amf0::Null, n],
                    );
                }
                self.command(
                    0,
                    &[
                        Amf0::string("createStream"),
                        Amf0::Number(TXN_CREATE_STREAM),
                        Amf0::Null,
                    ],
                );
                self.state = State::CreatingStream;
            }
            ("_result", State::CreatingStream) if txn == TXN_CREATE_STREAM => {
                self.stream_id = info.and_then(Amf0::as_f64).unwrap_or(1.0) as u32;
                let n = Amf0::string(&self.name);
                match self.mode {
                    Mode::Publish => self.command(
                        self.stream_id,
                        &[
                            Amf0::string("publish"),
                            Amf0::Number(5.0),
                            Amf0::Null,
                            n,
                            Amf0::string("live"),
                        ],
                    ),
                    Mode::Play => {
                        self.command(
                            self.stream_id,
                            &[
                                Amf0::string("play"),
                                Amf0::Number(5.0),
                                Amf0::Null,
                                n,
                                Amf0::Number(-1000.0),
                            ],
                        );
                        // SetBufferLength: 1 s.
                        let mut b = [0u8; 10];
                        b[1] = 3;
                        b[2..6].copy_from_slice(&self.stream_id.to_be_bytes());
                        b[6..].copy_from_slice(&1000u32.to_be_bytes());
                        self.control(MSG_USER_CONTROL, &b);
                    }
                }
                self.state = State::Starting;
            }
            ("_error", _) => self.events.push_back(ClientEvent::Error {
                code: if code.is_empty() {
                    "_error".into()
                } else {
                    code
                },
                description,
            }),
            ("onStatus", _) => {
                let level = info
                    .and_then(|i| i.get("level"))
                    .and_then(Amf0::as_str)
                    .unwrap_or("");
                if level == "error"
                    || code == "NetStream.Play.UnpublishNotify"
                    || code == "NetStream.Play.Stop"
                {
                    self.events
                        .push_back(ClientEvent::Error { code, description });
                } else if self.state == State::Starting
                    && (code == "NetStream.Publish.Start" || code == "NetStream.Play.Start")
                {
                    self.state = State::Started;
                    self.events.push_back(ClientEvent::Started);
                }
            }
            _ => {}
        }
    }

    /// Queues a media or data message of the published stream.
    pub fn send_media(&mut self, type_id: u8, timestamp: u32, payload: &[u8]) {
        let csid = match type_id {
            MSG_AUDIO => crate::session::CSID_AUDIO,
            MSG_VIDEO => crate::session::CSID_VIDEO,
            _ => crate::session::CSID_DATA,
        };
        write_message(
            &mut self.output,
            csid,
            timestamp,
            type_id,
            self.stream_id,
            payload,
            OUT_CHUNK_SIZE,
        );
    }

    /// Ends a publish politely.
    pub fn close(&mut self) {
        if self.stream_id != 0 {
            let n = Amf0::string(&self.name);
            self.command(
                0,
                &[
                    Amf0::string("FCUnpublish"),
                    Amf0::Number(6.0),
                    Amf0::Null,
                    n,
                ],
            );
            self.command(
                0,
                &[
                    Amf0::string("deleteStream"),
                    Amf0::Number(7.0),
                    Amf0::Null,
                    Amf0::Number(f64::from(self.stream_id)),
                ],
            );
        }
    }
}

/// The parts of an `rtmp://` or `rtmps://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    /// The stream name (key), query included.
    pub name: String,
    pub tc_url: String,
}

impl RtmpUrl {
    pub fn parse(url: &str) -> Result<RtmpUrl, RtmpError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("rtmps://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("rtmp://") {
            (false, r)
        } else {
            return Err(RtmpError::Url(format!(
                "not an rtmp:// or rtmps:// URL: {url}"
            )));
        };
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| RtmpError::Url(format!("no app in {url}")))?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse()
                    .map_err(|_| RtmpError::Url(format!("bad port in {url}")))?,
            ),
            _ => (authority.to_string(), if tls { 443 } else { 1935 }),
        };
        if host.is_empty() {
            return Err(RtmpError::Url(format!("no host in {url}")));
        }
        let (app, name) = path.split_once('/').unwrap_or((path, ""));
        let scheme = if tls { "rtmps" } else { "rtmp" };
        Ok(RtmpUrl {
            tls,
            tc_url: format!("{scheme}://{authority}/{app}"),
            host,
            port,
            app: app.to_string(),
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Event, ServerSession};

    #[test]
    fn urls() {
        let u = RtmpUrl::parse("rtmp://live.twitch.tv/app/live_123?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.app.as_str(), u.name.as_str()),
            ("live.twitch.tv", 1935, "app", "live_123?x=1")
        );
        assert_eq!(u.tc_url, "rtmp://live.twitch.tv/app");
        let u = RtmpUrl::parse("rtmps://127.0.0.1:1936/live/a/b").unwrap();
        assert_eq!(
            (u.tls, u.port, u.app.as_str(), u.name.as_str()),
            (true, 1936, "live", "a/b")
        );
        assert!(RtmpUrl::parse("http://x/y").is_err());
        assert!(RtmpUrl::parse("rtmp://host").is_err());
        assert!(RtmpUrl::parse("rtmp://host:x/app").is_err());
    }

    /// Our client against our server, in memory: handshake, connect, publish, media.
    #[test]
    fn client_and_server_talk() {
        let mut client = ClientSession::new(Mode::Publish, "live", "rtmp://h/live", "key");
        let mut server = ServerSession::new(0);
        let mut published = false;
        let mut media = 0;
        for _ in 0..20 {
            let out = client.take_output();
            server.feed(&out).unwrap();
            while let Some(ev) = server.poll_event() {
                match ev {
                    Event::Publish { name } => {
                        assert_eq!(name, "key");
                        server.accept_publish();
                    }
                    Event::Media { .. } => media += 1,
                    _ => {}
                }
            }
            let back = server.take_output();
            client.feed(&back).unwrap();
            while let Some(ev) = client.poll_event() {
                assert_eq!(ev, ClientEvent::Started);
                published = true;
                client.send_media(MSG_VIDEO, 0, &[0x17, 0, 0, 0, 0]);
            }
        }
        assert!(published);
        assert_eq!(media, 1);
    }
}
