//! Fuzz target over the whole policy pipeline: arbitrary bytes as YAML manifests (parse,
//! validate, compile for both sides, build the engine, decide), as a plugin configuration
//! (parse, build the engine, decide) and as a compiled bundle (decode, automata checked, build
//! the engine, decide; also behind a valid header, so the sections are reached). Nothing may
//! panic, and a compiled configuration decides the same after a trip through the bundle.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_policy::bundle::Identity;
use weft_policy::compile::{Options, Side, compile};
use weft_policy::config::PluginConfig;
use weft_policy::engine::{Engine, HttpRequest};
use weft_policy::wire;

/// Every decision of `engine` on a few requests, as text to compare.
fn exercise(engine: &Engine) -> String {
    let headers = vec![("x-role".to_owned(), "ops".to_owned())];
    let mut seen = String::new();
    for source in [None, Some("spiffe://cluster.local/ns/shop/sa/frontend")] {
        for path in ["/api/v1?q", "/orders/42", "/x/../admin"] {
            let request = HttpRequest { source, method: "GET", path, port: 8080, headers: &headers };
            seen.push_str(&format!("{:?}", engine.decide_http(&request)));
            seen.push_str(&format!("{:?}", engine.route("web.shop:80", &request, 12345)));
        }
        seen.push_str(&format!("{:?}", engine.decide_tcp(source, 5432)));
    }
    seen
}

fn decode_and_decide(bytes: &[u8]) {
    if let Ok(bundle) = wire::decode(bytes)
        && let Ok(engine) = Engine::with_automata(&bundle.config, bundle.automata)
    {
        exercise(&engine);
    }
}

fuzz_target!(|data: &[u8]| {
    decode_and_decide(data);
    let mut behind_header = wire::MAGIC.to_vec();
    behind_header.push(wire::WEFT_VERSION.len() as u8);
    behind_header.extend_from_slice(wire::WEFT_VERSION.as_bytes());
    behind_header.extend_from_slice(data);
    decode_and_decide(&behind_header);
    if let Ok(config) = PluginConfig::from_json(data)
        && let Ok(engine) = Engine::new(&config)
    {
        exercise(&engine);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (catalog, diagnostics) = weft_policy::check([("fuzz.yaml", text)]);
    let identity = Identity { namespace: "shop".into(), service_account: "api".into() };
    for side in [Side::Inbound, Side::Outbound] {
        if let Ok(config) = compile(&catalog, &diagnostics, &identity, side, &Options::default()) {
            let engine = Engine::new(&config).expect("a compiled configuration always builds an engine");
            let bundle = wire::decode(&wire::encode(&config).expect("a compiled configuration always encodes"))
                .expect("an encoded bundle always decodes");
            assert_eq!(bundle.config, config, "the bundle changed the configuration");
            let decoded = Engine::with_automata(&bundle.config, bundle.automata)
                .expect("a decoded bundle always builds an engine");
            assert_eq!(exercise(&engine), exercise(&decoded), "the bundle decides otherwise");
        }
    }
});
