use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tidegate::config::Config;

/// Tidegate: a live media gateway. Any ingest (RTMP, RTSP, SRT, WebRTC) to any egress.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file. Default: ./tidegate.yml if it exists, else the embedded default.
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (path, text) = match args.config {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(t) => (Some(p), Some(t)),
            Err(e) => {
                eprintln!("tidegate: cannot read {}: {e}", p.display());
                return ExitCode::from(1);
            }
        },
        None => match std::fs::read_to_string("tidegate.yml") {
            Ok(t) => (Some(PathBuf::from("tidegate.yml")), Some(t)),
            Err(_) => (None, None),
        },
    };
    let name = path.as_ref().map(|p| p.display().to_string());
    let file = name.as_deref().zip(text.as_deref());
    let config = match Config::load(file, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tidegate: configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    tidegate::logging::init(&config);
    tracing::info!(
        "Tidegate {} starting; configuration: {}",
        env!("CARGO_PKG_VERSION"),
        name.as_deref().unwrap_or("embedded default")
    );
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
        let server = match tidegate::Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        signal.await;
        tracing::info!("shutting down");
        server.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
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
