//! Envoy bootstrap configurations for tests, built as JSON values (Envoy reads JSON as YAML),
//! so that no test hand-quotes YAML. Every listener and the admin bind `127.0.0.1:0`; the
//! harness reads the ports Envoy chose back from the admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Name of the HTTP filter and plugin that carry weft in generated configurations.
pub const WEFT_PLUGIN: &str = "weft";

/// A loopback socket address with a port the kernel chooses.
fn any_loopback_port() -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}})
}

/// A bootstrap with the given listeners and clusters, and an admin interface on loopback.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        // xDS (also file-based LDS) needs a node identity.
        "node": {"id": "weft-test", "cluster": "weft-test"},
        "admin": {"address": any_loopback_port()},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        // weft's metric labels and histogram buckets, as in the shipped configurations.
        "stats_config": weft_policy::metrics::envoy_stats_config(),
        // Histograms merge when stats flush; flushing on every admin request makes a scrape
        // show every request recorded before it, so tests need not wait for a timer.
        "stats_flush_on_admin": true,
    })
}

/// A static cluster with one endpoint.
pub fn cluster(name: &str, endpoint: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": endpoint.ip().to_string(),
                "port_value": endpoint.port(),
            }}}}]}],
        },
    })
}

/// The weft HTTP filter loading `module` with `configuration` (the plugin's JSON, passed to the
/// filter verbatim as a `StringValue`). It fails closed: when the plugin cannot run, requests
/// are refused instead of passed on.
pub fn weft_http_filter(module: &Path, configuration: &str) -> Value {
    weft_http_plugin(module, WEFT_PLUGIN, configuration)
}

/// [`weft_http_filter`] with the plugin named `name`, so that several weft plugins can sit in
/// one filter chain; they share one VM (`vm_id` `weft`) as every weft plugin does.
pub fn weft_http_plugin(module: &Path, name: &str, configuration: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": WEFT_PLUGIN,
                "vm_config": {
                    "vm_id": WEFT_PLUGIN,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": module.display().to_string()}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "failure_policy": "FAIL_CLOSED",
            },
        },
    })
}

/// The weft network filter (`root_id` `weft.tcp`) for TCP listeners, loading `module` with
/// `configuration`; fails closed like [`weft_http_filter`]. It shares the VM of the HTTP filter.
pub fn weft_network_filter(module: &Path, configuration: &str) -> Value {
    let mut filter = weft_http_filter(module, configuration);
    filter["name"] = json!("envoy.filters.network.wasm");
    filter["typed_config"]["@type"] =
        json!("type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm");
    filter["typed_config"]["config"]["root_id"] = json!("weft.tcp");
    filter
}

/// How a test listener terminates TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Server certificate file.
    pub cert_file: PathBuf,
    /// Its key file.
    pub key_file: PathBuf,
    /// CA file that client certificates are verified against.
    pub ca_file: PathBuf,
    /// Whether a client certificate is required (mTLS) or only verified when presented.
    pub require_client_certificate: bool,
}

/// Terminates TLS on `listener` (its first filter chain) as `tls` says.
pub fn with_tls(mut listener: Value, tls: &ServerTls) -> Value {
    listener["filter_chains"][0]["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": tls.require_client_certificate,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"filename": tls.cert_file.display().to_string()},
                    "private_key": {"filename": tls.key_file.display().to_string()},
                }],
                "validation_context": {"trusted_ca": {"filename": tls.ca_file.display().to_string()}},
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    });
    listener
}

/// Binds `listener` to `port` on loopback instead of a port the kernel chooses.
pub fn on_port(mut listener: Value, port: u16) -> Value {
    listener["address"]["socket_address"]["port_value"] = json!(port);
    listener
}

/// A loopback port that was free a moment ago, for a listener whose port must be known before
/// Envoy starts (a port rule names it). Another process could take it in between; on loopback
/// in a test run that is rare, and the test then fails loudly at Envoy's start.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An HTTP listener named `name` that runs `http_filters` (the router is appended) and routes
/// every request to `cluster`.
pub fn http_listener(name: &str, http_filters: Vec<Value>, cluster: &str) -> Value {
    http_listener_with_hosts(
        name,
        http_filters,
        vec![virtual_host("all", &["*"], vec![route_to(cluster)])],
    )
}

/// An HTTP listener named `name` that runs `http_filters` (the router is appended) and routes
/// by `virtual_hosts`.
pub fn http_listener_with_hosts(
    name: &str,
    http_filters: Vec<Value>,
    virtual_hosts: Vec<Value>,
) -> Value {
    let mut filters = http_filters;
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    json!({
        "name": name,
        "address": any_loopback_port(),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": virtual_hosts},
                "http_filters": filters,
            },
        }]}],
    })
}

/// A virtual host named `name` for `domains` with `routes`.
pub fn virtual_host(name: &str, domains: &[&str], routes: Vec<Value>) -> Value {
    json!({"name": name, "domains": domains, "routes": routes})
}

/// A route sending every request to `cluster`, with retries off so counts are exact.
pub fn route_to(cluster: &str) -> Value {
    json!({"match": {"prefix": "/"}, "route": {"cluster": cluster, "retry_policy": {"num_retries": 0}}})
}

/// Header in which weft's split routing names the cluster it chose (`weft_envoy::ROUTE_HEADER`).
pub const ROUTE_HEADER: &str = "x-weft-cluster";

/// The route that sends a request to the cluster weft's split routing named in
/// [`ROUTE_HEADER`], and removes the header before the request leaves Envoy. It goes first in a
/// virtual host; requests without the header fall through to the routes after it.
pub fn split_route() -> Value {
    json!({
        "match": {"prefix": "/", "headers": [{"name": ROUTE_HEADER, "present_match": true}]},
        "route": {"cluster_header": ROUTE_HEADER, "retry_policy": {"num_retries": 0}},
        "request_headers_to_remove": [ROUTE_HEADER],
    })
}

/// A TCP listener named `name` that proxies every connection to `cluster`.
pub fn tcp_listener(name: &str, cluster: &str) -> Value {
    tcp_listener_with(name, Vec::new(), cluster)
}

/// A TCP listener named `name` that runs `filters` and then proxies to `cluster`, connecting
/// upstream on the first data from the client.
pub fn tcp_listener_with(name: &str, filters: Vec<Value>, cluster: &str) -> Value {
    let mut chain = filters;
    chain.push(json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name,
            "cluster": cluster,
            // Connect upstream only once data passed the filters before the proxy, so a
            // connection they close never costs an upstream connection.
            "upstream_connect_mode": "ON_DOWNSTREAM_DATA",
            "max_early_data_bytes": 65536,
        },
    }));
    json!({
        "name": name,
        "address": any_loopback_port(),
        "filter_chains": [{"filters": chain}],
    })
}

/// Listeners served to Envoy from a file (filesystem LDS), so a test can change a running
/// Envoy's listeners the way a control plane would: each [`LdsFile::publish`] is one update.
#[derive(Debug)]
pub struct LdsFile {
    dir: tempfile::TempDir,
    version: u64,
}

impl LdsFile {
    /// File name Envoy watches inside the directory.
    const FILE: &'static str = "listeners.json";

    /// Creates the directory and publishes `listeners` as version 1.
    pub fn new(listeners: Vec<Value>) -> anyhow::Result<Self> {
        let mut lds = Self {
            dir: tempfile::Builder::new().prefix("weft-lds-").tempdir()?,
            version: 0,
        };
        lds.publish(listeners)?;
        Ok(lds)
    }

    /// Replaces the served listeners, atomically (write, then rename into the watched folder).
    pub fn publish(&mut self, listeners: Vec<Value>) -> anyhow::Result<()> {
        self.version += 1;
        let resources: Vec<Value> = listeners
            .into_iter()
            .map(|mut listener| {
                listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
                listener
            })
            .collect();
        let response = json!({"version_info": self.version.to_string(), "resources": resources});
        let staging = self.dir.path().join(format!(".{}.tmp", self.version));
        std::fs::write(&staging, serde_json::to_vec_pretty(&response)?)?;
        std::fs::rename(&staging, self.path())?;
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(Self::FILE)
    }

    /// A bootstrap whose listeners come from this file, with the given static clusters.
    pub fn bootstrap(&self, clusters: Vec<Value>) -> Value {
        let mut config = bootstrap(Vec::new(), clusters);
        config["dynamic_resources"] = json!({"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": self.path().display().to_string(),
                "watched_directory": {"path": self.dir.path().display().to_string()},
            },
        }});
        config
    }
}

/// A configuration shipped in `envoy-configs/`, made runnable in a test: each `filename` that
/// `files` names (as written in the file) is replaced by the path given, each socket address
/// whose port `ports` maps gets the new port, and every other port becomes 0, so the kernel
/// chooses (the harness reads listener and admin ports back from Envoy).
pub fn shipped(file: &str, files: &[(&str, &Path)], ports: &[(u16, u16)]) -> anyhow::Result<Value> {
    let path = crate::paths::workspace_root()
        .join("envoy-configs")
        .join(file);
    let text = std::fs::read_to_string(&path)?;
    let mut documents = weft_policy::document::read_yaml(&text, 1)?;
    anyhow::ensure!(
        documents.len() == 1,
        "{}: one document expected",
        path.display()
    );
    let mut config = documents.remove(0).value;
    rewrite(&mut config, files, ports);
    Ok(config)
}

fn rewrite(value: &mut Value, files: &[(&str, &Path)], ports: &[(u16, u16)]) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::String(name)) = fields.get("filename")
                && let Some((_, path)) = files.iter().find(|(written, _)| written == name)
            {
                fields.insert("filename".into(), json!(path.display().to_string()));
            }
            if let Some(Value::Object(address)) = fields.get_mut("socket_address") {
                let written = address
                    .get("port_value")
                    .and_then(Value::as_u64)
                    .unwrap_or_default();
                let port = ports
                    .iter()
                    .find(|(from, _)| u64::from(*from) == written)
                    .map_or(0, |(_, to)| *to);
                address.insert("port_value".into(), json!(port));
            }
            for child in fields.values_mut() {
                rewrite(child, files, ports);
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite(item, files, ports);
            }
        }
        _ => {}
    }
}
