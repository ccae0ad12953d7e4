#!/usr/bin/env bash
# Transparent egress vs proxy mode (issue 20 part 1), in one run, ratios
# printed. One detached `agent` sandbox; curl inside it reaches nginx (in a
# network namespace this script makes, 198.18.251.0/30, named bench.test
# through MOAT_GATEWAY_HOSTS) either through the proxy (-x, a CONNECT
# tunnel: L4) or with no proxy at all (--noproxy '*': the sandbox's DNS
# gives bench.test a reserved address, the gateway takes the connection on
# port 8080 and decides it as CONNECT bench.test:8080, L4). Rounds alternate
# the order of the two modes; round 0 is discarded.
#   - bulk: a BULK_MIB MiB download, MiB/s, median of RUNS;
#   - small requests (64 B) over one keep-alive connection, N per curl:
#     p50/p99 latency and req/s (the first WARM of each connection dropped);
#   - a new connection per request (CN requests, Connection: close): what
#     each mode costs per connection (transparent: a DNS answer, the peek at
#     the request head, the same identification and decision).
# Needs root, iproute2, nginx-light, curl (scripts/install-deps.sh) and the
# `agent` image (built from blueprints/agent.toml if the store lacks it).
#   RUNS=5 ROUNDS=3 N=2000 WARM=100 CN=300 BULK_MIB=512 bash tests/bench/transparent.sh
# MOAT=path/to/moat uses that binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
ROUNDS=${ROUNDS:-3}
N=${N:-2000}
WARM=${WARM:-100}
CN=${CN:-300}
BULK_MIB=${BULK_MIB:-512}
for t in ip nginx curl awk; do
  command -v "$t" >/dev/null || { echo "transparent bench: $t is missing (scripts/install-deps.sh)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "transparent bench: needs root (network namespaces)" >&2; exit 2; }
[ "$N" -gt "$WARM" ] || { echo "transparent bench: N ($N) must exceed WARM ($WARM)" >&2; exit 2; }
if [ -n "${MOAT:-}" ]; then
  moat=$(realpath "$MOAT")
else
  echo "building (release)..." >&2
  cargo build --release --quiet --bin moat
  moat=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/moat
fi

ns=moat-tpb-$$
veth=mtb$$
host_ip=198.18.251.1
up_ip=198.18.251.2
work=$(mktemp -d /tmp/moat-tpbench.XXXXXX)
chmod 755 "$work"
name=tpb-$$
cleanup() {
  set +e
  "$moat" rm --force "$name" >/dev/null 2>&1
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
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

ip netns add "$ns"
ip link add "$veth" type veth peer name "${veth}p"
ip link set "${veth}p" netns "$ns"
ip addr add "$host_ip/30" dev "$veth"
ip link set "$veth" up
ip -n "$ns" addr add "$up_ip/30" dev "${veth}p"
ip -n "$ns" link set "${veth}p" up
ip -n "$ns" link set lo up
mkdir -p "$work/www" "$work/nginx"
truncate -s "${BULK_MIB}M" "$work/www/bulk"
head -c 64 /dev/zero | tr '\0' x > "$work/www/small"
chmod 644 "$work/www/bulk" "$work/www/small"
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
  server { listen $up_ip:8080; root $work/www; }
}
EOC
ip netns exec "$ns" nginx -c "$work/nginx.conf"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/$up_ip/8080") 2>/dev/null && break; sleep 0.05; done
echo "$up_ip bench.test" > "$work/hosts"
export MOAT_GATEWAY_HOSTS=$work/hosts

cp policies/baseline.toml "$work/policy.toml"
cat >> "$work/policy.toml" <<'EOC'

[[network.policy]]
name = "bench"
why = "tests/bench/transparent.sh: the benchmark's upstream in a network namespace"
binaries = ["/usr/bin/curl"]
[[network.policy.endpoint]]
host = "bench.test"
port = 8080
allowed_ips = ["198.18.0.0/15"]
EOC
mkdir -p "$work/ws"
kfile() { for _ in $(seq "$1"); do printf 'url = "http://bench.test:8080/small"\noutput = "/dev/null"\n'; done > "$2"; }
kfile "$N" "$work/ws/small.k"
kfile "$CN" "$work/ws/conn.k"
chmod -R a+rX "$work/ws"
"$moat" run -d -q --name "$name" --policy "$work/policy.toml" --workspace "$work/ws" agent -- sleep 100000 >/dev/null

one() { # kind mode round
  local out="$work/$1.$2" fmt='%{http_code} %{size_download} %{time_total}\n' what=() via=()
  [ "$3" -eq 0 ] && out=/dev/null
  case $1 in
    bulk) what=(-o /dev/null http://bench.test:8080/bulk) ;;
    small) what=(-K /sandbox/small.k) ;;
    conn) what=(-H "Connection: close" -K /sandbox/conn.k) ;;
  esac
  case $2 in
    proxy) via=(-x http://127.0.0.1:3128 --proxytunnel) ;;
    transparent) via=(--noproxy '*') ;;
  esac
  "$moat" exec "$name" -- env -u HTTP_PROXY -u http_proxy curl -sS "${via[@]}" "${what[@]}" -w "$fmt" >> "$out" \
    || { echo "transparent bench: $1 via $2 failed (round $3)" >&2; exit 1; }
}
check() { # file transfers bytes-each
  local n bad
  n=$(wc -l < "$1")
  [ "$n" -eq "$2" ] || { echo "transparent bench: $(basename "$1"): $n transfers, expected $2" >&2; exit 1; }
  bad=$(awk -v sz="$3" '$1 != 200 || $2 != sz' "$1" | head -3)
  [ -z "$bad" ] || { echo "transparent bench: $(basename "$1"): failed transfers: $bad" >&2; exit 1; }
}
median() { sort -g | awk '{a[NR]=$1} END {printf "%.1f\n", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mibs() { awk '{printf "%.1f\n", $2 / 1048576 / $3}' "$1" | median; }
lat() { # file per-connection warm-up
  awk -v w="$2" -v n="$3" '(NR - 1) % n >= w {print $3}' "$1" | sort -g | awk '
    {a[NR]=$1; s+=$1}
    END { p50 = a[int((NR + 1) * 0.50)]; p99 = a[int(NR * 0.99 + 0.999)]; printf "%.3f %.3f %.0f\n", p50 * 1000, p99 * 1000, NR / s }'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

load0=$(cut -d' ' -f1-3 /proc/loadavg)
order() { [ $(($1 % 2)) -eq 0 ] && echo "proxy transparent" || echo "transparent proxy"; }
echo "bulk: $RUNS x $BULK_MIB MiB per mode..." >&2
for r in $(seq 0 "$RUNS"); do for m in $(order "$r"); do one bulk "$m" "$r"; done; done
echo "small requests: $ROUNDS x $N per mode on one connection; $ROUNDS x $CN new connections..." >&2
for r in $(seq 0 "$ROUNDS"); do for m in $(order "$r"); do one small "$m" "$r"; one conn "$m" "$r"; done; done
for m in proxy transparent; do
  check "$work/bulk.$m" "$RUNS" $((BULK_MIB << 20))
  check "$work/small.$m" $((ROUNDS * N)) 64
  check "$work/conn.$m" $((ROUNDS * CN)) 64
done
bp=$(mibs "$work/bulk.proxy"); bt=$(mibs "$work/bulk.transparent")
read -r sp50 sp99 sprs < <(lat "$work/small.proxy" "$WARM" "$N")
read -r st50 st99 strs < <(lat "$work/small.transparent" "$WARM" "$N")
read -r cp50 cp99 cprs < <(lat "$work/conn.proxy" 0 "$CN")
read -r ct50 ct99 ctrs < <(lat "$work/conn.transparent" 0 "$CN")
echo "moat $("$moat" --version 2>/dev/null | head -1); $(curl --version | head -1 | cut -d' ' -f1-2); load before: $load0"
echo "bulk ($BULK_MIB MiB, L4, median of $RUNS): proxy $bp MiB/s, transparent $bt MiB/s, transparent/proxy $(div "$bt" "$bp")"
printf '%-34s %9s %9s %8s\n' "" "p50 ms" "p99 ms" "req/s" \
  "small, keep-alive: proxy" "$sp50" "$sp99" "$sprs" \
  "small, keep-alive: transparent" "$st50" "$st99" "$strs" \
  "new connection each: proxy" "$cp50" "$cp99" "$cprs" \
  "new connection each: transparent" "$ct50" "$ct99" "$ctrs"
echo "p50 transparent/proxy: keep-alive $(div "$st50" "$sp50"), new connection $(div "$ct50" "$cp50")"
