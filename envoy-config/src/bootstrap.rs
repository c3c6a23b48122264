//! Bootstraps: the node, the admin interface, weft's stats settings, static resources, and
//! for a sidecar of the controller, ADS over gRPC to it.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::bootstrap::v3::{
    Admin, Bootstrap, MemoryAllocatorManager, bootstrap,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, GrpcService, Node, api_config_source, grpc_service,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::metrics::v3::{
    HistogramBucketSettings, StatsConfig, TagSpecifier, tag_specifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use weft_policy::metrics::{
    DURATION, DURATION_BUCKETS_MS, EDGE_LABELS, RESPONSE_LABELS, TCP_DURATION,
    TCP_DURATION_BUCKETS_MS, WASM_STAT_NAMESPACE, tag_regex,
};

use crate::sources::{ads, socket_address};

/// weft's stats settings: each label weft writes into a metric's name (docs/metrics.md)
/// becomes a Prometheus label in `/stats/prometheus`, and request and TCP connection durations
/// get whole-millisecond buckets.
pub fn stats_config() -> StatsConfig {
    StatsConfig {
        stats_tags: EDGE_LABELS
            .iter()
            .chain(RESPONSE_LABELS.iter())
            .map(|label| TagSpecifier {
                tag_name: (*label).to_owned(),
                tag_value: Some(tag_specifier::TagValue::Regex(tag_regex(label))),
            })
            .collect(),
        histogram_bucket_settings: [
            (DURATION, DURATION_BUCKETS_MS.as_slice()),
            (TCP_DURATION, TCP_DURATION_BUCKETS_MS.as_slice()),
        ]
        .into_iter()
        .map(|(family, buckets)| HistogramBucketSettings {
            r#match: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Prefix(format!(
                    "{WASM_STAT_NAMESPACE}.{family}"
                ))),
                ..StringMatcher::default()
            }),
            #[allow(clippy::cast_precision_loss)]
            buckets: buckets.iter().map(|ms| *ms as f64).collect(),
            ..HistogramBucketSettings::default()
        })
        .collect(),
        ..StatsConfig::default()
    }
}

/// How long, in seconds, a sidecar's Envoy keeps the connections of a listener's old filter
/// chains once the listener changed (a patch applied or withdrawn, a port changed): each is
/// told to close at once (`Connection: close` on its next response, GOAWAY), and closed after
/// this whatever it does. Envoy's default, 600 s with a gradual drain, let a connection opened
/// under a withdrawn EnvoyPatch keep its old chain for ten minutes.
pub const SIDECAR_DRAIN_SECONDS: u32 = 5;

/// The command-line arguments every sidecar Envoy weft starts gets, after `-c BOOTSTRAP`:
/// a base id of its own (several on one host), one worker, and the drain above.
pub const SIDECAR_ENVOY_ARGS: &[&str] = &[
    "--use-dynamic-base-id",
    "--concurrency",
    "1",
    "--drain-time-s",
    "5",
    "--drain-strategy",
    "immediate",
];

/// How much free memory Envoy's allocator hands back to the system each
/// [`MEMORY_RELEASE_INTERVAL_SECONDS`]: 16 MiB.
pub const BYTES_TO_RELEASE: u64 = 16 << 20;
/// How often Envoy's allocator hands free memory back to the system, in seconds.
pub const MEMORY_RELEASE_INTERVAL_SECONDS: i64 = 1;

/// Envoy's allocator (tcmalloc) keeps the memory it frees; loading a wasm module leaves about
/// 7 MiB of it free and held for good (compiling the module, configuring the plugin). With this,
/// Envoy releases free memory in the background, about 5 MiB less resident memory with weft
/// loaded (docs/BENCHMARKS.md).
pub fn memory_allocator_manager() -> MemoryAllocatorManager {
    MemoryAllocatorManager {
        bytes_to_release: BYTES_TO_RELEASE,
        memory_release_interval: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: MEMORY_RELEASE_INTERVAL_SECONDS,
            nanos: 0,
        }),
        ..MemoryAllocatorManager::default()
    }
}

/// What every bootstrap weft writes has: the admin interface on `admin`, weft's stats
/// settings, the allocator's background release ([`memory_allocator_manager`]), and
/// `listeners` and `clusters` as static resources.
pub fn bootstrap(admin: SocketAddr, listeners: Vec<Listener>, clusters: Vec<Cluster>) -> Bootstrap {
    Bootstrap {
        admin: Some(Admin {
            address: Some(socket_address(admin)),
            ..Admin::default()
        }),
        stats_config: Some(stats_config()),
        memory_allocator_manager: Some(memory_allocator_manager()),
        static_resources: Some(bootstrap::StaticResources {
            listeners,
            clusters,
            ..bootstrap::StaticResources::default()
        }),
        ..Bootstrap::default()
    }
}

/// A node: `id` names the proxy, `cluster` its workload. Envoy needs both for any dynamic
/// resource (and for ECDS even in a static configuration).
pub fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.to_owned(),
        cluster: cluster.to_owned(),
        ..Node::default()
    }
}

/// `bootstrap` with its listeners and clusters (beyond the static ones) from ADS over gRPC to
/// the static cluster `xds_cluster`.
pub fn with_ads(mut bootstrap: Bootstrap, xds_cluster: &str) -> Bootstrap {
    bootstrap.dynamic_resources = Some(bootstrap::DynamicResources {
        ads_config: Some(ApiConfigSource {
            api_type: api_config_source::ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_services: vec![GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: xds_cluster.to_owned(),
                        ..grpc_service::EnvoyGrpc::default()
                    },
                )),
                ..GrpcService::default()
            }],
            set_node_on_first_message_only: true,
            ..ApiConfigSource::default()
        }),
        lds_config: Some(ads()),
        cds_config: Some(ads()),
        ..bootstrap::DynamicResources::default()
    });
    bootstrap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_arguments_drain_for_the_seconds_documented() {
        let at = SIDECAR_ENVOY_ARGS
            .iter()
            .position(|arg| *arg == "--drain-time-s")
            .unwrap();
        assert_eq!(
            SIDECAR_ENVOY_ARGS[at + 1],
            SIDECAR_DRAIN_SECONDS.to_string()
        );
    }
}
