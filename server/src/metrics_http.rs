//! A minimal HTTP endpoint for Prometheus: `GET /metrics`, one response per
//! connection. Enough for a scraper; nothing else is served. With operator
//! credentials configured, the scraper sends `Authorization: Bearer
//! <token>` of a viewer (or admin).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::edge::{Operators, bearer_credentials};
use crate::runtime::Lifecycle;

/// Request line and headers, at most.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

pub async fn serve(
    listener: TcpListener,
    lifecycle: Lifecycle,
    operators: Arc<Operators>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener failed to accept");
                    continue;
                }
            },
        };
        let lifecycle = lifecycle.clone();
        let operators = operators.clone();
        tokio::spawn(async move {
            let deadline = std::time::Duration::from_secs(5);
            let _ = tokio::time::timeout(deadline, answer(stream, &lifecycle, &operators)).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    lifecycle: &Lifecycle,
    operators: &Operators,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let (status, content_type, body) = if !head.starts_with("GET /metrics ") {
        (
            "404 Not Found",
            "text/plain",
            "try GET /metrics\n".to_owned(),
        )
    } else if !authorized(&head, operators) {
        (
            "401 Unauthorized",
            "text/plain",
            "send `Authorization: Bearer <viewer token>`\n".to_owned(),
        )
    } else {
        (
            "200 OK",
            "text/plain; version=0.0.4",
            lifecycle.render_metrics(),
        )
    };
    let extra = if status.starts_with("401") {
        "WWW-Authenticate: Bearer\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The request line and headers (up to the blank line, or the cap).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Any operator (viewer or admin) may read metrics.
fn authorized(head: &str, operators: &Operators) -> bool {
    if !operators.required() {
        return true;
    }
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .filter_map(|(_, value)| bearer_credentials(value))
        .any(|token| !token.is_empty() && operators.by_token(token).is_some())
}
