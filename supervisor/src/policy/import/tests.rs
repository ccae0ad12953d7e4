//! The importer's unit tests: OpenShell YAML in, moat rules and warnings out,
//! checked through moat's own matcher.
use super::*;
use crate::policy::matcher::{Compiled, Match, RequestVerdict};
use crate::policy::schema::{Access, Enforcement, Protocol, RuleMatch, Tls};

const FIXTURE: &str = include_str!("../../../../tests/fixtures/openshell-policy.yaml");

fn by_name<'a>(i: &'a Imported, name: &str) -> &'a NetPolicy {
    i.network.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no policy {name}: {:?}", i.network))
}

/// A warning about `path` (after its `origin:line: ` place, when it has one) saying `words`.
fn warned(i: &Imported, path: &str, words: &str) -> bool {
    let at = format!("{path}: ");
    i.warnings.iter().any(|w| (w.starts_with(&at) || w.contains(&format!(" {at}"))) && w.contains(words))
}

/// A warning placed at `origin:line:` about `path`, saying `words`.
fn warned_at(i: &Imported, origin: &str, line: usize, path: &str, words: &str) -> bool {
    i.warnings.iter().any(|w| w.starts_with(&format!("{origin}:{line}: {path}: ")) && w.contains(words))
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    1 + text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not in {text}"))
}

fn policy_yaml(endpoints: &str) -> String {
    let head = "version: 1\nnetwork_policies:\n  p:\n    name: p\n    binaries: [{ path: /usr/bin/node }]\n";
    format!("{head}    endpoints:\n{endpoints}")
}

#[test]
fn converts_the_fixture() {
    let i = import_yaml(FIXTURE, "openshell-policy.yaml").unwrap();
    let names: Vec<&str> = i.network.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["github-git", "github_api", "npm_registry", "brave", "local_inference", "atlassian"]);
    for p in &i.network {
        p.validate().unwrap();
    }

    let git = by_name(&i, "github-git");
    assert_eq!(git.binaries, ["/usr/bin/git", "/usr/lib/git-core/git-remote-https"]);
    assert!(git.why.contains("openshell-policy.yaml") && git.why.contains("network_policies.github_git"));
    let e = &git.endpoints[0];
    assert_eq!(
        (e.host.as_str(), e.port, e.protocol, e.tls),
        ("github.com", 443, Some(Protocol::Rest), Some(Tls::Terminate))
    );
    // GET allows HEAD too in OpenShell: one more rule says so.
    assert_eq!(e.rules.len(), 3);
    assert_eq!(e.rules[1].allow, RuleMatch { method: "HEAD".into(), path: "/**/info/refs*".into() });
    assert_eq!(e.rules[2].allow, RuleMatch { method: "POST".into(), path: "/**/git-upload-pack".into() });

    let api = &by_name(&i, "github_api").endpoints[0];
    assert_eq!((api.protocol, api.access), (Some(Protocol::Rest), Some(Access::ReadOnly)));
    // access: full without a protocol is an L4 relay; nothing is lost.
    let npm = &by_name(&i, "npm_registry").endpoints[0];
    assert_eq!((npm.protocol, npm.access, npm.tls), (None, None, None));
    // rules without a protocol become inspected, with a note.
    assert_eq!(by_name(&i, "brave").endpoints[0].protocol, Some(Protocol::Rest));
    assert!(warned(&i, "network_policies.brave.endpoints[0].protocol", "imported as protocol"));
    // ports: one endpoint per port, audit and allowed_ips carried.
    let li = &by_name(&i, "local_inference").endpoints;
    assert_eq!(li.iter().map(|e| e.port).collect::<Vec<_>>(), [11434, 8000]);
    assert!(li
        .iter()
        .all(|e| e.enforcement == Enforcement::Audit && e.allowed_ips == ["10.0.0.0/8", "192.168.0.0/16"]));
    // tls: skip with access: full is a raw tunnel: L4. A policy without `name` uses its key.
    let at = by_name(&i, "atlassian");
    // OpenShell's `*` is one label (moat's `+`), its `**` any depth.
    let hosts: Vec<_> = at.endpoints.iter().map(|e| (e.host.as_str(), e.protocol)).collect();
    assert_eq!(hosts, [("+.atlassian.net", None), ("**.jira.com", None)]);
    assert_eq!(at.binaries, ["/usr/local/bin/*"]);

    // The converted rules behave as the source meant.
    let c = Compiled::new(i.network.clone()).unwrap();
    let Match::Allowed { policy, endpoint, .. } =
        c.match_destination("/usr/lib/git-core/git-remote-https", "github.com", 443)
    else {
        panic!("git-remote-https should reach github.com")
    };
    assert_eq!(c.check_request(&policy, &endpoint, "POST", "/a/b.git/git-upload-pack"), RequestVerdict::Allow);
    assert!(matches!(
        c.check_request(&policy, &endpoint, "POST", "/a/b.git/git-receive-pack"),
        RequestVerdict::Deny(_)
    ));
    assert_eq!(
        c.match_destination("/usr/bin/curl", "api.search.brave.com", 443),
        Match::WrongBinary { policies: vec!["brave".into()] }
    );

    // Only the non-network sections were left behind.
    for section in ["filesystem_policy", "landlock", "process"] {
        assert!(warned(&i, section, "not carried over"), "{section}: {:?}", i.warnings);
    }
    assert_eq!(i.warnings.len(), 4, "{:?}", i.warnings);
}

#[test]
fn an_error_at_the_end_of_input_is_placed_inside_the_text() {
    // Found by fuzz/openshell_import: libyaml said 2:1 for a one-line text.
    let e = import_yaml("network_policies: [", "p.yaml").unwrap_err().to_string();
    assert!(e.starts_with("p.yaml:1:20: "), "{e}");
    let e = import_yaml("a: 1\nnetwork_policies: [\n", "p.yaml").unwrap_err().to_string();
    assert!(e.starts_with("p.yaml:3:1: "), "{e}");
}

#[test]
fn warnings_with_control_characters_stay_comments() {
    let i = import_yaml("network_policies:\n  p:\n    \"x\\e[31my\\a\": 1\n", "p.yaml").unwrap();
    let text = to_toml(&i);
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
    assert!(toml::from_str::<toml::Value>(&text).is_ok(), "{text}");
}

#[test]
fn toml_output_round_trips() {
    // A quote and a newline in the origin end up in every `why`: they must be escaped.
    let i = import_yaml(FIXTURE, "dir/we\"ird\n.yaml").unwrap();
    let text = to_toml(&i);
    assert!(
        text.contains(concat!(
            "rules = [\n  { allow = { method = \"GET\", path = \"/res/v1/**\" } },\n",
            "  { allow = { method = \"HEAD\", path = \"/res/v1/**\" } },\n]"
        )),
        "{text}"
    );
    assert!(text.contains(":9: filesystem_policy: not carried over"), "{text}");
    assert!(!text.contains("\n[network]\n"), "{text}");
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        network: crate::policy::network::Network,
    }
    let doc: Doc = toml::from_str(&format!("[network]\ngateway_port = 3128\n{text}")).unwrap();
    doc.network.validate().unwrap();
    assert_eq!(doc.network.policies, i.network);
    assert!(to_toml(&Imported { network: vec![], warnings: vec![] }).contains("No network rule"));
}

#[test]
fn unknown_fields_are_warned_not_dropped_silently() {
    let text = concat!(
        "version: 1\nbogus: 1\nnetwork_policies:\n  p:\n    colour: blue\n",
        "    binaries:\n      - { path: /usr/bin/node, sha: abc, harness: true }\n",
        "    endpoints:\n      - { host: a.example.com, port: 443, frobnicate: 1,\n",
        "          websocket_credential_rewrite: true, allow_encoded_slash: false }\n",
    );
    let i = import_yaml(text, "t").unwrap();
    assert_eq!(i.network.len(), 1);
    assert!(warned(&i, "bogus", "unknown field"), "{:?}", i.warnings);
    assert!(warned(&i, "network_policies.p.colour", "unknown field"));
    assert!(warned(&i, "network_policies.p.binaries[0].sha", "unknown field"));
    assert!(warned(&i, "network_policies.p.binaries[0].harness", "deprecated"));
    assert!(warned(&i, "network_policies.p.endpoints[0].frobnicate", "unknown field"));
    assert!(warned(&i, "network_policies.p.endpoints[0].websocket_credential_rewrite", "not carried over"));
    // A field at its default carries nothing, so it is not reported.
    assert!(!i.warnings.iter().any(|w| w.contains("allow_encoded_slash")));
    assert_eq!(i.warnings.len(), 6, "{:?}", i.warnings);
}

#[test]
fn filesystem_and_process_sections_are_warned() {
    let text = "version: 1\nfilesystem_policy:\n  read_write: [/]\nprocess:\n  run_as_user: root\npreset:\n  name: x\n";
    let i = import_yaml(text, "t").unwrap();
    assert!(i.network.is_empty());
    assert!(warned(&i, "filesystem_policy", "[filesystem]"), "{:?}", i.warnings);
    assert!(warned(&i, "process", "[process]"));
    assert!(warned(&i, "preset", "not carried over"));
    assert!(warned(&i, "network_policies", "absent"));
}

#[test]
fn bad_endpoints_are_dropped_with_a_warning() {
    let text = policy_yaml(concat!(
        "      - { host: \"a b\", port: 443 }\n",
        "      - { host: ok.example.com, port: 443, protocol: rest, access: read-only }\n",
        "      - { host: c.example.com, port: 443, protocol: rest,\n",
        "          rules: [{ allow: { method: \"GE T\", path: / } }] }\n",
        "      - { host: d.example.com, port: 443, protocol: rest, access: full,\n",
        "          deny_rules: [{ method: DELETE, path: /** }] }\n",
        "      - { host: e.example.com, port: 443, protocol: rest,\n",
        "          rules: [{ allow: { method: GET, path: /x, query: { q: a } } }] }\n",
        "      - { host: f.example.com, port: 443, tls: skip, rules: [{ allow: { method: GET, path: /** } }] }\n",
        "      - { host: g.example.com, port: 443, protocol: websocket, access: full }\n",
        "      - { host: h.example.com, port: 70000 }\n",
        "      - { host: i.example.com, port: 443, allowed_ips: [10.0.0.0/33] }\n",
    ));
    let i = import_yaml(&text, "t").unwrap();
    let p = by_name(&i, "p");
    assert_eq!(p.endpoints.iter().map(|e| e.host.as_str()).collect::<Vec<_>>(), ["ok.example.com"]);
    let at = |n: usize| format!("network_policies.p.endpoints[{n}]");
    assert!(warned(&i, &at(0), "host"), "{:?}", i.warnings);
    assert!(warned(&i, &format!("{}.rules[0].allow.method", at(2)), "\"GE T\""), "{:?}", i.warnings);
    assert!(warned(&i, &at(2), "none of its rules"));
    assert!(warned(&i, &at(3), "deny_rules"));
    // Its only rule used a query matcher: dropping the rule would have left an allow-all endpoint.
    assert!(warned(&i, &format!("{}.rules[0].allow.query", at(4)), "rule dropped"));
    assert!(warned(&i, &at(4), "without rules it allows everything"));
    assert!(warned(&i, &at(5), "cannot be inspected"));
    assert!(warned(&i, &at(6), "websocket"));
    assert!(warned(&i, &at(7), "70000"));
    assert!(warned(&i, &at(8), "CIDR"));
    assert!(i.warnings.iter().all(|w| !w.contains(&at(1))), "{:?}", i.warnings);
}

#[test]
fn policies_without_binaries_or_endpoints_are_dropped() {
    let text = concat!(
        "version: 1\nnetwork_policies:\n",
        "  any:\n    endpoints: [{ host: a.example.com, port: 443 }]\n",
        "  rel:\n    binaries: [{ path: bin/git }]\n    endpoints: [{ host: a.example.com, port: 443 }]\n",
        "  none:\n    binaries: [{ path: /usr/bin/git }]\n",
        "    endpoints: [{ host: \"-\", port: 443, protocol: rest, access: weird }]\n",
    );
    let i = import_yaml(text, "t").unwrap();
    assert!(i.network.is_empty(), "{:?}", i.network);
    assert!(warned(&i, "network_policies.any", "no usable binaries"), "{:?}", i.warnings);
    assert!(warned(&i, "network_policies.rel.binaries[0]", "absolute"));
    assert!(warned(&i, "network_policies.none.endpoints[0]", "weird"));
    assert!(warned(&i, "network_policies.none", "no endpoint"));
}

#[test]
fn duplicate_and_spaced_names_are_fixed_with_a_warning() {
    let text = concat!(
        "version: 1\nnetwork_policies:\n",
        "  a: { name: same, binaries: [/usr/bin/git], endpoints: [{ host: a.example.com, port: 443 }] }\n",
        "  b: { name: same, binaries: [/usr/bin/git], endpoints: [{ host: b.example.com, port: 443 }] }\n",
        "  c: { name: has space, binaries: [/usr/bin/git], endpoints: [{ host: c.example.com, port: 443 }] }\n",
    );
    let i = import_yaml(text, "t").unwrap();
    let names: Vec<&str> = i.network.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["same", "same-2", "has-space"]);
    assert_eq!(i.warnings.len(), 2, "{:?}", i.warnings);
}

#[test]
fn yaml_errors_have_line_and_column() {
    let e = import_yaml("version: 1\nnetwork_policies:\n  p: [\n", "bad.yaml").unwrap_err();
    let ImportError::Yaml { line, .. } = &e else { panic!("{e:?}") };
    assert!(*line >= 3, "{e}");
    assert!(e.to_string().starts_with("bad.yaml:"), "{e}");
    assert!(matches!(import_yaml("", "e.yaml"), Err(ImportError::Shape { .. })));
    assert!(matches!(import_yaml("- a\n", "e.yaml"), Err(ImportError::Shape { .. })));
    assert!(matches!(import_yaml("network_policies: [1]\n", "e.yaml"), Err(ImportError::Shape { .. })));
}

#[test]
fn one_label_and_any_depth_wildcards_keep_their_meaning() {
    // OpenShell: `*` stays inside one DNS label, `**` spans labels.
    let text = policy_yaml(concat!(
        "      - { host: \"*.one.example.com\", port: 443 }\n",
        "      - { host: \"**.deep.example.com\", port: 443 }\n",
    ));
    let i = import_yaml(&text, "t").unwrap();
    let hosts: Vec<&str> = by_name(&i, "p").endpoints.iter().map(|e| e.host.as_str()).collect();
    assert_eq!(hosts.len(), 2, "both endpoints are kept: {hosts:?} {:?}", i.warnings);
    let c = Compiled::new(i.network.clone()).unwrap();
    let allowed = |host: &str| matches!(c.match_destination("/usr/bin/node", host, 443), Match::Allowed { .. });
    assert!(allowed("a.one.example.com"));
    assert!(allowed("A.One.Example.COM."), "case and a final dot do not matter");
    assert!(!allowed("a.b.one.example.com"), "one label only, as in OpenShell");
    assert!(!allowed("one.example.com"));
    assert!(!allowed("xone.example.com"));
    assert!(allowed("a.deep.example.com"));
    assert!(allowed("a.b.c.deep.example.com"), "any depth");
    assert!(!allowed("deep.example.com"));
    assert!(!allowed("a.xdeep.example.com"));
    // The TOML the importer writes is read back with the same meaning.
    let back = import_round_trip(&i);
    assert_eq!(back, i.network);
    assert!(i.warnings.is_empty(), "nothing was lost: {:?}", i.warnings);
}

/// The rules `to_toml` writes, read back as a moat `[network]` section.
fn import_round_trip(i: &Imported) -> Vec<NetPolicy> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        network: crate::policy::network::Network,
    }
    let text = format!("[network]\ngateway_port = 3128\n{}", to_toml(i));
    let doc: Doc = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    doc.network.validate().unwrap();
    doc.network.policies
}

#[test]
fn lowercase_methods_keep_the_endpoint_and_match() {
    let text = policy_yaml(concat!(
        "      - host: api.example.com\n        port: 443\n        protocol: rest\n        rules:\n",
        "          - allow: { method: get, path: \"/v1/**\" }\n",
        "          - allow: { method: Post, path: /v1/items }\n",
    ));
    let i = import_yaml(&text, "t").unwrap();
    assert!(i.warnings.is_empty(), "{:?}", i.warnings);
    let c = Compiled::new(i.network.clone()).unwrap();
    let Match::Allowed { policy, endpoint, .. } = c.match_destination("/usr/bin/node", "api.example.com", 443) else {
        panic!("the endpoint is kept: {:?}", i.network)
    };
    let verdict = |m: &str, path: &str| c.check_request(&policy, &endpoint, m, path);
    assert_eq!(verdict("GET", "/v1/a/b"), RequestVerdict::Allow);
    // OpenShell lets HEAD through wherever GET is allowed.
    assert_eq!(verdict("HEAD", "/v1/a"), RequestVerdict::Allow);
    assert_eq!(verdict("POST", "/v1/items"), RequestVerdict::Allow);
    assert!(matches!(verdict("POST", "/v1/other"), RequestVerdict::Deny(_)));
    assert!(matches!(verdict("DELETE", "/v1/items"), RequestVerdict::Deny(_)));
    assert_eq!(import_round_trip(&i), i.network);
}

#[test]
fn differences_that_cannot_be_carried_are_warned_at_their_line() {
    let text = policy_yaml(concat!(
        "      - host: api.example.com\n        port: 443\n        protocol: rest\n        rules:\n",
        "          - allow: { method: GET, path: \"*\" }   # STAR\n",
        "          - allow: { method: GET, path: \"**\" }  # ANY\n",
        "      - host: 10.1.2.3        # LITERAL\n        port: 443\n",
        "      - host: db.corp.internal  # INTERNAL\n        port: 5432\n",
        "      - host: ok.internal\n        port: 443\n        allowed_ips: [10.0.0.0/8]\n",
        "      - host: db.example.com  # TCP\n        port: 5432\n        protocol: tcp\n",
    ));
    let i = import_yaml(&text, "t.yaml").unwrap();
    let eps = &by_name(&i, "p").endpoints;
    let at = |n: usize| format!("network_policies.p.endpoints[{n}]");
    // Path `*` does not cross `/` in OpenShell: it matches no request path, and the rule is dropped.
    let star = line_of(&text, "# STAR");
    assert!(
        warned_at(&i, "t.yaml", star, &format!("{}.rules[0].allow.path", at(0)), "no request path"),
        "{:?}",
        i.warnings
    );
    // `**` alone is OpenShell's "every path": moat's `/**`.
    assert_eq!(eps[0].rules.iter().map(|r| r.allow.path.as_str()).collect::<Vec<_>>(), ["/**", "/**"]);
    assert!(!i.warnings.iter().any(|w| w.contains("rules[1]")), "{:?}", i.warnings);
    // A private address OpenShell would reach (an exact host needs no allowed_ips there).
    let literal = line_of(&text, "# LITERAL");
    assert!(warned_at(&i, "t.yaml", literal, &format!("{}.host", at(1)), "allowed_ips"), "{:?}", i.warnings);
    let internal = line_of(&text, "# INTERNAL");
    assert!(warned_at(&i, "t.yaml", internal, &format!("{}.host", at(2)), "allowed_ips"), "{:?}", i.warnings);
    assert!(!warned(&i, &format!("{}.host", at(3)), "allowed_ips"), "allowed_ips given: {:?}", i.warnings);
    // protocol: tcp is OpenShell's transparent TCP: moat relays it through the gateway at L4.
    let tcp = line_of(&text, "protocol: tcp");
    assert!(warned_at(&i, "t.yaml", tcp, &format!("{}.protocol", at(4)), "tcp"), "{:?}", i.warnings);
    assert_eq!(eps.iter().map(|e| e.host.as_str()).collect::<Vec<_>>().len(), 5, "{eps:?}");
    assert!(eps[4].protocol.is_none());
    // Every warning names its line.
    assert!(i.warnings.iter().all(|w| w.starts_with("t.yaml:")), "{:?}", i.warnings);
}

#[test]
fn no_binaries_is_said_to_allow_nothing_in_openshell_either() {
    let text = "version: 1\nnetwork_policies:\n  any:\n    endpoints: [{ host: a.example.com, port: 443 }]\n";
    let i = import_yaml(text, "t").unwrap();
    assert!(i.network.is_empty());
    let w = i.warnings.iter().find(|w| w.contains("network_policies.any: ")).expect("a warning");
    assert!(w.contains("OpenShell allows nothing there either"), "{w}");
    assert!(!w.contains("every program"), "{w}");
    assert!(w.starts_with("t:3: "), "{w}");
}
