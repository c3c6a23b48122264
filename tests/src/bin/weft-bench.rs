//! `weft-bench` (what `make bench` runs): data-plane benchmarks with wrk on loopback, weft
//! against Envoy's native equivalent of each feature, each measured on an Envoy of its own
//! (`--concurrency 1`):
//!
//! - access: wrk talks plaintext to a client sidecar Envoy, which calls the measured inbound
//!   Envoy over mTLS as shop/frontend, in front of the same upstream: with no access control,
//!   with Envoy's native RBAC filter expressing the example SMI policy, and with weft enforcing
//!   it (alone; with per-edge metrics in the same plugin; with metrics in a second plugin);
//! - split: wrk talks to the measured outbound Envoy, asking for the root service of the
//!   example canary (90/10 over two backends): with a plain route to one backend, with Envoy's
//!   native `weighted_clusters` expressing the split, and with weft choosing (alone; with
//!   metrics in the same plugin; with metrics in a second plugin).
//!
//! All variants of a suite run in one run, interleaved over several rounds with the median kept,
//! so that drift of the machine hits every variant alike. Prints a Markdown table per suite of
//! throughput, p50/p99 latency, the measured Envoy's CPU time per request and its resident
//! memory, as ratios to the native equivalent. Then each variant's Envoy starts once more at
//! `--concurrency 2` for its memory after a short load, once the allocator has handed back what
//! it releases, with tcmalloc's own account beside it (a second table).
//!
//! Then each variant's measured Envoy runs once more under valgrind's callgrind, which counts
//! the instructions it executes for a fixed number of requests sent one at a time: a cost per
//! request that does not move with the load of a shared machine (wall-clock figures on two
//! shared cores move by a tenth between runs), printed as a second table.
//!
//! Options: `--duration SECONDS` (per run, default 10), `--rounds N` (default 3),
//! `--connections N` (default 16), `--instructions N` (requests counted under callgrind per
//! variant, default 2000; 0 skips the count), `--suite access|split` (default: both),
//! `--compare-wasm PATH` (adds a variant to each suite running that build of the module, to
//! measure two builds side by side in one run).

use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use serde_json::json;
use weft_e2e::bootstrap::{
    ServerTls, bootstrap, cluster, http_listener, http_listener_forwarding_caller,
    http_listener_with_hosts, route_to, split_route, virtual_host, weft_http_filter,
    weft_http_filter_with, weft_http_plugin, with_tls,
};
use weft_e2e::client::Session;
use weft_e2e::envoy::Envoy;
use weft_e2e::pki::{Issued, Pki};
use weft_e2e::upstream::HttpUpstream;
use weft_e2e::{paths, policy};
use weft_envoy_config::filters::Configuration;
use weft_envoy_config::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use weft_policy::PluginConfig;
use weft_policy::bundle::AccessMode;

/// One wrk run's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    requests: f64,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    rss_mib: f64,
}

struct Options {
    duration: u64,
    rounds: usize,
    connections: u64,
    /// Requests counted under callgrind per variant; 0 skips the count.
    instructions: u64,
    /// Only this suite (`access` or `split`); all when `None`.
    suite: Option<String>,
    /// Another build of weft.wasm to measure beside the current one.
    compare_wasm: Option<std::path::PathBuf>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        duration: 10,
        rounds: 3,
        connections: 16,
        instructions: 2000,
        suite: None,
        compare_wasm: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || -> anyhow::Result<u64> {
            let text = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            text.parse()
                .with_context(|| format!("{flag} {text:?} is not a whole number"))
        };
        if flag == "--compare-wasm" {
            let path = args.next().context("--compare-wasm needs a path")?;
            options.compare_wasm = Some(std::path::PathBuf::from(path));
            continue;
        }
        if flag == "--suite" {
            let name = args.next().context("--suite needs a value")?;
            if !SUITES.contains(&name.as_str()) {
                bail!("--suite {name:?}: choose one of {SUITES:?}");
            }
            options.suite = Some(name);
            continue;
        }
        match flag.as_str() {
            "--duration" => options.duration = value()?,
            "--rounds" => options.rounds = usize::try_from(value()?)?,
            "--connections" => options.connections = value()?,
            "--instructions" => options.instructions = value()?,
            other => {
                bail!(
                    "unknown option {other}; options: --duration S --rounds N --connections N --instructions N --suite NAME --compare-wasm PATH"
                )
            }
        }
    }
    Ok(options)
}

/// One set of variants measured against the same baseline.
struct Suite {
    /// What the measured Envoy does, for the table's first column.
    title: &'static str,
    /// The native equivalent ratios are taken against, for the table's header.
    baseline_name: &'static str,
    /// Index of that variant.
    baseline: usize,
    variants: Vec<(&'static str, Value)>,
    /// The Host header of every request, if not the listener's address.
    host: Option<&'static str>,
    path: &'static str,
    /// wrk calls the measured Envoy through the caller's mTLS sidecar.
    through_sidecar: bool,
    /// How the requests travel, printed under the table.
    setup: &'static str,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    // Upstreams that keep no record: a run sends millions of requests.
    let load = |name: &'static str| HttpUpstream::start_for_load(name, LOOPBACK_ANY_PORT);
    let upstream = load("app").await?;
    let checkout = [
        load("checkout").await?,
        load("checkout-v1").await?,
        load("checkout-v2").await?,
    ];
    let pki = Pki::new()?;
    let client = pki.workload("shop/frontend")?;
    let suites = [
        access_suite(&upstream, &pki, options.compare_wasm.as_deref())?,
        split_suite(&checkout, options.compare_wasm.as_deref())?,
    ];
    for (name, suite) in SUITES.iter().zip(&suites) {
        if options.suite.as_deref().is_none_or(|only| only == *name) {
            run_suite(suite, &options, &pki, &client).await?;
        }
    }
    if options
        .suite
        .as_deref()
        .is_none_or(|only| only == "configure")
    {
        configure_suite(&upstream, &options).await?;
    }
    Ok(())
}

/// TrafficTargets in the policy the configure suite loads.
const CONFIGURE_TRAFFIC_TARGETS: usize = 10_000;

/// How long weft takes to configure itself inside Envoy (`on_configure`: read the compiled
/// bundle, check its automata, build the engine; the plugin logs it) for a policy of
/// [`CONFIGURE_TRAFFIC_TARGETS`] TrafficTargets, with the bundle's size beside the JSON
/// document's and Envoy's RSS after. Each VM (main thread and worker) configures itself; the
/// slower is kept, then the median over the rounds.
async fn configure_suite(upstream: &HttpUpstream, options: &Options) -> anyhow::Result<()> {
    let manifests = vec![(
        "busy-api.yaml".to_owned(),
        weft_policy::testing::busy_api(CONFIGURE_TRAFFIC_TARGETS),
    )];
    let config = policy::inbound(&manifests, "shop/api", AccessMode::Enforce)?;
    let json = serde_json::to_string(&config)?.len();
    let configuration = Configuration::compile(&config)?;
    let bundle = configuration.0.len();
    let module = paths::weft_wasm()?;
    let mut runs = Vec::new();
    for _ in 0..options.rounds {
        let envoy = Envoy::start(&bootstrap(
            vec![http_listener(
                MEASURED_LISTENER,
                vec![weft_http_filter_with(&module, configuration.clone())],
                "app",
            )],
            vec![cluster("app", upstream.addr())],
        ))
        .await?;
        envoy.listener(MEASURED_LISTENER).await?;
        let slowest = envoy
            .log()
            .lines()
            .filter_map(configure_ms)
            .fold(0.0, f64::max);
        ensure!(
            slowest > 0.0,
            "no configuration time in the log:\n{}",
            envoy.log()
        );
        runs.push((slowest, resident_mib(envoy.pid())?));
    }
    println!(
        "\n| plugin configuration of {CONFIGURE_TRAFFIC_TARGETS} TrafficTargets | bytes | on_configure ms | Envoy RSS MiB |"
    );
    println!("|---|---|---|---|");
    println!("| JSON document (what `weft compile` prints) | {json} | | |");
    println!(
        "| compiled bundle (what weft.wasm reads) | {bundle} ({:.2}x) | {:.1} | {:.1} |",
        bundle as f64 / json as f64,
        middle(runs.iter().map(|run| run.0)),
        middle(runs.iter().map(|run| run.1))
    );
    println!(
        "\nweft.wasm: {} bytes; the slower VM's on_configure as the plugin logs it, median of {} rounds.",
        std::fs::metadata(&module)?.len(),
        options.rounds
    );
    Ok(())
}

/// The milliseconds of a "configured ... in N ms" line of the plugin's log.
fn configure_ms(line: &str) -> Option<f64> {
    let rest = line.split("configured as the HTTP filter in ").nth(1)?;
    rest.split(" ms").next()?.parse().ok()
}

async fn run_suite(
    suite: &Suite,
    options: &Options,
    pki: &Pki,
    client: &Issued,
) -> anyhow::Result<()> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); suite.variants.len()];
    for round in 1..=options.rounds {
        for (index, (name, config)) in suite.variants.iter().enumerate() {
            let measured = Envoy::start(config).await?;
            let (entry, _sidecar) = entry_to(suite, &measured, pki, client).await?;
            let url = format!("http://{entry}{}", suite.path);
            let wrk = |seconds| wrk(&url, suite.host, seconds, options.connections);
            // Warm up connections, the VM and Envoy's caches; not measured.
            wrk(2)?;
            let cpu_before = cpu_seconds(measured.pid())?;
            let mut sample = wrk(options.duration)?;
            let cpu = cpu_seconds(measured.pid())? - cpu_before;
            sample.cpu_us_per_request = cpu * 1e6 / sample.requests;
            sample.rss_mib = resident_mib(measured.pid())?;
            eprintln!("round {round} {name}: {sample:?}");
            samples[index].push(sample);
        }
    }

    let medians: Vec<Sample> = samples.iter().map(|runs| median(runs)).collect();
    let base = medians[suite.baseline];
    let vs = suite.baseline_name;
    println!(
        "| {} | requests/s | vs {vs} | p50 ms | vs {vs} | p99 ms | vs {vs} | CPU us/request | vs {vs} | RSS MiB | vs {vs} |",
        suite.title
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for ((name, _), m) in suite.variants.iter().zip(&medians) {
        println!(
            "| {name} | {:.0} | {:.2}x | {:.3} | {:.2}x | {:.3} | {:.2}x | {:.1} | {:.2}x | {:.1} | {:+.1} |",
            m.requests_per_second,
            m.requests_per_second / base.requests_per_second,
            m.p50_ms,
            m.p50_ms / base.p50_ms,
            m.p99_ms,
            m.p99_ms / base.p99_ms,
            m.cpu_us_per_request,
            m.cpu_us_per_request / base.cpu_us_per_request,
            m.rss_mib,
            m.rss_mib - base.rss_mib,
        );
    }
    println!(
        "\nwrk -t1 -c{} -d{}s --latency GET {}{} -> {}. {} rounds interleaved, medians. CPU us/request: user+system time of the measured Envoy during the measured run over the requests served.\n",
        options.connections,
        options.duration,
        suite.path,
        suite
            .host
            .map(|h| format!(" (Host: {h})"))
            .unwrap_or_default(),
        suite.setup,
        options.rounds
    );
    measure_memory(suite, options, pki, client).await?;
    if options.instructions > 0 {
        count_instructions(suite, options.instructions, pki, client).await?;
    }
    Ok(())
}

/// Worker threads of the Envoys whose memory [`measure_memory`] measures: issue 16's target
/// reads "at `--concurrency 2`", and each worker holds a VM of its own.
const MEMORY_WORKERS: u32 = 2;
/// Seconds of load before memory is read, so that every worker has run requests.
const MEMORY_LOAD_SECONDS: u64 = 2;
/// How many release intervals memory may take to settle after the load.
const MEMORY_SETTLE_INTERVALS: u32 = 20;
/// Resident memory that moves less than this over one release interval has settled.
const SETTLED_MIB: f64 = 0.1;

/// Envoy's memory with each variant, at [`MEMORY_WORKERS`] workers: resident memory after a
/// short load, once the allocator's background release (every bootstrap sets it) has nothing
/// more to hand back, with tcmalloc's own account beside it (`/memory`): what is allocated,
/// what it holds free, and what lies outside it (V8's own mappings, Envoy's code pages).
async fn measure_memory(
    suite: &Suite,
    options: &Options,
    pki: &Pki,
    client: &Issued,
) -> anyhow::Result<()> {
    let mut samples: Vec<Vec<Memory>> = vec![Vec::new(); suite.variants.len()];
    for _ in 0..options.rounds {
        for (index, (name, config)) in suite.variants.iter().enumerate() {
            let measured = Envoy::start_with_workers(config, MEMORY_WORKERS).await?;
            let (entry, _sidecar) = entry_to(suite, &measured, pki, client).await?;
            let url = format!("http://{entry}{}", suite.path);
            wrk(&url, suite.host, MEMORY_LOAD_SECONDS, options.connections)?;
            let memory = settled_memory(&measured).await?;
            eprintln!("memory {name}: {memory:?}");
            samples[index].push(memory);
        }
    }
    let medians: Vec<Memory> = samples
        .iter()
        .map(|runs| {
            let pick = |key: fn(&Memory) -> f64| middle(runs.iter().map(key));
            Memory {
                resident: pick(|m| m.resident),
                allocated: pick(|m| m.allocated),
                held_free: pick(|m| m.held_free),
                tcmalloc_physical: pick(|m| m.tcmalloc_physical),
            }
        })
        .collect();
    let base = medians[suite.baseline];
    let vs = suite.baseline_name;
    println!(
        "| {} at --concurrency {MEMORY_WORKERS} | RSS MiB | vs {vs} | allocated MiB | vs {vs} | free held by tcmalloc MiB | vs {vs} | outside tcmalloc MiB | vs {vs} |",
        suite.title
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((name, _), m) in suite.variants.iter().zip(&medians) {
        println!(
            "| {name} | {:.1} | {:+.1} | {:.1} | {:+.1} | {:.1} | {:+.1} | {:.1} | {:+.1} |",
            m.resident,
            m.resident - base.resident,
            m.allocated,
            m.allocated - base.allocated,
            m.held_free,
            m.held_free - base.held_free,
            m.outside(),
            m.outside() - base.outside(),
        );
    }
    println!(
        "\nEach variant's Envoy at --concurrency {MEMORY_WORKERS}, after wrk -d{MEMORY_LOAD_SECONDS}s, read once its RSS moves less than {SETTLED_MIB} MiB over a release interval ({}s). allocated, free held: tcmalloc's /memory (free held = its page heap and caches). {} rounds interleaved, medians.\n",
        weft_envoy_config::bootstrap::MEMORY_RELEASE_INTERVAL_SECONDS,
        options.rounds
    );
    Ok(())
}

/// One reading of an Envoy's memory, in MiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// VmRSS.
    resident: f64,
    /// What tcmalloc has handed out and not got back.
    allocated: f64,
    /// What tcmalloc holds free: its page heap and its caches.
    held_free: f64,
    /// All the memory tcmalloc holds, resident.
    tcmalloc_physical: f64,
}

impl Memory {
    /// Resident memory tcmalloc does not account for: Envoy's code and data pages, V8's own
    /// mappings (its isolates' heaps, the compiled module, the VMs' linear memories).
    fn outside(&self) -> f64 {
        self.resident - self.tcmalloc_physical
    }
}

/// `envoy`'s memory once its resident size has stopped moving, polled once a release interval.
async fn settled_memory(envoy: &Envoy) -> anyhow::Result<Memory> {
    let interval = std::time::Duration::from_secs(u64::try_from(
        weft_envoy_config::bootstrap::MEMORY_RELEASE_INTERVAL_SECONDS,
    )?);
    let mut previous = resident_mib(envoy.pid())?;
    for _ in 0..MEMORY_SETTLE_INTERVALS {
        tokio::time::sleep(interval).await;
        let resident = resident_mib(envoy.pid())?;
        if (resident - previous).abs() < SETTLED_MIB {
            return tcmalloc_memory(envoy, resident).await;
        }
        previous = resident;
    }
    bail!("Envoy's RSS still moved after {MEMORY_SETTLE_INTERVALS} release intervals")
}

/// tcmalloc's account of `envoy`'s memory (`/memory`), beside `resident`.
async fn tcmalloc_memory(envoy: &Envoy, resident: f64) -> anyhow::Result<Memory> {
    let reply = envoy.admin_get("/memory").await?;
    ensure!(reply.status == 200, "/memory answered {}", reply.status);
    let stats: Value = serde_json::from_str(&reply.body).context("/memory is not JSON")?;
    let mib = |field: &str| -> anyhow::Result<f64> {
        let text = stats[field]
            .as_str()
            .with_context(|| format!("/memory has no {field}: {}", reply.body))?;
        Ok(text.parse::<f64>()? / f64::from(1u32 << 20))
    };
    Ok(Memory {
        resident,
        allocated: mib("allocated")?,
        held_free: mib("pageheap_free")? + mib("total_thread_cache")?,
        tcmalloc_physical: mib("total_physical_bytes")?,
    })
}

/// Where wrk or the counting client sends a suite's requests to reach `measured`: its listener,
/// or the listener of a client sidecar started here (kept alive by the returned handle) that
/// calls it over mTLS.
async fn entry_to(
    suite: &Suite,
    measured: &Envoy,
    pki: &Pki,
    client: &Issued,
) -> anyhow::Result<(std::net::SocketAddr, Option<Envoy>)> {
    let measured_addr = measured.listener(MEASURED_LISTENER).await?;
    if !suite.through_sidecar {
        return Ok((measured_addr, None));
    }
    let sidecar = Envoy::start(&client_sidecar(pki, client, measured_addr)).await?;
    Ok((sidecar.listener("outbound").await?, Some(sidecar)))
}

/// Requests sent before counting, so that V8 has compiled the module's hot code and Envoy's
/// caches and connections are warm.
const WARM_UP_REQUESTS: u64 = 500;

/// Runs each variant's measured Envoy under callgrind and prints the instructions it executes
/// per request over `requests` requests sent one at a time on one connection.
async fn count_instructions(
    suite: &Suite,
    requests: u64,
    pki: &Pki,
    client: &Issued,
) -> anyhow::Result<()> {
    let mut counts = Vec::new();
    for (name, config) in &suite.variants {
        let measured = Envoy::start_counting_instructions(config).await?;
        let (entry, _sidecar) = entry_to(suite, &measured, pki, client).await?;
        let session = Session::keep_alive(entry);
        let headers: Vec<(&str, &str)> =
            suite.host.map(|host| ("host", host)).into_iter().collect();
        let send = |count: u64| {
            let session = session.clone();
            let headers = headers.clone();
            async move {
                for _ in 0..count {
                    let reply = session.request("GET", suite.path, &headers).await?;
                    ensure!(
                        reply.status == 200,
                        "{name}: status {} ({})",
                        reply.status,
                        reply.body
                    );
                }
                Ok(())
            }
        };
        send(WARM_UP_REQUESTS).await?;
        let ((), instructions) = measured.count_instructions(send(requests)).await?;
        let per_request = instructions as f64 / requests as f64;
        eprintln!("callgrind {name}: {per_request:.0} instructions per request");
        counts.push(per_request);
    }
    let base = counts[suite.baseline];
    let vs = suite.baseline_name;
    println!(
        "| {} | instructions/request | vs {vs} | more than {vs} |",
        suite.title
    );
    println!("|---|---|---|---|");
    for ((name, _), count) in suite.variants.iter().zip(&counts) {
        println!(
            "| {name} | {count:.0} | {:.3}x | {:+.0} |",
            count / base,
            count - base
        );
    }
    println!(
        "\nInstructions the measured Envoy (every thread) executed under valgrind's callgrind for {requests} sequential GET {} requests on one keep-alive connection, after {WARM_UP_REQUESTS} unmeasured ones, divided by {requests}.\n",
        suite.path
    );
    Ok(())
}

/// A loopback address with a port the kernel chooses.
const LOOPBACK_ANY_PORT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The suites, in the order they run.
const SUITES: [&str; 3] = ["access", "split", "configure"];

/// Name of the listener of the measured Envoy in every variant.
const MEASURED_LISTENER: &str = "measured";

/// The measured inbound Envoys: mTLS in front of the upstream with no access control, with
/// Envoy's RBAC filter expressing examples/shop/smi.yaml (with its built-in stats), and with
/// weft enforcing the same: access alone, access and metrics in one plugin (what `weft compile`
/// makes), and the two in separate plugins.
/// Every request asks for `/orders/42`, allowed to shop/frontend by a regex match with a method.
fn access_suite(
    upstream: &HttpUpstream,
    pki: &Pki,
    compare_wasm: Option<&std::path::Path>,
) -> anyhow::Result<Suite> {
    let module = paths::weft_wasm()?;
    let server = pki.server("shop/api")?;
    let tls = ServerTls {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
        ca_file: pki.ca_file(),
        require_client_certificate: true,
    };
    let config = policy::inbound(&policy::example("shop")?, "shop/api", AccessMode::Enforce)?;
    let inbound = |filters: Vec<Value>| {
        bootstrap(
            vec![with_tls(
                http_listener(MEASURED_LISTENER, filters, "app"),
                &tls,
            )],
            vec![cluster("app", upstream.addr())],
        )
    };
    let weft = |module: &std::path::Path, config: &PluginConfig| -> anyhow::Result<Value> {
        Ok(inbound(vec![weft_http_filter(
            module,
            &serde_json::to_string(config)?,
        )]))
    };
    // The listener hands the caller's identity over in x-forwarded-client-cert (SANITIZE_SET),
    // and the plugin reads it there instead of the connection's property.
    let forwarding = |filters: Vec<Value>| -> anyhow::Result<Value> {
        let mut config = inbound(filters);
        let mut settings = HttpConnectionManager::default();
        weft_envoy_config::listeners::set_forwarded_client_cert(&mut settings);
        let manager = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"];
        for (field, value) in weft_envoy_config::render::to_json(&settings)?
            .as_object()
            .into_iter()
            .flatten()
        {
            manager[field] = value.clone();
        }
        Ok(config)
    };
    let weft_forwarding = |config: &PluginConfig| {
        bootstrap(
            vec![with_tls(
                http_listener_forwarding_caller(MEASURED_LISTENER, &module, config, "app"),
                &tls,
            )],
            vec![cluster("app", upstream.addr())],
        )
    };
    let (access_only, metrics_only) = features_apart(&config);
    let mut variants = vec![
        ("mTLS, no access control", inbound(Vec::new())),
        (
            "mTLS + native RBAC (same policy)",
            inbound(vec![native_rbac()]),
        ),
        ("mTLS + weft access only", weft(&module, &access_only)?),
        (
            "mTLS + weft access + metrics, one plugin",
            weft(&module, &config)?,
        ),
        (
            "mTLS + weft access + metrics, two plugins",
            inbound(two_plugins(&module, &access_only, &metrics_only)?),
        ),
        (
            "mTLS, no access control, listener setting x-forwarded-client-cert",
            forwarding(Vec::new())?,
        ),
        (
            "mTLS + weft access + metrics, identity from x-forwarded-client-cert",
            weft_forwarding(&config),
        ),
    ];
    if let Some(other) = compare_wasm {
        variants.push((
            "mTLS + weft access + metrics, --compare-wasm build",
            weft(other, &config)?,
        ));
    }
    Ok(Suite {
        title: "inbound Envoy runs",
        baseline_name: "RBAC",
        baseline: 1,
        variants,
        host: None,
        path: "/orders/42",
        through_sidecar: true,
        setup: "client sidecar Envoy (plaintext in, mTLS out as shop/frontend) -> measured inbound Envoy (mTLS, --concurrency 1) -> upstream (hyper, in the bench process)",
    })
}

/// `config` (one plugin for every feature, as `weft compile` makes it) split into a plugin
/// without metrics and a plugin with only the metrics, to measure the two designs.
fn features_apart(config: &PluginConfig) -> (PluginConfig, PluginConfig) {
    let without_metrics = PluginConfig {
        metrics: None,
        ..config.clone()
    };
    let only_metrics = PluginConfig {
        identity: config.identity.clone(),
        metrics: config.metrics.clone(),
        ..PluginConfig::default()
    };
    (without_metrics, only_metrics)
}

/// The filters of the two-plugin design: the features but metrics, then the metrics, two
/// plugins of one weft VM.
fn two_plugins(
    module: &std::path::Path,
    features: &PluginConfig,
    metrics: &PluginConfig,
) -> anyhow::Result<Vec<Value>> {
    Ok(vec![
        weft_http_plugin(module, "weft-features", &serde_json::to_string(features)?),
        weft_http_plugin(module, "weft-metrics", &serde_json::to_string(metrics)?),
    ])
}

/// The measured outbound Envoys for the example canary (examples/shop/split.yaml: `checkout`
/// 90/10 to checkout-v1 and checkout-v2), each upstream a hyper server of the bench process:
/// a plain route to checkout-v1 (no split at all), Envoy's `weighted_clusters` 90/10 (with
/// Envoy's per-cluster stats, always on), and weft choosing through a `cluster_header` route
/// with the routes of envoy-configs/outbound-split.yaml: split alone, split and metrics in one
/// plugin (what `weft compile` makes), and the two in separate plugins.
fn split_suite(
    upstreams: &[HttpUpstream; 3],
    compare_wasm: Option<&std::path::Path>,
) -> anyhow::Result<Suite> {
    let module = paths::weft_wasm()?;
    let config = policy::outbound(&policy::example("shop")?, "shop/frontend")?;
    let clusters: Vec<Value> = ["checkout.shop", "checkout-v1.shop", "checkout-v2.shop"]
        .iter()
        .zip(upstreams)
        .map(|(name, upstream)| cluster(name, upstream.addr()))
        .collect();
    let domains = [
        "checkout",
        "checkout.shop",
        "checkout.shop.svc",
        "checkout.shop.svc.cluster.local",
    ];
    let outbound = |filters: Vec<Value>, routes: Vec<Value>| {
        bootstrap(
            vec![http_listener_with_hosts(
                MEASURED_LISTENER,
                filters,
                vec![virtual_host("checkout", &domains, routes)],
            )],
            clusters.clone(),
        )
    };
    let weighted = json!({
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {"clusters": [
                {"name": "checkout-v1.shop", "weight": 90},
                {"name": "checkout-v2.shop", "weight": 10},
            ]},
            "retry_policy": {"num_retries": 0},
        },
    });
    let split_routes = || vec![split_route(), route_to("checkout.shop")];
    let weft_split = |module: &std::path::Path, config: &PluginConfig| -> anyhow::Result<Value> {
        Ok(outbound(
            vec![weft_http_filter(module, &serde_json::to_string(config)?)],
            split_routes(),
        ))
    };
    let (split_only, metrics_only) = features_apart(&config);
    let mut variants = vec![
        (
            "route to one backend, no split",
            outbound(Vec::new(), vec![route_to("checkout-v1.shop")]),
        ),
        (
            "native weighted_clusters 90/10",
            outbound(Vec::new(), vec![weighted]),
        ),
        ("weft split only", weft_split(&module, &split_only)?),
        (
            "weft split + metrics, one plugin",
            weft_split(&module, &config)?,
        ),
        (
            // What a mesh sidecar's outbound listener runs (docs/traffic-policy.md): Envoy's
            // fault and local rate limit filters after weft's, disabled unless a TrafficPolicy's
            // route enables them.
            "weft split + metrics, + disabled fault and rate-limit filters (as generated)",
            outbound(
                std::iter::once(weft_http_filter(&module, &serde_json::to_string(&config)?))
                    .chain(
                        weft_envoy_config::traffic::outbound_filters()
                            .iter()
                            .map(weft_envoy_config::render::to_json)
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                    .collect(),
                split_routes(),
            ),
        ),
        (
            "weft split + metrics, two plugins",
            outbound(
                two_plugins(&module, &split_only, &metrics_only)?,
                split_routes(),
            ),
        ),
    ];
    if let Some(other) = compare_wasm {
        variants.push((
            "weft split + metrics, --compare-wasm build",
            weft_split(other, &config)?,
        ));
    }
    Ok(Suite {
        title: "outbound Envoy runs",
        baseline_name: "weighted_clusters",
        baseline: 1,
        variants,
        host: Some("checkout"),
        path: "/",
        through_sidecar: false,
        setup: "measured outbound Envoy (plaintext, --concurrency 1) -> upstreams (hyper, in the bench process)",
    })
}

/// Envoy's RBAC filter with examples/shop/smi.yaml written by hand: shop/frontend may GET
/// /metrics and GET or POST /orders(/[0-9]+)? (paths anchored at the start only, as SMI says,
/// hence the trailing `.*`); shop/admin may do anything.
fn native_rbac() -> Value {
    let principal = |account: &str| json!({"authenticated": {"principal_name": {"exact": format!("spiffe://cluster.local/ns/shop/sa/{account}")}}});
    let rule = |methods: &str, path: &str| {
        json!({"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"safe_regex": {"regex": methods}}}},
            {"url_path": {"path": {"safe_regex": {"regex": path}}}},
        ]}})
    };
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {
                "shop/frontend-to-api": {
                    "permissions": [rule("GET", "/metrics.*"), rule("GET|POST", "/orders(/[0-9]+)?.*")],
                    "principals": [principal("frontend")],
                },
                "shop/admin-to-api": {
                    "permissions": [{"any": true}],
                    "principals": [principal("admin")],
                },
            }},
        },
    })
}

/// The caller's sidecar: plaintext HTTP in (for wrk), mTLS out to `inbound` as `client`,
/// verifying that the server is shop/api.
fn client_sidecar(pki: &Pki, client: &Issued, inbound: std::net::SocketAddr) -> Value {
    let mut upstream = cluster("api", inbound);
    upstream["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"filename": client.cert_file.display().to_string()},
                    "private_key": {"filename": client.key_file.display().to_string()},
                }],
                "validation_context": {
                    "trusted_ca": {"filename": pki.ca_file().display().to_string()},
                    "match_typed_subject_alt_names": [{
                        "san_type": "URI",
                        "matcher": {"exact": "spiffe://cluster.local/ns/shop/sa/api"},
                    }],
                },
            },
        },
    });
    bootstrap(
        vec![http_listener("outbound", Vec::new(), "api")],
        vec![upstream],
    )
}

fn wrk(url: &str, host: Option<&str>, seconds: u64, connections: u64) -> anyhow::Result<Sample> {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(host) = host {
        command.args(["-H", &format!("Host: {host}")]);
    }
    let output = command
        .arg(url)
        .output()
        .context("cannot run wrk: run `make setup`")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors, the figures would not be comparable:\n{text}");
    }
    let field = |prefix: &str| -> anyhow::Result<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("no {prefix:?} in wrk output:\n{text}"))
    };
    let requests = text
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?
        .parse()?;
    Ok(Sample {
        requests,
        cpu_us_per_request: 0.0,
        requests_per_second: field("Requests/sec:")?.parse()?,
        p50_ms: duration_ms(field("50%")?)?,
        p99_ms: duration_ms(field("99%")?)?,
        rss_mib: 0.0,
    })
}

/// wrk prints latencies like `512.00us`, `1.23ms`, `2.00s`.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("{text:?} has no unit"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        other => bail!("unknown wrk unit {other:?}"),
    })
}

/// User plus system CPU time of process `pid` so far, in seconds (from /proc/PID/stat, in
/// clock ticks of 1/100 s, the value on Linux).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn resident_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

/// The median of `values` (the upper one of an even count); 0 for none.
fn middle(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn median(runs: &[Sample]) -> Sample {
    let pick = |key: fn(&Sample) -> f64| middle(runs.iter().map(key));
    Sample {
        requests: pick(|s| s.requests),
        cpu_us_per_request: pick(|s| s.cpu_us_per_request),
        requests_per_second: pick(|s| s.requests_per_second),
        p50_ms: pick(|s| s.p50_ms),
        p99_ms: pick(|s| s.p99_ms),
        rss_mib: pick(|s| s.rss_mib),
    }
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn wrk_durations_are_read_in_milliseconds() {
        assert_eq!(duration_ms("512.00us").unwrap(), 0.512);
        assert_eq!(duration_ms("1.25ms").unwrap(), 1.25);
        assert_eq!(duration_ms("2.00s").unwrap(), 2000.0);
        assert!(duration_ms("7.0parsecs").is_err());
    }
}
