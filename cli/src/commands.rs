//! The `weft` subcommands as functions from arguments to [`Outcome`] (what to print, exit
//! code), so they are tested without spawning a process as well as through the binary.

use std::path::PathBuf;

use serde_json::json;
use weft_policy::bundle::{AccessMode, Identity, StickyKey};
use weft_policy::catalog::Catalog;
use weft_policy::compile::{Options, Side, compile};
use weft_policy::config::{CallerIdentity, PluginConfig};
use weft_policy::diagnostic::Diagnostic;
use weft_policy::engine::{Decision, DenyReason, Engine, HttpRequest};
use weft_policy::explain::{ExplainReport, ExplainedRequest};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the manifests have errors (or cannot be read).
pub const EXIT_INVALID: i32 = 1;
/// Exit code: bad usage (clap uses it too).
pub const EXIT_USAGE: i32 = 2;
/// Exit code of `weft explain --exit-code` when the decision is to deny.
pub const EXIT_DENIED: i32 = 3;

/// What a command prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    /// Text for standard output.
    pub stdout: String,
    /// Text for standard error.
    pub stderr: String,
    /// Process exit code.
    pub code: i32,
}

impl Outcome {
    /// Success, printing `stdout`.
    pub fn ok(stdout: String) -> Self {
        Self {
            stdout,
            stderr: String::new(),
            code: EXIT_OK,
        }
    }

    /// Failure with exit `code`, printing `stderr`.
    pub fn fail(code: i32, stderr: String) -> Self {
        Self {
            stdout: String::new(),
            stderr,
            code,
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people.
    Human,
    /// JSON for tools.
    Json,
}

/// Protocol of an explained request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// An HTTP request.
    Http,
    /// A TCP connection.
    Tcp,
}

/// Where a command reads its manifests from, and how strictly (`--manifests`, `--strict`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Sources {
    /// Directory (or file) of manifests; repeat for more.
    #[arg(long = "manifests", value_name = "MANIFESTS", required = true)]
    pub paths: Vec<PathBuf>,
    /// Treat every warning in the manifests as an error.
    #[arg(long)]
    pub strict: bool,
}

/// Reads and checks manifests (a file that cannot be read is one more error); `Err` is an
/// outcome to return as it is.
fn load(sources: &Sources) -> Result<(Catalog, Vec<Diagnostic>), Outcome> {
    weft_controller::index::load(&sources.paths, sources.strict)
        .map_err(|err| Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")))
}

fn human_diagnostics(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| format!("{d}\n")).collect()
}

/// Reads manifests for a command that decides or compiles: a set with errors stops it, with
/// the errors printed, so nothing is decided or compiled from a broken set.
fn load_valid(sources: &Sources) -> Result<(Catalog, Vec<Diagnostic>), Outcome> {
    let (catalog, diagnostics) = load(sources)?;
    if diagnostics.iter().any(Diagnostic::is_error) {
        let errors = diagnostics.iter().filter(|d| d.is_error()).count();
        return Err(Outcome::fail(
            EXIT_INVALID,
            format!(
                "{}weft: the manifests have {errors} error(s); fix them first (weft check)\n",
                human_diagnostics(&diagnostics)
            ),
        ));
    }
    Ok((catalog, diagnostics))
}

/// `weft describe service NS/NAME`.
pub fn describe_service(manifests: &Sources, service: &str) -> Outcome {
    let (catalog, _) = match load_valid(manifests) {
        Ok(loaded) => loaded,
        Err(outcome) => return outcome,
    };
    match crate::describe::describe_service(&catalog, service) {
        Ok(text) => Outcome::ok(text),
        Err(err) => Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    }
}

/// `weft check`.
pub fn check(sources: &Sources, format: Format) -> Outcome {
    let (catalog, diagnostics) = match weft_controller::index::check(&sources.paths, sources.strict)
    {
        Ok(loaded) => loaded,
        Err(err) => return Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    };
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let objects = catalog.len();
    let stdout = match format {
        Format::Json => json!({"errors": errors, "warnings": warnings, "objects": objects, "diagnostics": diagnostics}).to_string() + "\n",
        Format::Human => format!(
            "{}{errors} error(s), {warnings} warning(s) in {objects} object(s)\n",
            human_diagnostics(&diagnostics)
        ),
    };
    Outcome {
        stdout,
        stderr: String::new(),
        code: if errors > 0 { EXIT_INVALID } else { EXIT_OK },
    }
}

/// The request `weft explain` decides (its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainRequest {
    /// The caller, namespace/serviceaccount.
    #[arg(long)]
    pub from: Identity,
    /// The destination, namespace/serviceaccount.
    #[arg(long)]
    pub to: Identity,
    /// HTTP request or TCP connection.
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// HTTP path (a query string is ignored).
    #[arg(long, default_value = "/")]
    pub path: String,
    /// HTTP header as NAME=VALUE; repeat for more.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
}

/// A `--header NAME=VALUE`, its name lower-cased.
///
/// # Errors
/// When it has no `=` or an empty name.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("{text:?} has an empty header name"));
    }
    Ok((name.to_ascii_lowercase(), value.to_owned()))
}

/// `weft explain`: exit 0 whatever the decision, or with `exit_code` [`EXIT_DENIED`] for a
/// denial.
pub fn explain(
    manifests: &Sources,
    request: &ExplainRequest,
    options: &Options,
    format: Format,
    exit_code: bool,
) -> Outcome {
    let (catalog, diagnostics) = match load_valid(manifests) {
        Ok(loaded) => loaded,
        Err(outcome) => return outcome,
    };
    let config = match compile(&catalog, &diagnostics, &request.to, Side::Inbound, options) {
        Ok(config) => config,
        Err(err) => return Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    };
    let engine = match Engine::new(&config) {
        Ok(engine) => engine,
        Err(err) => {
            return Outcome::fail(
                EXIT_INVALID,
                format!("weft: compiled configuration is invalid: {err}\n"),
            );
        }
    };
    let source = request.from.spiffe_id(&options.trust_domain);
    let decision = match request.protocol {
        Protocol::Tcp => engine.decide_tcp(Some(&source), request.port),
        Protocol::Http => engine.decide_http(&HttpRequest {
            source: Some(&source),
            method: &request.method,
            path: &request.path,
            port: request.port,
            headers: &request.headers,
        }),
    };
    let explained = match request.protocol {
        Protocol::Tcp => ExplainedRequest::Tcp { port: request.port },
        Protocol::Http => ExplainedRequest::Http {
            method: request.method.clone(),
            path: request.path.clone(),
            port: request.port,
            headers: request.headers.clone(),
        },
    };
    let allowed = decision.is_allowed();
    let report = ExplainReport::new(
        decision,
        source.clone(),
        request.to.spiffe_id(&options.trust_domain),
        explained,
    );
    let mut outcome = match format {
        Format::Json => Outcome::ok(serde_json::to_string(&report).unwrap_or_default() + "\n"),
        Format::Human => Outcome::ok(human_decision(&report)),
    };
    if exit_code && !allowed {
        outcome.code = EXIT_DENIED;
    }
    outcome
}

fn human_decision(report: &ExplainReport) -> String {
    let what = match &report.request {
        ExplainedRequest::Tcp { port } => format!("TCP connection to port {port}"),
        ExplainedRequest::Http {
            method, path, port, ..
        } => format!("{method} {path} on port {port}"),
    };
    let head = format!("{what}\nfrom {}\nto   {}\n", report.from, report.to);
    let reason = match &report.decision {
        Decision::Allow {
            traffic_target,
            rule,
            route,
            http_match,
        } => {
            let matched = http_match
                .as_ref()
                .map(|m| format!(", match {m}"))
                .unwrap_or_default();
            return format!(
                "{head}ALLOW: TrafficTarget {traffic_target} rule {rule} ({route}{matched})\n"
            );
        }
        Decision::AllowUnauthenticated { port } => {
            return format!("{head}ALLOW: port {port} is open to callers without an identity\n");
        }
        Decision::Deny { reason } => reason,
    };
    let why = match reason {
        DenyReason::Unauthenticated => "the caller has no verified identity".to_owned(),
        DenyReason::NoAccessPolicy => "there is no access policy".to_owned(),
        DenyReason::NoTrafficTarget { .. } => {
            "no TrafficTarget lists this source for this destination".to_owned()
        }
        DenyReason::PathNotNormal { .. } => reason.to_string(),
        DenyReason::NoMatchingRule {
            traffic_targets, ..
        } => format!(
            "TrafficTarget(s) {} list this source, but none of their rules matches",
            traffic_targets.join(", ")
        ),
    };
    format!("{head}DENY: {why}\n")
}

/// `weft compile`: the JSON document, or with `bundle` the compiled bundle weft.wasm reads,
/// base64-encoded.
pub fn compile_config(
    manifests: &Sources,
    identity: &Identity,
    side: Side,
    options: &Options,
    listener: &ListenerSettings,
    bundle: bool,
) -> Outcome {
    if side == Side::Outbound
        && (listener.mode != AccessMode::Enforce || !listener.unauthenticated_ports.is_empty())
    {
        return Outcome::fail(
            EXIT_USAGE,
            "weft: --mode and --allow-unauthenticated-port set the access feature, which runs on --side inbound\n"
                .to_owned(),
        );
    }
    if side == Side::Outbound && listener.service.is_some() {
        return Outcome::fail(
            EXIT_USAGE,
            "weft: --service names the Service an inbound listener serves; use it with --side inbound\n"
                .to_owned(),
        );
    }
    if let Some(service) = &listener.service
        && service.contains('.')
    {
        return Outcome::fail(
            EXIT_USAGE,
            format!(
                "weft: --service {service}: give the Service's name only; its namespace is the workload's ({})\n",
                identity.namespace
            ),
        );
    }
    if side == Side::Inbound && listener.sticky.is_some() {
        return Outcome::fail(
            EXIT_USAGE,
            "weft: --sticky-header and --sticky-cookie set split routing, which runs on --side outbound\n"
                .to_owned(),
        );
    }
    let (catalog, diagnostics) = match load_valid(manifests) {
        Ok(loaded) => loaded,
        Err(outcome) => return outcome,
    };
    match compile(&catalog, &diagnostics, identity, side, options) {
        Ok(mut config) => {
            config.destination_port = listener.destination_port;
            config.caller_identity = listener.caller_identity;
            if let Some(access) = config.access.as_mut() {
                access.mode = listener.mode;
                access.unauthenticated_ports = listener.unauthenticated_ports.clone();
            }
            for split in &mut config.splits {
                split.sticky.clone_from(&listener.sticky);
            }
            if let (Some(metrics), Some(service)) = (config.metrics.as_mut(), &listener.service) {
                metrics.service = Some(format!("{service}.{}", identity.namespace));
            }
            if !listener.metrics {
                config.metrics = None;
            }
            // Refuse here what the filter would refuse when it loads.
            if let Err(err) = Engine::new(&config) {
                return Outcome::fail(EXIT_USAGE, format!("weft: {err}\n"));
            }
            if bundle {
                return render_bundle(&config, &diagnostics);
            }
            render_config(&config, &diagnostics)
        }
        Err(err) => Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    }
}

/// `weft bundle`: the JSON document at `path` (`-`: standard input) compiled into its bundle,
/// base64-encoded; a document the filter would refuse is refused here, naming the field.
pub fn bundle(path: &std::path::Path) -> Outcome {
    let text = if path.as_os_str() == "-" {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read(path)
    };
    let text = match text {
        Ok(text) => text,
        Err(err) => {
            return Outcome::fail(
                EXIT_USAGE,
                format!("weft: cannot read {}: {err}\n", path.display()),
            );
        }
    };
    let config = match PluginConfig::from_json(&text) {
        Ok(config) => config,
        Err(err) => return Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    };
    if let Err(err) = Engine::new(&config) {
        return Outcome::fail(EXIT_INVALID, format!("weft: {err}\n"));
    }
    render_bundle(&config, &[])
}

fn render_bundle(config: &PluginConfig, diagnostics: &[Diagnostic]) -> Outcome {
    use base64::Engine as _;
    match weft_policy::wire::encode(config) {
        Ok(bytes) => {
            let mut outcome =
                Outcome::ok(base64::engine::general_purpose::STANDARD.encode(bytes) + "\n");
            outcome.stderr = human_diagnostics(diagnostics);
            outcome
        }
        Err(err) => Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    }
}

fn render_config(config: &PluginConfig, diagnostics: &[Diagnostic]) -> Outcome {
    match serde_json::to_string_pretty(config) {
        Ok(json) => {
            let mut outcome = Outcome::ok(json + "\n");
            outcome.stderr = human_diagnostics(diagnostics);
            outcome
        }
        Err(err) => Outcome::fail(EXIT_INVALID, format!("weft: {err}\n")),
    }
}

/// Settings of one listener's plugin that SMI does not carry.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Access mode (inbound only).
    pub mode: AccessMode,
    /// Ports open to callers without a verified certificate (inbound only).
    pub unauthenticated_ports: Vec<u16>,
    /// The port that port rules see, when the listener's port is not the application's.
    pub destination_port: Option<u16>,
    /// Where HTTP requests' caller identity is read (inbound only).
    pub caller_identity: CallerIdentity,
    /// The Service the workload serves, by name (inbound only).
    pub service: Option<String>,
    /// Where every TrafficSplit reads its sticky key (outbound only).
    pub sticky: Option<StickyKey>,
    /// Whether the plugin records per-edge metrics.
    pub metrics: bool,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            mode: AccessMode::default(),
            unauthenticated_ports: Vec::new(),
            destination_port: None,
            caller_identity: CallerIdentity::Connection,
            service: None,
            sticky: None,
            metrics: true,
        }
    }
}
