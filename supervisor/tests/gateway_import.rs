//! An imported OpenShell policy means in the gateway what it meant in
//! OpenShell: `*.d` one label, `**.d` any depth, a lowercase method allows
//! that method; loaded by a live policy change (the hot-reload path), with
//! the caller identified through /proc like any sandbox program.
mod gateway_common;

use gateway_common::engine::{self, me, request, tls, Gw};
use moat_supervisor::gateway::control::Request;
use moat_supervisor::policy::import;
use moat_supervisor::policy::network::Network;
use std::io::{Read, Write};

/// The status of a HEAD request (its response has a length but no body).
fn head_status(s: &mut (impl Read + Write), path: &str) -> u16 {
    write!(s, "HEAD {path} HTTP/1.1\r\nHost: up.test\r\n\r\n").unwrap();
    s.flush().unwrap();
    let (mut got, mut b) = (Vec::new(), [0u8; 1]);
    while !got.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
        got.push(b[0]);
    }
    let text = String::from_utf8_lossy(&got);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{text}"))
}

/// The OpenShell YAML imported and read back as moat's `[network]` section.
fn imported(yaml: &str) -> Network {
    let i = import::import_yaml(&yaml.replace("{me}", &me()), "t.yaml").unwrap();
    #[derive(serde::Deserialize)]
    struct Doc {
        network: Network,
    }
    let text = format!("[network]\ngateway_port = 3128\n{}", import::to_toml(&i));
    let d: Doc = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    d.network.validate().unwrap();
    d.network
}

const YAML: &str = r#"
version: 1
network_policies:
  p:
    binaries: [{ path: "{me}" }]
    endpoints:
      - { host: "*.up.test", port: 443, allowed_ips: [198.18.0.0/15] }
      - { host: "**.up.test", port: 8443, allowed_ips: [198.18.0.0/15] }
      - host: up.test
        port: 443
        protocol: rest
        allowed_ips: [198.18.0.0/15]
        rules:
          - allow: { method: get, path: "/v1/**" }
"#;

#[test]
fn an_imported_policy_keeps_its_wildcards_and_methods_in_the_gateway() {
    let g = Gw::start("");
    assert_eq!(g.tunnel("a.up.test:443").1, 403, "nothing is allowed before the change");
    let v = g.control(&Request::SetNetwork { network: Box::new(imported(YAML)), why: "import".into() }).unwrap();
    assert_eq!(v["revision"], 2);

    // OpenShell's `*.up.test`: one label below up.test, not two.
    assert_eq!(g.tunnel("a.up.test:443").1, 200);
    let (_s, status, head) = g.tunnel("a.b.up.test:443");
    assert_eq!(status, 403, "{head}");
    // `**.up.test`: any depth.
    assert_eq!(g.tunnel("a.up.test:8443").1, 200);
    assert_eq!(g.tunnel("a.b.up.test:8443").1, 200);

    // `method: get` is GET (and HEAD, as in OpenShell), nothing else.
    let (s, status, _) = g.tunnel("up.test:443");
    assert_eq!(status, 200);
    let mut t = tls(s, "up.test", g.client_tls());
    assert_eq!(request(&mut t, "GET", "up.test", "/v1/models", b"").0, 200);
    assert_eq!(head_status(&mut t, "/v1/models"), 200);
    let (code, body) = request(&mut t, "POST", "up.test", "/v1/models", b"x");
    assert_eq!(code, 403, "{body}");
    assert!(engine::ups().https.seen().iter().all(|s| s.method != "POST" || s.path != "/v1/models"));
}
