//! The RTSP server session without I/O (RFC 2326 §A.1, the server's state machine): what a
//! request asks for, whether it is valid in the session's state, how a SETUP's transport is
//! negotiated, which track an interleaved channel belongs to, and the answers that need
//! nothing else. The driver (`server.rs`) does what needs the network or the path registry
//! (credentials, the stream, SRTP keys, UDP routes, multicast groups) and tells the session
//! what came of it: [`Session::reading`], [`Session::publishing`], [`Session::set_up`].

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::message::{response, Request};

/// What the server answers to OPTIONS.
pub(crate) const PUBLIC: &str = "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, RECORD, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

/// How one track travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tr {
    Tcp {
        ch: u8,
    },
    Udp {
        rtp: SocketAddr,
        rtcp: SocketAddr,
    },
    /// Sent once per stream to the track's group (see `multicast`), not by this session.
    Multicast,
}

/// A SETUP's `Transport` header, the first choice in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TransportReq {
    /// `RTP/SAVP`: SRTP, keyed by MIKEY.
    pub savp: bool,
    pub tcp: bool,
    pub interleaved: Option<(u8, u8)>,
    pub client_port: Option<(u16, u16)>,
    pub multicast: bool,
}

pub(crate) fn parse_transport(h: &str) -> Option<TransportReq> {
    let first = h.split(',').next()?;
    let mut t = TransportReq {
        savp: false,
        tcp: false,
        interleaved: None,
        client_port: None,
        multicast: false,
    };
    for (i, part) in first.split(';').map(str::trim).enumerate() {
        if i == 0 {
            if !part.starts_with("RTP/AVP") && !part.starts_with("RTP/SAVP") {
                return None;
            }
            t.savp = part.starts_with("RTP/SAVP");
            t.tcp = part.ends_with("/TCP");
            continue;
        }
        let pair = |v: &str| -> Option<(u16, u16)> {
            let (a, b) = v.split_once('-').unwrap_or((v, ""));
            let a: u16 = a.parse().ok()?;
            Some((a, b.parse().unwrap_or(a.wrapping_add(1))))
        };
        if part == "multicast" {
            t.multicast = true;
        } else if let Some(v) = part.strip_prefix("interleaved=") {
            let (a, b) = pair(v)?;
            t.interleaved = Some((a.min(255) as u8, b.min(255) as u8));
        } else if let Some(v) = part.strip_prefix("client_port=") {
            t.client_port = pair(v);
        }
    }
    Some(t)
}

/// The path a request URL names, without slashes at its ends or the query.
pub(crate) fn uri_path(uri: &str) -> String {
    // Any scheme: rtsp, rtsps, and rtsph (GStreamer's over HTTP) among them.
    let rest = uri
        .split_once("://")
        .filter(|(scheme, _)| {
            scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+')
        })
        .map_or(uri, |(_, rest)| rest);
    let rest = match rest.find('/') {
        Some(i) if uri.contains("://") => &rest[i..],
        Some(_) => rest,
        None => "",
    };
    let rest = rest.split('?').next().unwrap_or("");
    rest.trim_matches('/').to_string()
}

pub(crate) fn uri_query(uri: &str) -> &str {
    uri.split_once('?').map_or("", |(_, q)| q)
}

/// What the listener allows, fixed for the connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// RTSPS: RTP in the clear only inside the TLS connection.
    pub tls: bool,
    /// `rtspTransports` has `tcp`.
    pub tcp: bool,
    /// `rtspTransports` has `udp` (the server's RTP/RTCP ports are open).
    pub udp: bool,
    /// `rtspTransports` has `multicast`.
    pub multicast: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Nothing described or announced yet.
    None,
    Reader,
    Publisher,
}

/// Which track an interleaved frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    Rtp(usize),
    Rtcp(usize),
}

/// What a request needs: an answer the session gives now, or the driver's work.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Reply(Bytes),
    /// Authorise reading `path`, find its stream, answer with its SDP, [`Session::reading`].
    Describe {
        path: String,
    },
    /// Authorise publishing `path`, read the SDP, [`Session::publishing`].
    Announce {
        path: String,
    },
    /// A reader's SETUP without DESCRIBE (VLC and some NVRs): describe `path`, then give the
    /// SETUP to the session again.
    DescribeFirst {
        path: String,
    },
    /// Set up track `idx` as `t` asks (its checks passed): keys, routes, then
    /// [`Session::set_up`] and [`Session::transport_header`].
    Setup {
        idx: usize,
        t: TransportReq,
    },
    Play,
    Record,
    /// Stop sending; answer [`Session::ok`].
    Pause,
    /// Close once answered [`Session::ok`].
    Teardown,
}

/// One RTSP session: its id, role, tracks and their transports.
pub(crate) struct Session {
    pub id: String,
    /// The Digest nonce this connection's challenges carry.
    pub nonce: String,
    policy: Policy,
    peer: IpAddr,
    role: Role,
    /// The path described or announced.
    pub path: Option<String>,
    /// Per track: its control attribute (a publisher's SDP, or `trackID=<i>`).
    controls: Vec<String>,
    /// Per track: how it travels, once set up.
    pub transports: Vec<Option<Tr>>,
    /// A reader's profile, from its first SETUP: `RTP/SAVP` (true) or `RTP/AVP`.
    pub savp: Option<bool>,
}

fn refuse(status: u16, reason: &str, cseq: &str, why: &[u8]) -> Step {
    Step::Reply(response(status, reason, cseq, &[], why))
}

fn unsupported(cseq: &str, why: &[u8]) -> Step {
    refuse(461, "Unsupported Transport", cseq, why)
}

impl Session {
    pub fn new(id: String, nonce: String, policy: Policy, peer: IpAddr) -> Session {
        Session {
            id,
            nonce,
            policy,
            peer,
            role: Role::None,
            path: None,
            controls: Vec::new(),
            transports: Vec::new(),
            savp: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The `Session` header of every answer after the first.
    pub fn header(&self) -> (&'static str, String) {
        ("Session", format!("{};timeout=60", self.id))
    }

    /// 200 with the session header and `extra`.
    pub fn ok(&self, cseq: &str, extra: &[(&'static str, String)]) -> Bytes {
        let mut headers = vec![self.header()];
        headers.extend(extra.iter().cloned());
        response(200, "OK", cseq, &headers, b"")
    }

    pub fn request(&mut self, req: &Request) -> Step {
        let cseq = req.cseq();
        match req.method.as_str() {
            "OPTIONS" | "GET_PARAMETER" | "SET_PARAMETER" => Step::Reply(response(
                200,
                "OK",
                cseq,
                &[("Public", PUBLIC.to_string()), self.header()],
                b"",
            )),
            // A publishing session describes nothing: its tracks are the ones it announced.
            "DESCRIBE" if self.role == Role::Publisher => {
                refuse(455, "Method Not Valid in This State", cseq, b"publishing\n")
            }
            "DESCRIBE" => Step::Describe {
                path: uri_path(&req.uri),
            },
            "ANNOUNCE" => Step::Announce {
                path: uri_path(&req.uri),
            },
            "SETUP" => self.setup(req),
            "PLAY" => match self.role {
                Role::Reader if self.transports.iter().any(Option::is_some) => Step::Play,
                Role::Reader => refuse(
                    455,
                    "Method Not Valid in This State",
                    cseq,
                    b"no track set up\n",
                ),
                _ => refuse(455, "Method Not Valid in This State", cseq, b""),
            },
            "RECORD" => match self.role {
                Role::Publisher if self.transports.iter().all(Option::is_some) => Step::Record,
                _ => refuse(
                    455,
                    "Method Not Valid in This State",
                    cseq,
                    b"set up every track first\n",
                ),
            },
            "PAUSE" => Step::Pause,
            "TEARDOWN" => Step::Teardown,
            _ => refuse(501, "Not Implemented", cseq, b""),
        }
    }

    fn setup(&mut self, req: &Request) -> Step {
        let cseq = req.cseq();
        let Some(t) = req.header("Transport").and_then(parse_transport) else {
            return unsupported(cseq, b"");
        };
        let publishing = self.role == Role::Publisher;
        if t.multicast && (!self.policy.multicast || publishing) {
            return unsupported(
                cseq,
                b"multicast is for reading, and only with multicast in rtspTransports\n",
            );
        }
        if t.savp && !self.policy.tls {
            return unsupported(cseq, b"RTP/SAVP (SRTP) is offered over RTSPS\n");
        }
        if self.policy.tls && !t.savp && !t.tcp {
            return unsupported(
                cseq,
                b"over RTSPS, UDP and multicast need RTP/SAVP (SRTP): RTP in the clear is refused\n",
            );
        }
        if t.tcp && !self.policy.tcp {
            return unsupported(cseq, b"TCP is disabled (rtspTransports)\n");
        }
        if self.role == Role::None {
            let path = uri_path(&req.uri);
            let path = path
                .rsplit_once('/')
                .map(|(p, _)| p.to_string())
                .unwrap_or(path);
            return Step::DescribeFirst { path };
        }
        let set: Vec<bool> = self.transports.iter().map(Option::is_some).collect();
        let Some(idx) = self.track_index(&req.uri, &set) else {
            return refuse(404, "Not Found", cseq, b"no such track\n");
        };
        if !publishing && *self.savp.get_or_insert(t.savp) != t.savp {
            return unsupported(
                cseq,
                b"every track of a session takes the same profile (RTP/AVP or RTP/SAVP)\n",
            );
        }
        if !t.tcp && !t.multicast {
            if !self.policy.udp {
                return unsupported(cseq, b"UDP is disabled (rtspTransports)\n");
            }
            if t.client_port.is_none() {
                return unsupported(cseq, b"client_port missing\n");
            }
        }
        Step::Setup { idx, t }
    }

    /// Which track a SETUP URL names: its control suffix, or the next one not set up.
    fn track_index(&self, uri: &str, set: &[bool]) -> Option<usize> {
        let full = uri_path(uri);
        let base = self.path.clone().unwrap_or_default();
        let rest = full.strip_prefix(&base).unwrap_or(&full).trim_matches('/');
        if !rest.is_empty() {
            if let Some(i) = self.controls.iter().position(|c| {
                let c = c.trim_matches('/');
                c == rest || uri.ends_with(c) || c.ends_with(rest)
            }) {
                return Some(i);
            }
            if let Some(n) = rest.strip_prefix("trackID=").and_then(|n| n.parse().ok()) {
                return (n < self.controls.len()).then_some(n);
            }
        }
        set.iter().position(|s| !s)
    }

    /// DESCRIBE gave `tracks` tracks of `path`: the session reads them.
    pub fn reading(&mut self, path: String, tracks: usize) {
        self.role = Role::Reader;
        self.path = Some(path);
        self.controls = (0..tracks).map(|i| format!("trackID={i}")).collect();
        self.transports = vec![None; tracks];
    }

    /// ANNOUNCE was accepted for `path` with these tracks' controls: the session publishes.
    pub fn publishing(&mut self, path: String, controls: Vec<String>) {
        self.role = Role::Publisher;
        self.path = Some(path);
        self.transports = vec![None; controls.len()];
        self.controls = controls;
    }

    /// How track `idx` travels over TCP or unicast UDP as `t` asks (multicast is the
    /// driver's: its group is the stream's), with the `Transport` answer. `server_ports` are
    /// the server's RTP and RTCP ports.
    pub fn unicast(&self, idx: usize, t: &TransportReq, server_ports: (u16, u16)) -> (Tr, String) {
        let profile = if t.savp { "RTP/SAVP" } else { "RTP/AVP" };
        if t.tcp {
            let (a, b) = t.interleaved.unwrap_or((2 * idx as u8, 2 * idx as u8 + 1));
            return (
                Tr::Tcp { ch: a },
                format!("{profile}/TCP;unicast;interleaved={a}-{b}"),
            );
        }
        let (rtp, rtcp) = t.client_port.unwrap_or((0, 0));
        let (srtp, srtcp) = server_ports;
        (
            Tr::Udp {
                rtp: SocketAddr::new(self.peer, rtp),
                rtcp: SocketAddr::new(self.peer, rtcp),
            },
            format!("{profile};unicast;client_port={rtp}-{rtcp};server_port={srtp}-{srtcp}"),
        )
    }

    /// Track `idx` is set up as `tr`.
    pub fn set_up(&mut self, idx: usize, tr: Tr) {
        if let Some(slot) = self.transports.get_mut(idx) {
            *slot = Some(tr);
        }
    }

    /// The track an interleaved frame on `channel` belongs to: a publisher's RTP on its
    /// track's channel and RTCP on the next; a reader's RTCP on the channel after its RTP.
    pub fn channel(&self, channel: u8) -> Option<Channel> {
        let on = |ch: u8| {
            self.transports
                .iter()
                .position(|t| *t == Some(Tr::Tcp { ch }))
        };
        match self.role {
            Role::Publisher => on(channel)
                .map(Channel::Rtp)
                .or_else(|| on(channel.wrapping_sub(1)).map(Channel::Rtcp)),
            _ if channel % 2 == 1 => on(channel - 1).map(Channel::Rtcp),
            _ => None,
        }
    }

    /// Whether every track is set up over TCP on the usual channels (track *i* on 2*i*), so
    /// the stream's framed bytes can be written as they are.
    pub fn direct(&self) -> bool {
        self.transports
            .iter()
            .enumerate()
            .all(|(i, t)| *t == Some(Tr::Tcp { ch: 2 * i as u8 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Input, Parser};

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut text = format!("{method} {uri} RTSP/1.0\r\nCSeq: 7\r\n");
        for (k, v) in headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str("\r\n");
        let mut p = Parser::default();
        p.feed(text.as_bytes());
        match p.poll() {
            Ok(Some(Input::Request(r))) => r,
            other => panic!("{other:?}"),
        }
    }

    fn status(step: &Step) -> u16 {
        match step {
            Step::Reply(b) => String::from_utf8_lossy(&b[9..12]).parse().unwrap_or(0),
            _ => 0,
        }
    }

    fn session(policy: Policy) -> Session {
        Session::new("s1".into(), "n".into(), policy, [10, 0, 0, 9].into())
    }

    const ALL: Policy = Policy {
        tls: false,
        tcp: true,
        udp: true,
        multicast: true,
    };

    #[test]
    fn a_reader_describes_sets_up_and_plays() {
        let mut s = session(ALL);
        let d = s.request(&req("DESCRIBE", "rtsp://h/live/cam", &[]));
        assert_eq!(
            d,
            Step::Describe {
                path: "live/cam".into()
            }
        );
        assert_eq!(
            status(&s.request(&req("PLAY", "rtsp://h/live/cam", &[]))),
            455
        );
        s.reading("live/cam".into(), 2);
        assert_eq!(
            status(&s.request(&req("PLAY", "rtsp://h/live/cam", &[]))),
            455,
            "no track set up"
        );
        let tcp = [("Transport", "RTP/AVP/TCP;unicast")];
        let Step::Setup { idx, t } = s.request(&req("SETUP", "rtsp://h/live/cam/trackID=1", &tcp))
        else {
            panic!("no setup");
        };
        assert_eq!(idx, 1);
        let (tr, header) = s.unicast(idx, &t, (8000, 8001));
        assert_eq!(tr, Tr::Tcp { ch: 2 });
        assert_eq!(header, "RTP/AVP/TCP;unicast;interleaved=2-3");
        s.set_up(idx, tr);
        assert!(!s.direct(), "track 0 is not set up");
        // The next SETUP without a control takes the track not set up yet.
        let Step::Setup { idx, t } = s.request(&req("SETUP", "rtsp://h/live/cam", &tcp)) else {
            panic!("no setup");
        };
        assert_eq!(idx, 0);
        s.set_up(idx, s.unicast(idx, &t, (8000, 8001)).0);
        assert!(s.direct());
        assert_eq!(
            s.request(&req("PLAY", "rtsp://h/live/cam", &[])),
            Step::Play
        );
        assert_eq!(s.channel(3), Some(Channel::Rtcp(1)), "a reader's RTCP");
        assert_eq!(s.channel(2), None, "a reader sends no RTP");
        assert_eq!(
            s.request(&req("TEARDOWN", "rtsp://h/live/cam", &[])),
            Step::Teardown
        );
    }

    #[test]
    fn a_publisher_records_only_once_every_track_is_set_up() {
        let mut s = session(ALL);
        s.publishing("cam".into(), vec!["streamid=0".into(), "streamid=1".into()]);
        assert_eq!(status(&s.request(&req("RECORD", "rtsp://h/cam", &[]))), 455);
        let udp = [(
            "Transport",
            "RTP/AVP;unicast;client_port=5000-5001;mode=record",
        )];
        let Step::Setup { idx, t } = s.request(&req("SETUP", "rtsp://h/cam/streamid=1", &udp))
        else {
            panic!("no setup");
        };
        assert_eq!(idx, 1);
        let (tr, header) = s.unicast(idx, &t, (8000, 8001));
        assert_eq!(
            tr,
            Tr::Udp {
                rtp: "10.0.0.9:5000".parse().unwrap(),
                rtcp: "10.0.0.9:5001".parse().unwrap()
            }
        );
        assert_eq!(
            header,
            "RTP/AVP;unicast;client_port=5000-5001;server_port=8000-8001"
        );
        s.set_up(idx, tr);
        assert_eq!(status(&s.request(&req("RECORD", "rtsp://h/cam", &[]))), 455);
        let tcp = [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")];
        let Step::Setup { idx, t } = s.request(&req("SETUP", "rtsp://h/cam/streamid=0", &tcp))
        else {
            panic!("no setup");
        };
        s.set_up(idx, s.unicast(idx, &t, (8000, 8001)).0);
        assert_eq!(s.request(&req("RECORD", "rtsp://h/cam", &[])), Step::Record);
        assert_eq!(
            status(&s.request(&req("DESCRIBE", "rtsp://h/cam", &[]))),
            455
        );
        assert_eq!(s.channel(0), Some(Channel::Rtp(0)));
        assert_eq!(s.channel(1), Some(Channel::Rtcp(0)));
        assert_eq!(s.channel(4), None);
    }

    #[test]
    fn transports_the_listener_does_not_allow_are_refused_with_the_reason() {
        let setup = |policy: Policy, role: Role, transport: &str| {
            let mut s = session(policy);
            match role {
                Role::Reader => s.reading("cam".into(), 1),
                Role::Publisher => s.publishing("cam".into(), vec!["trackID=0".into()]),
                Role::None => {}
            }
            s.request(&req(
                "SETUP",
                "rtsp://h/cam/trackID=0",
                &[("Transport", transport)],
            ))
        };
        let tls = Policy { tls: true, ..ALL };
        let no_tcp = Policy { tcp: false, ..ALL };
        let no_udp = Policy { udp: false, ..ALL };
        let no_multicast = Policy {
            multicast: false,
            ..ALL
        };
        for (policy, role, transport, code) in [
            (ALL, Role::Reader, "RAW/RAW/UDP", 461),
            (ALL, Role::Reader, "RTP/SAVP/TCP;unicast", 461),
            (
                tls,
                Role::Reader,
                "RTP/AVP;unicast;client_port=5000-5001",
                461,
            ),
            (no_tcp, Role::Reader, "RTP/AVP/TCP;unicast", 461),
            (
                no_udp,
                Role::Reader,
                "RTP/AVP;unicast;client_port=5000-5001",
                461,
            ),
            (ALL, Role::Reader, "RTP/AVP;unicast", 461),
            (ALL, Role::Publisher, "RTP/AVP;multicast", 461),
            (no_multicast, Role::Reader, "RTP/AVP;multicast", 461),
        ] {
            assert_eq!(status(&setup(policy, role, transport)), code, "{transport}");
        }
        assert!(matches!(
            setup(tls, Role::Reader, "RTP/SAVP;unicast;client_port=5000-5001"),
            Step::Setup { .. }
        ));
        assert!(matches!(
            setup(tls, Role::Reader, "RTP/AVP/TCP;unicast"),
            Step::Setup { .. }
        ));
        assert!(matches!(
            setup(ALL, Role::Reader, "RTP/AVP;multicast"),
            Step::Setup { .. }
        ));
        // A reader that did not DESCRIBE: the driver describes the SETUP URL's parent.
        assert_eq!(
            setup(ALL, Role::None, "RTP/AVP/TCP;unicast"),
            Step::DescribeFirst { path: "cam".into() }
        );
    }

    #[test]
    fn one_profile_per_reader_and_unknown_methods() {
        let mut s = session(Policy { tls: true, ..ALL });
        s.reading("cam".into(), 2);
        let savp = [("Transport", "RTP/SAVP/TCP;unicast")];
        let avp = [("Transport", "RTP/AVP/TCP;unicast")];
        assert!(matches!(
            s.request(&req("SETUP", "rtsp://h/cam/trackID=0", &savp)),
            Step::Setup { .. }
        ));
        assert_eq!(
            status(&s.request(&req("SETUP", "rtsp://h/cam/trackID=1", &avp))),
            461
        );
        assert_eq!(
            status(&s.request(&req("SETUP", "rtsp://h/cam/trackID=9", &savp))),
            404
        );
        assert_eq!(
            status(&s.request(&req("REDIRECT", "rtsp://h/cam", &[]))),
            501
        );
        let Step::Reply(options) = s.request(&req("OPTIONS", "*", &[])) else {
            panic!("OPTIONS is answered by the session");
        };
        let text = String::from_utf8_lossy(&options);
        assert!(text.starts_with("RTSP/1.0 200 OK\r\nCSeq: 7\r\n"), "{text}");
        assert!(text.contains("Session: s1;timeout=60"), "{text}");
    }

    #[test]
    fn uris_and_transports() {
        assert_eq!(
            uri_path("rtsp://127.0.0.1:8554/live/cam/trackID=1?x=1"),
            "live/cam/trackID=1"
        );
        assert_eq!(uri_path("rtsp://host/cam"), "cam");
        assert_eq!(uri_path("rtsph://host:8554/live/cam"), "live/cam");
        assert_eq!(uri_path("rtsp://host"), "");
        assert_eq!(uri_query("rtsp://host/cam?token=a&b=c"), "token=a&b=c");
        let t = parse_transport("RTP/AVP/TCP;unicast;interleaved=2-3;mode=record").unwrap();
        assert!(t.tcp && t.interleaved == Some((2, 3)));
        let t = parse_transport("RTP/AVP;unicast;client_port=5000-5001").unwrap();
        assert_eq!(t.client_port, Some((5000, 5001)));
        assert!(parse_transport("RAW/RAW/UDP;unicast").is_none());
        assert!(parse_transport("RTP/AVP;multicast").unwrap().multicast);
    }
}
