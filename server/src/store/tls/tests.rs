//! `sslmode` against a throwaway cluster serving TLS with a certificate
//! made at run time for `localhost` only.

use super::*;
use crate::store::{PoolSettings, PostgresStore};
use crate::testing::PostgresCluster;
use crate::testing::certs::TestPki;

#[test]
fn tls_parameters_leave_the_url_and_pick_the_mode() {
    let (rest, mode, root) = take_tls_params(
        "postgres://u@h:5/db?sslmode=verify-full&application_name=a&sslrootcert=/ca.pem",
    );
    assert_eq!(rest, "postgres://u@h:5/db?application_name=a");
    assert_eq!(mode.as_deref(), Some("verify-full"));
    assert_eq!(root.as_deref(), Some("/ca.pem"));
    let (rest, mode, _) = take_tls_params("host=h dbname=db sslmode=disable");
    assert_eq!(
        (rest.as_str(), mode.as_deref()),
        ("host=h dbname=db", Some("disable"))
    );

    let mode = |url: &str| Database::parse(url).map(|d| d.config.get_ssl_mode());
    assert_eq!(mode("postgres://u@h/db").unwrap(), SslMode::Prefer);
    assert_eq!(
        mode("postgres://u@h/db?sslmode=disable").unwrap(),
        SslMode::Disable
    );
    assert_eq!(
        mode("postgres://u@h/db?sslmode=require").unwrap(),
        SslMode::Require
    );
    assert!(
        mode("postgres://u@h/db?sslmode=sometimes")
            .unwrap_err()
            .contains("sometimes")
    );
    assert!(
        mode("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .unwrap_err()
            .contains("/nonexistent/ca.pem")
    );
}

/// The cluster (on this module's ports), its CA written to a file.
struct TlsCluster {
    cluster: PostgresCluster,
    pki: TestPki,
    ca: String,
}

fn tls_cluster() -> TlsCluster {
    let cluster = PostgresCluster::start_in(57400, 57499);
    let pki = TestPki::new("postgres test ca");
    let server = pki.server("postgres", &["localhost"]);
    cluster.enable_ssl(&server.cert_pem, &server.key_pem);
    let ca = pki.write_ca().to_str().unwrap().to_owned();
    TlsCluster { cluster, pki, ca }
}

impl TlsCluster {
    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?{params}",
            self.cluster.port()
        )
    }
}

/// Connects as the store does and says whether the session is encrypted.
async fn encrypted(url: &str) -> Result<bool, String> {
    let database = Database::parse(url)?;
    let (client, connection) = database
        .config
        .connect(database.tls.clone())
        .await
        .map_err(|e| format!("{e:?}"))?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn every_sslmode_is_honoured_against_a_server_with_tls() {
    let db = tls_cluster();
    let root = format!("sslrootcert={}", db.ca);

    assert!(
        !encrypted(&db.url("localhost", "sslmode=disable"))
            .await
            .unwrap()
    );
    assert!(
        encrypted(&db.url("localhost", "sslmode=prefer"))
            .await
            .unwrap()
    );
    assert!(
        encrypted(&db.url("127.0.0.1", "sslmode=require"))
            .await
            .unwrap()
    );
    assert!(
        encrypted(&db.url("localhost", &format!("sslmode=verify-full&{root}")))
            .await
            .unwrap()
    );
    // verify-ca checks the chain only: an address the certificate does not
    // name is fine...
    assert!(
        encrypted(&db.url("127.0.0.1", &format!("sslmode=verify-ca&{root}")))
            .await
            .unwrap()
    );
    // ...verify-full is not.
    let mismatch = encrypted(&db.url("127.0.0.1", &format!("sslmode=verify-full&{root}")))
        .await
        .unwrap_err();
    assert!(mismatch.contains("NotValidForName"), "{mismatch}");
    // A CA that did not sign the server's certificate fails both.
    let other = TestPki::new("another ca");
    let other_ca = other.write_ca();
    let wrong = format!("sslmode=verify-ca&sslrootcert={}", other_ca.display());
    let refused = encrypted(&db.url("localhost", &wrong)).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    // require with a root verifies the chain, as libpq does.
    let wrong = format!("sslmode=require&sslrootcert={}", other_ca.display());
    assert!(encrypted(&db.url("localhost", &wrong)).await.is_err());
    drop(db.pki);
}

#[tokio::test]
async fn the_store_runs_over_verify_full_tls() {
    let db = tls_cluster();
    let url = db.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", db.ca),
    );
    // Pool, migrations, lease connection and LISTEN connection all open
    // through the same connector.
    let store = PostgresStore::connect(&url, &PoolSettings::default())
        .await
        .expect("the store connects over verify-full");
    use crate::store::Store;
    store.ping().await.expect("a round trip over TLS");
    let sessions = encrypted(&url).await.unwrap();
    assert!(sessions);
    let mismatch = db.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", db.ca),
    );
    assert!(
        PostgresStore::connect(&mismatch, &PoolSettings::default())
            .await
            .is_err()
    );
    store.close().await;
}
