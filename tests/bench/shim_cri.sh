#!/usr/bin/env bash
# CRI benchmark (issue 22): time from RunPodSandbox to the first ExecSync
# answer (RunPodSandbox, CreateContainer, StartContainer, ExecSync `echo`),
# through containerd 1.6's CRI plugin with the `moat` handler
# (io.containerd.moat.v1, the release build's shim) against the `runc`
# handler (io.containerd.runc.v2), on the same pause and probe images and the
# same CNI bridge, alternating, medians of N rounds after one warm-up round,
# ratio printed. The world is tests/cri_world (a containerd of its own);
# the timing loop is the ignored test bench_run_pod_sandbox_to_exec_sync in
# tests/shim_cri.rs (the harness is a debug build: it only makes CRI calls).
#
# Needs root, containerd (ctr, containerd-shim-runc-v2), runc,
# containernetworking-plugins, protobuf-compiler, busybox-static, iproute2
# (scripts/install-deps.sh).
# Usage: tests/bench/shim_cri.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-10}
for t in containerd ctr containerd-shim-runc-v2 runc; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench: needs root" >&2; exit 1; }
tgt=$(realpath -m "${CARGO_TARGET_DIR:-target}")
echo "building (shim: release; harness: test profile)..." >&2
cargo build --release --quiet --bin containerd-shim-moat-v1
MOAT_BENCH_SHIM=$tgt/release/containerd-shim-moat-v1 MOAT_BENCH_RUNS=$runs \
  cargo test --quiet --test shim_cri -- --ignored --exact bench_run_pod_sandbox_to_exec_sync --nocapture 2>/dev/null \
  | grep -E '^(RunPodSandbox|  )'
