//! The compiled bundle on the wire: every field survives the round trip, decisions from a
//! decoded bundle are the decisions of the configuration it was encoded from, and bytes that are
//! not a bundle of this version (another version, cut short, damaged) are refused with the
//! field named, never a panic.

use std::collections::BTreeMap;

use weft_policy::bundle::{
    AccessMode, AccessPolicy, Allows, Direction, Grant, HttpMatchSpec, Identity, MetricsConfig,
    ServiceHosts, SplitTable, StickyKey, WeightedBackend,
};
use weft_policy::compile::Side;
use weft_policy::config::{CallerIdentity, PluginConfig};
use weft_policy::engine::{Decision, Engine, HttpRequest};
use weft_policy::wire::{self, Encoder, WEFT_VERSION, WireError};

/// A configuration with every kind of field and variant the format has.
fn everything() -> PluginConfig {
    let mut sources = BTreeMap::new();
    sources.insert(
        "spiffe://cluster.local/ns/shop/sa/frontend".to_owned(),
        vec![0, 1],
    );
    sources.insert("spiffe://other.domain/ns/x/sa/y".to_owned(), vec![2]);
    PluginConfig {
        identity: Some(Identity {
            namespace: "shop".to_owned(),
            service_account: "api".to_owned(),
        }),
        destination_port: Some(8080),
        caller_identity: CallerIdentity::ForwardedClientCert,
        http_matches: vec![
            HttpMatchSpec {
                name: "shop/routes/items".to_owned(),
                path_regex: Some("/items/[0-9]+$".to_owned()),
                methods: vec!["GET".to_owned(), "PUT".to_owned()],
                headers: vec![("x-beta".to_owned(), "true|yes".to_owned())],
            },
            HttpMatchSpec {
                name: "shop/routes/any".to_owned(),
                path_regex: None,
                methods: Vec::new(),
                headers: Vec::new(),
            },
        ],
        access: Some(AccessPolicy {
            mode: AccessMode::Audit,
            unauthenticated_ports: vec![9090, 65535],
            trust_domain: "cluster.local".to_owned(),
            sources,
            grants: vec![
                Grant {
                    traffic_target: "shop/tt".to_owned(),
                    rule: 0,
                    port: Some(8080),
                    allows: Allows::Http {
                        route_group: "shop/routes".to_owned(),
                        matches: vec![0, 1],
                    },
                },
                Grant {
                    traffic_target: "shop/tt".to_owned(),
                    rule: 1,
                    port: None,
                    allows: Allows::Tcp {
                        route: "shop/db".to_owned(),
                        ports: vec![5432],
                    },
                },
                Grant {
                    traffic_target: "shop/tt".to_owned(),
                    rule: 300,
                    port: None,
                    allows: Allows::Udp {
                        route: "shop/dns".to_owned(),
                        ports: Vec::new(),
                    },
                },
            ],
        }),
        splits: vec![
            SplitTable {
                traffic_split: "shop/canary".to_owned(),
                service: "checkout.shop".to_owned(),
                hosts: vec!["checkout".to_owned(), "checkout.shop".to_owned()],
                matches: vec![0],
                backends: vec![
                    WeightedBackend {
                        service: "checkout-v1.shop".to_owned(),
                        weight: 90,
                    },
                    WeightedBackend {
                        service: "checkout-v2.shop".to_owned(),
                        weight: u64::MAX,
                    },
                ],
                sticky: Some(StickyKey::Cookie("user".to_owned())),
            },
            SplitTable {
                traffic_split: "shop/ab".to_owned(),
                service: "web.shop".to_owned(),
                hosts: vec!["web.shop".to_owned()],
                matches: Vec::new(),
                backends: Vec::new(),
                sticky: Some(StickyKey::Header("x-user".to_owned())),
            },
        ],
        metrics: Some(MetricsConfig {
            direction: Direction::Inbound,
            trust_domain: "cluster.local".to_owned(),
            services: vec![ServiceHosts {
                service: "api.shop".to_owned(),
                hosts: vec!["api".to_owned()],
            }],
            service: Some("api.shop".to_owned()),
        }),
        ..PluginConfig::default()
    }
}

#[test]
fn every_field_survives_the_round_trip() {
    for config in [everything(), PluginConfig::default()] {
        let bytes = wire::encode(&config).unwrap();
        let bundle = wire::decode(&bytes).unwrap();
        assert_eq!(bundle.config, config);
        assert_eq!(bundle.automata.len(), config.http_matches.len());
        assert!(Engine::with_automata(&bundle.config, bundle.automata).is_ok());
    }
}

const SHOP: &str = include_str!("../../../examples/shop/smi.yaml");

#[test]
fn a_decoded_bundle_decides_as_the_configuration_it_came_from() {
    let config = weft_policy::testing::compiled("shop/api", Side::Inbound, SHOP);
    let native = Engine::new(&config).unwrap();
    let bundle = wire::decode(&wire::encode(&config).unwrap()).unwrap();
    let decoded = Engine::with_automata(&bundle.config, bundle.automata).unwrap();
    let mut allowed = 0;
    for source in [
        "spiffe://cluster.local/ns/shop/sa/frontend",
        "spiffe://cluster.local/ns/shop/sa/stranger",
    ] {
        for method in ["GET", "POST", "DELETE"] {
            for path in ["/orders/42", "/orders", "/admin", "/orders/42?x=1", "/"] {
                let request = HttpRequest {
                    source: Some(source),
                    method,
                    path,
                    port: 0,
                    headers: &Vec::<(String, String)>::new(),
                };
                let (a, b) = (native.decide_http(&request), decoded.decide_http(&request));
                assert_eq!(a, b, "{source} {method} {path}");
                allowed += usize::from(matches!(a, Decision::Allow { .. }));
            }
        }
    }
    assert!(allowed > 0, "the fixture allows something");
}

#[test]
fn the_bundle_is_less_than_half_the_json() {
    let mut manifests = String::new();
    for i in 0..200 {
        manifests.push_str(&format!(
            "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: tt-{i}, namespace: shop}}\nspec:\n  destination: {{kind: ServiceAccount, name: api, namespace: shop}}\n  sources: [{{kind: ServiceAccount, name: client-{i}, namespace: team-{}}}]\n  rules: [{{kind: HTTPRouteGroup, name: routes, matches: [item]}}]\n---\n",
            i % 20
        ));
    }
    manifests.push_str("apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: routes, namespace: shop}\nspec:\n  matches:\n  - {name: item, pathRegex: '/api/items/[0-9]+$', methods: [GET]}\n");
    let config = weft_policy::testing::compiled("shop/api", Side::Inbound, &manifests);
    let (json, bundle) = (
        config.to_json().unwrap().len(),
        wire::encode(&config).unwrap().len(),
    );
    assert!(2 * bundle < json, "{bundle} bytes against {json} of JSON");
}

#[test]
fn another_version_or_no_bundle_at_all_is_refused_saying_so() {
    let bytes = wire::encode(&everything()).unwrap();
    let other = [
        b"WEFT".as_slice(),
        &[5],
        b"0.0.9",
        &bytes[4 + 1 + WEFT_VERSION.len()..],
    ]
    .concat();
    let err = wire::decode(&other).unwrap_err();
    assert_eq!(
        err,
        WireError::OtherVersion {
            found: "0.0.9".to_owned()
        }
    );
    assert!(err.to_string().contains("compiled by weft 0.0.9"), "{err}");
    assert_eq!(
        wire::decode(br#"{"version": 1}"#).unwrap_err(),
        WireError::NotABundle
    );
}

#[test]
fn bytes_cut_short_or_damaged_are_refused_naming_a_field_and_never_panic() {
    let bytes = wire::encode(&everything()).unwrap();
    let header = 4 + 1 + WEFT_VERSION.len();
    for len in 0..bytes.len() {
        let err = wire::decode(&bytes[..len]).unwrap_err();
        if len < 4 {
            assert_eq!(err, WireError::NotABundle);
        } else if len >= header {
            // Past the header every cut is in a section, and the error names its field.
            assert!(
                matches!(&err, WireError::Malformed { field, .. } if field != "(root)"),
                "{len}: {err:?}"
            );
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(
        wire::decode(&longer)
            .unwrap_err()
            .to_string()
            .contains("after the last section")
    );
    // Every single-byte change either fails to decode or decodes to something; none panics.
    for at in 0..bytes.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[at] ^= flip;
            if let Ok(bundle) = wire::decode(&damaged) {
                let _ = Engine::with_automata(&bundle.config, bundle.automata);
            }
        }
    }
}

#[test]
fn a_regex_that_does_not_compile_is_named_when_encoding() {
    let mut config = everything();
    config.http_matches[0].headers[0].1 = "(".to_owned();
    let err = Encoder::default().encode(&config).unwrap_err();
    assert_eq!(err.field(), "http_matches[0].headers.x-beta");
}
