//! Fuzz target over the xDS state machine of one ADS stream (`weft_xds::protocol::Stream`):
//! arbitrary sequences of a proxy's requests (first requests, ACKs, NACKs, stale or unknown
//! nonces, subscription changes, any version claimed), snapshot updates and reconnects, with a
//! model of the proxy beside it. After every step the protocol's rules must hold:
//! - a response is only for a type the proxy subscribed to, and carries exactly the resources
//!   of its subscription that the current snapshot holds; for endpoints, it may carry only
//!   those that changed, and then what the proxy holds is still every resource of its
//!   subscription as the snapshot has it;
//! - a version the proxy NACKed is never sent again on that stream;
//! - content is never sent twice in a row (only a new subscription, and endpoints or routes
//!   once the proxy applied a cluster or listener change, are answered with what was sent
//!   before);
//! - nonces are never reused on a stream;
//! and at the end, once the proxy has ACKed everything it was sent, every subscription holds
//! the snapshot's current content (unless that content is the version it refused).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use weft_xds::protocol::{Event, Output, Stream};
use weft_xds::snapshot::{
    CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, PUSH_ORDER, ROUTE, Resource, SECRET, Snapshot,
    is_wildcard_type, set_version,
};

const TYPES: [&str; 6] = [CLUSTER, ENDPOINT, SECRET, LISTENER, EXTENSION_CONFIG, ROUTE];
const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Arbitrary)]
enum NonceChoice {
    /// A first request (a new subscription).
    Empty,
    /// The last nonce the proxy received for the type.
    Latest,
    /// An older nonce it received, or one never sent.
    Stale(u8),
}

#[derive(Debug, Arbitrary)]
enum VersionChoice {
    Empty,
    /// The last version received for the type.
    Latest,
    Other(u8),
}

#[derive(Debug, Arbitrary)]
enum Step {
    Request {
        kind: u8,
        /// Which of NAMES it asks for (bit i: NAMES[i]); for CDS and LDS, 0 is the wildcard.
        names: u8,
        wildcard_star: bool,
        nonce: NonceChoice,
        version: VersionChoice,
        nack: bool,
    },
    /// A new snapshot: for each type and name, absent (0) or one of three contents.
    Snapshot([[u8; 3]; 6]),
    /// The stream ends and the proxy opens a new one (the server's state of the old one is
    /// gone; the proxy keeps what it applied).
    Reconnect,
}

/// What the proxy knows of one type on the current stream.
#[derive(Debug, Default, Clone)]
struct ProxyType {
    /// The names it wants (empty on CDS/LDS: all).
    names: BTreeSet<String>,
    wildcard: bool,
    /// Every nonce received, the last one last.
    nonces: Vec<String>,
    /// The last version received on this stream.
    received: Option<String>,
    /// The version it holds (received, or claimed on a first request and not contradicted).
    holds: Option<String>,
    /// Every version the server recorded as NACKed on this stream.
    refused: BTreeSet<String>,
    /// Whether the server processed a request of this type on this stream.
    subscribed: bool,
    /// Endpoints: what it holds by name, and whether that is known (not after a NACK, until
    /// a response brings everything again).
    held: BTreeMap<String, Any>,
    held_known: bool,
}

struct Model {
    stream: Stream,
    snapshot: Option<Arc<Snapshot>>,
    types: BTreeMap<&'static str, ProxyType>,
    nonces_seen: BTreeSet<String>,
}

fn snapshot_of(contents: &[[u8; 3]; 6]) -> Arc<Snapshot> {
    let mut snapshot = Snapshot::new();
    for (type_url, row) in TYPES.iter().zip(contents) {
        // Some resources in a layer over the snapshot's own ones, as the controller shares the
        // mesh's clusters.
        let mut layer = weft_xds::snapshot::Resources::new();
        for (name, content) in NAMES.iter().zip(row) {
            let layered = content & 4 != 0;
            let content = content % 4;
            if content == 0 {
                continue;
            }
            let resource = Resource {
                name: (*name).to_owned(),
                version: format!("{name}{content}"),
                body: Any {
                    type_url: (*type_url).to_owned(),
                    value: format!("{name}{content}").into_bytes(),
                },
            };
            if layered {
                layer.insert(resource.name.clone(), Arc::new(resource));
            } else {
                snapshot.insert(type_url, resource);
            }
        }
        if !layer.is_empty() {
            snapshot.add_layer(type_url, Arc::new(layer));
        }
    }
    Arc::new(snapshot)
}

impl Model {
    fn new() -> Self {
        Self {
            stream: Stream::new(),
            snapshot: None,
            types: TYPES.iter().map(|t| (*t, ProxyType::default())).collect(),
            nonces_seen: BTreeSet::new(),
        }
    }

    /// The resources `type_url`'s subscription selects in the current snapshot.
    fn expected(&self, type_url: &str) -> Vec<Resource> {
        let (Some(snapshot), Some(proxy)) = (&self.snapshot, self.types.get(type_url)) else {
            return Vec::new();
        };
        let Some(resources) = snapshot.resources(type_url) else {
            return Vec::new();
        };
        resources
            .values()
            .filter(|r| proxy.wildcard || proxy.names.contains(&r.name))
            .map(|r| (**r).clone())
            .collect()
    }

    /// Checks one step's output against the rules and folds it into the proxy's view.
    /// `repeat` is the type that may be sent again unchanged in this step, if any.
    fn absorb(&mut self, output: &Output, repeat: Option<&'static str>) {
        for event in &output.events {
            if let Event::Nack { type_url, version, .. } = event {
                let proxy = self.types.get_mut(type_url.as_str()).expect("a known type");
                proxy.refused.insert(version.clone());
            }
        }
        for response in &output.responses {
            // As the proxy reads it: the bytes written, decoded.
            let mut encoded = Vec::new();
            response.encode(&mut encoded);
            assert_eq!(encoded.len(), response.encoded_len(), "encoded length");
            let decoded = DiscoveryResponse::decode(encoded.as_slice()).expect("a response decodes");
            assert_eq!(decoded, response.to_discovery_response(), "the encoding");
            self.check_response(&decoded, repeat);
        }
        if output.responses.len() > 1 {
            let order: Vec<usize> = output
                .responses
                .iter()
                .map(|r| PUSH_ORDER.iter().position(|t| *t == r.type_url).expect("a known type"))
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "pushed out of order: {order:?}");
        }
    }

    fn check_response(&mut self, response: &DiscoveryResponse, repeat: Option<&'static str>) {
        let type_url = TYPES
            .iter()
            .copied()
            .find(|t| *t == response.type_url)
            .expect("a response of a known type");
        assert!(self.snapshot.is_some(), "a response before any snapshot");
        assert!(
            self.nonces_seen.insert(response.nonce.clone()),
            "nonce {} reused",
            response.nonce
        );
        let expected = self.expected(type_url);
        let bodies: Vec<Any> = expected.iter().map(|r| r.body.clone()).collect();
        let proxy = self.types.get_mut(type_url).expect("a known type");
        if type_url == ENDPOINT && response.resources != bodies {
            // Only what changed: a part of the subscription, in its order.
            let mut rest = bodies.iter();
            assert!(
                response.resources.iter().all(|body| rest.any(|b| b == body)),
                "{type_url}: not a part of its subscription's resources"
            );
        } else {
            assert_eq!(response.resources, bodies, "{type_url}: not its subscription's resources");
            proxy.held_known = true;
        }
        if type_url == ENDPOINT {
            for body in &response.resources {
                let name = String::from_utf8_lossy(&body.value[..1]).into_owned();
                proxy.held.insert(name, body.clone());
            }
            if proxy.held_known {
                for resource in &expected {
                    assert_eq!(
                        proxy.held.get(&resource.name),
                        Some(&resource.body),
                        "{type_url}: after a response of changes only, the proxy lacks {}'s current content",
                        resource.name
                    );
                }
            }
        }
        assert_eq!(response.version_info, set_version(expected.iter()), "{type_url}: version");
        assert!(proxy.subscribed, "{type_url}: a response without a subscription");
        assert!(
            !proxy.refused.contains(&response.version_info),
            "{type_url}: a NACKed version sent again"
        );
        if repeat != Some(type_url) {
            assert_ne!(
                proxy.received.as_deref(),
                Some(response.version_info.as_str()),
                "{type_url}: the same content sent twice in a row"
            );
        }
        proxy.nonces.push(response.nonce.clone());
        proxy.received = Some(response.version_info.clone());
        proxy.holds = Some(response.version_info.clone());
    }

    fn request(
        &mut self,
        type_url: &'static str,
        names: BTreeSet<String>,
        star: bool,
        nonce: &NonceChoice,
        version: &VersionChoice,
        nack: bool,
    ) {
        let proxy = self.types.get(type_url).cloned().unwrap_or_default();
        let response_nonce = match nonce {
            NonceChoice::Empty => String::new(),
            NonceChoice::Latest => proxy.nonces.last().cloned().unwrap_or_default(),
            NonceChoice::Stale(i) => {
                let older = proxy.nonces.len().saturating_sub(1);
                if older > 0 {
                    proxy.nonces[usize::from(*i) % older].clone()
                } else {
                    format!("unknown-{i}")
                }
            }
        };
        let first = response_nonce.is_empty();
        let version_info = match version {
            VersionChoice::Empty => String::new(),
            // A new subscription names what the proxy holds (Envoy after a reconnect); an
            // answer names what it was last sent.
            VersionChoice::Latest if first => proxy.holds.clone().unwrap_or_default(),
            VersionChoice::Latest => proxy.received.clone().unwrap_or_default(),
            VersionChoice::Other(i) => format!("v{i}"),
        };
        let current = proxy.nonces.last().is_some_and(|n| *n == response_nonce);
        let mut resource_names: Vec<String> = names.iter().cloned().collect();
        if star {
            resource_names.push("*".to_owned());
        }
        let request = DiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names,
            version_info: version_info.clone(),
            response_nonce,
            error_detail: (nack && !first).then(|| Status {
                code: 3,
                message: "refused".to_owned(),
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        };
        let output = self.stream.on_request(&request);
        // An applied cluster change may bring the endpoints again, unchanged (warming).
        let repeat = if first {
            Some(type_url)
        } else if type_url == CLUSTER && current && !nack {
            Some(ENDPOINT)
        } else if type_url == LISTENER && current && !nack {
            Some(ROUTE)
        } else if (type_url == ENDPOINT || type_url == ROUTE) && current && !nack {
            // Asked again for what it has: it may be warming a changed cluster or listener.
            Some(type_url)
        } else {
            None
        };
        if first || current {
            // The server takes this request: its subscription is the proxy's.
            let proxy = self.types.get_mut(type_url).expect("a known type");
            if nack && !first {
                // Refused: what it holds is not known from here.
                proxy.held_known = false;
            }
            proxy.subscribed = true;
            proxy.wildcard = is_wildcard_type(type_url) && (names.is_empty() || star);
            proxy.names = names;
            if first {
                // A fresh subscription: earlier nonces mean nothing any more, and the server
                // compares against the version the proxy says it has.
                proxy.nonces.clear();
                proxy.received = None;
                if !version_info.is_empty() {
                    proxy.holds = Some(version_info);
                }
            }
        } else {
            assert!(
                output.responses.is_empty(),
                "{type_url}: a stale request was answered"
            );
        }
        self.absorb(&output, repeat);
    }

    fn reconnect(&mut self) {
        self.stream = Stream::new();
        // Nonces are the stream's own.
        self.nonces_seen.clear();
        for proxy in self.types.values_mut() {
            *proxy = ProxyType {
                holds: proxy.holds.clone(),
                held: proxy.held.clone(),
                ..ProxyType::default()
            };
        }
        if let Some(snapshot) = self.snapshot.clone() {
            let output = self.stream.on_snapshot(snapshot);
            assert!(output.responses.is_empty(), "a push before any subscription");
        }
    }

    /// The proxy ACKs everything it holds until nothing more comes, then every subscription
    /// must hold the current content or have refused it.
    fn settle(&mut self) {
        for _ in 0..8 {
            let mut quiet = true;
            for type_url in TYPES {
                let proxy = self.types[type_url].clone();
                if !proxy.subscribed || proxy.nonces.is_empty() {
                    continue;
                }
                let before = self.nonces_seen.len();
                self.request(
                    type_url,
                    proxy.names.clone(),
                    false,
                    &NonceChoice::Latest,
                    &VersionChoice::Latest,
                    false,
                );
                quiet &= self.nonces_seen.len() == before;
            }
            if quiet {
                break;
            }
        }
        if self.snapshot.is_none() {
            return;
        }
        for type_url in TYPES {
            let proxy = &self.types[type_url];
            if !proxy.subscribed {
                continue;
            }
            let expected = set_version(self.expected(type_url).iter());
            assert!(
                proxy.holds.as_deref() == Some(expected.as_str())
                    || proxy.refused.contains(&expected),
                "{type_url}: the proxy holds {:?} and refused {:?}, not the current {expected}",
                proxy.holds,
                proxy.refused
            );
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut model = Model::new();
    for step in steps.iter().take(64) {
        match step {
            Step::Request { kind, names, wildcard_star, nonce, version, nack } => {
                let type_url = TYPES[usize::from(*kind) % TYPES.len()];
                let names: BTreeSet<String> = NAMES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| names & (1 << i) != 0)
                    .map(|(_, n)| (*n).to_owned())
                    .collect();
                model.request(type_url, names, *wildcard_star, nonce, version, *nack);
            }
            Step::Snapshot(contents) => {
                let snapshot = snapshot_of(contents);
                model.snapshot = Some(snapshot.clone());
                let output = model.stream.on_snapshot(snapshot);
                model.absorb(&output, None);
            }
            Step::Reconnect => model.reconnect(),
        }
    }
    model.settle();
});
