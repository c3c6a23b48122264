//! Compiles the descriptors of the Envoy protos weft renders (from the `.proto` files that the
//! envoy-types crate ships) into `$OUT_DIR/envoy-descriptors.bin`, so that typed resources can be
//! written as Envoy's JSON and YAML (prost alone has no reflection). protox is a pure-Rust
//! protobuf compiler: no `protoc` is needed.

use std::path::PathBuf;

/// The envoy-types release whose protos are compiled; the workspace pins the crate to it.
const ENVOY_TYPES: &str = "envoy-types-0.7.7";

/// The messages weft writes into configurations (each file brings what it imports).
const FILES: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/wasm/v3/wasm.proto",
    "envoy/extensions/filters/network/wasm/v3/wasm.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/http/early_header_mutation/header_mutation/v3/header_mutation.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    // Envoy's native access control, which `make bench` compares weft's with.
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "google/protobuf/wrappers.proto",
];

/// Folders of the envoy-types `proto/` tree that imports resolve against.
const INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "client_model",
    "opentelemetry-proto",
];

fn main() {
    let root = proto_root();
    let includes: Vec<PathBuf> = INCLUDES.iter().map(|dir| root.join(dir)).collect();
    // Encoded by protox itself, which keeps the options' extensions (the `validate.rules`
    // constraints that `constraints` checks); prost's own types would drop them.
    let descriptors = protox::Compiler::new(includes)
        .and_then(|mut compiler| {
            compiler.include_imports(true);
            compiler.open_files(FILES)?;
            Ok(compiler.encode_file_descriptor_set())
        })
        .unwrap_or_else(|err| panic!("compiling Envoy's protos from {}: {err}", root.display()));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("envoy-descriptors.bin");
    std::fs::write(&out, descriptors)
        .unwrap_or_else(|err| panic!("writing {}: {err}", out.display()));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WEFT_ENVOY_PROTOS");
}

/// The `proto/` folder of envoy-types: `WEFT_ENVOY_PROTOS` when set (a vendored tree), else
/// the crate's unpacked source in Cargo's registry.
fn proto_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_ENVOY_PROTOS") {
        return PathBuf::from(dir);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .expect("neither CARGO_HOME nor HOME is set");
    let registry = cargo_home.join("registry").join("src");
    let found = std::fs::read_dir(&registry).ok().and_then(|indexes| {
        indexes
            .filter_map(Result::ok)
            .map(|index| index.path().join(ENVOY_TYPES).join("proto"))
            .find(|dir| dir.is_dir())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{ENVOY_TYPES}/proto not found under {}; set WEFT_ENVOY_PROTOS to its proto/ folder",
            registry.display()
        )
    })
}
