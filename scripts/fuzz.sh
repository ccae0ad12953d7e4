#!/usr/bin/env bash
# Bounded fuzzing of every parser of untrusted input (issue 19): blueprint,
# policy, OpenShell YAML import, lock, tar input, .deb, snapshot import,
# HTTP/1 head. Targets live in fuzz/ (its own cargo workspace); what each
# covers, and how to read and replay the results: docs/fuzzing.md.
# Not run by scripts/test.sh.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
#   SECONDS          per target (default $FUZZ_SECONDS, else 60)
#   TARGET...        default: all eight
#   FUZZ_SANITIZER   none (default) or address (a second, slower build)
#   FUZZ_TIMEOUT     seconds one input may take before it counts as a hang (default 10)
#   FUZZ_RSS_MB      memory limit per process (default 2048)
#   FUZZ_KEEP_GOING  1: keep fuzzing past a crash, hang or OOM (libFuzzer's
#                    fork mode) instead of stopping the target at the first
#
# Seeds: the project's own fixtures (blueprints/, policies/, tests/fixtures/,
# *.lock), tars made here by GNU tar, a .deb by dpkg-deb when present, and
# what fuzz/src/make_seeds.rs writes (tars and .debs in every compression,
# a real snapshot export, HTTP heads), plus fuzz/regressions/<target>/.
# The growing corpus stays in fuzz/corpus/<target>/ (not committed).
# A crash, hang or out-of-memory input is kept in fuzz/artifacts/<target>/;
# the first new one of each kind is copied to fuzz/regressions/<target>/
# (commit it with the fix, or minimise it first: the replay line says how),
# and the script exits 1.
#
# Needs cargo-fuzz (installed here with `cargo install --locked cargo-fuzz`
# when missing) and a C++ compiler (libFuzzer is built by libfuzzer-sys; g++
# from build-essential is enough, clang is not needed). cargo-fuzz passes
# nightly-only flags (-Zsanitizer, -Cpasses=sancov-module); on a stable
# toolchain RUSTC_BOOTSTRAP=1 lets rustc accept them.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

all_targets=(blueprint policy openshell_import lock tar_input deb snapshot_import http1_head)
seconds=${FUZZ_SECONDS:-60}
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
if [[ $# -gt 0 ]]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do
    [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t (known: ${all_targets[*]})" >&2; exit 2; }
done
sanitizer=${FUZZ_SANITIZER:-none}
timeout=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}
keep_going=()
if [[ ${FUZZ_KEEP_GOING:-0} == 1 ]]; then
    keep_going=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
fi

if ! command -v c++ >/dev/null; then
    echo "fuzz.sh: a C++ compiler is missing (libFuzzer is C++): apt-get install g++" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing; installing it: cargo install --locked cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

# One build for all targets: release, debug assertions and overflow checks on.
# 16 codegen units: the build takes minutes instead of tens of minutes on two
# cores, at some cost in executions per second.
echo "fuzz.sh: building the targets (sanitizer: $sanitizer)" >&2
(cd fuzz && cargo fuzz build -O --debug-assertions --sanitizer "$sanitizer" --codegen-units 16)
bin=$root/fuzz/target/x86_64-unknown-linux-gnu/release

# Seeds, rebuilt every run.
seeds=$(mktemp -d /tmp/moat-fuzz-seeds.XXXXXX)
trap 'rm -rf "$seeds"' EXIT
MOAT_FUZZ_SEEDS=$seeds "$bin/make_seeds" >&2
copy() { # copy TARGET FILE...
    local t=$1
    shift
    mkdir -p "$seeds/$t"
    for f in "$@"; do
        [[ -f $f ]] && cp "$f" "$seeds/$t/$(echo "${f#"$root"/}" | tr / _)"
    done
    return 0
}
mapfile -t tomls < <(find blueprints tests examples -name '*.toml' -not -path '*/target/*' 2>/dev/null)
for f in "${tomls[@]}"; do
    if grep -qE '^\[base\]|^\[\[layer\]\]' "$f"; then copy blueprint "$f"; fi
done
copy policy $(find policies -name '*.toml')
copy lock $(find blueprints tests examples -name '*.lock' -not -name Cargo.lock 2>/dev/null)
copy openshell_import tests/fixtures/openshell-policy.yaml $(find examples -name '*.yml' -o -name '*.yaml')
copy tar_input $(find tests/fixtures -name '*.tar' -o -name '*.tar.gz' -o -name '*.tar.xz' -o -name '*.tar.zst')
# GNU tar's own formats, from a small tree with a link of each kind.
tree=$seeds/tree
mkdir -p "$tree/d/sub"
echo hello >"$tree/d/file"
ln -s file "$tree/d/link"
ln "$tree/d/file" "$tree/d/hard"
echo long >"$tree/d/sub/$(printf 'n%.0s' {1..120})"
for fmt in gnu posix ustar oldgnu v7; do
    tar --format=$fmt -C "$tree" -cf "$seeds/tar_input/gnu-tar-$fmt.tar" d 2>/dev/null || true
done
tar --format=posix -C "$tree" -czf "$seeds/tar_input/gnu-tar-posix.tar.gz" d
if command -v dpkg-deb >/dev/null; then
    pkg=$seeds/pkg
    mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc"
    printf 'Package: seed\nVersion: 1.0\nArchitecture: all\nMaintainer: moat <moat@example.org>\nDescription: fuzz seed\n' \
        >"$pkg/DEBIAN/control"
    printf '#!/bin/sh\n' >"$pkg/usr/bin/seed"
    echo conf >"$pkg/etc/seed.conf"
    for z in xz gzip zstd none; do
        dpkg-deb --root-owner-group -Z$z --build "$pkg" "$seeds/deb/dpkg-$z.deb" >/dev/null 2>&1 || true
    done
fi
rm -rf "$tree" "$seeds/pkg"
for t in "${all_targets[@]}"; do
    [[ -d fuzz/regressions/$t ]] && copy "$t" fuzz/regressions/"$t"/*
done

max_len() {
    case $1 in
        tar_input | deb | snapshot_import) echo 131072 ;;
        http1_head) echo 16384 ;;
        *) echo 65536 ;;
    esac
}

failed=0
summary=()
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    art=fuzz/artifacts/$t
    mkdir -p "$corpus" "$art" "$seeds/$t"
    log=$art/last-run.log
    nseeds=$(find "$seeds/$t" -type f | wc -l)
    echo "fuzz.sh: $t for ${seconds}s ($nseeds seeds; log $log)" >&2
    before=$(find "$art" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'slow-unit-*' \) | sort)
    started=$SECONDS
    set +e
    "$bin/$t" "$corpus" "$seeds/$t" \
        -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss_mb" -max_len="$(max_len "$t")" \
        -artifact_prefix="$art/" -print_final_stats=1 -detect_leaks=0 "${keep_going[@]}" >"$log" 2>&1
    rc=$?
    set -e
    took=$((SECONDS - started))
    # Status lines: `#N ... cov: C ... exec/s: R ... rss: MMb` (fork mode: `#N: cov: ...`).
    status=$(grep -E '^#[0-9]+:?[[:space:]]' "$log" | tail -1 || true)
    pick() { grep -oE "$1" | tail -1 | tr -dc 0-9 || true; }
    execs=$(pick '^stat::number_of_executed_units: *[0-9]+' <"$log")
    [[ -n $execs ]] || execs=$(echo "$status" | pick '^#[0-9]+')
    rate=$(pick '^stat::average_exec_per_sec: *[0-9]+' <"$log")
    [[ -n $rate ]] || rate=$(echo "$status" | pick 'exec/s:? [0-9]+')
    rss=$(pick '^stat::peak_rss_mb: *[0-9]+' <"$log")
    [[ -n $rss ]] || rss=$(pick ' rss: [0-9]+' <"$log")
    cov=$(echo "$status" | pick 'cov: [0-9]+')
    files=$(find "$corpus" -type f | wc -l)
    after=$(find "$art" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'slow-unit-*' \) | sort)
    # New files, and those written again (same input, same name) as the log says.
    new=$({
        comm -13 <(echo "$before") <(echo "$after")
        grep -oE 'Test unit written to [^ ]+' "$log" | sed 's/^Test unit written to //'
    } | grep -v '^$' | sort -u || true)
    # An input already in fuzz/regressions/ (artifacts are named by their sha1) is known, not new.
    known_sums=$(find "fuzz/regressions/$t" -type f -exec sha1sum {} + 2>/dev/null | cut -c1-40 || true)
    known=0
    fresh=""
    for f in $new; do
        if grep -qx "$(sha1sum "$f" | cut -c1-40)" <<<"$known_sums"; then known=$((known + 1)); else fresh+="$f"$'\n'; fi
    done
    new=$(echo -n "$fresh" | grep -v '^$' || true)
    found=$(echo -n "$new" | grep -c . || true)
    if [[ $known -gt 0 ]]; then
        echo "fuzz.sh: $t: $known input(s) of fuzz/regressions/$t/ still fail (not fixed yet)" >&2
    fi
    if [[ -n $new || $rc -ne 0 || $known -gt 0 ]]; then
        failed=1
        mkdir -p "fuzz/regressions/$t"
        for kind in crash timeout oom slow-unit; do
            f=$(echo "$new" | grep "/$kind-" | head -1 || true)
            [[ -n $f ]] || continue
            cp "$f" "fuzz/regressions/$t/"
            echo "fuzz.sh: $t: FOUND $(basename "$f") (of $found new in $art/), saved as fuzz/regressions/$t/$(basename "$f")" >&2
            echo "  replay:   $bin/$t fuzz/regressions/$t/$(basename "$f")" >&2
            echo "  minimise: $bin/$t -minimize_crash=1 -runs=100000 -exact_artifact_path=/tmp/$t.min fuzz/regressions/$t/$(basename "$f")" >&2
        done
        echo "fuzz.sh: $t exited $rc; the end of its log:" >&2
        grep -v '^#' "$log" | tail -40 >&2
    fi
    summary+=("| $t | ${took} s | ${execs:-?} | ${rate:-?}/s | ${cov:-?} | $files | ${rss:-?} MB | $found new, $known known |")
done

echo
echo "| target | time | executions | exec/s | coverage (edges) | corpus files | peak RSS | crashes/hangs |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
    echo "fuzz.sh: a target found a crash, hang or out-of-memory input (see above; inputs in fuzz/regressions/)" >&2
    exit 1
fi
