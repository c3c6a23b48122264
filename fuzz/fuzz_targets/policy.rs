//! Fuzz target over the whole policy pipeline: arbitrary bytes as YAML manifests (parse,
//! validate, compile for both sides, build the engine, decide) and as a plugin configuration
//! (parse, build the engine, decide). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_policy::bundle::Identity;
use weft_policy::compile::{Options, Side, compile};
use weft_policy::config::PluginConfig;
use weft_policy::engine::{Engine, HttpRequest};

fn exercise(engine: &Engine) {
    let headers = vec![("x-role".to_owned(), "ops".to_owned())];
    for source in [None, Some("spiffe://cluster.local/ns/shop/sa/frontend")] {
        let request = HttpRequest { source, method: "GET", path: "/api/v1?q", port: 8080, headers: &headers };
        let _ = engine.decide_http(&request);
        let _ = engine.decide_tcp(source, 5432);
        let _ = engine.route("web.shop:80", &request, 12345);
    }
}

fuzz_target!(|data: &[u8]| {
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
            exercise(&engine);
        }
    }
});
