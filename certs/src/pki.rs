//! Creating the operator's PKI on disk: a CA, the relay's server certificate and one client
//! certificate per infrastructure role. Idempotent: existing files are kept, missing ones are
//! created (leaves are signed by the CA already on disk).

use crate::CertsError;
use proto::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Validity of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of the relay and role certificates.
pub const LEAF_VALIDITY: Duration = Duration::days(825);
/// Back-dating of `not_before`, to tolerate clock skew between machines.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// Names put in the relay's certificate when none are given.
pub const DEFAULT_RELAY_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// The files of a PKI directory, as `certs init` writes them.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub dir: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, leaf: Leaf) -> PathBuf {
        self.dir.join(format!("{}.pem", leaf.file_stem()))
    }
    pub fn key(&self, leaf: Leaf) -> PathBuf {
        self.dir.join(format!("{}.key", leaf.file_stem()))
    }
}

/// A certificate signed by the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// The relay's TLS server certificate.
    Relay,
    /// A client certificate for an infrastructure role.
    Role(Role),
}

impl Leaf {
    pub const ALL: [Leaf; 3] = [
        Leaf::Relay,
        Leaf::Role(Role::Edge),
        Leaf::Role(Role::DbProxy),
    ];

    fn file_stem(self) -> &'static str {
        match self {
            Leaf::Relay => "relay",
            Leaf::Role(Role::Edge) => "edge",
            Leaf::Role(Role::DbProxy) => "dbproxy",
            Leaf::Role(Role::Developer) => "developer",
        }
    }
}

/// What [`ensure_pki`] did with each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    Created(PathBuf),
    Kept(PathBuf),
}

/// Creates whatever is missing of the PKI in `dir`: `ca.pem ca.key relay.pem relay.key
/// edge.pem edge.key dbproxy.pem dbproxy.key`. Keys are written with mode 0600.
///
/// Existing files are never overwritten. A leaf without its CA on disk is an error (it was
/// signed by a CA that is gone, so nothing new could chain with it).
pub fn ensure_pki(dir: &Path, relay_names: &[String]) -> Result<Vec<FileOutcome>, CertsError> {
    fs::create_dir_all(dir).map_err(|e| CertsError::io(dir, e))?;
    let paths = PkiPaths::new(dir);
    let mut outcomes = Vec::new();
    let now = OffsetDateTime::now_utc();

    let ca_present = paths.ca_cert().exists() && paths.ca_key().exists();
    let issuer = if ca_present {
        let pem = read(&paths.ca_cert())?;
        let key = KeyPair::from_pem(&read(&paths.ca_key())?)
            .map_err(|e| CertsError::pem(&paths.ca_key(), e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key)
            .map_err(|e| CertsError::pem(&paths.ca_cert(), e.to_string()))?;
        outcomes.push(FileOutcome::Kept(paths.ca_cert()));
        issuer
    } else {
        if let Some(orphan) = [paths.ca_cert(), paths.ca_key()]
            .into_iter()
            .chain(Leaf::ALL.iter().map(|l| paths.cert(*l)))
            .find(|p| p.exists())
        {
            return Err(CertsError::Inconsistent(format!(
                "{} exists but the CA ({} and {}) is incomplete; restore the CA or remove the \
                 stale files before creating a new one",
                orphan.display(),
                paths.ca_cert().display(),
                paths.ca_key().display()
            )));
        }
        let key = KeyPair::generate().map_err(CertsError::generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("DevInProd CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(CertsError::generate)?;
        write_file(&paths.ca_key(), &key.serialize_pem(), true)?;
        write_file(&paths.ca_cert(), &cert.pem(), false)?;
        outcomes.push(FileOutcome::Created(paths.ca_cert()));
        Issuer::new(params, key)
    };

    for leaf in Leaf::ALL {
        let (cert_path, key_path) = (paths.cert(leaf), paths.key(leaf));
        if cert_path.exists() && key_path.exists() {
            outcomes.push(FileOutcome::Kept(cert_path));
            continue;
        }
        if cert_path.exists() {
            return Err(CertsError::Inconsistent(format!(
                "{} exists but its key {} does not; remove the certificate to have a new pair made",
                cert_path.display(),
                key_path.display()
            )));
        }
        // A key without its certificate gets a new certificate for the same key.
        let key = if key_path.exists() {
            KeyPair::from_pem(&read(&key_path)?)
                .map_err(|e| CertsError::pem(&key_path, e.to_string()))?
        } else {
            let key = KeyPair::generate().map_err(CertsError::generate)?;
            write_file(&key_path, &key.serialize_pem(), true)?;
            key
        };
        let params = leaf_params(leaf, relay_names, now)?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(CertsError::generate)?;
        write_file(&cert_path, &cert.pem(), false)?;
        outcomes.push(FileOutcome::Created(cert_path));
    }
    Ok(outcomes)
}

fn leaf_params(
    leaf: Leaf,
    relay_names: &[String],
    now: OffsetDateTime,
) -> Result<CertificateParams, CertsError> {
    let mut params = CertificateParams::default();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + LEAF_VALIDITY;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    match leaf {
        Leaf::Relay => {
            params.distinguished_name = name("DevInProd relay");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let names: Vec<String> = if relay_names.is_empty() {
                DEFAULT_RELAY_NAMES.iter().map(|s| s.to_string()).collect()
            } else {
                relay_names.to_vec()
            };
            for n in names {
                params.subject_alt_names.push(match n.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.clone().try_into().map_err(|_| {
                        CertsError::Inconsistent(format!("{n:?} is not a valid DNS name"))
                    })?),
                });
            }
        }
        Leaf::Role(role) => {
            params.distinguished_name = name(&format!("DevInProd {role}"));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.subject_alt_names.push(SanType::URI(
                role.uri().try_into().map_err(CertsError::generate)?,
            ));
        }
    }
    Ok(params)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn read(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|e| CertsError::io(path, e))
}

/// Writes a new file; private keys get mode 0600 from the moment they exist.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertsError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| CertsError::io(path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| CertsError::io(path, e))
}

/// Reads the secret in `path`, or creates it with `len` random bytes (mode 0600).
pub fn load_or_create_secret(path: &Path, len: usize) -> Result<Vec<u8>, CertsError> {
    match fs::read(path) {
        Ok(bytes) if bytes.len() == len => return Ok(bytes),
        Ok(bytes) => {
            return Err(CertsError::Inconsistent(format!(
                "{} holds {} bytes, expected {len}; remove it to have a new one made",
                path.display(),
                bytes.len()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CertsError::io(path, e)),
    }
    let mut secret = vec![0u8; len];
    getrandom::fill(&mut secret).map_err(CertsError::generate)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| CertsError::io(dir, e))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| CertsError::io(path, e))?;
    f.write_all(&secret).map_err(|e| CertsError::io(path, e))?;
    Ok(secret)
}
