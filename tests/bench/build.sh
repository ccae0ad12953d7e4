#!/usr/bin/env bash
# Builder benchmark (issue 2): one layer from a tree of 5,000 small files
# (~20 MB) into a fresh store. moat build vs `umoci insert` of the same tree vs
# `tar | gzip -n`, plus moat's no-op rebuild. Medians of RUNS runs, one run.
# Usage: tests/bench/build.sh [RUNS]   (needs umoci: scripts/install-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-7}
cargo build --release -q
MOAT=$PWD/target/release/moat
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/proj/blueprints"
python3 - "$W/proj/blueprints/tree" <<'PY'
import os, random, sys
root = sys.argv[1]; rnd = random.Random(42)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 9))) for _ in range(2000)]
for i in range(5000):
    d = os.path.join(root, f"pkg{i % 50:02d}", f"mod{i % 7}")
    os.makedirs(d, exist_ok=True)
    n = rnd.randint(1000, 7000)
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + (b"\n" if rnd.random() < 0.1 else b" ")
    if i % 10 == 0:
        out += os.urandom(rnd.randint(100, 2000))  # some incompressible content
    open(os.path.join(d, f"f{i:05d}.txt"), "wb").write(bytes(out[:n]))
PY
cat > "$W/proj/blueprints/bench.toml" <<'TOML'
name = "bench"
[[layer]]
name = "tree"
[[layer.entry]]
path = "tree"
dest = "/app"
TOML
SIZE=$(du -sb "$W/proj/blueprints/tree" | cut -f1)
(cd "$W/proj" && MOAT_HOME=$W/h0 "$MOAT" -q lock blueprints/bench.toml --store "$W/s0" >/dev/null)

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk -v n="$1" 'BEGIN {printf "%.1f", n/1e6}'; }

moat_t=(); umoci_t=(); tgz_t=(); noop_t=()
for i in $(seq "$RUNS"); do
  rm -rf "$W/s" "$W/h" "$W/u" "$W/t.tgz"
  t0=$(now); (cd "$W/proj" && MOAT_HOME=$W/h "$MOAT" -q build blueprints/bench.toml --store "$W/s" >/dev/null); t1=$(now)
  moat_t+=($((t1 - t0)))
  t0=$(now); (cd "$W/proj" && MOAT_HOME=$W/h "$MOAT" -q build blueprints/bench.toml --store "$W/s" >/dev/null); t1=$(now)
  noop_t+=($((t1 - t0)))
  umoci init --layout "$W/u" >/dev/null 2>&1; umoci new --image "$W/u:t" >/dev/null 2>&1
  t0=$(now); umoci insert --image "$W/u:t" "$W/proj/blueprints/tree" /app >/dev/null 2>&1; t1=$(now)
  umoci_t+=($((t1 - t0)))
  t0=$(now); tar -C "$W/proj/blueprints/tree" -cf - . | gzip -n > "$W/t.tgz"; t1=$(now)
  tgz_t+=($((t1 - t0)))
done
M=$(printf '%s\n' "${moat_t[@]}" | median); U=$(printf '%s\n' "${umoci_t[@]}" | median)
T=$(printf '%s\n' "${tgz_t[@]}" | median); N=$(printf '%s\n' "${noop_t[@]}" | median)
echo "input: 5000 files, $((SIZE / 1024 / 1024)) MiB; $RUNS runs; medians; $(nproc) cores"
echo "moat build (fresh store, cold layer cache): $(ms "$M") ms   layer $(du -b "$W"/s/blobs/sha256/* | sort -n | tail -1 | cut -f1) bytes"
echo "umoci insert:                               $(ms "$U") ms"
echo "tar | gzip -n:                              $(ms "$T") ms   $(stat -c %s "$W/t.tgz") bytes"
echo "moat no-op rebuild:                         $(ms "$N") ms"
awk -v m="$M" -v u="$U" -v t="$T" 'BEGIN {printf "ratio moat/umoci = %.2f (target <= 0.5)\nratio moat/(tar|gzip -n) = %.2f (target <= 1.0)\n", m/u, m/t}'
