#!/usr/bin/env bash
# bench/hash.sh [SIZE_MIB=1024] [--reps N] [--file PATH] [--json OUT]
#
# SHA-256 throughput of TorrentGuard's streaming hasher (`tg-hash`: every 256 KiB chunk digest
# plus the whole-file digest in one pass) against `openssl dgst -sha256` on the same file, in
# tmpfs, in the same run; coreutils `sha256sum` for reference. Issue 3's target: ours ≥ 90 % of
# openssl. Runs are interleaved (openssl, ours, sha256sum, openssl, …) and the median is kept.
# Without --file, a random file of SIZE_MIB MiB is made in /dev/shm and removed afterwards.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

size_mib=1024
reps=3
file=""
json_out=""
while (($#)); do
    case $1 in
    --reps) reps=$2; shift 2 ;;
    --file) file=$2; shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    [0-9]*) size_mib=$1; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

tg_hash="$RELEASE_DIR/tg-hash"
if [[ ! -x $tg_hash ]]; then
    log "building tg-hash (release)"
    (cd "$ROOT_DIR" && cargo build --release -q -p torrentguard-bench --bin tg-hash)
fi
command -v openssl >/dev/null || die "openssl is needed"

cleanup_file=""
cleanup() { [[ -n $cleanup_file ]] && rm -f "$cleanup_file"; return 0; }
trap cleanup EXIT
if [[ -z $file ]]; then
    file=$(mktemp /dev/shm/tg-hash-bench.XXXXXX)
    cleanup_file=$file
    log "making a ${size_mib} MiB random file in /dev/shm"
    make_random_file "$file" "$size_mib"
fi
bytes=$(stat -c %s "$file")
log "file: $file ($bytes bytes, on $(stat -f -c %T "$file"))"
warm "$file"

# Correctness first: our whole-file digest must be openssl's.
ours_json=$("$tg_hash" "$file")
ours_hash=$(json_get "$ours_json" file_hash)
openssl_hash=$(openssl dgst -sha256 -r "$file" | cut -d' ' -f1)
[[ $ours_hash == "$openssl_hash" ]] ||
    die "file hash mismatch: tg-hash $ours_hash, openssl $openssl_hash"
log "file hash matches openssl: $ours_hash"

openssl_s=() ours_s=() sum_s=()
openssl_cpu=() ours_cpu=() sum_cpu=()
cpu_file=$(mktemp)
# timed NAME CMD...: wall seconds into NAME_s, CPU seconds (user + sys) into NAME_cpu.
timed() {
    local -n _wall=${1}_s _cpu=${1}_cpu
    shift
    local t
    t=$(now_ns)
    /usr/bin/time -f '%U %S' -o "$cpu_file" "$@" >/dev/null
    _wall+=("$(secs_since "$t")")
    _cpu+=("$(awk '{ printf "%.2f", $1 + $2 }' "$cpu_file")")
}
need_time
for ((i = 1; i <= reps; i++)); do
    timed openssl openssl dgst -sha256 "$file"
    timed ours "$tg_hash" "$file"
    timed sum sha256sum "$file"
    log "rep $i: openssl ${openssl_s[-1]} s (cpu ${openssl_cpu[-1]}), tg-hash ${ours_s[-1]} s (cpu ${ours_cpu[-1]}), sha256sum ${sum_s[-1]} s (cpu ${sum_cpu[-1]})"
done
rm -f "$cpu_file"

openssl_med=$(median "${openssl_s[@]}")
ours_med=$(median "${ours_s[@]}")
sum_med=$(median "${sum_s[@]}")
openssl_mbps=$(mbps "$bytes" "$openssl_med")
ours_mbps=$(mbps "$bytes" "$ours_med")
sum_mbps=$(mbps "$bytes" "$sum_med")
pct=$(awk -v a="$ours_mbps" -v b="$openssl_mbps" 'BEGIN { printf "%.1f", 100 * a / b }')
verdict=$(awk -v p="$pct" 'BEGIN { print (p >= 90 ? "met" : "MISSED") }')

printf '\nSHA-256 over %s MiB in tmpfs, median of %s (MB/s = 10^6 B/s)\n' \
    "$((bytes / 1048576))" "$reps"
openssl_cpu_med=$(median "${openssl_cpu[@]}")
ours_cpu_med=$(median "${ours_cpu[@]}")
sum_cpu_med=$(median "${sum_cpu[@]}")
printf '  %-34s %8s MB/s  (wall %s s, cpu %s s)\n' "openssl dgst -sha256" "$openssl_mbps" "$openssl_med" "$openssl_cpu_med"
printf '  %-34s %8s MB/s  (wall %s s, cpu %s s)\n' "tg-hash (chunks + file digest)" "$ours_mbps" "$ours_med" "$ours_cpu_med"
printf '  %-34s %8s MB/s  (wall %s s, cpu %s s)\n' "sha256sum (coreutils, reference)" "$sum_mbps" "$sum_med" "$sum_cpu_med"
printf '  ours / openssl: %s %% (target >= 90 %%: %s)\n' "$pct" "$verdict"

if [[ -n $json_out ]]; then
    python3 - "$json_out" <<PY
import json, sys
json.dump({
    "bytes": $bytes, "reps": $reps, "file_hash": "$ours_hash",
    "openssl": {"secs": $openssl_med, "mb_per_s": $openssl_mbps, "runs": [${openssl_s[*]/%/,}]},
    "tg_hash": {"secs": $ours_med, "mb_per_s": $ours_mbps, "runs": [${ours_s[*]/%/,}]},
    "sha256sum": {"secs": $sum_med, "mb_per_s": $sum_mbps, "runs": [${sum_s[*]/%/,}]},
    "ours_over_openssl": round($pct / 100, 3),
    "cpu_secs": {"openssl": $openssl_cpu_med, "tg_hash": $ours_cpu_med, "sha256sum": $sum_cpu_med},
    "load_avg_1m": $(cut -d' ' -f1 /proc/loadavg),
    "openssl_version": "$(openssl version | cut -d' ' -f1-2)",
}, open(sys.argv[1], "w"), indent=2)
PY
fi
