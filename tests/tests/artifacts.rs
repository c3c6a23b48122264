//! The built artifacts and the shipped Envoy configurations are what they claim to be.

use std::path::Path;
use std::process::Command;

use weft_certs::{MeshCa, Validity};
use weft_e2e::{paths, policy};
use weft_envoy_config::listeners::forwards_caller_identity;
use weft_envoy_config::pb::envoy::config::metrics::v3::StatsConfig;
use weft_envoy_config::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use weft_envoy_config::render::{from_json, to_json};
use weft_policy::bundle::AccessMode;
use weft_policy::{CallerIdentity, PluginConfig};
use weft_wasm_build::code::{LARGEST_FUNCTION_BUDGET, function_sizes};
use weft_wasm_build::exports::{ENVOY_ENTRY_POINTS, export_names};
use weft_wasm_build::{MANIFEST_FILE, Manifest};

#[test]
fn the_manifest_describes_the_built_module() {
    let module_path = paths::weft_wasm().unwrap();
    let module = std::fs::read(&module_path).unwrap();
    let manifest = Manifest::read(&module_path.with_file_name(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest.name, "weft.wasm");
    assert_eq!(manifest.version, env!("CARGO_PKG_VERSION"));
    manifest.verify(&module).unwrap();
    assert!(module.starts_with(b"\0asm"), "not a wasm module");
    if let Some(optimisation) = &manifest.optimisation {
        // A kept optimisation is smaller by construction, and the module is what was kept.
        let expected = if optimisation.kept {
            optimisation.size_after
        } else {
            optimisation.size_before
        };
        assert_eq!(manifest.size, expected, "{optimisation:?}");
    }
}

#[test]
fn the_built_module_offers_envoy_only_the_hooks_weft_implements() {
    let module = std::fs::read(paths::weft_wasm().unwrap()).unwrap();
    let mut exported = export_names(&module).unwrap();
    exported.sort();
    let mut expected: Vec<String> = ENVOY_ENTRY_POINTS.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(exported, expected);
}

#[test]
fn no_function_of_the_built_module_is_larger_than_v8_compiles_cheaply() {
    let module = std::fs::read(paths::weft_wasm().unwrap()).unwrap();
    let sizes = function_sizes(&module).unwrap();
    assert!(
        sizes.len() > 100,
        "{} functions: not weft.wasm",
        sizes.len()
    );
    let (index, largest) = sizes
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|(_, size)| *size)
        .unwrap();
    assert!(
        largest <= LARGEST_FUNCTION_BUDGET,
        "function {index} of weft.wasm is {largest} bytes, above {LARGEST_FUNCTION_BUDGET}: V8 \
         compiles it whole when Envoy loads the module, and Envoy keeps the memory that took \
         (docs/decisions.md, \"Small functions for V8\"); keep it apart with #[inline(never)] \
         where it is built"
    );
}

/// A working directory laid out like the README's walk-through leaves the repository root:
/// `target/` (the built module) and `pki/` (the mesh CA and shop/api's certificate, made
/// here with weft-certs), so the shipped configurations' relative paths resolve.
fn walkthrough_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        paths::workspace_root().join("target"),
        dir.path().join("target"),
    )
    .unwrap();
    let lifetime = std::time::Duration::from_secs(3600);
    let ca = MeshCa::generate("cluster.local", Validity::starting_now(lifetime)).unwrap();
    let api = ca
        .issue(
            &"shop/api".parse().unwrap(),
            Validity::starting_now(lifetime),
        )
        .unwrap();
    for (file, text) in [
        ("pki/ca/ca.pem", &ca.pem().cert_pem),
        ("pki/api/cert.pem", &api.cert_pem),
        ("pki/api/key.pem", &api.key_pem),
    ] {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Runs `envoy --mode validate` on `config` from a [`walkthrough_dir`].
fn validate(config: &Path) -> (bool, String) {
    let dir = walkthrough_dir();
    let output = Command::new(paths::envoy_binary().unwrap())
        .current_dir(dir.path())
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "--log-level",
            "warning",
            "-c",
        ])
        .arg(config)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), log)
}

#[test]
fn every_shipped_envoy_configuration_passes_envoy_validation() {
    paths::weft_wasm().unwrap();
    let dir = paths::workspace_root().join("envoy-configs");
    let mut configs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    configs.sort();
    assert!(
        !configs.is_empty(),
        "no configurations in {}",
        dir.display()
    );
    for config in &configs {
        let (ok, log) = validate(config);
        assert!(ok, "{} is invalid:\n{log}", config.display());
    }
}

#[test]
fn envoy_validation_rejects_a_broken_configuration() {
    // The check above means something only if validation can fail: an unknown field must.
    let dir = tempfile::tempdir().unwrap();
    let standalone =
        std::fs::read_to_string(paths::workspace_root().join("envoy-configs/standalone.yaml"))
            .unwrap();
    let broken = standalone.replace("failure_policy: FAIL_CLOSED", "failure_polcy: FAIL_CLOSED");
    assert_ne!(
        broken, standalone,
        "the standalone configuration no longer sets failure_policy"
    );
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let (ok, log) = validate(&path);
    assert!(!ok, "validation accepted an unknown field:\n{log}");
    assert!(log.contains("failure_polcy"), "{log}");
}

#[test]
fn every_shipped_configuration_carries_the_stats_settings_weft_metrics_need() {
    let expected = weft_envoy_config::bootstrap::stats_config();
    for file in [
        "standalone.yaml",
        "inbound-access.yaml",
        "outbound-split.yaml",
    ] {
        let config = shipped(file);
        let written: StatsConfig = from_json(&config["stats_config"]).unwrap();
        assert_eq!(
            written, expected,
            "{file}: weft_envoy_config::bootstrap::stats_config() is missing"
        );
    }
}

#[test]
fn every_shipped_inbound_listener_puts_paths_in_normal_form_before_weft_sees_them() {
    let mut normalised = HttpConnectionManager::default();
    weft_envoy_config::listeners::normalise_paths(&mut normalised);
    let expected = to_json(&normalised).unwrap();
    assert!(!expected.as_object().unwrap().is_empty());
    for file in ["standalone.yaml", "inbound-access.yaml"] {
        let config = shipped(file);
        let manager = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        for (field, value) in expected.as_object().unwrap() {
            assert_eq!(
                &manager[field], value,
                "{file}: set {field} as weft_envoy_config::listeners::normalise_paths does"
            );
        }
    }
}

#[test]
fn a_shipped_plugin_reads_the_caller_from_x_forwarded_client_cert_only_where_envoy_sets_it() {
    // A plugin may trust the header only where its listener writes it and drops a client's.
    let sound = |plugin: &PluginConfig, manager: &HttpConnectionManager| {
        plugin.caller_identity == CallerIdentity::Connection || forwards_caller_identity(manager)
    };
    for file in [
        "standalone.yaml",
        "inbound-access.yaml",
        "outbound-split.yaml",
    ] {
        let config = shipped(file);
        let mut manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]
            .clone();
        manager.as_object_mut().unwrap().remove("@type");
        let manager: HttpConnectionManager = from_json(&manager).unwrap();
        let (_, mut plugin) = embedded_plugin(file);
        assert!(
            sound(&plugin, &manager),
            "{file}: the plugin trusts x-forwarded-client-cert, so the listener must set it \
             (SANITIZE_SET and the URI): weft_envoy_config::listeners::forward_caller_identity"
        );
        // The same listener with a plugin that trusted the header would be refused here.
        plugin.caller_identity = CallerIdentity::ForwardedClientCert;
        assert!(!sound(&plugin, &manager), "{file}");
    }
}

/// The shipped configuration `file` (in envoy-configs/) as a value.
fn shipped(file: &str) -> serde_json::Value {
    let path = paths::workspace_root().join("envoy-configs").join(file);
    read_yaml(&std::fs::read_to_string(path).unwrap())
}

/// A shipped YAML configuration as a value, read by weft's own YAML reader.
fn read_yaml(text: &str) -> serde_json::Value {
    let mut documents = weft_policy::document::read_yaml(text, 1).unwrap();
    assert_eq!(documents.len(), 1);
    let document = documents.remove(0);
    assert!(document.duplicates.is_empty(), "{:?}", document.duplicates);
    document.value
}

/// The failure policy and plugin configuration of the weft filter in a shipped configuration
/// with one HTTP listener.
fn embedded_plugin(file: &str) -> (String, PluginConfig) {
    let config = shipped(file);
    let manager = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
    let plugin = &manager["typed_config"]["http_filters"][0]["typed_config"]["config"];
    use base64::Engine as _;
    assert_eq!(
        plugin["configuration"]["@type"],
        "type.googleapis.com/google.protobuf.BytesValue"
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(plugin["configuration"]["value"].as_str().unwrap())
        .unwrap();
    let embedded = weft_policy::wire::decode(&bytes).unwrap().config;
    let failure_policy = plugin["failure_policy"].as_str().unwrap_or_default();
    (failure_policy.to_owned(), embedded)
}

#[test]
fn the_inbound_example_carries_what_weft_compile_makes_of_the_example_policy() {
    let (failure_policy, embedded) = embedded_plugin("inbound-access.yaml");
    assert_eq!(failure_policy, "FAIL_CLOSED", "access fails closed");
    let mut compiled = policy::inbound(
        &policy::example("shop").unwrap(),
        "shop/api",
        AccessMode::Enforce,
    )
    .unwrap();
    compiled.destination_port = Some(8080);
    if let Some(metrics) = compiled.metrics.as_mut() {
        metrics.service = Some("api.shop".to_owned());
    }
    assert_eq!(
        embedded, compiled,
        "re-run the weft compile command in the file's comment"
    );
}

#[test]
fn the_outbound_example_carries_what_weft_compile_makes_of_the_example_policy() {
    let (failure_policy, embedded) = embedded_plugin("outbound-split.yaml");
    assert_eq!(
        failure_policy, "FAIL_OPEN",
        "split routing fails to the root service"
    );
    let compiled = policy::outbound(&policy::example("shop").unwrap(), "shop/frontend").unwrap();
    assert!(!compiled.splits.is_empty());
    assert_eq!(
        embedded, compiled,
        "re-run the weft compile command in the file's comment"
    );
}
