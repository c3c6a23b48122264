//! `weft-bench` (what `make bench` runs): data-plane benchmarks with wrk on loopback, each
//! variant a real Envoy (`--concurrency 1`) in front of the same upstream, all in one run, the
//! variants interleaved over several rounds and the median kept, so that drift of the machine
//! hits every variant alike. Prints a Markdown table of throughput, p50/p99 latency and Envoy's
//! resident memory, as ratios to the baseline variant.
//!
//! Options: `--duration SECONDS` (per run, default 10), `--rounds N` (default 3),
//! `--connections N` (default 16).

use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;
use weft_e2e::bootstrap::{bootstrap, cluster, http_listener, weft_http_filter};
use weft_e2e::envoy::Envoy;
use weft_e2e::paths;
use weft_e2e::upstream::HttpUpstream;

/// One wrk run's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
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
    let module = paths::weft_wasm()?;
    let variants: Vec<(&str, Value)> = vec![
        (
            "Envoy, no filter (baseline)",
            bootstrap(
                vec![http_listener("ingress", Vec::new(), "app")],
                vec![cluster("app", upstream.addr())],
            ),
        ),
        (
            "Envoy + weft.wasm (plugin with no feature enabled)",
            bootstrap(
                vec![http_listener(
                    "ingress",
                    vec![weft_http_filter(&module, r#"{"version": 1}"#)],
                    "app",
                )],
                vec![cluster("app", upstream.addr())],
            ),
        ),
    ];

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 1..=options.rounds {
        for (index, (name, config)) in variants.iter().enumerate() {
            let envoy = Envoy::start(config).await?;
            let ingress = envoy.listener("ingress").await?;
            let url = format!("http://{ingress}/bench");
            // Warm up connections, the VM and Envoy's caches; not measured.
            wrk(&url, 2, options.connections)?;
            let mut sample = wrk(&url, options.duration, options.connections)?;
            sample.rss_mib = resident_mib(envoy.pid())?;
            eprintln!("round {round} {name}: {sample:?}");
            samples[index].push(sample);
        }
    }

    let medians: Vec<Sample> = samples.iter().map(|runs| median(runs)).collect();
    let base = medians[0];
    println!(
        "| variant | requests/s | ratio | p50 ms | ratio | p99 ms | ratio | Envoy RSS MiB | delta |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((name, _), m) in variants.iter().zip(&medians) {
        println!(
            "| {name} | {:.0} | {:.2}x | {:.3} | {:.2}x | {:.3} | {:.2}x | {:.1} | {:+.1} |",
            m.requests_per_second,
            m.requests_per_second / base.requests_per_second,
            m.p50_ms,
            m.p50_ms / base.p50_ms,
            m.p99_ms,
            m.p99_ms / base.p99_ms,
            m.rss_mib,
            m.rss_mib - base.rss_mib,
        );
    }
    println!(
        "\nwrk -t1 -c{} -d{}s --latency, {} rounds interleaved, medians; Envoy --concurrency 1; upstream: weft-e2e HttpUpstream (hyper) in the bench process.",
        options.connections, options.duration, options.rounds
    );
    Ok(())
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
    Ok(Sample {
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
