//! Streams received rather than pulled: `source: udp+mpegts://IP:PORT` (unicast, or a
//! multicast group joined, with `?interface=NAME` and `?source=IP` for source-specific
//! multicast), `source: unix+mpegts:///path/to.sock` (a Unix stream socket Tidegate listens
//! on) and `source: udp+rtp://IP:PORT` with `rtpSDP` (RTP on one port, its media told apart
//! by payload type). Encoders and IPTV head-ends push these; the path is published from the
//! first packet until the sender goes quiet for `readTimeout` (or closes its Unix
//! connection), and published again when it resumes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tidegate_core::relay::{with_backoff, RelayStatus};
use tidegate_core::{PathManager, SessionInfo};
use tidegate_mpegts::ingest::TsIngest;
use tokio_util::sync::CancellationToken;

/// Where a `udp+…://` source listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpParams {
    pub addr: SocketAddr,
    /// `?source=`: only this sender (for multicast, a source-specific join).
    pub source: Option<IpAddr>,
    /// `?interface=`: the interface a multicast group is joined on.
    pub interface: Option<String>,
}

/// Parses `udp+mpegts://IP:PORT?source=…&interface=…` (or `udp+rtp://…`).
pub fn udp_params(url: &str) -> Result<UdpParams, String> {
    let u = url::Url::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = u.host_str().unwrap_or("0.0.0.0");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.is_empty() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        host.parse()
            .map_err(|_| format!("{url}: expected an IP address, found '{host}'"))?
    };
    let port = u.port().ok_or_else(|| format!("{url}: a port is needed"))?;
    let mut p = UdpParams {
        addr: SocketAddr::new(ip, port),
        source: None,
        interface: None,
    };
    for (k, v) in u.query_pairs() {
        match &*k {
            "source" => {
                p.source = Some(
                    v.parse()
                        .map_err(|_| format!("{url}: source must be an IP address"))?,
                )
            }
            "interface" => p.interface = Some(v.to_string()),
            other => return Err(format!("{url}: unknown parameter '{other}'")),
        }
    }
    Ok(p)
}

/// A UDP socket for `p`: bound to the address (a multicast group: bound to its port on every
/// address, and joined), with `udpReadBufferSize`.
pub fn bind_udp(
    p: &UdpParams,
    dump_prefix: &'static str,
) -> Result<tidegate_core::dump::DumpedUdp, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |e: std::io::Error| format!("UDP {}: {e}", p.addr);
    let domain = if p.addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    match p.addr.ip() {
        IpAddr::V4(group) if group.is_multicast() => {
            s.set_reuse_address(true).map_err(err)?;
            s.bind(&SocketAddr::from((group, p.addr.port())).into())
                .map_err(err)?;
            let iface = match &p.interface {
                Some(name) => interface_v4(name)?,
                None => Ipv4Addr::UNSPECIFIED,
            };
            match p.source {
                Some(IpAddr::V4(src)) => s.join_ssm_v4(&src, &group, &iface).map_err(err)?,
                Some(IpAddr::V6(_)) => return Err("source must be an IPv4 address".into()),
                None => s.join_multicast_v4(&group, &iface).map_err(err)?,
            }
        }
        _ => s.bind(&p.addr.into()).map_err(err)?,
    }
    let s = tokio::net::UdpSocket::from_std(s.into()).map_err(err)?;
    tidegate_core::udp::tune(&s);
    tidegate_core::dump::DumpedUdp::new(s, dump_prefix).map_err(err)
}

/// The IPv4 address of an interface, by name.
fn interface_v4(name: &str) -> Result<Ipv4Addr, String> {
    if_addrs::get_if_addrs()
        .map_err(|e| format!("interfaces: {e}"))?
        .into_iter()
        .find_map(|i| match i.ip() {
            IpAddr::V4(a) if i.name == name => Some(a),
            _ => None,
        })
        .ok_or_else(|| format!("no interface '{name}' with an IPv4 address"))
}

fn session(paths: &PathManager, kind: &'static str, remote: Option<SocketAddr>) -> SessionInfo {
    SessionInfo {
        id: paths.new_session_id(),
        kind,
        remote,
        query: String::new(),
    }
}

/// `udp+mpegts://`: listens until `cancel`.
pub async fn udp_mpegts(
    url: String,
    read_timeout: Duration,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    let params = match udp_params(&url) {
        Ok(p) => p,
        Err(e) => {
            status.set_state("failed");
            status.set_error(&e);
            tracing::error!(path, "source: {e}");
            return;
        }
    };
    with_backoff("source", &path, &status, &cancel, || async {
        let socket = bind_udp(&params, "mpegts_source_packet_conn")?;
        status.set_state("idle");
        tracing::info!(path, "[MPEG-TS] listening on UDP {}", params.addr);
        let mut buf = vec![0u8; 65_536];
        loop {
            // Wait for a sender (as long as it takes).
            let (n, from) = socket
                .recv_from(&mut buf)
                .await
                .map_err(|e| format!("UDP: {e}"))?;
            if params.source.is_some_and(|s| s != from.ip()) {
                continue;
            }
            let mut publisher = paths
                .publish_source(&path, session(&paths, "mpegtsSource", Some(from)))
                .map_err(|e| e.to_string())?;
            status.set_state("running");
            tracing::info!(path, "[MPEG-TS] receiving from {from}");
            let kicked = publisher.kicked();
            let mut ingest = TsIngest::default();
            status.bytes.fetch_add(n as u64, Ordering::Relaxed);
            ingest.feed(&buf[..n], &mut publisher, "MPEG-TS");
            let why = loop {
                let r = tokio::select! {
                    _ = kicked.cancelled() => break "kicked".to_string(),
                    r = tokio::time::timeout(read_timeout, socket.recv_from(&mut buf)) => r,
                };
                match r {
                    Err(_) => break format!("no data for {read_timeout:?}"),
                    Ok(Err(e)) => return Err(format!("UDP: {e}")),
                    Ok(Ok((n, from))) => {
                        if params.source.is_some_and(|s| s != from.ip()) {
                            continue;
                        }
                        status.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        ingest.feed(&buf[..n], &mut publisher, "MPEG-TS");
                    }
                }
            };
            drop(publisher);
            status.set_state("idle");
            tracing::info!(path, "[MPEG-TS] the sender stopped: {why}");
        }
    })
    .await;
}

/// `unix+mpegts://`: listens on a Unix stream socket until `cancel`; one sender at a time.
pub async fn unix_mpegts(
    url: String,
    read_timeout: Duration,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    use tokio::io::AsyncReadExt;
    let file = url.trim_start_matches("unix+mpegts://").to_string();
    with_backoff("source", &path, &status, &cancel, || async {
        // A socket file left by an earlier run would make bind fail.
        if std::fs::symlink_metadata(&file)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(&file);
        }
        let listener =
            tokio::net::UnixListener::bind(&file).map_err(|e| format!("unix {file}: {e}"))?;
        let _cleanup = RemoveOnDrop(file.clone());
        status.set_state("idle");
        tracing::info!(path, "[MPEG-TS] listening on unix {file}");
        loop {
            let (mut conn, _) = listener
                .accept()
                .await
                .map_err(|e| format!("unix {file}: {e}"))?;
            let mut publisher = paths
                .publish_source(&path, session(&paths, "mpegtsSource", None))
                .map_err(|e| e.to_string())?;
            status.set_state("running");
            let kicked = publisher.kicked();
            let mut ingest = TsIngest::default();
            let mut buf = vec![0u8; 64 * 1024];
            let why = loop {
                let r = tokio::select! {
                    _ = kicked.cancelled() => break "kicked".to_string(),
                    r = tokio::time::timeout(read_timeout, conn.read(&mut buf)) => r,
                };
                match r {
                    Err(_) => break format!("no data for {read_timeout:?}"),
                    Ok(Err(e)) => break format!("read: {e}"),
                    Ok(Ok(0)) => break "the sender closed the connection".to_string(),
                    Ok(Ok(n)) => {
                        status.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        ingest.feed(&buf[..n], &mut publisher, "MPEG-TS");
                    }
                }
            };
            drop(publisher);
            status.set_state("idle");
            tracing::info!(path, "[MPEG-TS] unix sender gone: {why}");
        }
    })
    .await;
}

/// `udp+rtp://`: RTP whose session `sdp` describes, on one UDP port, until `cancel`.
pub async fn udp_rtp(
    url: String,
    sdp: String,
    read_timeout: Duration,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    use tidegate_rtsp::ingest::InTrack;
    let setup = udp_params(&url).and_then(|p| {
        let medias =
            tidegate_rtsp::sdp::parse(&sdp).map_err(|e| format!("rtpSDP is not usable: {e}"))?;
        if medias.is_empty() {
            return Err("rtpSDP: no media (m=) line".to_string());
        }
        Ok((p, medias))
    });
    let (params, medias) = match setup {
        Ok(x) => x,
        Err(e) => {
            status.set_state("failed");
            status.set_error(&e);
            tracing::error!(path, "source: {e}");
            return;
        }
    };
    with_backoff("source", &path, &status, &cancel, || async {
        let socket = bind_udp(&params, "rtp_source_packet_conn")?;
        status.set_state("idle");
        tracing::info!(path, "[RTP] listening on UDP {}", params.addr);
        let mut buf = vec![0u8; 65_536];
        loop {
            // The tracks, fresh for each sender: payload type → track.
            let mut tracks: Vec<(u8, InTrack)> = Vec::new();
            for m in &medias {
                match tidegate_rtsp::sdp::incoming(m) {
                    Ok(inc) => tracks.push((m.pt, InTrack::new(inc))),
                    Err(e) => tracing::warn!(path, "[RTP] media {} not carried: {e}", m.pt),
                }
            }
            if tracks.is_empty() {
                return Err("rtpSDP: no media Tidegate can carry".into());
            }
            let (mut n, mut from) = socket
                .recv_from(&mut buf)
                .await
                .map_err(|e| format!("UDP: {e}"))?;
            let started = std::time::Instant::now();
            let mut publisher = None;
            let mut stream: Option<Arc<tidegate_core::Stream>> = None;
            tracing::info!(path, "[RTP] receiving from {from}");
            let why = loop {
                if params.source.is_none_or(|s| s == from.ip()) {
                    status.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    if let Ok(p) = tidegate_rtp::RtpPacket::parse(&buf[..n]) {
                        if let Some(idx) = tracks.iter().position(|(pt, _)| *pt == p.payload_type) {
                            let frames = tracks[idx].1.push(idx, &p, started);
                            if stream.is_none() {
                                if let Some(desc) =
                                    tidegate_rtsp::ingest::desc(tracks.iter().map(|(_, t)| t))
                                {
                                    let mut pb = paths
                                        .publish_source(
                                            &path,
                                            session(&paths, "rtpSource", Some(from)),
                                        )
                                        .map_err(|e| e.to_string())?;
                                    let s = pb.start(desc);
                                    tidegate_rtsp::ingest::mark_mpegts(
                                        &tracks.iter().map(|(_, t)| t).collect::<Vec<_>>(),
                                        &s,
                                    );
                                    status.set_state("running");
                                    stream = Some(s);
                                    publisher = Some(pb);
                                } else if started.elapsed() > read_timeout {
                                    break "no codec parameters".to_string();
                                }
                            }
                            if let Some(s) = &stream {
                                for f in frames {
                                    s.write(f);
                                }
                            }
                        }
                    }
                }
                let kicked = publisher
                    .as_ref()
                    .map(|p: &tidegate_core::Publisher| p.kicked());
                let r = tokio::select! {
                    _ = async {
                        match &kicked {
                            Some(k) => k.cancelled().await,
                            None => std::future::pending().await,
                        }
                    } => break "kicked".to_string(),
                    r = tokio::time::timeout(read_timeout, socket.recv_from(&mut buf)) => r,
                };
                match r {
                    Err(_) => break format!("no data for {read_timeout:?}"),
                    Ok(Err(e)) => return Err(format!("UDP: {e}")),
                    Ok(Ok((n2, f2))) => (n, from) = (n2, f2),
                }
            };
            drop(publisher);
            status.set_state("idle");
            tracing::info!(path, "[RTP] the sender stopped: {why}");
        }
    })
    .await;
}

struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_urls() {
        let p = udp_params("udp+mpegts://239.1.2.3:1234?interface=lo&source=10.0.0.1").unwrap();
        assert_eq!(p.addr, "239.1.2.3:1234".parse().unwrap());
        assert_eq!(p.interface.as_deref(), Some("lo"));
        assert_eq!(p.source, Some("10.0.0.1".parse().unwrap()));
        assert!(udp_params("udp+mpegts://0.0.0.0:5000").is_ok());
        assert!(udp_params("udp+mpegts://host.example:5000").is_err());
        assert!(udp_params("udp+mpegts://0.0.0.0").is_err());
        assert!(udp_params("udp+mpegts://0.0.0.0:5000?x=1").is_err());
    }
}
