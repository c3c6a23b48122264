//! `weft-bench` (what `make bench` runs): data-plane benchmarks with wrk on loopback. wrk talks
//! plaintext to a client sidecar Envoy, which calls the measured inbound Envoy (`--concurrency
//! 1`) over mTLS as shop/frontend, in front of the same upstream: with no access control, with
//! Envoy's native RBAC filter expressing the example SMI policy, and with weft enforcing it.
//! All variants run in one run, interleaved over several rounds with the median kept, so that
//! drift of the machine hits every variant alike. Prints a Markdown table of throughput, p50/p99
//! latency, the inbound Envoy's CPU time per request and its resident memory, as ratios to
//! native RBAC.
//!
//! Options: `--duration SECONDS` (per run, default 10), `--rounds N` (default 3),
//! `--connections N` (default 16).

use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;
use serde_json::json;
use weft_e2e::bootstrap::{
    ServerTls, bootstrap, cluster, http_listener, weft_http_filter, with_tls,
};
use weft_e2e::envoy::Envoy;
use weft_e2e::pki::{Issued, Pki};
use weft_e2e::upstream::HttpUpstream;
use weft_e2e::{paths, policy};
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
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        duration: 10,
        rounds: 3,
        connections: 16,
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
        match flag.as_str() {
            "--duration" => options.duration = value()?,
            "--rounds" => options.rounds = usize::try_from(value()?)?,
            "--connections" => options.connections = value()?,
            other => {
                bail!("unknown option {other}; options: --duration S --rounds N --connections N")
            }
        }
    }
    Ok(options)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let upstream = HttpUpstream::start("app").await?;
    let pki = Pki::new()?;
    let variants = access_variants(&upstream, &pki)?;
    let client = pki.workload("shop/frontend")?;

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 1..=options.rounds {
        for (index, (name, config)) in variants.iter().enumerate() {
            let inbound = Envoy::start(config).await?;
            let inbound_addr = inbound.listener("inbound").await?;
            let sidecar = Envoy::start(&client_sidecar(&pki, &client, inbound_addr)).await?;
            let url = format!("http://{}{BENCH_PATH}", sidecar.listener("outbound").await?);
            // Warm up connections, the VM and Envoy's caches; not measured.
            wrk(&url, 2, options.connections)?;
            let cpu_before = cpu_seconds(inbound.pid())?;
            let mut sample = wrk(&url, options.duration, options.connections)?;
            let cpu = cpu_seconds(inbound.pid())? - cpu_before;
            sample.cpu_us_per_request = cpu * 1e6 / sample.requests;
            sample.rss_mib = resident_mib(inbound.pid())?;
            eprintln!("round {round} {name}: {sample:?}");
            samples[index].push(sample);
        }
    }

    let medians: Vec<Sample> = samples.iter().map(|runs| median(runs)).collect();
    let base = medians[BASELINE];
    println!(
        "| inbound Envoy runs | requests/s | vs RBAC | p50 ms | vs RBAC | p99 ms | vs RBAC | CPU us/request | vs RBAC | RSS MiB | vs RBAC |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for ((name, _), m) in variants.iter().zip(&medians) {
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
        "\nwrk -t1 -c{} -d{}s --latency GET {BENCH_PATH} -> client sidecar Envoy (plaintext in, mTLS out as shop/frontend) -> measured inbound Envoy (mTLS, --concurrency 1) -> upstream (hyper, in the bench process). {} rounds interleaved, medians. CPU us/request: user+system time of the inbound Envoy during the measured run over the requests served.",
        options.connections, options.duration, options.rounds
    );
    Ok(())
}

/// The path every request asks for: allowed to shop/frontend by a regex match with a method.
const BENCH_PATH: &str = "/orders/42";
/// Index of the variant ratios are taken against: Envoy's native RBAC.
const BASELINE: usize = 1;

/// The measured inbound Envoys: mTLS in front of the upstream with no access control, with
/// Envoy's RBAC filter expressing examples/shop/smi.yaml, and with weft enforcing the same.
fn access_variants(
    upstream: &HttpUpstream,
    pki: &Pki,
) -> anyhow::Result<Vec<(&'static str, Value)>> {
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
            vec![with_tls(http_listener("inbound", filters, "app"), &tls)],
            vec![cluster("app", upstream.addr())],
        )
    };
    Ok(vec![
        ("mTLS, no access control", inbound(Vec::new())),
        (
            "mTLS + native RBAC (same policy)",
            inbound(vec![native_rbac()]),
        ),
        (
            "mTLS + weft access (enforce)",
            inbound(vec![weft_http_filter(
                &module,
                &serde_json::to_string(&config)?,
            )]),
        ),
    ])
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

fn wrk(url: &str, seconds: u64, connections: u64) -> anyhow::Result<Sample> {
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
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

fn median(runs: &[Sample]) -> Sample {
    let pick = |key: fn(&Sample) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(key).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
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
