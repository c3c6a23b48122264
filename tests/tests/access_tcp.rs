//! SMI access control for TCP inside a real Envoy: the weft network filter (`root_id`
//! `weft.tcp`) in front of Envoy's TCP proxy on an mTLS listener, a raw TCP echo upstream, and
//! TCPRoute port rules evaluated against the port the connection was addressed to.

use weft_e2e::bootstrap::{
    ServerTls, bootstrap, cluster, configuration, free_port, on_port, tcp_listener_with,
    weft_network_filter, weft_network_filter_with, with_tls,
};
use weft_e2e::envoy::Envoy;
use weft_e2e::pki::Pki;
use weft_e2e::tls::TlsClient;
use weft_e2e::upstream::TcpEcho;
use weft_e2e::{paths, policy};
use weft_envoy_config::filters::Configuration;
use weft_policy::bundle::AccessMode;

const DENIED_COUNTER: &str = "wasmcustom.weft_access_tcp_denied_total";
const AUDIT_COUNTER: &str = "wasmcustom.weft_access_tcp_audit_denied_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_is_allowed_only_from_sources_a_tcp_route_allows_on_that_port() {
    let pki = Pki::new().unwrap();
    let echo = TcpEcho::start().await.unwrap();
    // The TCPRoute names the port the database listener is on, so it is chosen before Envoy
    // starts; no `destination_port` override, so the filter reads Envoy's `destination.port`.
    let db_port = free_port().unwrap();
    let audit_port = free_port().unwrap();
    let manifests = policy::fixture("access", &[("DB_PORT", db_port.to_string())]).unwrap();
    let module = paths::weft_wasm().unwrap();
    let server = pki.server("shop/db").unwrap();
    let tls = ServerTls {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
        ca_file: pki.ca_file(),
        require_client_certificate: true,
    };
    let listener = |name: &str, port: u16, mode| {
        let config = policy::inbound(&manifests, "shop/db", mode).unwrap();
        let filter = weft_network_filter(&module, &policy::json(&config));
        with_tls(
            on_port(tcp_listener_with(name, vec![filter], "db"), port),
            &tls,
        )
    };
    // Envoy's default TCP proxy connects upstream as soon as a caller connects; the filter
    // must still keep every byte from a denied caller away from the upstream.
    let immediate_port = free_port().unwrap();
    let mut immediate = listener("db-immediate", immediate_port, AccessMode::Enforce);
    let proxy = &mut immediate["filter_chains"][0]["filters"][1]["typed_config"];
    proxy["upstream_connect_mode"] = serde_json::json!("IMMEDIATE");
    let envoy = Envoy::start(&bootstrap(
        vec![
            listener("db", db_port, AccessMode::Enforce),
            listener("db-audit", audit_port, AccessMode::Audit),
            immediate,
        ],
        vec![cluster("db", echo.addr())],
    ))
    .await
    .unwrap();
    envoy
        .wait_for_log(
            "configured as the TCP filter",
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    let db = envoy.listener("db").await.unwrap();
    let caller = |identity: &str| {
        TlsClient::new(pki.ca_pem(), Some(&pki.workload(identity).unwrap())).unwrap()
    };

    // shop/api may connect on the database port: bytes go through and come back.
    let reply = caller("shop/api").echo(db, b"SELECT 1;").await.unwrap();
    assert_eq!(reply, b"SELECT 1;");
    assert_eq!(echo.connections(), 1);

    // shop/batch is allowed only on another port; shop/stranger nowhere. Both are closed
    // before the TCP proxy even connects upstream.
    for identity in ["shop/batch", "shop/stranger"] {
        let reply = caller(identity).echo(db, b"DROP TABLE orders;").await;
        assert!(
            reply.as_ref().map_or(true, Vec::is_empty),
            "{identity} got {reply:?}"
        );
    }
    assert_eq!(
        echo.connections(),
        1,
        "a denied connection reached the upstream"
    );
    assert_eq!(envoy.stat(DENIED_COUNTER).await.unwrap(), Some(2));

    // In audit mode the stranger passes, and is counted and logged.
    let audit = envoy.listener("db-audit").await.unwrap();
    let reply = caller("shop/stranger").echo(audit, b"ping").await.unwrap();
    assert_eq!(reply, b"ping");
    assert_eq!(envoy.stat(AUDIT_COUNTER).await.unwrap(), Some(1));
    envoy
        .wait_for_log(
            &format!("audit: would close a TCP connection to port {audit_port} from spiffe://cluster.local/ns/shop/sa/stranger"),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(echo.connections(), 2);
    let received = echo.bytes_received();

    let immediate = envoy.listener("db-immediate").await.unwrap();
    let reply = caller("shop/stranger")
        .echo(immediate, b"DROP TABLE orders;")
        .await;
    assert!(reply.as_ref().map_or(true, Vec::is_empty), "{reply:?}");
    assert_eq!(
        echo.bytes_received(),
        received,
        "a denied caller's bytes reached the upstream"
    );
    assert_eq!(envoy.stat(DENIED_COUNTER).await.unwrap(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_with_an_invalid_plugin_configuration_or_root_id_is_refused() {
    let echo = TcpEcho::start().await.unwrap();
    let module = paths::weft_wasm().unwrap();
    let mut unknown_root = weft_network_filter(&module, r#"{"version": 1}"#);
    unknown_root["typed_config"]["config"]["root_id"] = serde_json::json!("weft.udp");
    let whole = configuration(r#"{"access": {"mode": "enforce", "trust_domain": "cluster.local", "sources": {}, "grants": []}}"#).0;
    let cut_short =
        weft_network_filter_with(&module, Configuration(whole[..whole.len() - 1].to_vec()));
    for (filter, reason) in [
        (cut_short, "the bundle ends early"),
        (
            unknown_root,
            "field `root_id`: \"weft.udp\" is not a weft filter",
        ),
    ] {
        let config = bootstrap(
            vec![tcp_listener_with("db", vec![filter], "db")],
            vec![cluster("db", echo.addr())],
        );
        let (code, log) = Envoy::expect_exit(&config).await.unwrap();
        assert_ne!(code, Some(0), "{log}");
        assert!(
            log.lines()
                .any(|line| line.contains(reason) && line.contains("refuses to start")),
            "expected {reason:?} in\n{log}"
        );
    }
    assert_eq!(echo.connections(), 0);
}
