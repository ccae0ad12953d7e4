#!/usr/bin/env bash
# Workspace snapshot benchmark: `moat backup` / `moat restore` against restic
# (Debian package) on the same generated workspace, in one invocation:
#   1. full backup into an empty repository,
#   2. backup after changing 1% of the files (both tools' second backup),
#   3. restore of the latest snapshot into an empty directory.
# Medians of RUNS rounds (fresh repositories each round), ratios printed
# (moat / restic: below 1 means moat is faster). restic also encrypts and
# MACs everything (AES-256 + Poly1305); moat's chunks are sha256-addressed
# and zstd-compressed, not encrypted. Page cache is warm for both; `sync`
# runs before every timed step so neither pays for the other's dirty pages.
#
# The workspace: FILES files, ~SIZE_MB in total, mixed sizes (90% 1-16 KiB,
# 9% 16 KiB-512 KiB, 1% large files holding the rest), half random bytes,
# half hex text (compressible). Needs about 3.5 GB of free space per round
# (restored trees and repositories are kept until the end).
#
# Then (and alone with `sparse` as the first argument) the sparse round
# trip: a 4 GiB file with ~12 KiB of data, backed up and restored by moat
# and by GNU tar (`tar --sparse -c`, then `tar -x`), RUNS times; it prints
# the medians, the ratio and the disk the restored file uses.
#
# Needs root? No. Needs restic and perl (scripts/install-deps.sh).
# Usage: tests/bench/snapshot.sh [SIZE_MB] [FILES] [RUNS]   (default 1000 10000 3)
#        tests/bench/snapshot.sh sparse [RUNS]               (the sparse round trip only)
#        MOAT_BIN=path/to/moat to use a given binary (default: release build).
set -euo pipefail
cd "$(dirname "$0")/../.."
sparse_only=
if [ "${1:-}" = sparse ]; then sparse_only=1; shift; set -- 0 0 "${1:-3}"; fi
size_mb=${1:-1000}
files=${2:-10000}
runs=${3:-3}
for t in restic perl; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
if [ -z "${MOAT_BIN:-}" ]; then
  echo "building (release)..." >&2
  cargo build --release --quiet --bin moat
  MOAT_BIN=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/moat
fi
moat=$MOAT_BIN

work=$(mktemp -d /tmp/moat-snapbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# A sandbox record whose workspace is $2, in MOAT_HOME.
record() {
  mkdir -p "$MOAT_HOME/sandboxes/$1"
  printf '{"name":"%s","image":"bench","image_digest":"","command":[],"workspace":"%s","workspace_owned":false,"created":0,"status":"exited","detached":true,"supervisor":null,"init":null,"started":null,"exit_code":null}\n' "$1" "$2" \
    > "$MOAT_HOME/sandboxes/$1/state.json"
}

sparse_round_trip() {
  local sp=$work/sparse m=() g=() mdisk= gdisk=
  mkdir -p "$sp/ws"
  truncate -s 4G "$sp/ws/disk.img"
  for off in 0 1048576 2147483648 4294963200; do
    head -c 4096 /dev/urandom | dd of="$sp/ws/disk.img" bs=4096 seek=$((off / 4096)) conv=notrunc status=none
  done
  echo "sparse: $(du -k --apparent-size "$sp/ws/disk.img" | cut -f1) KiB apparent, $(du -k "$sp/ws/disk.img" | cut -f1) KiB on disk" >&2
  for round in $(seq 1 "$runs"); do
    export MOAT_HOME=$sp/home$round
    record sparse "$sp/ws"
    sync; local s e
    s=$(now); "$moat" -q backup sparse >/dev/null; "$moat" -q restore sparse --to sparse-out >/dev/null; e=$(now)
    m+=("$(awk -v a="$s" -v b="$e" 'BEGIN{print b-a}')")
    sync
    s=$(now); tar --sparse -cf "$sp/t$round.tar" -C "$sp/ws" .; mkdir -p "$sp/tar-out$round"; tar -xf "$sp/t$round.tar" -C "$sp/tar-out$round"; e=$(now)
    g+=("$(awk -v a="$s" -v b="$e" 'BEGIN{print b-a}')")
    mdisk=$(du -k "$MOAT_HOME/sandboxes/sparse-out/workspace/disk.img" | cut -f1)
    gdisk=$(du -k "$sp/tar-out$round/disk.img" | cut -f1)
    [ "$round" = "$runs" ] || rm -rf "$sp/tar-out$round" "$sp/t$round.tar"
  done
  # Checked once, after the timed rounds: reading 4 GiB of holes fills the
  # page cache with zero pages and would evict the next round's binaries.
  cmp "$sp/ws/disk.img" "$MOAT_HOME/sandboxes/sparse-out/workspace/disk.img" || { echo "bench: moat's sparse restore differs" >&2; exit 1; }
  cmp "$sp/ws/disk.img" "$sp/tar-out$runs/disk.img" || { echo "bench: tar's sparse restore differs" >&2; exit 1; }
  local mm gm
  mm=$(printf '%s\n' "${m[@]}" | median); gm=$(printf '%s\n' "${g[@]}" | median)
  echo "sparse round trip (backup + restore of a 4 GiB file with 16 KiB of data), $runs rounds, medians (s); restored file on disk: moat ${mdisk} KiB, tar ${gdisk} KiB"
  printf '%-10s %10s %10s %8s\n' step moat tar ratio
  printf '%-10s %10.3f %10.3f %8.2f\n' sparse "$mm" "$gm" "$(awk -v a="$mm" -v b="$gm" 'BEGIN{print a/b}')"
}
if [ -n "$sparse_only" ]; then sparse_round_trip; exit 0; fi
ws=$work/ws
echo "generating $files files, ~$size_mb MB in $ws ..." >&2
perl - "$ws" "$files" "$size_mb" <<'PERL'
use strict; use warnings;
my ($ws, $n, $mb) = @ARGV;
srand(42);
open(my $r, "<", "/dev/urandom") or die;
my $small = int($n * 0.90); my $medium = int($n * 0.09); my $large = $n - $small - $medium;
my @sizes;
push @sizes, 1024 + int(rand(15 * 1024)) for 1 .. $small;
push @sizes, 16384 + int(rand(496 * 1024)) for 1 .. $medium;
my $used = 0; $used += $_ for @sizes;
my $rest = $mb * 1024 * 1024 - $used; $rest = $large * 1024 * 1024 if $rest < $large * 1024 * 1024;
push @sizes, int($rest / $large) for 1 .. $large;
for my $i (0 .. $#sizes) {
  my $dir = sprintf("%s/d%02d/s%02d", $ws, $i % 37, $i % 11);
  system("mkdir", "-p", $dir) unless -d $dir;
  my $want = $sizes[$i]; my $buf = "";
  if ($i % 2) { read($r, $buf, int($want / 2) + 1); $buf = substr(unpack("H*", $buf), 0, $want); }
  else { read($r, $buf, $want); }
  open(my $f, ">", sprintf("%s/f%05d", $dir, $i)) or die; print $f $buf; close $f;
}
PERL
du -sh "$ws" >&2

declare -A t
for k in moat_full restic_full moat_incr restic_incr moat_restore restic_restore; do t[$k]=""; done

for round in $(seq 1 "$runs"); do
  export MOAT_HOME=$work/home$round RESTIC_REPOSITORY=$work/restic$round RESTIC_PASSWORD=bench \
         RESTIC_CACHE_DIR=$work/restic-cache$round
  record bench "$ws"
  restic init -q >/dev/null

  sync; s=$(now); "$moat" -q backup bench >/dev/null; e=$(now); t[moat_full]+="$(awk -v a="$s" -v b="$e" 'BEGIN{print b-a}') "
  sync; s=$(now); restic backup -q "$ws" >/dev/null; e=$(now); t[restic_full]+="$(awk -v a="$s" -v b="$e" 'BEGIN{print b-a}') "

  # Change 1% of the files: overwrite 100 bytes in the middle of every 100th file.
  find "$ws" -type f | sort | awk -v r="$round" 'NR % 100 == r % 100' | while read -r f; do
    perl -e 'open(my $f, "+<", $ARGV[0]) or die; my $s = -s $f; seek($f, int($s/2), 0); print $f "x" x 100; close $f' "$f"
  done

  sync; s=$(now); "$moat" -q backup bench >/dev/null; e=$(now); t[moat_incr]+="$(awk -v a="$s" -v b="$e" 'BEGIN{print b-a}') "
  sync; s=$(now); restic backup -q "$ws" >/dev/null; e=$(now); t[restic_incr]+="$(awk -v a="$s" -v b="$e" 'BEGIN{print b-a}') "

  # The restores alternate which goes first: file creation costs depend on
  # what the filesystem's allocator went through just before.
  moat_restore() { sync; s=$(now); "$moat" -q restore bench --to restored >/dev/null; e=$(now); t[moat_restore]+="$(awk -v a="$s" -v b="$e" 'BEGIN{print b-a}') "; }
  restic_restore() { sync; s=$(now); restic restore -q latest --target "$work/restic-out$round" >/dev/null; e=$(now); t[restic_restore]+="$(awk -v a="$s" -v b="$e" 'BEGIN{print b-a}') "; }
  if [ $((round % 2)) = 1 ]; then moat_restore; restic_restore; else restic_restore; moat_restore; fi

  diff -r "$ws" "$MOAT_HOME/sandboxes/restored/workspace" >/dev/null || { echo "bench: moat restore differs from the workspace" >&2; exit 1; }
  diff -r "$ws" "$work/restic-out$round$ws" >/dev/null || { echo "bench: restic restore differs from the workspace" >&2; exit 1; }
  last() { echo ${t[$1]} | awk '{printf "%.2f", $NF}'; }
  echo "round $round: moat repo $(du -sm "$MOAT_HOME/snapshots" | cut -f1) MB, restic repo $(du -sm "$RESTIC_REPOSITORY" | cut -f1) MB;" \
    "full $(last moat_full)/$(last restic_full) s, incr $(last moat_incr)/$(last restic_incr) s, restore $(last moat_restore)/$(last restic_restore) s (moat/restic)" >&2
  # Restored trees stay until the end: deleting 20,000 files here would make
  # the next round's file creations pay for ext4's scan past recently freed
  # inodes (`recently_deleted`, on this VM's journal-less ext4), a cost of
  # the benchmark's own clean-up rather than of either tool.
done

echo "snapshot benchmark: $files files, $(du -sm "$ws" | cut -f1) MB, $runs rounds, medians (s); restic $(restic version | cut -d' ' -f2) encrypts, moat does not"
printf '%-10s %10s %10s %8s\n' step moat restic ratio
for step in full incr restore; do
  m=$(echo ${t[moat_$step]} | tr ' ' '\n' | median)
  r=$(echo ${t[restic_$step]} | tr ' ' '\n' | median)
  printf '%-10s %10.2f %10.2f %8.2f\n' "$step" "$m" "$r" "$(awk -v a="$m" -v b="$r" 'BEGIN{print a/b}')"
done
sparse_round_trip
