//! Attacks on the operator and on the host itself, each performed from inside
//! a real sandbox of the agent image (issue 17): a copy of python at a path
//! full of backspaces that would render as `/usr/bin/git` in `moat
//! approvals` (and a swap of the approved binary afterwards), and a name that
//! resolves to one of the host's own interface addresses. Needs root,
//! iproute2 and the Debian mirror.
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;
mod gateway_world;
use gateway_world::*;

use std::io::Write;

/// Characters a terminal acts on instead of showing: C0 controls (but the
/// newline that ends each line), DEL, C1 controls, bidi overrides and other
/// Unicode format characters.
fn invisible(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

fn assert_visible(what: &str, out: &str) {
    let bad: Vec<String> = out.chars().filter(|&c| invisible(c)).map(|c| format!("U+{:04X}", c as u32)).collect();
    assert!(
        bad.is_empty(),
        "{what} carries characters a terminal acts on ({}):\n{}",
        bad.join(" "),
        out.escape_debug()
    );
}

/// The request the fake git makes: prints `status=N`, then the body.
const REQUEST_PY: &str = r#"
import sys, urllib.request as u, urllib.error as e
try:
    r = u.urlopen('http://other.test/' + sys.argv[1]); print('status=%d' % r.status); print(r.read().decode())
except e.HTTPError as x:
    print('status=%d' % x.code); print(x.read().decode())
"#;

/// The hostile agent's set-up: python copied to `/tmp/\b\b\b\b\b/usr/bin/git`
/// (five backspaces eat `/tmp/` on a terminal), plus a request helper.
const SETUP: &str = r#"
d="$(printf '/tmp/\b\b\b\b\b')/usr/bin"
mkdir -p "$d" && cp /usr/bin/python3 "$d/git"
cat > /tmp/req.py
sha256sum "$d/git" | cut -d' ' -f1 | sed 's/^/fake_sha=/'
sha256sum "$(readlink -f /bin/sh)" | cut -d' ' -f1 | sed 's/^/sh_sha=/'
echo "sh_path=$(readlink -f /bin/sh)"
"#;

/// Runs the fake git under `sh` (so the chain has an ancestor) with `arg`.
fn fake_git(name: &str, arg: &str) -> String {
    let script = format!("\"$(printf '/tmp/\\b\\b\\b\\b\\b')/usr/bin/git\" /tmp/req.py {arg}; true");
    ok(&["exec", name, "--", "sh", "-c", &script])
}

fn exec_stdin(name: &str, script: &str, input: &str) -> String {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["exec", "-i", name, "--", "sh", "-c", script])
        .env("MOAT_HOME", world().home.path().join("home"))
        .env("MOAT_RUN_DIR", world().home.path().join("run"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run moat exec");
    c.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let o = c.wait_with_output().expect("moat exec");
    assert!(o.status.success(), "moat exec: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_path_of_backspaces_is_shown_as_it_is_and_the_approval_pins_the_binary() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = policy("deceive-empty", "");
    let _ = moat(&["rm", "--force", "deceive"]);
    ok(&["run", "-d", "--name", "deceive", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let facts = kv(&exec_stdin("deceive", SETUP, REQUEST_PY));
    let fake_sha = facts.get("fake_sha").expect("sha256 of the fake git").clone();
    let sh_sha = facts.get("sh_sha").expect("sha256 of sh").clone();
    let sh_path = facts.get("sh_path").expect("path of sh").clone();

    let refused = fake_git("deceive", "first");
    assert!(refused.contains("status=403"), "the unlisted request is refused: {refused}");
    let id = refused
        .split("approval id: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("the refusal names an approval id: {refused}"))
        .to_string();

    // What the operator sees: every control character visibly escaped, the
    // binary's hash and the chain that started it.
    let list = ok(&["approvals", "deceive"]);
    assert_visible("moat approvals", &list);
    assert!(list.contains(r"/tmp/\u{8}\u{8}\u{8}\u{8}\u{8}/usr/bin/git"), "the real path, escaped:\n{list}");
    assert!(list.contains(&fake_sha), "the binary's sha256 is shown:\n{list}");
    assert!(list.contains(&sh_path) && list.contains(&sh_sha), "the ancestor chain is shown:\n{list}");
    let events = ok(&["events", "deceive"]);
    assert_visible("moat events", &events);
    assert!(events.contains(r"/tmp/\u{8}\u{8}\u{8}\u{8}\u{8}/usr/bin/git"), "{events}");
    let json = ok(&["approvals", "deceive", "--json"]);
    assert_visible("moat approvals --json", &json);

    ok(&["approve", "deceive", &id, "--allowed-ip", "198.18.0.0/15"]);
    let show = ok(&["policy", "show", "deceive"]);
    assert_visible("moat policy show", &show);
    assert!(show.contains(&format!("sha256 = [\"{fake_sha}\"]")), "the approval pins the hash:\n{show}");
    let allowed = fake_git("deceive", "second");
    assert!(allowed.contains("status=200") && allowed.contains("echo GET /second"), "approved: {allowed}");

    // The agent swaps the approved binary for another program at the same path.
    let swap = "d=\"$(printf '/tmp/\\b\\b\\b\\b\\b')/usr/bin\"; cp /usr/bin/python3 /tmp/next && \
                printf 'x' >> /tmp/next && mv /tmp/next \"$d/git\" && echo swapped";
    assert!(ok(&["exec", "deceive", "--", "sh", "-c", swap]).contains("swapped"));
    let after = fake_git("deceive", "third");
    assert!(after.contains("status=403"), "a swapped binary is refused: {after}");
    ok(&["rm", "--force", "deceive"]);
}

/// A plain-HTTP echo server on the host side of the test veth: an address
/// of one of the host's own interfaces (made by this test's namespace).
fn host_service() -> (String, u16) {
    static S: std::sync::OnceLock<(String, u16)> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let ip = world().net.host_ip;
        let l = std::net::TcpListener::bind((ip, 0)).expect("listen on the host side of the veth");
        let port = l.local_addr().expect("local addr").port();
        let _up = Upstream::serve(l, None, None);
        let mut f = std::fs::OpenOptions::new().append(true).open(&world().hosts).expect("hosts file");
        writeln!(f, "{ip} host-self.test").expect("hosts entry");
        (ip.to_string(), port)
    })
    .clone()
}

fn curl_host_service(name: &str, allowed_ips: &str) -> String {
    let (_, port) = host_service();
    let rules = format!(
        "[[network.policy]]\nname = \"self\"\nbinaries = [\"/usr/bin/curl\"]\n\
         [[network.policy.endpoint]]\nhost = \"host-self.test\"\nport = {port}\nallowed_ips = [{allowed_ips}]\n"
    );
    let p = policy(name, &rules);
    let url = format!("http://host-self.test:{port}/on-the-host");
    let script = format!("curl -s -w '\\nhttp=%{{http_code}}\\n' {url}");
    ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", &script])
}

#[test]
fn a_name_for_the_hosts_own_address_is_refused_unless_allowed_ips_names_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (ip, _) = host_service();
    // The rule lists the name and opens the range the address lies in, but
    // does not name the host's address: refused.
    let out = curl_host_service("host-range", "\"198.18.0.0/15\"");
    assert!(out.contains("http=403") && !out.contains("echo GET"), "the host's own address is refused:\n{out}");
    assert!(out.contains("host's own"), "the refusal says why:\n{out}");
    // Named in allowed_ips: reachable.
    let out = curl_host_service("host-named", &format!("\"{ip}/32\""));
    assert!(out.contains("echo GET /on-the-host") && out.contains("http=200"), "allowed when named:\n{out}");
}

/// The name of the host-side veth that carries `ip` (the test's own).
fn dev_of(ip: std::net::Ipv4Addr) -> String {
    let o = std::process::Command::new("ip").args(["-o", "-4", "addr", "show", "to", &format!("{ip}/32")]).output();
    let out = String::from_utf8_lossy(&o.expect("ip addr show").stdout).into_owned();
    out.split_whitespace().nth(1).unwrap_or_else(|| panic!("no interface holds {ip}: {out}")).to_string()
}

#[test]
fn an_address_the_host_gains_while_the_sandbox_runs_is_refused_at_once() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_, port) = host_service();
    // 198.19.254.0/24: inside the range the rule opens, never handed out by
    // the test namespaces (they take /30s from the start of 198.18.0.0/15).
    let used = String::from_utf8_lossy(
        &std::process::Command::new("ip").args(["-o", "-4", "addr"]).output().expect("ip addr").stdout,
    )
    .into_owned();
    let late = (1..255u8)
        .map(|n| std::net::Ipv4Addr::new(198, 19, 254, n.wrapping_add((std::process::id() % 200) as u8).max(1)))
        .find(|a| !used.contains(&format!(" {a}/")))
        .expect("a free address in 198.19.254.0/24");
    let mut f = std::fs::OpenOptions::new().append(true).open(&world().hosts).expect("hosts file");
    writeln!(f, "{late} host-late.test").expect("hosts entry");
    drop(f);
    let rules = format!(
        "[[network.policy]]\nname = \"self\"\nbinaries = [\"/usr/bin/curl\"]\n\
         [[network.policy.endpoint]]\nhost = \"host-self.test\"\nport = {port}\nallowed_ips = [\"198.18.0.0/15\"]\n\
         [[network.policy.endpoint]]\nhost = \"host-late.test\"\nport = {port}\nallowed_ips = [\"198.18.0.0/15\"]\n"
    );
    let p = policy("host-late", &rules);
    let _ = moat(&["rm", "--force", "late"]);
    ok(&["run", "-d", "--name", "late", "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
    let curl = |name: &str| {
        let url = format!("http://{name}:{port}/late");
        ok(&["exec", "late", "--", "curl", "-s", "-m", "20", "-w", "\nhttp=%{http_code}\n", &url])
    };
    // The gateway reads the host's addresses once (and caches them).
    let first = curl("host-self.test");
    assert!(first.contains("http=403"), "{first}");
    // Then the host gains an address, and a service listens on it.
    let dev = dev_of(world().net.host_ip);
    let added = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{late}/32"), "dev", &dev])
        .status()
        .expect("ip addr add");
    assert!(added.success(), "ip addr add {late}/32 dev {dev}");
    let l = std::net::TcpListener::bind((late, port)).expect("listen on the new address");
    let _up = Upstream::serve(l, None, None);
    let out = curl("host-late.test");
    let _ = std::process::Command::new("ip").args(["addr", "del", &format!("{late}/32"), "dev", &dev]).status();
    ok(&["rm", "--force", "late"]);
    assert!(out.contains("http=403") && out.contains("host's own"), "the new address is the host's:\n{out}");
}
