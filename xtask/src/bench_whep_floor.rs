//! The WHEP floor (`tidegate-bench __whep_floor <http port> <udp port> <clip>`): the least a
//! WebRTC server pays here for the `webrtc` bench's viewers, with the same library for ICE,
//! DTLS and SRTP as Tidegate (str0m in RTP mode, the same configuration) and the same send path
//! (the project's batched UDP sender, GSO where the kernel has it).
//!
//! It has no publisher and no stream: the clip's packet sizes and times are read once
//! (`ffprobe`), each video frame is cut into payloads of Tidegate's size (1100 bytes), and one
//! thread (no runtime) sends them in real time: at each frame's time, every connected viewer's
//! `Rtc` takes the frame's payloads, and every viewer's datagrams leave together, as Tidegate's
//! one writer per stream does. Audio leaves at its own time below 10 viewers and with the next
//! video frame from 10 viewers on, as Tidegate's muxer does (`HOLD_FROM_VIEWERS`). The thread
//! sleeps in `recvfrom` until the next frame or the next `Rtc` timeout; an offer (answered by a
//! second thread) wakes it with an empty datagram.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// Tidegate's RTP payload size for WHEP (`crates/webrtc/src/media.rs`, `WHEP_PAYLOAD`).
const PAYLOAD: usize = 1100;
/// From this many viewers on, audio waits for the next video frame (as Tidegate's muxer).
const HOLD_FROM_VIEWERS: usize = 10;

pub fn main(http: u16, udp: u16, clip: &Path) -> ! {
    let code = match serve(http, udp, clip) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("whep floor: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// One packet of the clip: its time in seconds, whether it is video, its size.
struct Unit {
    at: f64,
    video: bool,
    size: usize,
}

fn read_clip(clip: &Path) -> Result<(Vec<Unit>, f64), String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .args(["packet=stream_index,pts_time,size", "-of", "csv=p=0"])
        .arg(clip)
        .output()
        .map_err(|e| format!("ffprobe: {e}"))?;
    let mut units = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(s), Some(t), Some(n)) = (f.first(), f.get(1), f.get(2)) else {
            continue;
        };
        let (Ok(at), Ok(size)) = (t.parse::<f64>(), n.parse::<usize>()) else {
            continue;
        };
        units.push(Unit {
            at,
            video: *s == "0",
            size,
        });
    }
    units.sort_by(|a, b| a.at.total_cmp(&b.at));
    // Opus starts before zero (its pre-skip): the clip starts at its first packet.
    let first = units.first().map_or(0.0, |u| u.at);
    for u in &mut units {
        u.at -= first;
    }
    let last = units.last().map_or(0.0, |u| u.at);
    if units.len() < 100 {
        return Err(format!("ffprobe gave {} packets of the clip", units.len()));
    }
    // The clip loops one video frame after its last packet.
    Ok((units, last + 1.0 / 30.0))
}

/// A unit ready to write: (video, RTP time, payloads).
type Made = (bool, u32, Vec<Arc<[u8]>>);

struct Viewer {
    rtc: Rtc,
    /// (mid, payload type, next sequence number) for video and for audio.
    video: Option<(Mid, Pt, u64)>,
    audio: Option<(Mid, Pt, u64)>,
    connected: bool,
    wake_at: Instant,
}

/// A blocking socket for the project's batched sender: a send never waits for readiness.
struct Blocking(UdpSocket);

impl AsRawFd for Blocking {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl tidegate_core::udp_batch::UdpOut for Blocking {
    fn try_send<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        f()
    }
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

fn pt_of(rtc: &Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let remote = rtc.media(mid)?.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
        .map(|p| p.pt())
}

/// Drives `v`'s `Rtc` until it waits for time; its datagrams go to `out`.
fn pump(v: &mut Viewer, out: &mut Vec<(Vec<u8>, SocketAddr)>) -> Result<(), String> {
    loop {
        match v.rtc.poll_output().map_err(|e| e.to_string())? {
            Output::Timeout(t) => {
                v.wake_at = t;
                return Ok(());
            }
            Output::Transmit(t) => out.push((t.contents.into(), t.destination)),
            Output::Event(Event::Connected) => v.connected = true,
            Output::Event(Event::MediaAdded(m)) => {
                let (slot, codec) = match m.kind {
                    MediaKind::Video => (&mut v.video, Codec::H264),
                    MediaKind::Audio => (&mut v.audio, Codec::Opus),
                };
                if let Some(pt) = pt_of(&v.rtc, m.mid, codec) {
                    *slot = Some((m.mid, pt, 1000));
                }
            }
            Output::Event(_) => {}
        }
    }
}

fn serve(http: u16, udp: u16, clip: &Path) -> Result<(), String> {
    let (units, duration) = read_clip(clip)?;
    let sock = UdpSocket::bind(("127.0.0.1", udp)).map_err(|e| format!("udp: {e}"))?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(("127.0.0.1", http)).map_err(|e| format!("http: {e}"))?;
    let (tx, rx) = mpsc::channel::<Rtc>();
    std::thread::spawn(move || {
        let waker = UdpSocket::bind("127.0.0.1:0").ok();
        for c in listener.incoming().flatten() {
            match answer(c, local) {
                Ok(None) => {} // a probe of the port
                Ok(Some(rtc)) => {
                    if tx.send(rtc).is_err() {
                        return;
                    }
                    if let Some(w) = &waker {
                        let _ = w.send_to(&[], local);
                    }
                }
                Err(e) => eprintln!("whep floor: {e}"),
            }
        }
    });
    let payload: Arc<[u8]> = vec![0u8; PAYLOAD].into();
    let sock = Blocking(sock);
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut by_addr: HashMap<SocketAddr, usize> = HashMap::new();
    let mut out: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    // The next unit to send (loop count, index), and the units due but held (audio).
    let (mut lap, mut next) = (0u64, 0usize);
    let mut due: Vec<(u64, usize)> = Vec::new();
    loop {
        let now = Instant::now();
        while let Ok(rtc) = rx.try_recv() {
            let mut v = Viewer {
                rtc,
                video: None,
                audio: None,
                connected: false,
                wake_at: now,
            };
            pump(&mut v, &mut out)?;
            viewers.push(v);
        }
        // Media due.
        let unit_at = |lap: u64, i: usize| {
            start + Duration::from_secs_f64(lap as f64 * duration + units[i].at)
        };
        let mut video_due = false;
        while unit_at(lap, next) <= now {
            video_due |= units[next].video;
            due.push((lap, next));
            next += 1;
            if next == units.len() {
                next = 0;
                lap += 1;
            }
        }
        let hold = viewers.len() >= HOLD_FROM_VIEWERS;
        if !due.is_empty() && (video_due || !hold) {
            // Each unit's payloads, made once for every viewer (Tidegate shares them too).
            let made: Vec<Made> = due
                .iter()
                .map(|&(l, i)| {
                    let u = &units[i];
                    let t = l as f64 * duration + u.at;
                    let time = if u.video { t * 90_000.0 } else { t * 48_000.0 } as u32;
                    let n = u.size.div_ceil(PAYLOAD).max(1);
                    let last: Arc<[u8]> = payload[..u.size - (n - 1) * PAYLOAD].into();
                    let p = (0..n)
                        .map(|k| {
                            if k + 1 == n {
                                last.clone()
                            } else {
                                payload.clone()
                            }
                        })
                        .collect();
                    (u.video, time, p)
                })
                .collect();
            for v in viewers.iter_mut().filter(|v| v.connected) {
                for (video, time, payloads) in &made {
                    let slot = if *video { &mut v.video } else { &mut v.audio };
                    let Some((mid, pt, seq)) = slot else { continue };
                    let mut api = v.rtc.direct_api();
                    let Some(tx) = api.stream_tx_by_mid(*mid, None) else {
                        continue;
                    };
                    for (k, p) in payloads.iter().enumerate() {
                        tx.write_rtp(
                            RtpWrite::new(*pt, (*seq).into(), *time, now, p.clone())
                                .marker(*video && k + 1 == payloads.len())
                                .nackable(*video),
                        );
                        *seq += 1;
                    }
                }
                v.rtc
                    .handle_input(Input::Timeout(now))
                    .map_err(|e| e.to_string())?;
                pump(v, &mut out)?;
            }
            due.clear();
        }
        // Timers.
        for v in viewers.iter_mut().filter(|v| v.wake_at <= now) {
            v.rtc
                .handle_input(Input::Timeout(now))
                .map_err(|e| e.to_string())?;
            pump(v, &mut out)?;
        }
        if !out.is_empty() {
            futures::executor::block_on(tidegate_core::udp_batch::send_all(&sock, &out));
            out.clear();
        }
        // Sleep in recvfrom until the next unit or timer.
        let until = viewers
            .iter()
            .map(|v| v.wake_at)
            .fold(unit_at(lap, next), Instant::min);
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            continue;
        }
        sock.0
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        let (n, source) = match sock.0.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("recv: {e}")),
        };
        let Ok(contents) = buf[..n].try_into() else {
            continue; // the offer thread's wake-up, or not STUN/DTLS/RTP
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: local,
                contents,
            },
        );
        let idx = match by_addr.get(&source) {
            Some(&i) => Some(i),
            None => viewers.iter().position(|v| v.rtc.accepts(&input)),
        };
        if let Some(i) = idx {
            by_addr.insert(source, i);
            let v = &mut viewers[i];
            v.rtc.handle_input(input).map_err(|e| e.to_string())?;
            pump(v, &mut out)?;
        }
    }
}

/// Answers one WHEP offer as Tidegate's sessions do (ICE-lite, RTP mode, H.264 and Opus, no
/// transport-wide congestion feedback, audio sender reports every second).
fn answer(mut c: TcpStream, local: SocketAddr) -> Result<Option<Rtc>, String> {
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut req = Vec::new();
    let mut chunk = [0u8; 4096];
    let body_at = loop {
        let n = c.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 && req.is_empty() {
            return Ok(None);
        }
        if n == 0 || req.len() > 64 * 1024 {
            return Err("the offer ended early".into());
        }
        req.extend_from_slice(&chunk[..n]);
        if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&req[..body_at]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no Content-Length")?;
    if len > 64 * 1024 {
        return Err("the offer is too large".into());
    }
    while req.len() < body_at + len {
        let n = c.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the offer ended early".into());
        }
        req.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&req[body_at..body_at + len]).to_string();
    let offer = SdpOffer::from_sdp_string(&body).map_err(|e| e.to_string())?;
    let mut exts = ExtensionMap::empty();
    for (id, e) in ExtensionMap::standard().iter() {
        if *e != Extension::TransportSequenceNumber {
            exts.set(id, e.clone());
        }
    }
    let mut rtc = RtcConfig::new()
        .set_ice_lite(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_rtp_mode(true)
        .set_rtcp_report_interval_audio(Duration::from_secs(1))
        .set_extension_map(exts)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| e.to_string())?
        .to_sdp_string();
    let resp = format!(
        "HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\nLocation: /whep/1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    c.write_all(resp.as_bytes()).map_err(|e| e.to_string())?;
    Ok(Some(rtc))
}
