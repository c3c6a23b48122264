//! SMI access control inside a real Envoy: the real weft.wasm on inbound listeners that
//! terminate mTLS with certificates made by rcgen, callers with several SPIFFE identities, and
//! a real upstream that records what reached it. One Envoy carries every listener (one per
//! mode or TLS setting), so the whole file costs one Envoy start.

use std::net::SocketAddr;

use weft_e2e::bootstrap::{
    ServerTls, bootstrap, cluster, http_listener, http_listener_forwarding_caller,
    weft_http_filter, with_tls,
};
use weft_e2e::client::Reply;
use weft_e2e::envoy::Envoy;
use weft_e2e::pki::{Issued, Pki};
use weft_e2e::tls::TlsClient;
use weft_e2e::upstream::HttpUpstream;
use weft_e2e::{client, paths, policy};
use weft_policy::bundle::AccessMode;

const DENIED_COUNTER: &str = "wasmcustom.weft_access_http_denied_total";
const AUDIT_COUNTER: &str = "wasmcustom.weft_access_http_audit_denied_total";

struct Mesh {
    pki: Pki,
    envoy: Envoy,
    upstream: HttpUpstream,
}

impl Mesh {
    async fn start() -> Self {
        let pki = Pki::new().unwrap();
        let upstream = HttpUpstream::start("api").await.unwrap();
        let manifests = policy::fixture("access", &[("DB_PORT", "5432".to_owned())]).unwrap();
        let module = paths::weft_wasm().unwrap();
        let server = pki.server("shop/api").unwrap();
        let tls = |require_client_certificate| ServerTls {
            cert_file: server.cert_file.clone(),
            key_file: server.key_file.clone(),
            ca_file: pki.ca_file(),
            require_client_certificate,
        };
        let listener = |name: &str, config: &weft_policy::PluginConfig| {
            http_listener(
                name,
                vec![weft_http_filter(&module, &policy::json(config))],
                "api",
            )
        };
        let forwarding = |name: &str, config: &weft_policy::PluginConfig| {
            http_listener_forwarding_caller(name, &module, config, "api")
        };
        let config = |mode| policy::inbound(&manifests, "shop/api", mode).unwrap();
        let mut plain = config(AccessMode::Enforce);
        plain.destination_port = Some(8080);
        let mut health = config(AccessMode::Enforce);
        health.destination_port = Some(8081);
        health.access.as_mut().unwrap().unauthenticated_ports = vec![8081];
        let listeners = vec![
            with_tls(
                listener("enforce", &config(AccessMode::Enforce)),
                &tls(true),
            ),
            with_tls(listener("audit", &config(AccessMode::Audit)), &tls(true)),
            with_tls(
                listener("permissive", &config(AccessMode::Permissive)),
                &tls(true),
            ),
            with_tls(
                listener("optional-cert", &config(AccessMode::Enforce)),
                &tls(false),
            ),
            listener("plaintext", &plain),
            listener("health", &health),
            // The plugin reads the caller from x-forwarded-client-cert, which these listeners
            // set (SANITIZE_SET), as every inbound listener weft generates does.
            with_tls(forwarding("forwarded", &plain), &tls(true)),
            with_tls(forwarding("forwarded-optional-cert", &plain), &tls(false)),
            forwarding("forwarded-plaintext", &plain),
            // A control: the same plugin behind a listener that forwards a client's header
            // (ALWAYS_FORWARD_ONLY), which weft never generates; it shows what the pairing
            // prevents.
            with_tls(
                always_forwarding(forwarding("trusting-always-forward", &plain)),
                &tls(false),
            ),
        ];
        let envoy = Envoy::start(&bootstrap(listeners, vec![cluster("api", upstream.addr())]))
            .await
            .unwrap();
        Self {
            pki,
            envoy,
            upstream,
        }
    }

    async fn addr(&self, listener: &str) -> SocketAddr {
        self.envoy.listener(listener).await.unwrap()
    }

    fn client(&self, identity: Option<&Issued>) -> TlsClient {
        TlsClient::new(self.pki.ca_pem(), identity).unwrap()
    }

    fn caller(&self, identity: &str) -> TlsClient {
        self.client(Some(&self.pki.workload(identity).unwrap()))
    }

    fn upstream_paths(&self) -> Vec<String> {
        self.upstream
            .seen()
            .into_iter()
            .map(|seen| seen.path)
            .collect()
    }
}

/// `listener` with its connection manager forwarding a client's `x-forwarded-client-cert` as
/// it came, whatever the connection (`ALWAYS_FORWARD_ONLY`; the other settings remove it from a
/// connection without a client certificate).
fn always_forwarding(mut listener: serde_json::Value) -> serde_json::Value {
    listener["filter_chains"][0]["filters"][0]["typed_config"]["forward_client_cert_details"] =
        serde_json::json!("ALWAYS_FORWARD_ONLY");
    listener
}

/// Caller, its identity, method, path, headers, whether it is allowed, the statement checked.
type Case<'a> = (
    &'a TlsClient,
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    bool,
    &'a str,
);

fn assert_denied(reply: &Reply, source: &str) {
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(
        reply.headers.get("x-weft-access").map(|v| v.as_bytes()),
        Some(&b"denied"[..]),
        "{reply:?}"
    );
    assert!(
        reply.body.contains(source) && reply.body.contains("no TrafficTarget allows"),
        "the body names the source and says no TrafficTarget allows it: {:?}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_access_follows_the_traffic_targets_in_a_real_envoy() {
    let mesh = Mesh::start().await;
    let enforce = mesh.addr("enforce").await;
    let frontend = mesh.caller("shop/frontend");
    let mobile = mesh.caller("shop/mobile");
    let batch = mesh.caller("shop/batch");
    let prober = mesh.caller("ops/prober");
    let stranger = mesh.caller("shop/stranger");

    let cases: Vec<Case> = vec![
        (
            &frontend,
            "shop/frontend",
            "GET",
            "/metrics",
            vec![],
            true,
            "a listed match allows",
        ),
        (
            &frontend,
            "shop/frontend",
            "GET",
            "/metrics/cpu?x=1",
            vec![],
            true,
            "the path regex is anchored at the start only",
        ),
        (
            &frontend,
            "shop/frontend",
            "GET",
            "/v2/metrics",
            vec![],
            false,
            "the path regex is anchored at the start",
        ),
        (
            &frontend,
            "shop/frontend",
            "DELETE",
            "/orders/17",
            vec![],
            false,
            "the method must be listed",
        ),
        (
            &frontend,
            "shop/frontend",
            "POST",
            "/orders/17",
            vec![],
            true,
            "any listed method",
        ),
        (
            &frontend,
            "shop/frontend",
            "GET",
            "/orders/abc",
            vec![],
            false,
            "the regex, not a prefix, decides",
        ),
        (
            &frontend,
            "shop/frontend",
            "GET",
            "/beta",
            vec![("x-user-type", "staff")],
            true,
            "a second TrafficTarget adds to the first",
        ),
        (
            &mobile,
            "shop/mobile",
            "GET",
            "/beta",
            vec![("x-user-type", "insider")],
            true,
            "a header regex that matches",
        ),
        (
            &mobile,
            "shop/mobile",
            "GET",
            "/beta",
            vec![("x-user-type", "insiders")],
            false,
            "header regexes match the whole value",
        ),
        (
            &mobile,
            "shop/mobile",
            "GET",
            "/beta",
            vec![],
            false,
            "a missing header does not match",
        ),
        (
            &mobile,
            "shop/mobile",
            "GET",
            "/metrics",
            vec![],
            false,
            "a source gets only its own rules",
        ),
        (
            &prober,
            "ops/prober",
            "PUT",
            "/healthz",
            vec![("x-probe", "kubelet")],
            true,
            "v1alpha2 target, v1alpha3 group, methods *",
        ),
        (
            &prober,
            "ops/prober",
            "GET",
            "/healthz",
            vec![("x-probe", "curl")],
            false,
            "v1alpha3 list-form header must match",
        ),
        (
            &batch,
            "shop/batch",
            "GET",
            "/reports/2026",
            vec![],
            true,
            "v1alpha1 target and v1alpha1 group",
        ),
        (
            &batch,
            "shop/batch",
            "POST",
            "/reports",
            vec![],
            false,
            "v1alpha1 methods still apply",
        ),
        (
            &stranger,
            "shop/stranger",
            "GET",
            "/metrics",
            vec![],
            false,
            "no TrafficTarget names the caller",
        ),
    ];
    let mut expected_upstream = Vec::new();
    let mut denied = 0;
    for (client, name, method, path, headers, allowed, statement) in &cases {
        let reply = client
            .request(enforce, method, path, headers)
            .await
            .unwrap();
        if *allowed {
            assert_eq!(
                reply.status, 200,
                "{statement}: {method} {path} from {name}: {reply:?}"
            );
            assert_eq!(
                reply.body,
                format!("upstream api: {method} {path}\n"),
                "{statement}"
            );
            expected_upstream.push((*path).to_owned());
        } else {
            let (namespace, account) = name.split_once('/').unwrap();
            assert_denied(
                &reply,
                &format!("spiffe://cluster.local/ns/{namespace}/sa/{account}"),
            );
            denied += 1;
        }
    }
    assert_eq!(
        mesh.upstream_paths(),
        expected_upstream,
        "only allowed requests reached the application"
    );
    // An allowed request continues untouched: the upstream saw the caller's headers as sent.
    let seen = mesh.upstream.seen();
    let beta = seen.iter().find(|s| s.path == "/beta").unwrap();
    assert!(
        beta.headers
            .iter()
            .any(|(k, v)| k == "x-user-type" && v == "staff"),
        "{beta:?}"
    );
    assert!(
        !beta.headers.iter().any(|(k, _)| k.starts_with("x-weft")),
        "{beta:?}"
    );
    assert_eq!(mesh.envoy.stat(DENIED_COUNTER).await.unwrap(), Some(denied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_grpc_call_gets_permission_denied_and_an_allowed_one_passes() {
    let mesh = Mesh::start().await;
    let enforce = mesh.addr("enforce").await;
    let denied = mesh
        .caller("shop/mobile")
        .grpc(enforce, "/echo.Echo/Say")
        .await
        .unwrap();
    assert_eq!(denied.status, 200, "{denied:?}");
    assert_eq!(
        denied.grpc_status.as_deref(),
        Some("7"),
        "PERMISSION_DENIED: {denied:?}"
    );
    let message = denied.grpc_message.unwrap_or_default();
    assert!(
        message.contains("spiffe://cluster.local/ns/shop/sa/mobile")
            && message.contains("no TrafficTarget allows"),
        "{message}"
    );
    assert_eq!(
        denied.headers.get("x-weft-access").map(|v| v.as_bytes()),
        Some(&b"denied"[..])
    );
    assert!(mesh.upstream.seen().is_empty());

    let allowed = mesh
        .caller("shop/frontend")
        .grpc(enforce, "/echo.Echo/Say")
        .await
        .unwrap();
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let seen = mesh.upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/echo.Echo/Say");
    assert!(
        seen[0]
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/grpc")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_allows_but_counts_and_logs_what_enforce_would_deny_and_permissive_allows_all() {
    let mesh = Mesh::start().await;
    let audit = mesh.addr("audit").await;
    let stranger = mesh.caller("shop/stranger");
    let frontend = mesh.caller("shop/frontend");
    for path in ["/one", "/two", "/three"] {
        let reply = stranger.request(audit, "GET", path, &[]).await.unwrap();
        assert_eq!(reply.status, 200, "audit allows: {reply:?}");
    }
    let reply = frontend
        .request(audit, "GET", "/metrics", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        mesh.envoy.stat(AUDIT_COUNTER).await.unwrap(),
        Some(3),
        "only what enforce would deny is counted"
    );
    assert_eq!(mesh.envoy.stat(DENIED_COUNTER).await.unwrap(), Some(0));
    mesh.envoy
        .wait_for_log(
            "audit: would deny GET /two on port",
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();

    let permissive = mesh.addr("permissive").await;
    let reply = stranger
        .request(permissive, "DELETE", "/anything", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        mesh.envoy.stat(AUDIT_COUNTER).await.unwrap(),
        Some(3),
        "permissive does not audit"
    );
    assert_eq!(
        mesh.upstream_paths(),
        ["/one", "/two", "/three", "/metrics", "/anything"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_verified_certificate_are_refused() {
    let mesh = Mesh::start().await;
    let enforce = mesh.addr("enforce").await;

    // Plain HTTP to the mTLS listener: no TLS handshake, no request.
    assert!(
        client::get(enforce, "/metrics").await.is_err(),
        "plaintext reached an mTLS listener"
    );
    // TLS without a client certificate, an expired one, one from a foreign CA: the handshake fails.
    let expired = mesh.pki.expired("shop/frontend").unwrap();
    let foreign = mesh.pki.foreign("shop/frontend").unwrap();
    for (what, client) in [
        ("no certificate", mesh.client(None)),
        ("an expired certificate", mesh.client(Some(&expired))),
        ("a foreign CA's certificate", mesh.client(Some(&foreign))),
    ] {
        let result = client.request(enforce, "GET", "/metrics", &[]).await;
        assert!(result.is_err(), "{what} got through: {result:?}");
    }

    // Where the listener lets TLS callers in without a certificate, weft denies them...
    let optional = mesh.addr("optional-cert").await;
    let reply = mesh
        .client(None)
        .request(optional, "GET", "/metrics", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(
        reply.body.contains("no verified client certificate"),
        "{reply:?}"
    );
    // ...still verifies a certificate when one is presented...
    let foreign_result = mesh
        .client(Some(&foreign))
        .request(optional, "GET", "/metrics", &[])
        .await;
    assert!(foreign_result.is_err(), "{foreign_result:?}");
    // ...and reads the identity of a verified one.
    let reply = mesh
        .caller("shop/frontend")
        .request(optional, "GET", "/metrics", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");

    // Plaintext callers are denied, except on a port the policy opens to them.
    let plaintext = mesh.addr("plaintext").await;
    let reply = client::get(plaintext, "/healthz").await.unwrap();
    assert_eq!(reply.status, 403, "{reply:?}");
    let health = mesh.addr("health").await;
    let reply = client::get(health, "/healthz").await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");

    assert_eq!(mesh.upstream_paths(), ["/metrics", "/healthz"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sent_twice_is_matched_on_all_its_values_over_http1_and_http2() {
    let mesh = Mesh::start().await;
    let enforce = mesh.addr("enforce").await;
    let mobile = mesh.caller("shop/mobile");
    // The rule allows x-user-type insider or staff. Sent twice, the header reads
    // "insider,admin", as Envoy's RBAC reads it: the upstream would receive both values.
    const TWICE: &[(&str, &str)] = &[("x-user-type", "insider"), ("x-user-type", "admin")];
    const ONCE: &[(&str, &str)] = &[("x-user-type", "insider")];
    for http2 in [false, true] {
        let send = |headers: &'static [(&'static str, &'static str)]| {
            let mobile = mobile.clone();
            async move {
                match http2 {
                    false => mobile.request(enforce, "GET", "/beta", headers).await,
                    true => mobile.request_http2(enforce, "GET", "/beta", headers).await,
                }
                .unwrap()
            }
        };
        let reply = send(TWICE).await;
        assert_denied(&reply, "spiffe://cluster.local/ns/shop/sa/mobile");
        let reply = send(ONCE).await;
        assert_eq!(reply.status, 200, "http2 {http2}: {reply:?}");
    }
    let seen = mesh.upstream.seen();
    assert_eq!(
        seen.len(),
        2,
        "only the single-valued requests passed: {seen:?}"
    );
    assert!(seen.iter().all(|s| {
        s.headers
            .iter()
            .filter(|(name, _)| name == "x-user-type")
            .count()
            == 1
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_client_cert_header_a_client_sends_never_becomes_its_identity() {
    let mesh = Mesh::start().await;
    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    let spoofed = format!("URI={FRONTEND}");
    let spoof: &[(&str, &str)] = &[("x-forwarded-client-cert", &spoofed)];
    let forwarded = mesh.addr("forwarded").await;

    // The verified caller's identity arrives in the header Envoy sets, and decides.
    let reply = mesh
        .caller("shop/frontend")
        .request(forwarded, "GET", "/metrics", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = mesh.upstream.seen();
    let xfcc = seen
        .last()
        .and_then(|s| {
            s.headers
                .iter()
                .find(|(k, _)| k == "x-forwarded-client-cert")
        })
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        xfcc.contains("Hash=") && xfcc.ends_with(&format!(";URI={FRONTEND}")),
        "Envoy set the header the plugin read: {xfcc:?}"
    );

    // A caller with another certificate claiming frontend's identity is judged as itself.
    let reply = mesh
        .caller("shop/stranger")
        .request(forwarded, "GET", "/metrics", spoof)
        .await
        .unwrap();
    assert_denied(&reply, "spiffe://cluster.local/ns/shop/sa/stranger");
    // So is a caller frontend's rules do not cover, sending the header twice.
    let reply = mesh
        .caller("shop/mobile")
        .request(forwarded, "GET", "/metrics", &[spoof[0], spoof[0]])
        .await
        .unwrap();
    assert_denied(&reply, "spiffe://cluster.local/ns/shop/sa/mobile");

    // Without a certificate (TLS or plaintext), the header is removed: no identity at all.
    for (what, reply) in [
        (
            "TLS without a certificate",
            mesh.client(None)
                .request(
                    mesh.addr("forwarded-optional-cert").await,
                    "GET",
                    "/metrics",
                    spoof,
                )
                .await
                .unwrap(),
        ),
        (
            "plaintext",
            client::request(
                mesh.addr("forwarded-plaintext").await,
                "GET",
                "/metrics",
                spoof,
            )
            .await
            .unwrap(),
        ),
    ] {
        assert_eq!(reply.status, 403, "{what}: {reply:?}");
        assert!(
            reply.body.contains("no verified client certificate"),
            "{what}: {reply:?}"
        );
    }

    // The control: were the header passed on as a client sent it, the claim would be believed,
    // which is why the plugin's setting and the listener's are only ever made together.
    let reply = mesh
        .client(None)
        .request(
            mesh.addr("trusting-always-forward").await,
            "GET",
            "/metrics",
            spoof,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");

    let paths = mesh.upstream_paths();
    assert_eq!(
        paths,
        ["/metrics", "/metrics"],
        "only the verified frontend and the control got through"
    );
}
