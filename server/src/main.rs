use clap::Parser;
use mission_control_server::heap::{self, Thresholds};
use mission_control_server::{app::App, config::Config, logging};

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hash-token") {
        return hash_token();
    }
    let thresholds = heap::configure();
    let runtime = runtime();
    let code = runtime.block_on(run(thresholds));
    // The drain is bounded already; whatever is still blocked (a lookup, a
    // stuck connection) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

/// The multi-threaded runtime, without tokio's LIFO slot where the build
/// allows it (`--cfg tokio_unstable`, set in `.cargo/config.toml`). With the
/// slot, a task that finishes a call wakes its connection's task into the
/// slot, which runs next and writes that one answer: one write call per
/// answer. Without it the woken connection waits its turn behind the other
/// calls finished in the same round and writes them all at once (0.07-0.11
/// write calls per call instead of 0.61-0.75; BENCHMARKS.md).
fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.enable_all().build().expect("a tokio runtime")
}

async fn run(thresholds: Thresholds) -> std::process::ExitCode {
    let config = Config::parse();
    logging::init(config.log_format);
    tracing::debug!(lifo_slot = cfg!(not(tokio_unstable)), "runtime");
    match thresholds {
        Thresholds::Fixed => tracing::debug!(
            mmap_threshold = heap::MMAP_THRESHOLD,
            trim_threshold = heap::TRIM_THRESHOLD,
            "heap thresholds fixed"
        ),
        Thresholds::LeftToEnvironment => {
            tracing::info!("heap thresholds left to glibc's environment")
        }
        Thresholds::Unchanged => {
            tracing::debug!("heap thresholds unchanged (not glibc, or refused)")
        }
    }
    if config.operator_token.is_some()
        && mission_control_server::config::operator_token_on_command_line(std::env::args_os())
    {
        tracing::warn!(
            "--operator-token on the command line shows in `ps` to every user of this host: \
             use --operator-token-file or MC_OPERATOR_TOKEN"
        );
    }
    // Installed before the start, so a SIGTERM that arrives while (or just
    // after) the fleet loads is not the default action, which kills the
    // process with its leader lease still held.
    let mut signals = ShutdownSignals::install();
    let started = tokio::select! {
        started = App::start(&config) => started,
        () = signals.recv() => {
            tracing::info!("stopped while starting");
            return std::process::ExitCode::SUCCESS;
        }
    };
    let app = match started {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    match app.run_until(signals.recv()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what orchestrators send) or Ctrl-C.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Takes over both signals now: from here on they end the server
    /// gracefully instead of killing it.
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).expect("a SIGTERM handler"),
                interrupt: signal(SignalKind::interrupt()).expect("a SIGINT handler"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `mission-control hash-token`: reads a token on standard input (so it
/// stays out of `ps` and shell history) and prints the credential to put
/// in a roles file.
fn hash_token() -> std::process::ExitCode {
    let mut token = String::new();
    if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
        eprintln!("usage: echo -n TOKEN | mission-control hash-token");
        return std::process::ExitCode::FAILURE;
    }
    println!("{}", mission_control_server::edge::hash_line(&token));
    std::process::ExitCode::SUCCESS
}
