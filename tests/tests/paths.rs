//! Path tricks against SMI access control, as an attacker would try them: a caller allowed only
//! `GET /metrics` and `GET|POST /orders...` asks for `/orders/../admin` and its many spellings,
//! through the shipped inbound configuration (Envoy normalises paths before weft sees them)
//! and through an Envoy that does not normalise (weft refuses what is not in normal form
//! itself), in front of an application that normalises paths as eagerly as any framework.
//! Whatever a request's answer, the path the application served must be one the policy allows.

use std::net::SocketAddr;

use weft_e2e::bootstrap::{
    ServerTls, bootstrap, cluster, http_listener, shipped, weft_http_filter, with_tls,
};
use weft_e2e::envoy::Envoy;
use weft_e2e::pki::Pki;
use weft_e2e::tls::TlsClient;
use weft_e2e::upstream::NormalisingUpstream;
use weft_e2e::{paths, policy};
use weft_policy::PluginConfig;
use weft_policy::bundle::AccessMode;
use weft_policy::engine::{Engine, HttpRequest};

/// The caller's identity: shop/frontend may `GET /metrics` and `GET|POST /orders[/N]`.
const CALLER: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// The spellings of "a path under /orders or /metrics that resolves to /admin".
const TRICKS: &[&str] = &[
    "/orders/../admin",
    "/metrics/../admin",
    "/orders/42/../../admin",
    "/orders/./../admin",
    "/orders/%2e%2e/admin",
    "/orders/%2E%2E/admin",
    "/orders/.%2e/admin",
    "/orders/%2e./admin",
    "/orders%2F..%2Fadmin",
    "/orders%2f..%2fadmin",
    "/orders/..%2Fadmin",
    "/metrics/%2e%2e%2fadmin",
    "/orders%5C..%5Cadmin",
    "/orders/%2e%2e%5cadmin",
    "/orders\\..\\admin",
    "/orders/..\\admin",
    "/orders/..;/admin",
    "/orders/..;jsessionid=1/admin",
    "/orders/%2e%2e;/admin",
    "/orders;x/../admin",
    "/orders//../admin",
    "/orders/%2e%2e/%61dmin",
    "/orders/42/%2E%2E/%2E%2E/admin",
    "/orders/.%2E/.%2E/admin?next=/orders",
];

/// Requests the caller may make, which must still pass.
const ALLOWED: &[&str] = &["/orders", "/orders/42", "/metrics"];

struct Setup {
    pki: Pki,
    upstream: NormalisingUpstream,
    /// shop/api's inbound plugin configuration, compiled from the example policy.
    config: PluginConfig,
    engine: Engine,
}

impl Setup {
    async fn new() -> Self {
        let manifests = policy::example("shop").unwrap();
        let mut config = policy::inbound(&manifests, "shop/api", AccessMode::Enforce).unwrap();
        config.destination_port = Some(8080);
        Self {
            pki: Pki::new().unwrap(),
            upstream: NormalisingUpstream::start("api").await.unwrap(),
            engine: Engine::new(&config).unwrap(),
            config,
        }
    }

    fn allows(&self, path: &str) -> bool {
        let headers: Vec<(String, String)> = Vec::new();
        self.engine
            .decide_http(&HttpRequest {
                source: Some(CALLER),
                method: "GET",
                path,
                port: 8080,
                headers: &headers,
            })
            .is_allowed()
    }

    /// Sends every trick and every allowed path through `addr`; returns each trick's status.
    async fn attack(&self, addr: SocketAddr) -> Vec<(&'static str, u16, String)> {
        let frontend = TlsClient::new(
            self.pki.ca_pem(),
            Some(&self.pki.workload("shop/frontend").unwrap()),
        )
        .unwrap();
        for path in ALLOWED {
            let reply = frontend.raw(addr, "GET", path, &[]).await.unwrap();
            assert_eq!(reply.status, 200, "{path} is allowed: {reply:?}");
            assert_eq!(reply.body, format!("upstream api: GET {path}\n"));
        }
        let mut outcomes = Vec::new();
        for trick in TRICKS {
            let reply = frontend.raw(addr, "GET", trick, &[]).await.unwrap();
            outcomes.push((*trick, reply.status, reply.body));
        }
        // Whatever got through, the application served only paths the policy allows.
        for (raw, resolved) in self.upstream.seen() {
            assert!(
                resolved != "/admin" && self.allows(&resolved),
                "{raw:?} reached the application as {resolved:?}, which the policy denies"
            );
        }
        outcomes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_trick_reaches_a_denied_path_through_the_shipped_inbound_configuration() {
    let setup = Setup::new().await;
    let server = setup.pki.server("shop/api").unwrap();
    let module = paths::weft_wasm().unwrap();
    let ca = setup.pki.ca_file();
    let config = shipped(
        "inbound-access.yaml",
        &[
            ("pki/api/cert.pem", &server.cert_file),
            ("pki/api/key.pem", &server.key_file),
            ("pki/ca/ca.pem", &ca),
            ("target/wasm/weft.wasm", &module),
        ],
        &[(8080, setup.upstream.addr().port())],
    )
    .unwrap();
    let envoy = Envoy::start(&config).await.unwrap();
    let inbound = envoy.listener("inbound").await.unwrap();
    for (trick, status, body) in setup.attack(inbound).await {
        // Envoy resolves most spellings to /admin, which no rule allows the caller (403), and
        // refuses encoded slashes itself (400); weft refuses what Envoy leaves unresolved.
        assert!(status == 403 || status == 400, "{trick}: {status} {body}");
        if status == 403 {
            assert!(body.contains("access denied"), "{trick}: {body}");
        }
        // Envoy decodes `%2e%2e;` into `..;` and leaves it: only weft's own check stops it.
        if trick == "/orders/%2e%2e;/admin" {
            assert!(
                body.contains("is not in normal form") && body.contains("`..;`"),
                "{trick}: {status} {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_normalisation_in_envoy_weft_refuses_every_path_not_in_normal_form() {
    let setup = Setup::new().await;
    let server = setup.pki.server("shop/api").unwrap();
    let module = paths::weft_wasm().unwrap();
    let listener = with_tls(
        http_listener(
            "plain",
            vec![weft_http_filter(&module, &policy::json(&setup.config))],
            "api",
        ),
        &ServerTls {
            cert_file: server.cert_file.clone(),
            key_file: server.key_file.clone(),
            ca_file: setup.pki.ca_file(),
            require_client_certificate: true,
        },
    );
    assert!(
        !listener.to_string().contains("normalize_path"),
        "this listener must not normalise"
    );
    let envoy = Envoy::start(&bootstrap(
        vec![listener],
        vec![cluster("api", setup.upstream.addr())],
    ))
    .await
    .unwrap();
    let plain = envoy.listener("plain").await.unwrap();
    for (trick, status, body) in setup.attack(plain).await {
        assert_eq!(status, 403, "{trick}: {body}");
        assert!(
            body.starts_with("weft: access denied: the path ")
                && body.contains("is not in normal form"),
            "{trick}: {body}"
        );
    }
}
