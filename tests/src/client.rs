//! A small HTTP/1.1 client for requests through Envoy and to its admin interface.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What came back for one request.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body as text (lossy UTF-8).
    pub body: String,
}

/// Sends `method path` to `addr` with `headers`, on a fresh connection each time so that one
/// request's connection state never leaks into the next assertion.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    Session::fresh_connections(addr)
        .request(method, path, headers)
        .await
}

/// An HTTP/1.1 client for one address: keep-alive (many requests over one connection, for
/// counting where thousands are sent) or a fresh connection per request.
#[derive(Debug, Clone)]
pub struct Session {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Session {
    /// Requests reuse idle connections.
    pub fn keep_alive(addr: SocketAddr) -> Self {
        Self::with_idle_connections(addr, usize::MAX)
    }

    /// Every request opens its own connection.
    pub fn fresh_connections(addr: SocketAddr) -> Self {
        Self::with_idle_connections(addr, 0)
    }

    fn with_idle_connections(addr: SocketAddr, idle: usize) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(idle)
            .build_http::<Full<Bytes>>();
        Self { addr, client }
    }

    /// Sends `method path` with `headers` (a `host` header replaces the address as Host).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let addr = self.addr;
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(Bytes::new()))?;
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("{method} http://{addr}{path}"))?;
        Reply::read(response).await
    }
}

impl Reply {
    /// Reads a whole response.
    pub async fn read(response: hyper::Response<hyper::body::Incoming>) -> anyhow::Result<Self> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Self {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// `GET path` with no extra headers.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    request(addr, "GET", path, &[]).await
}

/// `GET path`, its body read as JSON (a controller's `/status`, an Envoy's `/config_dump`).
pub async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let reply = get(addr, path).await?;
    serde_json::from_str(&reply.body).with_context(|| format!("GET http://{addr}{path}"))
}

/// Counter or gauge `name` from the Envoy admin at `admin` (0 when Envoy has no such stat).
pub async fn stat(admin: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let reply = get(admin, &format!("/stats?filter=^{name}$")).await?;
    Ok(reply
        .body
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// The serial numbers (lowercase hex, no leading zeros) of the CA certificates in the trust
/// bundles the Envoy at `admin` has applied (its active secrets in `/config_dump`; `/certs`
/// would also list contexts that connections opened earlier still hold).
pub async fn trusted_ca_serials(
    admin: SocketAddr,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut serials = std::collections::BTreeSet::new();
    for config in active_secrets(admin).await? {
        let Some(pem) =
            config["secret"]["validation_context"]["trusted_ca"]["inline_string"].as_str()
        else {
            continue;
        };
        for (der, _) in weft_certs::certificates(pem)? {
            serials.insert(weft_certs::serial_hex(&der)?);
        }
    }
    Ok(serials)
}

/// The workload certificates the Envoy at `admin` has applied (its active secrets in
/// `/config_dump`), DER.
pub async fn applied_certificates(admin: SocketAddr) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut certificates = Vec::new();
    for config in active_secrets(admin).await? {
        if let Some(pem) =
            config["secret"]["tls_certificate"]["certificate_chain"]["inline_string"].as_str()
        {
            certificates.push(weft_certs::first_certificate_der(pem)?);
        }
    }
    Ok(certificates)
}

/// The secrets the Envoy at `admin` has applied (`/config_dump`, private keys redacted).
async fn active_secrets(admin: SocketAddr) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut dump = get_json(admin, "/config_dump?resource=dynamic_active_secrets").await?;
    Ok(match dump["configs"].take() {
        serde_json::Value::Array(configs) => configs,
        _ => Vec::new(),
    })
}
