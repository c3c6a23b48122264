//! The mesh's certificates: the CA (generated once and kept in the state folder, or brought by
//! the user as PEM files), workload certificates per SPIFFE ID renewed on wall-clock deadlines,
//! bootstrap credentials that let a sidecar authenticate to the controller, and the
//! controller's own server certificate. Every operation takes `now` from the caller, so tests
//! can move the clock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use weft_certs::{CertError, CertifiedKey, MeshCa, RotationPolicy, Validity};

/// Why the PKI could not be opened or a certificate made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate could not be made or read.
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: String,
        /// Why.
        source: CertError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The CA's lifetime when weft generates it.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The lifetime of a bootstrap credential: it only authenticates the xDS connection, and a
/// sidecar gets a new one each time it is started.
pub const BOOTSTRAP_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// A workload certificate and when to renew it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate and key, PEM.
    pub pem: CertifiedKey,
    /// Its validity.
    pub validity: Validity,
    /// When it is to be renewed (wall clock).
    pub renew_at: OffsetDateTime,
}

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// `ca.pem` and `ca-key.pem` in the state folder, generated on first start.
    State,
    /// The user's certificate and key files.
    Files {
        /// CA certificate, PEM.
        cert: PathBuf,
        /// Its key, PEM.
        key: PathBuf,
    },
}

/// The mesh CA and the certificates it issued.
#[derive(Debug)]
pub struct Pki {
    ca: MeshCa,
    policy: RotationPolicy,
    issued: HashMap<String, Issued>,
}

impl Pki {
    /// Opens the CA for `trust_domain` as `source` says, generating (and keeping, key
    /// readable by the owner only) a new one in `state` if there is none.
    ///
    /// # Errors
    /// When the files cannot be read or written, or do not hold a CA.
    pub fn open(
        state: &Path,
        source: &CaSource,
        trust_domain: &str,
        policy: RotationPolicy,
    ) -> Result<Self, PkiError> {
        let (cert_path, key_path) = match source {
            CaSource::Files { cert, key } => (cert.clone(), key.clone()),
            CaSource::State => (
                state.join(weft_certs::CA_CERT_FILE),
                state.join(weft_certs::CA_KEY_FILE),
            ),
        };
        let ca = if cert_path.exists() || matches!(source, CaSource::Files { .. }) {
            let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            MeshCa::from_pem(&cert, &key, trust_domain).map_err(|source| PkiError::Cert {
                what: format!("reading the CA from {}", cert_path.display()),
                source,
            })?
        } else {
            let ca = MeshCa::generate(trust_domain, Validity::starting_now(CA_LIFETIME)).map_err(
                |source| PkiError::Cert {
                    what: "generating the mesh CA".to_owned(),
                    source,
                },
            )?;
            std::fs::create_dir_all(state).map_err(io(state))?;
            write_private(&key_path, &ca.pem().key_pem)?;
            std::fs::write(&cert_path, &ca.pem().cert_pem).map_err(io(&cert_path))?;
            ca
        };
        Ok(Self {
            ca,
            policy,
            issued: HashMap::new(),
        })
    }

    /// The trust bundle every proxy gets: the CA certificate.
    pub fn bundle_pem(&self) -> &str {
        &self.ca.pem().cert_pem
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    /// The controller's SPIFFE ID, which sidecars check on its certificate.
    pub fn controller_identity(&self) -> String {
        controller_identity(self.trust_domain())
    }

    fn issue(
        &self,
        spiffe_id: &str,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<(CertifiedKey, Validity), PkiError> {
        self.issue_with_dns(spiffe_id, &[], lifetime, now)
    }

    fn issue_with_dns(
        &self,
        spiffe_id: &str,
        dns_names: &[String],
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<(CertifiedKey, Validity), PkiError> {
        let validity = Validity {
            // A little in the past, so a peer's slightly slow clock accepts it.
            not_before: now - Duration::from_secs(5 * 60),
            not_after: now + lifetime,
        };
        let pem = self
            .ca
            .issue_for(spiffe_id, dns_names, validity)
            .map_err(|source| PkiError::Cert {
                what: format!("issuing a certificate for {spiffe_id}"),
                source,
            })?;
        Ok((pem, validity))
    }

    /// The current workload certificate of `spiffe_id`, issued now if it has none or its
    /// renewal deadline has passed at `now`. Returns whether a new one was issued.
    ///
    /// # Errors
    /// When a certificate cannot be made.
    pub fn workload(
        &mut self,
        spiffe_id: &str,
        now: OffsetDateTime,
    ) -> Result<(Issued, bool), PkiError> {
        if let Some(issued) = self.issued.get(spiffe_id)
            && now < issued.renew_at
        {
            return Ok((issued.clone(), false));
        }
        let (pem, validity) = self.issue(spiffe_id, self.policy.lifetime, now)?;
        let issued = Issued {
            pem,
            validity,
            renew_at: self.policy.renewal(validity, fastrand::f64()),
        };
        self.issued.insert(spiffe_id.to_owned(), issued.clone());
        Ok((issued, true))
    }

    /// The earliest renewal deadline of the certificates issued.
    pub fn next_renewal(&self) -> Option<OffsetDateTime> {
        self.issued.values().map(|issued| issued.renew_at).min()
    }

    /// The expiry of the current certificate of `spiffe_id`.
    pub fn expiry(&self, spiffe_id: &str) -> Option<OffsetDateTime> {
        self.issued.get(spiffe_id).map(|i| i.validity.not_after)
    }

    /// A bootstrap credential for a sidecar of `spiffe_id`.
    ///
    /// # Errors
    /// When it cannot be made.
    pub fn bootstrap_credential(
        &self,
        spiffe_id: &str,
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        Ok(self.issue(spiffe_id, BOOTSTRAP_LIFETIME, now)?.0)
    }

    /// The controller's server certificate: its SPIFFE ID (which sidecars check) and the
    /// DNS name `localhost` (for gRPC clients that verify a host name).
    ///
    /// # Errors
    /// When it cannot be made.
    pub fn server_credential(&self, now: OffsetDateTime) -> Result<CertifiedKey, PkiError> {
        let dns = ["localhost".to_owned()];
        Ok(self
            .issue_with_dns(&self.controller_identity(), &dns, BOOTSTRAP_LIFETIME, now)?
            .0)
    }
}

/// The SPIFFE ID of the controller of `trust_domain`, which its sidecars check on its
/// certificate.
pub fn controller_identity(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/weft/controller")
}

/// Writes `text` to `path`, readable by its owner only.
///
/// # Errors
/// When it cannot be written.
pub fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

    fn pki(dir: &Path) -> Pki {
        let policy = RotationPolicy {
            lifetime: Duration::from_secs(1000),
            renew_at: 0.5,
            jitter: 0.1,
        };
        Pki::open(dir, &CaSource::State, "cluster.local", policy).unwrap()
    }

    #[test]
    fn the_generated_ca_is_kept_and_read_back_on_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = pki(dir.path());
        let again = pki(dir.path());
        assert_eq!(first.bundle_pem(), again.bundle_pem());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(weft_certs::CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_certificate_is_renewed_when_the_wall_clock_passes_its_deadline_even_by_a_jump() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = pki(dir.path());
        let now = OffsetDateTime::now_utc();
        let (first, new) = pki.workload(API, now).unwrap();
        assert!(new);
        // Deadline between 40% and 50% of the lifetime (1000 s) after issue.
        assert!(
            first.renew_at >= now + Duration::from_secs(400),
            "{:?}",
            first.renew_at
        );
        assert!(
            first.renew_at <= now + Duration::from_secs(500),
            "{:?}",
            first.renew_at
        );
        let (same, new) = pki.workload(API, now + Duration::from_secs(10)).unwrap();
        assert!(!new);
        assert_eq!(same.pem.cert_pem, first.pem.cert_pem);
        // The clock jumps past the deadline (a suspended machine, an NTP step): renewed at once.
        let jumped = first.renew_at + Duration::from_secs(1);
        let (renewed, new) = pki.workload(API, jumped).unwrap();
        assert!(new);
        assert_ne!(renewed.pem.cert_pem, first.pem.cert_pem);
        assert!(renewed.validity.not_after > first.validity.not_after);
        assert_eq!(pki.next_renewal(), Some(renewed.renew_at));
    }

    #[test]
    fn a_users_ca_that_cannot_be_read_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = CaSource::Files {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("missing-key.pem"),
        };
        let err = Pki::open(
            dir.path(),
            &source,
            "cluster.local",
            RotationPolicy::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
