//! Upgrades without drops (docs/deploy.md#upgrades-without-drops): on `SIGUSR2` the binary as
//! it now is on disk is started with every listening socket of this one
//! ([`tidegate_core::handover`]), passed as systemd passes sockets (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`, from descriptor 3). It serves on them at once, says so on a socket of its
//! own (named [`READY`]), and this process then stops accepting and reading the shared UDP
//! sockets, keeps its open sessions until they end (or `drainPeriod` passes), and exits. If the
//! new process fails to start, it is killed and this one goes on as before.
//!
//! The same `LISTEN_FDS` protocol lets systemd socket activation hand Tidegate its sockets:
//! a `.socket` unit's `FileDescriptorName=` is the listener's name (`RTMP`, `RTSP`, `HLS`,
//! `API`, `SRT`, …, as [`tidegate_core::handover::sockets`] lists them).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tidegate_core::handover::{self, UdpStage};

/// The name of the descriptor a new process says it serves on.
pub const READY: &str = "tidegate-upgrade-ready";
/// How long a new process has to open its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// At start, before any other thread exists: the sockets a previous process (or systemd)
/// handed over are kept for the listeners of the same names; returns where to say that this
/// process serves, if a previous process waits for it.
pub fn inherit_from_env() -> Option<UnixDatagram> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    // Reads and removes LISTEN_FDS/LISTEN_PID (while no other thread can read the environment).
    let mut fds = listenfd::ListenFd::from_env();
    let (mut sockets, mut ready) = (Vec::new(), None);
    for i in 0..fds.len() {
        let name = names.get(i).cloned().unwrap_or_else(|| format!("fd{}", i + 3));
        if name == READY {
            ready = fds.take_unix_datagram(i).ok().flatten();
            continue;
        }
        let fd: Option<OwnedFd> = match fds.take_tcp_listener(i) {
            Ok(Some(l)) => Some(l.into()),
            _ => fds.take_udp_socket(i).ok().flatten().map(Into::into),
        };
        match fd {
            Some(fd) => sockets.push((name, fd)),
            None => eprintln!("tidegate: inherited descriptor {name} is not a TCP or UDP socket"),
        }
    }
    handover::inherit(sockets);
    ready
}

/// Says to the process that started this one that it serves now (after start-up succeeded),
/// and to systemd that this is the service's main process.
pub fn announce(ready: Option<UnixDatagram>) {
    if let Some(r) = ready {
        if let Err(e) = r.send(b"ready") {
            tracing::warn!("[upgrade] cannot tell the previous process that this one serves: {e}");
        }
    }
    handover::drop_unclaimed();
    notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
}

/// A message to systemd's notification socket, when there is one (`Type=notify` units).
fn notify_systemd(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(s) = UnixDatagram::unbound() else {
        return;
    };
    // Abstract sockets (a leading '@') are not reachable through std's path API: skipped.
    if !path.to_string_lossy().starts_with('@') {
        let _ = s.send_to(message.as_bytes(), &path);
    }
}

/// Starts `exe` with `args` and every listening socket; resolves with the new process's id
/// once it serves, or with why not (the new process is then killed, and this one's UDP
/// listeners go back to reading their sockets).
pub async fn start(exe: &Path, args: &[OsString]) -> Result<u32, String> {
    handover::set_udp_stage(UdpStage::Twinning);
    let r = spawn(exe, args).await;
    handover::set_udp_stage(match r {
        Ok(_) => UdpStage::Released,
        Err(_) => UdpStage::Serving,
    });
    r
}

async fn spawn(exe: &Path, args: &[OsString]) -> Result<u32, String> {
    let (ours, theirs) = UnixDatagram::pair().map_err(|e| format!("socketpair: {e}"))?;
    let mut names = Vec::new();
    let mut mappings = Vec::new();
    for (name, fd) in handover::sockets()
        .into_iter()
        .chain([(READY.to_owned(), OwnedFd::from(theirs))])
    {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: 3 + names.len() as i32,
        });
        names.push(name);
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD");
    cmd.fd_mappings(mappings)
        .map_err(|e| format!("descriptors: {e}"))?;
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(
        "[upgrade] started {} (process {pid}) with {} sockets; waiting for it to serve",
        exe.display(),
        names.len() - 1
    );
    ours.set_nonblocking(true)
        .map_err(|e| format!("socketpair: {e}"))?;
    let ours = tokio::net::UnixDatagram::from_std(ours).map_err(|e| format!("socketpair: {e}"))?;
    let mut buf = [0u8; 16];
    let failed = tokio::select! {
        r = ours.recv(&mut buf) => match r {
            Ok(n) if &buf[..n] == b"ready" => None,
            Ok(_) => Some("the new process sent something else than ready".to_owned()),
            Err(e) => Some(format!("the new process closed its ready socket: {e}")),
        },
        r = child.wait() => Some(match r {
            Ok(status) => format!("the new process exited ({status}) before serving"),
            Err(e) => format!("the new process: {e}"),
        }),
        _ = tokio::time::sleep(START_TIMEOUT) => {
            Some(format!("the new process did not serve within {START_TIMEOUT:?}"))
        }
    };
    match failed {
        None => Ok(pid),
        Some(why) => {
            let _ = child.kill().await;
            Err(why)
        }
    }
}
