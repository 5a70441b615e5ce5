use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tidegate::config::Config;

/// Tidegate: a live media gateway. Any ingest (RTMP, RTSP, SRT, WebRTC) to any egress.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Configuration file. Default: the first that exists of ./tidegate.yml,
    /// /etc/tidegate/tidegate.yml, then MediaMTX's ./mediamtx.yml, /usr/local/etc/mediamtx.yml,
    /// /usr/etc/mediamtx.yml and /etc/mediamtx/mediamtx.yml; else the embedded default.
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Stream keys of a running server, through its API.
    Keys(Box<tidegate::cli::Keys>),
    /// Reads the configuration (the named file, or the one the server would find) with its
    /// `TIDEGATE_*` overrides, checks every key and exits: 0 if valid, 1 with the error.
    Check {
        /// Configuration file; default: found as the server finds it.
        config: Option<PathBuf>,
    },
}

/// Where the configuration is looked for when none is named, in order: ours first, then
/// MediaMTX's file in the places MediaMTX looks, so that its users' file is found as it is.
const SEARCH: &[&str] = &[
    "tidegate.yml",
    "/etc/tidegate/tidegate.yml",
    "mediamtx.yml",
    "/usr/local/etc/mediamtx.yml",
    "/usr/etc/mediamtx.yml",
    "/etc/mediamtx/mediamtx.yml",
];

/// The named file, or the first of [`SEARCH`] that exists; `None` for the embedded default.
/// A file that exists but cannot be read is an error, not a reason to look further.
fn find_config(named: Option<PathBuf>) -> Result<Option<(PathBuf, String)>, String> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    if let Some(p) = named {
        return read(&p).map(|t| Some((p, t)));
    }
    for candidate in SEARCH {
        let p = PathBuf::from(candidate);
        match std::fs::read_to_string(&p) {
            Ok(t) => return Ok(Some((p, t))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
        }
    }
    Ok(None)
}

fn main() -> ExitCode {
    // Sockets handed over by the process this one replaces (or by systemd), taken while this
    // is the only thread.
    let ready = tidegate::upgrade::inherit_from_env();
    // The binary and arguments an upgrade starts again: the path as it was at start, which
    // the new binary will have replaced.
    let exe = std::env::current_exe();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let args = Args::parse();
    let (config_arg, check) = match args.cmd {
        Some(Cmd::Keys(k)) => return tidegate::cli::run(*k),
        Some(Cmd::Check { config }) => (config, true),
        None => (args.config, false),
    };
    let found = match find_config(config_arg) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tidegate: {e}");
            return ExitCode::from(1);
        }
    };
    let name = found.as_ref().map(|(p, _)| p.display().to_string());
    let file = name.as_deref().zip(found.as_ref().map(|(_, t)| t.as_str()));
    let config = match Config::load(file, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tidegate: configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    if check {
        for w in &config.warnings {
            eprintln!("tidegate: warning: {w}");
        }
        println!(
            "tidegate: configuration OK: {}",
            name.as_deref().unwrap_or("embedded default")
        );
        return ExitCode::SUCCESS;
    }
    let drain = config.drain_period;
    if let Err(e) = tidegate::logging::init(&config) {
        eprintln!("tidegate: configuration error: {e}");
        return ExitCode::from(1);
    }
    tracing::info!(
        "Tidegate {} starting; configuration: {}",
        env!("CARGO_PKG_VERSION"),
        name.as_deref().unwrap_or("embedded default")
    );
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidegate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        // Signal handlers first: a SIGTERM that arrives while the listeners open must still
        // shut down cleanly, not kill the process with the default action.
        let signal = shutdown_signal();
        #[cfg(unix)]
        let usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
        let server = match tidegate::Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        // The file is watched, and SIGHUP reloads it too.
        if let Some((path, _)) = &found {
            let env: Vec<(String, String)> = std::env::vars().collect();
            server.watch_config(path.clone(), env.clone());
            #[cfg(unix)]
            if let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                let reloader = server.reloader();
                let path = path.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("[reload] SIGHUP");
                        reloader.reload_file(&path, env.clone()).await;
                    }
                });
            }
        }
        tidegate::upgrade::announce(ready);
        let upgraded = upgrade_on_signal(usr2, exe, argv, &server);
        tokio::select! {
            _ = signal => {
                if !drain.is_zero() {
                    // A second signal ends the drain at once.
                    let again = shutdown_signal();
                    tokio::select! {
                        _ = server.drain(drain) => {}
                        _ = again => tracing::info!("second signal: the drain ends now"),
                    }
                }
            }
            (pid, _bridge) = upgraded => {
                tracing::info!("[upgrade] process {pid} serves in this one's place");
                let again = shutdown_signal();
                tokio::select! {
                    _ = server.hand_over(drain) => {}
                    _ = again => tracing::info!("signal: this process's sessions are closed now"),
                }
            }
        }
        tracing::info!("shutting down");
        server.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Resolves with the new process's id (and the bridge serving it) once an upgrade (`SIGUSR2`) has started one that serves;
/// a failed upgrade is logged and this process goes on. Never resolves without `SIGUSR2`.
async fn upgrade_on_signal(
    usr2: Option<tokio::signal::unix::Signal>,
    exe: std::io::Result<PathBuf>,
    argv: Vec<std::ffi::OsString>,
    server: &tidegate::Server,
) -> (u32, tidegate::upgrade::Predecessor) {
    #[cfg(unix)]
    {
        if let Some(mut usr2) = usr2 {
            while usr2.recv().await.is_some() {
                let exe = match &exe {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!("[upgrade] SIGUSR2: this binary's path is unknown ({e})");
                        continue;
                    }
                };
                tracing::info!("[upgrade] SIGUSR2: starting {}", exe.display());
                let bridge = match server.bridge() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("[upgrade] cannot open the bridge to the new process: {e}");
                        continue;
                    }
                };
                match tidegate::upgrade::start(exe, &argv, &bridge).await {
                    Ok(pid) => return (pid, bridge),
                    Err(e) => {
                        tracing::error!("[upgrade] failed, this process goes on serving: {e}")
                    }
                }
            }
        }
    }
    std::future::pending().await
}

/// Installs the SIGINT/SIGTERM handlers now (unix registers them at once) and returns a
/// future that resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
