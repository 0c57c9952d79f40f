//! HTTPS on a test edge: a wildcard certificate for `*.example.com` from its own CA (as an
//! operator would have for the public names), and TLS connections that trust it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The web PKI of the public names, in a temporary directory.
pub struct WebCert {
    dir: tempfile::TempDir,
}

impl WebCert {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        certs::ensure_pki(dir.path(), &["*.example.com".into()]).expect("web PKI");
        Self { dir }
    }

    /// The CA that signed the certificate (for `curl --cacert`).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Makes `config` an HTTPS edge with the wildcard certificate.
    pub fn serve_with(&self, config: &mut edge::EdgeConfig) {
        config.tls_cert = Some(self.dir.path().join("relay.pem"));
        config.tls_key = Some(self.dir.path().join("relay.key"));
    }

    /// A TLS client configuration trusting the CA and offering `alpn`.
    pub fn client_config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let roots = certs::load_roots(&self.ca()).expect("web CA");
        Arc::new(certs::peer_client_config(roots, None, alpn).expect("TLS client config"))
    }

    /// A TLS connection to `addr` for server name `host`, offering `alpn`.
    pub async fn connect(&self, addr: SocketAddr, host: &str, alpn: &[u8]) -> TlsStream<TcpStream> {
        connect(self.client_config(alpn), addr, host).await
    }
}

impl Default for WebCert {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS connection to `addr` for server name `host`, within [`crate::WAIT`].
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    host: &str,
) -> TlsStream<TcpStream> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).expect("server name");
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(crate::WAIT, handshake)
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}
