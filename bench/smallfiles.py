#!/usr/bin/env python3
"""Many small files and peak RSS at any size, for bench/run (issue 12 §5 and §1's RSS target).

small: two trees made once from a fixed seed (an AES-CTR keystream cut into files, so the bytes
       are incompressible and identical every run): 100 000 files of 4 KiB and 1 000 files of
       1 MiB, 100 files per folder, folders two levels deep. One seeder to one downloader on
       loopback, median of R, the tools interleaved rep by rep:
         TorrentGuard  `share DIR` -> `get ID` (time from get's start to its exit; the share's
                       time to its `seeding` line, i.e. the tree's hashing, reported apart),
         rsync -a      over ssh to a private loopback sshd (scenarios.PrivateSshd),
         rqbit         `share DIR` -> `download --initial-peers` of the same tree.
       Every copy is checked against the source tree (paths, sizes and SHA-256 of every file,
       nothing more, nothing less).
rss:   TorrentGuard share + get of one incompressible file per size (default 256 MiB, 2 GiB and
       8 GiB): peak RSS of the seeder and the downloader (GNU time), and the largest anonymous /
       file-backed resident sets sampled from /proc while they run (which part would grow).

Writes one JSON object to --out; report.py turns it into rows of latest.{md,json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from scenarios import (RQBIT_COMMON, TG, PrivateSshd, Proc, completed_event, keystream_file, free_port, log, mbps, med,
                       mx, same_file, version_of, wait_for)

# name -> (files, bytes per file)
TREES = {"100k_4KiB": (100_000, 4096), "1k_1MiB": (1_000, 1 << 20)}
QUICK_TREES = {"100k_4KiB": (2_000, 4096), "1k_1MiB": (50, 1 << 20)}
SEED = "torrentguard-smallfiles-12"
KEYSTREAM = ["openssl", "enc", "-aes-128-ctr", "-nosalt", "-pbkdf2"]


# ----------------------------------------------------------------------------------------------
# Test data


def keystream(tag: str):
    """An incompressible byte stream, the same for the same tag: openssl's AES-CTR over zeros."""
    zero = open("/dev/zero", "rb")
    p = subprocess.Popen([*KEYSTREAM, "-pass", f"pass:{SEED}-{tag}"], stdin=zero, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    zero.close()
    return p


def rel_path(i: int) -> str:
    return f"d{i // 10000:02}/e{(i // 100) % 100:02}/f{i:06}.bin"


def make_tree(root: Path, files: int, size: int):
    """Writes the tree unless a finished one with the same shape is already there."""
    stamp = root.parent / f"{root.name}.done"
    shape = f"{files}x{size}"
    if root.is_dir() and stamp.exists() and stamp.read_text() == shape:
        return
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.monotonic()
    ks = keystream(shape)
    try:
        for i in range(files):
            path = root / rel_path(i)
            if i % 100 == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            data = ks.stdout.read(size)
            if len(data) != size:
                raise RuntimeError("openssl keystream ended early")
            path.write_bytes(data)
    finally:
        ks.kill()
        ks.wait()
    stamp.write_text(shape)
    log(f"  made {files} files of {size} B under {root} in {time.monotonic() - t0:.1f} s")


def make_file(path: Path, size: int):
    if path.exists() and path.stat().st_size == size:
        return
    t0 = time.monotonic()
    keystream_file(path, size, f"{SEED}-file{size}")
    log(f"  made {path} ({size >> 20} MiB) in {time.monotonic() - t0:.1f} s")


def tree_digest(root: Path):
    """SHA-256 over every regular file's relative path, size and content digest, in path order,
    plus the count of files. Any other entry (a link, a special file) makes it differ."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_file() or p.is_symlink():
                entries.append((str(p.relative_to(root)), -1, "not a regular file"))
                continue
            with open(p, "rb") as f:
                entries.append((str(p.relative_to(root)), p.stat().st_size, hashlib.file_digest(f, "sha256").hexdigest()))
    entries.sort()
    h = hashlib.sha256()
    for rel, size, digest in entries:
        h.update(f"{rel}\0{size}\0{digest}\n".encode())
    return h.hexdigest(), len(entries)


def check_copy(src_digest, copy: Path, what: str):
    got = tree_digest(copy) if copy.is_dir() else (None, 0)
    if got != src_digest:
        raise RuntimeError(f"{what}: the copy in {copy} differs from the source tree "
                           f"({got[1]} files vs {src_digest[1]})")


# ----------------------------------------------------------------------------------------------
# One tool, one rep. Each returns a dict with at least "secs"; each checks its copy.


def tg_rep(tg: TG, tree: Path, base: Path, url: str, fp: str, src_digest, timeout: float):
    """A fresh share (its hashing timed to the `seeding` line), then one get timed to its exit."""
    t_share = time.monotonic()
    seeder = None
    try:
        seeder, file_id = tg.share(base / "seeder", tree, url, fp)
        hash_secs = time.monotonic() - t_share
        t0 = time.monotonic()
        p = Proc("get", tg.get_argv(base / "get", file_id, base / "out", url, fp))
        if not p.reap(timeout):
            p.stop(signal.SIGKILL)
            raise RuntimeError(f"get unfinished after {timeout:.0f}s\n{p.tail()}")
        secs = p.t_exit - t0
        if p.rc != 0:
            raise RuntimeError(f"get exited with {p.rc}\n{p.tail()}")
        ev = next((completed_event(line) for tag, line in p.lines if tag == "out" and completed_event(line)), None)
        out = Path(ev["path"]) if ev and ev.get("path") else base / "out" / tree.name
    finally:
        if seeder:
            seeder.stop(signal.SIGINT)
    check_copy(src_digest, out, "TorrentGuard")
    return {"secs": round(secs, 4), "share_hash_secs": round(hash_secs, 4),
            "engine_secs": ev.get("secs") if ev else None,
            "downloader_rss_mib": p.rss_mib, "seeder_rss_mib": seeder.rss_mib}


def rsync_rep(ssh: PrivateSshd, tree: Path, base: Path, src_digest, timeout: float):
    dest = base / "out"
    dest.mkdir(parents=True)
    rsh = shlex.join(["ssh", "-p", str(ssh.port), *ssh.ssh_opts])
    t0 = time.monotonic()
    p = Proc("rsync", ["rsync", "-a", "-e", rsh, f"{tree}/", ssh.target(f"{dest}/")])
    if not p.reap(timeout):
        p.stop(signal.SIGKILL)
        raise RuntimeError(f"rsync unfinished after {timeout:.0f}s")
    secs = p.t_exit - t0
    if p.rc != 0:
        raise RuntimeError(f"rsync failed (rc {p.rc})\n{p.tail()}\n{ssh.tail()}")
    check_copy(src_digest, dest, "rsync")
    return {"secs": round(secs, 4), "client_rss_mib": p.rss_mib}


def rqbit_rep(rq: str, tree: Path, base: Path, src_digest, timeout: float):
    env = dict(os.environ, RUST_LOG="warn", RUST_BACKTRACE="0")
    seed_port = free_port()
    # rqbit keeps a session (and its torrents) per process; a fresh seeder per rep starts clean.
    seeder = Proc("rqbit-share", [rq, *RQBIT_COMMON, "--listen-port", seed_port,
                                  "--http-api-listen-addr", f"127.0.0.1:{free_port()}", "share", tree], env=env)
    try:
        t_share = time.monotonic()
        try:
            m, _ = wait_for(seeder, r"magnet link: (magnet:\S+)", timeout)
        except RuntimeError as e:
            # Its cause is a line such as "error opening …: Too many open files (os error 24)".
            cause = next((line.strip() for _, line in seeder.lines if "os error" in line), None)
            if cause:
                limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                raise RuntimeError(f"rqbit share: {cause} (open-file limit {limit})\n{e}") from None
            raise
        hash_secs = time.monotonic() - t_share
        out = base / "out"
        t0 = time.monotonic()
        p = Proc("rqbit-get", [rq, *RQBIT_COMMON, "--listen-port", free_port(), "download", "--disable-http-api",
                               "-e", "--initial-peers", f"127.0.0.1:{seed_port}", "-o", out, m.group(1)], env=env)
        if not p.reap(timeout):
            p.stop(signal.SIGKILL)
            raise RuntimeError(f"rqbit download unfinished after {timeout:.0f}s\n{p.tail()}")
        secs = p.t_exit - t0
        if p.rc != 0:
            raise RuntimeError(f"rqbit download failed (rc {p.rc})\n{p.tail()}")
    finally:
        seeder.stop(signal.SIGINT)
    got = out / tree.name if (out / tree.name).is_dir() else out
    check_copy(src_digest, got, "rqbit")
    return {"secs": round(secs, 4), "share_hash_secs": round(hash_secs, 4), "downloader_rss_mib": p.rss_mib,
            "seeder_rss_mib": seeder.rss_mib}


def summary(runs, files, nbytes):
    secs = med([r["secs"] for r in runs])
    out = {"secs": secs, "files_per_s": round(files / secs) if secs else None, "mb_per_s": mbps(nbytes, secs),
           "reps": len(runs), "runs": runs}
    for k in ("share_hash_secs", "engine_secs"):
        if any(r.get(k) is not None for r in runs):
            out[k] = med([r.get(k) for r in runs])
    for k in ("downloader_rss_mib", "seeder_rss_mib", "client_rss_mib"):
        if any(r.get(k) is not None for r in runs):
            out[k + "_max"] = mx([r.get(k) for r in runs])
    return out


def small_tree(name, files, size, tg, rq, work: Path, data: Path, reps: int, tools):
    """All tools on one tree, interleaved rep by rep so machine load hits them alike."""
    tree = data / name
    make_tree(tree, files, size)
    src = tree_digest(tree)
    nbytes = files * size
    timeout = max(300.0, nbytes / 1e6 * 1.0 + files * 0.02)
    res = {"files": files, "file_bytes": size, "bytes": nbytes, "reps": reps, "skipped": {}}
    runs = {t: [] for t in tools}
    failed = {}
    ctx = {}
    try:
        if "tg" in tools:
            ctx["tracker"] = tg.tracker(work / f"{name}-tracker")
        if "rsync" in tools:
            ctx["ssh"] = PrivateSshd(work, prefix="rsync.").__enter__()
        for rep in range(reps):
            for tool in tools:
                if tool in failed:
                    continue
                base = Path(tempfile.mkdtemp(prefix=f"{name}-{tool}-r{rep}.", dir=work))
                try:
                    if tool == "tg":
                        _, url, fp = ctx["tracker"]
                        r = tg_rep(tg, tree, base, url, fp, src, timeout)
                    elif tool == "rsync":
                        r = rsync_rep(ctx["ssh"], tree, base, src, timeout)
                    else:
                        r = rqbit_rep(rq, tree, base, src, timeout)
                    runs[tool].append(r)
                    extra = f", hashing {r['share_hash_secs']:.2f} s" if "share_hash_secs" in r else ""
                    log(f"  {name} {tool} rep {rep + 1}: {r['secs']:.2f} s, {files / r['secs']:.0f} files/s{extra}")
                except Exception as e:  # one failing tool must not sink the others
                    log(f"  {name} {tool} failed: {e}")
                    failed[tool] = str(e)
                finally:
                    shutil.rmtree(base, ignore_errors=True)
    finally:
        if "ssh" in ctx:
            ctx["ssh"].__exit__(None, None, None)
        if "tracker" in ctx:
            ctx["tracker"][0].stop(signal.SIGINT)
    for tool in tools:
        if runs[tool]:
            res[tool] = summary(runs[tool], files, nbytes)
        if tool in failed:
            res["skipped"][tool] = "failed: " + failed[tool].splitlines()[0]
            res.setdefault("errors", {})[tool] = failed[tool]
    ours = (res.get("tg") or {}).get("secs")
    for tool in ("rsync", "rqbit"):
        other = (res.get(tool) or {}).get("secs")
        res[f"tg_speedup_over_{tool}"] = round(other / ours, 3) if ours and other else None
    return res


# ----------------------------------------------------------------------------------------------
# Peak RSS at several sizes


class RssSampler:
    """Largest VmRSS / RssAnon / RssFile / RssShmem (kB) of the program GNU time runs in a Proc,
    read from /proc every 50 ms: GNU time gives the peak, this says which kind of memory it is."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")

    def __init__(self, proc: Proc):
        self.proc = proc
        self.peak = {}
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _child(self):
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            return kids[0] if kids else None
        except OSError:
            return None

    def _run(self):
        child = None
        while not self.stop_flag.wait(0.05):
            child = child or self._child()
            if not child:
                continue
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except OSError:
                return
            for f in self.FIELDS:
                m = re.search(rf"^{f}:\s+(\d+)", status, re.M)
                if m:
                    self.peak[f] = max(self.peak.get(f, 0), int(m.group(1)))

    def result(self):
        self.stop_flag.set()
        self.thread.join(2)
        return {("threads_max" if k == "Threads" else k + "_mib"): (v if k == "Threads" else round(v / 1024, 1))
                for k, v in self.peak.items()}


def rss_at(tg: TG, size_mib: int, base: Path):
    size = size_mib << 20
    file = base / f"rss-{size_mib}MiB.bin"
    make_file(file, size)
    timeout = max(300.0, size / 1e6 * 0.5)
    tracker, url, fp = tg.tracker(base / "tracker")
    seeder = None
    try:
        t0 = time.monotonic()
        seeder, file_id = tg.share(base / "seeder", file, url, fp)
        seed_sampler = RssSampler(seeder)
        hash_secs = time.monotonic() - t0
        t0 = time.monotonic()
        p = Proc("get", tg.get_argv(base / "get", file_id, base / "out", url, fp))
        get_sampler = RssSampler(p)
        if not p.reap(timeout):
            p.stop(signal.SIGKILL)
            raise RuntimeError(f"get unfinished after {timeout:.0f}s\n{p.tail()}")
        secs = p.t_exit - t0
        if p.rc != 0:
            raise RuntimeError(f"get exited with {p.rc}\n{p.tail()}")
        get_detail = get_sampler.result()
    finally:
        if seeder:
            seeder.stop(signal.SIGINT)
        tracker.stop(signal.SIGINT)
    seed_detail = seed_sampler.result()
    out = base / "out" / file.name
    ok = same_file(file, out)
    shutil.rmtree(base / "out", ignore_errors=True)
    file.unlink()
    if not ok:
        raise RuntimeError(f"{out} differs from the source")
    # The seeder's sampler starts at its `seeding` line: GNU time's peak covers the hashing too.
    return {"size_mib": size_mib, "share_hash_secs": round(hash_secs, 3), "get_secs": round(secs, 3),
            "mb_per_s": mbps(size, secs), "seeder_rss_mib": seeder.rss_mib, "downloader_rss_mib": p.rss_mib,
            "seeder_sampled_while_serving": seed_detail, "downloader_sampled": get_detail}


def pick_rss_dir(sizes_mib, wanted: Path | None):
    """tmpfs if the largest file and its copy fit with room to spare in both /dev/shm and free
    memory, else /var/tmp (the disk): one place for every size, so the sizes compare."""
    if wanted:
        return wanted
    need = 2 * max(sizes_mib) * 1048576 + (4 << 30)
    try:
        shm = shutil.disk_usage("/dev/shm").free
        avail = int(re.search(r"^MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1)) * 1024
        if min(shm, avail) > need:
            return Path("/dev/shm")
    except (OSError, AttributeError):
        pass
    return Path("/var/tmp")


def rss_sizes(tg: TG, sizes_mib, where: Path):
    base = Path(tempfile.mkdtemp(prefix="tg-rss.", dir=where))
    fs = subprocess.run(["stat", "-f", "-c", "%T", base], capture_output=True, text=True).stdout.strip()
    res = {"dir": str(where), "fs": fs, "sizes": [], "skipped": {}}
    try:
        for mib in sizes_mib:
            d = base / f"{mib}"
            d.mkdir()
            try:
                r = rss_at(tg, mib, d)
                res["sizes"].append(r)
                log(f"  rss {mib} MiB: seeder {r['seeder_rss_mib']} MiB, downloader {r['downloader_rss_mib']} MiB "
                    f"(get {r['get_secs']:.1f} s, hashing {r['share_hash_secs']:.1f} s)")
            except Exception as e:
                log(f"  rss {mib} MiB failed: {e}")
                res["skipped"][str(mib)] = "failed: " + str(e).splitlines()[0]
            finally:
                shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    peaks = [x for s in res["sizes"] for x in (s["seeder_rss_mib"], s["downloader_rss_mib"]) if x is not None]
    res["peak_rss_mib"] = max(peaks) if peaks else None
    return res


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (copies go here)")
    ap.add_argument("--data", type=Path, help="where the trees are kept between runs (default: --work)")
    ap.add_argument("--release-dir", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--reps-100k", type=int, help="repetitions for the 100 000-file tree (default --reps)")
    ap.add_argument("--quick", action="store_true", help="2 000 and 50 files, for a smoke run")
    ap.add_argument("--only", default="small,rss", help="comma list of: small, rss")
    ap.add_argument("--tools", default="tg,rsync,rqbit", help="small: comma list of tg, rsync, rqbit")
    ap.add_argument("--trees", default=",".join(TREES), help="small: comma list of " + ", ".join(TREES))
    ap.add_argument("--rss-sizes-mib", default="256,2048,8192")
    ap.add_argument("--rss-dir", type=Path, help="where the RSS test files go (default: tmpfs if room)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    only = set(a.only.split(","))
    tg = TG(a.release_dir, 600)
    ok, why = tg.available()
    res = {"versions": {}}
    if "small" in only:
        res["small"] = small_part(a, tg, ok, why)
    if "rss" in only:
        if ok:
            sizes = [int(x) for x in a.rss_sizes_mib.split(",") if x]
            log("== peak RSS at " + ", ".join(f"{s} MiB" for s in sizes))
            res["rss"] = rss_sizes(tg, sizes, pick_rss_dir(sizes, a.rss_dir))
        else:
            res["rss"] = {"skipped": {"all": f"TorrentGuard CLI not built ({why})"}, "sizes": []}
    res["versions"]["rsync"] = version_of(["rsync", "--version"])
    a.out.write_text(json.dumps(res, indent=2) + "\n")


def raise_fd_limit(files: int):
    """rqbit keeps a descriptor open for every file of a torrent, so 100 000 files need a limit
    above that (TorrentGuard keeps at most 64 per tree). Raised for this process and so for
    every tool it starts, alike; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = files * 2 + 4096
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
        except (ValueError, OSError):  # not root: only up to the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def small_part(a, tg: TG, ok: bool, why: str):
    tools, skipped = [], {}
    rq = shutil.which("rqbit") or str(Path.home() / ".cargo/bin/rqbit")
    for t in a.tools.split(","):
        if t == "tg" and not ok:
            skipped[t] = f"TorrentGuard CLI not built ({why})"
        elif t == "rsync" and not (shutil.which("rsync") and (shutil.which("sshd") or os.access("/usr/sbin/sshd", os.X_OK))):
            skipped[t] = "rsync or sshd not installed (Debian: rsync, openssh-server)"
        elif t == "rqbit" and not os.access(rq, os.X_OK):
            skipped[t] = "rqbit not installed (cargo install rqbit failed or was skipped)"
        else:
            tools.append(t)
    trees = {k: v for k, v in (QUICK_TREES if a.quick else TREES).items() if k in a.trees.split(",")}
    fd_limit = raise_fd_limit(max(files for files, _ in trees.values()))
    data = a.data or a.work
    data.mkdir(parents=True, exist_ok=True)
    out = {"skipped": skipped, "trees": {}, "fd_limit": fd_limit,
           "versions": {"rqbit": version_of([rq, "--version"]) if "rqbit" in tools else None}}
    for name, (files, size) in trees.items():
        reps = a.reps_100k if (name == "100k_4KiB" and a.reps_100k) else a.reps
        log(f"== small files: {name} ({files} files of {size} B), {reps} reps, tools {', '.join(tools)}")
        out["trees"][name] = small_tree(name, files, size, tg, rq, a.work, data, reps, tools)
    return out


if __name__ == "__main__":
    main()
