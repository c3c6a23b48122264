//! Per-edge golden metrics, the pure part: metric and label names, how a label set is written
//! into an Envoy stat name and read back by Envoy's tag extractors (so `/stats/prometheus`
//! shows Prometheus labels), the histogram buckets, what counts as a failure, and how a peer's
//! SPIFFE ID becomes label values. The filter records; docs/metrics.md is the user's side.
//!
//! Envoy keeps a wasm metric under one flat name. weft writes each label into that name as
//! `;.label=.value;` after the family name, and the `stats_tags` of weft-envoy-config's `stats_config`
//! (one regex per label) take each back out as a tag, leaving the family name; Envoy's
//! Prometheus output strips the `wasmcustom.` namespace it puts wasm metrics in. Label values
//! never contain `;`, so the lazy regexes stop at the right place.

use crate::bundle::{Direction, Identity, MetricsConfig};
use crate::lookup::{LookupMap, host_key};

/// Counter of requests, with the edge labels and `response_code_class` and `outcome`.
pub const REQUESTS: &str = "weft_requests_total";
/// Histogram of request durations in milliseconds, with the edge labels.
pub const DURATION: &str = "weft_request_duration_milliseconds";

/// Counter of TCP connections weft let through, with the edge labels (counted at the first
/// bytes weft sees: after the access decision, or at the first bytes in either direction when
/// no decision is made).
pub const TCP_OPENED: &str = "weft_tcp_connections_opened_total";
/// Counter of TCP connections access control closed, with the edge labels; a denied
/// connection is never counted opened.
pub const TCP_DENIED: &str = "weft_tcp_connections_denied_total";
/// Counter of opened TCP connections that ended, with the edge labels; opened minus closed is
/// the connections open now.
pub const TCP_CLOSED: &str = "weft_tcp_connections_closed_total";
/// Counter of the bytes an opened TCP connection carried from the client, with the edge labels.
pub const TCP_RECEIVED_BYTES: &str = "weft_tcp_received_bytes_total";
/// Counter of the bytes an opened TCP connection carried to the client, with the edge labels.
pub const TCP_SENT_BYTES: &str = "weft_tcp_sent_bytes_total";
/// Histogram of TCP connection durations in milliseconds (from accept to close), with the edge
/// labels.
pub const TCP_DURATION: &str = "weft_tcp_connection_duration_milliseconds";

/// The value of a label weft cannot fill from a verified identity or the configuration.
pub const UNKNOWN: &str = "unknown";

/// Labels of every weft metric, in the order they are written.
pub const EDGE_LABELS: [&str; 7] = [
    "direction",
    "source_namespace",
    "source_service_account",
    "source_workload",
    "destination_namespace",
    "destination_service",
    "destination_backend",
];
/// Labels only [`REQUESTS`] has, after the edge labels.
pub const RESPONSE_LABELS: [&str; 2] = ["response_code_class", "outcome"];

/// Upper bounds (milliseconds) of the duration histogram's buckets. Whole numbers, because the
/// filter records durations rounded up to whole milliseconds, and a duration rounded up is at
/// most a whole bound exactly when the duration itself is: so every request lands in the
/// bucket its exact duration belongs to. Fine below 10 ms for sidecar-to-sidecar calls, then
/// roughly 1-2-5 steps up to a minute.
pub const DURATION_BUCKETS_MS: [u64; 24] = [
    1, 2, 3, 4, 5, 7, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000,
];

/// Upper bounds (milliseconds) of the TCP connection duration histogram's buckets: the request
/// buckets, then up to an hour, because connections live longer than requests.
pub const TCP_DURATION_BUCKETS_MS: [u64; 28] = [
    1, 2, 3, 4, 5, 7, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300_000, 600_000, 1_800_000, 3_600_000,
];

/// Envoy's name for metrics a wasm module defines (a custom stat namespace; stripped in
/// Prometheus output).
pub const WASM_STAT_NAMESPACE: &str = "wasmcustom";

/// The Envoy stat name of `family` with `labels`, which Envoy configured with
/// weft-envoy-config's `stats_config` exports as `family{label="value",...}`.
pub fn stat_name<'a>(family: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut name = family.to_owned();
    for (label, value) in labels {
        name.push_str(";.");
        name.push_str(label);
        name.push_str("=.");
        name.push_str(value);
        name.push(';');
    }
    name
}

/// The regex of Envoy's tag extractor for `label`: its first group is the part of the stat
/// name to remove, its second the tag's value.
pub fn tag_regex(label: &str) -> String {
    format!(r"(;\.{label}=\.(.*?);)")
}

/// Whether a request succeeded, for the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Anything that is not a failure (4xx included: the server answered as designed).
    Success,
    /// A 5xx, a gRPC status other than OK, or no response at all (a reset or a timeout).
    Failure,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }

    /// The outcome of a request answered with HTTP `status` (0: no response was sent) and, for
    /// a gRPC request, `grpc_status` (the status of the response's trailers or headers, as
    /// Envoy reports it; `None` when Envoy gives none). The rule is Linkerd's: for gRPC the
    /// gRPC status decides, otherwise 5xx and no response fail.
    pub fn classify(status: u32, grpc_status: Option<u32>) -> Self {
        let failed = match grpc_status {
            _ if status == 0 => true,
            Some(grpc) => grpc != 0,
            None => status >= 500,
        };
        if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// The `response_code_class` label of HTTP `status`: `2xx` and so on, or `none` when no
/// response was sent (0) or the status is outside 100-599.
pub fn code_class(status: u32) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// The namespace and ServiceAccount of a SPIFFE ID `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`
/// in `trust_domain`; `None` for any other form or domain, so that only identities of the
/// mesh become label values.
pub fn spiffe_identity<'a>(id: &'a str, trust_domain: &str) -> Option<(&'a str, &'a str)> {
    let path = id
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/ns/")?;
    let (namespace, service_account) = path.split_once("/sa/")?;
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 253
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (valid(namespace) && valid(service_account)).then_some((namespace, service_account))
}

/// The duration in milliseconds the histogram records for `nanoseconds`: rounded up, so that
/// the whole-millisecond buckets count it where its exact value belongs.
pub fn duration_ms(nanoseconds: u64) -> u64 {
    nanoseconds.div_ceil(1_000_000)
}

/// Why a metrics configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// A service that is not written `name.namespace`.
    #[error("{field}: {value:?} is not a service; write name.namespace, e.g. checkout.shop")]
    Service {
        /// Path of the field.
        field: String,
        /// The value found.
        value: String,
    },
    /// The inbound service in another namespace than the workload's.
    #[error(
        "{field}: {service} is not in the workload's namespace {namespace}; a Service selects workloads of its own namespace only"
    )]
    ForeignService {
        /// Path of the field.
        field: String,
        /// The service given.
        service: String,
        /// The workload's namespace.
        namespace: String,
    },
    /// `service` on an outbound listener.
    #[error(
        "{field}: only an inbound listener has a service of its own; outbound destinations come from `metrics.services`"
    )]
    OutboundService {
        /// Path of the field.
        field: String,
    },
}

impl MetricsError {
    /// Path of the field at fault.
    pub fn field(&self) -> &str {
        match self {
            MetricsError::Service { field, .. }
            | MetricsError::ForeignService { field, .. }
            | MetricsError::OutboundService { field } => field,
        }
    }
}

/// `name.namespace` split into `(name, namespace)`, both non-empty.
fn split_service(service: &str) -> Option<(&str, &str)> {
    service
        .split_once('.')
        .filter(|(name, namespace)| !name.is_empty() && !namespace.is_empty())
}

/// Who sent a request, as far as labels go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source<'a> {
    /// The workload this Envoy serves (outbound requests).
    Local,
    /// A verified peer of the mesh: namespace and ServiceAccount (inbound requests).
    Peer(&'a str, &'a str),
    /// No verified identity of the trust domain.
    Unknown,
}

/// A compiled [`MetricsConfig`]: which services requests may address, found by host or by name,
/// and who the workload is. Service indexes stand for services in edge keys.
#[derive(Debug, Clone)]
pub struct MetricsTable {
    direction: Direction,
    trust_domain: String,
    /// The workload's namespace and ServiceAccount, the source of its outbound requests.
    local: Option<(String, String)>,
    /// `(namespace, name)` of each service, by index.
    services: Vec<(String, String)>,
    by_host: LookupMap<u32>,
    by_name: LookupMap<u32>,
    /// Inbound: the workload itself, the destination of every request (its service, or
    /// `unknown` in its namespace).
    inbound_destination: Option<u32>,
}

impl MetricsTable {
    /// Compiles `config` for the workload `identity`.
    ///
    /// # Errors
    /// [`MetricsError::Service`] for a service not written `name.namespace`.
    pub fn new(config: &MetricsConfig, identity: Option<&Identity>) -> Result<Self, MetricsError> {
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_host = LookupMap::default();
        let mut by_name = LookupMap::default();
        let inbound_destination = match config.direction {
            Direction::Outbound => {
                if config.service.is_some() {
                    return Err(MetricsError::OutboundService {
                        field: "metrics.service".to_owned(),
                    });
                }
                None
            }
            Direction::Inbound => {
                let local = match &config.service {
                    Some(service) => {
                        let field = || "metrics.service".to_owned();
                        let (name, namespace) =
                            split_service(service).ok_or_else(|| MetricsError::Service {
                                field: field(),
                                value: service.clone(),
                            })?;
                        if let Some(identity) = identity
                            && identity.namespace != namespace
                        {
                            return Err(MetricsError::ForeignService {
                                field: field(),
                                service: service.clone(),
                                namespace: identity.namespace.clone(),
                            });
                        }
                        Some((namespace.to_owned(), name.to_owned()))
                    }
                    None => identity.map(|id| (id.namespace.clone(), UNKNOWN.to_owned())),
                };
                local.map(|service| {
                    services.push(service);
                    0
                })
            }
        };
        // Inbound, what a caller writes in Host never names the destination.
        let listed = match config.direction {
            Direction::Outbound => config.services.as_slice(),
            Direction::Inbound => &[],
        };
        for (i, entry) in listed.iter().enumerate() {
            let Some((name, namespace)) = split_service(&entry.service) else {
                return Err(MetricsError::Service {
                    field: format!("metrics.services[{i}].service"),
                    value: entry.service.clone(),
                });
            };
            let index = u32::try_from(services.len()).unwrap_or(u32::MAX);
            services.push((namespace.to_owned(), name.to_owned()));
            by_name.entry(entry.service.clone()).or_insert(index);
            for host in &entry.hosts {
                by_host.entry(host_key(host).into_owned()).or_insert(index);
            }
        }
        Ok(Self {
            direction: config.direction,
            trust_domain: config.trust_domain.clone(),
            local: identity.map(|id| (id.namespace.clone(), id.service_account.clone())),
            services,
            by_host,
            by_name,
            inbound_destination,
        })
    }

    /// The destination of a request whose `Host` is `host`: outbound, the service the host
    /// names; inbound, the workload itself whatever the host says.
    pub fn destination(&self, host: Option<&str>) -> Option<u32> {
        match self.direction {
            Direction::Outbound => host.and_then(|host| self.service_for_host(host)),
            Direction::Inbound => self.inbound_destination,
        }
    }

    /// Which side the listener measures.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The service `host` addresses (any form the configuration lists, with or without a port
    /// or trailing dot, any letter case); outbound only, none inbound.
    pub fn service_for_host(&self, host: &str) -> Option<u32> {
        self.by_host.get(host_key(host).as_ref()).copied()
    }

    /// The service named `name.namespace` (a split's choice).
    pub fn service_named(&self, service: &str) -> Option<u32> {
        self.by_name.get(service).copied()
    }

    /// The source of a request that arrived with the verified peer identity `peer` (a SPIFFE
    /// ID) on the inbound side; on the outbound side the source is the workload itself.
    pub fn source<'a>(&self, peer: Option<&'a str>) -> Source<'a> {
        match self.direction {
            Direction::Outbound => Source::Local,
            Direction::Inbound => peer
                .and_then(|id| spiffe_identity(id, &self.trust_domain))
                .map_or(Source::Unknown, |(namespace, sa)| {
                    Source::Peer(namespace, sa)
                }),
        }
    }

    /// The edge labels ([`EDGE_LABELS`], in order) of a request from `source` to the service
    /// `destination`, which `backend` served (the split's choice; the destination itself
    /// when no split chose). The workload of an identity is its ServiceAccount: that is all a
    /// certificate says.
    pub fn edge_labels<'s>(
        &'s self,
        source: &Source<'s>,
        destination: Option<u32>,
        backend: Option<u32>,
    ) -> [(&'static str, &'s str); 7] {
        let (source_namespace, source_account) = match source {
            Source::Local => self
                .local
                .as_ref()
                .map_or((UNKNOWN, UNKNOWN), |(ns, sa)| (ns.as_str(), sa.as_str())),
            Source::Peer(ns, sa) => (*ns, *sa),
            Source::Unknown => (UNKNOWN, UNKNOWN),
        };
        let service = |index: Option<u32>| {
            index
                .and_then(|i| self.services.get(i as usize))
                .map(|(namespace, name)| (namespace.as_str(), name.as_str()))
        };
        let (destination_namespace, destination_service) =
            service(destination).unwrap_or((UNKNOWN, UNKNOWN));
        let backend_name = service(backend.or(destination)).map_or(UNKNOWN, |(_, name)| name);
        [
            ("direction", self.direction.as_str()),
            ("source_namespace", source_namespace),
            ("source_service_account", source_account),
            ("source_workload", source_account),
            ("destination_namespace", destination_namespace),
            ("destination_service", destination_service),
            ("destination_backend", backend_name),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_written_into_the_name_so_that_each_tag_regex_takes_exactly_its_part() {
        let name = stat_name(
            REQUESTS,
            [
                ("direction", "inbound"),
                ("destination_service", "checkout"),
            ],
        );
        assert_eq!(
            name,
            "weft_requests_total;.direction=.inbound;;.destination_service=.checkout;"
        );
        let mut rest = name.clone();
        for (label, value) in [
            ("direction", "inbound"),
            ("destination_service", "checkout"),
        ] {
            let regex = regex::Regex::new(&tag_regex(label)).unwrap();
            let captures = regex.captures(&rest).unwrap();
            assert_eq!(&captures[2], value);
            rest = rest.replacen(&captures[1], "", 1);
        }
        assert_eq!(rest, REQUESTS);
    }

    #[test]
    fn failures_are_5xx_grpc_errors_and_missing_responses() {
        for (status, grpc, outcome) in [
            (200, None, Outcome::Success),
            (404, None, Outcome::Success),
            (403, None, Outcome::Success),
            (500, None, Outcome::Failure),
            (503, None, Outcome::Failure),
            (0, None, Outcome::Failure),
            (200, Some(0), Outcome::Success),
            (200, Some(13), Outcome::Failure),
            (200, Some(7), Outcome::Failure),
            (0, Some(0), Outcome::Failure),
        ] {
            assert_eq!(
                Outcome::classify(status, grpc),
                outcome,
                "{status} {grpc:?}"
            );
        }
    }

    #[test]
    fn response_codes_fall_in_classes() {
        assert_eq!(code_class(204), "2xx");
        assert_eq!(code_class(503), "5xx");
        assert_eq!(code_class(0), "none");
        assert_eq!(code_class(999), "none");
    }

    #[test]
    fn only_mesh_identities_of_the_trust_domain_become_labels() {
        let domain = "cluster.local";
        assert_eq!(
            spiffe_identity("spiffe://cluster.local/ns/shop/sa/frontend", domain),
            Some(("shop", "frontend"))
        );
        for other in [
            "spiffe://other.domain/ns/shop/sa/frontend",
            "spiffe://cluster.local.evil/ns/shop/sa/frontend",
            "spiffe://cluster.local/ns/shop/sa/",
            "spiffe://cluster.local/ns/Shop/sa/frontend",
            "spiffe://cluster.local/ns/shop/sa/front;end",
            "https://cluster.local/ns/shop/sa/frontend",
            "",
        ] {
            assert_eq!(spiffe_identity(other, domain), None, "{other}");
        }
    }

    #[test]
    fn durations_round_up_to_whole_milliseconds() {
        assert_eq!(duration_ms(0), 0);
        assert_eq!(duration_ms(1), 1);
        assert_eq!(duration_ms(1_000_000), 1);
        assert_eq!(duration_ms(1_000_001), 2);
    }
}
