//! Certificates for tests, made with `weft-certs` (rcgen) into a temporary directory that Envoy
//! reads: a mesh CA, workload certificates for any identity, and the odd ones a test needs
//! (expired, from a foreign CA).

use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_certs::{CertifiedKey, MeshCa, Validity};
use weft_policy::bundle::Identity;

/// The trust domain tests issue identities in.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// A certificate and key written to files, with their PEM kept for clients.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The PEM.
    pub pem: CertifiedKey,
    /// The certificate file.
    pub cert_file: PathBuf,
    /// The key file.
    pub key_file: PathBuf,
}

/// A mesh CA with its files in a temporary directory (removed on drop).
#[derive(Debug)]
pub struct Pki {
    ca: MeshCa,
    dir: tempfile::TempDir,
}

fn day() -> Validity {
    Validity::starting_now(Duration::from_secs(24 * 3600))
}

impl Pki {
    /// A new CA for [`TRUST_DOMAIN`].
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("weft-pki-").tempdir()?;
        let ca = MeshCa::generate(TRUST_DOMAIN, day())?;
        std::fs::write(dir.path().join("ca.pem"), &ca.pem().cert_pem)?;
        Ok(Self { ca, dir })
    }

    /// The CA certificate file, for Envoy's `trusted_ca`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.pem().cert_pem
    }

    /// A certificate for `identity` (`namespace/serviceaccount`), valid for a day.
    pub fn workload(&self, identity: &str) -> anyhow::Result<Issued> {
        let identity: Identity = identity.parse()?;
        self.write(&identity.to_string(), self.ca.issue(&identity, day())?)
    }

    /// A server certificate for `identity` that also names `localhost`, so test clients can
    /// verify the server by name.
    pub fn server(&self, identity: &str) -> anyhow::Result<Issued> {
        let identity: Identity = identity.parse()?;
        let pem = self
            .ca
            .issue_with_dns(&identity, &["localhost".to_owned()], day())?;
        self.write(&format!("{identity}-server"), pem)
    }

    /// A certificate for `identity` that expired an hour ago.
    pub fn expired(&self, identity: &str) -> anyhow::Result<Issued> {
        let identity: Identity = identity.parse()?;
        let pem = self.ca.issue(&identity, Validity::expired())?;
        self.write(&format!("{identity}-expired"), pem)
    }

    /// A certificate for `identity` from another CA with the same trust domain: it says the
    /// right SPIFFE ID, but nothing the mesh trusts signed it.
    pub fn foreign(&self, identity: &str) -> anyhow::Result<Issued> {
        let identity: Identity = identity.parse()?;
        let impostor = MeshCa::generate(TRUST_DOMAIN, day())?;
        let pem = impostor.issue(&identity, day())?;
        self.write(&format!("{identity}-foreign"), pem)
    }

    fn write(&self, name: &str, pem: CertifiedKey) -> anyhow::Result<Issued> {
        let stem = name.replace('/', "_");
        let cert_file = self.dir.path().join(format!("{stem}.pem"));
        let key_file = self.dir.path().join(format!("{stem}-key.pem"));
        std::fs::write(&cert_file, &pem.cert_pem)?;
        std::fs::write(&key_file, &pem.key_pem)?;
        Ok(Issued {
            pem,
            cert_file,
            key_file,
        })
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
