//! Engine benchmarks (`make bench`): the cost of one access decision with 10 to 10,000
//! TrafficTargets protecting one workload over realistic route groups, of one split routing
//! decision among 1,000 TrafficSplits, of checking and compiling 10,000 TrafficTargets from
//! YAML, and the size of the compiled bundle; how checking and compiling scale with the number
//! of objects (1k, 10k, 100k: the time per object should stay flat) and that nesting depth
//! costs nothing past the reader's bound.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use weft_policy::bundle::{Identity, StickyKey};
use weft_policy::check;
use weft_policy::compile::{Options, Side, compile};
use weft_policy::config::PluginConfig;
use weft_policy::engine::{Engine, HttpRequest, Routing};

const SIZES: &[usize] = &[10, 100, 1_000, 10_000];
use weft_policy::testing::{BUSY_API_GROUPS as GROUPS, busy_api as manifests};

fn compiled(count: usize) -> PluginConfig {
    let text = manifests(count);
    let (catalog, diagnostics) = check([("bench.yaml", text.as_str())]);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    compile(
        &catalog,
        &diagnostics,
        &"shop/api".parse::<Identity>().unwrap(),
        Side::Inbound,
        &Options::default(),
    )
    .unwrap()
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("access decision");
    for &count in SIZES {
        let config = compiled(count);
        eprintln!(
            "bundle: {count} TrafficTargets compile to {} bytes of plugin configuration JSON",
            serde_json::to_vec(&config).unwrap().len()
        );
        let engine = Engine::new(&config).unwrap();
        // A caller in the middle of the set, making a request its rule allows (the second match).
        let caller = count / 2;
        let source = format!(
            "spiffe://cluster.local/ns/team-{}/sa/client-{caller}",
            caller % 20
        );
        let path = format!("/api/v{}/items/1234", caller % GROUPS);
        let headers = vec![
            ("user-agent".to_owned(), "bench/1.0".to_owned()),
            ("x-beta".to_owned(), "no".to_owned()),
        ];
        let allowed = HttpRequest {
            source: Some(source.as_str()),
            method: "PUT",
            path: &path,
            port: 8080,
            headers: &headers,
        };
        assert!(engine.decide_http(&allowed).is_allowed());
        group.bench_with_input(BenchmarkId::new("allow", count), &allowed, |b, request| {
            b.iter(|| black_box(engine.decide_http(black_box(request))).is_allowed())
        });
        let denied = HttpRequest {
            method: "GET",
            path: "/admin",
            ..allowed
        };
        assert!(!engine.decide_http(&denied).is_allowed());
        group.bench_with_input(BenchmarkId::new("deny", count), &denied, |b, request| {
            b.iter(|| black_box(engine.decide_http(black_box(request))).is_allowed())
        });
    }
    group.finish();
}

/// 1,000 TrafficSplits in namespace shop, each a 90/10 canary of its root service.
fn splits() -> PluginConfig {
    let mut text = String::new();
    for i in 0..1_000 {
        text.push_str(&format!(
            "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: svc-{i}, namespace: shop}}\nspec:\n  service: svc-{i}\n  backends: [{{service: svc-{i}-v1, weight: 90}}, {{service: svc-{i}-v2, weight: 10}}]\n---\n"
        ));
    }
    let (catalog, diagnostics) = check([("splits.yaml", text.as_str())]);
    compile(
        &catalog,
        &diagnostics,
        &"shop/frontend".parse::<Identity>().unwrap(),
        Side::Outbound,
        &Options::default(),
    )
    .unwrap()
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("split routing, 1000 TrafficSplits");
    let mut config = splits();
    let weighted = Engine::new(&config).unwrap();
    for table in &mut config.splits {
        table.sticky = Some(StickyKey::Cookie("user".to_owned()));
    }
    let sticky = Engine::new(&config).unwrap();
    let headers = vec![("cookie".to_owned(), "theme=dark; user=u-4711".to_owned())];
    let request = HttpRequest {
        source: None,
        method: "GET",
        path: "/",
        port: 0,
        headers: &headers,
    };
    let host = "svc-500.shop.svc.cluster.local:80";
    assert!(matches!(
        weighted.route(host, &request, 7),
        Routing::Backend { .. }
    ));
    for (name, engine) in [("weighted", &weighted), ("sticky cookie", &sticky)] {
        group.bench_function(name, |b| {
            let mut roll = 0u64;
            b.iter(|| {
                roll = roll.wrapping_add(0x9e37_79b9_7f4a_7c15);
                black_box(engine.route(black_box(host), black_box(&request), roll));
            })
        });
    }
    group.bench_function("not a root service", |b| {
        b.iter(|| black_box(weighted.route(black_box("example.com"), &request, 1)))
    });
    group.finish();
}

fn compilation(c: &mut Criterion) {
    let mut group = c.benchmark_group("check and compile from YAML");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let text = manifests(10_000);
    group.bench_function("10000 TrafficTargets", |b| {
        b.iter(|| {
            let (catalog, diagnostics) = check([("bench.yaml", text.as_str())]);
            let identity: Identity = "shop/api".parse().unwrap();
            let config = compile(
                &catalog,
                &diagnostics,
                &identity,
                Side::Inbound,
                &Options::default(),
            )
            .unwrap();
            black_box(Engine::new(&config).unwrap())
        })
    });
    group.finish();
    let started = Instant::now();
    let config = compiled(10_000);
    eprintln!(
        "compile: 10000 TrafficTargets checked and compiled from YAML in {:?} (one run)",
        started.elapsed()
    );
    black_box(config);
}

/// `count` objects of four kinds in equal numbers (HTTPRouteGroups, TrafficTargets naming them,
/// Services, TrafficSplits between the Services), each referring to its neighbours.
fn mixed_manifests(count: usize) -> String {
    let each = count / 4;
    let mut out = String::new();
    for i in 0..each {
        out.push_str(&format!(
            "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: routes-{i}, namespace: ns}}\nspec:\n  matches:\n  - {{name: m, pathRegex: '/api/{i}$', methods: [GET]}}\n---\n\
             apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: tt-{i}, namespace: ns}}\nspec:\n  destination: {{kind: ServiceAccount, name: sa-{}, namespace: ns}}\n  sources: [{{kind: ServiceAccount, name: client-{i}, namespace: ns}}]\n  rules: [{{kind: HTTPRouteGroup, name: routes-{i}}}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: ns}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
             apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: split-{i}, namespace: ns}}\nspec:\n  service: svc-{i}\n  backends: [{{service: svc-{}, weight: 1}}]\n---\n",
            i % 100,
            (i + 1) % each
        ));
    }
    out
}

fn scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling with objects (time per object)");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for count in [1_000, 10_000, 100_000] {
        let text = mixed_manifests(count);
        group.throughput(criterion::Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::new("check", count), &text, |b, text| {
            b.iter(|| {
                let (catalog, diagnostics) = check([("scale.yaml", text.as_str())]);
                assert!(diagnostics.is_empty(), "{diagnostics:?}");
                black_box(catalog)
            })
        });
        let (catalog, diagnostics) = check([("scale.yaml", text.as_str())]);
        let identity: Identity = "ns/sa-1".parse().unwrap();
        group.bench_with_input(
            BenchmarkId::new("compile inbound", count),
            &catalog,
            |b, catalog| {
                b.iter(|| {
                    black_box(
                        compile(
                            catalog,
                            &diagnostics,
                            &identity,
                            Side::Inbound,
                            &Options::default(),
                        )
                        .unwrap(),
                    )
                })
            },
        );
    }
    group.finish();
    let mut group = c.benchmark_group("nesting depth (refused past 64 levels)");
    for depth in [1_000, 10_000, 100_000] {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: deep}}\nspec: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        group.bench_with_input(BenchmarkId::new("check", depth), &text, |b, text| {
            b.iter(|| black_box(check([("deep.yaml", text.as_str())])))
        });
    }
    group.finish();
}

criterion_group!(benches, decisions, routing, compilation, scaling);
criterion_main!(benches);
