//! TLS between replicas, with two real replica processes on one database:
//! a call to the follower is answered by the leader through it. Under
//! server-only TLS the follower trusts the leader through `--peer-ca`,
//! re-read when it changes; under mutual TLS the follower presents its own
//! certificate, and that certificate grants nothing to the calls it
//! forwards, even when the roles file (wrongly) gives it a role.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mission_control_proto::metadata::AUTHORIZATION;
use mission_control_proto::tls::{ClientTls, endpoint};
use mission_control_proto::v1::gateways_client::GatewaysClient;
use mission_control_proto::v1::{ListGatewaysRequest, RegisterGatewayRequest};
use mission_control_server::edge::hash_line;
use mission_control_server::testing::TestDatabase;
use mission_control_server::testing::certs::{CertKey, TestPki};
use tonic::transport::Channel;

use support::*;

const ADMIN_TOKEN: &str = "replica-test-admin-4e1d";

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Starts a replica on a free port with `flags`; the leader waits until it
/// holds the lease, so the one started first leads.
async fn replica(db: &TestDatabase, flags: &[&str], leads: bool) -> (Running, u16) {
    let port = free_port();
    let mut running = Running::spawn(
        Command::new(BINARY)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", db.url()])
            .args(["--leader-lease", "2s", "--tls-reload-interval", "100ms"])
            .args(flags),
    );
    let ready = if leads {
        "leader lease acquired"
    } else {
        "\"listening\""
    };
    assert!(running.wait_for(ready).await, "{}", running.text());
    (running, port)
}

/// A client of the replica on `port`, over TLS as `tls` says.
fn gateways(port: u16, tls: &ClientTls) -> GatewaysClient<Channel> {
    let channel = endpoint(&format!("https://localhost:{port}"), Some(tls))
        .unwrap()
        .connect_lazy();
    GatewaysClient::new(channel)
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn register(
    client: &mut GatewaysClient<Channel>,
    gateway: &str,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let request = RegisterGatewayRequest {
        gateway_id: gateway.into(),
        ..Default::default()
    };
    client
        .register_gateway(with_token(request, token))
        .await
        .map(drop)
}

/// The gateways `client` lists (asked with the admin token).
async fn listed(client: &mut GatewaysClient<Channel>) -> Vec<String> {
    let reply = client
        .list_gateways(with_token(
            ListGatewaysRequest::default(),
            Some(ADMIN_TOKEN),
        ))
        .await
        .unwrap()
        .into_inner();
    reply.gateways.into_iter().map(|g| g.id).collect()
}

/// Registers `gateway` through the follower until it works, bounded: the
/// follower learns the leader's address within its poll.
async fn register_eventually(client: &mut GatewaysClient<Channel>, gateway: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match register(client, gateway, Some(ADMIN_TOKEN)).await {
            Ok(()) => return,
            Err(status) => assert!(
                tokio::time::Instant::now() < deadline,
                "never registered through the follower: {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_pair(pki: &TestPki, stem: &str, pair: &CertKey) -> (String, String) {
    let (cert, key) = pki.write_pair(stem, pair);
    (path(&cert).to_owned(), path(&key).to_owned())
}

#[tokio::test]
async fn server_tls_with_a_private_ca_forwards_once_the_peer_ca_is_right() {
    let db = TestDatabase::create().await;
    let pki = TestPki::new("replicas ca");
    let ca = pki.write_ca();
    let names = ["localhost", "127.0.0.1"];
    let (leader_cert, leader_key) = write_pair(&pki, "leader", &pki.server("replica-1", &names));
    let (follower_cert, follower_key) =
        write_pair(&pki, "follower", &pki.server("replica-2", &names));
    // The follower's peer CA starts out wrong: another CA altogether.
    let stranger = TestPki::new("some other ca");
    let peer_ca = pki.write("peer-ca.pem", &stranger.ca_pem());
    let admin = TempFile::new(&format!("{ADMIN_TOKEN}\n"));
    let common = ["--operator-token-file", admin.path()];

    let (_leader, leader_port) = replica(
        &db,
        &[
            &common[..],
            &["--tls-cert", &leader_cert, "--tls-key", &leader_key],
        ]
        .concat(),
        true,
    )
    .await;
    let (follower, follower_port) = replica(
        &db,
        &[
            &common[..],
            &["--tls-cert", &follower_cert, "--tls-key", &follower_key],
            &["--peer-ca", path(&peer_ca)],
        ]
        .concat(),
        false,
    )
    .await;
    let tls = ClientTls::from_files(Some(&ca), None, None).unwrap();
    let mut to_leader = gateways(leader_port, &tls);
    let mut to_follower = gateways(follower_port, &tls);

    // Not trusting the leader's certificate, the follower cannot forward.
    let refused = register(&mut to_follower, "gw-1", Some(ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(!listed(&mut to_leader).await.contains(&"gw-1".to_owned()));

    // The right CA replaces the file: re-read without a restart, and the
    // call is answered by the leader through the follower.
    pki.write("peer-ca.pem", &pki.ca_pem());
    register_eventually(&mut to_follower, "gw-1").await;
    assert!(listed(&mut to_leader).await.contains(&"gw-1".to_owned()));
    assert!(
        follower
            .text()
            .contains("tls settings for calls to other replicas reloaded"),
        "{}",
        follower.text()
    );
    // Reads through the follower are the leader's too.
    assert!(listed(&mut to_follower).await.contains(&"gw-1".to_owned()));
}

#[tokio::test]
async fn under_mutual_tls_a_forwarded_call_carries_only_the_callers_credentials() {
    let db = TestDatabase::create().await;
    let pki = TestPki::new("replicas ca");
    let ca = pki.write_ca();
    let names = ["localhost", "127.0.0.1"];
    let (leader_cert, leader_key) = write_pair(&pki, "leader", &pki.replica("replica-1", &names));
    let (follower_cert, follower_key) =
        write_pair(&pki, "follower", &pki.replica("replica-2", &names));
    let (robot_cert, robot_key) = pki.write_pair("robot", &pki.client("robot"));
    let (nobody_cert, nobody_key) = pki.write_pair("nobody", &pki.client("nobody"));
    // The misconfiguration this guards against: both replicas' subjects
    // given the admin role.
    let roles = TempFile::new(&format!(
        "ops admin {}\nrobot viewer subject:CN=robot\n\
         replica-1 admin subject:CN=replica-1\nreplica-2 admin subject:CN=replica-2\n",
        hash_line(ADMIN_TOKEN)
    ));
    let mutual = ["--roles-file", roles.path(), "--tls-client-ca", path(&ca)];
    let (_leader, leader_port) = replica(
        &db,
        &[
            &mutual[..],
            &["--tls-cert", &leader_cert, "--tls-key", &leader_key],
        ]
        .concat(),
        true,
    )
    .await;
    let (_follower, follower_port) = replica(
        &db,
        &[
            &mutual[..],
            &["--tls-cert", &follower_cert, "--tls-key", &follower_key],
        ]
        .concat(),
        false,
    )
    .await;
    let as_client =
        |cert: &Path, key: &Path| ClientTls::from_files(Some(&ca), Some(cert), Some(key)).unwrap();
    let nobody = as_client(&nobody_cert, &nobody_key);
    let robot = as_client(&robot_cert, &robot_key);

    // With the caller's admin token, through the follower: the follower's
    // certificate got it to the leader, which answered.
    let mut nobody_to_follower = gateways(follower_port, &nobody);
    register_eventually(&mut nobody_to_follower, "gw-1").await;
    let mut nobody_to_leader = gateways(leader_port, &nobody);
    assert!(
        listed(&mut nobody_to_leader)
            .await
            .contains(&"gw-1".to_owned())
    );

    // Without a token, the follower's own (admin) subject grants nothing.
    let refused = register(&mut nobody_to_follower, "gw-2", None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("forwarded"),
        "says why: {refused:?}"
    );
    assert!(
        !listed(&mut nobody_to_leader)
            .await
            .contains(&"gw-2".to_owned())
    );

    // A caller's certificate role counts on the replica it connects to: the
    // robot may list gateways on the leader, not through the follower.
    let list = |client: &mut GatewaysClient<Channel>| {
        let mut client = client.clone();
        async move {
            client
                .list_gateways(ListGatewaysRequest::default())
                .await
                .map(drop)
        }
    };
    list(&mut gateways(leader_port, &robot)).await.unwrap();
    let through_follower = list(&mut gateways(follower_port, &robot))
        .await
        .unwrap_err();
    assert_eq!(through_follower.code(), tonic::Code::Unauthenticated);
    // The robot is a viewer: its certificate never made it an admin either.
    let denied = register(&mut gateways(leader_port, &robot), "gw-3", None)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}
