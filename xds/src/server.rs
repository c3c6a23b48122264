//! The ADS gRPC service: reads a stream's requests, hands them and its proxy's snapshots to a
//! [`Stream`], and writes the responses. Who a proxy is (and whether it may connect) is the
//! caller's [`Admission`]; what happened on each stream goes back to it as [`Event`]s.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::SnapshotCache;
use crate::protocol::{Event, Output, Stream, TypeStatus};

/// Responses buffered per stream before the stream waits for the proxy to read.
const STREAM_BUFFER: usize = 4;

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
}

/// The ADS service over a [`SnapshotCache`].
pub struct AdsService<A> {
    cache: Arc<SnapshotCache>,
    admission: Arc<A>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Keeps the default stop signal's sender alive, so that it never fires.
    _never: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<A: Admission> AdsService<A> {
    /// A service serving `cache`, admitting proxies through `admission`.
    pub fn new(cache: Arc<SnapshotCache>, admission: Arc<A>) -> Self {
        let (never, stop) = tokio::sync::watch::channel(false);
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
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// The service as tonic serves it.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

async fn send(
    sink: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    output: Output,
    admission: &dyn Admission,
    key: &str,
) -> bool {
    for event in &output.events {
        admission.on_event(key, event);
    }
    for response in output.responses {
        if sink.send(Ok(response)).await.is_err() {
            return false;
        }
    }
    true
}

async fn serve_stream<A: Admission>(
    cache: Arc<SnapshotCache>,
    admission: Arc<A>,
    peer_certificates: Option<Vec<Vec<u8>>>,
    mut requests: Streaming<DiscoveryRequest>,
    sink: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Ok(None) | Err(_) => return,
    };
    let Some(node) = first.node.clone() else {
        let _ = sink
            .send(Err(Status::invalid_argument(
                "the first request of a stream must carry the node",
            )))
            .await;
        return;
    };
    let key = match admission.admit(&node, peer_certificates.as_deref()) {
        Ok(key) => key,
        Err(status) => {
            let _ = sink.send(Err(status)).await;
            return;
        }
    };
    let mut snapshots = cache.watch(&key);
    let mut stream = Stream::new();
    if let Some(snapshot) = snapshots.borrow_and_update().clone() {
        // No type is subscribed yet: this sends nothing, it only arms the stream.
        stream.on_snapshot(snapshot);
    }
    let mut open = send(&sink, stream.on_request(&first), &*admission, &key).await;
    while open {
        let output = tokio::select! {
            () = stopping(&mut stop) => {
                let _ = sink.send(Err(Status::unavailable("the controller is stopping"))).await;
                break;
            }
            request = requests.message() => match request {
                Ok(Some(request)) => stream.on_request(&request),
                Ok(None) | Err(_) => break,
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = snapshots.borrow_and_update().clone();
                match current {
                    Some(snapshot) => stream.on_snapshot(snapshot),
                    None => Output::default(),
                }
            }
        };
        open = send(&sink, output, &*admission, &key).await;
    }
    admission.on_disconnect(&key, &stream.status());
}

/// Resolves when `stop` turns true, or never if its sender is gone.
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[tonic::async_trait]
impl<A: Admission> AggregatedDiscoveryService for AdsService<A> {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer_certificates = request
            .peer_certs()
            .map(|certs| certs.iter().map(|cert| cert.to_vec()).collect());
        let (sink, responses) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(serve_stream(
            self.cache.clone(),
            self.admission.clone(),
            peer_certificates,
            request.into_inner(),
            sink,
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(responses)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "weft serves state-of-the-world ADS; set api_type: AGGREGATED_GRPC",
        ))
    }
}
