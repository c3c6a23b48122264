//! `weft cert`: the mesh CA and workload certificates as PEM files that Envoy's file-based TLS
//! configuration reads, for a hand-written sidecar (the controller will issue them itself).

use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_certs::{MeshCa, Validity};
use weft_policy::bundle::Identity;

use crate::commands::{EXIT_INVALID, Outcome};

/// File names inside a CA directory.
pub use weft_certs::CA_CERT_FILE as CA_CERT;
/// See [`CA_CERT`].
pub use weft_certs::CA_KEY_FILE as CA_KEY;
/// File names inside a workload directory.
pub use weft_certs::CERT_FILE as WORKLOAD_CERT;
/// See [`WORKLOAD_CERT`].
pub use weft_certs::KEY_FILE as WORKLOAD_KEY;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Makes a new CA for `trust_domain` into `out` (`ca.pem`, `ca-key.pem`), valid for `days`.
/// Refuses to overwrite an existing CA, which would orphan every certificate it issued.
pub fn make_ca(out: &Path, trust_domain: &str, days: u32) -> Outcome {
    let cert_path = out.join(CA_CERT);
    if cert_path.exists() {
        return Outcome::fail(
            EXIT_INVALID,
            format!(
                "weft: {} exists; remove it to make a new CA (every certificate it issued stops being trusted)\n",
                cert_path.display()
            ),
        );
    }
    let ca = match MeshCa::generate(trust_domain, Validity::starting_now(DAY * days)) {
        Ok(ca) => ca,
        Err(err) => return Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    };
    match write_pair(
        out,
        (CA_CERT, &ca.pem().cert_pem),
        (CA_KEY, &ca.pem().key_pem),
    ) {
        Ok(()) => Outcome::ok(format!(
            "wrote {} and {} (mesh CA for trust domain {trust_domain}, {days} days)\n",
            cert_path.display(),
            out.join(CA_KEY).display()
        )),
        Err(err) => Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    }
}

/// Issues `identity` a certificate from the CA in `ca_dir` into `out` (`cert.pem`, `key.pem`).
pub fn make_workload(
    ca_dir: &Path,
    identity: &Identity,
    dns_names: &[String],
    days: u32,
    trust_domain: &str,
    out: &Path,
) -> Outcome {
    if ca_dir.exists() && !ca_dir.is_dir() {
        return Outcome::fail(
            EXIT_INVALID,
            format!(
                "weft: {} is not a directory; --ca names the directory `weft cert ca --out` wrote\n",
                ca_dir.display()
            ),
        );
    }
    let read = |name: &str| {
        let path: PathBuf = ca_dir.join(name);
        std::fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()))
    };
    let ca = read(CA_CERT)
        .and_then(|cert| read(CA_KEY).map(|key| (cert, key)))
        .and_then(|(cert, key)| {
            MeshCa::from_pem(&cert, &key, trust_domain).map_err(|err| err.to_string())
        });
    let ca = match ca {
        Ok(ca) => ca,
        Err(err) => {
            return Outcome::fail(
                EXIT_INVALID,
                format!("weft: reading the CA in {}: {err}\n", ca_dir.display()),
            );
        }
    };
    let issued = match ca.issue_with_dns(identity, dns_names, Validity::starting_now(DAY * days)) {
        Ok(issued) => issued,
        Err(err) => return Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    };
    match write_pair(
        out,
        (WORKLOAD_CERT, &issued.cert_pem),
        (WORKLOAD_KEY, &issued.key_pem),
    ) {
        Ok(()) => Outcome::ok(format!(
            "wrote {} and {} for {} ({days} days)\n",
            out.join(WORKLOAD_CERT).display(),
            out.join(WORKLOAD_KEY).display(),
            identity.spiffe_id(trust_domain)
        )),
        Err(err) => Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    }
}

/// Why certificate files could not be written; each names its path.
#[derive(Debug, thiserror::Error)]
pub enum CertFilesError {
    /// `--out` names something that is not a directory.
    #[error(
        "{0} is not a directory; --out names the directory to write the certificate and key into"
    )]
    NotADirectory(String),
    /// The directory could not be made.
    #[error("cannot create the directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Writes a certificate and its key; the key is readable by its owner only.
fn write_pair(out: &Path, cert: (&str, &str), key: (&str, &str)) -> Result<(), CertFilesError> {
    let shown = |path: &Path| path.display().to_string();
    if out.exists() && !out.is_dir() {
        return Err(CertFilesError::NotADirectory(shown(out)));
    }
    std::fs::create_dir_all(out).map_err(|source| CertFilesError::CreateDir {
        path: shown(out),
        source,
    })?;
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text)
            .map_err(|source| CertFilesError::Write {
                path: shown(&path),
                source,
            })
            .map(|()| path)
    };
    write(cert.0, cert.1)?;
    let key_path = write(key.0, key.1)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| CertFilesError::Write {
                path: shown(&key_path),
                source,
            },
        )?;
    }
    Ok(())
}
