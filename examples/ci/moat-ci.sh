#!/usr/bin/env bash
# moat CI recipe, usable from any CI system (see github-actions.yml for one).
#
#   moat-ci.sh check                      every change: lint + verify, fail on drift
#   moat-ci.sh release REGISTRY/PREFIX    release: build, sign and attest (when
#                                         MOAT_SIGNING_KEY is set), push, and prove
#                                         that the pushed digest is the one each lock pins
#   moat-ci.sh deploy REF PUB [-- CMD..]  running side: pull REGISTRY/REPO@sha256:...
#                                         only if signed by PUB, check its provenance,
#                                         then run it under a policy that requires both
#
# Environment: MOAT (default: moat), BLUEPRINTS (default: blueprints/*.toml),
# TAG (optional alias pushed with the digest, e.g. the release version),
# MOAT_REGISTRY_USER + MOAT_REGISTRY_PASSWORD (optional: `moat login` first),
# MOAT_CA_FILE (optional extra CA for the registry), MOAT_SIGNING_KEY (a
# cosign-format private key file; its password in MOAT_KEY_PASSWORD), POLICY
# (deploy: the policy to extend with [trust]; default: policies/baseline.toml
# of the checkout).
set -euo pipefail

MOAT=${MOAT:-moat}
shopt -s nullglob
read -r -a blueprints <<<"${BLUEPRINTS:-$(echo blueprints/*.toml)}"
[ ${#blueprints[@]} -gt 0 ] || { echo "moat-ci: no blueprints found" >&2; exit 2; }

# The manifest digest a lock pins: `manifest = "sha256:..."` in its [image] table.
lock_digest() {
  awk '/^\[/{sec=$0} sec=="[image]" && $1=="manifest" {gsub(/"/,"",$3); print $3}' "$1"
}

check() {
  # Mutable references, unpinned sources, unknown keys.
  "$MOAT" lint
  # Rebuild every blueprint in a fresh store; any digest differing from its lock fails.
  "$MOAT" verify "${blueprints[@]}"
}

release() {
  local prefix=${1:?usage: moat-ci.sh release REGISTRY/PREFIX}
  local net=()
  [ -n "${MOAT_CA_FILE:-}" ] && net+=(--ca-file "$MOAT_CA_FILE")
  if [ -n "${MOAT_REGISTRY_USER:-}" ]; then
    printf '%s\n' "${MOAT_REGISTRY_PASSWORD:?MOAT_REGISTRY_PASSWORD is empty}" |
      "$MOAT" login "${prefix%%/*}" -u "$MOAT_REGISTRY_USER" "${net[@]}"
  fi
  check
  local bp lock want built name pushed
  for bp in "${blueprints[@]}"; do
    lock="${bp%.toml}.lock"
    want=$(lock_digest "$lock")
    [ -n "$want" ] || { echo "moat-ci: $lock pins no [image] manifest" >&2; exit 1; }
    built=$("$MOAT" -q build "$bp")             # NAME@sha256:...
    name=${built%@*}
    [ "${built#*@}" = "$want" ] || { echo "moat-ci: $bp built ${built#*@}, lock says $want" >&2; exit 1; }
    if [ -n "${MOAT_SIGNING_KEY:-}" ]; then
      # Signature and provenance (SLSA v1 from the lock) + SBOM; push sends them along.
      "$MOAT" -q sign "$built" --key "$MOAT_SIGNING_KEY" --identity "$prefix/$name" >/dev/null
      "$MOAT" -q attest "$built" --key "$MOAT_SIGNING_KEY" --blueprint "$bp" >/dev/null
    fi
    pushed=$("$MOAT" -q push "$built" "$prefix/$name${TAG:+:$TAG}" "${net[@]}")   # REGISTRY/REPO@sha256:...
    if [ "${pushed##*@}" != "$want" ]; then
      echo "moat-ci: pushed ${pushed##*@} but $lock pins $want" >&2; exit 1
    fi
    # Ask the registry, not our own output: the tag (if any) must now name the lock's digest.
    if [ -n "${TAG:-}" ]; then
      resolved=$("$MOAT" resolve "$prefix/$name:$TAG" "${net[@]}")
      [ "${resolved##*@}" = "$want" ] || { echo "moat-ci: registry says $resolved, lock pins $want" >&2; exit 1; }
    fi
    echo "released $pushed"
  done
}

deploy() {
  local ref=${1:?usage: moat-ci.sh deploy REGISTRY/REPO@sha256:... PUB [-- CMD...]}
  local pub=${2:?usage: moat-ci.sh deploy REGISTRY/REPO@sha256:... PUB [-- CMD...]}
  shift 2
  [ "${1:-}" = "--" ] && shift
  local net=()
  [ -n "${MOAT_CA_FILE:-}" ] && net+=(--ca-file "$MOAT_CA_FILE")
  # Nothing is pulled unless the digest carries a signature by PUB.
  local pulled
  pulled=$("$MOAT" -q pull "$ref" --verify-key "$pub" "${net[@]}")   # NAME@sha256:...
  "$MOAT" verify-signature "$pulled" --key "$pub"
  "$MOAT" verify-attestation "$pulled" --key "$pub" --type slsaprovenance >/dev/null
  # The policy the sandbox runs under requires both again at every start.
  local dir policy
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  policy="$dir/policy.toml"
  cat "${POLICY:-policies/baseline.toml}" >"$policy"
  cp "$pub" "$dir/release.pub"
  printf '\n[trust]\nkeys = ["release.pub"]\nrequire_signature = true\nrequire_provenance = true\n' >>"$policy"
  "$MOAT" run --rm --policy "$policy" "$pulled" -- "$@"
}

case "${1:-}" in
  check) check ;;
  release) shift; release "$@" ;;
  deploy) shift; deploy "$@" ;;
  *) echo "usage: moat-ci.sh check | release REGISTRY/PREFIX | deploy REF PUB [-- CMD...]" >&2; exit 2 ;;
esac
