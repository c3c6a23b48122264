//! Real upstream servers on loopback: an HTTP server that says who it is and records what it
//! received (and, on a few paths, fails on purpose: see [`HttpUpstream`]), and a TCP echo
//! server that counts connections. Each stops when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names and values, lower-case names.
    pub headers: Vec<(String, String)>,
}

/// An HTTP/1.1 upstream that answers 200 with `upstream <name>: <method> <path>` and, unless
/// started for load, records every request it receives. A few paths answer otherwise, for
/// tests of what a proxy makes of failures: `/status/N` answers status N; `/grpc/N` answers
/// as a gRPC server would with status N (trailers-only: 200, `content-type: application/grpc`,
/// `grpc-status: N`); `/delay/MS` answers 200 after MS milliseconds; `/reset` closes the
/// connection without answering; `/flaky/KEY/N` answers 503 to the first N requests for KEY
/// and 200 afterwards, each body ending with `attempt K`. `POST /upstream/fail` makes it answer
/// 500 to everything else until `POST /upstream/heal`. Every answer says where it was served in
/// `x-served-by` (the listening address), so replicas of one name can be told apart, and, when
/// asked with [`ECHO`], what it saw of a request header.
#[derive(Debug)]
pub struct HttpUpstream {
    name: String,
    addr: SocketAddr,
    /// `None` for an upstream started for load, which keeps nothing.
    seen: Option<Arc<Mutex<Vec<Seen>>>>,
    task: JoinHandle<()>,
}

impl HttpUpstream {
    /// Starts the server on a free loopback port.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the server on `address`.
    pub async fn start_on(name: &str, address: SocketAddr) -> anyhow::Result<Self> {
        Self::listen(name, address, true).await
    }

    /// Starts the server on `address` without recording requests, for load generators and
    /// long-running demos that send millions of them ([`HttpUpstream::seen`] stays empty).
    pub async fn start_for_load(name: &str, address: SocketAddr) -> anyhow::Result<Self> {
        Self::listen(name, address, false).await
    }

    async fn listen(name: &str, address: SocketAddr, record: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let seen = record.then(|| Arc::new(Mutex::new(Vec::new())));
        let task = tokio::spawn(serve_http(listener, name.to_owned(), seen.clone()));
        Ok(Self {
            name: name.to_owned(),
            addr,
            seen,
            task,
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, oldest first (none for an upstream started for load).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .as_ref()
            .and_then(|seen| seen.lock().ok().map(|seen| seen.clone()))
            .unwrap_or_default()
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request header that names another request header whose value the upstream sends back
/// in [`ECHOED`]: what the application saw of it.
pub const ECHO: &str = "x-echo";
/// The response header that carries the value of the header [`ECHO`] named.
pub const ECHOED: &str = "x-echoed";

/// What an upstream remembers between requests: whether it fails everything, and how often
/// each flaky key was asked for.
#[derive(Debug, Default)]
struct Behaviour {
    served_by: String,
    failing: std::sync::atomic::AtomicBool,
    flaky: Mutex<std::collections::HashMap<String, u64>>,
}

async fn serve_http(listener: TcpListener, name: String, seen: Option<Arc<Mutex<Vec<Seen>>>>) {
    let behaviour = Arc::new(Behaviour {
        served_by: listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        ..Behaviour::default()
    });
    while let Ok((stream, _)) = listener.accept().await {
        let name = name.clone();
        let seen = seen.clone();
        let behaviour = behaviour.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let path = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let body = format!("upstream {name}: {} {path}\n", request.method());
                if let Some(Ok(mut seen)) = seen.as_ref().map(|seen| seen.lock()) {
                    seen.push(Seen {
                        method: request.method().to_string(),
                        path,
                        headers: request
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect(),
                    });
                }
                let name = name.clone();
                let path = request.uri().path().to_owned();
                let behaviour = behaviour.clone();
                // `x-echo: NAME` asks for what the application saw of request header NAME.
                let echoed = request
                    .headers()
                    .get(ECHO)
                    .and_then(|name| name.to_str().ok())
                    .and_then(|name| request.headers().get(name))
                    .cloned();
                async move {
                    let mut response = respond(&name, &path, body, &behaviour).await?;
                    if let Some(value) = echoed {
                        response.headers_mut().insert(ECHOED, value);
                    }
                    Ok::<_, std::io::Error>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to a request for `path` (see [`HttpUpstream`]); an error makes hyper close the
/// connection without a response.
async fn respond(
    name: &str,
    path: &str,
    mut body: String,
    behaviour: &Behaviour,
) -> std::io::Result<Response<Full<Bytes>>> {
    use std::sync::atomic::Ordering;
    let number = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
    };
    let response = Response::builder()
        .header("x-upstream", name)
        .header("x-served-by", &behaviour.served_by);
    let response = if let Some(failing) = match path {
        "/upstream/fail" => Some(true),
        "/upstream/heal" => Some(false),
        _ => None,
    } {
        behaviour.failing.store(failing, Ordering::SeqCst);
        response
    } else if behaviour.failing.load(Ordering::SeqCst) {
        response.status(500)
    } else if let Some((key, failures)) = path
        .strip_prefix("/flaky/")
        .and_then(|rest| rest.rsplit_once('/'))
        .and_then(|(key, n)| Some((key.to_owned(), n.parse::<u64>().ok()?)))
    {
        let attempt = {
            let mut flaky = behaviour
                .flaky
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = flaky.entry(key).or_default();
            *count += 1;
            *count
        };
        body = format!("{}: attempt {attempt}\n", body.trim_end());
        response.status(if attempt <= failures { 503 } else { 200 })
    } else if path == "/reset" {
        return Err(std::io::Error::other("the test asked for a reset"));
    } else if let Some(status) = number("/status/") {
        response.status(u16::try_from(status).unwrap_or(500))
    } else if let Some(grpc_status) = number("/grpc/") {
        // Trailers-only: the status in the headers, no message.
        return Ok(response
            .header("content-type", "application/grpc")
            .header("grpc-status", grpc_status.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap_or_default());
    } else if let Some(milliseconds) = number("/delay/") {
        tokio::time::sleep(std::time::Duration::from_millis(milliseconds)).await;
        response
    } else {
        response
    };
    Ok(response
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default())
}

/// A TCP server that echoes every byte back and counts the connections it accepted and the
/// bytes it received.
#[derive(Debug)]
pub struct TcpEcho {
    addr: SocketAddr,
    connections: Arc<Mutex<usize>>,
    bytes: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl TcpEcho {
    /// Starts the server on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(Mutex::new(0));
        let bytes = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&connections);
        let byte_counter = Arc::clone(&bytes);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                if let Ok(mut count) = counter.lock() {
                    *count += 1;
                }
                let byte_counter = Arc::clone(&byte_counter);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    while let Ok(read) = stream.read(&mut buffer).await {
                        if let Ok(mut total) = byte_counter.lock() {
                            *total += read;
                        }
                        if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            bytes,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many bytes it has received, over all connections.
    pub fn bytes_received(&self) -> usize {
        self.bytes.lock().map(|total| *total).unwrap_or_default()
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.connections
            .lock()
            .map(|count| *count)
            .unwrap_or_default()
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 application that normalises request paths the way web frameworks do before they
/// route, more eagerly than any one of them: it decodes percent-escapes once, reads `\` as `/`
/// (as servers on Windows and some Java ones do), drops `;parameters` from each segment (as
/// servlet containers do, so `..;` is `..`), merges empty segments and resolves `.` and `..`
/// (as Python's `http.server` and most frameworks do). It answers 200 with
/// `upstream <name>: <method> <resolved path>` and records every request as the raw target and
/// the path it resolved it to, so a test sees which resource a request would really reach.
/// It reads request heads with bodies only by `content-length`, which is all Envoy sends it in
/// tests.
#[derive(Debug)]
pub struct NormalisingUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: JoinHandle<()>,
}

impl NormalisingUpstream {
    /// Starts the server on a free loopback port.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_normalising(stream, name.clone(), Arc::clone(&record)));
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far as `(request target as received, path it resolved to)`.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }
}

impl Drop for NormalisingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_normalising(
    mut stream: tokio::net::TcpStream,
    name: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request head (and its body, by content-length) at a time, keep-alive.
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let body_length: usize = lines
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + body_length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        buffer.drain(..head_end + body_length);
        let resolved = normalise_like_a_framework(&target);
        if let Ok(mut seen) = seen.lock() {
            seen.push((target.clone(), resolved.clone()));
        }
        let body = format!("upstream {name}: {method} {resolved}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The path an eager framework serves for request target `target` (see
/// [`NormalisingUpstream`]); the query string is dropped.
pub fn normalise_like_a_framework(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let decoded = crate::tls::percent_decode(path).replace('\\', "/");
    let mut resolved: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        let name = segment.split(';').next().unwrap_or(segment);
        match name {
            "" | "." => {}
            ".." => {
                resolved.pop();
            }
            _ => resolved.push(name),
        }
    }
    let trailing = decoded.ends_with('/') && !resolved.is_empty();
    format!("/{}{}", resolved.join("/"), if trailing { "/" } else { "" })
}
