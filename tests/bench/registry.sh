#!/usr/bin/env bash
# Registry benchmark: push and pull of a one-layer image with a 100 MB layer
# to the same loopback docker-registry, `moat push`/`moat pull` vs
# `skopeo copy`, alternating tools, medians of RUNS runs, ratios printed.
# Every push goes to a registry with empty storage (restarted per run), so
# neither tool can skip or cross-mount a blob it uploaded before; every pull
# goes into an empty destination.
#   RUNS=5 MB=100 tests/bench/registry.sh [path/to/moat]
set -euo pipefail
RUNS=${RUNS:-5}
MB=${MB:-100}
MOAT=${1:-${MOAT:-target/release/moat}}
[ -x "$MOAT" ] || { echo "registry bench: $MOAT not built (cargo build --release)" >&2; exit 2; }
for t in docker-registry skopeo python3; do
  command -v "$t" >/dev/null || { echo "registry bench: $t missing (scripts/install-deps.sh)" >&2; exit 2; }
done
work=$(mktemp -d)
regpid=
cleanup() { [ -n "$regpid" ] && kill "$regpid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export MOAT_HOME=$work/home
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
printf '{"default":[{"type":"insecureAcceptAnything"}]}' > "$work/policy.json"

start_registry() {
  [ -n "$regpid" ] && { kill "$regpid"; wait "$regpid" 2>/dev/null || true; }
  rm -rf "$work/storage"
  cat > "$work/reg.yml" <<EOC
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: $addr}
EOC
  docker-registry serve "$work/reg.yml" >"$work/reg.log" 2>&1 &
  regpid=$!
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return; sleep 0.05; done
  echo "registry did not start" >&2; cat "$work/reg.log" >&2; exit 1
}

# The image: an OCI layout with one gzip layer (a tar of MB MiB random bytes,
# so about MB MiB on the wire; gzip keeps skopeo from recompressing it).
python3 - "$work/img" "$MB" <<'EOF_PY'
import gzip, hashlib, io, json, os, sys, tarfile
root, mb = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{root}/blobs/sha256")
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(f"{root}/blobs/sha256/{d}", "wb").write(b)
    return {"digest": "sha256:" + d, "size": len(b)}
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
    data = os.urandom(mb << 20)
    ti = tarfile.TarInfo("data.bin"); ti.size = len(data); ti.mtime = 0
    t.addfile(ti, io.BytesIO(data))
raw = buf.getvalue()
layer = gzip.compress(raw, compresslevel=1, mtime=0)
l = put(layer)
diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
c = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, sort_keys=True, separators=(",", ":")).encode())
m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "config": dict(mediaType="application/vnd.oci.image.config.v1+json", **c),
     "layers": [dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **l)]}
md = put(json.dumps(m, sort_keys=True, separators=(",", ":")).encode())
open(f"{root}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [dict(mediaType=m["mediaType"], annotations={"org.opencontainers.image.ref.name": "bench"}, **md)]}, open(f"{root}/index.json", "w"))
EOF_PY
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/img/index.json")

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

: > "$work/moat_push"; : > "$work/skopeo_push"; : > "$work/moat_pull"; : > "$work/skopeo_pull"
for i in $(seq "$RUNS"); do
  # Each push into an empty registry: skopeo's blob-info cache would otherwise
  # cross-mount the blob moat uploaded and skip the transfer.
  start_registry
  t0=$(now); "$MOAT" -q --store "$work/img" push bench "$addr/bench/moat" >/dev/null; t1=$(now)
  ms "$t0" "$t1" >> "$work/moat_push"
  start_registry
  t0=$(now); skopeo --policy "$work/policy.json" copy -q --dest-tls-verify=false "oci:$work/img:bench" "docker://$addr/bench/skopeo:t" >/dev/null; t1=$(now)
  ms "$t0" "$t1" >> "$work/skopeo_push"
  pinned=$("$MOAT" resolve "$addr/bench/skopeo:t")
  [ "${pinned##*@}" = "$digest" ] || { echo "skopeo changed the manifest digest: $pinned" >&2; exit 1; }
  rm -rf "$work/pull-m" "$work/pull-s"
  t0=$(now); "$MOAT" -q --store "$work/pull-m" pull "$pinned" >/dev/null; t1=$(now)
  ms "$t0" "$t1" >> "$work/moat_pull"
  t0=$(now); skopeo --policy "$work/policy.json" copy -q --src-tls-verify=false "docker://$pinned" "oci:$work/pull-s:x" >/dev/null; t1=$(now)
  ms "$t0" "$t1" >> "$work/skopeo_pull"
done
cmp "$work/img/blobs/sha256/${digest#sha256:}" "$work/pull-m/blobs/sha256/${digest#sha256:}"

mp=$(median < "$work/moat_push"); sp=$(median < "$work/skopeo_push")
ml=$(median < "$work/moat_pull"); sl=$(median < "$work/skopeo_pull")
echo "registry bench: ${MB} MiB layer, loopback docker-registry, $RUNS runs (medians, ms)"
echo "  push  moat $mp  skopeo $sp  moat/skopeo $(awk -v a="$mp" -v b="$sp" 'BEGIN{printf "%.2f", a/b}')"
echo "  pull  moat $ml  skopeo $sl  moat/skopeo $(awk -v a="$ml" -v b="$sl" 'BEGIN{printf "%.2f", a/b}')"
echo "  runs: moat push $(paste -sd, "$work/moat_push"); skopeo push $(paste -sd, "$work/skopeo_push")"
echo "        moat pull $(paste -sd, "$work/moat_pull"); skopeo pull $(paste -sd, "$work/skopeo_pull")"
