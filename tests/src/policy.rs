//! Plugin configurations for tests, compiled from SMI fixture manifests the way `weft compile`
//! does, so the end-to-end tests run what a user would deploy.

use weft_policy::PluginConfig;
use weft_policy::bundle::{AccessMode, Identity};
use weft_policy::compile::{Options, Side, compile};

/// The SMI manifests in `tests/fixtures/<name>/`, with each `(placeholder, value)` replaced
/// (ports known only at run time).
pub fn fixture(
    name: &str,
    replacements: &[(&str, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    manifests_in(
        &crate::paths::workspace_root()
            .join("tests/fixtures")
            .join(name),
        replacements,
    )
}

/// The user-facing example policy `examples/<name>/`, as the README and the shipped Envoy
/// configurations use it.
pub fn example(name: &str) -> anyhow::Result<Vec<(String, String)>> {
    manifests_in(
        &crate::paths::workspace_root().join("examples").join(name),
        &[],
    )
}

fn manifests_in(
    dir: &std::path::Path,
    replacements: &[(&str, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let mut text = std::fs::read_to_string(&path)?;
        for (placeholder, value) in replacements {
            text = text.replace(placeholder, value);
        }
        files.push((path.display().to_string(), text));
    }
    files.sort();
    Ok(files)
}

/// The inbound plugin configuration of `identity` for `manifests`, in `mode`; fails on any
/// error in the manifests.
pub fn inbound(
    manifests: &[(String, String)],
    identity: &str,
    mode: AccessMode,
) -> anyhow::Result<PluginConfig> {
    let mut config = compiled(manifests, identity, Side::Inbound)?;
    if let Some(access) = config.access.as_mut() {
        access.mode = mode;
    }
    Ok(config)
}

/// The outbound (split routing) plugin configuration of `identity` for `manifests`; fails on
/// any error in the manifests.
pub fn outbound(manifests: &[(String, String)], identity: &str) -> anyhow::Result<PluginConfig> {
    compiled(manifests, identity, Side::Outbound)
}

fn compiled(
    manifests: &[(String, String)],
    identity: &str,
    side: Side,
) -> anyhow::Result<PluginConfig> {
    let (catalog, diagnostics) =
        weft_policy::check(manifests.iter().map(|(f, t)| (f.as_str(), t.as_str())));
    let identity: Identity = identity.parse()?;
    compile(&catalog, &diagnostics, &identity, side, &Options::default())
        .map_err(|err| anyhow::anyhow!("{err}: {diagnostics:#?}"))
}

/// `config` as the JSON text of a plugin configuration.
pub fn json(config: &PluginConfig) -> String {
    serde_json::to_string(config).unwrap_or_default()
}
