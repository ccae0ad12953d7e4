#!/usr/bin/env bash
# Start-up A/B: `moat run --rm bench -- /bin/true` with two moat binaries
# (before and after a change) on the same image, store and layer cache,
# alternating short hyperfine rounds so that load on the machine falls on
# both alike. Prints each binary's median over all runs and the difference.
# The start-up figure itself (against runc and the libcontainer floor) is
# tests/bench/run.sh; this answers "did this change cost start-up time?".
#
# Needs root, hyperfine, jq, busybox-static (scripts/install-deps.sh), and
# the release helpers tests/bench/run.sh builds (moat-testimage, the static
# probe).
# Usage: tests/bench/startup_ab.sh BEFORE AFTER [ROUNDS] [RUNS_PER_ROUND]
# RUN_ARGS: extra `moat run` options for both (e.g. "--workspace /tmp/ws"
# to leave moat's own workspace out); BEFORE_ARGS / AFTER_ARGS, for one side
# only (default RUN_ARGS): `BEFORE_ARGS="--workspace /tmp/ws"
# startup_ab.sh M M` is what the workspace image costs binary M.
# TRUST=1: AFTER's image is signed (by AFTER, a key made for the run) and
# the sides run under the baseline policy file without / with a [trust]
# section requiring that signature: `TRUST=1 startup_ab.sh M M` is what the
# signature check (cached by digest after the first start) costs binary M.
# REST=SECONDS: that long idle before each timed run (hyperfine --prepare
# "sleep SECONDS"), so that what one start leaves to the kernel (freeing its
# image's blocks, RCU callbacks, workqueues) is done before the next: the
# figure for starts that are not back to back.
# RUN_TMPFS=1: the runtime directory (MOAT_RUN_DIR) on a tmpfs of its own,
# as the default /run/moat is; otherwise it is under /tmp with the rest
# (on these VMs a journal-less ext4, where every file a start makes costs
# an inode-table scan: see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
before=$(realpath "$1"); after=$(realpath "$2"); rounds=${3:-10}; runs=${4:-10}
for t in hyperfine jq busybox; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench: needs root" >&2; exit 1; }
triple="$(uname -m)-unknown-linux-gnu"
tgt=$(realpath -m "${CARGO_TARGET_DIR:-target}")
cargo build --release --quiet -p moat-probe --features image --bin moat-testimage
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$tgt/probe-static \
  cargo build --release --quiet -p moat-probe --bin moat-probe --target "$triple"
work=$(mktemp -d /tmp/moat-ab.XXXXXX)
trap 'umount "$work/run" 2>/dev/null; rm -rf "$work"' EXIT
export MOAT_HOME=$work/home MOAT_STORE=$work/store MOAT_RUN_DIR=$work/run
if [ "${RUN_TMPFS:-}" = 1 ]; then mkdir -p "$work/run" && mount -t tmpfs -o mode=0755 moat-ab-run "$work/run"; fi
"$tgt/release/moat-testimage" "$MOAT_STORE" bench "$tgt/probe-static/$triple/release/moat-probe" /bin/busybox >/dev/null
bargs=${BEFORE_ARGS:-${RUN_ARGS:-}}; aargs=${AFTER_ARGS:-${RUN_ARGS:-}}
if [ "${TRUST:-}" = 1 ]; then
  MOAT_KEY_PASSWORD=ab "$after" key generate --out "$work/keys" >/dev/null
  MOAT_KEY_PASSWORD=ab "$after" -q sign bench --key "$work/keys/cosign.key" >/dev/null
  cp policies/baseline.toml "$work/base.toml"
  { cat policies/baseline.toml; printf '\n[trust]\nkeys = ["keys/cosign.pub"]\nrequire_signature = true\n'; } >"$work/trust.toml"
  bargs="$bargs --policy $work/base.toml"; aargs="$aargs --policy $work/trust.toml"
fi
"$before" run --rm $bargs bench -- /bin/true; "$after" run --rm $aargs bench -- /bin/true # warm the layer cache

for r in $(seq 1 "$rounds"); do
  for side in before after; do
    m=$before; args=$bargs; [ "$side" = after ] && { m=$after; args=$aargs; }
    hyperfine -N --warmup 2 --runs "$runs" ${REST:+--prepare "sleep $REST"} --export-json "$work/$side-$r.json" "$m run --rm $args bench -- /bin/true" >/dev/null 2>&1
  done
done
median_ms() { jq -s '[.[].results[0].times[]] | sort | .[length/2|floor] * 1000 | . * 100 | round / 100' "$@"; }
b=$(median_ms "$work"/before-*.json); a=$(median_ms "$work"/after-*.json)
echo "start-up median over $((rounds * runs)) runs each: before $b ms, after $a ms, difference $(jq -n "($a - $b) * 100 | round / 100") ms"
