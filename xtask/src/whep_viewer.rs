//! A WHEP viewer for the bench and the soak: str0m in RTP mode (full ICE, DTLS-SRTP; every
//! packet decrypted and counted, nothing decoded).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// What one viewer counted.
#[derive(Default)]
pub struct ViewerCount {
    /// Video frames (packets with the marker bit on the 90 kHz track).
    pub video_frames: AtomicU64,
    pub audio_packets: AtomicU64,
    pub packets: AtomicU64,
    pub connected: AtomicBool,
}

/// POSTs an SDP offer to a WHEP endpoint; returns the answer.
async fn post_offer(http: u16, target: &str, sdp: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", http))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST {target} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{sdp}",
        sdp.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.take(256 * 1024)
        .read_to_end(&mut resp)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 201") {
        return Err(format!(
            "WHEP answered {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}

/// One WHEP viewer until `stop`: connects, then decrypts and counts every packet.
pub async fn viewer(
    http: u16,
    target: String,
    count: Arc<ViewerCount>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut rtc: Rtc = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(Instant::now());
    let cand = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
    rtc.add_local_candidate(cand);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or("no offer")?;
    let answer = post_offer(http, &target, &offer.to_sdp_string()).await?;
    let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let started = Instant::now();
    loop {
        let timeout = loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => count.connected.store(true, Ordering::Relaxed),
                Output::Event(Event::RtpPacket(p)) => {
                    count.packets.fetch_add(1, Ordering::Relaxed);
                    if p.time.frequency().get() == 90_000 {
                        if p.header.marker {
                            count.video_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        count.audio_packets.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Event(_) => {}
            }
        };
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !count.connected.load(Ordering::Relaxed) && started.elapsed() > Duration::from_secs(30) {
            return Err("not connected within 30 s".into());
        }
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let input = tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, source) = r.map_err(|e| e.to_string())?;
                let Ok(contents) = buf[..n].try_into() else { continue };
                Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: local,
                    contents,
                })
            }
            _ = tokio::time::sleep(wait) => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input).map_err(|e| e.to_string())?;
    }
}
