//! `weft-certs` makes the certificates weft's mTLS runs on: a mesh root CA, and workload
//! certificates that carry a workload's SPIFFE ID
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`) as their only URI SAN, which
//! is what the access filter reads as the caller's identity. The `weft cert` commands, the
//! end-to-end tests and (later) the controller all issue certificates through it. Keys are
//! ECDSA P-256; everything is PEM, as Envoy's file-based TLS configuration reads it.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use weft_identity::Identity;

/// File name of a CA certificate (`weft cert ca`, the controller's state folder).
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of a CA key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of a trust bundle: the root certificates every proxy trusts, PEM, one after the
/// other (during a root rotation, the old root and the new).
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";
/// File name of a workload certificate (`weft cert workload`, a sidecar's credentials).
pub const CERT_FILE: &str = "cert.pem";
/// File name of a workload key.
pub const KEY_FILE: &str = "key.pem";

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters, key or PEM.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Bytes that are not an X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
    /// A validity period that ends before it starts.
    #[error("the validity period ends ({not_after}) before it starts ({not_before})")]
    Validity {
        /// Start.
        not_before: OffsetDateTime,
        /// End.
        not_after: OffsetDateTime,
    },
}

fn rcgen_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Rcgen { what, source }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant of validity.
    pub not_before: OffsetDateTime,
    /// Last instant of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a few minutes ago (so a peer's slightly slow clock accepts it) for `lifetime`.
    pub fn starting_now(lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::from_secs(5 * 60),
            not_after: now + lifetime,
        }
    }

    /// A period that ended an hour ago, for testing that expired certificates are refused.
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::from_secs(48 * 3600),
            not_after: now - Duration::from_secs(3600),
        }
    }

    fn apply(self, params: &mut CertificateParams) -> Result<(), CertError> {
        if self.not_after <= self.not_before {
            return Err(CertError::Validity {
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        Ok(())
    }
}

/// When to renew a certificate: at a fraction of its lifetime, less a random part of it
/// (jitter), so that certificates issued together are not all renewed together. The deadline
/// is an instant on the wall clock derived from the certificate's own validity, so a process
/// that sleeps, a suspended machine or a clock that jumps renews late at worst by the time it
/// takes to notice, never by a timer's accumulated drift (OSM's outage #5000 came from a
/// monotonic timer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotationPolicy {
    /// Lifetime of a workload certificate.
    pub lifetime: Duration,
    /// Renew when this fraction of the validity has passed (0.5: half-way).
    pub renew_at: f64,
    /// Renew up to this fraction of the validity earlier, at random (0.1).
    pub jitter: f64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(24 * 3600),
            renew_at: 0.5,
            jitter: 0.1,
        }
    }
}

impl RotationPolicy {
    /// The instant a certificate issued under this policy and valid until `validity.not_after`
    /// is to be renewed, with `sample` (from 0 to 1) choosing the jitter: the part of
    /// [`RotationPolicy::lifetime`] left unused before `not_after`. (A certificate's
    /// `not_before` is set back a few minutes for slow clocks, so it does not count.)
    pub fn renewal(&self, validity: Validity, sample: f64) -> OffsetDateTime {
        let fraction = (self.renew_at - self.jitter * sample.clamp(0.0, 1.0)).clamp(0.0, 1.0);
        validity.not_after - self.lifetime.mul_f64(1.0 - fraction)
    }
}

/// The URI SANs of a DER certificate (a workload certificate has one: its SPIFFE ID) and when
/// it expires.
///
/// # Errors
/// [`CertError::Parse`] when the bytes are not an X.509 certificate.
pub fn inspect(der: &[u8]) -> Result<(Vec<String>, OffsetDateTime), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| CertError::Parse(err.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(names)) = cert.subject_alternative_name() {
        for name in &names.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
            }
        }
    }
    Ok((uris, cert.validity().not_after.to_datetime()))
}

/// The serial number of a DER certificate, lowercase hex without leading zeros (as Envoy's
/// admin `/certs` shows it).
///
/// # Errors
/// [`CertError::Parse`] when the bytes are not an X.509 certificate.
pub fn serial_hex(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| CertError::Parse(err.to_string()))?;
    Ok(cert.serial.to_str_radix(16))
}

/// Whether the DER certificate `der` was signed by the CA certificate `ca` (PEM): its issuer
/// is the CA's subject and the CA's key verifies its signature.
///
/// # Errors
/// [`CertError::Parse`] when either is not an X.509 certificate.
pub fn signed_by(der: &[u8], ca: &str) -> Result<bool, CertError> {
    let ca_der = first_certificate_der(ca)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|err| CertError::Parse(err.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| CertError::Parse(err.to_string()))?;
    Ok(cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok())
}

/// The DER bytes of the first certificate in `pem`.
///
/// # Errors
/// [`CertError::Parse`] when `pem` holds no certificate.
pub fn first_certificate_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|err| CertError::Parse(err.to_string()))?;
    Ok(block.contents)
}

/// Every certificate in `pem`, each as its DER bytes and its own PEM block, in order.
///
/// # Errors
/// [`CertError::Parse`] when a block is not a certificate, or there is none.
pub fn certificates(pem: &str) -> Result<Vec<(Vec<u8>, String)>, CertError> {
    let mut found = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|err| CertError::Parse(err.to_string()))?;
        if block.label != "CERTIFICATE" {
            return Err(CertError::Parse(format!(
                "a {} block where a CERTIFICATE was expected",
                block.label
            )));
        }
        block
            .parse_x509()
            .map_err(|err| CertError::Parse(err.to_string()))?;
        let text = pem_block(&block.contents);
        found.push((block.contents, text));
    }
    if found.is_empty() {
        return Err(CertError::Parse("no PEM certificate".to_owned()));
    }
    Ok(found)
}

/// `der` as a PEM CERTIFICATE block.
pub fn pem_block(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// The mesh root CA: it signs every workload certificate, and every proxy trusts it.
pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    pem: CertifiedKey,
    trust_domain: String,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// A new self-signed root CA for `trust_domain`.
    ///
    /// # Errors
    /// [`CertError`] if rcgen cannot make the key or certificate, or `validity` is empty.
    pub fn generate(trust_domain: &str, validity: Validity) -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // A name of its own: during a root rotation two roots are trusted at once, and a
        // verifier looks a certificate's issuer up by name first.
        params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "weft mesh CA for {trust_domain} ({})",
                validity.not_before.unix_timestamp_nanos()
            ),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity.apply(&mut params)?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("signing the CA certificate"))?;
        let pem = CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// A CA read back from its PEM certificate and key (as [`MeshCa::generate`] wrote them).
    ///
    /// # Errors
    /// [`CertError`] if either PEM cannot be read.
    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_error("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(rcgen_error("reading the CA certificate"))?;
        Ok(Self {
            issuer,
            pem: CertifiedKey {
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Another handle on the same CA (its key cannot be cloned, so it is read back from PEM).
    ///
    /// # Errors
    /// As [`MeshCa::from_pem`].
    pub fn try_clone(&self) -> Result<Self, CertError> {
        Self::from_pem(&self.pem.cert_pem, &self.pem.key_pem, &self.trust_domain)
    }

    /// The CA certificate and key, PEM.
    pub fn pem(&self) -> &CertifiedKey {
        &self.pem
    }

    /// The trust domain of the identities this CA issues.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// A workload certificate for `identity`: its SPIFFE ID as the only URI SAN, usable for
    /// both TLS client and server authentication.
    ///
    /// # Errors
    /// [`CertError`] if rcgen cannot make the key or certificate, or `validity` is empty.
    pub fn issue(
        &self,
        identity: &Identity,
        validity: Validity,
    ) -> Result<CertifiedKey, CertError> {
        self.issue_for(&identity.spiffe_id(&self.trust_domain), &[], validity)
    }

    /// As [`MeshCa::issue`], with DNS names as well, for a workload that callers outside the
    /// mesh (a browser, curl) reach by name.
    ///
    /// # Errors
    /// As [`MeshCa::issue`], and for a DNS name rcgen cannot encode.
    pub fn issue_with_dns(
        &self,
        identity: &Identity,
        dns_names: &[String],
        validity: Validity,
    ) -> Result<CertifiedKey, CertError> {
        self.issue_for(&identity.spiffe_id(&self.trust_domain), dns_names, validity)
    }

    /// A certificate with `spiffe_id` as its URI SAN, whatever it says (tests use it for
    /// identities of another trust domain).
    ///
    /// # Errors
    /// As [`MeshCa::issue`].
    pub fn issue_for(
        &self,
        spiffe_id: &str,
        dns_names: &[String],
        validity: Validity,
    ) -> Result<CertifiedKey, CertError> {
        let key = KeyPair::generate().map_err(rcgen_error("generating a workload key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe_id.to_owned());
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id
                .to_owned()
                .try_into()
                .map_err(rcgen_error("the SPIFFE ID as a URI SAN"))?,
        )];
        for name in dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(rcgen_error("a DNS name as a SAN"))?,
            ));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        // Names the signing key, so the right root is found when two have similar names.
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error("signing a workload certificate"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_read_back_from_pem_issues_certificates_with_the_spiffe_id() {
        let ca = MeshCa::generate(
            "cluster.local",
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .unwrap();
        let again =
            MeshCa::from_pem(&ca.pem().cert_pem, &ca.pem().key_pem, "cluster.local").unwrap();
        let workload = again
            .issue(
                &"shop/frontend".parse().unwrap(),
                Validity::starting_now(Duration::from_secs(60)),
            )
            .unwrap();
        assert!(workload.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(workload.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn renewal_falls_between_the_jittered_and_the_plain_fraction_of_the_validity() {
        let now = OffsetDateTime::now_utc();
        let validity = Validity {
            not_before: now - Duration::from_secs(300),
            not_after: now + Duration::from_secs(1000),
        };
        let policy = RotationPolicy {
            lifetime: Duration::from_secs(1000),
            ..RotationPolicy::default()
        };
        assert_eq!(
            policy.renewal(validity, 0.0),
            now + Duration::from_secs(500)
        );
        assert_eq!(
            policy.renewal(validity, 1.0),
            now + Duration::from_secs(400)
        );
        let halfway = policy.renewal(validity, 0.5);
        assert!(
            halfway > now + Duration::from_secs(400) && halfway < now + Duration::from_secs(500)
        );
        // The deadline follows the certificate, not when it is computed.
        let later = Validity {
            not_before: now + Duration::from_secs(3300),
            not_after: now + Duration::from_secs(4600),
        };
        assert_eq!(policy.renewal(later, 0.0), now + Duration::from_secs(4100));
    }

    #[test]
    fn inspecting_a_workload_certificate_gives_its_spiffe_id_and_expiry() {
        let ca = MeshCa::generate(
            "cluster.local",
            Validity::starting_now(Duration::from_secs(3600)),
        )
        .unwrap();
        let validity = Validity::starting_now(Duration::from_secs(600));
        let cert = ca.issue(&"shop/api".parse().unwrap(), validity).unwrap();
        let der = first_certificate_der(&cert.cert_pem).unwrap();
        let (uris, not_after) = inspect(&der).unwrap();
        assert_eq!(uris, ["spiffe://cluster.local/ns/shop/sa/api"]);
        assert_eq!(
            not_after.unix_timestamp(),
            validity.not_after.unix_timestamp()
        );
        assert!(inspect(b"not a certificate").is_err());
    }

    #[test]
    fn an_empty_validity_period_is_refused() {
        let now = OffsetDateTime::now_utc();
        let err = MeshCa::generate(
            "cluster.local",
            Validity {
                not_before: now,
                not_after: now,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("before it starts"), "{err}");
    }
}
