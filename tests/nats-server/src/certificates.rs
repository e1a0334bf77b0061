//! Throwaway certificates for tests: a CA of one test, and the server and client certificates it signs, as PEM.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority made for one test; nothing outside the test trusts it.
///
/// ```no_run
/// # use execmesh_nats_server::certificates::TestCa;
/// # let dir = std::path::Path::new("/tmp");
/// let ca = TestCa::new("execmesh test CA");
/// let server = ca.server(&["127.0.0.1", "localhost"]).write(dir, "server");
/// let ca_file = ca.write(dir, "ca");
/// ```
pub struct TestCa {
    /// The CA's self-signed certificate.
    cert: rcgen::Certificate,
    /// Signs what the CA issues.
    key: KeyPair,
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate, PEM.
    pub cert: String,
    /// Its private key, PEM (PKCS#8).
    pub key: String,
}

/// Where [`Issued::write`] put a certificate and its key.
#[derive(Debug, Clone)]
pub struct PemFiles {
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
}

// === impl TestCa ===

impl TestCa {
    /// A new CA named `name` (its common name).
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the test CA");
        Self { cert, key }
    }

    /// The CA certificate (PEM), for clients and servers to trust.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `<dir>/<stem>.pem` and returns the path.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, self.pem())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A server certificate for `names` (IP addresses or DNS names).
    pub fn server(&self, names: &[&str]) -> Issued {
        self.issue(
            names,
            "execmesh test server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with the common name `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(&[], name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], common_name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid certificate names");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate a key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign a test certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

// === impl Issued ===

impl Issued {
    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem`.
    pub fn write(&self, dir: &Path, stem: &str) -> PemFiles {
        let files = PemFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        for (path, text) in [(&files.cert, &self.cert), (&files.key, &self.key)] {
            std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        files
    }
}
