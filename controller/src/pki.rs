//! The mesh's certificates: the CA (generated once and kept in the state folder, or brought by
//! the user as PEM files), workload certificates per SPIFFE ID renewed on wall-clock deadlines,
//! bootstrap credentials that let a sidecar authenticate to the controller, and the
//! controller's own server certificate. Every operation takes `now` from the caller, so tests
//! can move the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use weft_certs::{CertError, CertifiedKey, MeshCa, RotationPolicy, Validity};

use crate::trust::{self, Held, Phase, RootId};

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
    /// A file the operator gave could not be read as it must be (a regular file of PEM text).
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::files::FileError,
    },
    /// A certificate could not be made or read.
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: String,
        /// Why.
        source: CertError,
    },
    /// The CA that is to issue is not among the roots that are to be trusted.
    #[error(
        "{bundle} does not hold the root of the CA {ca}; add the CA's certificate to the bundle (proxies must trust a CA before it issues)"
    )]
    NotTrusted {
        /// The CA certificate.
        ca: PathBuf,
        /// The bundle.
        bundle: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The largest CA certificate, key or trust bundle read: a bundle of a few hundred roots is
/// well under it.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The PEM text of `path`, a regular file of at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<String, PkiError> {
    crate::files::read_text(path, MAX_PEM_BYTES).map_err(|source| PkiError::File {
        path: path.to_owned(),
        source,
    })
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
    /// The root that signed it.
    pub root: RootId,
}

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// `ca.pem` and `ca-key.pem` in the state folder, generated on first start, and
    /// `trust-bundle.pem` there if the operator puts one.
    State,
    /// The user's certificate and key files, and optionally a trust bundle.
    Files {
        /// CA certificate, PEM.
        cert: PathBuf,
        /// Its key, PEM.
        key: PathBuf,
        /// The roots every proxy is to trust, PEM; without it, the CA certificate alone.
        bundle: Option<PathBuf>,
    },
}

/// The files the operator's wishes are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The CA that is to issue.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The roots that are to be trusted, when there is such a file; otherwise the CA's own.
    pub bundle: Option<PathBuf>,
}

impl CaSource {
    /// The files it reads, for a controller whose state folder is `state`.
    pub fn files(&self, state: &Path) -> CaFiles {
        match self {
            Self::State => CaFiles {
                cert: state.join(weft_certs::CA_CERT_FILE),
                key: state.join(weft_certs::CA_KEY_FILE),
                bundle: Some(state.join(weft_certs::TRUST_BUNDLE_FILE)),
            },
            Self::Files { cert, key, bundle } => CaFiles {
                cert: cert.clone(),
                key: key.clone(),
                bundle: bundle.clone(),
            },
        }
    }
}

/// The folder, in the state folder, where the CA and trust bundle in force are kept, so that a
/// controller restarted in the middle of a rotation goes on from where it was.
const IN_FORCE_DIR: &str = "in-force";

/// A CA and the trust bundle that go together.
struct Authority {
    ca: MeshCa,
    root: RootId,
    roots: BTreeMap<RootId, String>,
}

impl Authority {
    /// Reads a CA from `cert` and `key`, and the roots from `bundle` if there is such a file
    /// (else the CA's certificate); the CA's root must be among them.
    fn read(
        cert: &Path,
        key: &Path,
        bundle: Option<&Path>,
        trust_domain: &str,
    ) -> Result<Self, PkiError> {
        let cert_pem = read_pem(cert)?;
        let key_pem = read_pem(key)?;
        let ca = MeshCa::from_pem(&cert_pem, &key_pem, trust_domain).map_err(|source| {
            PkiError::Cert {
                what: format!("reading the CA from {}", cert.display()),
                source,
            }
        })?;
        let der =
            weft_certs::first_certificate_der(&cert_pem).map_err(|source| PkiError::Cert {
                what: format!("reading the CA from {}", cert.display()),
                source,
            })?;
        let root = RootId::of(&der);
        let (bundle_pem, from) = match bundle.filter(|bundle| bundle.exists()) {
            Some(bundle) => (read_pem(bundle)?, bundle),
            None => (cert_pem, cert),
        };
        let roots: BTreeMap<RootId, String> = weft_certs::certificates(&bundle_pem)
            .map_err(|source| PkiError::Cert {
                what: format!("reading the trust bundle {}", from.display()),
                source,
            })?
            .into_iter()
            .map(|(der, pem)| (RootId::of(&der), pem))
            .collect();
        if !roots.contains_key(&root) {
            return Err(PkiError::NotTrusted {
                ca: cert.to_owned(),
                bundle: from.to_owned(),
            });
        }
        Ok(Self { ca, root, roots })
    }
}

impl Authority {
    fn try_clone(&self) -> Result<Self, PkiError> {
        Ok(Self {
            ca: copy(&self.ca)?,
            root: self.root.clone(),
            roots: self.roots.clone(),
        })
    }
}

/// Another handle on `ca`.
fn copy(ca: &MeshCa) -> Result<MeshCa, PkiError> {
    ca.try_clone().map_err(|source| PkiError::Cert {
        what: "reading back the CA".to_owned(),
        source,
    })
}

/// The mesh CA, the roots proxies trust, and the certificates issued.
pub struct Pki {
    trust_domain: String,
    policy: RotationPolicy,
    files: CaFiles,
    in_force_dir: PathBuf,
    /// The CA of the control channel: it issued the controller's server certificate and the
    /// bootstrap credentials, and the roots in force at start are what the xDS server trusts.
    control: MeshCa,
    control_bundle: String,
    /// What the operator asked for: the CA to issue from, and the roots to trust.
    wanted: Authority,
    /// The CA issuing now.
    issuer: MeshCa,
    issuer_root: RootId,
    /// The roots every proxy is given, and the PEM of every root that may be.
    served: BTreeSet<RootId>,
    known: BTreeMap<RootId, String>,
    phase: Phase,
    issued: HashMap<String, Issued>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("issuer", &self.issuer_root)
            .field("served", &self.served)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Opens the CA for `trust_domain` as `source` says, generating (and keeping, key
    /// readable by the owner only) a new one in `state` if there is none. A CA and bundle in
    /// force kept by a previous run (a rotation under way) are taken up again.
    ///
    /// # Errors
    /// When the files cannot be read or written, or do not hold a CA, or the trust bundle
    /// does not hold the CA's root.
    pub fn open(
        state: &Path,
        source: &CaSource,
        trust_domain: &str,
        policy: RotationPolicy,
    ) -> Result<Self, PkiError> {
        let files = source.files(state);
        if matches!(source, CaSource::State) && !files.cert.exists() {
            let ca = MeshCa::generate(trust_domain, Validity::starting_now(CA_LIFETIME)).map_err(
                |source| PkiError::Cert {
                    what: "generating the mesh CA".to_owned(),
                    source,
                },
            )?;
            std::fs::create_dir_all(state).map_err(io(state))?;
            write_private(&files.key, &ca.pem().key_pem)?;
            std::fs::write(&files.cert, &ca.pem().cert_pem).map_err(io(&files.cert))?;
        }
        let wanted = Authority::read(
            &files.cert,
            &files.key,
            files.bundle.as_deref(),
            trust_domain,
        )?;
        let in_force_dir = state.join(IN_FORCE_DIR);
        let in_force = if in_force_dir.join(weft_certs::CA_CERT_FILE).exists() {
            Authority::read(
                &in_force_dir.join(weft_certs::CA_CERT_FILE),
                &in_force_dir.join(weft_certs::CA_KEY_FILE),
                Some(&in_force_dir.join(weft_certs::TRUST_BUNDLE_FILE)),
                trust_domain,
            )?
        } else {
            wanted.try_clone()?
        };
        let served: BTreeSet<RootId> = in_force.roots.keys().cloned().collect();
        let mut known = in_force.roots.clone();
        known.extend(wanted.roots.clone());
        let control = copy(&in_force.ca)?;
        // The control channel trusts the mesh's own CAs only: the one in force and, when a
        // rotation is under way, the one it rotates to. Other roots of the trust bundle (a
        // partner's, for calls) may vouch for workloads' calls, never for sidecars to their
        // controller, which hands out the mesh's keys.
        let control_roots: BTreeSet<RootId> = [in_force.root.clone(), wanted.root.clone()]
            .into_iter()
            .collect();
        let mut pki = Self {
            trust_domain: trust_domain.to_owned(),
            policy,
            files,
            in_force_dir,
            control,
            control_bundle: String::new(),
            wanted,
            issuer: in_force.ca,
            issuer_root: in_force.root,
            served,
            known,
            phase: Phase::Steady,
            issued: HashMap::new(),
        };
        pki.control_bundle = control_roots
            .iter()
            .filter_map(|root| pki.known.get(root))
            .map(String::as_str)
            .collect();
        pki.keep_in_force()?;
        Ok(pki)
    }

    /// The files the operator's wishes are read from (the controller watches them).
    pub fn files(&self) -> &CaFiles {
        &self.files
    }

    /// Reads the operator's CA and trust bundle again. Returns whether they changed; on an
    /// error, what was asked before stays.
    ///
    /// # Errors
    /// When they cannot be read, or the bundle does not hold the CA's root.
    pub fn reload(&mut self) -> Result<bool, PkiError> {
        let wanted = Authority::read(
            &self.files.cert,
            &self.files.key,
            self.files.bundle.as_deref(),
            &self.trust_domain,
        )?;
        if wanted.root == self.wanted.root && wanted.roots == self.wanted.roots {
            return Ok(false);
        }
        self.known.extend(wanted.roots.clone());
        self.wanted = wanted;
        Ok(true)
    }

    /// Takes the next step of a rotation that `held` (what each pod's proxy has applied)
    /// allows: switches the issuer (every certificate is then issued again) and sets the roots
    /// served. Returns whether anything changed.
    ///
    /// # Errors
    /// When the state in force cannot be kept.
    pub fn advance(&mut self, held: &BTreeMap<String, Option<Held>>) -> Result<bool, PkiError> {
        let wanted_roots: BTreeSet<RootId> = self.wanted.roots.keys().cloned().collect();
        let issued: BTreeSet<RootId> = self.issued.values().map(|i| i.root.clone()).collect();
        let decision = trust::decide(
            &self.wanted.root,
            &wanted_roots,
            &self.issuer_root,
            &issued,
            held,
        );
        let mut changed = false;
        if decision.switch_issuer {
            self.issuer = copy(&self.wanted.ca)?;
            self.issuer_root = self.wanted.root.clone();
            self.issued.clear();
            changed = true;
        }
        if decision.served != self.served {
            self.served = decision.served;
            changed = true;
        }
        self.phase = decision.phase;
        if changed {
            self.keep_in_force()?;
        }
        Ok(changed)
    }

    /// Writes the CA and roots in force into the state folder.
    fn keep_in_force(&self) -> Result<(), PkiError> {
        let dir = &self.in_force_dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_private(
            &dir.join(weft_certs::CA_KEY_FILE),
            &self.issuer.pem().key_pem,
        )?;
        let cert = dir.join(weft_certs::CA_CERT_FILE);
        std::fs::write(&cert, &self.issuer.pem().cert_pem).map_err(io(&cert))?;
        let bundle = dir.join(weft_certs::TRUST_BUNDLE_FILE);
        std::fs::write(&bundle, self.bundle_pem()).map_err(io(&bundle))
    }

    /// The trust bundle every proxy gets: the roots served, the issuer's first.
    pub fn bundle_pem(&self) -> String {
        // Every root served came from a file read into `known`, the issuer's included.
        std::iter::once(&self.issuer_root)
            .chain(self.served.iter().filter(|root| **root != self.issuer_root))
            .filter_map(|root| self.known.get(root))
            .map(String::as_str)
            .collect()
    }

    /// The roots served.
    pub fn served(&self) -> &BTreeSet<RootId> {
        &self.served
    }

    /// The root of the CA issuing now.
    pub fn issuer_root(&self) -> &RootId {
        &self.issuer_root
    }

    /// Where a rotation stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The roots the control channel trusts, PEM: the mesh CA in force when the controller
    /// started and the one a rotation under way goes to, never another root of the trust
    /// bundle. Sidecars' credentials must chain to them, and sidecars check the controller
    /// against them.
    pub fn control_bundle_pem(&self) -> &str {
        &self.control_bundle
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The controller's SPIFFE ID, which sidecars check on its certificate.
    pub fn controller_identity(&self) -> String {
        controller_identity(self.trust_domain())
    }

    fn issue(
        ca: &MeshCa,
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
        let pem = ca
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
        let (pem, validity) = Self::issue(&self.issuer, spiffe_id, &[], self.policy.lifetime, now)?;
        let issued = Issued {
            pem,
            validity,
            renew_at: self.policy.renewal(validity, fastrand::f64()),
            root: self.issuer_root.clone(),
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

    /// A bootstrap credential for a sidecar of `spiffe_id`, from the control channel's CA.
    ///
    /// # Errors
    /// When it cannot be made.
    pub fn bootstrap_credential(
        &self,
        spiffe_id: &str,
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        Ok(Self::issue(&self.control, spiffe_id, &[], BOOTSTRAP_LIFETIME, now)?.0)
    }

    /// The controller's server certificate: its SPIFFE ID (which sidecars check) and the
    /// DNS name `localhost` (for gRPC clients that verify a host name).
    ///
    /// # Errors
    /// When it cannot be made.
    pub fn server_credential(&self, now: OffsetDateTime) -> Result<CertifiedKey, PkiError> {
        let dns = ["localhost".to_owned()];
        Ok(Self::issue(
            &self.control,
            &self.controller_identity(),
            &dns,
            BOOTSTRAP_LIFETIME,
            now,
        )?
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
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    // The mode above applies to a file created now; one that was there keeps its own.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
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
            bundle: None,
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

    /// Writes a new CA over the state folder's, as an operator rotating it does.
    fn replace_ca(dir: &Path) -> RootId {
        let ca = MeshCa::generate("cluster.local", Validity::starting_now(CA_LIFETIME)).unwrap();
        write_private(&dir.join(weft_certs::CA_KEY_FILE), &ca.pem().key_pem).unwrap();
        std::fs::write(dir.join(weft_certs::CA_CERT_FILE), &ca.pem().cert_pem).unwrap();
        RootId::of(&weft_certs::first_certificate_der(&ca.pem().cert_pem).unwrap())
    }

    fn holding(certificate: &RootId, bundle: &BTreeSet<RootId>) -> BTreeMap<String, Option<Held>> {
        BTreeMap::from([(
            "shop/api-0".to_owned(),
            Some(Held {
                certificate_root: certificate.clone(),
                bundle: std::sync::Arc::new(bundle.clone()),
            }),
        )])
    }

    fn roots_in(bundle: &str) -> BTreeSet<RootId> {
        weft_certs::certificates(bundle)
            .unwrap()
            .into_iter()
            .map(|(der, _)| RootId::of(&der))
            .collect()
    }

    #[test]
    fn a_replaced_ca_issues_only_after_the_proxies_trust_it_and_its_old_root_goes_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = pki(dir.path());
        let now = OffsetDateTime::now_utc();
        let old = pki.issuer_root().clone();
        let (first, _) = pki.workload(API, now).unwrap();
        assert_eq!(first.root, old);

        let new = replace_ca(dir.path());
        assert!(pki.reload().unwrap());
        // Step 1: the new root joins the bundle; the proxy has not applied it yet.
        let only_old = BTreeSet::from([old.clone()]);
        assert!(pki.advance(&holding(&old, &only_old)).unwrap());
        let both = BTreeSet::from([old.clone(), new.clone()]);
        assert_eq!(roots_in(&pki.bundle_pem()), both);
        assert_eq!(pki.issuer_root(), &old);
        assert!(!pki.workload(API, now).unwrap().1, "no new certificate yet");

        // Step 2, once the proxy applied the wider bundle: the new CA issues at once.
        assert!(pki.advance(&holding(&old, &both)).unwrap());
        assert_eq!(pki.issuer_root(), &new);
        let (renewed, issued) = pki.workload(API, now).unwrap();
        assert!(issued);
        assert_eq!(renewed.root, new);
        // The old root stays while the proxy holds the old certificate.
        assert_eq!(roots_in(&pki.bundle_pem()), both);
        assert!(matches!(pki.phase(), Phase::RetiringRoots { .. }));

        // Step 3, once it applied the new certificate.
        assert!(pki.advance(&holding(&new, &both)).unwrap());
        assert_eq!(roots_in(&pki.bundle_pem()), BTreeSet::from([new.clone()]));
        assert_eq!(pki.phase(), &Phase::Steady);

        // What is in force is kept: a restart goes on from here.
        let again = self::pki(dir.path());
        assert_eq!(again.issuer_root(), &new);
        assert_eq!(roots_in(&again.bundle_pem()), BTreeSet::from([new]));
    }

    #[test]
    fn a_restart_in_the_middle_of_a_rotation_keeps_issuing_from_the_ca_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = pki(dir.path());
        let old = pki.issuer_root().clone();
        let new = replace_ca(dir.path());
        pki.reload().unwrap();
        pki.advance(&holding(&old, &BTreeSet::from([old.clone()])))
            .unwrap();
        drop(pki);

        let mut again = self::pki(dir.path());
        assert_eq!(again.issuer_root(), &old, "the old CA issues until step 2");
        assert_eq!(
            roots_in(&again.bundle_pem()),
            BTreeSet::from([old.clone(), new.clone()])
        );
        let (issued, _) = again.workload(API, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(issued.root, old);
        // The control channel keeps the CA in force at start.
        assert_eq!(
            roots_in(again.control_bundle_pem()),
            BTreeSet::from([old, new])
        );
    }

    #[test]
    fn a_partner_root_in_the_trust_bundle_is_trusted_for_calls_but_not_by_the_control_channel() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = pki(dir.path()).issuer_root().clone();
        let partner =
            MeshCa::generate("cluster.local", Validity::starting_now(CA_LIFETIME)).unwrap();
        let partner_root =
            RootId::of(&weft_certs::first_certificate_der(&partner.pem().cert_pem).unwrap());
        let ca_pem = std::fs::read_to_string(dir.path().join(weft_certs::CA_CERT_FILE)).unwrap();
        std::fs::write(
            dir.path().join(weft_certs::TRUST_BUNDLE_FILE),
            format!("{ca_pem}{}", partner.pem().cert_pem),
        )
        .unwrap();
        let mut again = pki(dir.path());
        again
            .advance(&holding(&mesh, &BTreeSet::from([mesh.clone()])))
            .unwrap();
        assert_eq!(
            roots_in(&again.bundle_pem()),
            BTreeSet::from([mesh.clone(), partner_root])
        );
        assert_eq!(roots_in(again.control_bundle_pem()), BTreeSet::from([mesh]));
    }

    #[test]
    fn a_trust_bundle_that_is_a_fifo_is_refused_at_once_and_what_was_asked_before_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = pki(dir.path());
        let root = pki.issuer_root().clone();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join(weft_certs::TRUST_BUNDLE_FILE))
            .status()
            .unwrap();
        assert!(made.success());
        let started = std::time::Instant::now();
        let err = pki.reload().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            err.to_string()
                .ends_with("trust-bundle.pem: is a FIFO, not a regular file"),
            "{err}"
        );
        assert_eq!(roots_in(&pki.bundle_pem()), BTreeSet::from([root]));
    }

    #[test]
    fn a_key_written_over_a_readable_file_ends_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&key, "new").unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_bundle_without_the_cas_root_is_refused_and_what_was_asked_before_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut pki = pki(dir.path());
        let old = pki.issuer_root().clone();
        let other = MeshCa::generate("cluster.local", Validity::starting_now(CA_LIFETIME)).unwrap();
        let bundle = dir.path().join(weft_certs::TRUST_BUNDLE_FILE);
        std::fs::write(&bundle, &other.pem().cert_pem).unwrap();
        let err = pki.reload().unwrap_err();
        assert!(
            err.to_string()
                .contains("trust-bundle.pem does not hold the root of the CA"),
            "{err}"
        );
        assert!(
            !pki.advance(&holding(&old, &BTreeSet::from([old.clone()])))
                .unwrap()
        );
        assert_eq!(roots_in(&pki.bundle_pem()), BTreeSet::from([old]));
    }
}
