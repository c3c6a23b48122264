//! A TLS client for tests: HTTP/1.1, gRPC (HTTP/2) and raw TCP over TLS, presenting a client
//! certificate or none, verifying the server against the mesh CA by the name `localhost`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::client::Reply;
use crate::pki::Issued;

/// The longest a test waits for one exchange; a hung connection fails the test instead.
pub const IO_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a gRPC call got back.
#[derive(Debug)]
pub struct GrpcReply {
    /// HTTP status (200 for any gRPC answer).
    pub status: u16,
    /// `grpc-status`, from the headers (trailers-only reply) or the trailers.
    pub grpc_status: Option<String>,
    /// `grpc-message`, percent-decoded as far as ASCII goes.
    pub grpc_message: Option<String>,
    /// The response headers.
    pub headers: hyper::HeaderMap,
}

/// A client with one TLS configuration. Requests send `Host: localhost` (the name the
/// server's certificate carries) unless a `host` header is given.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting `ca_pem`, presenting `identity`'s certificate when given, offering
    /// HTTP/2 and HTTP/1.1 by ALPN.
    pub fn new(ca_pem: &str, identity: Option<&Issued>) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let config = match identity {
            Some(issued) => {
                let chain = CertificateDer::pem_slice_iter(issued.pem.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()?;
                let key = PrivateKeyDer::from_pem_slice(issued.pem.key_pem.as_bytes())?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        alpn: Option<&[u8]>,
    ) -> anyhow::Result<TlsStream<TcpStream>> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
        let tcp = TcpStream::connect(addr).await?;
        let handshake =
            TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost")?, tcp);
        let stream = tokio::time::timeout(IO_DEADLINE, handshake)
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        Ok(stream)
    }

    /// `method path` over HTTP/1.1 on a fresh TLS connection.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let stream = self.connect(addr, Some(b"http/1.1")).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let response = tokio::time::timeout(
            IO_DEADLINE,
            sender.send_request(http1_request(method, path, headers)?),
        )
        .await
        .context("no response within the deadline")?
        .with_context(|| format!("{method} https://{addr}{path}"))?;
        Reply::read(response).await
    }

    /// Sends `GET path` over HTTP/1.1 on a fresh TLS connection and, once `until` completes,
    /// closes the connection without having read an answer: a client that gives up, which
    /// Envoy sees as a downstream reset.
    pub async fn abandon(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        until: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let stream = self.connect(addr, Some(b"http/1.1")).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let response = tokio::spawn(sender.send_request(http1_request("GET", path, headers)?));
        let waited = tokio::time::timeout(IO_DEADLINE, until).await;
        response.abort();
        connection.abort();
        waited.context("the condition to give up on never came")
    }

    /// A fresh TLS connection speaking HTTP/2, ready for requests.
    async fn http2(
        &self,
        addr: SocketAddr,
    ) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
        let stream = self.connect(addr, Some(b"h2")).await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// `method path` over HTTP/2 on a fresh TLS connection, with `:authority` `localhost` and
    /// `headers` (a name given twice is sent twice).
    pub async fn request_http2(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut sender = self.http2(addr).await?;
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = tokio::time::timeout(
            IO_DEADLINE,
            sender.send_request(builder.body(Full::new(Bytes::new()))?),
        )
        .await
        .context("no response within the deadline")??;
        Reply::read(response).await
    }

    /// A unary gRPC call to `path` (`/package.Service/Method`) with an empty message, over
    /// HTTP/2, with the authority `localhost`.
    pub async fn grpc(&self, addr: SocketAddr, path: &str) -> anyhow::Result<GrpcReply> {
        self.grpc_to(addr, "localhost", path).await
    }

    /// The same gRPC call with `:authority` set to `authority` (the service it addresses).
    pub async fn grpc_to(
        &self,
        addr: SocketAddr,
        authority: &str,
        path: &str,
    ) -> anyhow::Result<GrpcReply> {
        let mut sender = self.http2(addr).await?;
        // One gRPC message: not compressed, zero bytes long.
        let frame = Bytes::from_static(&[0, 0, 0, 0, 0]);
        let request = Request::builder()
            .method("POST")
            .uri(format!("https://{authority}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(frame))?;
        let response = tokio::time::timeout(IO_DEADLINE, sender.send_request(request))
            .await
            .context("no response within the deadline")??;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let field = |name: &str| {
            headers
                .get(name)
                .or_else(|| trailers.get(name))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Ok(GrpcReply {
            status,
            grpc_status: field("grpc-status"),
            grpc_message: field("grpc-message").map(|m| percent_decode(&m)),
            headers,
        })
    }

    /// Opens a TLS connection, writes `payload`, and reads until `payload.len()` bytes came back
    /// or the server closed the connection (at most [`IO_DEADLINE`]); returns what was read.
    pub async fn echo(&self, addr: SocketAddr, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        tokio::time::timeout(IO_DEADLINE, self.echo_unbounded(addr, payload))
            .await
            .context("no answer and no close within the deadline")?
    }

    async fn echo_unbounded(&self, addr: SocketAddr, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut stream = self.connect(addr, None).await?;
        stream.write_all(payload).await?;
        stream.flush().await?;
        let mut received = Vec::new();
        let mut buffer = [0u8; 1024];
        while received.len() < payload.len() {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..read]);
        }
        Ok(received)
    }
}

/// An HTTP/1.1 request with no body, `Host: localhost` unless `headers` name a host.
fn http1_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder().method(method).uri(path);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        builder = builder.header("host", "localhost");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder.body(Full::new(Bytes::new()))?)
}

/// Decodes `%XX` escapes (gRPC's `grpc-message` encoding, and paths as applications decode
/// them); anything else, a lone `%` included, is kept as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and body of a response read by [`TlsClient::raw`].
#[derive(Debug, Clone)]
pub struct RawReply {
    /// HTTP status code.
    pub status: u16,
    /// The body (lossy UTF-8), read to the end of the connection.
    pub body: String,
}

impl TlsClient {
    /// Sends `method target` over HTTP/1.1 on a fresh TLS connection exactly as given, byte for
    /// byte (no client library normalises or refuses the target), with `Host: localhost`,
    /// `connection: close` and `headers`, and reads the whole response.
    pub async fn raw(
        &self,
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<RawReply> {
        tokio::time::timeout(IO_DEADLINE, async {
            let mut stream = self.connect(addr, Some(b"http/1.1")).await?;
            let mut request =
                format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
            for (name, value) in headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            stream.write_all(request.as_bytes()).await?;
            stream.flush().await?;
            let mut response = Vec::new();
            // Envoy closes the TLS connection without close_notify at times; what was read counts.
            let _ = stream.read_to_end(&mut response).await;
            let text = String::from_utf8_lossy(&response).into_owned();
            let status = text
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .with_context(|| format!("no status line in {text:?}"))?;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .unwrap_or_default();
            Ok(RawReply { status, body })
        })
        .await
        .context("no response within the deadline")?
    }
}
