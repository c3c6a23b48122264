//! The ADS service over real gRPC: a client speaks to it as Envoy does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Status, Streaming};
use weft_xds::cache::SnapshotCache;
use weft_xds::protocol::{Event, TypeStatus};
use weft_xds::server::{Admission, AdsService};
use weft_xds::snapshot::{LISTENER, Resource, Snapshot};

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(String, Event)>>,
    disconnected: Mutex<Vec<String>>,
}

impl Admission for Recorder {
    fn admit(&self, node: &Node, peer: Option<&[Vec<u8>]>) -> Result<String, Status> {
        assert!(peer.is_none(), "plaintext in this test");
        if node.id == "intruder" {
            return Err(Status::permission_denied("not a workload of this mesh"));
        }
        Ok(node.id.clone())
    }
    fn on_event(&self, key: &str, event: &Event) {
        self.events
            .lock()
            .unwrap()
            .push((key.to_owned(), event.clone()));
    }
    fn on_disconnect(&self, key: &str, _status: &[TypeStatus]) {
        self.disconnected.lock().unwrap().push(key.to_owned());
    }
}

fn listeners(content: &str) -> Arc<Snapshot> {
    let mut snapshot = Snapshot::new();
    snapshot.insert(
        LISTENER,
        Resource {
            name: "inbound".into(),
            version: content.into(),
            body: Any {
                type_url: LISTENER.into(),
                value: Vec::new(),
            },
        },
    );
    Arc::new(snapshot)
}

async fn start(cache: Arc<SnapshotCache>, recorder: Arc<Recorder>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsService::new(cache, recorder).into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{address}")
}

struct Proxy {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Proxy {
    async fn connect(url: &str, node: &str) -> Result<Self, Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_owned())
            .await
            .unwrap();
        let (requests, outgoing) = mpsc::channel(8);
        requests
            .send(DiscoveryRequest {
                node: Some(Node {
                    id: node.into(),
                    ..Node::default()
                }),
                type_url: LISTENER.into(),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        Ok(Self {
            requests,
            responses,
        })
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, Status> {
        tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await
            .expect("a response within 5 s")?
            .ok_or_else(|| Status::cancelled("stream ended"))
    }

    async fn reply(&self, response: &DiscoveryResponse, error: Option<&str>) {
        self.requests
            .send(DiscoveryRequest {
                type_url: response.type_url.clone(),
                version_info: if error.is_some() {
                    String::new()
                } else {
                    response.version_info.clone()
                },
                response_nonce: response.nonce.clone(),
                error_detail: error.map(|message| rpc::Status {
                    code: 3,
                    message: message.into(),
                    details: Vec::new(),
                }),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
    }
}

/// Polls `recorder` until `what` holds (5 s at most).
async fn until(recorder: &Recorder, what: impl Fn(&[(String, Event)]) -> bool) {
    for _ in 0..500 {
        if what(&recorder.events.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not seen: {:?}", recorder.events.lock().unwrap());
}

#[tokio::test]
async fn a_proxy_gets_its_snapshot_then_each_change_and_a_nack_is_recorded_not_resent() {
    let cache = Arc::new(SnapshotCache::new());
    let recorder = Arc::new(Recorder::default());
    let url = start(cache.clone(), recorder.clone()).await;
    cache.set("shop/api-0", listeners("one"));
    let mut proxy = Proxy::connect(&url, "shop/api-0").await.unwrap();
    let first = proxy.next().await.unwrap();
    assert_eq!(first.resources.len(), 1);
    proxy.reply(&first, None).await;
    until(&recorder, |events| {
        events
            .iter()
            .any(|(key, e)| key == "shop/api-0" && matches!(e, Event::Ack { .. }))
    })
    .await;

    cache.set("shop/api-0", listeners("two"));
    let second = proxy.next().await.unwrap();
    assert_ne!(second.version_info, first.version_info);
    proxy
        .reply(&second, Some("Unable to create Wasm plugin weft"))
        .await;
    until(&recorder, |events| {
        events.iter().any(
            |(_, e)| matches!(e, Event::Nack { version, .. } if *version == second.version_info),
        )
    })
    .await;
    // The same content set again: nothing is sent; a fix is.
    assert!(!cache.set("shop/api-0", listeners("two")));
    cache.set("shop/api-0", listeners("three"));
    let third = proxy.next().await.unwrap();
    assert_ne!(third.version_info, second.version_info);

    // Another proxy's snapshot never reaches this one.
    cache.set("shop/web-0", listeners("four"));
    proxy.reply(&third, None).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), proxy.responses.message())
            .await
            .is_err(),
        "nothing more for shop/api-0"
    );
}

#[tokio::test]
async fn a_proxy_the_admission_refuses_gets_its_status() {
    let cache = Arc::new(SnapshotCache::new());
    let recorder = Arc::new(Recorder::default());
    let url = start(cache, recorder).await;
    let status = match Proxy::connect(&url, "intruder").await {
        Ok(mut proxy) => proxy.next().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
}

#[tokio::test]
async fn a_disconnect_is_reported() {
    let cache = Arc::new(SnapshotCache::new());
    let recorder = Arc::new(Recorder::default());
    let url = start(cache.clone(), recorder.clone()).await;
    cache.set("shop/api-0", listeners("one"));
    let mut proxy = Proxy::connect(&url, "shop/api-0").await.unwrap();
    proxy.next().await.unwrap();
    drop(proxy);
    for _ in 0..500 {
        if !recorder.disconnected.lock().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the disconnect was not reported");
}

#[tokio::test]
async fn the_incremental_method_is_refused_with_what_to_set_instead() {
    let cache = Arc::new(SnapshotCache::new());
    let recorder = Arc::new(Recorder::default());
    let url = start(cache, recorder).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .unwrap();
    let status = client
        .delta_aggregated_resources(tokio_stream::iter(vec![DeltaDiscoveryRequest::default()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status}");
    assert!(status.message().contains("AGGREGATED_GRPC"), "{status}");
}
