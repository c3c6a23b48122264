//! The metrics feature's recorder: per request, what it needs at the start (the edge, the
//! clock) and at the end (status, outcome, duration); per plugin, the metric ids of each label
//! set, defined with Envoy the first time the label set is seen and reused after, so a request
//! costs one counter increment and one histogram record. Label values come from
//! [`weft_policy::metrics::MetricsTable`]; host calls go through [`MetricHost`], so this is
//! tested natively with a fake host.

use weft_policy::bundle::Direction;
use weft_policy::lookup::FastMap;
use weft_policy::metrics::{
    self, DURATION, MetricsTable, Outcome, REQUESTS, RESPONSE_LABELS, Source, TCP_CLOSED,
    TCP_DENIED, TCP_DURATION, TCP_OPENED, TCP_RECEIVED_BYTES, TCP_SENT_BYTES,
};

/// Peer identities kept per plugin; beyond that, a new peer is labelled `unknown` (a bound on
/// the memory a flood of distinct certificates could take; Envoy's own stats are bounded by
/// the label sets defined, which this bounds too).
pub const MAX_PEERS: usize = 10_000;

/// What the recorder asks of Envoy.
pub trait MetricHost {
    /// Defines a counter named `name`; `None` if Envoy refuses.
    fn define_counter(&mut self, name: &str) -> Option<u32>;
    /// Defines a histogram named `name`; `None` if Envoy refuses.
    fn define_histogram(&mut self, name: &str) -> Option<u32>;
    /// Adds one to counter `id`.
    fn increment(&mut self, id: Option<u32>) {
        self.add(id, 1);
    }
    /// Adds `value` to counter `id`.
    fn add(&mut self, id: Option<u32>, value: u64);
    /// Records `value` in histogram `id`.
    fn record(&mut self, id: Option<u32>, value: u64);
}

/// Who sent a request, as a small key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceId {
    Local,
    Unknown,
    /// Index into the recorder's peers.
    Peer(u32),
}

/// An edge: source, destination service and backend service (indexes of the metrics table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EdgeKey {
    source: SourceId,
    destination: Option<u32>,
    backend: Option<u32>,
}

/// A request between its headers and its end.
#[derive(Debug, Clone, Copy)]
pub struct PendingRequest {
    edge: EdgeKey,
    started_ns: u64,
    grpc: bool,
}

impl PendingRequest {
    /// Whether the request is gRPC, so the gRPC status decides its outcome.
    pub fn grpc(&self) -> bool {
        self.grpc
    }
}

/// What happened on a TCP connection, as the metrics count it (docs/metrics.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEvent {
    /// weft let the connection through.
    Opened,
    /// Access control closed the connection.
    Denied,
    /// The connection carried this many bytes from the client.
    Received(u64),
    /// The connection carried this many bytes to the client.
    Sent(u64),
    /// An opened connection ended this long after it was accepted.
    Closed {
        /// Nanoseconds from accept to close.
        duration_ns: u64,
    },
}

/// The metric ids of one plugin's edges, and the peers seen.
#[derive(Debug, Default)]
pub struct EdgeRecorder {
    /// SPIFFE ID as Envoy gave it to the source it stands for.
    peer_ids: FastMap<String, SourceId>,
    /// `(namespace, service account)` of each peer, by index.
    peers: Vec<(String, String)>,
    histograms: FastMap<EdgeKey, Option<u32>>,
    counters: FastMap<(EdgeKey, &'static str, Outcome), Option<u32>>,
    /// TCP metrics by edge and family.
    tcp: FastMap<(EdgeKey, &'static str), Option<u32>>,
}

impl EdgeRecorder {
    /// Starts a request at `started_ns` from `peer` (the verified SPIFFE ID, inbound) to the
    /// service `host` addresses, served by `backend` (a split's choice, `name.namespace`).
    pub fn begin(
        &mut self,
        table: &MetricsTable,
        peer: Option<&str>,
        host: Option<&str>,
        backend: Option<&str>,
        grpc: bool,
        started_ns: u64,
    ) -> PendingRequest {
        PendingRequest {
            edge: self.edge(table, peer, host, backend),
            started_ns,
            grpc,
        }
    }

    /// The edge of traffic from `peer` (the verified SPIFFE ID, inbound) to the service `host`
    /// addresses, served by `backend` (a split's choice, `name.namespace`).
    pub fn edge(
        &mut self,
        table: &MetricsTable,
        peer: Option<&str>,
        host: Option<&str>,
        backend: Option<&str>,
    ) -> EdgeKey {
        let source = match table.direction() {
            Direction::Outbound => SourceId::Local,
            Direction::Inbound => peer.map_or(SourceId::Unknown, |id| self.peer(table, id)),
        };
        EdgeKey {
            source,
            destination: table.destination(host),
            backend: backend.and_then(|service| table.service_named(service)),
        }
    }

    /// Counts `event` of a TCP connection on `edge`: one host call (two when it closes), and
    /// none for an empty read or write.
    pub fn record_tcp(
        &mut self,
        table: &MetricsTable,
        host: &mut impl MetricHost,
        edge: EdgeKey,
        event: TcpEvent,
    ) {
        let (family, value) = match event {
            TcpEvent::Opened => (TCP_OPENED, 1),
            TcpEvent::Denied => (TCP_DENIED, 1),
            TcpEvent::Received(bytes) => (TCP_RECEIVED_BYTES, bytes),
            TcpEvent::Sent(bytes) => (TCP_SENT_BYTES, bytes),
            TcpEvent::Closed { .. } => (TCP_CLOSED, 1),
        };
        if value == 0 {
            return;
        }
        let counter = self.tcp_metric(table, host, edge, family);
        host.add(counter, value);
        if let TcpEvent::Closed { duration_ns } = event {
            let histogram = self.tcp_metric(table, host, edge, TCP_DURATION);
            host.record(histogram, metrics::duration_ms(duration_ns));
        }
    }

    /// The id of TCP metric `family` on `edge`, defined the first time it is asked for.
    fn tcp_metric(
        &mut self,
        table: &MetricsTable,
        host: &mut impl MetricHost,
        edge: EdgeKey,
        family: &'static str,
    ) -> Option<u32> {
        if let Some(id) = self.tcp.get(&(edge, family)) {
            return *id;
        }
        let name = metrics::stat_name(family, self.labels(table, edge));
        let id = match family {
            TCP_DURATION => host.define_histogram(&name),
            _ => host.define_counter(&name),
        };
        self.tcp.insert((edge, family), id);
        id
    }

    fn peer(&mut self, table: &MetricsTable, id: &str) -> SourceId {
        if let Some(source) = self.peer_ids.get(id) {
            return *source;
        }
        let source = match table.source(Some(id)) {
            Source::Peer(namespace, account) if self.peers.len() < MAX_PEERS => {
                let index = u32::try_from(self.peers.len()).unwrap_or(u32::MAX);
                self.peers.push((namespace.to_owned(), account.to_owned()));
                SourceId::Peer(index)
            }
            _ => SourceId::Unknown,
        };
        if self.peer_ids.len() < MAX_PEERS {
            self.peer_ids.insert(id.to_owned(), source);
        }
        source
    }

    /// Ends `request` with HTTP `status` (0: none sent) and the response's gRPC status (used
    /// only for gRPC requests) at `ended_ns`: one count and one duration.
    pub fn finish(
        &mut self,
        table: &MetricsTable,
        host: &mut impl MetricHost,
        request: &PendingRequest,
        status: u32,
        grpc_status: Option<u32>,
        ended_ns: u64,
    ) {
        let outcome = Outcome::classify(status, grpc_status.filter(|_| request.grpc));
        let class = metrics::code_class(status);
        let edge = request.edge;
        let counter = match self.counters.get(&(edge, class, outcome)) {
            Some(id) => *id,
            None => {
                let labels = self.labels(table, edge);
                let response = RESPONSE_LABELS.into_iter().zip([class, outcome.as_str()]);
                let id = host.define_counter(&metrics::stat_name(
                    REQUESTS,
                    labels.into_iter().chain(response),
                ));
                self.counters.insert((edge, class, outcome), id);
                id
            }
        };
        let histogram = match self.histograms.get(&edge) {
            Some(id) => *id,
            None => {
                let labels = self.labels(table, edge);
                let id = host.define_histogram(&metrics::stat_name(DURATION, labels));
                self.histograms.insert(edge, id);
                id
            }
        };
        host.increment(counter);
        let elapsed = ended_ns.saturating_sub(request.started_ns);
        host.record(histogram, metrics::duration_ms(elapsed));
    }

    fn labels<'s>(
        &'s self,
        table: &'s MetricsTable,
        edge: EdgeKey,
    ) -> [(&'static str, &'s str); 7] {
        let source = match edge.source {
            SourceId::Local => Source::Local,
            SourceId::Unknown => Source::Unknown,
            SourceId::Peer(index) => self
                .peers
                .get(index as usize)
                .map_or(Source::Unknown, |(ns, sa)| Source::Peer(ns, sa)),
        };
        table.edge_labels(&source, edge.destination, edge.backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::bundle::{Identity, MetricsConfig, ServiceHosts};

    /// Remembers every definition and what each id received.
    #[derive(Default)]
    struct FakeHost {
        names: Vec<String>,
        values: std::collections::HashMap<u32, Vec<u64>>,
    }

    impl FakeHost {
        fn define(&mut self, name: &str) -> Option<u32> {
            self.names.push(name.to_owned());
            u32::try_from(self.names.len() - 1).ok()
        }

        fn received(&self, name_part: &str) -> Vec<(String, Vec<u64>)> {
            self.names
                .iter()
                .enumerate()
                .filter(|(_, name)| name.contains(name_part))
                .map(|(id, name)| {
                    let values = self.values.get(&(id as u32)).cloned().unwrap_or_default();
                    (name.clone(), values)
                })
                .collect()
        }
    }

    impl MetricHost for FakeHost {
        fn define_counter(&mut self, name: &str) -> Option<u32> {
            self.define(name)
        }
        fn define_histogram(&mut self, name: &str) -> Option<u32> {
            self.define(name)
        }
        fn add(&mut self, id: Option<u32>, value: u64) {
            self.values.entry(id.unwrap()).or_default().push(value);
        }
        fn record(&mut self, id: Option<u32>, value: u64) {
            self.values.entry(id.unwrap()).or_default().push(value);
        }
    }

    fn table(direction: Direction) -> MetricsTable {
        let service = (direction == Direction::Inbound).then(|| "api.shop".to_owned());
        let config = MetricsConfig {
            service,
            direction,
            trust_domain: "cluster.local".to_owned(),
            services: vec![
                ServiceHosts {
                    service: "api.shop".to_owned(),
                    hosts: vec!["api".to_owned(), "api.shop".to_owned()],
                },
                ServiceHosts {
                    service: "api-v2.shop".to_owned(),
                    hosts: vec!["api-v2.shop".to_owned()],
                },
            ],
        };
        let identity = Identity {
            namespace: "shop".to_owned(),
            service_account: "frontend".to_owned(),
        };
        MetricsTable::new(&config, Some(&identity)).unwrap()
    }

    const WEB: &str = "spiffe://cluster.local/ns/web/sa/client";

    #[test]
    fn each_label_set_is_defined_once_and_every_request_counted_and_timed() {
        let table = table(Direction::Inbound);
        let mut recorder = EdgeRecorder::default();
        let mut host = FakeHost::default();
        for (status, ms) in [(200, 3), (200, 1), (503, 12)] {
            let request = recorder.begin(&table, Some(WEB), Some("api:80"), None, false, 0);
            recorder.finish(&table, &mut host, &request, status, None, ms * 1_000_000);
        }
        let success = host.received("outcome=.success;");
        assert_eq!(success.len(), 1, "{:?}", host.names);
        assert_eq!(
            success[0].0,
            "weft_requests_total;.direction=.inbound;;.source_namespace=.web;;.source_service_account=.client;;.source_workload=.client;;.destination_namespace=.shop;;.destination_service=.api;;.destination_backend=.api;;.response_code_class=.2xx;;.outcome=.success;"
        );
        assert_eq!(success[0].1, [1, 1]);
        let failure = host.received("outcome=.failure;");
        assert_eq!(failure[0].1, [1]);
        assert!(failure[0].0.contains("response_code_class=.5xx;"));
        let durations = host.received(DURATION);
        assert_eq!(durations.len(), 1, "one histogram per edge");
        assert_eq!(durations[0].1, [3, 1, 12]);
        assert_eq!(
            host.names.len(),
            3,
            "nothing defined twice: {:?}",
            host.names
        );
    }

    #[test]
    fn grpc_status_decides_only_for_grpc_requests() {
        let table = table(Direction::Outbound);
        let mut recorder = EdgeRecorder::default();
        let mut host = FakeHost::default();
        // Envoy reports a gRPC status for every response (UNKNOWN, 2, for a plain 200).
        for grpc in [false, true] {
            let request = recorder.begin(&table, None, Some("api"), None, grpc, 0);
            recorder.finish(&table, &mut host, &request, 200, Some(2), 1);
        }
        assert_eq!(host.received("outcome=.success;")[0].1, [1]);
        assert_eq!(host.received("outcome=.failure;")[0].1, [1]);
    }

    #[test]
    fn outbound_sources_are_the_workload_and_a_split_backend_is_labelled() {
        let table = table(Direction::Outbound);
        let mut recorder = EdgeRecorder::default();
        let mut host = FakeHost::default();
        let request = recorder.begin(
            &table,
            Some(WEB),
            Some("api"),
            Some("api-v2.shop"),
            false,
            0,
        );
        recorder.finish(&table, &mut host, &request, 0, None, 0);
        let name = &host.received(REQUESTS)[0].0;
        for part in [
            "source_namespace=.shop;",
            "source_service_account=.frontend;",
            "destination_service=.api;",
            "destination_backend=.api-v2;",
            "response_code_class=.none;",
            "outcome=.failure;",
        ] {
            assert!(name.contains(part), "{part} in {name}");
        }
    }

    #[test]
    fn an_inbound_request_counts_against_the_workload_whatever_host_it_sends() {
        let table = table(Direction::Inbound);
        let mut recorder = EdgeRecorder::default();
        let mut host = FakeHost::default();
        for claimed in [Some("api-v2.shop"), Some("checkout"), None] {
            let request = recorder.begin(&table, Some(WEB), claimed, None, false, 0);
            recorder.finish(&table, &mut host, &request, 200, None, 0);
        }
        let counted = host.received(REQUESTS);
        assert_eq!(counted.len(), 1, "one edge: {:?}", host.names);
        assert!(
            counted[0]
                .0
                .contains("destination_service=.api;;.destination_backend=.api;"),
            "{}",
            counted[0].0
        );
        assert_eq!(counted[0].1, [1, 1, 1]);
    }

    #[test]
    fn peers_beyond_the_bound_are_unknown() {
        let table = table(Direction::Inbound);
        let mut recorder = EdgeRecorder::default();
        for i in 0..MAX_PEERS {
            let id = format!("spiffe://cluster.local/ns/web/sa/client-{i}");
            recorder.begin(&table, Some(&id), None, None, false, 0);
        }
        let late = recorder.begin(
            &table,
            Some("spiffe://cluster.local/ns/web/sa/late"),
            None,
            None,
            false,
            0,
        );
        assert_eq!(late.edge.source, SourceId::Unknown);
        let known = recorder.begin(
            &table,
            Some("spiffe://cluster.local/ns/web/sa/client-7"),
            None,
            None,
            false,
            0,
        );
        assert_eq!(known.edge.source, SourceId::Peer(7));
    }

    #[test]
    fn tcp_events_count_per_edge_and_each_metric_is_defined_once() {
        let table = table(Direction::Inbound);
        let mut recorder = EdgeRecorder::default();
        let mut host = FakeHost::default();
        let edge = recorder.edge(&table, Some(WEB), None, None);
        for event in [
            TcpEvent::Opened,
            TcpEvent::Received(9),
            TcpEvent::Received(0),
            TcpEvent::Sent(9),
            TcpEvent::Received(5),
            TcpEvent::Closed {
                duration_ns: 2_500_000,
            },
        ] {
            recorder.record_tcp(&table, &mut host, edge, event);
        }
        let stranger = recorder.edge(
            &table,
            Some("spiffe://cluster.local/ns/web/sa/stranger"),
            None,
            None,
        );
        recorder.record_tcp(&table, &mut host, stranger, TcpEvent::Denied);
        let one = |family: &str| {
            let found = host.received(&format!("{family};"));
            assert_eq!(found.len(), 1, "{family}: {:?}", host.names);
            found.into_iter().next().unwrap()
        };
        assert_eq!(one(TCP_OPENED).1, [1]);
        assert_eq!(
            one(TCP_RECEIVED_BYTES).1,
            [9, 5],
            "no call for an empty read"
        );
        assert_eq!(one(TCP_SENT_BYTES).1, [9]);
        assert_eq!(one(TCP_CLOSED).1, [1]);
        assert_eq!(one(TCP_DURATION).1, [3], "rounded up to whole milliseconds");
        let denied = one(TCP_DENIED);
        assert!(
            denied.0.contains("source_service_account=.stranger;"),
            "{}",
            denied.0
        );
        assert!(
            one(TCP_OPENED)
                .0
                .starts_with("weft_tcp_connections_opened_total;.direction=.inbound;;.source_namespace=.web;;.source_service_account=.client;"),
            "{}",
            one(TCP_OPENED).0
        );
        assert_eq!(
            host.names.len(),
            6,
            "nothing defined twice: {:?}",
            host.names
        );
    }
}
