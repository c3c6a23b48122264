//! The configurations shipped in `envoy-configs/`, generated from this crate and the example
//! policy `examples/shop` (compiled as `weft compile` compiles it): a test fails when a file
//! differs from what is generated here, and `make envoy-configs` rewrites them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use weft_policy::PluginConfig;
use weft_policy::bundle::{DEFAULT_TRUST_DOMAIN, Direction, Identity, MetricsConfig};
use weft_policy::compile::{CompileError, Options, Side, compile};

use crate::bootstrap::bootstrap;
use crate::clusters::static_cluster;
use crate::filters::{Code, Configuration, Kind, PluginError, WeftPlugin, http_filter};
use crate::listeners::{
    HttpListener, ROUTE_HEADER, Routes, direct_response, route_configuration, route_to,
    split_route, virtual_host,
};
use crate::render::{RenderError, to_json};
use crate::tls::{Credentials, downstream_tls};
use crate::yaml::{Comment, to_yaml};

/// Why the shipped configurations could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum ShippedError {
    /// The example policy does not compile.
    #[error("examples/shop, as {identity}: {source}")]
    Compile {
        /// The workload compiled for.
        identity: String,
        /// Why.
        source: CompileError,
    },
    /// A resource could not be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A plugin configuration could not be compiled into its bundle.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// Where the shipped configurations load the module from (relative to the repository root,
/// where the README runs Envoy).
pub const MODULE: &str = "target/wasm/weft.wasm";

/// One file of `envoy-configs/`.
#[derive(Debug, Clone)]
pub struct ShippedConfig {
    /// File name.
    pub file: &'static str,
    /// The configuration.
    pub bootstrap: Bootstrap,
    /// What the file says on top.
    pub header: &'static str,
    /// What it says above some fields.
    pub comments: Vec<Comment>,
}

impl ShippedConfig {
    /// The file's text.
    ///
    /// # Errors
    /// When a resource cannot be rendered.
    pub fn yaml(&self) -> Result<String, RenderError> {
        Ok(to_yaml(
            &to_json(&self.bootstrap)?,
            self.header,
            &self.comments,
        ))
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn compiled(
    manifests: &[(String, String)],
    identity: &str,
    side: Side,
) -> Result<PluginConfig, ShippedError> {
    let (catalog, diagnostics) =
        weft_policy::check(manifests.iter().map(|(f, t)| (f.as_str(), t.as_str())));
    let error = |source| ShippedError::Compile {
        identity: identity.to_owned(),
        source,
    };
    #[allow(clippy::expect_used)]
    let parsed: Identity = identity.parse().expect("a valid identity literal");
    compile(&catalog, &diagnostics, &parsed, side, &Options::default()).map_err(error)
}

/// What `weft compile` prints for `config`.
/// `config` compiled into the bundle weft.wasm reads, and the comment that shows it: what
/// made it, and the JSON document it holds, which the base64 of a `BytesValue` does not show.
fn plugin_configuration(
    config: &PluginConfig,
    made_by: &str,
) -> Result<(Configuration, Comment), ShippedError> {
    let document = serde_json::to_string_pretty(config).unwrap_or_default();
    let comment = Comment::at(
        &format!("{WEFT_CONFIG}/configuration"),
        &format!(
            "{made_by}\n\
             The compiled bundle (docs/plugin-configuration.md) of this JSON document, which\n\
             `weft compile` without --bundle prints:\n{document}"
        ),
    );
    Ok((Configuration::compile(config)?, comment))
}

const LISTENER: &str = "static_resources/listeners/0";
const MANAGER: &str = "static_resources/listeners/0/filter_chains/0/filters/0/typed_config";
const WEFT_CONFIG: &str = "static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config/config";

fn common_comments() -> Vec<Comment> {
    vec![
        Comment::at(
            "stats_config",
            "weft's metrics (docs/metrics.md): each label weft writes into a metric's name becomes a\n\
             Prometheus label in /stats/prometheus, and request durations get whole-millisecond buckets.",
        ),
        Comment::at(
            "memory_allocator_manager",
            "Hand the memory Envoy's allocator frees back to the system, 16 MiB a second at most:\n\
             loading the wasm module leaves several MiB of it free and held otherwise.",
        ),
        Comment::at(
            &format!("{WEFT_CONFIG}/vm_config/code/local/filename"),
            "Relative to Envoy's working directory; use an absolute path elsewhere.",
        ),
    ]
}

fn normalisation_comment() -> Comment {
    Comment::at(
        &format!("{MANAGER}/merge_slashes"),
        "Paths in normal form before any filter sees them (docs/access.md, \"Paths\"): dot\n\
         segments resolved, needlessly encoded characters decoded, `\\` read as `/`, `//`\n\
         merged, and an encoded slash or backslash refused with 400 (also normalize_path and\n\
         path_with_escaped_slashes_action). The access filter judges the path the application\n\
         will serve.",
    )
}

/// Every shipped configuration, from the example policy's manifests (file name, text).
///
/// # Errors
/// When the example does not compile.
pub fn generate(example: &[(String, String)]) -> Result<Vec<ShippedConfig>, ShippedError> {
    Ok(vec![
        standalone()?,
        inbound_access(example)?,
        outbound_split(example)?,
    ])
}

/// `standalone.yaml`: the smallest configuration that runs weft.
///
/// # Errors
/// Only if its plugin configuration could not be compiled, which it always can.
pub fn standalone() -> Result<ShippedConfig, ShippedError> {
    let config = PluginConfig {
        metrics: Some(MetricsConfig {
            direction: Direction::Inbound,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            services: Vec::new(),
            service: None,
        }),
        ..PluginConfig::default()
    };
    let (configuration, configuration_comment) = plugin_configuration(
        &config,
        "Only per-edge metrics, here counting every request from an unknown caller\n\
         (no mTLS) to an unknown service (none configured); see docs/metrics.md.",
    )?;
    let plugin = WeftPlugin::new(Kind::Http, Code::File(MODULE.to_owned()), configuration);
    let mut listener = HttpListener::new(
        "ingress",
        loopback(10000),
        Routes::Inline(Box::new(route_configuration(
            "",
            vec![virtual_host(
                "app",
                &["*".to_owned()],
                vec![route_to("app")],
            )],
        ))),
    );
    listener.filters = vec![http_filter(&plugin)];
    listener.normalise_paths = true;
    let mut comments = common_comments();
    comments.push(normalisation_comment());
    comments.push(configuration_comment);
    comments.push(Comment::at(
        &format!("{WEFT_CONFIG}/failure_policy"),
        "If the plugin cannot run, refuse requests instead of passing them on unchecked.",
    ));
    Ok(ShippedConfig {
        file: "standalone.yaml",
        bootstrap: bootstrap(
            loopback(9901),
            vec![listener.build()],
            vec![static_cluster("app", &[loopback(8080)])],
        ),
        header: "The smallest Envoy configuration that runs weft: one HTTP listener on 127.0.0.1:10000 with\n\
                 the weft filter, in front of an application on 127.0.0.1:8080. Admin on 127.0.0.1:9901.\n\
                 \n\
                 \x20 make build                                   # writes target/wasm/weft.wasm\n\
                 \x20 .venv/bin/envoy -c envoy-configs/standalone.yaml   # run from the repository root\n\
                 \n\
                 `make demo-standalone` does exactly this with a small upstream on :8080 and sends a request through.\n\
                 Generated by envoy-config/src/shipped.rs (`make envoy-configs`); edit that, not this file.",
        comments,
    })
}

/// `inbound-access.yaml`: shop/api's inbound sidecar with mTLS and access control.
///
/// # Errors
/// When the example does not compile.
pub fn inbound_access(example: &[(String, String)]) -> Result<ShippedConfig, ShippedError> {
    let mut config = compiled(example, "shop/api", Side::Inbound)?;
    config.destination_port = Some(8080);
    if let Some(metrics) = config.metrics.as_mut() {
        metrics.service = Some("api.shop".to_owned());
    }
    let mut listener = HttpListener::new(
        "inbound",
        loopback(15006),
        Routes::Inline(Box::new(route_configuration(
            "",
            vec![virtual_host(
                "local_app",
                &["*".to_owned()],
                vec![route_to("local_app")],
            )],
        ))),
    );
    let (configuration, configuration_comment) = plugin_configuration(
        &config,
        "The output of:\n\
         \x20 weft compile --manifests examples/shop --identity shop/api --destination-port 8080 --service api --bundle\n\
         (destination_port: the application's port, which TCPRoute port rules name;\n\
         this listener's own port is 15006. service: the Service shop/api serves, the\n\
         destination of every request this listener counts.)",
    )?;
    let plugin = WeftPlugin::new(Kind::Http, Code::File(MODULE.to_owned()), configuration);
    listener.filters = vec![http_filter(&plugin)];
    listener.normalise_paths = true;
    listener.tls = Some(downstream_tls(
        &Credentials::Files {
            cert: "pki/api/cert.pem".to_owned(),
            key: "pki/api/key.pem".to_owned(),
            ca: "pki/ca/ca.pem".to_owned(),
        },
        true,
    ));
    let mut comments = common_comments();
    comments.push(normalisation_comment());
    comments.push(Comment::at(
        &format!(
            "{LISTENER}/filter_chains/0/transport_socket/typed_config/require_client_certificate"
        ),
        "mTLS: a caller without a certificate the mesh CA signed is refused at the handshake.",
    ));
    comments.push(Comment::at(
        &format!("{LISTENER}/filter_chains/0/transport_socket/typed_config/common_tls_context/validation_context"),
        "The filter reads the caller's identity from the verified certificate; never set\n\
         trust_chain_verification: ACCEPT_UNTRUSTED here.",
    ));
    comments.push(configuration_comment);
    comments.push(Comment::at(
        &format!("{WEFT_CONFIG}/failure_policy"),
        "If the plugin cannot run, refuse every request instead of passing it unchecked.",
    ));
    Ok(ShippedConfig {
        file: "inbound-access.yaml",
        bootstrap: bootstrap(
            loopback(9901),
            vec![listener.build()],
            vec![static_cluster("local_app", &[loopback(8080)])],
        ),
        header: "A complete inbound sidecar with weft access control: Envoy terminates mTLS for the\n\
                 workload shop/api on 127.0.0.1:15006, requires and verifies client certificates against\n\
                 the mesh CA, lets the weft filter decide per request from the callers' SPIFFE identities,\n\
                 and routes what is allowed to the application on 127.0.0.1:8080. Admin on 127.0.0.1:9901.\n\
                 \n\
                 Run from the repository root after the README's walk-through (\"Access control: from\n\
                 certificates to an enforcing Envoy\"), which makes the pki/ files:\n\
                 \n\
                 \x20 .venv/bin/envoy -c envoy-configs/inbound-access.yaml\n\
                 \n\
                 Generated by envoy-config/src/shipped.rs (`make envoy-configs`); edit that, not this file.",
        comments,
    })
}

/// `outbound-split.yaml`: shop/frontend's outbound sidecar with split routing.
///
/// # Errors
/// When the example does not compile.
pub fn outbound_split(example: &[(String, String)]) -> Result<ShippedConfig, ShippedError> {
    let config = compiled(example, "shop/frontend", Side::Outbound)?;
    let (configuration, configuration_comment) = plugin_configuration(
        &config,
        "The output of\n\
         \x20 weft compile --manifests examples/shop --identity shop/frontend --side outbound --bundle",
    )?;
    let mut plugin = WeftPlugin::new(Kind::Http, Code::File(MODULE.to_owned()), configuration);
    plugin.fail_open = true;
    let mut virtual_hosts = Vec::new();
    for split in &config.splits {
        let name = split.service.split('.').next().unwrap_or_default();
        // A root service addressed with its port still gets weft's choice.
        let domains: Vec<String> = split
            .hosts
            .iter()
            .cloned()
            .chain(split.hosts.iter().map(|host| format!("{host}:80")))
            .collect();
        virtual_hosts.push(virtual_host(
            name,
            &domains,
            vec![split_route(), route_to(&split.service)],
        ));
    }
    virtual_hosts.push(virtual_host(
        "others",
        &["*".to_owned()],
        vec![
            split_route(),
            direct_response(404, "no service of this example has that name\n"),
        ],
    ));
    let mut listener = HttpListener::new(
        "outbound",
        loopback(15001),
        Routes::Inline(Box::new(route_configuration("outbound", virtual_hosts))),
    );
    listener.filters = vec![http_filter(&plugin)];
    listener.strip_request_headers = vec![ROUTE_HEADER.to_owned()];
    let mut comments = common_comments();
    comments.push(Comment::at(
        &format!("{MANAGER}/early_header_mutation_extensions"),
        "Defence in depth: a client's own x-weft-cluster is dropped before any filter or\n\
         route sees it. weft drops or replaces it too, but this also holds if the plugin is\n\
         bypassed (failure_policy FAIL_OPEN below).",
    ));
    comments.push(Comment::at(
        &format!("{MANAGER}/route_config/virtual_hosts/0/routes/0"),
        "weft chose a cluster: go there, and do not tell the upstream. No retries, so every\n\
         request is counted once, on the backend chosen.",
    ));
    comments.push(Comment::at(
        &format!("{MANAGER}/route_config/virtual_hosts/0/routes/1"),
        "No choice (weft fell back, or was bypassed): the root service.",
    ));
    comments.push(configuration_comment);
    comments.push(Comment::at(
        &format!("{WEFT_CONFIG}/failure_policy"),
        "Split routing fails to the root service, never closed: if the VM fails, the\n\
         filter is bypassed and Envoy's own routes send `checkout` to its root service.\n\
         (An invalid configuration is still reported when Envoy loads it.)",
    ));
    comments.push(Comment::at(
        "static_resources/clusters",
        "One cluster per service, named `name.namespace` as weft names them.",
    ));
    Ok(ShippedConfig {
        file: "outbound-split.yaml",
        bootstrap: bootstrap(
            loopback(9902),
            vec![listener.build()],
            vec![
                static_cluster("checkout.shop", &[loopback(8081)]),
                static_cluster("checkout-v1.shop", &[loopback(8082)]),
                static_cluster("checkout-v2.shop", &[loopback(8083)]),
            ],
        ),
        header: "A complete client-side (outbound) sidecar with weft split routing for the workload\n\
                 shop/frontend: the application sends its requests to 127.0.0.1:15001 with the service's name\n\
                 as Host, and requests for the TrafficSplit's root service `checkout` go to checkout-v1 or\n\
                 checkout-v2 in the proportions of examples/shop/split.yaml (90/10). Admin on 127.0.0.1:9902.\n\
                 \n\
                 How the choice reaches Envoy: weft writes the chosen cluster (the service's `name.namespace`)\n\
                 into the request header x-weft-cluster; the first route of each virtual host sends requests\n\
                 that carry it to that cluster (`cluster_header`) and removes the header before the request\n\
                 leaves Envoy. Requests without it (a host that is not a root service, or weft falling back)\n\
                 take Envoy's own routes, so `checkout` always reaches at least its root service.\n\
                 \n\
                 Run from the repository root after `make build`, with three upstreams:\n\
                 \n\
                 \x20 target/debug/weft-upstream 127.0.0.1:8081 checkout &      # the root service (all versions)\n\
                 \x20 target/debug/weft-upstream 127.0.0.1:8082 checkout-v1 &\n\
                 \x20 target/debug/weft-upstream 127.0.0.1:8083 checkout-v2 &\n\
                 \x20 .venv/bin/envoy -c envoy-configs/outbound-split.yaml &\n\
                 \x20 for i in $(seq 100); do curl -s -H 'Host: checkout' 127.0.0.1:15001/; done | sort | uniq -c\n\
                 \n\
                 See docs/split.md. Generated by envoy-config/src/shipped.rs (`make envoy-configs`); edit that,\n\
                 not this file.",
        comments,
    })
}
