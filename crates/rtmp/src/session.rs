//! One RTMP server connection as a state machine: bytes in, bytes and events out, no I/O.
//!
//! The driver feeds received bytes with [`ServerSession::feed`], drains [`ServerSession::poll_event`]
//! and writes [`ServerSession::take_output`] to the socket. Publish and play requests are
//! events the driver answers (it knows the paths and credentials) with
//! [`ServerSession::accept_publish`], [`ServerSession::accept_play`] or [`ServerSession::reject`].

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::amf0::{decode_all, encode_all, Amf0};
use crate::chunk::{write_message, ChunkReader};
use crate::handshake::Handshake;
use crate::RtmpError;

/// The chunk size this server writes with. Every connection uses the same, so media chunks
/// are serialised once per stream.
pub const OUT_CHUNK_SIZE: usize = 60_000;
/// The message stream id `createStream` hands out; media is sent on it.
pub const MEDIA_STREAM_ID: u32 = 1;
pub const CSID_CONTROL: u32 = 2;
pub const CSID_COMMAND: u32 = 3;
pub const CSID_AUDIO: u32 = 4;
pub const CSID_DATA: u32 = 5;
pub const CSID_VIDEO: u32 = 6;

pub const MSG_SET_CHUNK_SIZE: u8 = 1;
pub const MSG_ABORT: u8 = 2;
pub const MSG_ACK: u8 = 3;
pub const MSG_USER_CONTROL: u8 = 4;
pub const MSG_WINDOW_ACK_SIZE: u8 = 5;
pub const MSG_SET_PEER_BANDWIDTH: u8 = 6;
pub const MSG_AUDIO: u8 = 8;
pub const MSG_VIDEO: u8 = 9;
pub const MSG_DATA_AMF3: u8 = 15;
pub const MSG_COMMAND_AMF3: u8 = 17;
pub const MSG_DATA_AMF0: u8 = 18;
pub const MSG_COMMAND_AMF0: u8 = 20;

const WINDOW_ACK_SIZE: u32 = 2_500_000;

/// What the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connect {
        app: String,
        tc_url: String,
        /// Codecs the client says it takes (Enhanced RTMP: `fourCcList`, and the keys of
        /// `audioFourCcInfoMap` and `videoFourCcInfoMap`), e.g. `Opus`, `hvc1`, `*`.
        fourccs: Vec<String>,
    },
    /// `name` is the stream name as sent, query string included.
    Publish {
        name: String,
    },
    Play {
        name: String,
    },
    /// Audio (8), video (9) or data (18) message of the publishing stream.
    Media {
        type_id: u8,
        timestamp: u32,
        payload: Bytes,
    },
    /// The client stopped publishing or playing (deleteStream, FCUnpublish, closeStream).
    Stop,
}

/// The first four bytes as a big-endian u32 (callers check the length).
pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A protocol control message (chunk stream 2, message stream 0).
pub(crate) fn write_control(out: &mut BytesMut, type_id: u8, payload: &[u8]) {
    write_message(out, CSID_CONTROL, 0, type_id, 0, payload, OUT_CHUNK_SIZE);
}

/// An AMF0 command.
pub(crate) fn write_command(out: &mut BytesMut, stream_id: u32, values: &[Amf0]) {
    let body = encode_all(values);
    write_message(
        out,
        CSID_COMMAND,
        0,
        MSG_COMMAND_AMF0,
        stream_id,
        &body,
        OUT_CHUNK_SIZE,
    );
}

/// Acknowledgements: counts received bytes and says when the peer's window is full.
#[derive(Default)]
pub(crate) struct Acker {
    received: u64,
    acked: u64,
    pub window: u32,
}

impl Acker {
    /// Counts `n` received bytes; returns the sequence number to acknowledge, if due.
    pub fn received(&mut self, n: usize) -> Option<u32> {
        self.received += n as u64;
        if self.window > 0 && self.received - self.acked >= u64::from(self.window) {
            self.acked = self.received;
            return Some((self.received & 0xffff_ffff) as u32);
        }
        None
    }

    pub fn total(&self) -> u64 {
        self.received
    }
}

pub struct ServerSession {
    handshake: Handshake,
    input: BytesMut,
    output: BytesMut,
    reader: ChunkReader,
    events: VecDeque<Event>,
    acker: Acker,
}

impl ServerSession {
    pub fn new(epoch_ms: u32) -> ServerSession {
        ServerSession {
            handshake: Handshake::new(epoch_ms),
            input: BytesMut::new(),
            output: BytesMut::new(),
            reader: ChunkReader::default(),
            events: VecDeque::new(),
            acker: Acker::default(),
        }
    }

    /// Total bytes received.
    pub fn bytes_in(&self) -> u64 {
        self.acker.total()
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<(), RtmpError> {
        let ack = self.acker.received(data.len());
        self.input.extend_from_slice(data);
        if !self.handshake.is_done() {
            if !self.handshake.feed(&mut self.input, &mut self.output)? {
                return Ok(());
            }
            tracing::debug!(digest = self.handshake.used_digest(), "handshake done");
        }
        while let Some(msg) = self.reader.read(&mut self.input)? {
            self.handle(msg.type_id, msg.timestamp, msg.payload)?;
        }
        if let Some(seq) = ack {
            self.control(MSG_ACK, &seq.to_be_bytes());
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to send to the client.
    pub fn take_output(&mut self) -> BytesMut {
        std::mem::take(&mut self.output)
    }

    fn control(&mut self, type_id: u8, payload: &[u8]) {
        write_control(&mut self.output, type_id, payload);
    }

    fn command(&mut self, stream_id: u32, values: &[Amf0]) {
        write_command(&mut self.output, stream_id, values);
    }

    fn status(&mut self, level: &str, code: &str, description: &str) {
        self.command(
            MEDIA_STREAM_ID,
            &[
                Amf0::string("onStatus"),
                Amf0::Number(0.0),
                Amf0::Null,
                Amf0::object(&[
                    ("level", Amf0::string(level)),
                    ("code", Amf0::string(code)),
                    ("description", Amf0::string(description)),
                ]),
            ],
        );
    }

    fn user_control(&mut self, event: u16, value: u32) {
        let mut b = [0u8; 6];
        b[..2].copy_from_slice(&event.to_be_bytes());
        b[2..].copy_from_slice(&value.to_be_bytes());
        self.control(MSG_USER_CONTROL, &b);
    }

    fn handle(&mut self, type_id: u8, timestamp: u32, payload: Bytes) -> Result<(), RtmpError> {
        match type_id {
            MSG_SET_CHUNK_SIZE => {
                if payload.len() < 4 {
                    return Err(RtmpError::Protocol("short Set Chunk Size"));
                }
                let size = be32(&payload) & 0x7fff_ffff;
                self.reader.set_chunk_size(size)?;
            }
            MSG_ABORT if payload.len() >= 4 => self.reader.abort(be32(&payload)),
            MSG_WINDOW_ACK_SIZE if payload.len() >= 4 => self.acker.window = be32(&payload),
            // Ping request (6): answer with a ping response (7) carrying the same time.
            MSG_USER_CONTROL if payload.len() >= 6 && payload[1] == 6 => {
                self.user_control(7, be32(&payload[2..]));
            }
            MSG_ACK | MSG_SET_PEER_BANDWIDTH => {}
            MSG_AUDIO | MSG_VIDEO => self.events.push_back(Event::Media {
                type_id,
                timestamp,
                payload,
            }),
            MSG_DATA_AMF0 | MSG_DATA_AMF3 => {
                let mut p = payload;
                if type_id == MSG_DATA_AMF3 && !p.is_empty() {
                    p.advance(1);
                }
                self.events.push_back(Event::Media {
                    type_id: MSG_DATA_AMF0,
                    timestamp,
                    payload: p,
                });
            }
            MSG_COMMAND_AMF0 | MSG_COMMAND_AMF3 => {
                let body = if type_id == MSG_COMMAND_AMF3 && !payload.is_empty() {
                    &payload[1..]
                } else {
                    &payload[..]
                };
                let values = decode_all(body)?;
                self.on_command(&values)?;
            }
            _ => {} // unknown message types are ignored, as every server does
        }
        Ok(())
    }

    fn on_command(&mut self, values: &[Amf0]) -> Result<(), RtmpError> {
        let name = values.first().and_then(Amf0::as_str).unwrap_or("");
        let txn = values.get(1).and_then(Amf0::as_f64).unwrap_or(0.0);
        let arg = |i: usize| {
            values
                .get(i)
                .and_then(Amf0::as_str)
                .unwrap_or("")
                .to_string()
        };
        match name {
            "connect" => {
                let obj = values.get(2).cloned().unwrap_or(Amf0::Null);
                let app = obj
                    .get("app")
                    .and_then(Amf0::as_str)
                    .unwrap_or("")
                    .to_string();
                let tc_url = obj
                    .get("tcUrl")
                    .and_then(Amf0::as_str)
                    .unwrap_or("")
                    .to_string();
                let fourccs = connect_fourccs(&obj);
                self.control(MSG_WINDOW_ACK_SIZE, &WINDOW_ACK_SIZE.to_be_bytes());
                let mut bw = WINDOW_ACK_SIZE.to_be_bytes().to_vec();
                bw.push(2); // dynamic
                self.control(MSG_SET_PEER_BANDWIDTH, &bw);
                self.control(MSG_SET_CHUNK_SIZE, &(OUT_CHUNK_SIZE as u32).to_be_bytes());
                self.command(
                    0,
                    &[
                        Amf0::string("_result"),
                        Amf0::Number(txn),
                        Amf0::object(&[
                            ("fmsVer", Amf0::string("FMS/3,0,1,123")),
                            ("capabilities", Amf0::Number(31.0)),
                        ]),
                        Amf0::object(&[
                            ("level", Amf0::string("status")),
                            ("code", Amf0::string("NetConnection.Connect.Success")),
                            ("description", Amf0::string("Connection succeeded.")),
                            ("objectEncoding", Amf0::Number(0.0)),
                        ]),
                    ],
                );
                self.events.push_back(Event::Connect {
                    app,
                    tc_url,
                    fourccs,
                });
            }
            "createStream" => self.command(
                0,
                &[
                    Amf0::string("_result"),
                    Amf0::Number(txn),
                    Amf0::Null,
                    Amf0::Number(f64::from(MEDIA_STREAM_ID)),
                ],
            ),
            "releaseStream" | "FCPublish" => {
                if txn > 0.0 {
                    self.command(
                        0,
                        &[
                            Amf0::string("_result"),
                            Amf0::Number(txn),
                            Amf0::Null,
                            Amf0::Undefined,
                        ],
                    );
                }
            }
            // A live stream has no length: 0 (ffmpeg asks before playing).
            "getStreamLength" => self.command(
                0,
                &[
                    Amf0::string("_result"),
                    Amf0::Number(txn),
                    Amf0::Null,
                    Amf0::Number(0.0),
                ],
            ),
            "publish" => {
                self.events.push_back(Event::Publish { name: arg(3) });
            }
            "play" => {
                self.events.push_back(Event::Play { name: arg(3) });
            }
            "deleteStream" | "closeStream" | "FCUnpublish" => self.events.push_back(Event::Stop),
            _ => {
                tracing::debug!(command = name, "ignoring RTMP command");
            }
        }
        Ok(())
    }

    pub fn accept_publish(&mut self) {
        self.status("status", "NetStream.Publish.Start", "Start publishing");
    }

    pub fn accept_play(&mut self) {
        self.user_control(0, MEDIA_STREAM_ID); // StreamBegin
        self.status("status", "NetStream.Play.Reset", "Playing and resetting");
        self.status("status", "NetStream.Play.Start", "Started playing");
        let access = encode_all(&[
            Amf0::string("|RtmpSampleAccess"),
            Amf0::Boolean(true),
            Amf0::Boolean(true),
        ]);
        write_message(
            &mut self.output,
            CSID_DATA,
            0,
            MSG_DATA_AMF0,
            MEDIA_STREAM_ID,
            &access,
            OUT_CHUNK_SIZE,
        );
    }

    /// Refuses a publish or play with the NetStream error code clients show
    /// (`NetStream.Publish.BadName`, `NetStream.Play.StreamNotFound`, ...).
    pub fn reject(&mut self, code: &str, description: &str) {
        self.status("error", code, description);
    }

    /// Tells a player the stream ended.
    pub fn end_of_stream(&mut self) {
        self.user_control(1, MEDIA_STREAM_ID); // StreamEOF
        self.status("status", "NetStream.Play.UnpublishNotify", "Stream ended");
    }
}

/// The codecs an Enhanced RTMP client lists in its connect command (at most 64 names).
fn connect_fourccs(obj: &Amf0) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Amf0::StrictArray(list)) = obj.get("fourCcList") {
        out.extend(list.iter().filter_map(Amf0::as_str).map(str::to_string));
    }
    for map in ["audioFourCcInfoMap", "videoFourCcInfoMap"] {
        if let Some(Amf0::Object(props) | Amf0::EcmaArray(props)) = obj.get(map) {
            out.extend(props.iter().map(|(k, _)| k.clone()));
        }
    }
    out.truncate(64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_rtmp_codec_lists_are_read() {
        let v1 = Amf0::object(&[
            ("app", Amf0::string("live")),
            (
                "fourCcList",
                Amf0::StrictArray(vec![Amf0::string("hvc1"), Amf0::string("Opus")]),
            ),
        ]);
        assert_eq!(connect_fourccs(&v1), vec!["hvc1", "Opus"]);
        let v2 = Amf0::object(&[(
            "audioFourCcInfoMap",
            Amf0::object(&[("Opus", Amf0::Number(1.0)), ("mp4a", Amf0::Number(1.0))]),
        )]);
        assert_eq!(connect_fourccs(&v2), vec!["Opus", "mp4a"]);
        assert!(connect_fourccs(&Amf0::object(&[("app", Amf0::string("x"))])).is_empty());
        let many = Amf0::object(&[(
            "fourCcList",
            Amf0::StrictArray((0..1000).map(|_| Amf0::string("avc1")).collect()),
        )]);
        assert_eq!(connect_fourccs(&many).len(), 64);
    }
}
