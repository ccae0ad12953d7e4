//! Approval scopes through the gateway, in process: a refused destination
//! approved with a request scope lets exactly that method and path glob
//! through an inspected (TLS-terminated) tunnel and refuses the rest; a
//! read-only scope lets reads and refuses writes; a request scope whose
//! path was typed with glob characters escaped (as the console does for a
//! path as seen) allows that literal path only. The caller is this test
//! binary, as in gateway_engine.rs.
mod gateway_common;

use gateway_common::engine::{request, tls, Gw};
use moat_supervisor::gateway::control::Request;
use moat_supervisor::gateway::revisions::glob_literal;
use moat_supervisor::gateway::scope::Scope;
use moat_supervisor::policy::schema::Access;

/// Refuses up.test:443 once, approves it with `scope`; returns the gateway.
fn approved(scope: Scope) -> Gw {
    let g = Gw::start("");
    let (_s, status, _) = g.tunnel("up.test:443");
    assert_eq!(status, 403);
    let v = g.control(&Request::Approvals).unwrap();
    let id = v["pending"][0]["id"].as_str().unwrap().to_string();
    let v = g.control(&Request::Approve { id, allowed_ips: vec!["198.18.0.0/15".into()], scope }).unwrap();
    assert_eq!(v["rule"]["endpoint"][0]["protocol"], "rest", "{v}");
    g
}

/// Status of each (method, path), each on an inspected connection of its
/// own (a refusal closes its connection).
fn statuses(g: &Gw, reqs: &[(&str, &str)]) -> Vec<u16> {
    reqs.iter()
        .map(|(m, p)| {
            let (s, status, _) = g.tunnel("up.test:443");
            assert_eq!(status, 200);
            s.set_nodelay(true).unwrap();
            let mut t = tls(s, "up.test", g.client_tls());
            request(&mut t, m, "up.test", p, b"").0
        })
        .collect()
}

#[test]
fn a_request_scope_allows_that_method_and_path_only() {
    let g = approved(Scope::Request { method: "GET".into(), path: "/repos/*/issues".into() });
    let got = statuses(
        &g,
        &[("GET", "/repos/moat/issues"), ("GET", "/repos/moat/pulls"), ("POST", "/repos/moat/issues"), ("GET", "/")],
    );
    assert_eq!(got, [200, 403, 403, 403]);
}

#[test]
fn a_read_only_scope_allows_reads_and_refuses_writes() {
    let g = approved(Scope::Inspected { access: Access::ReadOnly });
    assert_eq!(
        statuses(&g, &[("GET", "/a"), ("OPTIONS", "/b"), ("POST", "/a"), ("DELETE", "/a")]),
        [200, 200, 403, 403]
    );
}

#[test]
fn a_path_as_seen_with_glob_characters_allows_only_itself() {
    let g = approved(Scope::Request { method: "GET".into(), path: glob_literal("/**") });
    assert_eq!(
        statuses(&g, &[("GET", "/other"), ("GET", "/a/b"), ("GET", "/**")]),
        [403, 403, 200],
        "`/**` as seen is itself"
    );
}
