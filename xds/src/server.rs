//! The ADS gRPC service: reads a stream's requests, hands them and its proxy's snapshots to a
//! [`Stream`], and writes the responses. Who a proxy is (and whether it may connect) is the
//! caller's [`Admission`]; what happened on each stream goes back to it as [`Event`]s.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::SERVICE_NAME;
use tokio::sync::watch;
use tonic::codec::BufferSettings;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstDecoder;

use crate::cache::SnapshotCache;
use crate::protocol::{Event, Output, Response, Stream, TypeStatus};
use crate::snapshot::SharedSnapshot;

/// The gRPC method of Envoy's ADS client (state of the world).
const STREAM_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// Why every other method (the incremental one above all) is refused.
const ONLY_STATE_OF_THE_WORLD: &str =
    "weft serves state-of-the-world ADS; set api_type: AGGREGATED_GRPC";

/// What each stream's request buffer starts with, in bytes (tonic's default is 8 KiB): requests
/// are small, and the buffer grows for a larger one.
const REQUEST_BUFFER: usize = 1024;

/// The largest request read, as tonic's default.
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// The client certificates (DER, leaf first) of the TLS connection a request came on, put in
/// the request's extensions by the server that terminated TLS.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Arc<Vec<Vec<u8>>>);

/// The caller's side of each stream.
pub trait Admission: Send + Sync + 'static {
    /// Who the proxy that sent `node` over a connection with `peer_certificates` (DER, leaf
    /// first; `None` without TLS) is: the key of its snapshot; or why it may not connect.
    ///
    /// # Errors
    /// The status the stream ends with (`PERMISSION_DENIED`, `UNAUTHENTICATED`, ...).
    fn admit(&self, node: &Node, peer_certificates: Option<&[Vec<u8>]>) -> Result<String, Status>;

    /// Something happened on `key`'s stream.
    fn on_event(&self, key: &str, event: &Event);

    /// `key`'s stream ended, in this state.
    fn on_disconnect(&self, key: &str, status: &[TypeStatus]);

    /// `version` of `type_url` is being sent on `key`'s stream.
    fn on_push(&self, key: &str, type_url: &str, version: &str) {
        let _ = (key, type_url, version);
    }
}

/// The ADS service over a [`SnapshotCache`].
pub struct AdsService<A> {
    cache: Arc<SnapshotCache>,
    admission: Arc<A>,
    stop: watch::Receiver<bool>,
    /// Keeps the default stop signal's sender alive, so that it never fires.
    _never: Arc<watch::Sender<bool>>,
}

impl<A: Admission> AdsService<A> {
    /// A service serving `cache`, admitting proxies through `admission`.
    pub fn new(cache: Arc<SnapshotCache>, admission: Arc<A>) -> Self {
        let (never, stop) = watch::channel(false);
        Self {
            cache,
            admission,
            stop,
            _never: Arc::new(never),
        }
    }

    /// The same service, ending every open stream (with UNAVAILABLE, so proxies reconnect)
    /// when `stop` turns true: long-lived streams would otherwise outlive a server that stops.
    #[must_use]
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// The service as tonic's router serves it.
    pub fn into_server(self) -> AdsServer<A> {
        AdsServer(Arc::new(self))
    }
}

/// The ADS service as a gRPC service of tonic's router; every method but the state-of-the-world
/// one is refused. Written out rather than generated because tonic's generated service encodes
/// a stream's responses into one buffer that it keeps, for as long as the stream is open, at
/// the largest size it ever grew to: a whole push (the endpoints of every Service among it)
/// held for every connected proxy. Here each response is framed in an allocation of its own.
pub struct AdsServer<A>(Arc<AdsService<A>>);

impl<A> Clone for AdsServer<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<A> NamedService for AdsServer<A> {
    const NAME: &'static str = SERVICE_NAME;
}

impl<A: Admission> Service<http::Request<tonic::body::Body>> for AdsServer<A> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != STREAM_METHOD {
                return Ok(Status::unimplemented(ONLY_STATE_OF_THE_WORLD).into_http());
            }
            let (parts, body) = request.into_parts();
            let requests = Streaming::new_request(
                ProstDecoder::<DiscoveryRequest>::new(BufferSettings::new(REQUEST_BUFFER, 0)),
                body,
                None,
                Some(MAX_REQUEST),
            );
            let session = service.session(Request::from_http(http::Request::from_parts(
                parts, requests,
            )));
            let responses = futures_util::stream::unfold(session, |mut session| async move {
                let response = session.next().await?;
                Some((response, session))
            });
            let mut response = http::Response::new(tonic::body::Body::new(ResponseBody {
                responses: Box::pin(responses),
                ended: false,
            }));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok(response)
        })
    }
}

impl<A: Admission> AdsService<A> {
    fn session(&self, request: Request<Streaming<DiscoveryRequest>>) -> Session<A> {
        // From the server that terminated TLS, or from tonic's own TLS.
        let peer_certificates = match request.extensions().get::<PeerCertificates>() {
            Some(certificates) if !certificates.0.is_empty() => Some(certificates.0.to_vec()),
            Some(_) => None,
            None => request
                .peer_certs()
                .map(|certs| certs.iter().map(|cert| cert.to_vec()).collect()),
        };
        Session {
            cache: self.cache.clone(),
            admission: self.admission.clone(),
            peer_certificates,
            requests: request.into_inner(),
            stop: self.stop.clone(),
            admitted: None,
            stream: Stream::new(),
            queued: VecDeque::new(),
            ended: false,
        }
    }
}

/// The responses of one ADS stream.
type Responses = Pin<Box<dyn futures_util::Stream<Item = Result<Response, Status>> + Send>>;

/// The response body of one ADS stream: each response framed as gRPC frames a message (a
/// flag byte, the length in four big-endian bytes, the message) in an allocation of its own,
/// freed once written; then the trailers with the stream's status.
struct ResponseBody {
    responses: Responses,
    ended: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(self.responses.as_mut().poll_next(context)) {
            Some(Ok(response)) => {
                return Poll::Ready(Some(framed(&response).map(http_body::Frame::data)));
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(
            status
                .add_header(&mut trailers)
                .map(|()| http_body::Frame::trailers(trailers)),
        ))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// `response` as one gRPC message.
fn framed(response: &Response) -> Result<Bytes, Status> {
    let length = response.encoded_len();
    let prefix = u32::try_from(length)
        .map_err(|_| Status::internal(format!("a response of {length} bytes is too large")))?;
    let mut message = Vec::with_capacity(5 + length);
    message.push(0); // not compressed
    message.extend_from_slice(&prefix.to_be_bytes());
    response.encode(&mut message);
    Ok(message.into())
}

/// One ADS stream, driven by the connection polling for its next response: no task or channel
/// of its own, so that an open stream costs only this state. It is dropped when the stream ends,
/// whichever side ends it, and that is when the admission hears of the disconnect.
struct Session<A: Admission> {
    cache: Arc<SnapshotCache>,
    admission: Arc<A>,
    /// Until the proxy is admitted.
    peer_certificates: Option<Vec<Vec<u8>>>,
    requests: Streaming<DiscoveryRequest>,
    stop: watch::Receiver<bool>,
    /// The proxy's key and its snapshots, once admitted.
    admitted: Option<(String, watch::Receiver<Option<SharedSnapshot>>)>,
    stream: Stream,
    queued: VecDeque<Result<Response, Status>>,
    ended: bool,
}

impl<A: Admission> Session<A> {
    /// The next response, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Result<Response, Status>> {
        loop {
            if let Some(response) = self.queued.pop_front() {
                return Some(response);
            }
            if self.ended {
                return None;
            }
            self.step().await;
        }
    }

    /// Waits for what happens next on the stream and queues what it calls for.
    async fn step(&mut self) {
        let Some((key, snapshots)) = &mut self.admitted else {
            self.admit().await;
            return;
        };
        let output = tokio::select! {
            () = stopping(&mut self.stop) => {
                self.end(Status::unavailable("the controller is stopping"));
                return;
            }
            request = self.requests.message() => match request {
                Ok(Some(request)) => self.stream.on_request(&request),
                Ok(None) | Err(_) => {
                    self.ended = true;
                    return;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    self.ended = true;
                    return;
                }
                let current = snapshots.borrow_and_update().clone();
                match current {
                    Some(snapshot) => self.stream.on_snapshot(snapshot),
                    None => Output::default(),
                }
            }
        };
        if let Some(end) = queue(&*self.admission, &mut self.queued, key, output) {
            self.end(end);
        }
    }

    /// Reads the first request, which must name the node, and asks the admission about it.
    async fn admit(&mut self) {
        let first = match self.requests.message().await {
            Ok(Some(first)) => first,
            Ok(None) | Err(_) => {
                self.ended = true;
                return;
            }
        };
        let Some(node) = &first.node else {
            self.end(Status::invalid_argument(
                "the first request of a stream must carry the node",
            ));
            return;
        };
        let peer_certificates = self.peer_certificates.take();
        let key = match self.admission.admit(node, peer_certificates.as_deref()) {
            Ok(key) => key,
            Err(status) => {
                self.end(status);
                return;
            }
        };
        let mut snapshots = self.cache.watch(&key);
        if let Some(snapshot) = snapshots.borrow_and_update().clone() {
            // No type is subscribed yet: this sends nothing, it only arms the stream.
            self.stream.on_snapshot(snapshot);
        }
        let output = self.stream.on_request(&first);
        let end = queue(&*self.admission, &mut self.queued, &key, output);
        self.admitted = Some((key, snapshots));
        if let Some(end) = end {
            self.end(end);
        }
    }

    fn end(&mut self, status: Status) {
        self.queued.push_back(Err(status));
        self.ended = true;
    }
}

impl<A: Admission> Drop for Session<A> {
    fn drop(&mut self) {
        if let Some((key, _)) = &self.admitted {
            self.admission.on_disconnect(key, &self.stream.status());
        }
    }
}

/// Tells `admission` what `key`'s stream observed and queues its responses; returns the
/// status the stream ends with, when the step ends it.
fn queue<A: Admission>(
    admission: &A,
    queued: &mut VecDeque<Result<Response, Status>>,
    key: &str,
    output: Output,
) -> Option<Status> {
    for event in &output.events {
        admission.on_event(key, event);
    }
    for response in &output.responses {
        admission.on_push(key, &response.type_url, &response.version_info);
    }
    queued.extend(output.responses.into_iter().map(Ok));
    output.end.map(Status::resource_exhausted)
}

/// Resolves when `stop` turns true, or never if its sender is gone.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
