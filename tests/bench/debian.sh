#!/usr/bin/env bash
# Debian benchmark (issue 3): the agent image's package set with a warm
# download cache. moat build of blueprints/agent.toml into a fresh store with
# a cold layer cache, then its no-op rebuild, vs `mmdebstrap --variant=minbase`
# with the same packages into a directory (its .debs pre-seeded, so neither
# side downloads packages; mmdebstrap still fetches indexes, as it must).
# Medians of RUNS runs. Usage: tests/bench/debian.sh [RUNS]
# Needs: mmdebstrap (scripts/install-deps.sh), a Debian mirror (host apt
# config or MOAT_DEBIAN_MIRROR), root (mmdebstrap --mode=root).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
command -v mmdebstrap >/dev/null || { echo "debian.sh: needs mmdebstrap (scripts/install-deps.sh)" >&2; exit 1; }
[ -f blueprints/agent.lock ] || { echo "debian.sh: blueprints/agent.lock missing (run: moat lock blueprints/agent.toml)" >&2; exit 1; }
cargo build --release -q
MOAT=$PWD/target/release/moat
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk -v n="$1" 'BEGIN {printf "%.0f", n/1e6}'; }

# Warm moat's download cache once (not timed).
MOAT_HOME=$W/warm "$MOAT" -q build blueprints/agent.toml --store "$W/warm-store" >/dev/null
PKGS=$(python3 - <<'PY'
import tomllib
bp = tomllib.load(open("blueprints/agent.toml", "rb"))
print(",".join(bp["debian"]["packages"]))
PY
)
SUITE=$(python3 -c 'import tomllib; print(tomllib.load(open("blueprints/agent.toml","rb"))["debian"]["suite"])')
MIRROR=${MOAT_DEBIAN_MIRROR:-}
# Warm mmdebstrap's package cache once (not timed); mmdebstrap's manual recipe.
mkdir -p "$W/apt-cache"
mm() {  # mm TARGET [sync-out]: the timed runs only read the cache
  local out=()
  [ -n "${2:-}" ] && out=(--customize-hook="sync-out /var/cache/apt/archives $W/apt-cache")
  mmdebstrap --quiet --mode=root --variant=minbase --include="$PKGS" --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in $W/apt-cache /var/cache/apt/archives/" \
    "${out[@]}" "$SUITE" "$1" ${MIRROR:+"$MIRROR"} >/dev/null 2>&1
}
mm "$W/mm-warm" sync-out; rm -rf "$W/mm-warm"

moat_t=(); noop_t=(); mm_t=()
for i in $(seq "$RUNS"); do
  rm -rf "$W/h" "$W/s" "$W/mm"
  mkdir -p "$W/h/cache" && cp -al "$W/warm/cache/debs" "$W/h/cache/debs"
  t0=$(now); MOAT_HOME=$W/h "$MOAT" -q build blueprints/agent.toml --store "$W/s" >/dev/null; t1=$(now)
  moat_t+=($((t1 - t0)))
  t0=$(now); MOAT_HOME=$W/h "$MOAT" -q build blueprints/agent.toml --store "$W/s" >/dev/null; t1=$(now)
  noop_t+=($((t1 - t0)))
  t0=$(now); mm "$W/mm"; t1=$(now)
  mm_t+=($((t1 - t0)))
done
M=$(printf '%s\n' "${moat_t[@]}" | median); N=$(printf '%s\n' "${noop_t[@]}" | median); P=$(printf '%s\n' "${mm_t[@]}" | median)
NPKG=$(grep -c '^\[\[debian.packages\]\]' blueprints/agent.lock || true)
echo "agent image: $NPKG Debian packages; warm download caches; $RUNS runs; medians; $(nproc) cores"
echo "moat build (fresh store, cold layer cache): $(ms "$M") ms"
echo "moat no-op rebuild:                         $(ms "$N") ms"
echo "mmdebstrap --variant=minbase + packages:    $(ms "$P") ms"
awk -v m="$M" -v p="$P" 'BEGIN {printf "ratio mmdebstrap / moat build: %.1fx\n", p/m}'
