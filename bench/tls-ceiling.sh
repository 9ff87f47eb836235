#!/usr/bin/env bash
# bench/tls-ceiling.sh [SIZE_MIB=1024] [--reps N] [--file PATH] [--dir DIR] [--json OUT]
#
# The ceiling for one verified TorrentGuard transfer (issue 4): two `tls-ceiling` processes on
# loopback, a rustls TLS 1.3 stream of 256 KiB chunks behind 9-byte Chunk headers, in three
# variants: the bare stream (receiver neither hashes nor writes), + SHA-256 of every chunk, and
# + SHA-256 + positional write to DIR (fsynced at the end), all on the receiver's one thread;
# and the last again with hashing and writing on a second thread (--pipeline, 4 buffers), as an
# agent that hashes off its reactor can. The ceiling is the better of the last two. Median of N
# runs; peak RSS of both processes from /usr/bin/time -v (the largest over the runs). DIR
# defaults to /dev/shm.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

size_mib=1024
reps=3
file=""
dir=/dev/shm
json_out=""
while (($#)); do
    case $1 in
    --reps) reps=$2; shift 2 ;;
    --file) file=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    [0-9]*) size_mib=$1; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

bin="$RELEASE_DIR/tls-ceiling"
if [[ ! -x $bin ]]; then
    log "building tls-ceiling (release)"
    (cd "$ROOT_DIR" && cargo build --release -q -p torrentguard-bench --bin tls-ceiling)
fi
need_time

work=$(mktemp -d "$dir/tg-tls-ceiling.XXXXXX")
sender_pid=""
cleanup() {
    if [[ -n $sender_pid ]] && kill -0 "$sender_pid" 2>/dev/null; then
        kill "$sender_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
if [[ -z $file ]]; then
    file="$work/source.bin"
    log "making a ${size_mib} MiB random file in $work"
    make_random_file "$file" "$size_mib"
fi
bytes=$(stat -c %s "$file")
warm "$file"
log "file: $file ($bytes bytes); receiver writes into $work ($(stat -f -c %T "$work"))"

# one_run MODE: one transfer; sets r_secs, r_send_rss, r_recv_rss (MiB), suite and group.
one_run() {
    local mode=$1 fd line addr fp out result
    local -a flags=()
    case $mode in
    bare) flags=(--no-hash --no-write) ;;
    hash) flags=(--no-write) ;;
    hash_write) flags=(--out "$work/received.bin") ;;
    hash_write_pipelined) flags=(--out "$work/received.bin" --pipeline) ;;
    esac
    start_reader fd "$work/sender.out" /usr/bin/time -v -o "$work/send.time" \
        "$bin" send --listen 127.0.0.1:0 --file "$file"
    sender_pid=$LAST_PID
    line=$(wait_line "$fd" '^listening ' 60) || die "sender did not start"
    addr=$(awk '{ print $2 }' <<<"$line")
    fp=$(awk '{ print $4 }' <<<"$line")
    out=$(/usr/bin/time -v -o "$work/recv.time" \
        "$bin" recv --connect "$addr" --fingerprint "$fp" "${flags[@]}")
    wait "$sender_pid" || die "sender failed"
    sender_pid=""
    exec {fd}<&-
    result=$(json_get "$out" bytes)
    [[ $result == "$bytes" ]] || die "received $result bytes of $bytes"
    if [[ $mode == hash_write* ]]; then
        cmp -s "$file" "$work/received.bin" || die "received file differs"
        rm -f "$work/received.bin"
    fi
    r_secs=$(json_get "$out" secs)
    r_send_rss=$(peak_rss_mib "$work/send.time")
    r_recv_rss=$(peak_rss_mib "$work/recv.time")
    suite=$(json_get "$out" suite)
    group=$(json_get "$out" kx_group)
}

declare -A med_secs med_mbps send_rss recv_rss runs_of
suite="" group="" r_secs="" r_send_rss="" r_recv_rss=""
modes=(bare hash hash_write hash_write_pipelined)
for mode in "${modes[@]}"; do
    secs=() s_rss=() r_rss=()
    for ((i = 1; i <= reps; i++)); do
        one_run "$mode"
        secs+=("$r_secs") s_rss+=("$r_send_rss") r_rss+=("$r_recv_rss")
        log "$mode rep $i: $r_secs s ($(mbps "$bytes" "$r_secs") MB/s)," \
            "RSS sender $r_send_rss MiB, receiver $r_recv_rss MiB"
    done
    med_secs[$mode]=$(median "${secs[@]}")
    med_mbps[$mode]=$(mbps "$bytes" "${med_secs[$mode]}")
    send_rss[$mode]=$(printf '%s\n' "${s_rss[@]}" | sort -g | tail -1)
    recv_rss[$mode]=$(printf '%s\n' "${r_rss[@]}" | sort -g | tail -1)
    runs_of[$mode]=$(IFS=,; echo "${secs[*]}")
done

printf '\nrustls TLS 1.3 loopback, %s MiB in 256 KiB chunks, %s, %s; median of %s\n' \
    "$((bytes / 1048576))" "$suite" "$group" "$reps"
printf '  %-32s %8s  %8s  %10s  %10s\n' variant "MB/s" "secs" "send RSS" "recv RSS"
for mode in "${modes[@]}"; do
    case $mode in
    bare) label="bare stream" ;;
    hash) label="+ SHA-256 per chunk" ;;
    hash_write) label="+ SHA-256 + pwrite" ;;
    hash_write_pipelined) label="+ SHA-256 + pwrite, 2nd thread" ;;
    esac
    printf '  %-32s %8s  %8s  %7s MiB  %7s MiB\n' "$label" "${med_mbps[$mode]}" \
        "${med_secs[$mode]}" "${send_rss[$mode]}" "${recv_rss[$mode]}"
done
ceiling=$(printf '%s\n' "${med_mbps[hash_write]}" "${med_mbps[hash_write_pipelined]}" | sort -g | tail -1)
printf '  verified-transfer ceiling (better of the two pwrite rows): %s MB/s\n' "$ceiling"

if [[ -n $json_out ]]; then
    python3 - "$json_out" <<PY
import json, sys
modes = {}
for m, secs, mbps, srss, rrss, runs in [
    ("bare", ${med_secs[bare]}, ${med_mbps[bare]}, ${send_rss[bare]}, ${recv_rss[bare]}, [${runs_of[bare]}]),
    ("hash", ${med_secs[hash]}, ${med_mbps[hash]}, ${send_rss[hash]}, ${recv_rss[hash]}, [${runs_of[hash]}]),
    ("hash_write", ${med_secs[hash_write]}, ${med_mbps[hash_write]}, ${send_rss[hash_write]}, ${recv_rss[hash_write]}, [${runs_of[hash_write]}]),
    ("hash_write_pipelined", ${med_secs[hash_write_pipelined]}, ${med_mbps[hash_write_pipelined]}, ${send_rss[hash_write_pipelined]}, ${recv_rss[hash_write_pipelined]}, [${runs_of[hash_write_pipelined]}]),
]:
    modes[m] = {"secs": secs, "mb_per_s": mbps, "sender_rss_mib": srss,
                "receiver_rss_mib": rrss, "runs": runs}
ceiling = max(modes["hash_write"]["mb_per_s"], modes["hash_write_pipelined"]["mb_per_s"])
json.dump({"bytes": $bytes, "reps": $reps, "ceiling_mb_per_s": ceiling, "suite": "$suite", "kx_group": "$group",
           "write_fs": "$(stat -f -c %T "$work")", "modes": modes,
           "load_avg_1m": $(cut -d' ' -f1 /proc/loadavg)},
          open(sys.argv[1], "w"), indent=2)
PY
fi
