//! EnvoyPatches an attacker with `--allow-patches` tries on examples/mesh: the security
//! review's, and at least two against each invariant of the patch guard
//! (`weft_controller::guard`), each with the invariant the guard must name when it refuses it;
//! and the requests whose answers must not change whatever patch the guard lets through: the
//! denied ones (a path no rule allows, a caller no TrafficTarget names, a hidden path, an
//! upgrade, a TCP connection), and the allowed ones, which must reach the workload they name
//! with the path they name.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_controller::patch::guard::Invariant;

use crate::client::{Reply, request};
use crate::mesh::TestMesh;

/// The pods of examples/mesh the attacks and probes use.
pub const FRONTEND: &str = "shop/frontend-0";
/// Checkout, version 1.
pub const CHECKOUT_V1: &str = "shop/checkout-v1-0";
/// Checkout, version 2 (the same identity as version 1).
pub const CHECKOUT_V2: &str = "shop/checkout-v2-0";
/// The database (TCP).
pub const DB: &str = "shop/db-0";
/// A workload no TrafficTarget lets in anywhere.
pub const ANALYTICS: &str = "shop/analytics-0";

/// The labels that select each pod's workload.
pub fn selector(pod: &str) -> Value {
    match pod {
        CHECKOUT_V1 => json!({"app": "checkout", "version": "v1"}),
        CHECKOUT_V2 => json!({"app": "checkout", "version": "v2"}),
        DB => json!({"app": "db"}),
        FRONTEND => json!({"app": "frontend"}),
        _ => json!({"app": "analytics"}),
    }
}

/// One patch an attacker tries.
#[derive(Debug, Clone)]
pub struct Attack {
    /// Its name (the EnvoyPatch's: `attack-<name>`).
    pub name: &'static str,
    /// The pod whose workload it selects.
    pub pod: &'static str,
    /// `Listener`, `Cluster` or `RouteConfiguration`.
    pub type_name: &'static str,
    /// The generated resource's name.
    pub resource: &'static str,
    /// The RFC 6902 operations.
    pub operations: Value,
    /// What the guard must say it would break.
    pub invariant: Invariant,
}

/// The inbound HTTP connection manager of checkout's listener, as a JSON pointer.
const MANAGER: &str = "/filter_chains/0/filters/0/typed_config";
/// Its inline routes' only virtual host.
const APP_HOST: &str = "/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0";
/// Its only route.
const APP_ROUTE: &str =
    "/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes/0";

fn attack(
    name: &'static str,
    pod: &'static str,
    (type_name, resource): (&'static str, &'static str),
    operations: Value,
    invariant: Invariant,
) -> Attack {
    Attack {
        name,
        pod,
        type_name,
        resource,
        operations,
        invariant,
    }
}

/// Every attack; `elsewhere` is the address of another workload's application (where the
/// attacker would send checkout's traffic).
pub fn attacks(elsewhere: Ipv4Addr) -> Vec<Attack> {
    let inbound = ("Listener", "inbound:8080");
    let app = ("Cluster", "inbound:8080");
    let routes = ("RouteConfiguration", "outbound");
    let checkout_v1 = ("Cluster", "checkout-v1.shop");
    let outbound = ("Listener", "outbound");
    let disabled = json!({"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true});
    let router = json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
    let endpoint =
        "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/address";
    vec![
        // The review's: weft's filter disabled for the inline routes' virtual host.
        attack(
            "per-filter-disabled",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": format!("{APP_HOST}/typed_per_filter_config"),
             "value": {"weft.inbound:8080": disabled}}]),
            Invariant::Filters,
        ),
        // The review's: a WebSocket upgrade that runs the router alone.
        attack(
            "upgrade-router-only",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": format!("{MANAGER}/upgrade_configs"),
             "value": [{"upgrade_type": "websocket", "filters": [router]}]}]),
            Invariant::Filters,
        ),
        attack(
            "filter-removed",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "remove", "path": format!("{MANAGER}/http_filters/0")}]),
            Invariant::Filters,
        ),
        attack(
            "per-route-disabled",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": format!("{APP_ROUTE}/typed_per_filter_config"),
             "value": {"weft.inbound:8080": disabled}}]),
            Invariant::Filters,
        ),
        attack(
            "tcp-filter-removed",
            DB,
            ("Listener", "inbound:5432"),
            json!([
            {"op": "remove", "path": "/filter_chains/0/filters/0"}]),
            Invariant::Filters,
        ),
        // The review's: the path judged is not the path served.
        attack(
            "prefix-rewrite",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": format!("{APP_ROUTE}/route/prefix_rewrite"), "value": "/admin/"}]),
            Invariant::Paths,
        ),
        attack(
            "regex-rewrite",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": format!("{APP_ROUTE}/route/regex_rewrite"),
             "value": {"pattern": {"regex": "^/cart"}, "substitution": "/admin"}}]),
            Invariant::Paths,
        ),
        attack(
            "slashes-kept",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "replace", "path": format!("{MANAGER}/merge_slashes"), "value": false}]),
            Invariant::Paths,
        ),
        attack(
            "header-after-judging",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": format!("{APP_ROUTE}/request_headers_to_add"),
             "value": [{"header": {"key": "x-role", "value": "admin"}}]}]),
            Invariant::Paths,
        ),
        // Checkout's sidecar forwarding what it judged to another workload, as checkout.
        attack(
            "confused-deputy",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "replace", "path": format!("{APP_ROUTE}/route/cluster"), "value": "checkout-v2.shop"}]),
            Invariant::Destinations,
        ),
        attack(
            "route-elsewhere",
            FRONTEND,
            routes,
            json!([
            {"op": "test", "path": "/virtual_hosts/1/name", "value": "checkout-v1.shop"},
            {"op": "replace", "path": "/virtual_hosts/1/routes/1/route/cluster", "value": "checkout-v2.shop"}]),
            Invariant::Destinations,
        ),
        attack(
            "cluster-chosen-by-caller",
            FRONTEND,
            outbound,
            json!([
            {"op": "remove", "path": format!("{MANAGER}/early_header_mutation_extensions")}]),
            Invariant::Destinations,
        ),
        attack(
            "domain-stolen",
            FRONTEND,
            routes,
            json!([
            {"op": "test", "path": "/virtual_hosts/2/name", "value": "checkout-v2.shop"},
            {"op": "add", "path": "/virtual_hosts/2/domains/-", "value": "checkout-v1.example"}]),
            Invariant::Destinations,
        ),
        // The review's: checkout's application swapped for another workload's.
        attack(
            "app-endpoint-swapped",
            CHECKOUT_V1,
            app,
            json!([
            {"op": "replace", "path": endpoint, "value": elsewhere.to_string()}]),
            Invariant::Endpoints,
        ),
        attack(
            "service-endpoints-fixed",
            FRONTEND,
            checkout_v1,
            json!([
            {"op": "remove", "path": "/eds_cluster_config"},
            {"op": "replace", "path": "/type", "value": "STATIC"},
            {"op": "add", "path": "/load_assignment", "value": {"cluster_name": "checkout-v1.shop",
             "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address":
                {"address": elsewhere.to_string(), "port_value": 8080}}}}]}]}}]),
            Invariant::Endpoints,
        ),
        attack(
            "client-certificate-optional",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "replace", "path": "/filter_chains/0/transport_socket/typed_config/require_client_certificate",
             "value": false}]),
            Invariant::Tls,
        ),
        attack(
            "tls-removed",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "remove", "path": "/filter_chains/0/transport_socket"}]),
            Invariant::Tls,
        ),
        attack(
            "any-server-identity",
            FRONTEND,
            checkout_v1,
            json!([
            {"op": "remove", "path": "/transport_socket/typed_config/common_tls_context/combined_validation_context/default_validation_context/match_typed_subject_alt_names"}]),
            Invariant::Tls,
        ),
        attack(
            "default-chain",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "copy", "from": "/filter_chains/0", "path": "/default_filter_chain"},
            {"op": "remove", "path": "/default_filter_chain/filters/0/typed_config/http_filters/0"}]),
            Invariant::FilterChains,
        ),
        attack(
            "chain-for-loopback",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "copy", "from": "/filter_chains/0", "path": "/filter_chains/-"},
            {"op": "add", "path": "/filter_chains/1/filter_chain_match",
             "value": {"source_prefix_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]}},
            {"op": "remove", "path": "/filter_chains/1/filters/0/typed_config/http_filters/0"}]),
            Invariant::FilterChains,
        ),
        attack(
            "original-destination",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": "/use_original_dst", "value": true}]),
            Invariant::FilterChains,
        ),
        attack(
            "port-moved",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "replace", "path": "/address/socket_address/port_value", "value": 18080}]),
            Invariant::Address,
        ),
        attack(
            "address-stolen",
            ANALYTICS,
            outbound,
            json!([
            {"op": "replace", "path": "/address/socket_address/address", "value": elsewhere.to_string()}]),
            Invariant::Address,
        ),
        attack(
            "caller-header-passed-on",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": format!("{MANAGER}/forward_client_cert_details"), "value": "APPEND_FORWARD"}]),
            Invariant::Identity,
        ),
        attack(
            "caller-header-forwarded",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": format!("{MANAGER}/forward_client_cert_details"), "value": "FORWARD_ONLY"}]),
            Invariant::Identity,
        ),
        attack(
            "drain-only-on-modify",
            CHECKOUT_V1,
            inbound,
            json!([
            {"op": "add", "path": "/drain_type", "value": "MODIFY_ONLY"}]),
            Invariant::InboundSafeList,
        ),
        attack(
            "app-load-balancing",
            CHECKOUT_V1,
            app,
            json!([
            {"op": "add", "path": "/lb_policy", "value": "RING_HASH"}]),
            Invariant::InboundSafeList,
        ),
    ]
}

/// `attacks` as EnvoyPatch manifests, one object each.
pub fn manifest(attacks: &[Attack]) -> String {
    attacks
        .iter()
        .map(|attack| {
            envoy_patch(
                &format!("attack-{}", attack.name),
                attack.pod,
                attack.type_name,
                attack.resource,
                &attack.operations,
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// One EnvoyPatch named `name` selecting `pod`'s workload, with one resource patch.
pub fn envoy_patch(
    name: &str,
    pod: &str,
    type_name: &str,
    resource: &str,
    operations: &Value,
) -> String {
    format!(
        "apiVersion: policy.weft.io/v1alpha1\nkind: EnvoyPatch\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {}}}\n  patches:\n  - type: {type_name}\n    name: \"{resource}\"\n    operations: {operations}\n",
        selector(pod)
    )
}

/// What a probe must get.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Refused: a 403 from weft's filter, never an answer of the application.
    Denied,
    /// Served by `app` (weft-upstream's name) as `GET path`; or not served at all (a safe
    /// patch may cost availability, never access).
    ServedBy(&'static str, &'static str),
    /// If served, the application did not see `needle` in request header `header` (asked for
    /// with weft-upstream's `x-echo`).
    Unseen(&'static str, &'static str),
}

/// A request a probe sends.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// An HTTP request through `from`'s outbound proxy to the Service `host`.
    Http {
        /// The calling pod.
        from: &'static str,
        /// The Service called.
        host: &'static str,
        /// The method.
        method: &'static str,
        /// The path.
        path: &'static str,
        /// Extra request headers.
        headers: &'static [(&'static str, &'static str)],
        /// What must come back.
        expect: Expect,
    },
    /// A TCP connection through `from`'s outbound listener to the database.
    Tcp {
        /// The calling pod.
        from: &'static str,
        /// Whether the database must answer.
        allowed: bool,
    },
    /// An HTTP/1.1 request over mTLS straight to checkout-v1's inbound port, with a
    /// certificate of `identity` from the mesh CA: a caller that speaks to the sidecar itself.
    Direct {
        /// `namespace/serviceaccount`.
        identity: &'static str,
        /// The method.
        method: &'static str,
        /// The path.
        path: &'static str,
        /// Request headers.
        headers: &'static [(&'static str, &'static str)],
        /// What must come back.
        expect: Expect,
    },
    /// Plain HTTP straight to checkout-v1's inbound port, with no TLS: never answered.
    Plaintext,
}

/// Every probe.
pub const PROBES: &[Probe] = &[
    Probe::Http {
        from: FRONTEND,
        host: "checkout-v1",
        method: "GET",
        path: "/cart/x",
        headers: &[],
        expect: Expect::ServedBy("checkout-v1", "/cart/x"),
    },
    Probe::Http {
        from: FRONTEND,
        host: "checkout-v1",
        method: "GET",
        path: "/cart",
        headers: &[("x-weft-cluster", "checkout-v2.shop")],
        expect: Expect::ServedBy("checkout-v1", "/cart"),
    },
    Probe::Http {
        from: FRONTEND,
        host: "checkout-v1",
        method: "GET",
        path: "/admin",
        headers: &[],
        expect: Expect::Denied,
    },
    Probe::Http {
        from: FRONTEND,
        host: "checkout-v1",
        method: "GET",
        path: "/cart/../admin",
        headers: &[],
        expect: Expect::Denied,
    },
    Probe::Http {
        from: FRONTEND,
        host: "checkout-v1",
        method: "DELETE",
        path: "/cart",
        headers: &[],
        expect: Expect::Denied,
    },
    Probe::Http {
        from: DB,
        host: "checkout-v1",
        method: "GET",
        path: "/admin",
        headers: &[],
        expect: Expect::Denied,
    },
    Probe::Http {
        from: CHECKOUT_V2,
        host: "checkout-v1",
        method: "DELETE",
        path: "/secret/delete-all",
        headers: &[],
        expect: Expect::Denied,
    },
    Probe::Http {
        from: ANALYTICS,
        host: "checkout-v1",
        method: "GET",
        path: "/admin",
        headers: &[("upgrade", "websocket"), ("connection", "upgrade")],
        expect: Expect::Denied,
    },
    Probe::Http {
        from: ANALYTICS,
        host: "checkout-v1",
        method: "GET",
        path: "/cart",
        headers: &[],
        expect: Expect::Denied,
    },
    Probe::Http {
        from: FRONTEND,
        host: "checkout-v1",
        method: "GET",
        path: "/cart",
        headers: &[("x-echo", "x-role")],
        expect: Expect::Unseen("x-role", "admin"),
    },
    // The review's upgrade: spoken to checkout's sidecar by a caller no TrafficTarget names.
    Probe::Direct {
        identity: "shop/analytics",
        method: "GET",
        path: "/admin",
        headers: &[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ],
        expect: Expect::Denied,
    },
    Probe::Direct {
        identity: "shop/analytics",
        method: "GET",
        path: "/cart",
        headers: &[],
        expect: Expect::Denied,
    },
    // A caller's own x-forwarded-client-cert never reaches the application as an identity.
    Probe::Direct {
        identity: "shop/frontend",
        method: "GET",
        path: "/cart",
        headers: &[
            (
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/shop/sa/admin",
            ),
            ("x-echo", "x-forwarded-client-cert"),
        ],
        expect: Expect::Unseen("x-forwarded-client-cert", "sa/admin"),
    },
    Probe::Tcp {
        from: ANALYTICS,
        allowed: false,
    },
    Probe::Tcp {
        from: CHECKOUT_V1,
        allowed: true,
    },
    Probe::Plaintext,
];

/// The database's port.
const DB_PORT: u16 = 5432;

/// Runs every probe against `mesh`; returns what was wrong (nothing when every answer is as
/// it must be).
pub async fn run_probes(mesh: &TestMesh) -> Vec<String> {
    let mut wrong = Vec::new();
    for probe in PROBES {
        if let Some(problem) = run(mesh, probe).await {
            wrong.push(format!("{probe:?}: {problem}"));
        }
    }
    wrong
}

async fn run(mesh: &TestMesh, probe: &Probe) -> Option<String> {
    match *probe {
        Probe::Http {
            from,
            host,
            method,
            path,
            headers,
            expect,
        } => {
            let mut all = vec![("host", host)];
            all.extend_from_slice(headers);
            let reply = match request(mesh.replica(from).outbound(), method, path, &all).await {
                Ok(reply) => reply,
                // No answer at all is never access (and a safe patch may cost availability).
                Err(_) => return None,
            };
            judge(&reply, method, expect)
        }
        Probe::Direct {
            identity,
            method,
            path,
            headers,
            expect,
        } => match direct(mesh, identity, method, path, headers).await {
            Ok(reply) => judge(&reply, method, expect),
            Err(_) => None,
        },
        Probe::Tcp { from, allowed } => {
            let answer = mesh.tcp(from, DB_PORT, "select 1").await.ok().flatten();
            match (allowed, answer) {
                (false, Some(answer)) => {
                    Some(format!("a denied connection was answered: {answer}"))
                }
                (true, Some(answer)) if answer != "db: select 1" => {
                    Some(format!("answered by the wrong workload: {answer}"))
                }
                _ => None,
            }
        }
        Probe::Plaintext => {
            let pod = mesh.replica(CHECKOUT_V1).pod.pod_ip;
            plaintext_answer(SocketAddr::from((pod, 8080)))
                .await
                .filter(|answer| answer.starts_with("HTTP/1.1 2"))
                .map(|answer| format!("checkout-v1 answered plain HTTP: {answer}"))
        }
    }
}

/// What is wrong with `reply` to a `method` request that had to get `expect`, if anything.
fn judge(reply: &Reply, method: &str, expect: Expect) -> Option<String> {
    let served = served_by(&reply.body).is_some();
    let body = reply.body.trim_end();
    match expect {
        Expect::Denied if served || (200..300).contains(&reply.status) => {
            Some(format!("a denied request got {}: {body}", reply.status))
        }
        Expect::Denied => None,
        Expect::ServedBy(app, path) => {
            let want = format!("upstream {app}: {method} {path}");
            (served && body != want)
                .then(|| format!("served by the wrong workload or path: {body:?}, not {want:?}"))
        }
        Expect::Unseen(header, needle) => {
            let seen = reply
                .headers
                .get(crate::upstream::ECHOED)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            (served && seen.contains(needle))
                .then(|| format!("the application saw {header}: {seen}"))
        }
    }
}

/// The application that answered, when `body` is weft-upstream's answer
/// (`upstream NAME: METHOD PATH`), not an Envoy's (`upstream connect error ...`).
fn served_by(body: &str) -> Option<&str> {
    let (name, _) = body.strip_prefix("upstream ")?.split_once(": ")?;
    (!name.is_empty() && !name.contains(' ')).then_some(name)
}

/// `method path` with `headers` over mTLS to checkout-v1's inbound port, as `identity` (a
/// certificate of the mesh CA in the mesh's state), checking that the sidecar is checkout's.
async fn direct(
    mesh: &TestMesh,
    identity: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    DirectConnection::open(mesh, identity)
        .await?
        .request(method, path, headers)
        .await
}

/// An HTTP/1.1 connection over mTLS straight to checkout-v1's inbound port, as a caller of the
/// mesh holding a certificate of the mesh CA.
pub struct DirectConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl DirectConnection {
    /// Connects as `identity` (`namespace/serviceaccount`), checking that the sidecar is
    /// checkout's.
    ///
    /// # Errors
    /// When the certificate cannot be issued or the connection cannot be made.
    pub async fn open(mesh: &TestMesh, identity: &str) -> anyhow::Result<Self> {
        let state = mesh.state.path();
        let read = |name: &str| std::fs::read_to_string(state.join(name));
        let ca_pem = read(weft_certs::CA_CERT_FILE)?;
        let ca = weft_certs::MeshCa::from_pem(
            &ca_pem,
            &read(weft_certs::CA_KEY_FILE)?,
            "cluster.local",
        )?;
        let certificate = ca.issue(
            &identity.parse()?,
            weft_certs::Validity::starting_now(Duration::from_secs(600)),
        )?;
        let tls = weft_controller::channel::client_config(
            &certificate.cert_pem,
            &certificate.key_pem,
            &ca_pem,
            "spiffe://cluster.local/ns/shop/sa/checkout",
        )?;
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();
        let address = SocketAddr::from((mesh.replica(CHECKOUT_V1).pod.pod_ip, 8080));
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(
                rustls::pki_types::ServerName::IpAddress(address.ip().into()),
                tcp,
            )
            .await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        Ok(Self {
            sender,
            connection: tokio::spawn(connection.with_upgrades()),
        })
    }

    /// `method path` with `headers` on this connection.
    ///
    /// # Errors
    /// When the connection is closed or no answer comes within 5 s.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "checkout-v1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let response =
            tokio::time::timeout(Duration::from_secs(5), self.sender.send_request(request))
                .await??;
        if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
            // Upgraded: the application took the connection, whatever it then says.
            return Ok(Reply {
                status: 101,
                headers: response.headers().clone(),
                body: "upstream (upgraded): the application took the connection".to_owned(),
            });
        }
        Reply::read(response).await
    }

    /// Waits up to `within` for the server to close the connection; whether it did.
    pub async fn closed_within(mut self, within: Duration) -> bool {
        tokio::time::timeout(within, &mut self.connection)
            .await
            .is_ok()
    }
}

impl Drop for DirectConnection {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The first line of the answer to a plain HTTP request sent to `address`, if any comes.
async fn plaintext_answer(address: SocketAddr) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(b"GET /cart HTTP/1.1\r\nhost: checkout-v1\r\n\r\n")
        .await
        .ok()?;
    let mut answer = vec![0; 256];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer[..read]).into_owned();
    text.lines().next().map(str::to_owned)
}
