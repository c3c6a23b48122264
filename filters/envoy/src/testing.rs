//! A host for the native tests of the request and connection paths: it answers as a test sets
//! it up and records what the filter did (a local reply, a header set or removed, a reset, a
//! closed connection, every counter and histogram value).

use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::types::GrpcStatusCode;
use weft_policy::compile::Side;

use crate::edges::MetricHost;
use crate::host::{Host, RequestHeaders};
use crate::{FilterState, HeaderPlan};

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub grpc: bool,
    pub http_status: u32,
    pub grpc_status: GrpcStatusCode,
    pub marker: (String, String),
    pub body: String,
}

/// What a request or connection looks like to the filter, and what the filter did.
#[derive(Debug, Default)]
pub struct RecordingHost {
    /// The verified peer's SPIFFE ID.
    pub peer: Option<String>,
    /// The port the connection was addressed to.
    pub port: u16,
    /// The request's headers.
    pub headers: Vec<(String, String)>,
    /// Whether setting or removing a header fails.
    pub headers_refused: bool,
    /// The clock, and how much it moves at each reading.
    pub now: u64,
    pub tick: u64,
    /// The response status and gRPC status, read at the end.
    pub response_code: u32,
    pub grpc_status: Option<u32>,
    /// The split roll.
    pub roll: u64,
    /// Which header plans were fetched.
    pub fetched: Vec<HeaderPlan>,
    /// What the filter did.
    pub replies: Vec<Reply>,
    pub resets: Vec<String>,
    pub closed: u32,
    pub set: Vec<(String, String)>,
    pub removed: Vec<String>,
    /// Metric names by id, and what each received.
    pub metrics: Vec<String>,
    pub values: BTreeMap<u32, Vec<u64>>,
}

impl RecordingHost {
    /// A request with `headers` from `peer`.
    pub fn request(peer: Option<&str>, headers: &[(&str, &str)]) -> Self {
        Self {
            peer: peer.map(str::to_owned),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            tick: 1_000_000,
            ..Self::default()
        }
    }

    /// The total of every counter or histogram whose name contains `part`.
    pub fn total(&self, part: &str) -> u64 {
        self.metrics
            .iter()
            .enumerate()
            .filter(|(_, name)| name.contains(part))
            .filter_map(|(id, _)| self.values.get(&u32::try_from(id).ok()?))
            .flatten()
            .sum()
    }

    fn define(&mut self, name: &str) -> Option<u32> {
        self.metrics.push(name.to_owned());
        u32::try_from(self.metrics.len() - 1).ok()
    }
}

impl MetricHost for RecordingHost {
    fn define_counter(&mut self, name: &str) -> Option<u32> {
        self.define(name)
    }

    fn define_histogram(&mut self, name: &str) -> Option<u32> {
        self.define(name)
    }

    fn add(&mut self, id: Option<u32>, value: u64) {
        if let Some(id) = id {
            self.values.entry(id).or_default().push(value);
        }
    }

    fn record(&mut self, id: Option<u32>, value: u64) {
        self.add(id, value);
    }
}

impl Host for RecordingHost {
    fn peer_identity(&mut self) -> Option<String> {
        self.peer.clone()
    }

    fn destination_port(&mut self) -> u16 {
        self.port
    }

    fn request_headers(&mut self, plan: HeaderPlan) -> RequestHeaders {
        self.fetched.push(plan);
        let pairs: Vec<(&str, &str)> = self
            .headers
            .iter()
            .filter(|(name, _)| match plan {
                HeaderPlan::Nothing => false,
                HeaderPlan::HostOnly => name == ":authority",
                HeaderPlan::Every => true,
            })
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        RequestHeaders::of(&pairs, plan == HeaderPlan::Every)
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        if self.headers_refused {
            return false;
        }
        self.set.push((name.to_owned(), value.to_owned()));
        true
    }

    fn remove_request_header(&mut self, name: &str) -> bool {
        if self.headers_refused {
            return false;
        }
        self.removed.push(name.to_owned());
        true
    }

    fn refuse_request(
        &mut self,
        grpc: bool,
        http_status: u32,
        grpc_status: GrpcStatusCode,
        marker: (&str, &str),
        body: &str,
    ) {
        self.replies.push(Reply {
            grpc,
            http_status,
            grpc_status,
            marker: (marker.0.to_owned(), marker.1.to_owned()),
            body: body.to_owned(),
        });
    }

    fn reset_request(&mut self, why: &str) {
        self.resets.push(why.to_owned());
    }

    fn close_connection(&mut self) {
        self.closed += 1;
    }

    fn now_nanoseconds(&mut self) -> u64 {
        self.now += self.tick;
        self.now
    }

    fn response_code(&mut self) -> u32 {
        self.response_code
    }

    fn grpc_status(&mut self) -> Option<u32> {
        self.grpc_status
    }

    fn roll(&mut self) -> u64 {
        self.roll
    }
}

/// Access from shop/frontend to shop/api: HTTP `GET /items` and `POST /orders` on port 8080, and
/// TCP to port 5432 of shop/db; a TrafficSplit of shop/api between api-v1 and api-v2.
pub const MESH: &str = r"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: api-routes, namespace: shop}
spec:
  matches:
  - {name: items, pathRegex: /items, methods: [GET]}
  - {name: orders, pathRegex: /orders, methods: [POST]}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: frontend-to-api, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop, port: 8080}
  sources: [{kind: ServiceAccount, name: frontend, namespace: shop}]
  rules: [{kind: HTTPRouteGroup, name: api-routes}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: postgres, namespace: shop}
spec: {matches: {ports: [5432]}}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: api-to-db, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: db, namespace: shop}
  sources: [{kind: ServiceAccount, name: api, namespace: shop}]
  rules: [{kind: TCPRoute, name: postgres}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api-v1, namespace: shop}
spec: {selector: {app: api, version: v1}, ports: [{port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api-v2, namespace: shop}
spec: {selector: {app: api, version: v2}, ports: [{port: 8080}]}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: api-split, namespace: shop}
spec:
  service: api
  backends: [{service: api-v1, weight: 50}, {service: api-v2, weight: 50}]
";

/// The caller the mesh allows to reach shop/api.
pub const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
/// The caller the mesh allows to reach shop/db.
pub const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

/// The shared state of `identity`'s `side` plugin compiled from [`MESH`], changed by `edit`,
/// its counters defined in `host`.
pub fn state(
    identity: &str,
    side: Side,
    edit: impl FnOnce(&mut weft_policy::PluginConfig),
    host: &mut RecordingHost,
) -> Rc<FilterState> {
    let mut config = weft_policy::testing::compiled(identity, side, MESH);
    edit(&mut config);
    let engine = weft_policy::engine::Engine::new(&config).unwrap();
    Rc::new(FilterState::new(config, engine, false, host))
}
