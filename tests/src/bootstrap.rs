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
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": WEFT_PLUGIN,
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

/// An HTTP listener named `name` that runs `http_filters` (the router is appended) and routes
/// every request to `cluster`.
pub fn http_listener(name: &str, http_filters: Vec<Value>, cluster: &str) -> Value {
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
                "route_config": {"virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                }]},
                "http_filters": filters,
            },
        }]}],
    })
}

/// A TCP listener named `name` that proxies every connection to `cluster`.
pub fn tcp_listener(name: &str, cluster: &str) -> Value {
    json!({
        "name": name,
        "address": any_loopback_port(),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name,
                "cluster": cluster,
            },
        }]}],
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
