//! The patch guard as an attacker meets it. Every attack of `weft_e2e::attacks` (the security
//! review's, and at least two against each invariant) is refused by `weft check` naming its
//! invariant, and, applied with `--allow-patches` to a real mesh of Envoys, leaves every denied
//! request denied and every allowed one served where it should be; a patch that is withdrawn
//! takes its connections with it within the drain time; and random JSON Patch operations on
//! the generated resources, whichever the guard accepts, change no answer of real Envoys.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use weft_e2e::attacks::{
    ANALYTICS, Attack, CHECKOUT_V1, DirectConnection, FRONTEND, attacks, envoy_patch, manifest,
    run_probes,
};
use weft_e2e::mesh::{TestMesh, copy_example};
use weft_e2e::poll::until;
use weft_envoy_config::bootstrap::SIDECAR_DRAIN_SECONDS;

/// An address of no workload, standing for another workload's application in `weft check`.
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 1, 9, 9);

#[test]
fn weft_check_refuses_every_attack_naming_the_invariant_it_would_break() {
    let dir = copy_example("mesh").unwrap();
    let attacks = attacks(ELSEWHERE);
    std::fs::write(dir.path().join("attacks.yaml"), manifest(&attacks)).unwrap();
    let (_, diagnostics) =
        weft_controller::index::check(&[dir.path().to_path_buf()], false).unwrap();
    // Each at least two per invariant, and every refusal found.
    let mut per_invariant: BTreeMap<String, usize> = BTreeMap::new();
    for attack in &attacks {
        *per_invariant
            .entry(format!("{:?}", attack.invariant))
            .or_default() += 1;
        let name = format!("attack-{}", attack.name);
        let found: Vec<_> = diagnostics
            .iter()
            .filter(|d| d.name.as_deref() == Some(name.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{name}: {found:#?}");
        let message = &found[0].message;
        assert!(found[0].is_error(), "{name}: {message}");
        assert!(
            message.contains(&format!(
                "which decides who reaches what: {}",
                attack.invariant
            )),
            "{name} should break {:?}: {message}",
            attack.invariant
        );
    }
    for (invariant, count) in &per_invariant {
        assert!(*count >= 2, "{invariant}: {count} attack(s)");
    }
}

/// A mesh of examples/mesh whose controller applies patches.
async fn patched_mesh() -> TestMesh {
    TestMesh::start_with(|options| options.controller.allow_patches = true)
        .await
        .unwrap()
}

/// The state of patch `name` for pod `node` in the controller's status, once it has one.
fn patch_state(mesh: &TestMesh, name: &str, node: &str) -> Option<(String, String)> {
    let status = mesh.status();
    status["patches"].as_array()?.iter().find_map(|report| {
        (report["patch"] == format!("shop/{name}").as_str() && report["pod"] == node).then(|| {
            (
                report["state"].as_str().unwrap_or_default().to_owned(),
                report["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// Waits until every pod applied everything it was sent.
async fn in_sync(mesh: &TestMesh) {
    until("every pod in sync", Duration::from_secs(20), || async {
        let status = mesh.status();
        let pods = status["pods"].as_array().cloned().unwrap_or_default();
        Ok((!pods.is_empty() && pods.iter().all(|pod| pod["in_sync"] == true)).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_attack_applied_to_a_real_mesh_is_refused_and_every_denied_request_stays_denied() {
    let mut mesh = patched_mesh().await;
    assert_eq!(
        run_probes(&mesh).await,
        Vec::<String>::new(),
        "before any patch"
    );
    let elsewhere = mesh.replica(ANALYTICS).pod.app_ip;
    let attacks: Vec<Attack> = attacks(elsewhere);
    // Beside them, two safe patches, which are applied.
    let safe = [
        envoy_patch(
            "safe-inbound",
            CHECKOUT_V1,
            "Listener",
            "inbound:8080",
            &serde_json::json!([{"op": "add",
                "path": "/filter_chains/0/filters/0/typed_config/stream_idle_timeout", "value": "120s"}]),
        ),
        envoy_patch(
            "safe-outbound",
            FRONTEND,
            "RouteConfiguration",
            "outbound",
            &serde_json::json!([{"op": "add", "path": "/response_headers_to_add",
                "value": [{"header": {"key": "x-mesh", "value": "weft"}}]}]),
        ),
    ];
    mesh.write_manifest(
        "attacks.yaml",
        &format!("{}---\n{}", manifest(&attacks), safe.join("---\n")),
    )
    .unwrap();
    until("every patch judged", Duration::from_secs(30), || async {
        let judged = attacks
            .iter()
            .all(|a| patch_state(&mesh, &format!("attack-{}", a.name), a.pod).is_some())
            && patch_state(&mesh, "safe-outbound", FRONTEND).is_some_and(|(s, _)| s == "applied");
        Ok(judged.then_some(()))
    })
    .await
    .unwrap();
    for attack in &attacks {
        let (state, reason) =
            patch_state(&mesh, &format!("attack-{}", attack.name), attack.pod).unwrap();
        assert_eq!(state, "refused", "{}: {reason}", attack.name);
        assert!(
            reason.contains(&attack.invariant.to_string()),
            "{}: {reason}",
            attack.name
        );
    }
    assert_eq!(
        patch_state(&mesh, "safe-inbound", CHECKOUT_V1).map(|(state, _)| state),
        Some("applied".to_owned())
    );
    in_sync(&mesh).await;
    assert_eq!(
        run_probes(&mesh).await,
        Vec::<String>::new(),
        "with every attack written"
    );
    let reply = mesh
        .call(FRONTEND, "GET", "checkout-v1", "/cart")
        .await
        .unwrap();
    assert_eq!(
        reply.headers.get("x-mesh").map(|v| v.as_bytes()),
        Some(&b"weft"[..]),
        "the safe outbound patch is in force"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_opened_under_a_withdrawn_patch_are_closed_within_the_drain_time() {
    let mut mesh = patched_mesh().await;
    let patch = envoy_patch(
        "inbound-timeout",
        CHECKOUT_V1,
        "Listener",
        "inbound:8080",
        &serde_json::json!([{"op": "add",
            "path": "/filter_chains/0/filters/0/typed_config/stream_idle_timeout", "value": "120s"}]),
    );
    mesh.write_manifest("patch.yaml", &patch).unwrap();
    until("the patch applied", Duration::from_secs(20), || async {
        Ok(patch_state(&mesh, "inbound-timeout", CHECKOUT_V1)
            .is_some_and(|(state, _)| state == "applied")
            .then_some(()))
    })
    .await
    .unwrap();
    in_sync(&mesh).await;
    // Two keep-alive connections opened under the patch: one keeps asking, one stays idle.
    let mut busy = DirectConnection::open(&mesh, "shop/frontend")
        .await
        .unwrap();
    let mut idle = DirectConnection::open(&mesh, "shop/frontend")
        .await
        .unwrap();
    for connection in [&mut busy, &mut idle] {
        let reply = connection.request("GET", "/cart", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.headers.get("connection").is_none(), "{reply:?}");
    }
    // Withdrawn: the listener goes back to what weft generates.
    mesh.write_manifest("patch.yaml", "").unwrap();
    until("the patch gone", Duration::from_secs(20), || async {
        Ok(patch_state(&mesh, "inbound-timeout", CHECKOUT_V1)
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap();
    in_sync(&mesh).await;
    let withdrawn = std::time::Instant::now();
    // The busy connection gets at most one more answer, which tells it to close.
    if let Ok(reply) = busy.request("GET", "/cart", &[]).await {
        assert_eq!(
            reply.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{reply:?}"
        );
    }
    let bound = Duration::from_secs(u64::from(SIDECAR_DRAIN_SECONDS) + 2);
    assert!(
        busy.closed_within(bound).await,
        "the busy connection stayed open"
    );
    assert!(
        idle.closed_within(bound.saturating_sub(withdrawn.elapsed()))
            .await,
        "the idle connection stayed open past the drain time"
    );
    assert!(withdrawn.elapsed() <= bound, "{:?}", withdrawn.elapsed());
    mesh.stop().await;
}

/// A resource a random patch changes: the pod whose workload it selects, and the resource.
struct Target {
    pod: &'static str,
    type_name: &'static str,
    resource: &'static str,
    /// Every place of the resource as weft generates it: its JSON pointer and what it holds.
    places: Vec<(String, serde_json::Value)>,
}

/// Every JSON pointer below the root of `value`, with what it holds.
fn places(value: &serde_json::Value, at: &str, out: &mut Vec<(String, serde_json::Value)>) {
    let children: Vec<(String, &serde_json::Value)> = match value {
        serde_json::Value::Object(object) => object
            .iter()
            .map(|(key, child)| (key.replace('~', "~0").replace('/', "~1"), child))
            .collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, child)| (index.to_string(), child))
            .collect(),
        _ => Vec::new(),
    };
    for (key, child) in children {
        let path = format!("{at}/{key}");
        out.push((path.clone(), child.clone()));
        places(child, &path, out);
    }
}

/// The resources random patches change, as the controller generates them for the mesh.
fn targets(mesh: &TestMesh) -> Vec<Target> {
    use weft_envoy_config::render::to_json;
    let catalog = mesh.mesh().controller.shared.catalog();
    let wanted: [(&str, &str, &str); 6] = [
        (CHECKOUT_V1, "Listener", "inbound:8080"),
        (CHECKOUT_V1, "Cluster", "inbound:8080"),
        (weft_e2e::attacks::DB, "Listener", "inbound:5432"),
        (FRONTEND, "RouteConfiguration", "outbound"),
        (FRONTEND, "Cluster", "checkout-v1.shop"),
        (FRONTEND, "Listener", "outbound"),
    ];
    wanted
        .into_iter()
        .map(|(pod, type_name, resource)| {
            let generated = weft_controller::mesh::generated_resources(
                &catalog,
                "cluster.local",
                &mesh.replica(pod).pod,
            );
            let json = match type_name {
                "Listener" => generated
                    .listeners
                    .iter()
                    .find(|l| l.name == resource)
                    .map(to_json),
                "Cluster" => generated
                    .clusters
                    .iter()
                    .find(|c| c.name == resource)
                    .map(to_json),
                _ => generated
                    .routes
                    .iter()
                    .find(|r| r.name == resource)
                    .map(to_json),
            }
            .unwrap_or_else(|| panic!("{pod} has no {type_name} {resource}"))
            .unwrap();
            let mut found = Vec::new();
            places(&json, "", &mut found);
            Target {
                pod,
                type_name,
                resource,
                places: found,
            }
        })
        .collect()
}

/// Field names a random `add` tries: safe ones and ones that decide who reaches what.
const FIELDS: &[&str] = &[
    "timeout",
    "idle_timeout",
    "stream_idle_timeout",
    "request_timeout",
    "drain_timeout",
    "per_connection_buffer_limit_bytes",
    "response_headers_to_add",
    "request_headers_to_add",
    "retry_policy",
    "prefix_rewrite",
    "host_rewrite_literal",
    "cluster",
    "typed_per_filter_config",
    "upgrade_configs",
    "normalize_path",
    "merge_slashes",
    "forward_client_cert_details",
    "set_current_client_cert_details",
    "drain_type",
    "connect_timeout",
    "circuit_breakers",
    "lb_policy",
    "outlier_detection",
    "use_original_dst",
    "max_request_headers_kb",
    "delayed_close_timeout",
    "validate_clusters",
    "domains",
    "prefix",
    "require_client_certificate",
    "max_stream_duration",
    "hash_policy",
    "priority",
    "server_name",
    "direct_response",
    "request_headers_to_remove",
];

/// Values that fit `field` where Envoy has it (a duration for a timeout, headers for a header
/// list, ...), so that an `add` at the right place makes a valid resource for the guard to
/// judge; any value for a field not known here.
fn fitting(field: &str) -> Vec<serde_json::Value> {
    use serde_json::json;
    let disabled = json!({"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true});
    match field {
        f if f.ends_with("timeout") => vec![json!("0.5s"), json!("5s"), json!("120s")],
        "per_connection_buffer_limit_bytes" | "max_request_headers_kb" => {
            vec![json!(80), json!(1024), json!(65536)]
        }
        "response_headers_to_add" | "request_headers_to_add" => vec![
            json!([{"header": {"key": "x-random", "value": "1"}}]),
            json!([{"header": {"key": "x-role", "value": "admin"}}]),
        ],
        "retry_policy" => vec![
            json!({"num_retries": 2}),
            json!({"retry_on": "5xx", "num_retries": 1}),
        ],
        "prefix_rewrite" => vec![json!("/admin/")],
        "host_rewrite_literal" => vec![json!("checkout-v2")],
        "cluster" => vec![json!("checkout-v2.shop"), json!("inbound:8080")],
        "typed_per_filter_config" => vec![
            json!({"weft.inbound:8080": disabled}),
            json!({"weft.outbound": disabled}),
        ],
        "upgrade_configs" => vec![json!([{"upgrade_type": "websocket"}])],
        "normalize_path" | "merge_slashes" | "require_client_certificate" | "validate_clusters" => {
            vec![json!(false)]
        }
        "use_original_dst" => vec![json!(true)],
        "forward_client_cert_details" => vec![json!("SANITIZE_SET"), json!("APPEND_FORWARD")],
        "set_current_client_cert_details" => vec![json!({"uri": true})],
        "drain_type" => vec![json!("MODIFY_ONLY")],
        "lb_policy" => vec![json!("RING_HASH"), json!("LEAST_REQUEST")],
        "circuit_breakers" => vec![json!({"thresholds": [{"max_connections": 1000}]})],
        "outlier_detection" => vec![json!({"consecutive_5xx": 5})],
        "hash_policy" => vec![json!([{"header": {"header_name": "x-user"}}])],
        "priority" => vec![json!("HIGH")],
        "server_name" => vec![json!("weft-random")],
        "direct_response" => vec![json!({"status": 200})],
        "request_headers_to_remove" => vec![json!(["x-weft-cluster"])],
        "domains" => vec![json!(["*"])],
        "prefix" => vec![json!("/admin")],
        _ => values(),
    }
}

/// Values a random `add` writes.
fn values() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!("5s"),
        json!("0.25s"),
        json!(1),
        json!(65536),
        json!(80),
        json!(true),
        json!(false),
        json!("/admin/"),
        json!("checkout-v2.shop"),
        json!("inbound:8080"),
        json!({}),
        json!([]),
        json!([{"header": {"key": "x-random", "value": "1"}}]),
        json!([{"header": {"key": "x-role", "value": "admin"}}]),
        json!({"num_retries": 2}),
        json!("SANITIZE_SET"),
        json!("APPEND_FORWARD"),
        json!({"uri": true}),
        json!({"weft.inbound:8080": {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true}}),
        json!([{"upgrade_type": "websocket"}]),
        json!("RING_HASH"),
        json!({"thresholds": [{"max_connections": 1000}]}),
        json!({"consecutive_5xx": 5}),
        json!("127.1.9.9"),
        json!(18080),
        json!("MODIFY_ONLY"),
        json!({"status": 200}),
        json!(["*"]),
        json!("weft-random"),
    ]
}

/// Values of the same JSON type as `value`: other durations for a duration, other numbers
/// for a number, and so on; what a `replace` most often writes.
fn alike(value: &serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::json;
    match value {
        serde_json::Value::String(text)
            if text.ends_with('s') && text.trim_end_matches('s').parse::<f64>().is_ok() =>
        {
            vec![json!("0.5s"), json!("5s"), json!("30s"), json!("120s")]
        }
        serde_json::Value::String(_) => vec![
            json!("weft-random"),
            json!("/admin/"),
            json!("checkout-v2.shop"),
            json!("inbound:8080"),
            json!("127.1.9.9"),
            json!("*"),
        ],
        serde_json::Value::Number(_) => {
            vec![json!(0), json!(1), json!(80), json!(1024), json!(65536)]
        }
        serde_json::Value::Bool(flag) => vec![json!(!flag)],
        _ => values(),
    }
}

/// A strategy for one resource patch: a target (by index) and one or two operations on
/// places of its generated JSON, most of them a value replaced by one of its type (the kind of
/// edit most often accepted), others adding fields, removing, copying and moving anywhere.
fn patch_strategy(
    targets: &[Target],
) -> impl proptest::strategy::Strategy<Value = (usize, serde_json::Value)> {
    use proptest::prelude::*;
    use serde_json::json;
    let places: Vec<Vec<(String, serde_json::Value)>> =
        targets.iter().map(|t| t.places.clone()).collect();
    (0..targets.len()).prop_flat_map(move |target| {
        let here = places[target].clone();
        let leaves: Vec<(String, Vec<serde_json::Value>)> = here
            .iter()
            .filter(|(_, value)| !value.is_object() && !value.is_array())
            .map(|(path, value)| (path.clone(), alike(value)))
            .collect();
        let objects: Vec<String> = here
            .iter()
            .filter(|(_, value)| value.is_object())
            .map(|(path, _)| path.clone())
            .chain(std::iter::once(String::new()))
            .collect();
        let mut arrays: Vec<String> = here
            .iter()
            .filter(|(_, value)| value.is_array())
            .map(|(path, _)| path.clone())
            .collect();
        if arrays.is_empty() {
            arrays.push("/no-array".to_owned());
        }
        let any_place =
            proptest::sample::select(here.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>());
        let object = proptest::sample::select(objects);
        let array = proptest::sample::select(arrays);
        let value = proptest::sample::select(values());
        let replace = proptest::sample::select(leaves).prop_flat_map(|(path, alike)| {
            proptest::sample::select(alike)
                .prop_map(move |value| json!({"op": "replace", "path": path.clone(), "value": value}))
        });
        let operation = prop_oneof![
            4 => replace,
            3 => (object.clone(), proptest::sample::select(FIELDS.to_vec()))
                .prop_flat_map(|(at, field)| {
                    proptest::sample::select(fitting(field)).prop_map(move |value| {
                        json!({"op": "add", "path": format!("{at}/{field}"), "value": value})
                    })
                }),
            1 => any_place.clone().prop_map(|path| json!({"op": "remove", "path": path})),
            1 => (array.clone(), value)
                .prop_map(|(at, value)| json!({"op": "add", "path": format!("{at}/-"), "value": value})),
            1 => (any_place.clone(), array)
                .prop_map(|(from, at)| json!({"op": "copy", "from": from, "path": format!("{at}/-")})),
            1 => (any_place, object)
                .prop_map(|(from, at)| json!({"op": "move", "from": from, "path": format!("{at}/moved")})),
        ];
        (
            Just(target),
            proptest::collection::vec(operation, 1..=2).prop_map(serde_json::Value::Array),
        )
    })
}

/// Whether the controller would apply `operations` to `target` (the guard and every other
/// check), as it applies patches: on the resources weft generates for the pod; and whether
/// they change it at all (a value replaced by itself changes nothing, and tests nothing).
fn accepted(mesh: &TestMesh, target: &Target, operations: &serde_json::Value) -> (bool, bool) {
    let catalog = mesh.mesh().controller.shared.catalog();
    let mut resources = weft_controller::mesh::generated_resources(
        &catalog,
        "cluster.local",
        &mesh.replica(target.pod).pod,
    );
    let patch = weft_policy::extension::EnvoyPatch {
        meta: weft_policy::model::Meta {
            namespace: "shop".to_owned(),
            name: "random".to_owned(),
            api_version: "policy.weft.io/v1alpha1".to_owned(),
            origin: None,
        },
        selector: BTreeMap::new(),
        patches: vec![weft_policy::extension::ResourcePatch {
            resource_type: weft_policy::extension::PatchedType::named(target.type_name).unwrap(),
            name: target.resource.to_owned(),
            operations: operations.as_array().cloned().unwrap_or_default(),
            position: 0,
        }],
    };
    let before = resources.clone();
    let applied = weft_controller::patch::apply(
        &[&patch],
        &mut resources,
        &BTreeMap::new(),
        &mut weft_controller::patch::PatchCache::default(),
    )[0]
    .applied();
    (applied, resources != before)
}

/// How many random patches are judged by the guard, and at most how many of those it accepts
/// go through real Envoys (in rounds of one per target).
const CANDIDATES: usize = 4000;
const TRIED_IN_ENVOY: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_patches_the_guard_accepts_change_no_answer_of_real_envoys() {
    use proptest::strategy::{Strategy as _, ValueTree as _};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut mesh = patched_mesh().await;
    let targets = targets(&mesh);
    // Deterministic by default, so a failure can be replayed; WEFT_GUARD_SEED explores others.
    let seed: u64 = std::env::var("WEFT_GUARD_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(25);
    println!("random patches from seed {seed} (WEFT_GUARD_SEED)");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = patch_strategy(&targets);
    let mut accepted_by_target: Vec<Vec<serde_json::Value>> = vec![Vec::new(); targets.len()];
    let (mut refused, mut no_change) = (0, 0);
    for _ in 0..CANDIDATES {
        let (target, operations) = strategy.new_tree(&mut runner).unwrap().current();
        match accepted(&mesh, &targets[target], &operations) {
            (true, true) => {
                if !accepted_by_target[target].contains(&operations) {
                    accepted_by_target[target].push(operations);
                }
            }
            (true, false) => no_change += 1,
            (false, _) => refused += 1,
        }
    }
    let total: usize = accepted_by_target.iter().map(Vec::len).sum();
    println!(
        "the guard accepted {total} distinct patches that change a resource ({no_change} more that change nothing) and refused {refused}"
    );
    assert!(
        total >= 10 && refused >= CANDIDATES / 2,
        "{total} accepted, {refused} refused"
    );

    // Through real Envoys, a round at a time (one patch per target at once).
    let mut tried = 0;
    let mut applied = 0;
    let mut round = 0;
    while tried < TRIED_IN_ENVOY && accepted_by_target.iter().any(|a| !a.is_empty()) {
        let mut written = Vec::new();
        for (index, accepted) in accepted_by_target.iter_mut().enumerate() {
            if let Some(operations) = accepted.pop() {
                let target = &targets[index];
                let name = format!("random-{round}-{index}");
                written.push((
                    name.clone(),
                    target.pod,
                    envoy_patch(
                        &name,
                        target.pod,
                        target.type_name,
                        target.resource,
                        &operations,
                    ),
                    operations,
                ));
            }
        }
        tried += written.len();
        let text: Vec<&str> = written
            .iter()
            .map(|(_, _, yaml, _)| yaml.as_str())
            .collect();
        mesh.write_manifest("random.yaml", &text.join("---\n"))
            .unwrap();
        until(
            "every random patch judged",
            Duration::from_secs(20),
            || async {
                Ok(written
                    .iter()
                    .all(|(name, pod, _, _)| patch_state(&mesh, name, pod).is_some())
                    .then_some(()))
            },
        )
        .await
        .unwrap();
        in_sync(&mesh).await;
        for (name, pod, _, operations) in &written {
            let (state, reason) = patch_state(&mesh, name, pod).unwrap_or_default();
            // The controller agrees with the guard's verdict; Envoy may still refuse it (and it
            // is then withdrawn), which is no access decision either.
            assert!(
                state == "applied" || state == "withdrawn",
                "{name} {operations}: {state} {reason}"
            );
            applied += usize::from(state == "applied");
        }
        // A connection opened before the change serves at most one more request under the
        // old configuration (the drain); these probes are each on a new one, after it.
        let wrong = run_probes(&mesh).await;
        assert!(
            wrong.is_empty(),
            "round {round}, with {:#?}: {wrong:#?}",
            written
                .iter()
                .map(|(name, _, _, operations)| format!("{name}: {operations}"))
                .collect::<Vec<_>>()
        );
        round += 1;
    }
    println!(
        "{tried} accepted patches tried in Envoy, {applied} applied by it, every answer as before"
    );
    assert!(
        applied >= 8,
        "only {applied} random patches were applied by Envoy"
    );
    mesh.stop().await;
}
