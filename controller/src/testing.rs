//! Builders for the controller's unit tests: a mesh written object by object (its manifests
//! checked as `weft check` checks them), its pods, and a view of both.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_policy::catalog::Catalog;

use crate::mesh::{MeshView, Pod};
use crate::patch::{PatchError, PatchKey};

/// A mesh's manifests, written one object at a time.
#[derive(Debug, Default, Clone)]
pub struct MeshBuilder {
    documents: Vec<String>,
}

impl MeshBuilder {
    /// A Deployment `namespace/name` of `replicas`, running as `service_account`, labelled
    /// `app: <name>` (and `version` when given), listening on `ports`.
    pub fn deployment(
        mut self,
        namespace: &str,
        name: &str,
        service_account: &str,
        version: Option<&str>,
        ports: &[u16],
    ) -> Self {
        let app = name.split('-').next().unwrap_or(name);
        let version = version
            .map(|v| format!(", version: {v}"))
            .unwrap_or_default();
        let ports: Vec<String> = ports
            .iter()
            .map(|port| format!("{{containerPort: {port}}}"))
            .collect();
        self.documents.push(format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  replicas: 2\n  template:\n    metadata: {{labels: {{app: {app}{version}}}}}\n    spec:\n      serviceAccountName: {service_account}\n      containers: [{{command: [x], ports: [{}]}}]\n",
            ports.join(", ")
        ));
        self
    }

    /// A Service `namespace/name` selecting `app` (and `version`), with `ports` as
    /// `(port, appProtocol)`.
    pub fn service(
        mut self,
        namespace: &str,
        name: &str,
        app: &str,
        version: Option<&str>,
        ports: &[(u16, &str)],
    ) -> Self {
        let version = version
            .map(|v| format!(", version: {v}"))
            .unwrap_or_default();
        let ports: Vec<String> = ports
            .iter()
            .map(|(port, protocol)| format!("{{port: {port}, appProtocol: {protocol}}}"))
            .collect();
        self.documents.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{app: {app}{version}}}\n  ports: [{}]\n",
            ports.join(", ")
        ));
        self
    }

    /// An HTTPRouteGroup `namespace/name` with one match `all` of `path_regex`, and a
    /// TrafficTarget of the same name from `source` to `destination` (ServiceAccounts of
    /// `namespace`) naming it.
    pub fn allow(mut self, namespace: &str, name: &str, source: &str, destination: &str) -> Self {
        self.documents.push(format!(
            "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  matches: [{{name: all, pathRegex: /.*}}]\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  destination: {{kind: ServiceAccount, name: {destination}, namespace: {namespace}}}\n  sources: [{{kind: ServiceAccount, name: {source}, namespace: {namespace}}}]\n  rules: [{{kind: HTTPRouteGroup, name: {name}}}]\n"
        ));
        self
    }

    /// A TrafficSplit `namespace/name` of `root` among `backends` (Service, weight).
    pub fn split(
        mut self,
        namespace: &str,
        name: &str,
        root: &str,
        backends: &[(&str, u32)],
    ) -> Self {
        let backends: Vec<String> = backends
            .iter()
            .map(|(service, weight)| format!("{{service: {service}, weight: {weight}}}"))
            .collect();
        self.documents.push(format!(
            "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  service: {root}\n  backends: [{}]\n",
            backends.join(", ")
        ));
        self
    }

    /// The manifests, one YAML stream.
    pub fn yaml(&self) -> String {
        self.documents.join("---\n")
    }

    /// The catalog, checked; panics on an error, naming it.
    pub fn catalog(&self) -> Catalog {
        let yaml = self.yaml();
        let (catalog, problems) = weft_policy::check([("mesh.yaml", yaml.as_str())]);
        assert!(
            !problems
                .iter()
                .any(weft_policy::diagnostic::Diagnostic::is_error),
            "{problems:#?}\n{yaml}"
        );
        catalog
    }
}

/// Pod `n` of workload `namespace/workload`, as `catalog` has the workload (its
/// ServiceAccount, labels and ports), at `10.<k>.0.<n+1>`, its application at `10.<k+100>.0.<n+1>`.
pub fn pod(catalog: &Catalog, namespace: &str, workload: &str, k: u8, n: u8) -> Pod {
    let service_account = catalog
        .workloads
        .iter()
        .find(|w| w.meta.namespace == namespace && w.meta.name == workload)
        .map(|w| w.service_account.clone())
        .unwrap_or_default();
    Pod {
        namespace: namespace.to_owned(),
        name: format!("{workload}-{n}"),
        workload: workload.to_owned(),
        service_account,
        labels: BTreeMap::new(),
        pod_ip: Ipv4Addr::new(10, k, 0, n + 1),
        app_ip: Ipv4Addr::new(10, k + 100, 0, n + 1),
        ports: Vec::new(),
        module: None,
    }
    .of_workload(catalog)
    .unwrap()
}

/// What a view borrows besides the catalog and the pods.
#[derive(Debug, Default)]
pub struct ViewParts {
    pub nodes: Vec<String>,
    pub ready: BTreeSet<String>,
    pub withdrawn: BTreeMap<String, BTreeMap<PatchKey, PatchError>>,
}

impl ViewParts {
    /// The pods of `pods` whose node id `ready` accepts ready.
    pub fn new(pods: &[Pod], ready: impl Fn(&str) -> bool) -> Self {
        let nodes: Vec<String> = pods.iter().map(Pod::node_id).collect();
        Self {
            ready: nodes.iter().filter(|node| ready(node)).cloned().collect(),
            nodes,
            ..Self::default()
        }
    }

    /// Every pod of `pods` ready.
    pub fn all_ready(pods: &[Pod]) -> Self {
        Self::new(pods, |_| true)
    }

    /// The view of `catalog` and `pods`.
    pub fn view<'a>(&'a self, catalog: &'a Catalog, pods: &'a [Pod]) -> MeshView<'a> {
        MeshView {
            catalog,
            pods,
            nodes: &self.nodes,
            ready: &self.ready,
            trust_domain: "cluster.local",
            bundle: "bundle",
            module: "/weft.wasm",
            allow_patches: false,
            withdrawn: &self.withdrawn,
        }
    }
}
