//! Who may open an xDS stream, and what the controller notes of each stream: the checks of a
//! stream's first request that need only the request and the client certificate ([`claim`],
//! [`described`]), the [`Gate`] that adds what needs the controller's state (which pods it knows,
//! how many a workload may have, [`crate::registry`]), and the one error type every refusal is,
//! turned into a gRPC status in one place (`From<AdmissionError> for tonic::Status`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use weft_envoy_config::mesh::{MetadataError, PodMetadata};
use weft_envoy_config::pb::envoy::config::core::v3::Node;
use weft_xds::protocol::{Event, TypeStatus};
use weft_xds::server::Admission;
use weft_xds::snapshot::{LISTENER, SECRET, short_name};

use crate::mesh::Pod;
use crate::shared::{Shared, lock};
use crate::trust::Phase;

/// Why a stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The connection carried no client certificate.
    #[error("a sidecar connects with its bootstrap certificate (mTLS)")]
    NoCertificate,
    /// The client certificate could not be read.
    #[error("{0}")]
    Certificate(String),
    /// The node id is not `namespace/pod`.
    #[error("node id {0:?} is not namespace/pod")]
    NodeId(String),
    /// The node cluster is not `namespace/serviceaccount`.
    #[error("node cluster {0:?} is not namespace/serviceaccount")]
    NodeCluster(String),
    /// The certificate is another identity's.
    #[error("node {node} claims {claimed}, but its certificate is for {presented}")]
    NotItsIdentity {
        /// The node id.
        node: String,
        /// The SPIFFE ID the node claims.
        claimed: String,
        /// The SPIFFE IDs of its certificate.
        presented: String,
    },
    /// The pod is known to run as another ServiceAccount.
    #[error("pod {pod} runs as {runs_as}, not {claimed}")]
    RunsAs {
        /// The pod.
        pod: String,
        /// Its ServiceAccount.
        runs_as: String,
        /// The one the node claims.
        claimed: String,
    },
    /// An unknown pod whose metadata does not describe it.
    #[error("node {node} is not a pod weft knows, and {problem}")]
    Metadata {
        /// The node id.
        node: String,
        /// What is wrong with its metadata.
        problem: MetadataError,
    },
    /// A pod the controller may not register (its workload, network, address or count).
    #[error("{0}")]
    Refused(String),
}

impl From<AdmissionError> for tonic::Status {
    fn from(error: AdmissionError) -> Self {
        let code = match &error {
            AdmissionError::NoCertificate | AdmissionError::Certificate(_) => {
                tonic::Code::Unauthenticated
            }
            AdmissionError::NodeId(_)
            | AdmissionError::NodeCluster(_)
            | AdmissionError::Metadata { .. } => tonic::Code::InvalidArgument,
            AdmissionError::NotItsIdentity { .. }
            | AdmissionError::RunsAs { .. }
            | AdmissionError::Refused(_) => tonic::Code::PermissionDenied,
        };
        tonic::Status::new(code, error.to_string())
    }
}

/// Who a node says it is, proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim<'n> {
    /// The pod's namespace.
    pub namespace: &'n str,
    /// The pod's name.
    pub pod: &'n str,
    /// The ServiceAccount it runs as.
    pub service_account: &'n str,
    /// The SPIFFE ID of that ServiceAccount, which its certificate holds.
    pub spiffe_id: String,
}

/// Who `node` says it is (`id` = `namespace/pod`, `cluster` = `namespace/serviceaccount`),
/// when the client certificate `peer` (DER, leaf first) holds that identity in `trust_domain`.
///
/// # Errors
/// When there is no certificate, the node's names are not of that form, or the certificate is
/// another identity's.
pub fn claim<'n>(
    node: &'n Node,
    peer: Option<&[Vec<u8>]>,
    trust_domain: &str,
) -> Result<Claim<'n>, AdmissionError> {
    let leaf = peer
        .and_then(<[Vec<u8>]>::first)
        .ok_or(AdmissionError::NoCertificate)?;
    let (uris, _) =
        weft_certs::inspect(leaf).map_err(|err| AdmissionError::Certificate(err.to_string()))?;
    let (namespace, pod) = node
        .id
        .split_once('/')
        .ok_or_else(|| AdmissionError::NodeId(node.id.clone()))?;
    let (_, service_account) = node
        .cluster
        .split_once('/')
        .ok_or_else(|| AdmissionError::NodeCluster(node.cluster.clone()))?;
    let spiffe_id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
    if !uris.contains(&spiffe_id) {
        return Err(AdmissionError::NotItsIdentity {
            node: node.id.clone(),
            claimed: spiffe_id,
            presented: uris.join(", "),
        });
    }
    Ok(Claim {
        namespace,
        pod,
        service_account,
        spiffe_id,
    })
}

/// What the node of a pod the controller does not know says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Its workload, by name.
    pub workload: String,
    /// Its address.
    pub pod_ip: Ipv4Addr,
    /// Its application's address.
    pub app_ip: Ipv4Addr,
    /// The module it names, if any.
    pub module: Option<String>,
}

/// The metadata of an unknown pod's node: its workload and both addresses must be there.
///
/// # Errors
/// When the metadata does not describe a pod.
pub fn described(node: &Node) -> Result<Described, AdmissionError> {
    let refused = |problem| AdmissionError::Metadata {
        node: node.id.clone(),
        problem,
    };
    let metadata = PodMetadata::read(node).map_err(refused)?;
    let pod_ip = metadata
        .pod_ip
        .ok_or_else(|| refused(MetadataError::Missing(PodMetadata::POD_IP)))?;
    let app_ip = metadata
        .app_ip
        .ok_or_else(|| refused(MetadataError::Missing(PodMetadata::APP_IP)))?;
    Ok(Described {
        workload: metadata.workload,
        pod_ip,
        app_ip,
        module: metadata.module,
    })
}

/// The controller's admission and bookkeeping of each ADS stream.
pub struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    /// The admission of a controller that shares `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn admit_node(&self, node: &Node, peer: Option<&[Vec<u8>]>) -> Result<String, AdmissionError> {
        // From the options, not the PKI: its lock is held through a whole rebuild.
        let claim = claim(node, peer, &self.shared.options.trust_domain)?;
        let known = lock(&self.shared.registry).pod(&node.id).cloned();
        match known {
            Some(pod) if pod.service_account == claim.service_account => {
                let registered = lock(&self.shared.registry).is_registered(&node.id);
                if registered {
                    // Its sidecar may come back with new addresses (a restart elsewhere).
                    let current = self.remote_pod(node, &claim)?;
                    let mut registry = lock(&self.shared.registry);
                    registry.stream_opened(&node.id);
                    if current != pod {
                        registry.insert_registered(current);
                        drop(registry);
                        self.shared.mark_changed();
                    }
                }
            }
            Some(pod) => {
                return Err(AdmissionError::RunsAs {
                    pod: node.id.clone(),
                    runs_as: pod.service_account,
                    claimed: claim.service_account.to_owned(),
                });
            }
            None => {
                let pod = self.remote_pod(node, &claim)?;
                let mut registry = lock(&self.shared.registry);
                registry.stream_opened(&node.id);
                registry.insert_registered(pod);
                drop(registry);
                self.shared.mark_changed();
            }
        }
        self.shared.status.connected(&node.id, &claim.spiffe_id);
        Ok(node.id.clone())
    }

    /// A sidecar started by `weft sidecar` describes its pod in its node metadata; it must name
    /// a workload of the index that runs as the identity it proved, be named as that
    /// workload's pods are, fit in its number of pods, sit in a pod network the operator
    /// allows at an address no other pod has, and name a module the controller serves.
    fn remote_pod(&self, node: &Node, claim: &Claim<'_>) -> Result<Pod, AdmissionError> {
        let metadata = described(node)?;
        let pod = Pod {
            namespace: claim.namespace.to_owned(),
            name: claim.pod.to_owned(),
            workload: metadata.workload,
            service_account: claim.service_account.to_owned(),
            labels: BTreeMap::new(),
            pod_ip: metadata.pod_ip,
            app_ip: metadata.app_ip,
            ports: Vec::new(),
            module: metadata.module,
        }
        .of_workload(&self.shared.catalog())
        .map_err(AdmissionError::Refused)?;
        self.shared
            .may_register(&pod)
            .map_err(AdmissionError::Refused)?;
        Ok(pod)
    }
}

impl Admission for Gate {
    fn admit(&self, node: &Node, peer: Option<&[Vec<u8>]>) -> Result<String, tonic::Status> {
        self.admit_node(node, peer).map_err(|refused| {
            log::warn!(
                "weft: refused an xDS connection from {}: {refused}",
                node.id
            );
            tonic::Status::from(refused)
        })
    }

    fn on_event(&self, key: &str, event: &Event) {
        match event {
            Event::Ack { type_url, version } => {
                self.shared.status.acked(key, short_name(type_url), version);
                lock(&self.shared.patches).acked(key, type_url, version);
                // (The ledger's lock is let go before the PKI's is taken: a rebuild takes them
                // the other way round.)
                let holds_anew = type_url == SECRET && lock(&self.shared.trust).acked(key, version);
                if holds_anew && *self.shared.pki().phase() != Phase::Steady {
                    // A rotation may take its next step.
                    self.shared.mark_changed();
                }
                if type_url == LISTENER && lock(&self.shared.registry).set_ready(key) {
                    log::info!("weft: {key} is ready");
                    self.shared.mark_changed();
                }
            }
            Event::Nack {
                type_url,
                version,
                error,
            } => {
                log::warn!(
                    "weft: proxy {key} refused {} version {version}: {error}",
                    short_name(type_url)
                );
                self.shared
                    .status
                    .nacked(key, short_name(type_url), version, error);
                self.shared.metrics.nacked(short_name(type_url));
                let withdrawn = lock(&self.shared.patches).nacked(key, type_url, version, error);
                if !withdrawn.is_empty() {
                    for patch in &withdrawn {
                        log::warn!(
                            "weft: EnvoyPatch {} spec.patches[{}] withdrawn for {key}, which refused it; it gets the unpatched configuration",
                            patch.patch,
                            patch.index
                        );
                    }
                    self.shared.metrics.reconcile_error("patch");
                    self.shared.mark_changed();
                }
            }
            Event::InSync => self.shared.metrics.in_sync(key, std::time::Instant::now()),
            Event::StaleNonce { .. } => {}
            Event::Missing {
                type_url,
                names,
                count,
            } => {
                if let Some(covered) = self.shared.status.refused(key, names, *count) {
                    log::warn!(
                        "weft: proxy {key} asked for {covered} {} resource(s) it is not given (logged at most once a minute), such as {}",
                        short_name(type_url),
                        names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
            Event::TooManyNames { type_url, count } => {
                if self.shared.status.refused(key, &[], *count).is_some() {
                    log::warn!(
                        "weft: proxy {key} named {count} {} resources in one request, more than {}; its stream is ended (logged at most once a minute)",
                        short_name(type_url),
                        weft_xds::protocol::MAX_RESOURCE_NAMES
                    );
                }
            }
        }
    }

    fn on_disconnect(&self, key: &str, _status: &[TypeStatus]) {
        // A sidecar that lost the controller keeps serving what it has: it stays ready (a pod
        // its sidecar registered, until it is forgotten).
        self.shared.status.disconnected(key);
        self.shared.metrics.forget(key);
        self.shared.stream_closed(key);
    }

    fn on_push(&self, _key: &str, type_url: &str, _version: &str) {
        self.shared.metrics.pushed(short_name(type_url));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cluster: &str, metadata: &PodMetadata) -> Node {
        weft_envoy_config::mesh::described_node(id, cluster, metadata)
    }

    fn certificate(identity: &str) -> Vec<Vec<u8>> {
        let ca = weft_certs::MeshCa::generate(
            "cluster.local",
            weft_certs::Validity::starting_now(std::time::Duration::from_secs(3600)),
        )
        .unwrap();
        let issued = ca
            .issue(
                &identity.parse().unwrap(),
                weft_certs::Validity::starting_now(std::time::Duration::from_secs(3600)),
            )
            .unwrap();
        vec![weft_certs::first_certificate_der(&issued.cert_pem).unwrap()]
    }

    #[test]
    fn a_node_is_admitted_as_the_identity_its_certificate_holds() {
        let node = node("shop/checkout-0", "shop/checkout", &PodMetadata::default());
        let peer = certificate("shop/checkout");
        let claim = claim(&node, Some(&peer), "cluster.local").unwrap();
        assert_eq!(
            (claim.namespace, claim.pod, claim.service_account),
            ("shop", "checkout-0", "checkout")
        );
        assert_eq!(
            claim.spiffe_id,
            "spiffe://cluster.local/ns/shop/sa/checkout"
        );
    }

    #[test]
    fn each_refusal_is_its_own_error_with_the_status_code_it_maps_to() {
        let good = node("shop/checkout-0", "shop/checkout", &PodMetadata::default());
        let no_namespace = node("checkout-0", "shop/checkout", &PodMetadata::default());
        let no_account = node("shop/checkout-0", "checkout", &PodMetadata::default());
        let peer = certificate("shop/frontend");
        let cases = [
            (
                claim(&good, None, "cluster.local"),
                tonic::Code::Unauthenticated,
                "bootstrap certificate",
            ),
            (
                claim(&good, Some(&[vec![1, 2, 3]]), "cluster.local"),
                tonic::Code::Unauthenticated,
                "",
            ),
            (
                claim(&no_namespace, Some(&peer), "cluster.local"),
                tonic::Code::InvalidArgument,
                "is not namespace/pod",
            ),
            (
                claim(&no_account, Some(&peer), "cluster.local"),
                tonic::Code::InvalidArgument,
                "is not namespace/serviceaccount",
            ),
            (
                claim(&good, Some(&peer), "cluster.local"),
                tonic::Code::PermissionDenied,
                "its certificate is for spiffe://cluster.local/ns/shop/sa/frontend",
            ),
        ];
        for (result, code, message) in cases {
            let status = tonic::Status::from(result.unwrap_err());
            assert_eq!(status.code(), code, "{status}");
            assert!(status.message().contains(message), "{status}");
        }
    }

    #[test]
    fn an_unknown_pod_must_describe_its_workload_and_addresses() {
        let full = PodMetadata {
            workload: "checkout".to_owned(),
            pod_ip: Some("127.0.0.2".parse().unwrap()),
            app_ip: Some("127.0.0.3".parse().unwrap()),
            module: None,
        };
        assert_eq!(
            described(&node("shop/checkout-0", "shop/checkout", &full)).unwrap(),
            Described {
                workload: "checkout".to_owned(),
                pod_ip: "127.0.0.2".parse().unwrap(),
                app_ip: "127.0.0.3".parse().unwrap(),
                module: None,
            }
        );
        let no_app = PodMetadata {
            app_ip: None,
            ..full.clone()
        };
        let refused = described(&node("shop/checkout-0", "shop/checkout", &no_app)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "node shop/checkout-0 is not a pod weft knows, and its metadata has no app_ip"
        );
        let mut garbled = node("shop/checkout-0", "shop/checkout", &full);
        if let Some(metadata) = garbled.metadata.as_mut() {
            metadata.fields.insert(
                PodMetadata::POD_IP.to_owned(),
                weft_envoy_config::pb::google::protobuf::Value {
                    kind: Some(
                        weft_envoy_config::pb::google::protobuf::value::Kind::StringValue(
                            "10.0.0.300".to_owned(),
                        ),
                    ),
                },
            );
        }
        let status = tonic::Status::from(described(&garbled).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("its metadata pod_ip is not an IPv4 address: \"10.0.0.300\""),
            "{status}"
        );
    }
}
