//! Envoy configurations for tests, as JSON values (Envoy reads JSON as YAML) rendered from the
//! typed resources of `weft-envoy-config`, the crate the controller and the shipped
//! configurations use, so the tests run what weft generates. Every listener and the admin bind
//! `127.0.0.1:0`; the harness reads the ports Envoy chose back from the admin API.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use weft_envoy_config::filters::{Code, Configuration, Kind, WeftPlugin, http_filter};
use weft_envoy_config::listeners::{self as envoy_listeners, HttpListener, Routes};
use weft_envoy_config::pb::envoy::config::listener::v3::Listener;
use weft_envoy_config::pb::envoy::config::route::v3::{Route, VirtualHost};
use weft_envoy_config::render::to_json;
use weft_envoy_config::tls::{Credentials, downstream_tls};

pub use weft_envoy_config::filters::WEFT as WEFT_PLUGIN;
pub use weft_envoy_config::listeners::ROUTE_HEADER;

/// A loopback address with a port the kernel chooses.
fn any_loopback_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Envoy's JSON form of a resource weft-envoy-config built. Rendering only fails for a message
/// type missing from its descriptors, which is a bug in that crate: fail the test loudly.
fn json_of<M: prost::Message + prost::Name>(message: &M) -> Value {
    match to_json(message) {
        Ok(value) => value,
        Err(err) => panic!("rendering {}: {err}", M::full_name()),
    }
}

/// A bootstrap with the given listeners and clusters, and an admin interface on loopback.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    let mut config = json_of(&weft_envoy_config::bootstrap::bootstrap(
        any_loopback_port(),
        Vec::new(),
        Vec::new(),
    ));
    // xDS (also file-based LDS) needs a node identity.
    config["node"] = json_of(&weft_envoy_config::bootstrap::node(
        "weft-test",
        "weft-test",
    ));
    config["static_resources"] = json!({"listeners": listeners, "clusters": clusters});
    // Histograms merge when stats flush; flushing on every admin request makes a scrape show
    // every request recorded before it, so tests need not wait for a timer.
    config["stats_flush_on_admin"] = json!(true);
    config
}

/// A static cluster with one endpoint.
pub fn cluster(name: &str, endpoint: SocketAddr) -> Value {
    json_of(&weft_envoy_config::clusters::static_cluster(
        name,
        &[endpoint],
    ))
}

fn plugin(module: &Path, name: &str, kind: Kind, configuration: Configuration) -> WeftPlugin {
    let mut plugin = WeftPlugin::new(
        kind,
        Code::File(module.display().to_string()),
        configuration,
    );
    name.clone_into(&mut plugin.name);
    plugin
}

/// The bundle of the plugin configuration `document` (JSON), as `weft compile --bundle` makes
/// it; a document that is not a valid configuration goes to Envoy as it is, so that a test can
/// watch weft.wasm refuse it.
pub fn configuration(document: &str) -> Configuration {
    Configuration::from_json(document)
        .unwrap_or_else(|_| Configuration(document.as_bytes().to_vec()))
}

/// The weft HTTP filter loading `module` with the plugin configuration `configuration` (JSON,
/// compiled into its bundle by [`configuration`]). It fails closed: when the plugin cannot run,
/// requests are refused instead of passed on.
pub fn weft_http_filter(module: &Path, configuration: &str) -> Value {
    weft_http_plugin(module, WEFT_PLUGIN, configuration)
}

/// [`weft_http_filter`] with the plugin named `name`, so that several weft plugins can sit in
/// one filter chain; they share one VM (`vm_id` `weft`) as every weft plugin does.
pub fn weft_http_plugin(module: &Path, name: &str, configuration: &str) -> Value {
    json_of(&http_filter(&plugin(
        module,
        name,
        Kind::Http,
        self::configuration(configuration),
    )))
}

/// The weft network filter (`root_id` `weft.tcp`) for TCP listeners, loading `module` with
/// `configuration`; fails closed like [`weft_http_filter`]. It shares the VM of the HTTP filter.
pub fn weft_network_filter(module: &Path, configuration: &str) -> Value {
    json_of(&weft_envoy_config::filters::network_filter(&plugin(
        module,
        WEFT_PLUGIN,
        Kind::Tcp,
        self::configuration(configuration),
    )))
}

/// The weft HTTP filter loading `module` with `configuration` as given (a compiled bundle, or
/// any bytes a test wants the plugin to refuse); fails closed like [`weft_http_filter`].
pub fn weft_http_filter_with(module: &Path, configuration: Configuration) -> Value {
    json_of(&http_filter(&plugin(
        module,
        WEFT_PLUGIN,
        Kind::Http,
        configuration,
    )))
}

/// The weft network filter with `configuration` as given; see [`weft_http_filter_with`].
pub fn weft_network_filter_with(module: &Path, configuration: Configuration) -> Value {
    json_of(&weft_envoy_config::filters::network_filter(&plugin(
        module,
        WEFT_PLUGIN,
        Kind::Tcp,
        configuration,
    )))
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
    let credentials = Credentials::Files {
        cert: tls.cert_file.display().to_string(),
        key: tls.key_file.display().to_string(),
        ca: tls.ca_file.display().to_string(),
    };
    listener["filter_chains"][0]["transport_socket"] = json_of(&downstream_tls(
        &credentials,
        tls.require_client_certificate,
    ));
    listener
}

/// Binds `listener` to `port` on loopback instead of a port the kernel chooses.
pub fn on_port(mut listener: Value, port: u16) -> Value {
    listener["address"]["socket_address"]["port_value"] = json!(port);
    listener
}

/// A loopback port that was free a moment ago, for a listener whose port must be known before
/// Envoy starts (a port rule names it). It is picked at random below the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`, 32768 and up), which every outgoing connection and
/// every `:0` bind of the other tests draws from: a port the kernel handed out could be handed
/// to one of those between this check and Envoy's bind (seen once in CI), one picked here can
/// only clash with another random pick.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..1_000 {
        let port = fastrand::u16(FREE_PORTS);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {FREE_PORTS:?} after 1,000 tries")
}

/// Where [`free_port`] picks: below the ephemeral range, above the well-known services.
const FREE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// An HTTP listener named `name` that runs `http_filters` (the router is appended) and routes
/// every request to `cluster`.
pub fn http_listener(name: &str, http_filters: Vec<Value>, cluster: &str) -> Value {
    http_listener_with_hosts(
        name,
        http_filters,
        vec![virtual_host("all", &["*"], vec![route_to(cluster)])],
    )
}

fn typed<M: prost::Message + prost::Name + Default>(value: &Value) -> M {
    match weft_envoy_config::render::from_json(value) {
        Ok(message) => message,
        Err(err) => panic!("a test built an invalid {}: {err}", M::full_name()),
    }
}

/// An HTTP listener named `name` that runs `http_filters` (the router is appended) and routes
/// by `virtual_hosts`. Test listeners do not normalise paths, so that tests see what weft
/// itself does with a path (the shipped and generated inbound listeners do).
pub fn http_listener_with_hosts(
    name: &str,
    http_filters: Vec<Value>,
    virtual_hosts: Vec<Value>,
) -> Value {
    let hosts: Vec<VirtualHost> = virtual_hosts.iter().map(typed).collect();
    let mut listener = HttpListener::new(
        name,
        any_loopback_port(),
        Routes::Inline(Box::new(envoy_listeners::route_configuration("", hosts))),
    );
    listener.filters = http_filters.iter().map(typed).collect();
    json_of(&listener.build())
}

/// An HTTP listener named `name` whose weft filter (loading `module`) reads the caller's identity
/// from `x-forwarded-client-cert`, which the listener itself sets: both through envoy-config's
/// `forward_caller_identity`, the one place that pairs them (the listeners the controller and
/// the shipped configurations generate read the connection instead). `config` is the rest of
/// the plugin configuration; every request goes to `cluster`.
pub fn http_listener_forwarding_caller(
    name: &str,
    module: &Path,
    config: &weft_policy::PluginConfig,
    cluster: &str,
) -> Value {
    let mut listener = HttpListener::new(
        name,
        any_loopback_port(),
        Routes::Inline(Box::new(envoy_listeners::route_configuration(
            "",
            vec![envoy_listeners::virtual_host(
                "all",
                &["*".to_owned()],
                vec![envoy_listeners::route_to(cluster)],
            )],
        ))),
    );
    let mut config = config.clone();
    envoy_listeners::forward_caller_identity(&mut listener, &mut config);
    let configuration = match Configuration::compile(&config) {
        Ok(configuration) => configuration,
        Err(err) => panic!("a test's plugin configuration does not compile: {err}"),
    };
    listener.filters = vec![http_filter(&plugin(
        module,
        WEFT_PLUGIN,
        Kind::Http,
        configuration,
    ))];
    json_of(&listener.build())
}

/// A virtual host named `name` for `domains` with `routes`.
pub fn virtual_host(name: &str, domains: &[&str], routes: Vec<Value>) -> Value {
    let domains: Vec<String> = domains.iter().map(|d| (*d).to_owned()).collect();
    let routes: Vec<Route> = routes.iter().map(typed).collect();
    json_of(&envoy_listeners::virtual_host(name, &domains, routes))
}

/// A route sending every request to `cluster`, with retries off so counts are exact.
pub fn route_to(cluster: &str) -> Value {
    json_of(&envoy_listeners::route_to(cluster))
}

/// The route that sends a request to the cluster weft's split routing named in
/// [`ROUTE_HEADER`], and removes the header before the request leaves Envoy. It goes first in a
/// virtual host; requests without the header fall through to the routes after it.
pub fn split_route() -> Value {
    json_of(&envoy_listeners::split_route())
}

/// A TCP listener named `name` that proxies every connection to `cluster`.
pub fn tcp_listener(name: &str, cluster: &str) -> Value {
    tcp_listener_with(name, Vec::new(), cluster)
}

/// A TCP listener named `name` that runs `filters` and then proxies to `cluster`, connecting
/// upstream on the first data from the client.
pub fn tcp_listener_with(name: &str, filters: Vec<Value>, cluster: &str) -> Value {
    let listener: Listener = envoy_listeners::tcp_listener(
        name,
        any_loopback_port(),
        filters.iter().map(typed).collect(),
        cluster,
        None,
    );
    json_of(&listener)
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
