use clap::Parser;
use mission_control_server::{app::App, config::Config, logging};

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hash-token") {
        return hash_token();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = runtime.block_on(run());
    // The drain is bounded already; whatever is still blocked (a lookup, a
    // stuck connection) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

async fn run() -> std::process::ExitCode {
    let config = Config::parse();
    logging::init(config.log_format);
    if config.operator_token.is_some()
        && mission_control_server::config::operator_token_on_command_line(std::env::args_os())
    {
        tracing::warn!(
            "--operator-token on the command line shows in `ps` to every user of this host: \
             use --operator-token-file or MC_OPERATOR_TOKEN"
        );
    }
    let app = match App::start(&config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    match app.run_until(shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what orchestrators send) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
