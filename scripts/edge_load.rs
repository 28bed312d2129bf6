//! Load against the service's edge, for the figures in the README's
//! Security section (run through `scripts/edge-load`, not in CI).
//!
//! - `partial-bodies ENDPOINT PID STREAMS`: STREAMS requests (over
//!   STREAMS/100 connections) that announce a 4 MB message and send its
//!   first part, never finishing it, without credentials; prints the
//!   server's resident memory before and while they are held.
//! - `wrong-tokens ENDPOINT OPERATOR_TOKEN AGENTS WRONG`: AGENTS valid agents
//!   heartbeat at the pace the service asks while WRONG heartbeats with
//!   wrong tokens are sent as fast as they are answered; prints the valid
//!   heartbeats' latency percentiles, beside theirs in the 6 s before the
//!   attack, and how many agents are ONLINE after.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mission_control_client::agent::AgentClient;
use mission_control_client::operator::OperatorClient;
use mission_control_client::{AgentRole, AgentStatus, ProvisionRequest};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("partial-bodies") => {
            let with_agent_header = args.get(4).is_some_and(|m| m == "heartbeat");
            partial_bodies(
                &args[1],
                args[2].parse().unwrap(),
                args[3].parse().unwrap(),
                with_agent_header,
            )
            .await
        }
        Some("wrong-tokens") => {
            wrong_tokens(
                &args[1],
                &args[2],
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
            )
            .await
        }
        _ => {
            eprintln!("usage: edge_load partial-bodies ENDPOINT PID STREAMS");
            eprintln!("       edge_load wrong-tokens ENDPOINT OPERATOR_TOKEN AGENTS WRONG");
            std::process::exit(2);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn partial_bodies(endpoint: &str, pid: u32, streams: usize, with_agent_header: bool) {
    // Provision without credentials is refused by the edge layer; a
    // Heartbeat with an agent header passes it and meets the size limit.
    let (method, expected) = if with_agent_header {
        ("Heartbeat", "8")
    } else {
        ("Provision", "16")
    };
    const MESSAGE: usize = 4 * 1024 * 1024;
    let authority = endpoint.trim_start_matches("http://").to_owned();
    // The 5-byte gRPC frame header announces 4 MB; most of it follows,
    // never the end. One buffer, shared by every stream.
    let mut body = vec![0u8; MESSAGE];
    body[1..5].copy_from_slice(&(MESSAGE as u32).to_be_bytes());
    let body = Bytes::from(body);
    let before = rss_kib(pid);
    let expected = expected.to_owned();
    let per_connection = 100;
    let mut held = Vec::new();
    let mut connections = Vec::new();
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    for connection in 0..streams.div_ceil(per_connection) {
        let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let (client, driver) = h2::client::Builder::new()
            .initial_window_size(1 << 30)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(driver);
        let count = per_connection.min(streams - connection * per_connection);
        for _ in 0..count {
            let mut client = client.clone().ready().await.unwrap();
            let request = http::Request::post(format!(
                "http://{authority}/missioncontrol.lifecycle.v1.AgentLifecycle/{method}"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-agent-token", "mca_not-a-token")
            .body(())
            .unwrap();
            let (response, mut send) = client.send_request(request, false).unwrap();
            send.reserve_capacity(MESSAGE);
            let _ = send.send_data(body.slice(..MESSAGE - 1), false);
            let answered = answered.clone();
            let expected = expected.clone();
            tokio::spawn(async move {
                let refused = match response.await {
                    Ok(response) => {
                        let (head, mut body) = response.into_parts();
                        let status = match head.headers.get("grpc-status") {
                            Some(status) => Some(status.clone()),
                            None => body
                                .trailers()
                                .await
                                .ok()
                                .flatten()
                                .and_then(|t| t.get("grpc-status").cloned()),
                        };
                        status.is_some_and(|s| s == expected.as_str())
                    }
                    Err(_) => false,
                };
                if refused {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            });
            held.push(send);
        }
        connections.push(client);
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = rss_kib(pid);
    println!(
        "partial-bodies ({method}): {streams} streams opened in {:.1} s and held 5 s; {} refused \
         with grpc-status {expected}; server RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB)",
        opened.as_secs_f64(),
        answered.load(Ordering::Relaxed),
        before as f64 / 1024.0,
        during as f64 / 1024.0,
        (during as f64 - before as f64) / 1024.0,
    );
    drop((held, connections));
}

async fn wrong_tokens(endpoint: &str, operator_token: &str, agents: usize, wrong: usize) {
    let operator = OperatorClient::connect(endpoint)
        .unwrap()
        .with_operator_token(operator_token)
        .unwrap();
    operator
        .register_gateway("load-gw", "", false)
        .await
        .unwrap();
    // A few channels, as many agents' connections would be spread.
    let channels: Vec<_> = (0..8)
        .map(|_| mission_control_client::channel(endpoint).unwrap())
        .collect();
    let mut clients = Vec::new();
    for n in 0..agents {
        let reply = operator
            .provision(ProvisionRequest::new(
                format!("load-{n:04}"),
                "load-gw",
                AgentRole::GatewayMain,
            ))
            .await
            .unwrap();
        clients.push(
            AgentClient::new(channels[n % channels.len()].clone(), &reply.agent_token).unwrap(),
        );
    }
    // Everyone checks in once before the attack.
    for client in &mut clients {
        client.heartbeat().await.unwrap();
    }

    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Before the attack (the baseline, on the same machine at the same
    // load), then during it.
    let attacking = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let baseline = Arc::new(std::sync::Mutex::new(Vec::new()));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut valid = Vec::new();
    for mut client in clients {
        let (baseline, latencies, failures, finished, attacking) = (
            baseline.clone(),
            latencies.clone(),
            failures.clone(),
            finished.clone(),
            attacking.clone(),
        );
        valid.push(tokio::spawn(async move {
            // Start spread over the first second.
            tokio::time::sleep(Duration::from_millis(fastrand_ms())).await;
            while !finished.load(Ordering::Relaxed) {
                let started = Instant::now();
                let during = attacking.load(Ordering::Relaxed);
                let pause = match client.heartbeat().await {
                    Ok(reply) => {
                        let into = if during { &latencies } else { &baseline };
                        into.lock().unwrap().push(started.elapsed());
                        reply
                            .next_heartbeat_in
                            .map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
                            .unwrap_or(Duration::from_secs(1))
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        Duration::from_millis(100)
                    }
                };
                tokio::time::sleep(pause).await;
            }
        }));
    }

    tokio::time::sleep(BASELINE).await;
    attacking.store(true, Ordering::Relaxed);
    let sent = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let attack_started = Instant::now();
    let mut attackers = Vec::new();
    for a in 0..64 {
        let (sent, refused) = (sent.clone(), refused.clone());
        let channel = channels[a % channels.len()].clone();
        attackers.push(tokio::spawn(async move {
            let mut client = AgentClient::new(channel, &format!("mca_wrong-{a}")).unwrap();
            while sent.fetch_add(1, Ordering::Relaxed) < wrong {
                if client.heartbeat().await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for attacker in attackers {
        attacker.await.unwrap();
    }
    let attack = attack_started.elapsed();
    finished.store(true, Ordering::Relaxed);
    for task in valid {
        let _ = task.await;
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let mut baseline = std::mem::take(&mut *baseline.lock().unwrap());
    baseline.sort();
    let before = |p: f64| baseline[((baseline.len() as f64 * p) as usize).min(baseline.len() - 1)];
    let mut online = 0;
    let mut page_token = String::new();
    loop {
        let mut lifecycle = operator.lifecycle();
        let mut request = tonic::Request::new(mission_control_client::ListAgentsRequest {
            page_size: 1000,
            page_token: page_token.clone(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {operator_token}").parse().unwrap(),
        );
        let page = lifecycle.list_agents(request).await.unwrap().into_inner();
        online += page
            .agents
            .iter()
            .filter(|a| a.status == AgentStatus::Online as i32)
            .count();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    println!(
        "wrong-tokens: {wrong} wrong-token heartbeats in {:.1} s ({:.0}/s), {} refused; \
         {agents} valid agents: {} heartbeats, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} failed; \
         {online}/{agents} ONLINE after",
        attack.as_secs_f64(),
        wrong as f64 / attack.as_secs_f64(),
        refused.load(Ordering::Relaxed),
        latencies.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        failures.load(Ordering::Relaxed),
    );
    println!(
        "wrong-tokens: baseline (the same agents for {} s before the attack): {} heartbeats, \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; during / baseline: p50 {:.2}, p99 {:.2}",
        BASELINE.as_secs(),
        baseline.len(),
        before(0.50).as_secs_f64() * 1e3,
        before(0.99).as_secs_f64() * 1e3,
        baseline.last().unwrap().as_secs_f64() * 1e3,
        pct(0.50).as_secs_f64() / before(0.50).as_secs_f64(),
        pct(0.99).as_secs_f64() / before(0.99).as_secs_f64(),
    );
}

/// How long the valid agents heartbeat before the attack begins.
const BASELINE: Duration = Duration::from_secs(6);

fn fastrand_ms() -> u64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 1000) as u64
}
