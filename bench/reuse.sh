#!/usr/bin/env bash
# bench/reuse.sh [--size-mib N] [--changed-pct P] [--dir DIR] [--no-build]
#
# Issue 11 §3: a file of N MiB (default 1024) is shared, then the same file with P % (default 5)
# of its 256 KiB chunks changed in place; `get --reuse OLD` of the new version must move at most
# P + 1 % of the bytes over the network and take a time dominated by hashing the old copy. The
# bytes moved are the agent's own counters (`completed`: bytes_fetched, bytes_reused); the time
# is compared with `openssl dgst -sha256` over the old copy in the same run. Writes
# bench/results/reuse-<date>.{json,md} and bench/results/reuse-latest.md.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

size_mib=1024
pct=5
dir=""
build=1
while (($#)); do
    case $1 in
    --size-mib) size_mib=$2; shift 2 ;;
    --changed-pct) pct=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
if ((build)); then
    (cd "$ROOT_DIR" && cargo build --release -q -p torrentguard-agent --bin torrentguard)
fi
tg="$RELEASE_DIR/torrentguard"
[[ -x $tg ]] || die "$tg is missing (run without --no-build)"
command -v openssl >/dev/null || die "openssl is needed"
[[ -n $dir ]] || dir=$(mktemp -d /dev/shm/tg-reuse.XXXXXX)
mkdir -p "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

chunk=262144
log "making ${size_mib} MiB and a copy with ${pct} % of its chunks changed in place"
make_random_file "$dir/old.img" "$size_mib"
mkdir -p "$dir/new" "$dir/out"
cp "$dir/old.img" "$dir/new/new.img"
chunks=$((size_mib * 1048576 / chunk))
step=$((100 / pct))
changed=0
for ((c = 0; c < chunks; c += step)); do
    printf '\x5a' | dd of="$dir/new/new.img" bs=1 seek=$((c * chunk + 17)) conv=notrunc status=none
    changed=$((changed + 1))
done

start_reader share_fd "$dir/share.fifo" "$tg" --json --data-dir "$dir/s" share "$dir/new/new.img" \
    --listen 127.0.0.1:0
pids+=("$LAST_PID")
tracker_line=$(wait_line "$share_fd" '"event":"tracker"' 120) || die "no embedded tracker"
url=$(json_get "$tracker_line" url)
fp=$(json_get "$tracker_line" fingerprint)
seeding=$(wait_line "$share_fd" '"event":"seeding"' 600) || die "share did not start seeding"
id=$(json_get "$seeding" file_id)

warm "$dir/old.img"
t0=$(now_ns)
openssl dgst -sha256 "$dir/old.img" >/dev/null
openssl_s=$(secs_since "$t0")

t0=$(now_ns)
done_line=$("$tg" --json --data-dir "$dir/d" get "$id" -o "$dir/out" --reuse "$dir/old.img" \
    --tracker "$url" --tracker-fingerprint "$fp" --listen 127.0.0.1:0 | grep '"event":"completed"')
get_s=$(secs_since "$t0")
cmp "$dir/out/new.img" "$dir/new/new.img" || die "the copy differs"
fetched=$(json_get "$done_line" bytes_fetched)
reused=$(json_get "$done_line" bytes_reused)
total=$((size_mib * 1048576))
moved_pct=$(awk -v f="$fetched" -v t="$total" 'BEGIN { printf "%.2f", 100 * f / t }')
verdict=$(awk -v m="$moved_pct" -v p="$pct" 'BEGIN { print (m <= p + 1) ? "met" : "missed" }')
commit=$(git -C "$ROOT_DIR" rev-parse --short HEAD)
stamp=$(date -u +%Y%m%d-%H%M)
json=$(printf '{"date":"%s","commit":"%s","size_mib":%d,"changed_chunks":%d,"chunks":%d,"bytes_fetched":%d,"bytes_reused":%d,"moved_pct":%s,"get_secs":%s,"openssl_old_secs":%s,"target":"moved <= %d %%","verdict":"%s"}' \
    "$(date -u +%FT%TZ)" "$commit" "$size_mib" "$changed" "$chunks" "$fetched" "$reused" \
    "$moved_pct" "$get_s" "$openssl_s" $((pct + 1)) "$verdict")
mkdir -p "$BENCH_DIR/results"
printf '%s\n' "$json" >"$BENCH_DIR/results/reuse-$stamp.json"
{
    echo "| date (UTC) | commit | file | chunks changed | moved over the network | reused | get --reuse | openssl dgst of the old copy | target ≤ $((pct + 1)) % |"
    echo "|---|---|---|---|---|---|---|---|---|"
    echo "| $(date -u '+%F %H:%M') | $commit | ${size_mib} MiB | $changed of $chunks | $fetched B ($moved_pct %) | $reused B | ${get_s} s | ${openssl_s} s | $verdict |"
} | tee "$BENCH_DIR/results/reuse-$stamp.md" >"$BENCH_DIR/results/reuse-latest.md"
cat "$BENCH_DIR/results/reuse-latest.md"
