//! Listeners and their routes: HTTP listeners (the HTTP connection manager with weft's filters
//! and the router), TCP listeners (weft's network filter and the TCP proxy), virtual hosts and
//! the routes split routing needs.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::common::mutation_rules::v3::{HeaderMutation, header_mutation};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, TypedExtensionConfig, data_source,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, UpstreamConnectMode, tcp_proxy,
};
use envoy_types::pb::envoy::extensions::http::early_header_mutation::header_mutation::v3::HeaderMutation as EarlyHeaderMutation;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use prost::Message;
use weft_policy::{CallerIdentity, PluginConfig};

use crate::render::any;
use crate::sources::{ads, socket_address};

/// Envoy's name for the HTTP connection manager.
pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
/// Envoy's name for the TCP proxy.
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
/// Envoy's name for the router.
pub const ROUTER: &str = "envoy.filters.http.router";
/// The header in which split routing names the cluster it chose.
pub use weft_policy::contract::ROUTE_HEADER;

/// Where an HTTP listener's routes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Routes {
    /// In the listener.
    Inline(Box<RouteConfiguration>),
    /// The RDS resource of this name, over ADS.
    Discovered(String),
}

/// What an HTTP listener is.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpListener {
    /// Listener name, also its stats prefix.
    pub name: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// weft's filters (and any others) before the router.
    pub filters: Vec<HttpFilter>,
    /// Its routes.
    pub routes: Routes,
    /// TLS, if it terminates TLS.
    pub tls: Option<TransportSocket>,
    /// Put paths in normal form before any filter sees them (every inbound listener does).
    pub normalise_paths: bool,
    /// Remove these request headers as the request arrives, before any filter or route sees
    /// them (a client must not choose split routing's cluster).
    pub strip_request_headers: Vec<String>,
    /// Envoy writes the verified caller's URI SAN into `x-forwarded-client-cert` and removes any
    /// such header a client sent, so that weft reads the caller's identity from the request
    /// headers instead of a property ([`forward_caller_identity`]).
    pub forwards_caller_identity: bool,
}

impl HttpListener {
    /// A plaintext listener with no filters, no normalisation and the given routes.
    pub fn new(name: &str, address: SocketAddr, routes: Routes) -> Self {
        Self {
            name: name.to_owned(),
            address,
            filters: Vec::new(),
            routes,
            tls: None,
            normalise_paths: false,
            strip_request_headers: Vec::new(),
            forwards_caller_identity: false,
        }
    }

    /// The HTTP connection manager this listener runs.
    pub fn connection_manager(&self) -> HttpConnectionManager {
        let mut http_filters = self.filters.clone();
        http_filters.push(HttpFilter {
            name: ROUTER.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..HttpFilter::default()
        });
        let route_specifier = match &self.routes {
            Routes::Inline(config) => {
                http_connection_manager::RouteSpecifier::RouteConfig((**config).clone())
            }
            Routes::Discovered(name) => http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: name.clone(),
            }),
        };
        let mut manager = HttpConnectionManager {
            stat_prefix: self.name.clone(),
            http_filters,
            route_specifier: Some(route_specifier),
            ..HttpConnectionManager::default()
        };
        if self.normalise_paths {
            normalise_paths(&mut manager);
        }
        if self.forwards_caller_identity {
            set_forwarded_client_cert(&mut manager);
        }
        if !self.strip_request_headers.is_empty() {
            let mutation = EarlyHeaderMutation {
                mutations: self
                    .strip_request_headers
                    .iter()
                    .map(|name| HeaderMutation {
                        action: Some(header_mutation::Action::Remove(name.clone())),
                    })
                    .collect(),
            };
            manager.early_header_mutation_extensions = vec![TypedExtensionConfig {
                name: "envoy.http.early_header_mutation.header_mutation".to_owned(),
                typed_config: Some(any(&mutation)),
            }];
        }
        manager
    }

    /// The listener.
    pub fn build(&self) -> Listener {
        listener(
            &self.name,
            self.address,
            vec![Filter {
                name: HTTP_CONNECTION_MANAGER.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(
                    &self.connection_manager()
                ))),
            }],
            self.tls.clone(),
        )
    }
}

/// Has `listener` hand its filters the caller's verified identity in `x-forwarded-client-cert`
/// (`forward_client_cert_details: SANITIZE_SET`, `set_current_client_cert_details: {uri:
/// true}`: a header a client sent is replaced, or removed when the connection has no verified
/// certificate) and tells `config`, the weft plugin on it, to read the identity there, which
/// saves the filter a host call per request. The two go together or not at all: a plugin that
/// trusted the header on a listener that passes a client's header on would take a spoofed
/// identity, so code that builds both sets them here (docs/access.md, "Caller identity from
/// x-forwarded-client-cert"). The listeners weft generates do neither: Envoy's setting costs
/// what the filter saves (docs/decisions.md).
pub fn forward_caller_identity(listener: &mut HttpListener, config: &mut PluginConfig) {
    listener.forwards_caller_identity = true;
    config.caller_identity = CallerIdentity::ForwardedClientCert;
}

/// The fields of the HTTP connection manager that make Envoy write the verified caller's URI
/// SAN into `x-forwarded-client-cert` and drop any value a client sent.
pub fn set_forwarded_client_cert(manager: &mut HttpConnectionManager) {
    manager.forward_client_cert_details =
        http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32;
    manager.set_current_client_cert_details =
        Some(http_connection_manager::SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        });
}

/// Whether `manager` sets `x-forwarded-client-cert` as a plugin configuration with
/// [`CallerIdentity::ForwardedClientCert`] requires: the caller's URI SAN in it, and no value
/// of a client's kept.
pub fn forwards_caller_identity(manager: &HttpConnectionManager) -> bool {
    manager.forward_client_cert_details
        == http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32
        && manager
            .set_current_client_cert_details
            .as_ref()
            .is_some_and(|details| details.uri)
}

/// The HTTP connection manager a filter chain starts with, if it starts with one.
pub fn connection_manager(chain: &FilterChain) -> Option<HttpConnectionManager> {
    let first = chain.filters.first()?;
    if first.name != HTTP_CONNECTION_MANAGER {
        return None;
    }
    match &first.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => {
            HttpConnectionManager::decode(any.value.as_slice()).ok()
        }
        _ => None,
    }
}

/// The fields of the HTTP connection manager that put paths in normal form before any filter
/// sees them, as every inbound listener weft generates sets them: dot segments resolved (with
/// `%2e` and other needlessly encoded characters decoded, and `\` read as `/`), slashes merged,
/// and requests with an encoded slash or backslash refused with 400 (mesh callers are programs,
/// which send normal paths; Envoy's edge guidance recommends this for such clients). The access
/// filter then judges the path the application will serve (docs/access.md, "Paths").
pub fn normalise_paths(manager: &mut HttpConnectionManager) {
    manager.normalize_path = Some(BoolValue { value: true });
    manager.merge_slashes = true;
    manager.path_with_escaped_slashes_action =
        http_connection_manager::PathWithEscapedSlashesAction::RejectRequest as i32;
}

/// Whether `manager` puts paths in normal form as [`normalise_paths`] has it do.
pub fn puts_paths_in_normal_form(manager: &HttpConnectionManager) -> bool {
    let mut normalised = manager.clone();
    normalise_paths(&mut normalised);
    normalised == *manager
}

/// A listener named `name` on `address` with one filter chain.
pub fn listener(
    name: &str,
    address: SocketAddr,
    filters: Vec<Filter>,
    tls: Option<TransportSocket>,
) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(socket_address(address)),
        filter_chains: vec![FilterChain {
            filters,
            transport_socket: tls,
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

/// A TCP listener running `filters` (weft's network filter) and then proxying to `cluster`.
/// It connects upstream only once data passed the filters, so a connection they close never
/// costs an upstream connection.
pub fn tcp_listener(
    name: &str,
    address: SocketAddr,
    filters: Vec<Filter>,
    cluster: &str,
    tls: Option<TransportSocket>,
) -> Listener {
    let proxy = TcpProxy {
        stat_prefix: name.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
        upstream_connect_mode: UpstreamConnectMode::OnDownstreamData as i32,
        max_early_data_bytes: Some(UInt32Value { value: 65536 }),
        ..TcpProxy::default()
    };
    let mut chain = filters;
    chain.push(Filter {
        name: TCP_PROXY.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    });
    listener(name, address, chain, tls)
}

/// Routes named `name` with `virtual_hosts`.
pub fn route_configuration(name: &str, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        ..RouteConfiguration::default()
    }
}

/// A virtual host named `name` for `domains` with `routes`.
pub fn virtual_host(name: &str, domains: &[String], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.to_owned(),
        domains: domains.to_vec(),
        routes,
        ..VirtualHost::default()
    }
}

fn no_retries() -> Option<RetryPolicy> {
    Some(RetryPolicy {
        num_retries: Some(UInt32Value { value: 0 }),
        ..RetryPolicy::default()
    })
}

fn any_path() -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
        ..RouteMatch::default()
    }
}

/// A route sending every request to `cluster`, with retries off (weft's metrics count each
/// request once; retries are an explicit choice).
pub fn route_to(cluster: &str) -> Route {
    Route {
        r#match: Some(any_path()),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
            retry_policy: no_retries(),
            ..RouteAction::default()
        })),
        ..Route::default()
    }
}

/// The route that sends a request to the cluster weft's split routing named in
/// [`ROUTE_HEADER`], and removes the header before the request leaves Envoy. It goes first in a
/// virtual host; requests without the header fall through to the routes after it.
pub fn split_route() -> Route {
    Route {
        r#match: Some(RouteMatch {
            headers: vec![HeaderMatcher {
                name: ROUTE_HEADER.to_owned(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(
                    true,
                )),
                ..HeaderMatcher::default()
            }],
            ..any_path()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::ClusterHeader(
                ROUTE_HEADER.to_owned(),
            )),
            retry_policy: no_retries(),
            ..RouteAction::default()
        })),
        request_headers_to_remove: vec![ROUTE_HEADER.to_owned()],
        ..Route::default()
    }
}

/// A route answering every request with `status` and `body`.
pub fn direct_response(status: u32, body: &str) -> Route {
    Route {
        r#match: Some(any_path()),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(body.to_owned())),
                ..DataSource::default()
            }),
            ..DirectResponseAction::default()
        })),
        ..Route::default()
    }
}
