//! A raw ADS client: what a sidecar says to the controller, written by hand, for tests of what
//! the controller makes of a proxy that does not behave like Envoy (too many names, another
//! workload's pods, a certificate of another CA).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use weft_certs::{MeshCa, Validity};
use weft_envoy_config::mesh::PodMetadata;
use weft_envoy_config::pb::envoy::config::core::v3::Node;
use weft_envoy_config::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_envoy_config::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

/// A certificate and key, and the roots the controller is checked against.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Key, PEM.
    pub key_pem: String,
    /// The roots the client trusts the controller by, PEM.
    pub ca_pem: String,
}

impl Credential {
    /// A credential for `identity` (`namespace/serviceaccount`) from the CA whose files are in
    /// `ca_dir` (`ca.pem`, `ca-key.pem`), trusting that CA.
    ///
    /// # Errors
    /// When the CA cannot be read or the certificate issued.
    pub fn issue(ca_dir: &Path, identity: &str) -> anyhow::Result<Self> {
        let ca_pem = std::fs::read_to_string(ca_dir.join(weft_certs::CA_CERT_FILE))?;
        let key_pem = std::fs::read_to_string(ca_dir.join(weft_certs::CA_KEY_FILE))?;
        let ca = MeshCa::from_pem(&ca_pem, &key_pem, "cluster.local")?;
        let issued = ca.issue(
            &identity.parse()?,
            Validity::starting_now(Duration::from_secs(3600)),
        )?;
        Ok(Self {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            ca_pem,
        })
    }
}

/// A node describing its pod as `weft sidecar` does, or as anyone could: `id`
/// (`namespace/pod`), `cluster` (`namespace/serviceaccount`) and the metadata strings given
/// (keys from [`weft_envoy_config::mesh::PodMetadata`]), whatever they hold.
pub fn node(id: &str, cluster: &str, metadata: &[(&str, &str)]) -> Node {
    use weft_envoy_config::pb::google::protobuf::{Struct, Value, value};
    let mut node = weft_envoy_config::mesh::described_node(id, cluster, &PodMetadata::default());
    node.metadata = Some(Struct {
        fields: metadata
            .iter()
            .map(|(key, text)| {
                (
                    (*key).to_owned(),
                    Value {
                        kind: Some(value::Kind::StringValue((*text).to_owned())),
                    },
                )
            })
            .collect(),
    });
    node
}

/// A first request for `type_url` naming `names`, from `node`.
pub fn first_request(node: &Node, type_url: &str, names: &[String]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node.clone()),
        type_url: type_url.to_owned(),
        resource_names: names.to_vec(),
        ..DiscoveryRequest::default()
    }
}

/// An open ADS stream: requests go in, responses come out.
pub struct AdsStream {
    /// Requests to send.
    pub requests: mpsc::UnboundedSender<DiscoveryRequest>,
    /// What the controller answers.
    pub responses: tonic::Streaming<DiscoveryResponse>,
}

/// Opens an ADS stream to the controller at `xds` with `credential` and sends `first`.
///
/// # Errors
/// When the connection cannot be made (TLS refused, among others) or the stream is refused at
/// once.
pub async fn open(
    xds: SocketAddr,
    credential: &Credential,
    first: DiscoveryRequest,
) -> anyhow::Result<AdsStream> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(tonic::transport::Certificate::from_pem(&credential.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &credential.cert_pem,
            &credential.key_pem,
        ));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{xds}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let (requests, receiver) = mpsc::unbounded_channel();
    requests.send(first)?;
    let responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(
            receiver,
        ))
        .await?
        .into_inner();
    Ok(AdsStream {
        requests,
        responses,
    })
}

impl AdsStream {
    /// The next response, or the status the stream ended with; within `within`.
    ///
    /// # Errors
    /// The stream's status, or a deadline exceeded when nothing comes.
    pub async fn next(&mut self, within: Duration) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(within, self.responses.message()).await {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(tonic::Status::cancelled("the stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
        }
    }
}

/// What the controller at `xds` answers first to a stream from `node` with `credential`
/// asking for `type_url`: a response, or why it refused (a connection refused at TLS is an
/// `UNAVAILABLE` status naming the error).
pub async fn first_answer(
    xds: SocketAddr,
    credential: &Credential,
    node: &Node,
    type_url: &str,
) -> Result<DiscoveryResponse, tonic::Status> {
    let mut stream = open(xds, credential, first_request(node, type_url, &[]))
        .await
        .map_err(|err| tonic::Status::unavailable(format!("{err:#}")))?;
    stream.next(Duration::from_secs(10)).await
}
