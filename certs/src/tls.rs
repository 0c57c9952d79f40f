//! Loading PEM files into rustls configurations for the relay (server) and its peers (clients),
//! and reading the role out of a peer's certificate.

use crate::CertsError;
use proto::Role;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// The crypto provider of the whole tree (ring), named once so that no code path relies on a
/// process-wide default.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| CertsError::pem(path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertsError::pem(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(CertsError::pem(path, "no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| CertsError::pem(path, e.to_string()))
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, CertsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| CertsError::pem(path, e.to_string()))?;
    }
    Ok(roots)
}

/// A certificate chain and its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, CertsError> {
        Ok(Self {
            chain: load_certs(cert)?,
            key: load_key(key)?,
        })
    }
}

/// TLS 1.3 server config for the relay. A client certificate is *optional* at the TLS layer
/// (developers authenticate with a token) but, when present, must chain to `client_roots`;
/// the relay then checks the role in it with [`peer_role`].
pub fn relay_server_config(
    identity: Identity,
    client_roots: RootCertStore,
    alpn: &[u8],
) -> Result<ServerConfig, CertsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| CertsError::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertsError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| CertsError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// A web server's TLS config (the edge's HTTPS): TLS 1.2 and 1.3, no client certificates,
/// the given ALPN protocols in order of preference.
pub fn web_server_config(identity: Identity, alpn: &[&[u8]]) -> Result<ServerConfig, CertsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertsError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| CertsError::Tls(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// TLS 1.3 client config for a peer of the relay, with an optional client certificate (edge,
/// dbproxy, or a developer when the operator requires one).
pub fn peer_client_config(
    roots: RootCertStore,
    identity: Option<Identity>,
    alpn: &[u8],
) -> Result<ClientConfig, CertsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertsError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| CertsError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// The role named by the URI SANs of an (already chain-verified) end-entity certificate.
/// `None` if it names no role, or more than one.
pub fn peer_role(cert: &CertificateDer<'_>) -> Option<Role> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut roles = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Role::from_uri(uri),
        _ => None,
    });
    let role = roles.next()?;
    roles.next().is_none().then_some(role)
}

/// The names a certificate is valid for (its DNS and IP address SANs), in order. `up` uses one
/// of them to reach its own relay over loopback, whatever names the operator gave it.
pub fn server_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some((*name).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
