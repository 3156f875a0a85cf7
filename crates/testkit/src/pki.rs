//! [`TestPki`]: a throw-away CA, a server certificate for `localhost` and `127.0.0.1`
//! and a client certificate, made with rcgen and written as PEM files to a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use telehub_broker::config::TlsConfig;

/// A CA and the certificates it issued, as files in a temp dir removed on drop.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A new CA (`ca.crt`), a server certificate for `localhost` and `127.0.0.1`
    /// (`server.crt`, `server.key`) and a client certificate for `device-1`
    /// (`client.crt`, `client.key`), all ECDSA P-256.
    ///
    /// # Panics
    ///
    /// When a key cannot be generated or a file written.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for test certificates");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, "telehub test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key).expect("self-signed CA");
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write ca.crt");
        let ca = ca.der().clone();
        let pki = Self { dir, issuer: Issuer::new(params, key), ca };
        pki.issue_server("telehub test server");
        pki.issue("client", "device-1", &[], ExtendedKeyUsagePurpose::ClientAuth);
        pki
    }

    /// Issues a new server certificate (and key) with `common_name`, replacing
    /// `server.crt` and `server.key` (each by a rename, key first). Returns it.
    pub fn issue_server(&self, common_name: &str) -> CertificateDer<'static> {
        self.issue("server", common_name, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn issue(
        &self,
        name: &str,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        replace(&self.dir.path().join(format!("{name}.key")), key.serialize_pem().as_bytes());
        replace(&self.dir.path().join(format!("{name}.crt")), cert.pem().as_bytes());
        cert.der().clone()
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca.crt`: the CA certificate (PEM).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `server.crt`: the server certificate (PEM).
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// `server.key`: the server's private key (PEM).
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// `client.crt`: the client certificate (PEM).
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// `client.key`: the client's private key (PEM).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// `[mqtt.tls]` with the server certificate and key, listening on `127.0.0.1:0`,
    /// without client certificates.
    pub fn tls_config(&self) -> TlsConfig {
        TlsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert: Some(self.server_cert_path()),
            key: Some(self.server_key_path()),
            client_ca: None,
            ..TlsConfig::default()
        }
    }

    /// A rustls client config that trusts this CA only and presents no certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config_as(None)
    }

    /// A rustls client config that trusts this CA only and presents `identity`'s client
    /// certificate (which may come from another CA) when it is given.
    ///
    /// # Panics
    ///
    /// When the files cannot be read.
    pub fn client_config_as(&self, identity: Option<&TestPki>) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("CA certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                let chain = vec![CertificateDer::from_pem_file(id.client_cert_path()).expect("client.crt")];
                let key = PrivateKeyDer::from_pem_file(id.client_key_path()).expect("client.key");
                builder.with_client_auth_cert(chain, key).expect("client certificate")
            }
        };
        Arc::new(config)
    }
}

/// Writes `path` by a rename, so a reader sees the old file or the new one, whole.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write certificate file");
    std::fs::rename(&tmp, path).expect("rename certificate file");
}
