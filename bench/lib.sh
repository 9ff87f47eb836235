# shellcheck shell=bash
# Helpers shared by bench/hash.sh, bench/tls-ceiling.sh and bench/run. Sourced, not run.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck disable=SC2034  # used by the scripts that source this file
RELEASE_DIR="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release"

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Nanoseconds since the epoch.
now_ns() { date +%s%N; }

# secs_since START_NS: elapsed seconds, 6 decimals.
secs_since() {
    local end
    end=$(now_ns)
    awk -v a="$1" -v b="$end" 'BEGIN { printf "%.6f", (b - a) / 1e9 }'
}

# median NUMBER...: the median (mean of the two middle values for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) printf "%.6f\n", v[(NR + 1) / 2];
        else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# mbps BYTES SECS: decimal megabytes per second.
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", b / 1e6 / s; else print "nan" }'; }

# ratio A B: A / B, 3 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }

# json_get JSON KEY: one top-level field of a JSON object (numbers and strings).
json_get() {
    python3 -c 'import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print(v if not isinstance(v,bool) else str(v).lower())' "$1" "$2"
}

# peak_rss_mib TIME_V_FILE: "Maximum resident set size" from /usr/bin/time -v, in MiB.
peak_rss_mib() {
    awk -F': *' '/Maximum resident set size/ { printf "%.1f", $2 / 1024; found = 1 }
        END { if (!found) print "nan" }' "$1"
}

# need_time: makes sure GNU time (for peak RSS) is there, installing Debian's `time` as root.
need_time() {
    [[ -x /usr/bin/time ]] && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing Debian package time (for peak RSS)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
    fi
    [[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for peak RSS: apt-get install time"
}

# make_random_file PATH SIZE_MIB: incompressible test data (reused if it already has that size).
make_random_file() {
    local path=$1 mib=$2
    if [[ -f $path && $(stat -c %s "$path") == $((mib * 1048576)) ]]; then
        return 0
    fi
    # openssl's CTR keystream is much faster than /dev/urandom for big files.
    openssl enc -aes-128-ctr -nosalt -pass "pass:torrentguard-bench-$mib" -pbkdf2 \
        -in <(head -c $((mib * 1048576)) /dev/zero) -out "$path" 2>/dev/null ||
        head -c $((mib * 1048576)) /dev/urandom >"$path"
}

# warm PATH: pull a file into the page cache.
warm() { cat "$1" >/dev/null; }

# start_reader FIFO_VAR PATH CMD...: runs CMD in the background with its stdout on a new FIFO
# at PATH, opens that FIFO for reading on a new fd whose number is stored in FIFO_VAR, and
# leaves the pid in $! semantics via the global LAST_PID. Read lines with `read -r -u "$fd"`.
start_reader() {
    local -n _fdvar=$1
    local fifo=$2
    shift 2
    rm -f "$fifo"
    mkfifo "$fifo"
    "$@" >"$fifo" &
    # shellcheck disable=SC2034  # read by the callers
    LAST_PID=$!
    exec {_fdvar}<"$fifo"
}

# wait_line FD PATTERN [TIMEOUT_S]: reads lines from FD until one matches the ERE PATTERN;
# prints that line. Fails on EOF or timeout.
wait_line() {
    local fd=$1 pattern=$2 timeout=${3:-120} line
    while IFS= read -r -t "$timeout" -u "$fd" line; do
        if [[ $line =~ $pattern ]]; then
            printf '%s\n' "$line"
            return 0
        fi
    done
    return 1
}

# machine_json: date, CPU, cores, kernel, memory, as a JSON object.
machine_json() {
    python3 - <<'PY'
import datetime, json, os, platform, re, subprocess
cpu = "unknown"
flags = ""
try:
    with open("/proc/cpuinfo") as f:
        info = f.read()
    m = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    cpu = m.group(1).strip() if m else cpu
    m = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
    flags = m.group(1).split() if m else []
except OSError:
    pass
mem = 0
with open("/proc/meminfo") as f:
    for line in f:
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
print(json.dumps({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cpu": cpu,
    "cores": os.cpu_count(),
    "sha_ni": "sha_ni" in flags,
    "aes_ni": "aes" in flags,
    "kernel": platform.release(),
    "mem_mib": mem,
    "load_avg_1m": os.getloadavg()[0],
}))
PY
}
