//! `weft`: author and explain SMI for weft. `weft --help` lists the subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_cli::certs;
use weft_cli::commands::{self, ExplainRequest, Format, ListenerSettings, Outcome, Sources};
use weft_policy::CallerIdentity;
use weft_policy::bundle::Identity;
use weft_policy::bundle::{AccessMode, StickyKey};
use weft_policy::compile::{Options, Side};

/// Check, explain and compile SMI manifests for weft, and make the mesh's certificates.
#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "weft: check, explain and compile SMI manifests for weft.wasm in Envoy, and make the mesh CA and workload certificates.",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Cluster {
    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Kubernetes cluster domain of service host names.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

impl Cluster {
    fn options(&self) -> Options {
        Options {
            trust_domain: self.trust_domain.clone(),
            cluster_domain: self.cluster_domain.clone(),
        }
    }
}

/// The exit codes of every command, shown by `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success: no error in the manifests (warnings allowed), the decision explained, the
     configuration printed, the files written
  1  the manifests have errors or cannot be read (or, with --strict, have warnings); a
     certificate file cannot be read or written
  2  bad usage (unknown option, missing argument, options that do not go together)
  3  weft explain --exit-code: the request or connection would be denied";

#[derive(Clone, Copy, clap::ValueEnum)]
enum SideArg {
    /// Server side: access control and per-edge metrics.
    Inbound,
    /// Client side: split routing and per-edge metrics.
    Outbound,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    /// Deny what no TrafficTarget allows.
    Enforce,
    /// Allow everything.
    Permissive,
    /// Allow everything; log and count what enforce would deny.
    Audit,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Make a mesh root CA: DIR/ca.pem (give it to every Envoy as `trusted_ca`) and
    /// DIR/ca-key.pem (keep it secret).
    Ca {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// SPIFFE trust domain of the identities it will issue.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue a workload certificate whose URI SAN is the SPIFFE ID of a ServiceAccount:
    /// DIR/cert.pem and DIR/key.pem.
    Workload {
        /// Directory of the CA (from `weft cert ca`).
        #[arg(long)]
        ca: PathBuf,
        /// The workload, namespace/serviceaccount.
        #[arg(long)]
        identity: Identity,
        /// A DNS name to add (for callers that verify the server by name); repeat for more.
        #[arg(long = "dns")]
        dns_names: Vec<String>,
        /// Days of validity.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// SPIFFE trust domain (the CA's).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DescribeWhat {
    /// A Service, NAMESPACE/NAME.
    Service {
        /// The Service, namespace/name.
        service: String,
        #[command(flatten)]
        sources: Sources,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a mesh on this machine (local mode): the controller and, for each replica of each
    /// workload in DIR, its application and an Envoy sidecar on its own loopback address.
    /// Changes in DIR apply while it runs (policy over xDS; workloads added, scaled or removed
    /// get their replicas started or stopped). Ctrl-C stops every process it started.
    Up(weft_cli::mesh::UpArgs),
    /// Run the controller alone, for sidecars started with `weft sidecar` (on this host or
    /// others): it serves the manifests in DIR over xDS and watches them for changes.
    Controller(weft_cli::mesh::ControllerArgs),
    /// Prepare (and with --exec, run) the Envoy sidecar of one pod against a controller
    /// elsewhere: fetch the module over the control channel's mTLS (the controller checked by
    /// its SPIFFE ID) and check its SHA-256 (while it cannot be had, Envoy is not started and
    /// the fetch is retried, backing off to every 5 s), write the bootstrap. Its credentials
    /// come from `weft cert workload` with the controller's CA (and its ca.pem).
    Sidecar(weft_cli::mesh::SidecarArgs),
    /// Show every pod of a running controller: identity, address, readiness, the plugin
    /// configuration version it applied, refusals, certificate expiry.
    Status {
        /// The controller's status address.
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        controller: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
    /// Make the mesh CA and workload certificates for mTLS between Envoys.
    #[command(subcommand, after_help = EXIT_CODES)]
    Cert(CertCommand),
    /// Validate manifests: every problem, with file, line, object and field. Exit 0 when there
    /// is no error (warnings allowed), 1 when there are errors, 2 on bad usage.
    #[command(after_help = EXIT_CODES)]
    Check {
        /// Files or directories (searched recursively for .yaml, .yml and .json).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Treat every warning as an error.
        #[arg(long)]
        strict: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
    /// Show what every calling proxy gets for a Service: its clusters' and routes' Envoy
    /// settings, each with where it came from (weft, or a TrafficPolicy's field).
    #[command(after_help = EXIT_CODES)]
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Decide whether a request or connection would be allowed, and say why. Exit 0 whatever
    /// the decision, or with --exit-code 3 when it would be denied.
    #[command(after_help = EXIT_CODES)]
    Explain {
        #[command(flatten)]
        sources: Sources,
        #[command(flatten)]
        request: ExplainRequest,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        /// Exit 3 when the request or connection would be denied (for scripts).
        #[arg(long)]
        exit_code: bool,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// Compile a plugin configuration (a JSON document, as `weft compile` prints it or written
    /// by hand) into the bundle weft.wasm reads, printed base64-encoded for the `value` of a
    /// google.protobuf.BytesValue `configuration`.
    #[command(after_help = EXIT_CODES)]
    Bundle {
        /// The JSON document (`-` for standard input).
        document: PathBuf,
    },
    /// Print the weft plugin configuration of one workload's listener: the JSON document, or
    /// with --bundle the compiled bundle for the `configuration` of the weft filter.
    #[command(after_help = EXIT_CODES)]
    Compile {
        #[command(flatten)]
        sources: Sources,
        /// The workload, namespace/serviceaccount.
        #[arg(long)]
        identity: Identity,
        /// Which listener: inbound (access control and metrics) or outbound (split routing and
        /// metrics).
        #[arg(long, value_enum, default_value = "inbound")]
        side: SideArg,
        /// Inbound: what the access feature does with its decisions.
        #[arg(long, value_enum, default_value = "enforce")]
        mode: ModeArg,
        /// Inbound: a destination port open to callers without a verified certificate (a health
        /// check port, say); repeat for more.
        #[arg(long = "allow-unauthenticated-port")]
        unauthenticated_ports: Vec<u16>,
        /// The application port that port rules see, when the listener's own port differs (an
        /// explicit inbound listener in front of the application).
        #[arg(long)]
        destination_port: Option<u16>,
        /// Inbound: read the caller's identity from the x-forwarded-client-cert header instead
        /// of the connection (one host call a request less). Only for a listener whose
        /// http_connection_manager sets forward_client_cert_details: SANITIZE_SET and
        /// set_current_client_cert_details: {uri: true}; elsewhere a client could claim any
        /// identity (docs/access.md, "Caller identity from
        /// x-forwarded-client-cert").
        #[arg(long)]
        forwarded_client_cert: bool,
        /// Inbound: the Service (its name, in the workload's namespace) that the workload
        /// serves, the destination_service label of every request it receives; without it
        /// that label is `unknown`.
        #[arg(long)]
        service: Option<String>,
        /// Outbound: keep requests with the same value of this header on the same backend of
        /// every TrafficSplit while the weights do not change.
        #[arg(long, conflicts_with = "sticky_cookie")]
        sticky_header: Option<String>,
        /// Outbound: the same, keyed by this cookie.
        #[arg(long)]
        sticky_cookie: Option<String>,
        /// Leave the per-edge metrics out (they are on by default; see docs/metrics.md).
        #[arg(long)]
        no_metrics: bool,
        /// Print the compiled bundle that weft.wasm reads, base64-encoded: the `value` of a
        /// google.protobuf.BytesValue `configuration` (without it, the readable JSON document).
        #[arg(long)]
        bundle: bool,
        #[command(flatten)]
        cluster: Cluster,
    },
}

/// A command that printed as it went (or prints `stdout`): exit 0, or 1 with the error.
fn finished(result: anyhow::Result<String>) -> Outcome {
    match result {
        Ok(stdout) => Outcome::ok(stdout),
        Err(err) => Outcome::fail(commands::EXIT_INVALID, format!("weft: {err:#}\n")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome: Outcome = match cli.command {
        Command::Up(args) => finished(weft_cli::mesh::up(&args).map(|()| String::new())),
        Command::Controller(args) => {
            finished(weft_cli::mesh::controller(&args).map(|()| String::new()))
        }
        Command::Sidecar(args) => finished(weft_cli::mesh::sidecar(&args).map(|()| String::new())),
        Command::Status { controller, output } => finished(
            weft_cli::mesh::fetch_status(&controller).map(|status| match output {
                Format::Json => format!("{}\n", serde_json::to_string(&status).unwrap_or_default()),
                Format::Human => weft_cli::mesh::status_table(&status),
            }),
        ),
        Command::Cert(CertCommand::Ca {
            out,
            trust_domain,
            days,
        }) => certs::make_ca(&out, &trust_domain, days),
        Command::Cert(CertCommand::Workload {
            ca,
            identity,
            dns_names,
            days,
            trust_domain,
            out,
        }) => certs::make_workload(&ca, &identity, &dns_names, days, &trust_domain, &out),
        Command::Check {
            paths,
            strict,
            output,
        } => commands::check(&Sources { paths, strict }, output),
        Command::Bundle { document } => commands::bundle(&document),
        Command::Describe {
            what: DescribeWhat::Service { service, sources },
        } => commands::describe_service(&sources, &service),
        Command::Explain {
            sources,
            request,
            output,
            exit_code,
            cluster,
        } => commands::explain(&sources, &request, &cluster.options(), output, exit_code),
        Command::Compile {
            sources,
            identity,
            side,
            mode,
            unauthenticated_ports,
            destination_port,
            forwarded_client_cert,
            service,
            sticky_header,
            sticky_cookie,
            no_metrics,
            bundle,
            cluster,
        } => {
            let side = match side {
                SideArg::Inbound => Side::Inbound,
                SideArg::Outbound => Side::Outbound,
            };
            let listener = ListenerSettings {
                mode: match mode {
                    ModeArg::Enforce => AccessMode::Enforce,
                    ModeArg::Permissive => AccessMode::Permissive,
                    ModeArg::Audit => AccessMode::Audit,
                },
                unauthenticated_ports,
                destination_port,
                caller_identity: match forwarded_client_cert {
                    true => CallerIdentity::ForwardedClientCert,
                    false => CallerIdentity::Connection,
                },
                service,
                sticky: sticky_header
                    .map(StickyKey::Header)
                    .or(sticky_cookie.map(StickyKey::Cookie)),
                metrics: !no_metrics,
            };
            commands::compile_config(
                &sources,
                &identity,
                side,
                &cluster.options(),
                &listener,
                bundle,
            )
        }
    };
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(u8::try_from(outcome.code).unwrap_or(1))
}
