//! Clusters: static endpoints (a sidecar's own application, the controller), endpoints
//! discovered over EDS (mesh services), and HTTP/2 for gRPC upstreams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Http2ProtocolOptions, TransportSocket};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};

use crate::render::any;
use crate::sources::{ads, duration, socket_address};

/// The endpoints of `cluster_name`.
pub fn load_assignment(cluster_name: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|address| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(*address)),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                })
                .collect(),
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

/// A cluster with the given endpoints, fixed in the configuration.
pub fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(Duration::from_secs(1))),
        load_assignment: Some(load_assignment(name, endpoints)),
        ..Cluster::default()
    }
}

/// A cluster whose endpoints come over EDS (ADS), under the cluster's name.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        connect_timeout: Some(duration(Duration::from_secs(1))),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            ..cluster::EdsClusterConfig::default()
        }),
        ..Cluster::default()
    }
}

/// `cluster` with `tls` towards its endpoints.
pub fn with_tls(mut cluster: Cluster, tls: TransportSocket) -> Cluster {
    cluster.transport_socket = Some(tls);
    cluster
}

/// The key under which a cluster's HTTP protocol options are set.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Upstream HTTP options that speak `protocol` to every endpoint.
pub fn explicit_protocol(
    protocol: http_protocol_options::explicit_http_config::ProtocolConfig,
) -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(protocol),
                },
            ),
        ),
        ..HttpProtocolOptions::default()
    }
}

/// `cluster` speaking HTTP/2 to its endpoints (gRPC: the controller's xDS).
pub fn with_http2(mut cluster: Cluster) -> Cluster {
    let options = explicit_protocol(
        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
            Http2ProtocolOptions::default(),
        ),
    );
    cluster.typed_extension_protocol_options =
        HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_owned(), any(&options))]);
    cluster
}
