//! Small policy files (issue 20, part 6) through the `moat` binary and real
//! sandboxes of the agent image: a file that names one endpoint runs with
//! everything else from the baseline, a typo in a small file (or in a file
//! it extends) is placed at file:line:column in the file that has it, chains
//! of `extends` load and cycles are refused, and what `moat policy show`
//! prints is accepted by `moat policy set`. Needs root, iproute2 and the
//! Debian mirror (the agent image is built once into a store under target/).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod gateway_world;
use gateway_world::*;
use std::path::PathBuf;

/// Opens one endpoint: curl to other.test:80 (the upstream's address is in
/// the private test range, so it is opted in).
const SMALL: &str = r#"[[network.policy]]
name = "curl-other"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "other.test"
port = 80
allowed_ips = ["198.18.0.0/15"]
"#;

fn file(name: &str, text: &str) -> PathBuf {
    let p = world().home.path().join(name);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

fn fails(args: &[&str]) -> String {
    let o = moat(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "moat {args:?} succeeded: {}", String::from_utf8_lossy(&o.stdout));
    err
}

/// Everything but the endpoint is the baseline's: the same user, limits,
/// read-only /usr, and every other destination refused.
const PROBE: &str = r#"
curl -sS http://other.test/small 2>&1 | sed 's/^/open=/'
curl -sS -o /dev/null -w '%{http_code}' http://up.test/other 2>/dev/null | sed 's/^/other_host=/'; echo
python3 -c "import urllib.request as u; u.urlopen('http://other.test/py')" 2>/dev/null && echo py=allowed || echo py=refused
echo "user=$(id -un)"
awk '/^Max processes/{print "nproc=" $3} /^Max open files/{print "nofile=" $4}' /proc/self/limits
touch /usr/x 2>/dev/null && echo usr=writable || echo usr=read-only
touch /sandbox/x && echo sandbox=writable
"#;

#[test]
fn a_policy_that_opens_one_endpoint_runs_with_the_rest_of_the_baseline() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let small = file("small.toml", SMALL);
    let check = ok(&["policy", "check", small.to_str().unwrap()]);
    assert!(check.contains("small.toml: valid") && check.contains("1 rule sets"), "{check}");
    let out = ok(&["run", "--rm", "--policy", small.to_str().unwrap(), "agent", "--", "sh", "-c", PROBE]);
    let r = kv(&out);
    let want = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}\n{out}");
    want("open", "echo GET /small 0");
    want("other_host", "403");
    want("py", "refused");
    want("user", "sandbox");
    want("nproc", "512");
    want("nofile", "8192");
    want("usr", "read-only");
    want("sandbox", "writable");
}

#[test]
fn a_typo_in_a_small_file_or_its_base_is_placed_in_that_file() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let typo = file("typo/typo.toml", "[process]\nrlimit_nproc = 64\nrlimit_nprocs = 1\n");
    for args in [
        vec!["policy", "check", typo.to_str().unwrap()],
        vec!["run", "--rm", "--policy", typo.to_str().unwrap(), "agent", "--", "true"],
    ] {
        let err = fails(&args);
        assert!(err.contains("typo.toml:3:1:") && err.contains("rlimit_nprocs"), "{args:?}: {err}");
    }
    // In an endpoint of a small file: the key's own line and column.
    let ep = file("typo/endpoint.toml", &SMALL.replace("port = 80", "port = 80\n  protcol = \"rest\""));
    let err = fails(&["policy", "check", ep.to_str().unwrap()]);
    assert!(err.contains("endpoint.toml:7:3:") && err.contains("protcol"), "{err}");
    // In the file a small file extends: that file, its line.
    let base = file("typo/base.toml", "# a team's base\n[filesystem]\ntmp_size = 64\n");
    let top = file("typo/top.toml", "extends = \"base.toml\"\n[process]\nrlimit_nproc = 100\n");
    let err = fails(&["policy", "check", top.to_str().unwrap()]);
    assert!(err.contains(&format!("{}:3:1:", base.display())) && err.contains("tmp_size"), "{err}");
    // A value of the wrong type, placed at the value.
    let ty = file("typo/type.toml", "[landlock]\ncompatibility = \"strict\"\n");
    let err = fails(&["policy", "check", ty.to_str().unwrap()]);
    assert!(err.contains("type.toml:2:17:"), "{err}");
}

#[test]
fn extends_chains_load_and_cycles_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    file("chain/team/base.toml", "[process]\nrlimit_nproc = 300\n[filesystem]\ntmp_size_mib = 64\n");
    file("chain/mid.toml", &format!("extends = \"team/base.toml\"\n{SMALL}"));
    let top = file("chain/project/top.toml", "extends = \"../mid.toml\"\n[process]\nrlimit_nofile = 4096\n");
    let check = ok(&["policy", "check", top.to_str().unwrap()]);
    assert!(check.contains("valid") && check.contains("1 rule sets"), "{check}");
    let out = ok(&[
        "run",
        "--rm",
        "--policy",
        top.to_str().unwrap(),
        "agent",
        "--",
        "sh",
        "-c",
        "awk '/^Max processes/{print \"nproc=\" $3} /^Max open files/{print \"nofile=\" $4}' /proc/self/limits; df -m /tmp | awk 'NR==2{print \"tmp=\" $2}'; curl -sS http://other.test/chain | sed 's/^/open=/'",
    ]);
    let r = kv(&out);
    let want = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}\n{out}");
    want("nproc", "300");
    want("nofile", "4096");
    want("tmp", "64");
    want("open", "echo GET /chain 0");

    let a = file("cycle/a.toml", "extends = \"b.toml\"\n");
    file("cycle/b.toml", "# b\nextends = \"./a.toml\"\n");
    let err = fails(&["policy", "check", a.to_str().unwrap()]);
    assert!(err.contains("b.toml:2:11:") && err.contains("cycle") && err.contains("a.toml"), "{err}");
    let me = file("cycle/me.toml", "extends = \"me.toml\"\n");
    let err = fails(&["policy", "check", me.to_str().unwrap()]);
    assert!(err.contains("me.toml:1:11:") && err.contains("cycle"), "{err}");
    let gone = file("cycle/gone.toml", "extends = \"nowhere.toml\"\n");
    let err = fails(&["policy", "check", gone.to_str().unwrap()]);
    assert!(err.contains("gone.toml:1:11:") && err.contains("nowhere.toml"), "{err}");
}

#[test]
fn policy_show_output_is_accepted_by_policy_set() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Created with a process section of its own: a file that does not name
    // [process] keeps it; one that names a different value is refused.
    let created = file("show/created.toml", &format!("[process]\nrlimit_nproc = 300\n{SMALL}"));
    let _ = moat(&["rm", "--force", "show"]);
    ok(&["run", "-d", "--name", "show", "--policy", created.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    ok(&["policy", "add-preset", "show", "github"]);
    let shown = ok(&["policy", "show", "show"]);
    let back = file("show/shown.toml", &shown);
    let set = ok(&["policy", "set", "show", back.to_str().unwrap()]);
    assert!(set.contains("network policy revision 3"), "{set}");
    let again = ok(&["policy", "show", "show"]);
    let body = |s: &str| s.lines().filter(|l| !l.starts_with("# revision")).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&again), body(&shown), "set changed what show printed");
    assert!(again.contains("github") && again.contains("curl-other"), "{again}");
    let curl = ok(&["exec", "show", "--", "curl", "-sS", "http://other.test/after-set"]);
    assert_eq!(curl, "echo GET /after-set 0\n");

    // A small file replaces the network section; the endpoint goes.
    let none = file("show/none.toml", "[network]\npresets = [\"github\"]\n");
    ok(&["policy", "set", "show", none.to_str().unwrap()]);
    let shown = ok(&["policy", "show", "show"]);
    assert!(!shown.contains("curl-other") && shown.contains("github"), "{shown}");

    let changed = file("show/changed.toml", "[process]\nrlimit_nproc = 301\n");
    let err = fails(&["policy", "set", "show", changed.to_str().unwrap()]);
    assert!(err.contains("process.rlimit_nproc") && err.contains("cannot change on a live sandbox"), "{err}");
    let port = file("show/port.toml", "[network]\ngateway_port = 3129\n");
    let err = fails(&["policy", "set", "show", port.to_str().unwrap()]);
    assert!(err.contains("network.gateway_port") && err.contains("cannot change on a live sandbox"), "{err}");
    ok(&["rm", "--force", "show"]);
}
