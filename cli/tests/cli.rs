//! The `weft` command, run as a user runs it, on fixture manifests of every served version.

use std::process::{Command, Output};

use serde_json::Value;
use weft_policy::PluginConfig;
use weft_policy::bundle::StickyKey;
use weft_policy::engine::Engine;

fn fixtures(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_exits_0_on_a_clean_set_of_every_served_version() {
    let output = weft(&["check", &fixtures("shop")]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(
        text.ends_with("0 error(s), 6 warning(s) in 12 object(s)\n"),
        "{text}"
    );
    // SMI anchors path regexes at the start only: a path written like an exact one is flagged.
    assert!(
        text.contains("routes.yaml:14: warning: HTTPRouteGroup shop/api-routes: spec.matches[1].pathRegex: also matches every longer path that starts with a match, such as /ordersadmin, because SMI anchors pathRegex at the start only; to allow exactly the paths it spells, write \"/orders$\""),
        "{text}"
    );
}

#[test]
fn check_exits_1_and_reports_every_error_with_file_line_object_and_field() {
    let output = weft(&["check", &fixtures("broken")]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    for expected in [
        // A missing field at the line of the object that should hold it, others at their own.
        "broken.yaml:4: error: TrafficTarget shop/no-sources: spec.sources: at least one source is required",
        "broken.yaml:7: error: TrafficTarget shop/no-sources: spec.rules[0].name: HTTPRouteGroup shop/missing-routes does not exist",
        "broken.yaml:14: error: HTTPRouteGroup shop/bad-regex: spec.matches[0].pathRegex: invalid regex",
        "broken.yaml:14: error: HTTPRouteGroup shop/bad-regex: spec.matches[0].methods[0]: method \"FETCH\" is not one of",
        "broken.yaml:22: error: TrafficSplit shop/bad-split: spec.backends[0].service: the root service web cannot be its own backend",
        "broken.yaml:23: error: TrafficSplit shop/bad-split: spec.backends[1].weight: -3 is not a valid weight",
        "6 error(s), 1 warning(s)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn check_json_output_is_for_tools() {
    let output = weft(&["check", "--output", "json", &fixtures("broken")]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["errors"], 6);
    let first = &report["diagnostics"][0];
    assert_eq!(first["severity"], "error");
    assert_eq!(first["kind"], "TrafficTarget");
    assert_eq!(first["origin"]["line"], 4);
    assert!(first["field"].as_str().unwrap().starts_with("spec."));
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(weft(&["check"]).status.code(), Some(2));
    assert_eq!(
        weft(&[
            "explain",
            "--manifests",
            "x",
            "--from",
            "not-an-identity",
            "--to",
            "a/b"
        ])
        .status
        .code(),
        Some(2)
    );
    assert_eq!(weft(&["frobnicate"]).status.code(), Some(2));
    let help = weft(&["explain", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("--header"));
}

#[test]
fn a_missing_path_is_an_error_not_a_panic() {
    let output = weft(&["check", "/nonexistent/manifests"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("/nonexistent/manifests: error: cannot be read: No such file"),
        "{}",
        stdout(&output)
    );
}

fn explain(args: &[&str]) -> Value {
    let manifests = fixtures("shop");
    let mut all = vec![
        "explain",
        "--manifests",
        manifests.as_str(),
        "--output",
        "json",
    ];
    all.extend_from_slice(args);
    let output = weft(&all);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // What it prints reads back as the report type anything that shows an explanation uses.
    let report: weft_policy::explain::ExplainReport =
        serde_json::from_str(&stdout(&output)).unwrap();
    serde_json::to_value(report).unwrap()
}

#[test]
fn explain_allows_with_the_objects_that_decided() {
    let report = explain(&[
        "--from",
        "shop/frontend",
        "--to",
        "shop/api",
        "--method",
        "POST",
        "--path",
        "/orders",
    ]);
    assert_eq!(report["decision"], "allow");
    assert_eq!(report["traffic_target"], "shop/frontend-to-api");
    assert_eq!(report["http_match"], "shop/api-routes/orders");
    assert_eq!(report["from"], "spiffe://cluster.local/ns/shop/sa/frontend");
}

#[test]
fn explain_denies_and_says_why() {
    let report = explain(&[
        "--from",
        "shop/frontend",
        "--to",
        "shop/api",
        "--path",
        "/admin",
    ]);
    assert_eq!(report["decision"], "deny");
    assert_eq!(report["reason"]["kind"], "no_matching_rule");
    assert_eq!(
        report["reason"]["traffic_targets"][0],
        "shop/frontend-to-api"
    );
    let stranger = explain(&["--from", "shop/stranger", "--to", "shop/api"]);
    assert_eq!(stranger["reason"]["kind"], "no_traffic_target");
}

#[test]
fn explain_reads_headers_ports_and_older_versions() {
    let probe = explain(&[
        "--from",
        "shop/frontend",
        "--to",
        "shop/api",
        "--path",
        "/healthz",
        "--header",
        "X-Probe=kubelet",
    ]);
    assert_eq!(
        probe["decision"], "allow",
        "v1alpha3 list-form headers: {probe}"
    );
    let no_header = explain(&[
        "--from",
        "shop/frontend",
        "--to",
        "shop/api",
        "--path",
        "/healthz",
    ]);
    assert_eq!(no_header["decision"], "deny");
    let admin_on_port = explain(&[
        "--from",
        "ops/admin",
        "--to",
        "shop/api",
        "--path",
        "/x",
        "--port",
        "8080",
    ]);
    assert_eq!(
        admin_on_port["decision"], "allow",
        "v1alpha1 TrafficTarget: {admin_on_port}"
    );
    let admin_elsewhere = explain(&[
        "--from",
        "ops/admin",
        "--to",
        "shop/api",
        "--path",
        "/x",
        "--port",
        "9090",
    ]);
    assert_eq!(
        admin_elsewhere["decision"], "deny",
        "v1alpha1 destination.port restricts the port"
    );
    let db = explain(&[
        "--from",
        "shop/api",
        "--to",
        "shop/db",
        "--protocol",
        "tcp",
        "--port",
        "5432",
    ]);
    assert_eq!(db["decision"], "allow");
}

#[test]
fn explain_refuses_a_broken_set() {
    let output = weft(&[
        "explain",
        "--manifests",
        &fixtures("broken"),
        "--from",
        "a/b",
        "--to",
        "shop/api",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("the manifests have 6 error(s)"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn compile_prints_a_plugin_configuration_the_engine_accepts() {
    for (identity, side) in [("shop/api", "inbound"), ("shop/client", "outbound")] {
        let output = weft(&[
            "compile",
            "--manifests",
            &fixtures("shop"),
            "--identity",
            identity,
            "--side",
            side,
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let config = PluginConfig::from_json(&output.stdout).unwrap();
        Engine::new(&config).unwrap();
        assert_eq!(config.identity.unwrap().to_string(), identity);
        match side {
            "inbound" => assert_eq!(config.access.unwrap().sources.len(), 2),
            _ => assert_eq!(config.splits.len(), 2),
        }
    }
}

#[test]
fn compile_bundle_prints_the_same_configuration_compiled_as_base64() {
    use base64::Engine as _;
    for (identity, side) in [("shop/api", "inbound"), ("shop/client", "outbound")] {
        let args = |bundle: bool| {
            let mut args = vec![
                "compile",
                "--manifests",
                &fixtures("shop"),
                "--identity",
                identity,
                "--side",
                side,
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            if bundle {
                args.push("--bundle".to_owned());
            }
            args
        };
        let run = |bundle| {
            let args = args(bundle);
            let output = weft(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
            output.stdout
        };
        let document = PluginConfig::from_json(&run(false)).unwrap();
        let encoded = run(true);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8(encoded).unwrap().trim_end())
            .unwrap();
        let bundle = weft_policy::wire::decode(&bytes).unwrap();
        assert_eq!(bundle.config, document, "{identity} {side}");
    }
}

#[test]
fn bundle_compiles_a_document_and_refuses_one_the_filter_would_refuse_naming_the_field() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"version": 1, "destination_port": 8080}"#).unwrap();
    let output = weft(&["bundle", good.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(stdout(&output).trim_end())
        .unwrap();
    let bundle = weft_policy::wire::decode(&bytes).unwrap();
    assert_eq!(bundle.config.destination_port, Some(8080));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"version": 1, "acess": {}}"#).unwrap();
    let output = weft(&["bundle", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("field `acess`: unknown field `acess`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn compile_records_metrics_on_both_sides_unless_told_not_to() {
    let manifests = fixtures("shop");
    for side in ["inbound", "outbound"] {
        let compile = |extra: &[&str]| {
            let mut args = vec![
                "compile",
                "--manifests",
                &manifests,
                "--identity",
                "shop/client",
                "--side",
                side,
            ];
            args.extend_from_slice(extra);
            let output = weft(&args);
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
            PluginConfig::from_json(&output.stdout).unwrap()
        };
        let metrics = compile(&[]).metrics.expect("metrics are on by default");
        assert_eq!(serde_json::to_value(metrics.direction).unwrap(), side);
        // Outbound destinations are looked up by Host; inbound, the destination is the workload.
        assert_eq!(metrics.services.is_empty(), side == "inbound");
        assert_eq!(compile(&["--no-metrics"]).metrics, None);
    }
}

#[test]
fn compile_service_names_the_inbound_destination_in_the_workloads_namespace() {
    let manifests = fixtures("shop");
    let base = [
        "compile",
        "--manifests",
        &manifests,
        "--identity",
        "shop/client",
    ];
    let output = weft(&[&base[..], &["--service", "client"]].concat());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let config = PluginConfig::from_json(&output.stdout).unwrap();
    assert_eq!(
        config.metrics.unwrap().service.as_deref(),
        Some("client.shop")
    );
    for (extra, complaint) in [
        (
            &["--service", "client.shop"][..],
            "give the Service's name only",
        ),
        (
            &["--service", "client", "--side", "outbound"][..],
            "use it with --side inbound",
        ),
    ] {
        let output = weft(&[&base[..], extra].concat());
        assert_eq!(output.status.code(), Some(2));
        assert!(stderr(&output).contains(complaint), "{}", stderr(&output));
    }
}

#[test]
fn compile_refuses_a_broken_set() {
    let output = weft(&[
        "compile",
        "--manifests",
        &fixtures("broken"),
        "--identity",
        "shop/api",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).is_empty(),
        "nothing half-compiled is printed"
    );
}

#[test]
fn compile_writes_the_listener_settings_smi_does_not_carry() {
    let output = weft(&[
        "compile",
        "--manifests",
        &fixtures("shop"),
        "--identity",
        "shop/api",
        "--mode",
        "audit",
        "--allow-unauthenticated-port",
        "8081",
        "--destination-port",
        "8080",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let config = PluginConfig::from_json(&output.stdout).unwrap();
    assert_eq!(config.destination_port, Some(8080));
    let access = config.access.unwrap();
    assert_eq!(access.mode, weft_policy::bundle::AccessMode::Audit);
    assert_eq!(access.unauthenticated_ports, [8081]);

    let outbound = weft(&[
        "compile",
        "--manifests",
        &fixtures("shop"),
        "--identity",
        "shop/client",
        "--side",
        "outbound",
        "--mode",
        "audit",
    ]);
    assert_eq!(outbound.status.code(), Some(2));
    assert!(
        stderr(&outbound).contains("--side inbound"),
        "{}",
        stderr(&outbound)
    );
}

#[test]
fn compile_makes_every_traffic_split_sticky_on_request() {
    let compile = |extra: &[&str], side: &str| {
        let mut args = vec![
            "compile",
            "--manifests",
            "FIXTURE",
            "--identity",
            "shop/client",
            "--side",
            side,
        ];
        args.extend_from_slice(extra);
        let fixture = fixtures("shop");
        args[2] = &fixture;
        weft(&args)
    };
    let output = compile(&["--sticky-cookie", "user"], "outbound");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let config = PluginConfig::from_json(&output.stdout).unwrap();
    assert!(!config.splits.is_empty());
    for split in &config.splits {
        assert_eq!(split.sticky, Some(StickyKey::Cookie("user".to_owned())));
    }

    for (extra, side, complaint) in [
        (
            vec!["--sticky-header", "x user"],
            "outbound",
            "\"x user\" is not a valid header name",
        ),
        (
            vec!["--sticky-cookie", "user"],
            "inbound",
            "--side outbound",
        ),
        (
            vec!["--sticky-cookie", "a", "--sticky-header", "b"],
            "outbound",
            "cannot be used with",
        ),
    ] {
        let output = compile(&extra, side);
        assert_eq!(output.status.code(), Some(2), "{extra:?}");
        assert!(stdout(&output).is_empty(), "{extra:?}");
        assert!(stderr(&output).contains(complaint), "{}", stderr(&output));
    }
}

#[test]
fn cert_makes_a_ca_and_workload_certificates_and_never_overwrites_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let api = dir.path().join("api");
    let made = weft(&["cert", "ca", "--out", ca.to_str().unwrap()]);
    assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
    let issued = weft(&[
        "cert",
        "workload",
        "--ca",
        ca.to_str().unwrap(),
        "--identity",
        "shop/api",
        "--dns",
        "localhost",
        "--out",
        api.to_str().unwrap(),
    ]);
    assert_eq!(issued.status.code(), Some(0), "{}", stderr(&issued));
    assert!(stdout(&issued).contains("spiffe://cluster.local/ns/shop/sa/api"));
    let cert = std::fs::read_to_string(api.join("cert.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(api.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }

    let again = weft(&["cert", "ca", "--out", ca.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    let no_ca = weft(&[
        "cert",
        "workload",
        "--ca",
        dir.path().join("missing").to_str().unwrap(),
        "--identity",
        "shop/api",
        "--out",
        api.to_str().unwrap(),
    ]);
    assert_eq!(no_ca.status.code(), Some(1));
    assert!(stderr(&no_ca).contains("ca.pem"), "{}", stderr(&no_ca));
}

/// A directory laid out as Kubernetes mounts a ConfigMap volume: the files live in a
/// timestamped hidden folder, `..data` links to it, and each file is a link through `..data`.
fn configmap_volume(dir: &std::path::Path, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let data = dir.join("..2026_12_01_10_00_00.123");
    std::fs::create_dir_all(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
        symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    symlink("..2026_12_01_10_00_00.123", dir.join("..data")).unwrap();
}

#[test]
fn check_reads_a_configmap_volume_once_and_every_other_file_despite_loops_and_binary_files() {
    let root = tempfile::tempdir().unwrap();
    let volume = root.path().join("volume");
    let smi = std::fs::read_to_string(format!(
        "{}/../examples/shop/smi.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    configmap_volume(&volume, &[("smi.yaml", &smi)]);
    let other = root.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    // A link back up makes a loop; a binary file and a dangling link are reported; a broken
    // manifest beside them is still checked.
    std::os::unix::fs::symlink("..", other.join("up")).unwrap();
    std::fs::write(other.join("blob.yaml"), [0xff, 0xfe, 0x00, 0x01]).unwrap();
    std::os::unix::fs::symlink("/nonexistent/weft.yaml", other.join("gone.yaml")).unwrap();
    std::fs::write(
        other.join("split.yaml"),
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: web\n  backends: []\n",
    )
    .unwrap();
    let output = weft(&["check", root.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let blob = other.join("blob.yaml").display().to_string();
    let gone = other.join("gone.yaml").display().to_string();
    for expected in [
        format!("{blob}: error: is not UTF-8 text"),
        format!("{gone}: error: cannot be read: No such file or directory"),
        "TrafficSplit shop/s: spec.backends: at least one backend is required".to_owned(),
        "3 error(s)".to_owned(),
        // The ConfigMap's three objects once, not twice (no duplicate errors), and the split.
        "in 4 object(s)".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    }
    assert!(
        !text.contains("..2026"),
        "a hidden folder was read:\n{text}"
    );
}

#[test]
fn certificate_commands_name_the_path_they_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let file_name = file.to_str().unwrap();
    let output = weft(&["cert", "ca", "--out", file_name]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!("{file_name} is not a directory; --out names")),
        "{}",
        stderr(&output)
    );
    let output = weft(&[
        "cert",
        "workload",
        "--ca",
        file_name,
        "--identity",
        "shop/api",
        "--out",
        "x",
    ]);
    assert!(
        stderr(&output).contains(&format!("{file_name} is not a directory; --ca names")),
        "{}",
        stderr(&output)
    );
    let below_a_file = file.join("sub");
    let output = weft(&["cert", "ca", "--out", below_a_file.to_str().unwrap()]);
    assert!(
        stderr(&output).contains(&format!(
            "cannot create the directory {}",
            below_a_file.display()
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
fn strict_makes_every_warning_an_error_and_a_split_to_an_undeclared_service_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("split.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}\n---\n\
         apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: web\n  backends: [{service: web-v1, weight: 1}]\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let output = weft(&["check", path]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let expected = "split.yaml:11: warning: TrafficSplit shop/s: spec.backends[0].service: Service shop/web-v1 is not among the manifests: requests will be sent to a service nobody declared here";
    assert!(stdout(&output).contains(expected), "{}", stdout(&output));
    let output = weft(&["check", "--strict", path]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains(&expected.replace("warning:", "error:")),
        "{}",
        stdout(&output)
    );
    let output = weft(&[
        "compile",
        "--strict",
        "--manifests",
        path,
        "--identity",
        "shop/client",
        "--side",
        "outbound",
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "compile refuses what --strict makes an error"
    );
}

#[test]
fn a_weight_of_the_wrong_type_or_too_large_is_reported_at_its_field_with_every_other_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("split.yaml");
    std::fs::write(
        &file,
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: 5\n  backends:\n  - {service: web-v1, weight: \"50\"}\n  - {service: web-v2, weight: 4294967296}\n  - {service: web-v3, weight: 1}\n  - {service: web-v3, weight: 1}\n",
    )
    .unwrap();
    let output = weft(&["check", file.to_str().unwrap()]);
    let text = stdout(&output);
    for expected in [
        "split.yaml:5: error: TrafficSplit shop/s: spec.service: invalid type: integer `5`, expected a string",
        "split.yaml:7: error: TrafficSplit shop/s: spec.backends[0].weight: \"50\" is not a valid weight; use a whole number of 0 or more",
        "split.yaml:8: error: TrafficSplit shop/s: spec.backends[1].weight: 4294967296 is too large; weights are relative, from 0 to 4294967295",
        "split.yaml:10: error: TrafficSplit shop/s: spec.backends[3].service: backend web-v3 is listed twice",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn help_lists_every_command_and_the_exit_codes_and_promises_nothing_for_later() {
    let help = stdout(&weft(&["--help"]));
    for command in ["cert", "check", "explain", "compile"] {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} in\n{help}"
        );
    }
    assert!(
        help.contains("Exit codes:") && help.contains("3  weft explain --exit-code"),
        "{help}"
    );
    for command in ["check", "explain", "compile", "cert"] {
        let text = stdout(&weft(&[command, "--help"]));
        assert!(text.contains("Exit codes:"), "{command} --help:\n{text}");
        assert!(
            !text.contains("later"),
            "{command} --help promises something:\n{text}"
        );
    }
}

#[test]
fn explain_exits_3_on_deny_only_when_asked() {
    let manifests = format!("{}/../examples/shop", env!("CARGO_MANIFEST_DIR"));
    let explain = |from: &str, extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--manifests",
            &manifests,
            "--from",
            from,
            "--to",
            "shop/api",
            "--path",
            "/orders",
        ];
        args.extend_from_slice(extra);
        weft(&args).status.code()
    };
    assert_eq!(
        explain("shop/stranger", &[]),
        Some(0),
        "a decision was made"
    );
    assert_eq!(explain("shop/stranger", &["--exit-code"]), Some(3));
    assert_eq!(explain("shop/frontend", &["--exit-code"]), Some(0));
}

/// Writes `text` as `name` in a new folder and returns the folder.
fn manifests(name: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), text).unwrap();
    dir
}

#[test]
fn a_misspelt_field_that_would_widen_access_is_an_error_and_explain_refuses_to_answer() {
    let dir = manifests(
        "access.yaml",
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: routes, namespace: shop}\nspec:\n  matches:\n  - name: read\n    pathRegex: /cart\n    method: [GET]\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: t, namespace: shop}\nspec:\n  destination: {kind: ServiceAccount, name: checkout, namespace: shop}\n  sources: [{kind: ServiceAccount, name: frontend, namespace: shop}]\n  rules: [{kind: HTTPRouteGroup, name: routes}]\n",
    );
    let path = dir.path().to_str().unwrap();
    let output = weft(&["check", path]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("access.yaml:8: error: HTTPRouteGroup shop/routes: spec.matches[0].method: unknown field: did you mean `methods`?"),
        "{text}"
    );
    // Without the error, this match would allow every method.
    let explained = weft(&[
        "explain",
        "--manifests",
        path,
        "--from",
        "shop/frontend",
        "--to",
        "shop/checkout",
        "--method",
        "DELETE",
        "--path",
        "/cart",
    ]);
    assert_ne!(explained.status.code(), Some(0), "{}", stdout(&explained));
    assert!(
        !stdout(&explained).contains("ALLOW"),
        "{}",
        stdout(&explained)
    );
    assert!(
        stderr(&explained).contains("did you mean `methods`?"),
        "{}",
        stderr(&explained)
    );
}

#[test]
fn check_refuses_what_the_mesh_cannot_serve_with_file_and_line() {
    let dir = manifests(
        "mesh.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec:\n  selector: {app: db}\n  ports: [{name: tcp-db, port: 5432}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: cache, namespace: shop}\nspec:\n  selector: {app: cache}\n  ports:\n  - {name: http, port: 8080}\n  - {name: tcp-cache, port: 5432}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: checkout-v1, namespace: shop}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: checkout}}\n    spec:\n      containers: [{command: [app], ports: [{containerPort: 8080}]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: checkout-v1-1, namespace: shop}\nspec:\n  containers:\n  - command: [app]\n    ports: [{containerPort: 15001}]\n---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: dark, namespace: shop}\nspec:\n  service: cache\n  backends: [{service: db, weight: 0}]\n",
    );
    let output = weft(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    for expected in [
        "mesh.yaml:6: error: Service shop/db: spec.ports[0].port: TCP port 5432 is also Service shop/cache's; every sidecar listens for each TCP Service port on that port of its own address, so two TCP Services cannot share a port: give one another port",
        "mesh.yaml:15: error: Service shop/cache: spec.ports[1].port: TCP port 5432 is also Service shop/db's",
        "mesh.yaml:29: error: Pod shop/checkout-v1-1: metadata.name: it is pod shop/checkout-v1-1, which is also replica 1 of Deployment shop/checkout-v1",
        "mesh.yaml:19: error: Deployment shop/checkout-v1: metadata.name: its replica 1 would be pod shop/checkout-v1-1, which is also Pod shop/checkout-v1-1;",
        "mesh.yaml:33: error: Pod shop/checkout-v1-1: spec.containers[0].ports[0].containerPort: port 15001 is the sidecar's own (its outbound HTTP listener) on the pod's address; use another",
        "mesh.yaml:40: error: TrafficSplit shop/dark: spec.backends: every backend has weight 0, so the split would send nowhere",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}
