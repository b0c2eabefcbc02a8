//! antibody-web: wiring only — config and secrets, the listening socket
//! (systemd's when socket-activated), the event pump and the HTTP server.
//! Everything else lives in `antibody::web`.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use libsystemd::activation::IsType;

use antibody::sys::sdnotify;
use antibody::web::config::{Secrets, WebConfig, DEFAULT_WEB_CONFIG_PATH};
use antibody::web::{routes, server, App};

/// mimalloc, as in the agent (src/main.rs): under callgrind glibc's
/// malloc, free and realloc were about a fifth of the bridge's
/// instructions per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a stop waits for open requests and event streams.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the stop then waits for the audit writer to catch up.
const AUDIT_DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "antibody-web",
    version,
    about = "Antibody's unprivileged HTTP/WebSocket bridge to the agent's D-Bus API"
)]
struct Args {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_WEB_CONFIG_PATH)]
    config: PathBuf,
    /// Check the configuration and the secrets it names, print the
    /// configuration with every default filled in, and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the OpenAPI document (docs/openapi.json) and exit.
    #[arg(long)]
    openapi: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.openapi {
        print!("{}", antibody::web::openapi::document());
        return ExitCode::SUCCESS;
    }
    // Before any thread exists: this also clears LISTEN_* from the environment.
    let activated = libsystemd::activation::receive_descriptors(true).unwrap_or_default();
    let missing_ok = args.config == std::path::Path::new(DEFAULT_WEB_CONFIG_PATH);
    let loaded = WebConfig::load(&args.config, missing_ok).and_then(|config| {
        let secrets = Secrets::load(&config)?;
        Ok((config, secrets))
    });
    let (config, secrets) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("<3>antibody-web: configuration: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    if args.check_config {
        print!("{}", toml::to_string(&config).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    // A socket systemd passed (antibody-web.socket) wins over `listen`.
    let inherited = activated
        .into_iter()
        .find(|fd| fd.is_inet())
        // SAFETY: systemd passed this descriptor to us alone, and it is an
        // AF_INET/AF_INET6 socket (checked above) that nothing else owns.
        .map(|fd| unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) });

    // One thread: a request's work is a few dozen microseconds, and on
    // two workers the hand-offs between them (futex wake-ups) cost more
    // CPU than the work (web_bench: 125 -> 100 µs of CPU a request).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        // Under the unit's TasksMax=64 (tokio's default is 512 blocking
        // threads, and a thread that cannot be spawned panics).
        .max_blocking_threads(32)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("<3>antibody-web: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, secrets, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("<3>antibody-web: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: WebConfig,
    secrets: Secrets,
    inherited: Option<std::net::TcpListener>,
) -> Result<(), String> {
    let listener = match inherited {
        Some(std) => {
            std.set_nonblocking(true)
                .map_err(|e| format!("the socket systemd passed: {e}"))?;
            tokio::net::TcpListener::from_std(std)
                .map_err(|e| format!("the socket systemd passed: {e}"))?
        }
        None => tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", config.listen))?,
    };
    let local = listener
        .local_addr()
        .map_err(|e| format!("the listening socket: {e}"))?;
    let app = App::new(&config, &secrets)?;
    drop(secrets);
    app.start_event_pump().await;
    app.audit.info(&format!("listening on {local}"));
    sdnotify::ready(&format!("listening on {local}"));

    let router = routes::router(app.clone());
    let limits = server::Limits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        max_connections: config.max_connections,
    };
    let stop = async {
        stop_signal().await;
        sdnotify::stopping();
    };
    server::serve(listener, router, limits, stop, STOP_GRACE).await;
    // The last requests' journal lines are written before the process ends.
    app.audit.drain(AUDIT_DRAIN_GRACE);
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the default action (exit) still applies.
        _ => std::future::pending().await,
    }
}
