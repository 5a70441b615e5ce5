//! Upgrades without drops (docs/deploy.md): the sockets a new process takes over from the one
//! it replaces.
//!
//! Every listening socket is opened through [`tcp`] or [`udp`] under its configuration key's
//! name. Each keeps a duplicate descriptor here, so that on `SIGUSR2` the server can hand them
//! all to the new binary ([`sockets`], passed with the systemd `LISTEN_FDS`/`LISTEN_FDNAMES`
//! protocol); a process started that way finds them in [`inherit`]ed sockets and serves on the
//! very same sockets, so that no connection attempt is refused while the two overlap.
//!
//! TCP needs nothing more: connections already accepted stay with the old process, new ones go
//! to whichever process accepts, and the old one stops accepting once the new one serves.
//! A UDP socket carries every session's datagrams, so the old process first gives each of its
//! UDP sessions a *connected twin* ([`connected_twin`]): a socket bound to the same address and
//! connected to the session's peer, to which the kernel delivers that peer's datagrams
//! in preference to the shared socket. Then it stops reading the shared socket
//! ([`UdpStage::Released`]), which the new process reads alone. Sending still goes out of the
//! shared socket, so the peer sees the same source address throughout.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{LazyLock, Mutex};

use tokio::sync::watch;

/// Sockets handed to this process at start, by name, not yet taken.
static INHERITED: Mutex<Vec<(String, OwnedFd)>> = Mutex::new(Vec::new());
/// The listening sockets this process serves on, by name (duplicates of their descriptors).
static LIVE: Mutex<Vec<(String, OwnedFd)>> = Mutex::new(Vec::new());

/// Keeps the sockets this process was started with (by their `LISTEN_FDNAMES` names), to be
/// taken by the listeners that open under the same names.
pub fn inherit(fds: Vec<(String, OwnedFd)>) {
    let mut list = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    list.extend(fds);
}

/// How many inherited sockets no listener has taken (closed by [`drop_unclaimed`]).
pub fn unclaimed() -> usize {
    INHERITED.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Closes the inherited sockets no listener wanted (a listener the new configuration turned
/// off, or moved): their connection attempts are then refused rather than left queued.
pub fn drop_unclaimed() {
    for (name, _) in INHERITED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
    {
        tracing::info!(
            "[upgrade] the inherited {name} socket is not used by this configuration: closed"
        );
    }
}

fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    socket2::SockRef::from(fd).local_addr().ok()?.as_socket()
}

/// Whether a socket bound to `have` serves a listener configured on `want` (port 0 asks for any
/// port, so an inherited one does).
fn serves(want: SocketAddr, have: SocketAddr) -> bool {
    want == have || (want.port() == 0 && want.ip() == have.ip())
}

/// The inherited socket named `name`, if it is bound where `addr` asks.
fn take(name: &str, addr: SocketAddr) -> Option<OwnedFd> {
    let mut list = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    let i = list.iter().position(|(n, _)| n == name)?;
    let (_, fd) = list.swap_remove(i);
    match local_addr(&fd) {
        Some(have) if serves(addr, have) => {
            tracing::info!("[upgrade] {name}: serving on the inherited socket {have}");
            Some(fd)
        }
        have => {
            tracing::info!(
                "[upgrade] {name}: the inherited socket is on {have:?}, the configuration asks \
                 for {addr}: a new one is opened"
            );
            None
        }
    }
}

/// Records `fd` (a duplicate) as the listening socket named `name`, replacing an older one.
fn register(name: &str, fd: std::io::Result<OwnedFd>) {
    let Ok(fd) = fd else { return };
    let mut list = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|(n, _)| n != name);
    list.push((name.to_owned(), fd));
}

/// A TCP listener on `addr` under `name`: the inherited one if there is one, else a new one
/// ([`crate::guard::listen`]).
pub fn tcp(name: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = match take(name, addr) {
        Some(fd) => {
            let s = socket2::Socket::from(fd);
            s.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(s.into())?
        }
        None => crate::guard::listen(addr)?,
    };
    register(name, listener.as_fd().try_clone_to_owned());
    Ok(listener)
}

/// A UDP socket on `addr` under `name`: the inherited one if there is one, else a new one.
pub async fn udp(name: &str, addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = match take(name, addr) {
        Some(fd) => {
            let s = socket2::Socket::from(fd);
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s.into())?
        }
        None => tokio::net::UdpSocket::bind(addr).await?,
    };
    register(name, socket.as_fd().try_clone_to_owned());
    Ok(socket)
}

/// Duplicates of every listening socket, by name, for the process that takes over.
pub fn sockets() -> Vec<(String, OwnedFd)> {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(n, fd)| Some((n.clone(), fd.try_clone().ok()?)))
        .collect()
}

/// Forgets the kept duplicates (a drain, or a finished handover): a listening socket then
/// closes as soon as its accept loop lets go of it, so that connection attempts are refused,
/// not queued, unless another process has it.
pub fn release() {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Where a UDP listener stands in a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpStage {
    /// Alone on its sockets.
    Serving,
    /// A new process is starting: every session (open or opening) gets a connected twin; the
    /// shared socket is still read, for new peers.
    Twinning,
    /// The new process serves: the shared socket is no longer read here (sent from only).
    Released,
}

static STAGE: LazyLock<watch::Sender<UdpStage>> =
    LazyLock::new(|| watch::Sender::new(UdpStage::Serving));

/// Follows the handover's stage.
pub fn udp_stage() -> watch::Receiver<UdpStage> {
    STAGE.subscribe()
}

pub fn set_udp_stage(stage: UdpStage) {
    STAGE.send_replace(stage);
}

/// What a UDP receive loop keeps of a handover: whether it still reads the shared socket, and
/// which peers it has given a connected twin (each once).
pub struct Twins {
    stage: watch::Receiver<UdpStage>,
    twinned: std::collections::HashSet<SocketAddr>,
    reading: bool,
}

impl Default for Twins {
    fn default() -> Self {
        Twins {
            stage: udp_stage(),
            twinned: std::collections::HashSet::new(),
            reading: true,
        }
    }
}

impl Twins {
    /// Whether the shared socket is still read here.
    pub fn reading(&self) -> bool {
        self.reading
    }

    /// Waits for the next stage; returns which of `peers` (the loop's sessions now) to twin.
    pub async fn changed<I: IntoIterator<Item = SocketAddr>>(
        &mut self,
        peers: impl FnOnce() -> I,
    ) -> Vec<SocketAddr> {
        let now = match self.stage.changed().await {
            Ok(()) => *self.stage.borrow_and_update(),
            // The sender is a static: never dropped. Should it be, nothing changes again.
            Err(_) => std::future::pending().await,
        };
        self.reading = now != UdpStage::Released;
        if now == UdpStage::Serving {
            self.twinned.clear();
            return Vec::new();
        }
        peers()
            .into_iter()
            .filter(|p| self.twinned.insert(*p))
            .collect()
    }

    /// Whether `peer`, just heard from on the shared socket, is to be twinned now (a handover
    /// is under way and it has no twin yet).
    pub fn newly_heard(&mut self, peer: SocketAddr) -> bool {
        *self.stage.borrow() != UdpStage::Serving && self.twinned.insert(peer)
    }
}

/// A socket bound where `shared` is and connected to `peer`: the kernel delivers `peer`'s
/// datagrams to it rather than to `shared` (a connected socket is the better match), here or in
/// another process. Both get `SO_REUSEADDR`, which binding twice needs.
pub fn connected_twin(
    shared: &impl std::os::fd::AsFd,
    peer: SocketAddr,
) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let shared = socket2::SockRef::from(shared);
    let local = shared
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP socket"))?;
    shared.set_reuse_address(true)?;
    let s = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&local.into())?;
    s.connect(&peer.into())?;
    let s = tokio::net::UdpSocket::from_std(s.into())?;
    crate::udp::tune(&s);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_twin_takes_its_peers_datagrams_and_the_shared_socket_the_others() {
        let shared = udp("test-shared", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let at = shared.local_addr().unwrap();
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let twin = connected_twin(&shared, a.local_addr().unwrap()).unwrap();
        for i in 0..3u8 {
            a.send_to(&[b'a', i], at).await.unwrap();
            b.send_to(&[b'b', i], at).await.unwrap();
        }
        let mut buf = [0u8; 8];
        let within = std::time::Duration::from_secs(5);
        for i in 0..3u8 {
            let n = tokio::time::timeout(within, twin.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], &[b'a', i]);
            let (n, from) = tokio::time::timeout(within, shared.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((&buf[..n], from), (&[b'b', i][..], b.local_addr().unwrap()));
        }
        // Registered under its name, handed over as a duplicate of the same socket.
        let fds = sockets();
        let (_, fd) = fds.iter().find(|(n, _)| n == "test-shared").unwrap();
        assert_eq!(local_addr(fd), Some(at));
    }

    #[test]
    fn an_inherited_socket_serves_its_address_or_any_port() {
        let at: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(serves(at, at));
        assert!(serves("127.0.0.1:0".parse().unwrap(), at));
        assert!(!serves("127.0.0.1:4001".parse().unwrap(), at));
        assert!(!serves("0.0.0.0:0".parse().unwrap(), at));
    }
}
