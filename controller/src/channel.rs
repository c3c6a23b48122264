//! The control channel's TLS, on both ends: the controller's xDS port requires a client
//! certificate that chains to the mesh's own CAs (never to another root of the workload trust
//! bundle), and a sidecar's tools check that the server is the controller (its SPIFFE ID,
//! chained to the same CAs). Over that channel the controller serves, beside ADS, the module
//! at [`MODULE_PATH`]: `weft sidecar` fetches it there with its bootstrap credential
//! ([`fetch_module`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The path of the module on the control channel (HTTP/2 `GET`), with its SHA-256 in
/// [`MODULE_SHA256_HEADER`].
pub const MODULE_PATH: &str = "/weft.v1/module";

/// The response header that carries the module's SHA-256 (hex).
pub const MODULE_SHA256_HEADER: &str = "x-weft-module-sha256";

/// Why a TLS configuration could not be made or the module not fetched.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A certificate, key or root that cannot be read.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The controller could not be reached or did not answer as the controller.
    #[error("{0}")]
    Fetch(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ChannelError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ChannelError::Pem {
            what,
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(ChannelError::Pem {
            what,
            reason: "no certificate".to_owned(),
        });
    }
    Ok(chain)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, ChannelError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|err| ChannelError::Pem {
        what: "the private key",
        reason: err.to_string(),
    })
}

fn roots(pem: &str) -> Result<RootCertStore, ChannelError> {
    let mut store = RootCertStore::empty();
    for root in certificates(pem, "the control channel's roots")? {
        store.add(root).map_err(ChannelError::Tls)?;
    }
    Ok(store)
}

/// The xDS port's TLS: the controller's certificate (`cert_pem`, `key_pem`), and client
/// certificates required, chained to `roots_pem` (the mesh's own CAs); HTTP/2 only.
///
/// # Errors
/// When a certificate, the key or a root cannot be read.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    roots_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, ChannelError> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(roots_pem)?),
        provider.clone(),
    )
    .build()
    .map_err(|err| ChannelError::Pem {
        what: "the control channel's roots",
        reason: err.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates(cert_pem, "the controller's certificate")?,
            key(key_pem)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Checks that the server's certificate chains to the control channel's roots and names the
/// controller's SPIFFE ID (the certificate's DNS name says nothing: any address may serve it).
#[derive(Debug)]
struct ControllerVerifier {
    roots: RootCertStore,
    identity: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ControllerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let (uris, _) = weft_certs::inspect(end_entity)
            .map_err(|err| rustls::Error::General(err.to_string()))?;
        if !uris.contains(&self.identity) {
            return Err(rustls::Error::General(format!(
                "the server's certificate is for {}, not the controller {}",
                uris.join(", "),
                self.identity
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A sidecar's end of the control channel: its bootstrap credential (`cert_pem`, `key_pem`),
/// and the controller checked against `roots_pem` and its SPIFFE ID `controller`; HTTP/2.
///
/// # Errors
/// When the credential or a root cannot be read.
pub fn client_config(
    cert_pem: &str,
    key_pem: &str,
    roots_pem: &str,
    controller: &str,
) -> Result<Arc<rustls::ClientConfig>, ChannelError> {
    let provider = provider();
    let verifier = ControllerVerifier {
        roots: roots(roots_pem)?,
        identity: controller.to_owned(),
        provider: provider.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            certificates(cert_pem, "the bootstrap credential")?,
            key(key_pem)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The module the controller at `address` serves on the control channel, and its SHA-256,
/// checked against the digest it announces; within `deadline`.
///
/// # Errors
/// When the controller cannot be reached, is not the controller, refuses the credential, or
/// sends a module whose digest is not the one announced.
pub async fn fetch_module(
    address: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    deadline: Duration,
) -> Result<(Bytes, String), ChannelError> {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|err| ChannelError::Fetch(format!("{address} cannot be reached: {err}")))?;
        let name = ServerName::IpAddress(address.ip().into());
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|err| ChannelError::Fetch(format!("{address}: TLS: {err}")))?;
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|err| ChannelError::Fetch(format!("{address}: HTTP/2: {err}")))?;
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get(format!("https://{address}{MODULE_PATH}"))
            .body(Empty::<Bytes>::new())
            .map_err(|err| ChannelError::Fetch(err.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| ChannelError::Fetch(format!("{address}{MODULE_PATH}: {err}")))?;
        let status = response.status();
        let announced = response
            .headers()
            .get(MODULE_SHA256_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = usize::try_from(crate::module::MAX_MODULE_BYTES).unwrap_or(usize::MAX);
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|err| ChannelError::Fetch(format!("{address}{MODULE_PATH}: {err}")))?
            .to_bytes();
        connection.abort();
        if status != hyper::StatusCode::OK {
            return Err(ChannelError::Fetch(format!(
                "{address}{MODULE_PATH}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let sha256 = crate::module::Module::digest(&body);
        if announced.as_deref() != Some(sha256.as_str()) {
            return Err(ChannelError::Fetch(format!(
                "the module from {address} has SHA-256 {sha256}, but the controller announced {}",
                announced.as_deref().unwrap_or("none")
            )));
        }
        Ok((body, sha256))
    };
    tokio::time::timeout(deadline, fetch)
        .await
        .map_err(|_| ChannelError::Fetch(format!("{address}: no answer in {deadline:?}")))?
}
