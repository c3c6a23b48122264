//! EnvoyPatches applied to one sidecar's generated resources, after everything else
//! ([`mod@apply`]): each resource patch's RFC 6902 operations on the resource's Envoy JSON, the
//! result read back into its typed proto (unknown fields and wrong types refused, as Envoy
//! refuses them), and the guard ([`guard`]): a patch changes only what cannot change who reaches
//! what. A patch that fails is left out for this proxy alone, with a reason naming the patch,
//! the operation and the JSON path; the proxy gets the unpatched resource. What each proxy
//! acknowledged or refused (NACK) of its patches is the [`ledger`]'s, which passes the refused
//! ones back in as withdrawn.

pub mod apply;
pub mod guard;
pub mod ledger;

pub use apply::{PatchCache, apply, disabled};
pub use ledger::{PATCHED_TYPES, PatchLedger};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weft_policy::extension::{EnvoyPatch, ResourcePatch};

/// Why a resource patch was not applied to a proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// No generated resource of that type and name for this proxy.
    #[error("this proxy has no {type_name} named {name:?}; its {type_name}s are {available}")]
    NoTarget {
        /// The type.
        type_name: String,
        /// The name.
        name: String,
        /// The names it has.
        available: String,
    },
    /// An operation that cannot be applied (a path that does not exist, a failed test).
    #[error("operations[{index}] ({op} {path}): {reason}")]
    Operation {
        /// Its index.
        index: usize,
        /// `op`.
        op: String,
        /// `path`.
        path: String,
        /// Why.
        reason: String,
    },
    /// The patched resource is not a valid Envoy resource of its type.
    #[error("operations[{index}] ({op} {path}): the patched {type_name} is not valid: {reason}")]
    Invalid {
        /// The first operation after which it stopped being valid.
        index: usize,
        /// `op`.
        op: String,
        /// `path`.
        path: String,
        /// The type.
        type_name: String,
        /// What the reader says.
        reason: String,
    },
    /// A patch that renames the resource.
    #[error("renames {from:?} to {to:?}; a patch changes a resource, it cannot rename one")]
    Renamed {
        /// The name before.
        from: String,
        /// The name after.
        to: String,
    },
    /// A patch that would change what decides who reaches what.
    #[error("{0}")]
    Guard(guard::Breach),
    /// Envoy refused the configuration with this patch (a NACK).
    #[error("Envoy refused it: {0}")]
    Refused(String),
    /// Patches are off in this controller.
    #[error("patches are off; start the controller with --allow-patches to apply them")]
    Disabled,
}

/// One resource patch of one EnvoyPatch, as it was written: editing it makes a new key, so a
/// patch withdrawn after a NACK is tried again once changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PatchKey {
    /// The EnvoyPatch, `namespace/name`.
    pub patch: String,
    /// Its index in `spec.patches`.
    pub index: usize,
    /// A digest of what it says.
    pub digest: String,
}

/// What became of one resource patch for one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchReport {
    /// Which.
    pub key: PatchKey,
    /// The resource, `Type name`.
    pub resource: String,
    /// The xDS type URL of the resource.
    pub type_url: &'static str,
    /// `None` when applied; why not otherwise.
    pub problem: Option<PatchError>,
}

impl PatchReport {
    /// Whether it is in the proxy's configuration.
    pub fn applied(&self) -> bool {
        self.problem.is_none()
    }
}

pub(crate) fn key(patch: &EnvoyPatch, resource: &ResourcePatch) -> PatchKey {
    let mut hasher = Sha256::new();
    hasher.update(resource.resource_type.name().as_bytes());
    hasher.update([0]);
    hasher.update(resource.name.as_bytes());
    hasher.update([0]);
    hasher.update(
        Value::Array(resource.operations.clone())
            .to_string()
            .as_bytes(),
    );
    PatchKey {
        patch: format!("{}/{}", patch.meta.namespace, patch.meta.name),
        index: resource.position,
        digest: hasher.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;
    use weft_envoy_config::filters::Code;
    use weft_envoy_config::mesh::{InboundPort, OutboundService, Protocol, Sidecar};
    use weft_policy::model::Meta;

    use std::collections::BTreeMap;

    use weft_envoy_config::constraints;
    use weft_envoy_config::mesh::SidecarResources;
    use weft_xds::snapshot::{CLUSTER, ROUTE};

    use weft_policy::extension::PatchedType;

    use super::*;

    fn sidecar() -> SidecarResources {
        sidecar_description().resources()
    }

    fn sidecar_description() -> Sidecar {
        Sidecar {
            pod_ip: Ipv4Addr::new(127, 0, 1, 1),
            app_ip: Ipv4Addr::new(127, 1, 1, 1),
            module: Code::File("/weft.wasm".to_owned()),
            certificate_secret: weft_envoy_config::mesh::WORKLOAD_CERTIFICATE.to_owned(),
            trust_secret: weft_envoy_config::mesh::TRUST_BUNDLE.to_owned(),
            inbound: vec![InboundPort {
                port: 8080,
                protocol: Protocol::Http,
            }],
            services: vec![OutboundService {
                cluster: "checkout.shop".to_owned(),
                hosts: vec!["checkout".to_owned()],
                port: 8080,
                protocol: Protocol::Http,
                identities: vec![],
                traffic: None,
            }],
        }
    }

    fn patch(type_name: &str, name: &str, operations: Value) -> EnvoyPatch {
        EnvoyPatch {
            meta: Meta {
                namespace: "shop".to_owned(),
                name: "p".to_owned(),
                api_version: "policy.weft.io/v1alpha1".to_owned(),
                origin: None,
            },
            selector: BTreeMap::new(),
            patches: vec![ResourcePatch {
                resource_type: PatchedType::named(type_name).unwrap(),
                name: name.to_owned(),
                operations: operations.as_array().cloned().unwrap_or_default(),
                position: 0,
            }],
        }
    }

    fn outcome(patch: &EnvoyPatch) -> (SidecarResources, Option<String>) {
        let mut resources = sidecar();
        let reports = apply(
            &[patch],
            &mut resources,
            &BTreeMap::new(),
            &mut PatchCache::default(),
        );
        (
            resources,
            reports[0].problem.as_ref().map(ToString::to_string),
        )
    }

    #[test]
    fn every_resource_weft_generates_meets_the_constraints_of_its_protos() {
        let (catalog, problems) = weft_policy::check([
            (
                "policy.yaml",
                include_str!("../../../examples/policies/checkout.yaml"),
            ),
            (
                "mesh.yaml",
                include_str!("../../../examples/mesh/services.yaml"),
            ),
            (
                "access.yaml",
                include_str!("../../../examples/mesh/access.yaml"),
            ),
        ]);
        assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
        let service = catalog.service("shop", "checkout").unwrap();
        let traffic = weft_envoy_config::traffic::service_traffic(&catalog, service, 8080);
        assert!(traffic.is_some());
        let mut sidecar = sidecar_description();
        sidecar.services[0].traffic = traffic;
        let resources = sidecar.resources();
        for listener in &resources.listeners {
            constraints::check(listener).unwrap();
        }
        for cluster in &resources.clusters {
            constraints::check(cluster).unwrap();
        }
        for route in &resources.routes {
            constraints::check(route).unwrap();
        }
    }

    #[test]
    fn a_patch_changes_its_resource_and_nothing_else() {
        let header = json!([{"op": "add", "path": "/response_headers_to_add", "value": [
            {"header": {"key": "x-patched", "value": "yes"}}]}]);
        let (resources, problem) = outcome(&patch("RouteConfiguration", "outbound", header));
        assert_eq!(problem, None);
        let original = sidecar();
        assert_eq!(resources.listeners, original.listeners);
        assert_eq!(resources.clusters, original.clusters);
        assert_eq!(resources.routes[0].response_headers_to_add.len(), 1);
        // Through one cache, as the pods of a rebuild share it: the same result each time.
        let mut cache = PatchCache::default();
        for _ in 0..2 {
            let mut again = sidecar();
            let patch = patch(
                "RouteConfiguration",
                "outbound",
                json!([{"op": "add", "path": "/response_headers_to_add", "value": [
                {"header": {"key": "x-patched", "value": "yes"}}]}]),
            );
            let reports = apply(&[&patch], &mut again, &BTreeMap::new(), &mut cache);
            assert!(reports[0].applied());
            assert_eq!(again, resources);
        }
        assert_eq!(cache.results.len(), 1);
    }

    #[test]
    fn a_patch_that_does_not_apply_or_decode_names_the_operation_and_path() {
        let cases = [
            (
                json!([{"op": "replace", "path": "/virtual_hosts/9/name", "value": "x"}]),
                "operations[0] (replace /virtual_hosts/9/name): path is invalid",
            ),
            (
                json!([{"op": "add", "path": "/virtual_hosts/0/no_such_field", "value": 1}]),
                "operations[0] (add /virtual_hosts/0/no_such_field): the patched RouteConfiguration is not valid",
            ),
            (
                json!([{"op": "replace", "path": "/virtual_hosts/0/domains", "value": []}]),
                "operations[0] (replace /virtual_hosts/0/domains): the patched RouteConfiguration is not valid: virtual_hosts[0].domains: needs at least 1 items",
            ),
            (
                json!([{"op": "test", "path": "/name", "value": "inbound"}]),
                "operations[0] (test /name): value did not match",
            ),
            (
                json!([{"op": "replace", "path": "/name", "value": "other"}]),
                "renames \"outbound\" to \"other\"",
            ),
        ];
        for (operations, expected) in cases {
            let (resources, problem) =
                outcome(&patch("RouteConfiguration", "outbound", operations));
            let problem = problem.unwrap_or_default();
            assert!(problem.starts_with(expected), "{problem}");
            assert_eq!(resources, sidecar(), "nothing half-applied");
        }
        let (_, problem) = outcome(&patch(
            "Cluster",
            "nowhere.shop",
            json!([{"op": "remove", "path": "/name"}]),
        ));
        assert_eq!(
            problem.unwrap(),
            "this proxy has no Cluster named \"nowhere.shop\"; its Clusters are inbound:8080, checkout.shop"
        );
    }

    #[test]
    fn no_patch_can_take_the_access_filter_tls_or_path_normalisation_out_of_an_inbound_listener() {
        let chain = "/filter_chains/0";
        let manager = format!("{chain}/filters/0/typed_config");
        let cases = [
            json!([{"op": "remove", "path": format!("{manager}/http_filters/0")}]),
            json!([{"op": "remove", "path": format!("{chain}/transport_socket")}]),
            json!([{"op": "copy", "from": chain, "path": "/default_filter_chain"},
                   {"op": "remove", "path": "/default_filter_chain/transport_socket"}]),
            json!([{"op": "copy", "from": chain, "path": "/filter_chains/-"},
                   {"op": "remove", "path": "/filter_chains/1/filters/0/typed_config/http_filters/0"}]),
            // The filter would judge a path other than the one the application serves.
            json!([{"op": "remove", "path": format!("{manager}/normalize_path")}]),
            json!([{"op": "replace", "path": format!("{manager}/merge_slashes"), "value": false}]),
        ];
        for operations in cases {
            let (resources, problem) =
                outcome(&patch("Listener", "inbound:8080", operations.clone()));
            let problem = problem.unwrap_or_default();
            assert!(
                problem.contains("which decides who reaches what"),
                "{operations}: {problem}"
            );
            assert_eq!(resources, sidecar());
        }
        // What does not touch the guard is allowed, such as handing the application the
        // caller's certificate details (weft's filter reads the connection, not the header).
        for operations in [
            json!([{"op": "add", "path": "/per_connection_buffer_limit_bytes", "value": 65536}]),
            json!([{"op": "add", "path": format!("{manager}/forward_client_cert_details"),
                    "value": "SANITIZE_SET"},
                   {"op": "add", "path": format!("{manager}/set_current_client_cert_details"),
                    "value": {"uri": true}}]),
        ] {
            let (_, problem) = outcome(&patch("Listener", "inbound:8080", operations.clone()));
            assert_eq!(problem, None, "{operations}");
        }
    }

    #[test]
    fn a_nack_withdraws_the_patches_new_in_the_refused_version_for_that_proxy_only() {
        let good = patch(
            "RouteConfiguration",
            "outbound",
            json!([{"op": "add", "path": "/validate_clusters", "value": false}]),
        );
        let mut bad = patch(
            "RouteConfiguration",
            "outbound",
            // Safe by the guard; Envoy refuses to add a pseudo-header.
            json!([{"op": "add", "path": "/virtual_hosts/0/request_headers_to_add",
                    "value": [{"header": {"key": ":path", "value": "/x"}}]}]),
        );
        bad.meta.name = "q".to_owned();
        let mut ledger = PatchLedger::default();
        let build =
            |ledger: &mut PatchLedger, node: &str, patches: &[&EnvoyPatch], version: &str| {
                let mut resources = sidecar();
                let none = BTreeMap::new();
                let withdrawn = ledger.withdrawn.get(node).unwrap_or(&none);
                let reports = apply(
                    patches,
                    &mut resources,
                    withdrawn,
                    &mut PatchCache::default(),
                );
                ledger.built(node, |t| format!("{t}-{version}"), reports);
            };
        build(&mut ledger, "shop/a", &[&good], "1");
        ledger.acked("shop/a", ROUTE, &format!("{ROUTE}-1"));
        build(&mut ledger, "shop/a", &[&good, &bad], "2");
        build(&mut ledger, "shop/b", &[&good, &bad], "2");
        let withdrawn = ledger.nacked("shop/a", ROUTE, &format!("{ROUTE}-2"), "duplicate domain");
        assert_eq!(
            withdrawn
                .iter()
                .map(|k| k.patch.as_str())
                .collect::<Vec<_>>(),
            ["shop/q"]
        );
        build(&mut ledger, "shop/a", &[&good, &bad], "3");
        let reports = &ledger.reports["shop/a"];
        assert!(reports[0].applied());
        assert_eq!(
            reports[1].problem,
            Some(PatchError::Refused("duplicate domain".to_owned()))
        );
        assert!(
            ledger.reports["shop/b"].iter().all(PatchReport::applied),
            "another proxy keeps it"
        );
        // A NACK of a version without patches, or of another type, withdraws nothing.
        assert!(
            ledger
                .nacked("shop/a", CLUSTER, &format!("{CLUSTER}-3"), "x")
                .is_empty()
        );
        // The patch removed: its withdrawal goes with it.
        build(&mut ledger, "shop/a", &[&good], "4");
        assert!(ledger.withdrawn["shop/a"].is_empty());
        // No patch left for the proxy: nothing is kept of it, and a late refusal of a patched
        // version withdraws nothing.
        build(&mut ledger, "shop/a", &[], "5");
        assert!(!ledger.reports.contains_key("shop/a"));
        assert!(!ledger.withdrawn.contains_key("shop/a"));
        assert!(
            ledger
                .nacked("shop/a", ROUTE, &format!("{ROUTE}-4"), "x")
                .is_empty()
        );
    }

    #[test]
    fn a_withdrawn_patch_is_left_out_and_an_edit_makes_it_new() {
        let first = patch(
            "RouteConfiguration",
            "outbound",
            json!([{"op": "add", "path": "/validate_clusters", "value": false}]),
        );
        let mut resources = sidecar();
        let key = apply(
            &[&first],
            &mut resources,
            &BTreeMap::new(),
            &mut PatchCache::default(),
        )[0]
        .key
        .clone();
        let withdrawn = BTreeMap::from([(key.clone(), PatchError::Refused("no".to_owned()))]);
        let mut resources = sidecar();
        let reports = apply(
            &[&first],
            &mut resources,
            &withdrawn,
            &mut PatchCache::default(),
        );
        assert_eq!(
            reports[0].problem,
            Some(PatchError::Refused("no".to_owned()))
        );
        assert_eq!(resources, sidecar());
        let edited = patch(
            "RouteConfiguration",
            "outbound",
            json!([{"op": "add", "path": "/validate_clusters", "value": true}]),
        );
        let reports = apply(
            &[&edited],
            &mut resources,
            &withdrawn,
            &mut PatchCache::default(),
        );
        assert_ne!(reports[0].key, key);
        assert!(reports[0].applied());
    }

    #[test]
    fn the_envoy_type_names_a_patch_may_give_are_those_of_the_protos_weft_builds() {
        use prost::Name as _;
        use weft_envoy_config::pb::envoy::config::cluster::v3::Cluster;
        use weft_envoy_config::pb::envoy::config::listener::v3::Listener;
        use weft_envoy_config::pb::envoy::config::route::v3::RouteConfiguration;
        let protos = [
            Listener::full_name(),
            Cluster::full_name(),
            RouteConfiguration::full_name(),
        ];
        for (kind, proto) in PatchedType::ALL.into_iter().zip(protos) {
            assert_eq!(kind.envoy_type(), proto);
            assert_eq!(
                apply::type_url(kind),
                format!("type.googleapis.com/{proto}")
            );
            assert_eq!(PatchedType::named(apply::type_url(kind)), Some(kind));
        }
    }
}
