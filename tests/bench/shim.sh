#!/usr/bin/env bash
# containerd shim benchmark (issue 22): `ctr run --rm` of the same rootfs to
# its first output and exit, through moat's shim (io.containerd.moat.v1)
# against containerd's runc shim (io.containerd.runc.v2), medians of N runs
# in one invocation, ratio printed. A private containerd (own root, state
# and socket) runs for the benchmark only.
#
# Needs root, hyperfine, jq, containerd (ctr, containerd-shim-runc-v2),
# runc, busybox-static (scripts/install-deps.sh).
# Usage: tests/bench/shim.sh [RUNS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-30}
for t in hyperfine jq containerd ctr containerd-shim-runc-v2 runc busybox; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench: needs root" >&2; exit 1; }

triple="$(uname -m)-unknown-linux-gnu"
tgt=$(realpath -m "${CARGO_TARGET_DIR:-target}")
echo "building (release)..." >&2
cargo build --release --quiet --bin moat --bin containerd-shim-moat-v1
cargo build --release --quiet -p moat-probe --features image --bin moat-testimage
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$tgt/probe-static \
  cargo build --release --quiet -p moat-probe --bin moat-probe --target "$triple"

work=$(mktemp -d /tmp/moat-shim-bench.XXXXXX)
ctrd_pid=
cleanup() {
  [ -n "$ctrd_pid" ] && kill "$ctrd_pid" 2>/dev/null && wait "$ctrd_pid" 2>/dev/null
  umount -R "$work/ctrd" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export MOAT_HOME=$work/home MOAT_STORE=$work/store MOAT_RUN_DIR=$work/run
mkdir -p "$work/bin" "$work/ctrd"
ln -s "$tgt/release/containerd-shim-moat-v1" "$work/bin/"
export PATH=$work/bin:$PATH
"$tgt/release/moat-testimage" "$MOAT_STORE" bench "$tgt/probe-static/$triple/release/moat-probe" /bin/busybox >/dev/null
"$tgt/release/moat" bundle bench "$work/bundle" -- /bin/true >/dev/null
cat > "$work/ctrd/config.toml" <<CFG
version = 2
root = "$work/ctrd/root"
state = "$work/ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/ctrd/sock"
[ttrpc]
  address = "$work/ctrd/sock.ttrpc"
CFG
containerd --config "$work/ctrd/config.toml" >"$work/ctrd/log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 50); do [ -S "$work/ctrd/sock" ] && break; sleep 0.1; done
ctr="ctr --address $work/ctrd/sock"
rootfs=$work/bundle/rootfs

# Both must print first: a run that fails is not timed.
[ "$($ctr run --rm --runtime io.containerd.moat.v1 --rootfs "$rootfs" b-moat /bin/echo hi)" = hi ]
[ "$($ctr run --rm --runtime io.containerd.runc.v2 --rootfs "$rootfs" b-runc /bin/echo hi)" = hi ]

median_ms() { jq -r '.results[0].median * 1000 | . * 100 | round / 100' "$1"; }
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/moat.json" \
  "$ctr run --rm --runtime io.containerd.moat.v1 --rootfs $rootfs b-moat /bin/echo hi" >/dev/null 2>&1
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/runc.json" \
  "$ctr run --rm --runtime io.containerd.runc.v2 --rootfs $rootfs b-runc /bin/echo hi" >/dev/null 2>&1
moat_ms=$(median_ms "$work/moat.json"); runc_ms=$(median_ms "$work/runc.json")
echo "ctr run --rm to first output and exit, median of $runs:"
echo "  moat shim (io.containerd.moat.v1): $moat_ms ms"
echo "  runc shim (io.containerd.runc.v2): $runc_ms ms"
echo "  ratio moat/runc: $(jq -n "$moat_ms / $runc_ms | . * 100 | round / 100")"
