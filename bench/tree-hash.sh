#!/usr/bin/env bash
# bench/tree-hash.sh [--size-mib N] [--files N] [--reps R] [--dir DIR] [--json OUT] [--only big,small]
#
# Issue 11 §2: `torrentguard hash` over a directory (the parallel scan: work units of one file's
# chunks on every core), in tmpfs, in the same run as its references:
#   big:   one SIZE_MIB file (default 1024) in a directory. `torrentguard hash DIR` against
#          `openssl dgst -sha256 FILE` on the same bytes (target: ours >= 90 % of openssl's
#          rate); `torrentguard hash FILE` (a single-file share: chunk digests plus the whole-file
#          SHA-256, two hashes per byte) for reference.
#   small: FILES files (default 100000) of 1-16 KiB, 100 per folder, folders two deep.
#          `torrentguard hash DIR` against `find | xargs -P NCPU openssl dgst -sha256` (what a
#          shell user would run) for reference.
# Runs are interleaved and the median of R (default 3) is kept; wall and CPU seconds of each.
# Needs target/release/torrentguard (`cargo build --release -p torrentguard-agent`).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

size_mib=1024
files=100000
reps=3
dir=/dev/shm
json_out=""
only="big,small"
while (($#)); do
    case $1 in
    --size-mib) size_mib=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
wants() { [[ ",$only," == *",$1,"* ]]; }

tg="$RELEASE_DIR/torrentguard"
[[ -x $tg ]] || die "$tg is missing: cargo build --release -p torrentguard-agent"
command -v openssl >/dev/null || die "openssl is needed"
need_time

work=$(mktemp -d "$dir/tg-tree-hash.XXXXXX")
cpu_file="$work/cpu"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
ncpu=$(nproc)

# timed NAME CMD...: appends wall seconds to NAME_s and CPU seconds (user + sys) to NAME_cpu.
timed() {
    local -n _wall=${1}_s _cpu=${1}_cpu
    shift
    local t
    t=$(now_ns)
    /usr/bin/time -f '%U %S' -o "$cpu_file" "$@" >/dev/null
    _wall+=("$(secs_since "$t")")
    _cpu+=("$(awk '{ printf "%.2f", $1 + $2 }' "$cpu_file")")
}
row() { printf '  %-44s %10s  (wall %s s, cpu %s s)\n' "$@"; }

big_json=null
if wants big; then
    mkdir -p "$work/big"
    file="$work/big/testfile-${size_mib}MiB.bin"
    log "making a ${size_mib} MiB random file in $work ($(stat -f -c %T "$work"))"
    make_random_file "$file" "$size_mib"
    warm "$file"
    bytes=$(stat -c %s "$file")
    openssl_s=() openssl_cpu=() tree_s=() tree_cpu=() single_s=() single_cpu=()
    for ((i = 1; i <= reps; i++)); do
        timed openssl openssl dgst -sha256 "$file"
        timed tree "$tg" -q hash "$work/big"
        timed single "$tg" -q hash "$file"
        log "rep $i: openssl ${openssl_s[-1]} s, hash DIR ${tree_s[-1]} s (cpu ${tree_cpu[-1]}), hash FILE ${single_s[-1]} s"
    done
    o=$(median "${openssl_s[@]}") t=$(median "${tree_s[@]}") s=$(median "${single_s[@]}")
    oc=$(median "${openssl_cpu[@]}") tc=$(median "${tree_cpu[@]}") sc=$(median "${single_cpu[@]}")
    om=$(mbps "$bytes" "$o") tm=$(mbps "$bytes" "$t") sm=$(mbps "$bytes" "$s")
    pct=$(awk -v a="$tm" -v b="$om" 'BEGIN { printf "%.1f", 100 * a / b }')
    verdict=$(awk -v p="$pct" 'BEGIN { print (p >= 90 ? "met" : "MISSED") }')
    printf '\nOne %s MiB file in tmpfs, median of %s (MB/s = 10^6 B/s)\n' "$size_mib" "$reps"
    row "openssl dgst -sha256 FILE" "$om MB/s" "$o" "$oc"
    row "torrentguard hash DIR (tree, parallel)" "$tm MB/s" "$t" "$tc"
    row "torrentguard hash FILE (single-file id)" "$sm MB/s" "$s" "$sc"
    printf '  hash DIR / openssl: %s %% (target >= 90 %%: %s)\n' "$pct" "$verdict"
    big_json=$(
        cat <<JSON
{"bytes": $bytes, "openssl": {"secs": $o, "cpu_secs": $oc, "mb_per_s": $om},
 "tree": {"secs": $t, "cpu_secs": $tc, "mb_per_s": $tm},
 "single_file": {"secs": $s, "cpu_secs": $sc, "mb_per_s": $sm},
 "tree_over_openssl": $(awk -v p="$pct" 'BEGIN { printf "%.3f", p / 100 }')}
JSON
    )
    rm -rf "$work/big"
fi

small_json=null
if wants small; then
    tree="$work/small"
    log "making $files files of 1-16 KiB under $tree"
    python3 - "$tree" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(11)
for i in range(n):
    d = os.path.join(root, f"d{i // 10000:02}", f"e{(i // 100) % 100:02}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}.bin"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 16384)))
PY
    bytes=$(du -sb --apparent-size "$tree" | cut -f1)
    # What a shell user would run: every file through openssl, on every core.
    fsum=(sh -c 'find "$1" -type f -print0 | xargs -0 -P "$2" -n 2000 openssl dgst -sha256' _ "$tree" "$ncpu")
    ours_s=() ours_cpu=() xargs_s=() xargs_cpu=()
    for ((i = 1; i <= reps; i++)); do
        timed ours "$tg" -q hash "$tree"
        timed xargs "${fsum[@]}"
        log "rep $i: hash DIR ${ours_s[-1]} s (cpu ${ours_cpu[-1]}), find|xargs openssl ${xargs_s[-1]} s"
    done
    t=$(median "${ours_s[@]}") x=$(median "${xargs_s[@]}")
    tc=$(median "${ours_cpu[@]}") xc=$(median "${xargs_cpu[@]}")
    rate=$(awk -v n="$files" -v s="$t" 'BEGIN { printf "%.0f", n / s }')
    printf '\n%s files of 1-16 KiB (%s bytes) in tmpfs, median of %s\n' "$files" "$bytes" "$reps"
    row "torrentguard hash DIR" "$rate files/s" "$t" "$tc"
    row "find | xargs -P $ncpu openssl dgst -sha256" "$(mbps "$bytes" "$x") MB/s" "$x" "$xc"
    small_json=$(
        cat <<JSON
{"files": $files, "bytes": $bytes, "tree": {"secs": $t, "cpu_secs": $tc, "files_per_s": $rate,
 "mb_per_s": $(mbps "$bytes" "$t")}, "find_xargs_openssl": {"secs": $x, "cpu_secs": $xc}}
JSON
    )
fi

if [[ -n $json_out ]]; then
    python3 - "$json_out" "$big_json" "$small_json" "$ROOT_DIR" <<'PY'
import datetime, json, os, subprocess, sys
out, big, small, root = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip()
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
           "commit": commit, "cores": os.cpu_count(),
           "load_avg_1m": float(open("/proc/loadavg").read().split()[0]),
           "big_file": big, "small_files": small}, open(out, "w"), indent=2)
PY
    log "wrote $json_out"
fi
