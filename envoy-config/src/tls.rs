//! TLS for listeners and clusters: certificates and trust from files (a static configuration)
//! or from SDS (the controller), and upstream TLS that checks the server's SPIFFE identity.

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext, common_tls_context, secret,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::BoolValue;

use crate::render::any;
use crate::sources::ads;

/// Envoy's name for the TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// Where a certificate with its key, and the trusted CAs, come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// PEM files.
    Files {
        /// Certificate chain.
        cert: String,
        /// Private key.
        key: String,
        /// Trusted CA certificates.
        ca: String,
    },
    /// SDS secrets over ADS: a `TlsCertificate` and a `CertificateValidationContext`.
    Sds {
        /// The certificate secret's name.
        certificate: String,
        /// The trust bundle secret's name.
        trust: String,
    },
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..DataSource::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

fn common_context(
    credentials: &Credentials,
    validation: CertificateValidationContext,
    alpn: &[&str],
) -> CommonTlsContext {
    let mut context = CommonTlsContext {
        alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
        ..CommonTlsContext::default()
    };
    match credentials {
        Credentials::Files { cert, key, ca } => {
            context.tls_certificates = vec![TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..TlsCertificate::default()
            }];
            context.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(file(ca)),
                        ..validation
                    },
                ),
            );
        }
        Credentials::Sds { certificate, trust } => {
            context.tls_certificate_sds_secret_configs = vec![sds(certificate)];
            let dynamic = sds(trust);
            context.validation_context_type =
                Some(if validation == CertificateValidationContext::default() {
                    common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        dynamic,
                    )
                } else {
                    common_tls_context::ValidationContextType::CombinedValidationContext(
                        common_tls_context::CombinedCertificateValidationContext {
                            default_validation_context: Some(validation),
                            validation_context_sds_secret_config: Some(dynamic),
                            ..common_tls_context::CombinedCertificateValidationContext::default()
                        },
                    )
                });
        }
    }
    context
}

/// Server-side TLS with `credentials`; with `require_client_certificate`, mTLS (a caller
/// without a certificate the trusted CAs signed is refused at the handshake). The access filter
/// reads the caller's identity from the verified certificate.
pub fn downstream_tls(
    credentials: &Credentials,
    require_client_certificate: bool,
) -> TransportSocket {
    let context = DownstreamTlsContext {
        common_tls_context: Some(common_context(
            credentials,
            CertificateValidationContext::default(),
            &["h2", "http/1.1"],
        )),
        require_client_certificate: Some(BoolValue {
            value: require_client_certificate,
        }),
        ..DownstreamTlsContext::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

/// Client-side TLS presenting `credentials`, accepting only a server whose certificate carries
/// one of `server_identities` (SPIFFE IDs) as a URI SAN; `alpn` as offered.
pub fn upstream_tls(
    credentials: &Credentials,
    server_identities: &[String],
    alpn: &[&str],
) -> TransportSocket {
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: server_identities
            .iter()
            .map(|identity| SubjectAltNameMatcher {
                san_type: SanType::Uri as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(identity.clone())),
                    ..StringMatcher::default()
                }),
                ..SubjectAltNameMatcher::default()
            })
            .collect(),
        ..CertificateValidationContext::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(common_context(credentials, validation, alpn)),
        ..UpstreamTlsContext::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

/// An SDS secret holding a certificate chain and its key, inline (PEM): one secret, so a
/// rotation swaps both at once (two files rotated apart make Envoy see a mismatched pair).
pub fn certificate_secret(name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(cert_pem)),
            private_key: Some(inline(key_pem)),
            ..TlsCertificate::default()
        })),
    }
}

/// An SDS secret holding the trusted CA certificates (the mesh's trust bundle), inline (PEM).
pub fn trust_secret(name: &str, bundle_pem: &str) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(bundle_pem)),
                ..CertificateValidationContext::default()
            },
        )),
    }
}

fn inline(text: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_owned())),
        ..DataSource::default()
    }
}
