#!/usr/bin/env python3
"""Where one seeder to N downloaders spends its CPU (issue 12 §2), kept in bench/results/.

    bench/profile-fanout.py [--file F] [--release-dir DIR] [--fanout 1,8] [--out PATH]

For each N: runs bench/scenarios.py's one-to-N once under `perf record -a` (system-wide, so
run it on a quiet machine), prints and writes the CPU seconds per GiB delivered (seeder and
downloaders, user and system, from /proc and GNU time) and perf's top symbols of the agent's
threads (tokio workers, the readers, the blocking pool). Needs perf (Debian: linux-perf) and
the release binaries; the file defaults to a 1 GiB random one made in /dev/shm.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import scenarios as S  # noqa: E402

# Thread names of the agent's processes (tokio's workers and blocking pool, the named tasks'
# threads, the main thread).
COMMS = "tokio-rt-worker,torrentguard,file-hasher"


def perf_top(data: Path, n=25):
    r = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--comm", COMMS,
                        "--sort", "dso,sym", "--stdio"], capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.strip() and line.lstrip()[0].isdigit()]
    return lines[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path)
    ap.add_argument("--release-dir", type=Path, default=BENCH.parent / "target" / "release")
    ap.add_argument("--fanout", default="1,8")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tg-profile.", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        file = a.file
        if file is None:
            file = work / "testfile-1024MiB.bin"
            subprocess.run(["bash", "-c", f'source "{BENCH}/lib.sh" && make_random_file "{file}" 1024'], check=True)
        tg = S.TG(a.release_dir, 600)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
        commit = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        out = [f"# One seeder to N downloaders: where the CPU goes ({stamp} UTC, commit {commit}, "
               f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at start, {file.stat().st_size >> 20} MiB)", ""]
        for n in (int(x) for x in a.fanout.split(",")):
            data = work / f"perf-{n}.data"
            perf = subprocess.Popen(["perf", "record", "-a", "-F", "999", "-o", str(data)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                r = S.tg_one_to_n(tg, file, work, n, 1)
            finally:
                perf.send_signal(signal.SIGINT)
                perf.wait()
            c = r.get("cpu_split") or {}
            out += [f"## 1 -> {n}: {r['secs']} s, {r['mb_per_s_aggregate']} MB/s aggregate", "",
                    f"CPU s per GiB delivered: {r.get('cpu_secs_per_gib')} (seeder user {c.get('seeder_user')} "
                    f"sys {c.get('seeder_sys')}, downloaders user {c.get('downloaders_user')} sys "
                    f"{c.get('downloaders_sys')}, in seconds for the whole run)", "",
                    "perf, agent threads only, share of all samples on the machine:", "", "```"]
            out += perf_top(data)
            out += ["```", ""]
        text = "\n".join(out) + "\n"
        print(text)
        dest = a.out or BENCH / "results" / f"profile-fanout-{stamp}.md"
        dest.write_text(text)
        print(f"written: {dest}", file=sys.stderr)
    finally:
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
