//! The weft filters: the HTTP filter and the network (TCP) filter that load `weft.wasm`, with
//! their plugin configuration inline (a static `envoy.yaml`) or discovered over ECDS (the
//! controller), and the module from a file or fetched over HTTP with its sha256.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, DataSource, ExtensionConfigSource, HttpUri, RemoteDataSource, RetryPolicy,
    TypedExtensionConfig, async_data_source, data_source, http_uri,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm as HttpWasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm as NetworkWasm;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig as WasmPluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::google::protobuf::{Any, BytesValue, UInt32Value};
use prost::Name;
use weft_policy::wire::{self, WireError};
use weft_policy::{ConfigError, PluginConfig};

use crate::render::any;
use crate::sources::{ads, duration};

/// Name of the weft plugin, its HTTP `root_id` and its `vm_id`: every weft plugin shares one VM.
pub const WEFT: &str = "weft";
/// The V8 runtime, the only wasm runtime in Envoy's release builds.
pub const RUNTIME: &str = "envoy.wasm.runtime.v8";
/// Envoy's name for the HTTP wasm filter.
pub const HTTP_WASM_FILTER: &str = "envoy.filters.http.wasm";
/// Envoy's name for the network wasm filter.
pub const NETWORK_WASM_FILTER: &str = "envoy.filters.network.wasm";

/// Where Envoy gets `weft.wasm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// A file on Envoy's machine (relative paths are relative to Envoy's working directory).
    File(String),
    /// Fetched over HTTP(S) through `cluster`, and refused unless its SHA-256 is `sha256`.
    Remote {
        /// The module's URL.
        uri: String,
        /// The cluster that reaches the server.
        cluster: String,
        /// Hex SHA-256 of the module.
        sha256: String,
    },
}

/// Which of weft's filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The HTTP filter (access per request, split, metrics).
    Http,
    /// The network filter (access per TCP connection).
    Tcp,
}

impl Kind {
    /// The plugin's `root_id`, which selects the filter inside the module.
    pub fn root_id(self) -> &'static str {
        match self {
            Kind::Http => WEFT,
            Kind::Tcp => weft_policy::contract::TCP_ROOT_ID,
        }
    }

    /// Type URL of the filter's configuration (`Wasm` of the HTTP or the network filter).
    pub fn type_url(self) -> String {
        match self {
            Kind::Http => HttpWasm::type_url(),
            Kind::Tcp => NetworkWasm::type_url(),
        }
    }
}

/// Why a plugin configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The JSON document is not a valid plugin configuration.
    #[error(transparent)]
    Json(#[from] ConfigError),
    /// The configuration cannot be compiled into a bundle.
    #[error("plugin configuration: {0}")]
    Bundle(#[from] WireError),
}

/// A plugin configuration as Envoy hands it to `weft.wasm`: the compiled bundle
/// ([`weft_policy::wire`]) in a `google.protobuf.BytesValue`, whose bytes Envoy passes on as
/// they are. `weft.wasm` reads nothing else (docs/plugin-configuration.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration(pub Vec<u8>);

impl Configuration {
    /// The bundle of `config`.
    ///
    /// # Errors
    /// [`PluginError::Bundle`] when a regex of `config` does not compile.
    pub fn compile(config: &PluginConfig) -> Result<Self, PluginError> {
        Ok(Self(wire::encode(config)?))
    }

    /// The bundle of the JSON document `text` (docs/plugin-configuration.md).
    ///
    /// # Errors
    /// [`PluginError::Json`] naming the field of an invalid document, or
    /// [`PluginError::Bundle`].
    pub fn from_json(text: &str) -> Result<Self, PluginError> {
        Self::compile(&PluginConfig::from_json(text.as_bytes())?)
    }

    /// The `Any` Envoy's wasm plugin carries it in.
    fn any(&self) -> Any {
        any(&BytesValue {
            value: self.0.clone(),
        })
    }
}

/// One weft plugin: which filter, where the module is, its configuration (the output of
/// `weft compile`, a [`weft_policy::PluginConfig`]) and what happens when it cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeftPlugin {
    /// Plugin name (several plugins in one chain need distinct names).
    pub name: String,
    /// HTTP or TCP.
    pub kind: Kind,
    /// The module.
    pub code: Code,
    /// The plugin configuration.
    pub configuration: Configuration,
    /// Fail closed (refuse traffic when the plugin cannot run: access) or open (split).
    pub fail_open: bool,
}

impl WeftPlugin {
    /// A plugin named `weft` that fails closed.
    pub fn new(kind: Kind, code: Code, configuration: Configuration) -> Self {
        Self {
            name: WEFT.to_owned(),
            kind,
            code,
            configuration,
            fail_open: false,
        }
    }

    fn plugin_config(&self) -> WasmPluginConfig {
        let code = match &self.code {
            Code::File(path) => async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::Filename(path.clone())),
                ..DataSource::default()
            }),
            Code::Remote {
                uri,
                cluster,
                sha256,
            } => async_data_source::Specifier::Remote(RemoteDataSource {
                http_uri: Some(HttpUri {
                    uri: uri.clone(),
                    timeout: Some(duration(Duration::from_secs(10))),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster.clone())),
                }),
                sha256: sha256.clone(),
                retry_policy: Some(RetryPolicy {
                    num_retries: Some(UInt32Value { value: 3 }),
                    ..RetryPolicy::default()
                }),
            }),
        };
        WasmPluginConfig {
            name: self.name.clone(),
            root_id: self.kind.root_id().to_owned(),
            vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                vm_id: WEFT.to_owned(),
                runtime: RUNTIME.to_owned(),
                code: Some(AsyncDataSource {
                    specifier: Some(code),
                }),
                // An update naming code Envoy has not fetched yet is refused (NACKed) rather
                // than accepted and skipped, which would let requests pass unfiltered
                // (ENVOY-FACTS.md); a background fetch then fills the cache.
                nack_on_code_cache_miss: matches!(self.code, Code::Remote { .. }),
                ..VmConfig::default()
            })),
            configuration: Some(self.configuration.any()),
            failure_policy: if self.fail_open {
                FailurePolicy::FailOpen
            } else {
                FailurePolicy::FailClosed
            } as i32,
            ..WasmPluginConfig::default()
        }
    }

    /// The filter's typed configuration: the `Wasm` message of the HTTP or network filter.
    pub fn typed_config(&self) -> Any {
        let config = Some(self.plugin_config());
        match self.kind {
            Kind::Http => any(&HttpWasm { config }),
            Kind::Tcp => any(&NetworkWasm { config }),
        }
    }

    /// The plugin as an ECDS resource named `resource_name`.
    pub fn extension_config(&self, resource_name: &str) -> TypedExtensionConfig {
        TypedExtensionConfig {
            name: resource_name.to_owned(),
            typed_config: Some(self.typed_config()),
        }
    }
}

/// The HTTP filter running `plugin` (its kind must be [`Kind::Http`]).
pub fn http_filter(plugin: &WeftPlugin) -> HttpFilter {
    HttpFilter {
        name: HTTP_WASM_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(plugin.typed_config())),
        ..HttpFilter::default()
    }
}

/// The network filter running `plugin` (its kind must be [`Kind::Tcp`]).
pub fn network_filter(plugin: &WeftPlugin) -> Filter {
    Filter {
        name: NETWORK_WASM_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(plugin.typed_config())),
    }
}

/// Where a filter's configuration is discovered: over ADS, as a `kind` plugin. No default
/// configuration: until the first one arrives the listener does not serve (ENVOY-FACTS.md), so
/// nothing passes a filter that is not configured yet.
fn discovery(kind: Kind) -> ExtensionConfigSource {
    ExtensionConfigSource {
        config_source: Some(ads()),
        type_urls: vec![kind.type_url()],
        ..ExtensionConfigSource::default()
    }
}

/// An HTTP filter whose weft plugin is the ECDS resource `resource_name`.
pub fn discovered_http_filter(resource_name: &str) -> HttpFilter {
    HttpFilter {
        name: resource_name.to_owned(),
        config_type: Some(http_filter::ConfigType::ConfigDiscovery(discovery(
            Kind::Http,
        ))),
        ..HttpFilter::default()
    }
}

/// A network filter whose weft plugin is the ECDS resource `resource_name`.
pub fn discovered_network_filter(resource_name: &str) -> Filter {
    Filter {
        name: resource_name.to_owned(),
        config_type: Some(filter::ConfigType::ConfigDiscovery(discovery(Kind::Tcp))),
    }
}
