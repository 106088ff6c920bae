//! Serving certificates: a rustls resolver over an [`ArcSwap`], a watcher that swaps in a new pair
//! when the files change, and a small CA for development and tests.
//!
//! Rotation never restarts the server and never fails a request: every TLS handshake takes the pair
//! current at that instant; a new pair that doesn't load (half-written, key not matching the
//! certificate) is logged and the old one stays in service until a good pair appears.

use crate::metrics::{Metrics, ReloadResult};
use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a certificate pair could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no PEM certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no usable PEM private key.
    #[error("{path}: no PEM private key found: {detail}")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// rustls refused the pair (unsupported key type, key not matching the certificate).
    #[error("certificate {cert} and key {key} don't form a usable pair: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// Generating a certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where the serving certificate and key live.
#[derive(Debug, Clone)]
pub struct PairPaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds a serving pair from PEM bytes, checking that the key belongs to the certificate.
pub fn certified_key(
    paths: &PairPaths,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: paths.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::NoKey {
        path: paths.key.clone(),
        detail: e.to_string(),
    })?;
    let pair = |source| CertError::Pair {
        cert: paths.cert.clone(),
        key: paths.key.clone(),
        source,
    };
    let signing = provider.key_provider.load_private_key(key).map_err(pair)?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(pair)?;
    Ok(ck)
}

/// Serves whatever pair is current; the watcher replaces it.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadingResolver {
    /// A resolver serving `initial`.
    pub fn new(initial: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// Serves `next` from the next handshake on; connections already open keep their session.
    pub fn replace(&self, next: CertifiedKey) {
        self.current.store(Arc::new(next));
    }

    /// The pair served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Loads the pair at start-up: a server without a certificate must not start.
pub fn load(paths: &PairPaths, provider: &CryptoProvider) -> Result<CertifiedKey, CertError> {
    let cert = read(&paths.cert)?;
    let key = read(&paths.key)?;
    certified_key(paths, &cert, &key, provider)
}

/// Polls the files every `interval` and swaps in a changed pair once it loads. Comparing contents
/// (not mtimes) catches Kubernetes' symlink-swapped Secret volumes and same-second rewrites alike.
pub async fn watch(
    resolver: Arc<ReloadingResolver>,
    paths: PairPaths,
    provider: Arc<CryptoProvider>,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut last = (read(&paths.cert).ok(), read(&paths.key).ok());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = (read(&paths.cert).ok(), read(&paths.key).ok());
        if now == last {
            continue;
        }
        match (&now.0, &now.1) {
            (Some(cert), Some(key)) => match certified_key(&paths, cert, key, &provider) {
                Ok(ck) => {
                    resolver.replace(ck);
                    metrics.cert_reload(ReloadResult::Success);
                    tracing::info!(cert = %paths.cert.display(), "serving certificate reloaded");
                }
                Err(e) => {
                    metrics.cert_reload(ReloadResult::Failure);
                    tracing::warn!(error = %e, "new certificate pair refused; still serving the previous one");
                }
            },
            _ => {
                metrics.cert_reload(ReloadResult::Failure);
                tracing::warn!(
                    cert = %paths.cert.display(),
                    key = %paths.key.display(),
                    "certificate or key unreadable; still serving the previous pair"
                );
            }
        }
        last = now;
    }
}

/// What `storm-webhook certs` writes.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The CA certificate (PEM): the `caBundle`.
    pub ca_pem: String,
    /// The serving certificate (PEM).
    pub cert_pem: String,
    /// The serving key (PEM, PKCS#8).
    pub key_pem: String,
}

const CA_COMMON_NAME: &str = "storm-webhook-ca";

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Storm Rollouts");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    params
}

/// A new CA (certificate and key, PEM).
pub fn new_ca() -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA certificates in a PEM file, as roots for verifying clients.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, CertError> {
    let pem = std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let usable = cert.ok().is_some_and(|c| roots.add(c).is_ok());
        if !usable {
            return Err(CertError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
    }
    if roots.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// How long a serving certificate issued by [`issue`] is valid.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Issues a serving certificate for `ips` and `dns_names`, valid for [`SERVING_VALIDITY`], signed
/// by the CA whose key is `ca_key_pem` (a CA made by [`new_ca`]: its name is fixed, so the issuer
/// can be rebuilt from the key alone).
pub fn issue(
    ca_key_pem: &str,
    ips: &[IpAddr],
    dns_names: &[String],
) -> Result<(String, String), CertError> {
    issue_for(ca_key_pem, ips, dns_names, SERVING_VALIDITY)
}

/// [`issue`] with another validity.
pub fn issue_for(
    ca_key_pem: &str,
    ips: &[IpAddr],
    dns_names: &[String],
    validity: Duration,
) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut sans: Vec<String> = ips.iter().map(ToString::to_string).collect();
    sans.extend(dns_names.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    let cn = dns_names
        .first()
        .cloned()
        .or_else(|| ips.first().map(ToString::to_string))
        .unwrap_or_else(|| "storm-webhook".into());
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + validity).into();
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key` into `dir`. An existing CA in `dir` is reused
/// (unless `new_ca`), so a re-issued serving pair stays valid for the `caBundle` already registered.
/// Each file is written to a temporary name and renamed, so a watcher never reads half a file.
pub fn write_pair(
    dir: &Path,
    ips: &[IpAddr],
    dns_names: &[String],
    force_new_ca: bool,
) -> Result<Issued, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let existing = if force_new_ca {
        None
    } else {
        match (
            std::fs::read_to_string(&ca_crt),
            std::fs::read_to_string(&ca_key),
        ) {
            (Ok(c), Ok(k)) => Some((c, k)),
            _ => None,
        }
    };
    let (ca_pem, ca_key_pem) = match existing {
        Some(pair) => pair,
        None => {
            let (c, k) = new_ca()?;
            write_file(&ca_key, k.as_bytes(), true)?;
            write_file(&ca_crt, c.as_bytes(), false)?;
            (c, k)
        }
    };
    let (cert_pem, key_pem) = issue(&ca_key_pem, ips, dns_names)?;
    // Key first: a watcher that sees the new key with the old certificate refuses the mismatch and
    // picks up the pair on its next poll.
    write_file(&dir.join("tls.key"), key_pem.as_bytes(), true)?;
    write_file(&dir.join("tls.crt"), cert_pem.as_bytes(), false)?;
    Ok(Issued {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn issues_a_pair_that_loads_and_reuses_the_ca() {
        let dir = std::env::temp_dir().join(format!("storm-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ips = ["127.0.0.1".parse().unwrap()];
        let dns = vec!["storm-webhook.storm-system.svc".to_string()];
        let first = write_pair(&dir, &ips, &dns, false).unwrap();
        let paths = PairPaths {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        load(&paths, &provider()).unwrap();
        let second = write_pair(&dir, &ips, &dns, false).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem, "CA reused");
        assert_ne!(first.cert_pem, second.cert_pem, "serving pair re-issued");
        load(&paths, &provider()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_a_key_that_does_not_match() {
        let (ca, ca_key) = new_ca().unwrap();
        let ips = ["127.0.0.1".parse().unwrap()];
        let (cert, _) = issue(&ca_key, &ips, &[]).unwrap();
        let (_, other_key) = issue(&ca_key, &ips, &[]).unwrap();
        let paths = PairPaths {
            cert: "tls.crt".into(),
            key: "tls.key".into(),
        };
        let err =
            certified_key(&paths, cert.as_bytes(), other_key.as_bytes(), &provider()).unwrap_err();
        assert!(matches!(err, CertError::Pair { .. }), "{err}");
        let err = certified_key(&paths, b"garbage", other_key.as_bytes(), &provider()).unwrap_err();
        assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");
        let err = certified_key(&paths, ca.as_bytes(), b"", &provider()).unwrap_err();
        assert!(matches!(err, CertError::NoKey { .. }), "{err}");
    }
}
