#!/usr/bin/env bash
# Inference gateway benchmark: the latency moat's gateway adds to a model
# call, against the same client talking straight to the same upstream, in one
# run. Two measurements, N requests each over one keep-alive connection
# (after WARM unmeasured ones):
#   - full: a small non-streamed chat completion, send to last byte;
#   - ttfb: a streamed completion (SSE), send to the first body byte.
# The upstream is a tiny OpenAI-shaped server (Python asyncio) on the host's
# loopback: the inference route is the operator's choice and is not subject
# to the egress SSRF guard, so "the same loopback upstream" serves both
# paths. Direct: the client on the host, origin-form to 127.0.0.1:PORT.
# moat: the same client inside an `agent` sandbox, absolute-form
# `POST http://inference.local/...` to the gateway (HTTP_PROXY); the gateway
# strips the sandbox's dummy key, injects the stored credential and relays.
# The upstream counts the requests it saw and those carrying the stored key:
# a request answered without reaching it, or forwarded without the key,
# fails the run, as does any wrong or erroneous answer the client sees.
# Each client times itself; sandbox start-up is not counted.
# Issue target: under 1 ms added at p50.
# Needs root, python3 (host and image) and the `agent` image in the repo's
# store (built from blueprints/agent.toml if missing).
#   N=500 WARM=50 bash tests/bench/inference.sh     (from the repo root)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-500}
WARM=${WARM:-50}
for t in python3 awk; do
  command -v "$t" >/dev/null || { echo "inference bench: $t is missing" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "inference bench: needs root (moat run)" >&2; exit 2; }
[ "$N" -gt 0 ] && [ "$WARM" -ge 0 ] || { echo "inference bench: N must be > 0, WARM >= 0" >&2; exit 2; }

tgt=$(realpath -m "${CARGO_TARGET_DIR:-target}")
echo "building (release)..." >&2
cargo build --release --quiet --bin moat
moat=$tgt/release/moat

work=$(mktemp -d /tmp/moat-ibench.XXXXXX)
chmod 755 "$work"
up_pid=
cleanup() {
  if [ -n "$up_pid" ]; then kill "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null || true; fi
  rm -rf "$work"
  true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Private state: nothing of the operator's home, credentials or routes is touched.
export MOAT_HOME=$work/home MOAT_RUN_DIR=$work/run MOAT_STORE=${MOAT_STORE:-$PWD/images}
mkdir -p "$MOAT_HOME" "$MOAT_RUN_DIR"

if ! "$moat" images 2>/dev/null | awk 'NR > 1 {print $1}' | grep -qx agent; then
  echo "building the agent image..." >&2
  "$moat" build blueprints/agent.toml >/dev/null
fi

# --- the upstream: OpenAI-shaped, HTTP/1.1 keep-alive, no sleeps ----------
cat > "$work/upstream.py" <<'EOF'
import asyncio, json, sys

KEY = sys.argv[1].encode()
stats = {"requests": 0, "with_key": 0, "streamed": 0}
FULL = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}).encode()


def event(content, usage=None):
    d = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
         "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    if usage:
        d["usage"] = usage
    return b"data: " + json.dumps(d).encode() + b"\n\n"


EVENTS = [event("o"), event("k"), event("!", {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
          b"data: [DONE]\n\n"]
SSE = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS) + b"0\r\n\r\n"


def response(status, ctype, body):
    return (b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (status, ctype, len(body))) + body


async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            hdrs = {}
            for ln in lines[1:]:
                if b":" in ln:
                    k, v = ln.split(b":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            if b"transfer-encoding" in hdrs:
                w.write(response(400, b"text/plain", b"chunked request bodies are not expected here\n"))
                break
            body = await r.readexactly(int(hdrs.get(b"content-length", b"0")))
            if method == b"GET" and target == b"/stats":
                w.write(response(200, b"application/json", json.dumps(stats).encode()))
            elif method == b"POST" and target == b"/v1/chat/completions":
                stats["requests"] += 1
                if hdrs.get(b"authorization") == b"Bearer " + KEY:
                    stats["with_key"] += 1
                if json.loads(body).get("stream"):
                    stats["streamed"] += 1
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n" + SSE)
                else:
                    w.write(response(200, b"application/json", FULL))
            else:
                w.write(response(404, b"text/plain", b"not found\n"))
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    w.close()


async def main():
    srv = await asyncio.start_server(serve, "127.0.0.1", 0)  # asyncio sets TCP_NODELAY
    print(srv.sockets[0].getsockname()[1], flush=True)
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
EOF

# --- the client: the same program on the host and in the sandbox ----------
mkdir -p "$work/ws"
cat > "$work/ws/client.py" <<'EOF'
# client.py MODE N WARM KEY [PORT]: MODE direct (origin-form to 127.0.0.1:PORT)
# or proxy (absolute-form to inference.local through $HTTP_PROXY). Prints
# "python VERSION" then "full|ttfb p50_us p99_us n" lines.
import http.client, json, os, platform, sys, time

mode, n, warm, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if mode == "direct":
    conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[5]))
    url = "/v1/chat/completions"
else:
    proxy = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy") or "http://127.0.0.1:3128"
    hp = proxy.split("://", 1)[-1].rstrip("/")
    host, _, port = hp.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port))
    url = "http://inference.local/v1/chat/completions"
conn.connect()
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
msgs = [{"role": "user", "content": "Say ok."}]
full_body = json.dumps({"model": "bench", "messages": msgs, "max_tokens": 4})
stream_body = json.dumps({"model": "bench", "messages": msgs, "max_tokens": 4, "stream": True})
clock = time.perf_counter_ns


def fail(what, r, data):
    sys.exit("client (%s): %s: status %s, body %r" % (mode, what, r.status, data[:300]))


def full():
    t0 = clock()
    conn.request("POST", url, full_body, headers)
    r = conn.getresponse()
    data = r.read()
    t1 = clock()
    if r.status != 200 or b'"chat.completion"' not in data or b'"content": "ok"' not in data:
        fail("full completion", r, data)
    return t1 - t0


def ttfb():
    t0 = clock()
    conn.request("POST", url, stream_body, headers)
    r = conn.getresponse()
    first = r.read1(65536)
    t1 = clock()
    data = first + r.read()
    if r.status != 200 or not first.startswith(b"data: ") or data.count(b"data: ") != 4 \
            or not data.endswith(b"data: [DONE]\n\n"):
        fail("streamed completion", r, data)
    return t1 - t0


def measure(name, f):
    for _ in range(warm):
        f()
    xs = sorted(f() / 1000 for _ in range(n))
    mid = len(xs) // 2
    p50 = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    p99 = xs[min(len(xs) - 1, -(-len(xs) * 99 // 100) - 1)]
    print("%s %.1f %.1f %d" % (name, p50, p99, len(xs)), flush=True)


print("python", platform.python_version(), flush=True)
measure("full", full)
measure("ttfb", ttfb)
EOF
chmod -R a+rX "$work/ws"

key=sk-bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
python3 "$work/upstream.py" "$key" > "$work/upstream.port" 2> "$work/upstream.err" &
up_pid=$!
for _ in $(seq 100); do [ -s "$work/upstream.port" ] && break; sleep 0.05; done
port=$(head -1 "$work/upstream.port")
[ -n "$port" ] || { echo "inference bench: the upstream did not start" >&2; cat "$work/upstream.err" >&2; exit 1; }
stats() { python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/stats').read().decode())" \
  | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['requests'], d['with_key'], d['streamed'])"; }

# --- moat: a private credential and the default route to the upstream ------
printf %s "$key" | "$moat" credentials set ibench >/dev/null
"$moat" inference set --default --provider openai --endpoint "http://127.0.0.1:$port" --credential ibench >/dev/null

echo "direct: $N + $WARM warm-up requests per measurement..." >&2
python3 "$work/ws/client.py" direct "$N" "$WARM" "$key" "$port" > "$work/direct.out"
read -r d_req d_key d_str < <(stats)

echo "moat: the same client in an agent sandbox..." >&2
"$moat" run --rm -q --workspace "$work/ws" agent -- \
  python3 /sandbox/client.py proxy "$N" "$WARM" sk-sandbox-dummy-0000000000000000 > "$work/moat.out"
read -r m_req m_key m_str < <(stats)

# Every request must have reached the upstream, each moat one with the stored key.
per=$((2 * (N + WARM)))
[ "$d_req" -eq "$per" ] && [ "$d_key" -eq "$per" ] ||
  { echo "inference bench: direct: upstream saw $d_req requests ($d_key with the key), expected $per" >&2; exit 1; }
[ $((m_req - d_req)) -eq "$per" ] && [ $((m_key - d_key)) -eq "$per" ] && [ $((m_str - d_str)) -eq $((N + WARM)) ] || {
  echo "inference bench: moat: upstream saw $((m_req - d_req)) requests ($((m_key - d_key)) with the stored key," \
    "$((m_str - d_str)) streamed), expected $per ($per, $((N + WARM)))" >&2
  exit 1
}

field() { awk -v k="$2" -v c="$3" '$1 == k {print $c}' "$1"; }
for f in direct moat; do
  for m in full ttfb; do
    [ "$(field "$work/$f.out" "$m" 4)" = "$N" ] || { echo "inference bench: $f $m: no result" >&2; cat "$work/$f.out" >&2; exit 1; }
  done
done
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }
verdict() { awk -v x="$1" 'BEGIN { print (x < 1000) ? "met" : "NOT met" }'; }

echo "inference bench: upstream Python $(python3 -c 'import platform; print(platform.python_version())') asyncio" \
  "on 127.0.0.1 (host loopback); $(nproc) CPUs; $N requests per row on one keep-alive connection, $WARM warm-up dropped"
echo "  direct: client.py on the host (Python $(field "$work/direct.out" python 2)), origin-form to 127.0.0.1:$port"
echo "  moat:   client.py inside an agent sandbox (Python $(field "$work/moat.out" python 2)), absolute-form to" \
  "inference.local via the gateway (key injected by the gateway)"
printf '  %-34s %10s %10s %10s %10s %12s\n' "" "direct p50" "direct p99" "moat p50" "moat p99" "added p50"
for m in full ttfb; do
  label=$([ "$m" = full ] && echo "full small completion (us)" || echo "first streamed byte (us)")
  dp50=$(field "$work/direct.out" $m 2); dp99=$(field "$work/direct.out" $m 3)
  mp50=$(field "$work/moat.out" $m 2); mp99=$(field "$work/moat.out" $m 3)
  added=$(sub "$mp50" "$dp50")
  printf '  %-34s %10s %10s %10s %10s %12s\n' "$label" "$dp50" "$dp99" "$mp50" "$mp99" "$added"
  printf -v "added_$m" %s "$added"
done
echo "  target < 1000 us added at p50: full completion $(verdict "$added_full"), first streamed byte $(verdict "$added_ttfb")"
