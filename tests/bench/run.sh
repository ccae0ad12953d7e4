#!/usr/bin/env bash
# Sandbox start-up benchmark: `moat run --rm IMAGE -- /bin/true` end to end
# (image in the store, layer cache warm) against `runc run` and `crun run` of
# the bundle `moat bundle` writes for the same image, medians of N runs in
# one invocation, ratios printed, and the floor under moat: libcontainer
# alone on that bundle (supervisor/examples/libcontainer_floor.rs). Also: a
# cold-cache first run of a ~200 MB image, and the memory of an idle
# supervisor + launcher.
#
# Needs root, hyperfine, jq, runc, crun, busybox-static (scripts/install-deps.sh).
# Usage: tests/bench/run.sh [RUNS]   (default 50)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-50}
for t in hyperfine jq runc busybox; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench: needs root" >&2; exit 1; }

triple="$(uname -m)-unknown-linux-gnu"
tgt=$(realpath -m "${CARGO_TARGET_DIR:-target}")
echo "building (release)..." >&2
cargo build --release --quiet --bin moat
cargo build --release --quiet -p moat-probe --features image --bin moat-testimage
cargo build --release --quiet -p moat-supervisor --example libcontainer_floor
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$tgt/probe-static \
  cargo build --release --quiet -p moat-probe --bin moat-probe --target "$triple"
moat=$tgt/release/moat
testimage=$tgt/release/moat-testimage
probe=$tgt/probe-static/$triple/release/moat-probe
floor=$tgt/release/examples/libcontainer_floor

work=$(mktemp -d /tmp/moat-bench.XXXXXX)
cleanup() {
  for n in $("$moat" ls --json 2>/dev/null | jq -r '.[].name'); do "$moat" rm --force --workspace "$n" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export MOAT_HOME=$work/home MOAT_STORE=$work/store MOAT_RUN_DIR=$work/run
"$testimage" "$MOAT_STORE" bench "$probe" /bin/busybox >/dev/null
"$moat" bundle bench "$work/bundle" -- /bin/true >/dev/null
"$moat" run --rm bench -- /bin/true   # warms the layer cache

median_ms() { jq -r '.results[0].median * 1000 | . * 100 | round / 100' "$1"; }

hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/moat.json" \
  "$moat run --rm bench -- /bin/true" >/dev/null 2>&1
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/runc.json" \
  "runc --root $work/runc run --bundle $work/bundle bench-runc" >/dev/null 2>&1
# The floor: libcontainer alone (its default executor, nothing of moat's)
# creating, starting, waiting for and deleting the same bundle.
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/floor.json" \
  "$floor $work/bundle $work/floor bench-floor" >/dev/null 2>&1
moat_ms=$(median_ms "$work/moat.json"); runc_ms=$(median_ms "$work/runc.json")
floor_ms=$(median_ms "$work/floor.json")

# crun 1.8 refuses the hybrid cgroup layout of these VMs ("cgroups in hybrid
# mode not supported, drop all controllers from cgroupv2": the empty v2
# hierarchy at /sys/fs/cgroup/unified still lists hugetlb). It runs the same
# bundle in a private mount namespace where that v2 mount is gone (pure v1);
# hyperfine runs inside that namespace, so no extra process is timed.
crun_ms=n/a; crun_note=""
if command -v crun >/dev/null; then
  if crun --root "$work/crun" run --bundle "$work/bundle" bench-crun-probe >/dev/null 2>&1; then
    hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/crun.json" \
      "crun --root $work/crun run --bundle $work/bundle bench-crun" >/dev/null 2>&1
  else
    crun_note=" (in a mount namespace without /sys/fs/cgroup/unified: crun refuses hybrid cgroups)"
    unshare -m --propagation private bash -c "umount /sys/fs/cgroup/unified && \
      hyperfine -N --warmup 3 --runs $runs --export-json $work/crun.json \
        'crun --root $work/crun run --bundle $work/bundle bench-crun'" >/dev/null 2>&1
  fi
  crun_ms=$(median_ms "$work/crun.json")
fi

# The [trust] check (issue 23): the same start under a policy that requires a
# signature by a trusted key, cached by digest (every start after the first)
# and uncached (the cache removed before each run), in one hyperfine
# invocation with the plain start so load hits all three alike. The peer is
# openssl verifying the same classic signature (process start included).
MOAT_KEY_PASSWORD=bench "$moat" key generate --out "$work/keys" >/dev/null
MOAT_KEY_PASSWORD=bench "$moat" -q sign bench --key "$work/keys/cosign.key" >/dev/null
{ cat policies/baseline.toml; printf '\n[trust]\nkeys = ["keys/cosign.pub"]\nrequire_signature = true\n'; } >"$work/trust.toml"
"$moat" run --rm --policy "$work/trust.toml" bench -- /bin/true
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/trust.json" \
  "$moat run --rm bench -- /bin/true" \
  "$moat run --rm --policy $work/trust.toml bench -- /bin/true" >/dev/null 2>&1
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/trust-cold.json" \
  --prepare "rm -rf $MOAT_HOME/cache/trust" \
  "$moat run --rm --policy $work/trust.toml bench -- /bin/true" >/dev/null 2>&1
sigdir="$MOAT_STORE/blobs/sha256"
sigman=$(jq -r --arg n "sha256-$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]=="bench") | .digest' "$MOAT_STORE/index.json" | cut -d: -f2).sig" \
  '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]==$n) | .digest' "$MOAT_STORE/index.json" | cut -d: -f2)
layer=$(jq -r '.layers[0].digest' "$sigdir/$sigman" | cut -d: -f2)
jq -r '.layers[0].annotations["dev.cosignproject.cosign/signature"]' "$sigdir/$sigman" | base64 -d >"$work/sig.der"
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/openssl.json" \
  "openssl dgst -sha256 -verify $work/keys/cosign.pub -signature $work/sig.der $sigdir/$layer" >/dev/null 2>&1
plain_ms=$(jq -r '.results[0].median * 1000 | . * 100 | round / 100' "$work/trust.json")
trust_ms=$(jq -r '.results[1].median * 1000 | . * 100 | round / 100' "$work/trust.json")
cold_trust_ms=$(median_ms "$work/trust-cold.json"); openssl_ms=$(median_ms "$work/openssl.json")

# Cold layer cache: a ~200 MB image (incompressible padding), first run.
"$testimage" "$MOAT_STORE" big "$probe" /bin/busybox 200 >/dev/null
big_size=$(du -sm "$MOAT_STORE" | cut -f1)
cold_s=$( { /usr/bin/time -f %e "$moat" run --rm big -- /bin/true >/dev/null; } 2>&1 | tail -1 )
warm_big=$( { /usr/bin/time -f %e "$moat" run --rm big -- /bin/true >/dev/null; } 2>&1 | tail -1 )

# Idle supervisor memory (supervisor + launcher RSS).
"$moat" run -d --name idle bench -- sleep 1000 >/dev/null
sleep 1
sup=$(jq -r '.supervisor.pid' "$MOAT_HOME/sandboxes/idle/state.json")
launcher=$(pgrep -P "$sup" | head -1)
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
sup_kb=$(rss "$sup"); launcher_kb=$(rss "$launcher")
"$moat" rm --force --workspace idle >/dev/null

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "n/a" || a == 0) print "n/a"; else printf "%.2f", b / a }'; }
echo "sandbox start, /bin/true, median of $runs (ms):"
echo "  moat run --rm        $moat_ms"
echo "  runc run             $runc_ms   (moat is $(ratio "$moat_ms" "$runc_ms")x faster)"
echo "  crun run             $crun_ms   (moat is $(ratio "$moat_ms" "$crun_ms")x faster)$crun_note"
echo "  libcontainer alone   $floor_ms   (the library under moat, same bundle: moat adds $(awk -v a="$moat_ms" -v b="$floor_ms" 'BEGIN { printf "%.2f", a - b }') ms)"
echo "[trust] require_signature, median of $runs (ms): plain $plain_ms, cached check $trust_ms (+$(awk -v a="$trust_ms" -v b="$plain_ms" 'BEGIN { printf "%.2f", a - b }')), uncached $cold_trust_ms; openssl dgst -verify of the same signature: $openssl_ms"
echo "cold layer cache, first run of a ${big_size} MB store image: ${cold_s} s (warm: ${warm_big} s)"
echo "idle supervisor RSS: ${sup_kb} KiB, launcher RSS: ${launcher_kb} KiB"
