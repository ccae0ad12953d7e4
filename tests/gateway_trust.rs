//! Trust without variables, from inside real sandboxes of the agent image:
//! with `SSL_CERT_FILE` and its siblings removed, Debian's curl, python3 and
//! git still trust the gateway's CA through the system bundle; a private
//! upstream CA is trusted only where an endpoint names it (`upstream_ca`,
//! embedded at load), never through the environment of `moat run`; a bad
//! `upstream_ca` is refused at load, at the line that names it. Needs root,
//! iproute2 and the Debian mirror (to build the agent image once).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use gateway_world::*;
use std::process::Output;

const CLIENTS: &[&str] = &["/usr/bin/curl", "/usr/bin/python3*", "/usr/bin/git", "/usr/lib/git-core/git-remote-http*"];

/// A rule letting the clients reach `up.test` inspected, with `extra` lines
/// in its endpoint.
fn rules(extra: &str) -> String {
    let bins: Vec<String> = CLIENTS.iter().map(|b| format!("{b:?}")).collect();
    format!(
        "[[network.policy]]\nname = \"clients\"\nbinaries = [{}]\n[[network.policy.endpoint]]\n\
         host = \"up.test\"\nport = 443\nprotocol = \"rest\"\naccess = \"full\"\n\
         allowed_ips = [\"198.18.0.0/15\"]\n{extra}\n",
        bins.join(", ")
    )
}

/// No CA variable is set inside: every client falls back to the system paths.
const NO_VARS: &str = "unset SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO NODE_EXTRA_CA_CERTS\n";

const CLIENTS_SCRIPT: &str = r#"
env | grep -cE '^(SSL_CERT_FILE|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|GIT_SSL_CAINFO|NODE_EXTRA_CA_CERTS)=' | sed 's/^/vars=/'
curl -sS https://up.test/c1 2>&1 | tr '\n' ' ' | sed 's/^/curl=/'; echo
python3 -c "import urllib.request as u; print('py=' + u.urlopen('https://up.test/p1').read().decode().strip())" 2>&1 | tail -n1
python3 -c "import ssl; print('py_cafile=' + ssl.get_default_verify_paths().openssl_cafile)"
git clone -q https://up.test/repo.git /tmp/r 2>/tmp/ge && echo "git=$(cat /tmp/r/README)" || echo "git=fail $(tr '\n' ' ' </tmp/ge)"
n=$(wc -l < /etc/moat/ca.pem)
for f in /etc/ssl/certs/ca-certificates.crt /usr/lib/ssl/cert.pem; do
  [ "$(tail -n "$n" "$f")" = "$(cat /etc/moat/ca.pem)" ] && echo "ca_last_$f=yes" || echo "ca_last_$f=no"
done
echo "n_system=$(grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt)"
(echo x >> /etc/ssl/certs/ca-certificates.crt) 2>/dev/null && echo write=yes || echo write=no
"#;

#[test]
fn clients_trust_the_gateway_through_the_system_bundle_without_variables() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("system-bundle", &rules(""));
    let script = format!("{NO_VARS}{CLIENTS_SCRIPT}");
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", &script]);
    let r = kv(&out);
    let want = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}\n{out}");
    want("vars", "0");
    want("curl", "echo GET /c1 0");
    want("py", "echo GET /p1 0");
    want("py_cafile", "/usr/lib/ssl/cert.pem");
    want("git", "through the gateway");
    // The image's roots stay (passthrough TLS verifies real servers), the
    // sandbox CA is added last, at the path and at the link to it.
    want("ca_last_/etc/ssl/certs/ca-certificates.crt", "yes");
    want("ca_last_/usr/lib/ssl/cert.pem", "yes");
    let n: usize = r.get("n_system").and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(n > 100, "the image's own roots are kept: {n} certificates\n{out}");
    want("write", "no");
}

/// `moat` with this world's home but without the test hook that adds the
/// private upstream CA process-wide: only policy can trust it.
fn moat_no_hook(args: &[&str]) -> Output {
    moat_command(args).output().expect("run moat")
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const CLONE: &str = r#"
git clone -q https://up.test/repo.git /tmp/r 2>/tmp/ge && echo "git=$(cat /tmp/r/README)" || echo "git=fail $(tr '\n' ' ' </tmp/ge)"
curl -sS https://up.test/c2 2>&1 | tr '\n' ' ' | sed 's/^/curl=/'; echo
"#;

#[test]
fn a_private_upstream_ca_is_trusted_only_where_an_endpoint_names_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let certs = world().home.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&world().ca.pem_file, certs.join("up-ca.pem")).unwrap();
    std::fs::write(certs.join("not.pem"), "hello, not a certificate\n").unwrap();

    // Unnamed: the upstream's certificate is refused, and the refusal says
    // what would trust it.
    let p = policy("no-upstream-ca", &rules(""));
    let o = moat_no_hook(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", CLONE]);
    let out = text(&o);
    let r = kv(&out);
    assert!(r.get("git").is_some_and(|g| g.starts_with("fail") && g.contains("502")), "{out}");
    let curl = r.get("curl").cloned().unwrap_or_default();
    assert!(curl.contains("UnknownIssuer") && curl.contains("upstream_ca"), "{out}");

    // Named relative to the policy file: clone works (with no CA variable inside).
    let p = policy("upstream-ca", &rules("upstream_ca = \"certs/up-ca.pem\""));
    let script = format!("{NO_VARS}{CLONE}");
    let o = moat_no_hook(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", &script]);
    let out = text(&o);
    let r = kv(&out);
    assert_eq!(r.get("git").map(String::as_str), Some("through the gateway"), "{out}");
    assert_eq!(r.get("curl").map(String::as_str), Some("echo GET /c2 0"), "{out}");

    // A path that is not there, or a file that is not PEM certificates:
    // refused at load, at the line of the key.
    for (name, file, says) in
        [("ca-missing", "certs/missing.pem", "missing.pem"), ("ca-not-pem", "certs/not.pem", "not.pem")]
    {
        let p = policy(name, &rules(&format!("upstream_ca = {file:?}")));
        let line = std::fs::read_to_string(&p).unwrap().lines().position(|l| l.starts_with("upstream_ca")).unwrap() + 1;
        let o = moat_no_hook(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "true"]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{name}: {err}");
        assert!(err.contains(&format!("{}:{line}:", p.display())) && err.contains(says), "{name}: {err}");
    }
}
