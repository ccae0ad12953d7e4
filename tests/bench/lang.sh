#!/usr/bin/env bash
# Language packages benchmark (issue 24). The PyPI half: a 33-wheel set from
# PyPI (14 pinned requirements and their dependencies), locked once (network),
# then with warm download caches for both sides:
#   moat build into a fresh store with a cold layer cache, and its no-op rebuild,
#   pip install --no-deps --require-hashes --only-binary :all: --no-compile
#     --no-index --find-links WHEELS --prefix EMPTY_DIR (the same wheels as files).
# The npm half: eslint, webpack, prettier and typescript (about 200 packages
# with their dependencies) locked once from the npm registry, then with warm
# caches: moat build (fresh store, cold layer cache) and its no-op rebuild
# against `npm ci --ignore-scripts --prefer-offline` into an empty project
# from a package-lock.json npm made for the same versions. moat lays out a
# global install (each package under lib/node_modules), npm ci a project's
# hoisted node_modules: the same tarballs, slightly different trees.
# Medians of RUNS runs, one run.
# Usage: tests/bench/lang.sh [RUNS]   (MOAT=path skips the release build;
# needs PyPI or MOAT_PYPI_INDEX, the npm registry, python3 -m pip and npm:
# scripts/install-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
if [ -z "${MOAT:-}" ]; then cargo build --release -q; MOAT=$PWD/target/release/moat; fi
python3 -m pip --version >/dev/null 2>&1 || { echo "lang.sh: needs python3 -m pip" >&2; exit 1; }
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/bp" "$W/wheels"
cat > "$W/bp/py.toml" <<'TOML'
name = "langbench"
epoch = 1700000000
[pypi]
packages = ["requests==2.32.3", "pydantic==2.9.2", "rich==13.9.4", "click==8.1.7", "httpx==0.27.2",
            "jinja2==3.1.4", "pyyaml==6.0.2", "attrs==24.2.0", "packaging==24.1",
            "python-dateutil==2.9.0.post0", "tqdm==4.66.5", "jsonschema==4.23.0", "tabulate==0.9.0",
            "filelock==3.16.1"]
python_version = "3.11"
target = "/usr/local/lib/python3.11/site-packages"
TOML
H=$W/h
MOAT_HOME=$H "$MOAT" -q lock "$W/bp/py.toml" --store "$W/s0" >/dev/null
python3 - "$W/bp/py.lock" "$W/req.txt" <<'PY'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
with open(sys.argv[2], "w") as f:
    for p in lock["pypi"]["packages"]:
        f.write(f"{p['name']}=={p['version']} --hash=sha256:{p['sha256']}\n")
PY
N=$(wc -l < "$W/req.txt")
PIP=(python3 -m pip --disable-pip-version-check -q)
"${PIP[@]}" download --no-deps --require-hashes --only-binary :all: -d "$W/wheels" -r "$W/req.txt" >/dev/null
SIZE=$(du -cb "$W"/wheels/*.whl | tail -1 | cut -f1)

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk -v n="$1" 'BEGIN {printf "%.1f", n/1e6}'; }

moat_t=(); noop_t=(); pip_t=()
for i in $(seq "$RUNS"); do
  rm -rf "$W/s" "$H/cache/layers" "$W/p"
  t0=$(now); MOAT_HOME=$H "$MOAT" -q build "$W/bp/py.toml" --store "$W/s" >/dev/null; t1=$(now)
  moat_t+=($((t1 - t0)))
  t0=$(now); MOAT_HOME=$H "$MOAT" -q build "$W/bp/py.toml" --store "$W/s" >/dev/null; t1=$(now)
  noop_t+=($((t1 - t0)))
  t0=$(now)
  "${PIP[@]}" install --no-deps --require-hashes --only-binary :all: --no-compile --no-index \
    --find-links "$W/wheels" --no-warn-script-location --prefix "$W/p" -r "$W/req.txt" >/dev/null 2>&1
  t1=$(now)
  pip_t+=($((t1 - t0)))
done
M=$(printf '%s\n' "${moat_t[@]}" | median); P=$(printf '%s\n' "${pip_t[@]}" | median)
Z=$(printf '%s\n' "${noop_t[@]}" | median)
echo "input: $N wheels, $((SIZE / 1024 / 1024)) MiB; $RUNS runs; medians; $(nproc) cores; $("${PIP[@]}" --version | cut -d' ' -f1-2)"
echo "moat build (fresh store, cold layer cache, warm downloads): $(ms "$M") ms"
echo "pip install --require-hashes into an empty prefix (wheels as files): $(ms "$P") ms"
echo "moat no-op rebuild: $(ms "$Z") ms (target < 200 ms)"
awk -v m="$M" -v p="$P" 'BEGIN {printf "ratio moat/pip = %.2f (target <= 1.0: moat also makes the layer)\n", m/p}'

# ---- npm -------------------------------------------------------------------
command -v npm >/dev/null || { echo "lang.sh: needs npm" >&2; exit 1; }
cat > "$W/bp/js.toml" <<'TOML'
name = "langbench-npm"
epoch = 1700000000
[npm]
packages = ["eslint@9.13.0", "webpack@5.95.0", "prettier@3.3.3", "typescript@5.6.3"]
prefix = "/usr/local"
TOML
MOAT_HOME=$H "$MOAT" -q lock "$W/bp/js.toml" --store "$W/s0" >/dev/null
NJ=$(grep -c '^\[\[npm.packages\]\]' "$W/bp/js.lock")
mkdir -p "$W/proj"
cat > "$W/proj/package.json" <<'JSON'
{"name": "langbench", "version": "1.0.0", "private": true,
 "dependencies": {"eslint": "9.13.0", "webpack": "5.95.0", "prettier": "3.3.3", "typescript": "5.6.3"}}
JSON
NPM=(npm --cache "$W/npmcache" --no-audit --no-fund --loglevel=error)
(cd "$W/proj" && "${NPM[@]}" install --package-lock-only --ignore-scripts >/dev/null)
# Warm npm's cache the same way moat's download cache is warm (the lock).
(cd "$W/proj" && "${NPM[@]}" ci --ignore-scripts >/dev/null && rm -rf node_modules)
moat_j=(); noop_j=(); npm_j=()
for i in $(seq "$RUNS"); do
  rm -rf "$W/sj" "$H/cache/layers" "$W/proj/node_modules"
  t0=$(now); MOAT_HOME=$H "$MOAT" -q build "$W/bp/js.toml" --store "$W/sj" >/dev/null; t1=$(now)
  moat_j+=($((t1 - t0)))
  t0=$(now); MOAT_HOME=$H "$MOAT" -q build "$W/bp/js.toml" --store "$W/sj" >/dev/null; t1=$(now)
  noop_j+=($((t1 - t0)))
  t0=$(now); (cd "$W/proj" && "${NPM[@]}" ci --ignore-scripts --prefer-offline >/dev/null); t1=$(now)
  npm_j+=($((t1 - t0)))
done
MJ=$(printf '%s\n' "${moat_j[@]}" | median); PJ=$(printf '%s\n' "${npm_j[@]}" | median)
ZJ=$(printf '%s\n' "${noop_j[@]}" | median)
NN=$(find "$W/proj/node_modules" -name package.json -path '*/node_modules/*/package.json' -not -path '*/node_modules/*/node_modules/*/*/package.json' | wc -l)
echo "npm input: $NJ packages in moat's lock ($NN package.json files under npm ci's tree); $RUNS runs; medians; npm $(npm --version)"
echo "moat build (fresh store, cold layer cache, warm downloads): $(ms "$MJ") ms"
echo "npm ci --ignore-scripts --prefer-offline into an empty project (warm cache): $(ms "$PJ") ms"
echo "moat no-op rebuild: $(ms "$ZJ") ms (target < 200 ms)"
awk -v m="$MJ" -v p="$PJ" 'BEGIN {printf "ratio moat/npm = %.2f (target <= 1.0: moat also makes the layer)\n", m/p}'
