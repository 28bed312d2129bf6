//! The same port over HTTP/1.1: the dashboard page (open, with a strict
//! Content-Security-Policy), `/metrics` (a viewer's), and gRPC-Web calls
//! held to exactly the role matrix of native gRPC, without a browser.

use std::net::SocketAddr;
use std::path::PathBuf;

use mission_control_server::edge::hash_line;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

pub const WEB_VIEWER_TOKEN: &str = "web-viewer-s3cret";
pub const WEB_ADMIN_TOKEN: &str = "web-admin-s3cret";

/// A roles file with one viewer and one admin, removed on drop.
pub struct WebRoles(PathBuf);

impl WebRoles {
    pub fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("mc-web-roles-{}-{nanos}", std::process::id()));
        let text = format!(
            "browser viewer {}\nops admin {}\n",
            hash_line(WEB_VIEWER_TOKEN),
            hash_line(WEB_ADMIN_TOKEN)
        );
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    /// `flags` with this roles file.
    pub fn flags(&self, mut flags: Vec<String>) -> Vec<String> {
        flags.extend(["--roles-file".into(), self.0.display().to_string()]);
        flags
    }
}

impl Drop for WebRoles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A response read whole from a fresh HTTP/1.1 connection.
struct Http1Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Http1Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The gRPC status of a gRPC-Web answer: from the headers
    /// (trailers-only), or from the trailer frame at the end of the body.
    fn grpc_status(&self) -> Option<u32> {
        if let Some(code) = self.header("grpc-status") {
            return code.parse().ok();
        }
        let text = String::from_utf8_lossy(&self.body).to_ascii_lowercase();
        let after = &text[text.rfind("grpc-status:")? + "grpc-status:".len()..];
        let digits: String = after
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }
}

async fn http1(addr: SocketAddr, head: &str, body: &[u8]) -> Http1Response {
    within("an HTTP/1.1 answer", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status line");
        Http1Response {
            status,
            head,
            body: raw[split + 4..].to_vec(),
        }
    })
    .await
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Http1Response {
    let auth = token.map_or(String::new(), |t| format!("\r\nAuthorization: Bearer {t}"));
    http1(addr, &format!("GET {path} HTTP/1.1{auth}"), &[]).await
}

/// One gRPC-Web call (binary, as @connectrpc/connect-web sends it) of an
/// already encoded message.
async fn grpc_web(
    addr: SocketAddr,
    method: &str,
    message: &[u8],
    token: Option<&str>,
) -> Http1Response {
    let auth = token.map_or(String::new(), |t| format!("\r\nauthorization: Bearer {t}"));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    http1(
        addr,
        &format!(
            "POST /missioncontrol.lifecycle.v1.{method} HTTP/1.1\r\n\
             content-type: application/grpc-web+proto\r\nx-grpc-web: 1{auth}"
        ),
        &frame,
    )
    .await
}

#[tokio::test]
async fn grpc_web_calls_follow_the_role_matrix() {
    let db = database().await;
    let roles = WebRoles::new();
    let app = spawn_app(roles.flags(fast_flags(db.url()))).await;
    let addr = app.app.addr();
    const OK: u32 = 0;
    const INVALID_ARGUMENT: u32 = 3;
    const PERMISSION_DENIED: u32 = 7;
    const UNAUTHENTICATED: u32 = 16;
    // ListGateways is a viewer's read; WakeAgent with no id an admin's call
    // that passes the edge and fails validation (nothing is woken).
    let cases = [
        ("Gateways/ListGateways", None, UNAUTHENTICATED),
        ("Gateways/ListGateways", Some("wrong"), UNAUTHENTICATED),
        ("Gateways/ListGateways", Some(WEB_VIEWER_TOKEN), OK),
        ("Gateways/ListGateways", Some(WEB_ADMIN_TOKEN), OK),
        ("AgentLifecycle/WakeAgent", None, UNAUTHENTICATED),
        (
            "AgentLifecycle/WakeAgent",
            Some(WEB_VIEWER_TOKEN),
            PERMISSION_DENIED,
        ),
        (
            "AgentLifecycle/WakeAgent",
            Some(WEB_ADMIN_TOKEN),
            INVALID_ARGUMENT,
        ),
        ("AgentLifecycle/ListAgents", None, UNAUTHENTICATED),
        ("AgentLifecycle/ListAgents", Some(WEB_VIEWER_TOKEN), OK),
    ];
    for (method, token, expected) in cases {
        let response = grpc_web(addr, method, &[], token).await;
        assert_eq!(
            response.status, 200,
            "{method} {token:?}: {}",
            response.head
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/grpc-web+proto"),
            "{method} {token:?}: {}",
            response.head
        );
        assert_eq!(
            response.grpc_status(),
            Some(expected),
            "{method} {token:?}: {}",
            response.head
        );
    }
    app.app.shutdown().await;
}

#[tokio::test]
async fn the_page_is_open_and_metrics_are_a_viewers_on_the_main_port() {
    let db = database().await;
    let roles = WebRoles::new();
    let app = spawn_app(roles.flags(fast_flags(db.url()))).await;
    let addr = app.app.addr();

    for path in ["/", "/assets/app.js", "/assets/app.css"] {
        let page = get(addr, path, None).await;
        assert_eq!(page.status, 200, "{path}: {}", page.head);
        assert_eq!(
            page.header("content-security-policy"),
            Some(mission_control_server::web::CONTENT_SECURITY_POLICY),
            "{path}"
        );
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    }
    let csp = mission_control_server::web::CONTENT_SECURITY_POLICY;
    assert!(
        csp.contains("script-src 'self';") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = String::from_utf8(get(addr, "/", None).await.body).unwrap();
    assert!(
        html.contains(r#"<script type="module" src="/assets/app.js">"#),
        "{html}"
    );
    assert!(!html.contains("<script>"), "no inline script: {html}");

    let refused = get(addr, "/metrics", None).await;
    assert_eq!(refused.status, 401, "{}", refused.head);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(get(addr, "/metrics", Some("wrong")).await.status, 401);
    for token in [WEB_VIEWER_TOKEN, WEB_ADMIN_TOKEN] {
        let metrics = get(addr, "/metrics", Some(token)).await;
        assert_eq!(metrics.status, 200, "{}", metrics.head);
        let text = String::from_utf8(metrics.body).unwrap();
        assert!(
            text.contains("mission_control_agents{status=\"online\"}"),
            "{text}"
        );
    }
    // Anything else is not a page: gRPC's UNIMPLEMENTED, as before.
    let unknown = get(addr, "/no-such-page", None).await;
    assert_eq!(unknown.grpc_status(), Some(12), "{}", unknown.head);
    app.app.shutdown().await;
}

#[tokio::test]
async fn without_operator_credentials_on_loopback_metrics_are_open() {
    let db = database().await;
    let app = spawn_app(fast_flags(db.url())).await;
    let metrics = get(app.app.addr(), "/metrics", None).await;
    assert_eq!(metrics.status, 200, "{}", metrics.head);
    app.app.shutdown().await;
}
