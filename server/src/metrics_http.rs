//! A minimal HTTP endpoint for Prometheus: `GET /metrics`, one response per
//! connection. Enough for a scraper; nothing else is served.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::runtime::Lifecycle;

pub async fn serve(listener: TcpListener, lifecycle: Lifecycle, stop: CancellationToken) {
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
        tokio::spawn(async move {
            let deadline = std::time::Duration::from_secs(5);
            let _ = tokio::time::timeout(deadline, answer(stream, &lifecycle)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, lifecycle: &Lifecycle) -> std::io::Result<()> {
    // The request line is all we need; headers are read and ignored.
    let mut request = [0u8; 1024];
    let read = stream.read(&mut request).await?;
    let line = String::from_utf8_lossy(&request[..read]);
    let (status, content_type, body) = if line.starts_with("GET /metrics ") {
        (
            "200 OK",
            "text/plain; version=0.0.4",
            lifecycle.render_metrics(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "try GET /metrics\n".to_owned(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
