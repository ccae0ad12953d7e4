#!/usr/bin/env bash
# Installs the Debian packages moat's tests and benchmarks use (interop peers,
# registry, runtimes). Idempotent: skips apt when everything is present.
set -euo pipefail
pkgs=(skopeo umoci oci-image-tool docker-registry apache2-utils runc crun
      busybox-static iproute2 dpkg-dev nix-bin hyperfine jq
      gpg gpg-agent debian-archive-keyring mmdebstrap
      restic tinyproxy nginx-light qemu-user
      gcc libc6-dev   # gcc: tests/attack_identity.rs builds the injected library
      e2fsprogs       # mkfs.ext4: each workspace is an ext4 image (tests/attack_disk.rs)
      tmux            # the terminal moat term is driven in (tests/console_term.rs, tests/bench/gateway.sh)
      containerd      # containerd + ctr drive moat's shim (tests/shim_ctr.rs)
      containernetworking-plugins  # CNI (bridge, host-local, loopback) for containerd's CRI plugin (tests/shim_cri.rs)
      git             # git http-backend: the smart-HTTP server of tests/clients_sandbox.rs
      protobuf-compiler  # protoc: the k8s-cri dev-dependency generates the CRI client at build time
      openssl curl)   # openssl: the oracle of signing (keys, payloads); curl reads the registry
# node + npm run the independent Sigstore verifier/signer (tests/sign_oracle,
# npm ci from the npm registry). A node installed another way (nodesource)
# counts: Debian's npm package would conflict with it.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then pkgs+=(nodejs npm); fi
# pip is the oracle of [pypi] layouts (tests/pypi_inputs.rs); a python3 with
# pip installed another way (pyenv) counts.
if ! python3 -m pip --version >/dev/null 2>&1; then pkgs+=(python3 python3-pip); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
