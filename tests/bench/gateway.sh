#!/usr/bin/env bash
# Egress gateway benchmark: moat's gateway vs a direct connection vs
# tinyproxy (Debian) to the same upstream, in one run, ratios printed.
#   - bulk: a 1 GiB download over a CONNECT tunnel (L4), MiB/s, median of RUNS;
#   - the ceiling of any relay here: the gateway's own L4 relay alone on
#     loopback vs a direct loopback download (supervisor/examples/relay_ceiling.rs);
#   - small requests (64 B body) over one keep-alive connection, N requests
#     in one curl command line: p50/p99 per-request latency and req/s, for
#     L4 (http://…:8080 through a CONNECT tunnel) and for L7 (https://…:8443:
#     direct TLS vs tinyproxy CONNECT without inspection vs moat terminating
#     TLS and checking each request);
#   - a new connection per request (CN requests with Connection: close, L4):
#     what identifying each caller costs (the connect notification judges the
#     connecting process, the gateway its holders; docs/egress.md);
#   - the operator's console (`moat term`, in tmux) attached against
#     detached: the L7 small requests' latency (console_phase below).
# The upstream is nginx in a network namespace this script makes (veth,
# 198.18.250.0/30: the gateway's SSRF guard never lets a sandbox reach
# loopback, and a policy opts 198.18.0.0/15 in), named bench.test through
# the gateway's MOAT_GATEWAY_HOSTS override. moat's figures come from curl
# inside an `agent` sandbox through the gateway at 127.0.0.1:3128, direct
# and tinyproxy figures from curl on the host (both versions are printed);
# each curl times its own transfers, so sandbox start-up is not counted.
# Needs root, iproute2, nginx-light, tinyproxy,
# openssl, curl (scripts/install-deps.sh), and the `agent` image (built from
# blueprints/agent.toml if the store lacks it).
#   RUNS=5 ROUNDS=3 N=2000 WARM=100 bash tests/bench/gateway.sh     (as root, from the repo root)
# CONSOLE_ONLY=1 runs the console phase alone, CONSOLE=0 skips it.
# MOAT=path/to/moat uses that binary instead of building the release one;
# BASELINE=FILE and OLD_CA_HOOK=1 let a binary of an older revision run it.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
N=${N:-2000}
ROUNDS=${ROUNDS:-3}
WARM=${WARM:-100}
CN=${CN:-300}
for t in ip nginx tinyproxy openssl curl unshare awk shuf; do
  command -v "$t" >/dev/null || { echo "gateway bench: $t is missing (scripts/install-deps.sh)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "gateway bench: needs root (network namespaces)" >&2; exit 2; }
[ "$N" -gt "$WARM" ] || { echo "gateway bench: N ($N) must exceed WARM ($WARM)" >&2; exit 2; }

if [ -n "${MOAT:-}" ]; then
  moat=$(realpath "$MOAT")
else
  echo "building (release)..." >&2
  cargo build --release --quiet --bin moat
  moat=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/moat
fi
[ -x "$moat" ] || { echo "gateway bench: $moat is not an executable" >&2; exit 2; }
# The ceiling of a user-space relay here: the gateway's own L4 relay on
# loopback, without sandbox or policy, against a direct download.
cargo build --release --quiet -p moat-supervisor --example relay_ceiling
ceiling=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/examples/relay_ceiling

ns=moat-gwb-$$
veth=mgb$$
host_ip=198.18.250.1
up_ip=198.18.250.2
work=$(mktemp -d /tmp/moat-gwbench.XXXXXX)
chmod 755 "$work"
tp_pid=
cleanup() {
  set +e
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  [ -n "$tp_pid" ] && kill "$tp_pid" 2>/dev/null
  ip link del "$veth" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export MOAT_HOME=$work/home

if ! "$moat" images 2>/dev/null | awk 'NR > 1 {print $1}' | grep -qx agent; then
  echo "building the agent image..." >&2
  "$moat" build blueprints/agent.toml >/dev/null
fi

# --- the upstream: nginx in its own network namespace ---------------------
ip netns add "$ns"
ip link add "$veth" type veth peer name "${veth}p"
ip link set "${veth}p" netns "$ns"
ip addr add "$host_ip/30" dev "$veth"
ip link set "$veth" up
ip -n "$ns" addr add "$up_ip/30" dev "${veth}p"
ip -n "$ns" link set "${veth}p" up
ip -n "$ns" link set lo up

# A private CA and a certificate for bench.test signed by it.
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=moat bench upstream CA" -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=bench.test" -keyout srv.key -out srv.csr 2>/dev/null
  printf 'subjectAltName=DNS:bench.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > srv.ext
  openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile srv.ext -out srv.pem 2>/dev/null
)

mkdir -p "$work/www" "$work/nginx"
truncate -s 1G "$work/www/1g"
head -c 64 /dev/zero | tr '\0' x > "$work/www/small"
chmod 644 "$work/www/1g" "$work/www/small"
cat > "$work/nginx.conf" <<EOC
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log error;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  server {
    listen $up_ip:8080;
    root $work/www;
  }
  server {
    listen $up_ip:8443 ssl;
    ssl_certificate $work/srv.pem;
    ssl_certificate_key $work/srv.key;
    root $work/www;
  }
}
EOC
ip netns exec "$ns" nginx -c "$work/nginx.conf"

# --- tinyproxy on the host's loopback, resolving bench.test like the gateway
echo "$up_ip bench.test" > "$work/hosts"
tp_port=
for p in $(shuf -i 20000-40000 -n 20); do
  (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { tp_port=$p; break; }
done
[ -n "$tp_port" ] || { echo "gateway bench: no free port for tinyproxy" >&2; exit 1; }
cat > "$work/tinyproxy.conf" <<EOC
User nobody
Group nogroup
Port $tp_port
Listen 127.0.0.1
Timeout 600
MaxClients 100
Allow 127.0.0.1
ConnectPort 8080
ConnectPort 8443
LogFile "$work/tinyproxy.log"
LogLevel Error
DisableViaHeader Yes
EOC
unshare -m sh -c "mount --bind '$work/hosts' /etc/hosts && exec tinyproxy -d -c '$work/tinyproxy.conf'" \
  >"$work/tinyproxy.out" 2>&1 &
tp_pid=$!

wait_port() { # host port what
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return; sleep 0.05; done
  echo "gateway bench: $3 did not start" >&2; cat "$work"/nginx/error.log "$work"/tinyproxy.* >&2 || true; exit 1
}
wait_port "$up_ip" 8080 nginx
wait_port "$up_ip" 8443 nginx
wait_port 127.0.0.1 "$tp_port" tinyproxy
kill -0 "$tp_pid" 2>/dev/null || { echo "gateway bench: tinyproxy exited" >&2; cat "$work"/tinyproxy.* >&2; exit 1; }

# --- moat: policy = baseline + the bench endpoints, hosts override, CA ----
# BASELINE: the baseline policy a binary of another revision accepts.
cp "${BASELINE:-policies/baseline.toml}" "$work/policy.toml"
cat >> "$work/policy.toml" <<'EOC'

[[network.policy]]
name = "bench"
why = "tests/bench/gateway.sh: the benchmark's upstream in a network namespace"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "bench.test"
port = 8080
allowed_ips = ["198.18.0.0/15"]
[[network.policy.endpoint]]
host = "bench.test"
port = 8443
protocol = "rest"
access = "full"
allowed_ips = ["198.18.0.0/15"]
EOC
# The upstream's private CA is named by the endpoint (upstream_ca, next to
# the policy file): release builds ignore the MOAT_GATEWAY_UPSTREAM_CA hook.
# OLD_CA_HOOK=1: for a binary from before upstream_ca (which reads the hook).
if [ "${OLD_CA_HOOK:-}" = 1 ]; then
  export MOAT_GATEWAY_UPSTREAM_CA=$work/ca.pem
else
  echo 'upstream_ca = "ca.pem"' >> "$work/policy.toml"
fi
export MOAT_GATEWAY_HOSTS=$work/hosts

# curl config files with N transfers of the same URL (one connection reused).
mkdir -p "$work/ws"
kfile() { # url file
  for _ in $(seq "$N"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$1"; done > "$2"
}
kfile http://bench.test:8080/small "$work/ws/l4.k"
N=$CN kfile http://bench.test:8080/small "$work/ws/conn.k"
kfile https://bench.test:8443/small "$work/ws/l7.k"
chmod -R a+rX "$work/ws"

# One sandbox per measurement (its start is not timed: curl times itself).
in_moat() { # args for curl, run inside an agent sandbox through the gateway
  "$moat" run --rm -q --policy "$work/policy.toml" --workspace "$work/ws" agent -- \
    curl -sS -x http://127.0.0.1:3128 --cacert /etc/moat/ca-bundle.pem "$@"
}

# --- the operator's console attached vs detached (issue 21) ---------------
# One detached sandbox; the L7 small requests (one audit record each, so
# some thousands of records a second) run in it through `moat exec`, each
# round once with no console and once with `moat term NAME` watching it in
# a tmux terminal at 80x24 on its Egress tab (the view that redraws with
# every record); the order alternates by round. Round 0 is discarded.
# CONSOLE_ONLY=1 runs this phase alone; CONSOLE=0 skips it.
console_phase() {
  command -v tmux >/dev/null || { echo "gateway bench: tmux is missing (scripts/install-deps.sh)" >&2; exit 2; }
  local cname=gwbc-$$ tsock fmt='%{http_code} %{size_download} %{time_total}\n' r mode
  "$moat" run -d -q --name "$cname" --policy "$work/policy.toml" --workspace "$work/ws" agent -- sleep 100000 >/dev/null
  attach() { # a tmux server of its own each time (a killed one takes a moment to go)
    tsock=moat-gwb-$$-$1
    tmux -L "$tsock" -f /dev/null new-session -d -s t -x 80 -y 24 "env MOAT_HOME=$MOAT_HOME $moat term $cname"
    for _ in $(seq 100); do
      tmux -L "$tsock" capture-pane -p -t t 2>/dev/null | grep -q "$cname .*running" && break; sleep 0.1
    done
    tmux -L "$tsock" send-keys -t t 2
  }
  detach() { tmux -L "$tsock" kill-server 2>/dev/null || true; }
  echo "console: $ROUNDS x $N L7 requests per mode, console detached and attached..." >&2
  for r in $(seq 0 "$ROUNDS"); do
    local order="detached attached"
    [ $((r % 2)) -eq 1 ] && order="attached detached"
    for mode in $order; do
      local out="$work/console.$mode"
      [ "$r" -eq 0 ] && out=/dev/null
      [ "$mode" = attached ] && attach "$r"
      "$moat" exec "$cname" -- curl -sS -x http://127.0.0.1:3128 --cacert /etc/moat/ca-bundle.pem \
        -K /sandbox/l7.k -w "$fmt" >> "$out" || { detach; echo "gateway bench: console $mode failed" >&2; exit 1; }
      [ "$mode" = attached ] && detach
    done
  done
  "$moat" rm --force "$cname" >/dev/null
  check "$work/console.detached" $((ROUNDS * N)) 64
  check "$work/console.attached" $((ROUNDS * N)) 64
  local d50 d99 drs a50 a99 ars
  read -r d50 d99 drs < <(lat "$work/console.detached")
  read -r a50 a99 ars < <(lat "$work/console.attached")
  echo "console (moat term on its Egress tab in tmux 80x24) vs none, L7 small requests in one sandbox:"
  printf '  %-22s %9s %9s %8s\n' "" "p50 ms" "p99 ms" "req/s" \
    "console detached" "$d50" "$d99" "$drs" "console attached" "$a50" "$a99" "$ars"
  echo "  records/s while attached: about $ars (one audit record per request)"
  echo "  console added p50: $(sub "$a50" "$d50") ms (target < 0.1 ms); req/s attached/detached $(div "$ars" "$drs")"
}

# One round = each path once, in turn, so that load from elsewhere on the
# machine falls on all three alike. Round 0 warms caches and is discarded.
one() { # kind path round
  local out="$work/$1.$2" fmt='%{http_code} %{size_download} %{time_total}\n' what=() via=()
  [ "$3" -eq 0 ] && out=/dev/null
  case $1 in
    bulk) what=(-o /dev/null http://bench.test:8080/1g) ;;
    l4) what=(-K "$work/ws/l4.k") ;;
    l7) what=(-K "$work/ws/l7.k") ;;
    conn) what=(-H "Connection: close" -K "$work/ws/conn.k") ;;
  esac
  # Through a proxy, http:// URLs go through a CONNECT tunnel too (L4).
  [ "$1" = l7 ] || via=(--proxytunnel)
  case $2 in
    direct) [ "$1" = l7 ] && what=(--cacert "$work/ca.pem" "${what[@]}")
      curl -sS --resolve "bench.test:8080:$up_ip" --resolve "bench.test:8443:$up_ip" "${what[@]}" -w "$fmt" ;;
    tinyproxy) [ "$1" = l7 ] && what=(--cacert "$work/ca.pem" "${what[@]}")
      curl -sS -x "http://127.0.0.1:$tp_port" "${via[@]}" "${what[@]}" -w "$fmt" ;;
    moat) case $1 in l4 | l7) what=(-K "/sandbox/$1.k") ;; conn) what=(-H "Connection: close" -K /sandbox/conn.k) ;; esac
      in_moat "${via[@]}" "${what[@]}" -w "$fmt" ;;
  esac >> "$out" || { echo "gateway bench: $1 via $2 failed (round $3)" >&2; exit 1; }
}

# Every transfer must have succeeded with the whole body.
check() { # file transfers bytes-each
  local n bad
  n=$(wc -l < "$1")
  [ "$n" -eq "$2" ] || { echo "gateway bench: $(basename "$1"): $n transfers, expected $2" >&2; exit 1; }
  bad=$(awk -v sz="$3" '$1 != 200 || $2 != sz' "$1" | head -3)
  [ -z "$bad" ] || { echo "gateway bench: $(basename "$1"): failed transfers: $bad" >&2; exit 1; }
}
median() { sort -g | awk '{a[NR]=$1} END {printf "%.1f\n", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# MiB/s of each bulk run, median.
mibs() { awk '{printf "%.1f\n", $2 / 1048576 / $3}' "$1" | median; }
# Small requests but the first WARM of each connection (set-up, handshakes),
# all rounds pooled: "p50_ms p99_ms req_per_s", req/s = requests / sum of
# their times (one connection, one request at a time).
lat() {
  awk -v w="$WARM" -v n="$N" '(NR - 1) % n >= w {print $3}' "$1" | sort -g | awk '
    {a[NR]=$1; s+=$1}
    END {
      p50 = a[int((NR + 1) * 0.50)]; p99 = a[int(NR * 0.99 + 0.999)]
      printf "%.3f %.3f %.0f\n", p50 * 1000, p99 * 1000, NR / s
    }'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

if [ "${CONSOLE_ONLY:-0}" = 1 ]; then console_phase; exit 0; fi

load0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bulk: $RUNS x 1 GiB per path (after a warm-up round)..." >&2
for r in $(seq 0 "$RUNS"); do for p in direct tinyproxy moat; do one bulk "$p" "$r"; done; done
echo "small requests: $ROUNDS x $N per path, each $N on one connection..." >&2
for r in $(seq 0 "$ROUNDS"); do for p in direct tinyproxy moat; do one l4 "$p" "$r"; one l7 "$p" "$r"; done; done
echo "new connections: $ROUNDS x $CN per path, one connection per request..." >&2
for r in $(seq 0 "$ROUNDS"); do for p in direct tinyproxy moat; do one conn "$p" "$r"; done; done

for p in direct tinyproxy moat; do
  check "$work/bulk.$p" "$RUNS" 1073741824
  check "$work/l4.$p" $((ROUNDS * N)) 64
  check "$work/l7.$p" $((ROUNDS * N)) 64
  check "$work/conn.$p" $((ROUNDS * CN)) 64
done

bd=$(mibs "$work/bulk.direct"); bt=$(mibs "$work/bulk.tinyproxy"); bm=$(mibs "$work/bulk.moat")
read -r l4d50 l4d99 l4drs < <(lat "$work/l4.direct")
read -r l4t50 l4t99 l4trs < <(lat "$work/l4.tinyproxy")
read -r l4m50 l4m99 l4mrs < <(lat "$work/l4.moat")
read -r l7d50 l7d99 l7drs < <(lat "$work/l7.direct")
read -r l7t50 l7t99 l7trs < <(lat "$work/l7.tinyproxy")
read -r l7m50 l7m99 l7mrs < <(lat "$work/l7.moat")
read -r cd50 cd99 cdrs < <(N=$CN WARM=10 lat "$work/conn.direct")
read -r ct50 ct99 ctrs < <(N=$CN WARM=10 lat "$work/conn.tinyproxy")
read -r cm50 cm99 cmrs < <(N=$CN WARM=10 lat "$work/conn.moat")
echo "relay ceiling: $RUNS x 1 GiB on loopback, direct and through the gateway's relay alone..." >&2
ceiling_out=$("$ceiling" 1024 "$RUNS")
sandbox_curl=$("$moat" run --rm -q --policy "$work/policy.toml" agent -- curl --version | head -1 | cut -d' ' -f1-2)

echo "gateway bench: upstream nginx $(nginx -v 2>&1 | cut -d/ -f2) in a netns over veth; $(nproc) CPUs" \
  "(cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo n/a));" \
  "load average at start $load0, at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  direct and tinyproxy $(tinyproxy -v | cut -d' ' -f2): host $(curl --version | head -1 | cut -d' ' -f1-2);" \
  "moat: $sandbox_curl inside an agent sandbox via the gateway"
echo "bulk, 1 GiB over a CONNECT tunnel (L4), median of $RUNS (MiB/s):"
printf '  %-10s %8s\n' direct "$bd" tinyproxy "$bt" moat "$bm"
echo "  moat/direct $(div "$bm" "$bd")  moat/tinyproxy $(div "$bm" "$bt")  (targets: >= 0.9, > 1)"
echo "small requests (64 B): $ROUNDS connections x $N requests, one at a time, first $WARM of each dropped:"
printf '  %-22s %9s %9s %8s\n' "" "p50 ms" "p99 ms" "req/s"
printf '  %-22s %9s %9s %8s\n' \
  "L4 direct" "$l4d50" "$l4d99" "$l4drs" \
  "L4 tinyproxy CONNECT" "$l4t50" "$l4t99" "$l4trs" \
  "L4 moat CONNECT" "$l4m50" "$l4m99" "$l4mrs" \
  "L7 direct TLS" "$l7d50" "$l7d99" "$l7drs" \
  "L7 tinyproxy CONNECT" "$l7t50" "$l7t99" "$l7trs" \
  "L7 moat TLS-terminated" "$l7m50" "$l7m99" "$l7mrs" \
  "L4 new conn. direct" "$cd50" "$cd99" "$cdrs" \
  "L4 new conn. tinyproxy" "$ct50" "$ct99" "$ctrs" \
  "L4 new conn. moat" "$cm50" "$cm99" "$cmrs"
echo "  L4 moat added p50 vs direct: $(sub "$l4m50" "$l4d50") ms; vs tinyproxy: $(sub "$l4m50" "$l4t50") ms"
echo "  new connection, moat added p50 vs tinyproxy: $(sub "$cm50" "$ct50") ms (the caller's identification)"
echo "  L7 moat added p50 vs direct: $(sub "$l7m50" "$l7d50") ms (target < 1 ms); vs tinyproxy: $(sub "$l7m50" "$l7t50") ms"
echo "  req/s moat/direct: L4 $(div "$l4mrs" "$l4drs"), L7 $(div "$l7mrs" "$l7drs");" \
  "moat/tinyproxy: L4 $(div "$l4mrs" "$l4trs"), L7 $(div "$l7mrs" "$l7trs")"
echo "$ceiling_out" | sed '1s/^/ceiling, no sandbox or policy: /'
[ "${CONSOLE:-1}" = 1 ] && console_phase
exit 0
