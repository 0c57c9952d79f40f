//! # certs — the DevInProd PKI
//!
//! * [`ensure_pki`] creates (or completes) a PKI directory: `ca.pem ca.key relay.pem relay.key
//!   edge.pem edge.key dbproxy.pem dbproxy.key`, keys mode 0600, explicit validity. It is what
//!   `devinprod certs init` and `devinprod up` call.
//! * [`relay_server_config`] / [`peer_client_config`] turn PEM files into TLS 1.3 rustls configs
//!   (ring provider, ALPN set, no 0-RTT).
//! * [`server_endpoint`] / [`client_endpoint`] make quinn endpoints on UDP sockets with large
//!   buffers, from those configs.
//! * [`peer_role`] reads the role (`devinprod://role/edge`, …) from a peer certificate. rustls
//!   only verifies the chain; the relay calls this to check the role itself.

#![forbid(unsafe_code)]

mod endpoint;
pub mod liveness;
mod pki;
mod tls;

pub use endpoint::{
    client_endpoint, server_endpoint, unspecified_for, RelayAddress, UDP_BUFFER_BYTES,
};

pub use pki::{
    ensure_pki, load_or_create_secret, FileOutcome, Leaf, PkiPaths, CA_VALIDITY,
    DEFAULT_RELAY_NAMES, LEAF_VALIDITY,
};
pub use tls::{
    load_certs, load_key, load_roots, peer_client_config, peer_role, provider, relay_server_config,
    server_names, web_server_config, Identity,
};

use std::path::{Path, PathBuf};

/// Errors of this crate; each names the file it is about when there is one.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable PEM file: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{0}")]
    Inconsistent(String),
}

impl CertsError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        CertsError::Io {
            path: path.to_owned(),
            source,
        }
    }
    fn pem(path: &Path, detail: String) -> Self {
        CertsError::Pem {
            path: path.to_owned(),
            detail,
        }
    }
    fn generate(e: impl std::fmt::Display) -> Self {
        CertsError::Generate(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Role;

    #[test]
    fn init_writes_every_file_with_private_keys_0600_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_pki(dir.path(), &[]).unwrap();
        assert!(first.iter().all(|o| matches!(o, FileOutcome::Created(_))));
        for f in ["ca", "relay", "edge", "dbproxy"] {
            assert!(dir.path().join(format!("{f}.pem")).exists());
            let key = dir.path().join(format!("{f}.key"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{f}.key");
            }
        }
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        std::fs::remove_file(dir.path().join("edge.pem")).unwrap();
        let second = ensure_pki(dir.path(), &[]).unwrap();
        assert_eq!(
            second
                .iter()
                .filter(|o| matches!(o, FileOutcome::Created(_)))
                .count(),
            1
        );
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    }

    #[test]
    fn role_certs_carry_their_role_and_relay_names_become_sans() {
        let dir = tempfile::tempdir().unwrap();
        ensure_pki(dir.path(), &["relay.example.com".into(), "10.0.0.7".into()]).unwrap();
        let p = PkiPaths::new(dir.path());
        let edge = &load_certs(&p.cert(Leaf::Role(Role::Edge))).unwrap()[0];
        assert_eq!(peer_role(edge), Some(Role::Edge));
        let db = &load_certs(&p.cert(Leaf::Role(Role::DbProxy))).unwrap()[0];
        assert_eq!(peer_role(db), Some(Role::DbProxy));
        let relay = &load_certs(&p.cert(Leaf::Relay)).unwrap()[0];
        assert_eq!(peer_role(relay), None);
        let (_, parsed) = x509_parser::parse_x509_certificate(relay.as_ref()).unwrap();
        let sans = format!(
            "{:?}",
            parsed.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(sans.contains("DNSName(\"relay.example.com\")"), "{sans}");
        assert!(sans.contains("IPAddress([10, 0, 0, 7])"), "{sans}");
        let v = parsed.validity();
        let days = (v.not_after.timestamp() - v.not_before.timestamp()) / 86400;
        assert!((825..=826).contains(&days), "{days}");
    }

    #[test]
    fn a_leaf_without_its_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure_pki(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = ensure_pki(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("incomplete"), "{err}");
    }

    #[test]
    fn configs_build_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        ensure_pki(dir.path(), &[]).unwrap();
        let p = PkiPaths::new(dir.path());
        let server = relay_server_config(
            Identity::load(&p.cert(Leaf::Relay), &p.key(Leaf::Relay)).unwrap(),
            load_roots(&p.ca_cert()).unwrap(),
            proto::ALPN,
        )
        .unwrap();
        assert_eq!(server.alpn_protocols, vec![proto::ALPN.to_vec()]);
        let id = Identity::load(
            &p.cert(Leaf::Role(Role::Edge)),
            &p.key(Leaf::Role(Role::Edge)),
        )
        .unwrap();
        peer_client_config(load_roots(&p.ca_cert()).unwrap(), Some(id), proto::ALPN).unwrap();
        let err = load_certs(&p.key(Leaf::Relay)).unwrap_err().to_string();
        assert!(err.contains("relay.key"), "{err}");
    }
}
