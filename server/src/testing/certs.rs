//! Certificates made at run time for tests: a CA, server and client
//! certificates it signs, written to a temporary directory that goes with
//! the value. No key is ever committed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A test certificate authority and a directory to write files into.
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        let dir = tempfile::Builder::new()
            .prefix("mc-pki-")
            .tempdir()
            .expect("a temporary directory");
        Self { ca, dir }
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Where files are written; removed when this value is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, common_name: &str, names: &[&str]) -> CertKey {
        self.issue(common_name, names, &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// A client certificate whose subject CN is `common_name`.
    pub fn client(&self, common_name: &str) -> CertKey {
        self.issue(common_name, &[], &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A replica's certificate under mutual TLS: it serves, and it is the
    /// client certificate the replica presents when it forwards a call.
    pub fn replica(&self, common_name: &str, names: &[&str]) -> CertKey {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        self.issue(common_name, names, &[ServerAuth, ClientAuth])
    }

    fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> CertKey {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = usages.to_vec();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("a signed certificate");
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `contents` to `name` in the directory (atomically: a rename,
    /// as a rotation would), and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir().join(name);
        let partial = self.dir().join(format!(".{name}.partial"));
        std::fs::write(&partial, contents).expect("write a test file");
        std::fs::rename(&partial, &path).expect("rename a test file");
        path
    }

    /// Writes the CA certificate as `ca.pem`.
    pub fn write_ca(&self) -> PathBuf {
        self.write("ca.pem", &self.ca_pem())
    }

    /// Writes `pair` as `<stem>.pem` and `<stem>.key`; returns (cert, key).
    pub fn write_pair(&self, stem: &str, pair: &CertKey) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{stem}.pem"), &pair.cert_pem),
            self.write(&format!("{stem}.key"), &pair.key_pem),
        )
    }
}
