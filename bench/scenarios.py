#!/usr/bin/env python3
"""Peer-to-peer scenarios for bench/run: TorrentGuard one-to-one and one-to-N, aria2c, rqbit,
scp, and the shaped swarm in network namespaces. Writes one JSON object to --out.

Every process is started without a shell under `/usr/bin/time -v` (its own process group, so
signals reach it through the group), its stdout/stderr read line by line on threads, readiness
taken from the lines it prints (never from a sleep), and its peak RSS from time's "Maximum
resident set size". (Not from this script's own wait4(): a child forked from Python keeps the
interpreter's RSS as its high-water mark across exec, which would inflate small figures.)

All traffic stays on 127.0.0.1 or inside network namespaces this script creates and deletes.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Proc:
    """A child process whose output lines arrive, timestamped, on a queue."""

    def __init__(self, name, argv, events=None, cwd=None, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        fd, self.time_file = tempfile.mkstemp(prefix="tg-bench-time.")
        os.close(fd)
        self.argv = ["/usr/bin/time", "-v", "-o", self.time_file] + self.argv
        self.events = events if events is not None else queue.Queue()
        self.lines = []
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.pid = self.p.pid
        self.rc = None
        self.maxrss_kib = None
        # (user, system) CPU seconds from GNU time, once reaped.
        self.cpu = None
        self.t_exit = None
        for stream, tag in ((self.p.stdout, "out"), (self.p.stderr, "err")):
            threading.Thread(target=self._pump, args=(stream, tag), daemon=True).start()

    def _pump(self, stream, tag):
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append((tag, line))
            self.events.put((self, time.monotonic(), tag, line))
        self.events.put((self, time.monotonic(), tag, None))

    def alive(self):
        return self.rc is None

    def reap(self, timeout=None):
        """Waits for the exit (up to timeout s) and records rc, peak RSS, exit time."""
        if self.rc is not None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG if deadline else 0)
            if pid == self.pid:
                self.t_exit = time.monotonic()
                self.rc = os.waitstatus_to_exitcode(status)
                self.p.returncode = self.rc
                self.maxrss_kib = None
                try:
                    with open(self.time_file) as f:
                        report = f.read()
                    os.unlink(self.time_file)
                    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
                    self.maxrss_kib = int(m.group(1)) if m else None
                    u = re.search(r"User time \(seconds\): ([\d.]+)", report)
                    k = re.search(r"System time \(seconds\): ([\d.]+)", report)
                    self.cpu = (float(u.group(1)), float(k.group(1))) if u and k else None
                    # time exits with its child's status, or says which signal ended it.
                    if "Command terminated by signal" in report:
                        self.rc = -int(re.search(r"terminated by signal (\d+)", report).group(1))
                except OSError:
                    pass
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)  # polling the exit of a child we are stopping, not readiness

    def stop(self, sig=signal.SIGINT, grace=15):
        if self.rc is not None:
            return
        # The whole group: GNU time ignores SIGINT and SIGQUIT while it waits, its child does not.
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        if not self.reap(grace):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reap()

    def tail(self, n=15):
        return "\n".join(f"  [{self.name} {t}] {l}" for t, l in self.lines[-n:])

    def live_cpu(self):
        """(user, system) CPU seconds so far of the program GNU time runs (its child), from
        /proc; None if it is gone."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                child = int(f.read().split()[0])
            with open(f"/proc/{child}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            tick = os.sysconf("SC_CLK_TCK")
            return int(fields[11]) / tick, int(fields[12]) / tick
        except (OSError, IndexError, ValueError):
            return None

    @property
    def rss_mib(self):
        return None if self.maxrss_kib is None else round(self.maxrss_kib / 1024, 1)


def wait_for(proc: Proc, pattern: str, timeout: float, stream=None):
    """Reads proc's lines until one matches pattern; returns (match, time). Lines of other
    processes that share the queue are ignored here."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    closed = set()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{proc.name}: no line matching {pattern!r} within {timeout:.0f}s\n{proc.tail()}")
        try:
            p, t, tag, line = proc.events.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if p is not proc:
            continue
        if line is None:
            closed.add(tag)
            if len(closed) == 2:
                proc.reap(5)
                raise RuntimeError(f"{proc.name} exited (rc {proc.rc}) before printing {pattern!r}\n{proc.tail()}")
            continue
        if stream and tag != stream:
            continue
        m = rx.search(line)
        if m:
            return m, t


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same_file(a, b):
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 4) if xs else None


def mx(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def mbps(nbytes, secs):
    return round(nbytes / 1e6 / secs, 1) if secs else None


def version_of(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:
        return None


def ns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


# ----------------------------------------------------------------------------------------------
# TorrentGuard


class TG:
    def __init__(self, release_dir: Path, timeout: float):
        self.cli = release_dir / "torrentguard"
        self.tracker_bin = release_dir / "torrentguard-tracker"
        self.timeout = timeout

    def available(self):
        missing = [str(p) for p in (self.cli, self.tracker_bin) if not os.access(p, os.X_OK)]
        return (False, "missing " + ", ".join(missing)) if missing else (True, "")

    def tracker(self, data_dir, listen="127.0.0.1:0", ns=None):
        p = Proc("tracker", ns_prefix(ns) + [self.tracker_bin, "--listen", listen, "--data-dir", data_dir])
        m, _ = wait_for(p, r"listening on (https://\S+) fingerprint (sha256:[0-9a-f]{64})", 60)
        return p, m.group(1), m.group(2)

    def share(self, data_dir, file, url, fp, listen="127.0.0.1:0", ns=None, extra=()):
        argv = ns_prefix(ns) + [self.cli, "--data-dir", data_dir, "--json", "share", file,
                                "--tracker", url, "--tracker-fingerprint", fp, "--listen", listen, *extra]
        p = Proc("seeder", argv)
        m, _ = wait_for(p, r'^\{.*"event"\s*:\s*"seeding".*\}$', self.timeout, stream="out")
        ev = json.loads(m.group(0))
        return p, ev["file_id"]

    def get_argv(self, data_dir, file_id, out_dir, url, fp, listen="127.0.0.1:0", seed=False, ns=None, extra=()):
        return ns_prefix(ns) + [self.cli, "--data-dir", data_dir, "--json", "get", file_id, "-o", out_dir,
                                "--tracker", url, "--tracker-fingerprint", fp, "--listen", listen,
                                *(["--seed"] if seed else []), *extra]


def completed_event(line):
    if line and line.startswith("{") and '"completed"' in line:
        try:
            ev = json.loads(line)
        except ValueError:
            return None
        return ev if ev.get("event") == "completed" else None
    return None


def cpu_of(seeder, seeder_cpu0, downs, delivered):
    """CPU seconds of one repetition: the seeder's (from /proc, it lives across repetitions)
    and the downloaders' (from GNU time), and their sum per GiB delivered."""
    s1 = seeder.live_cpu()
    if s1 is None or seeder_cpu0 is None or any(p.cpu is None for p in downs):
        return None
    su, ss = s1[0] - seeder_cpu0[0], s1[1] - seeder_cpu0[1]
    du, ds = sum(p.cpu[0] for p in downs), sum(p.cpu[1] for p in downs)
    total = su + ss + du + ds
    return {"seeder_user": round(su, 2), "seeder_sys": round(ss, 2), "downloaders_user": round(du, 2),
            "downloaders_sys": round(ds, 2), "secs_per_gib": round(total / (delivered / 2**30), 3)}


def tg_one_to_n(tg: TG, file: Path, work: Path, n: int, reps: int):
    """One seeder, n downloaders started together (with --seed when n > 1). Returns figures."""
    size = file.stat().st_size
    base = Path(tempfile.mkdtemp(prefix=f"tg-1to{n}.", dir=work))
    tracker, url, fp = tg.tracker(base / "tracker")
    seeder = None
    runs = []
    try:
        seeder, file_id = tg.share(base / "seeder", file, url, fp)
        for rep in range(reps):
            events = queue.Queue()
            downs = []
            seeder_cpu0 = seeder.live_cpu()
            t0 = time.monotonic()
            for i in range(n):
                d = base / f"r{rep}-d{i}"
                argv = tg.get_argv(d / "data", file_id, d / "out", url, fp, seed=n > 1)
                downs.append(Proc(f"get{i}", argv, events=events))
            done = {}
            deadline = t0 + tg.timeout
            while len(done) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"1->{n}: {n - len(done)} downloads unfinished after {tg.timeout:.0f}s\n"
                                       + "\n".join(p.tail(5) for p in downs))
                try:
                    p, t, tag, line = events.get(timeout=min(left, 1.0))
                except queue.Empty:
                    continue
                if line is None:
                    if tag == "out" and p not in done:
                        p.reap(10)
                        if p.rc not in (0, None) or p.rc is None:
                            raise RuntimeError(f"{p.name} ended without completing (rc {p.rc})\n{p.tail()}")
                    continue
                ev = completed_event(line) if tag == "out" else None
                if ev is not None and p not in done:
                    done[p] = (t - t0, ev)
            # A one-shot get exits after completing: its wall time runs to its exit.
            if n == 1:
                p = downs[0]
                p.reap(60)
                if p.rc != 0:
                    raise RuntimeError(f"get exited with {p.rc}\n{p.tail()}")
                wall = [p.t_exit - t0]
            else:
                wall = [done[p][0] for p in downs]
                for p in downs:
                    p.stop(signal.SIGINT)
            for i, p in enumerate(downs):
                out = Path(done[p][1].get("path") or (base / f"r{rep}-d{i}" / "out" / file.name))
                if not same_file(file, out):
                    raise RuntimeError(f"{p.name}: {out} differs from the source")
            total = max(wall)
            cpu = cpu_of(seeder, seeder_cpu0, downs, size * n)
            runs.append({
                "secs": round(total, 4),
                "per_downloader_secs": [round(w, 4) for w in wall],
                "engine_secs": [done[p][1].get("secs") for p in downs],
                "downloader_rss_mib": [p.rss_mib for p in downs],
                "cpu": cpu,
            })
            log(f"  TorrentGuard 1->{n} rep {rep + 1}: {total:.3f} s, "
                f"{mbps(size * n, total)} MB/s aggregate, RSS max {mx([p.rss_mib for p in downs])} MiB")
            for i in range(n):
                shutil.rmtree(base / f"r{rep}-d{i}", ignore_errors=True)
    finally:
        if seeder:
            seeder.stop(signal.SIGINT)
        tracker.stop(signal.SIGINT)
        shutil.rmtree(base, ignore_errors=True)
    secs = med([r["secs"] for r in runs])
    per_gib = [r["cpu"]["secs_per_gib"] for r in runs if r["cpu"]]
    return {
        "downloaders": n,
        # Where the time goes as n grows (issue 12 §2): CPU seconds (user + system, seeder and
        # every downloader) per GiB delivered, and its split; the machine has os.cpu_count() cores.
        "cpu_secs_per_gib": med(per_gib) if per_gib else None,
        "cpu_split": min((r["cpu"] for r in runs if r["cpu"]),
                         key=lambda c: abs(c["secs_per_gib"] - med(per_gib))) if per_gib else None,
        "secs": secs,
        "mb_per_s_per_downloader": mbps(size, secs),
        "mb_per_s_aggregate": mbps(size * n, secs),
        "downloader_rss_mib_max": mx([x for r in runs for x in r["downloader_rss_mib"]]),
        "seeder_rss_mib": seeder.rss_mib if seeder else None,
        "tracker_rss_mib": tracker.rss_mib,
        "runs": runs,
    }


# ----------------------------------------------------------------------------------------------
# aria2c with opentracker


def bencode_info_hash(torrent: Path):
    import hashlib
    d = torrent.read_bytes()

    def end(p):
        c = d[p:p + 1]
        if c == b"i":
            return d.index(b"e", p) + 1
        if c in (b"l", b"d"):
            p += 1
            while d[p:p + 1] != b"e":
                p = end(p)
            return p + 1
        colon = d.index(b":", p)
        return colon + 1 + int(d[p:colon])

    i = d.index(b"4:info") + 6
    return hashlib.sha1(d[i:end(i)]).hexdigest()


def make_torrent(file: Path, announce: str, out: Path):
    if shutil.which("mktorrent"):
        subprocess.run(["mktorrent", "-a", announce, "-l", "18", "-o", out, file], check=True,
                       stdout=subprocess.DEVNULL)
        return
    # Fallback: a single-file torrent with 256 KiB pieces, written here.
    import hashlib
    piece = 1 << 18
    hashes = bytearray()
    with open(file, "rb") as f:
        while chunk := f.read(piece):
            hashes += hashlib.sha1(chunk).digest()

    def be(x):
        if isinstance(x, int):
            return b"i%de" % x
        if isinstance(x, str):
            x = x.encode()
        if isinstance(x, (bytes, bytearray)):
            return b"%d:" % len(x) + bytes(x)
        if isinstance(x, dict):
            return b"d" + b"".join(be(k) + be(x[k]) for k in sorted(x)) + b"e"
        raise TypeError(x)

    out.write_bytes(be({"announce": announce, "info": {
        "length": file.stat().st_size, "name": file.name, "piece length": piece, "pieces": hashes}}))


ARIA2_COMMON = ["--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                "--enable-peer-exchange=false", "--bt-tracker-interval=1", "--summary-interval=0",
                "--show-console-readout=false", "--file-allocation=none", "--check-certificate=false",
                "--disable-ipv6=true", "--no-conf=true", "--auto-save-interval=0"]


def aria2(file: Path, work: Path, reps: int, timeout: float):
    size = file.stat().st_size
    base = Path(tempfile.mkdtemp(prefix="aria2.", dir=work))
    ot_root = base / "opentracker"
    ot_root.mkdir()
    port = free_port()
    announce = f"http://127.0.0.1:{port}/announce"
    torrent = base / "file.torrent"
    make_torrent(file, announce, torrent)
    (ot_root / "whitelist").write_text(bencode_info_hash(torrent) + "\n")
    os.chmod(ot_root, 0o755)
    # opentracker chroots into -d and reads the whitelist from inside it.
    tracker = Proc("opentracker", ["opentracker", "-i", "127.0.0.1", "-p", port, "-P", port,
                                   "-d", ot_root, "-w", "whitelist"])
    seed_dir = file.parent
    seeder = None
    runs = []
    try:
        seeder = Proc("aria2-seed", ["aria2c", "-V", "--seed-ratio=0.0", "-d", seed_dir,
                                     f"--listen-port={free_port()}", "--log=-", "--log-level=info",
                                     "--console-log-level=warn", *ARIA2_COMMON, torrent])
        # Ready once its hash check is done and the tracker has answered its first announce.
        wait_for(seeder, r"Verification finished successfully", timeout)
        wait_for(seeder, r"Response received:", 60)
        for rep in range(reps):
            out = base / f"out{rep}"
            out.mkdir()
            t0 = time.monotonic()
            p = Proc("aria2-get", ["aria2c", "-d", out, "--seed-time=0", f"--listen-port={free_port()}",
                                   "--console-log-level=warn", *ARIA2_COMMON, torrent])
            if not p.reap(timeout):
                p.stop(signal.SIGKILL)
                raise RuntimeError(f"aria2c download unfinished after {timeout:.0f}s\n{p.tail()}")
            secs = p.t_exit - t0
            if p.rc != 0 or not same_file(file, out / file.name):
                raise RuntimeError(f"aria2c download failed (rc {p.rc})\n{p.tail()}")
            runs.append({"secs": round(secs, 4), "downloader_rss_mib": p.rss_mib})
            log(f"  aria2c rep {rep + 1}: {secs:.3f} s, {mbps(size, secs)} MB/s, RSS {p.rss_mib} MiB")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if seeder:
            seeder.stop(signal.SIGINT)
        tracker.stop(signal.SIGINT)
        # aria2 leaves its control file next to the seeded one when interrupted.
        for extra in (seed_dir / (file.name + ".aria2"),):
            extra.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)
    secs = med([r["secs"] for r in runs])
    return {"secs": secs, "mb_per_s": mbps(size, secs),
            "downloader_rss_mib_max": mx([r["downloader_rss_mib"] for r in runs]),
            "seeder_rss_mib": seeder.rss_mib if seeder else None, "runs": runs,
            "version": version_of(["aria2c", "--version"]),
            "notes": "BitTorrent v1 (SHA-1 pieces of 256 KiB), unencrypted, opentracker on loopback"}


# ----------------------------------------------------------------------------------------------
# rqbit


RQBIT_COMMON = ["--disable-dht", "--disable-dht-persistence", "--disable-lsd",
                "--disable-upnp-port-forward", "--listen-ip", "127.0.0.1", "--ipv4-only"]


def rqbit(rqbit_bin: str, file: Path, work: Path, reps: int, timeout: float):
    size = file.stat().st_size
    base = Path(tempfile.mkdtemp(prefix="rqbit.", dir=work))
    seed_port = free_port()
    env = dict(os.environ, RUST_LOG="warn")
    seeder = Proc("rqbit-share", [rqbit_bin, *RQBIT_COMMON, "--listen-port", seed_port,
                                  "--http-api-listen-addr", f"127.0.0.1:{free_port()}", "share", file],
                  env=env)
    runs = []
    try:
        m, _ = wait_for(seeder, r"magnet link: (magnet:\S+)", timeout)
        magnet = m.group(1)
        for rep in range(reps):
            out = base / f"out{rep}"
            t0 = time.monotonic()
            p = Proc("rqbit-get", [rqbit_bin, *RQBIT_COMMON, "--listen-port", free_port(), "download",
                                   "--disable-http-api", "-e", "--initial-peers", f"127.0.0.1:{seed_port}",
                                   "-o", out, magnet], env=env)
            if not p.reap(timeout):
                p.stop(signal.SIGKILL)
                raise RuntimeError(f"rqbit download unfinished after {timeout:.0f}s\n{p.tail()}")
            secs = p.t_exit - t0
            got = out / file.name
            if p.rc != 0 or not same_file(file, got):
                raise RuntimeError(f"rqbit download failed (rc {p.rc})\n{p.tail()}")
            runs.append({"secs": round(secs, 4), "downloader_rss_mib": p.rss_mib})
            log(f"  rqbit rep {rep + 1}: {secs:.3f} s, {mbps(size, secs)} MB/s, RSS {p.rss_mib} MiB")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        seeder.stop(signal.SIGINT)
        shutil.rmtree(base, ignore_errors=True)
    secs = med([r["secs"] for r in runs])
    return {"secs": secs, "mb_per_s": mbps(size, secs),
            "downloader_rss_mib_max": mx([r["downloader_rss_mib"] for r in runs]),
            "seeder_rss_mib": seeder.rss_mib, "runs": runs,
            "version": version_of([rqbit_bin, "--version"]),
            "notes": "BitTorrent v1, unencrypted, direct peer (--initial-peers), magnet from `rqbit share`"}


# ----------------------------------------------------------------------------------------------
# scp to a private sshd on a loopback port


class PrivateSshd:
    """A private sshd on a free 127.0.0.1 port, with its own host key and a fresh user key
    (key auth only, internal-sftp), in a new directory under base_dir; stopped and removed on
    exit. `ssh_opts` are the client options that reach it (port, key, no host-key prompt)."""

    def __init__(self, base_dir: Path, prefix="sshd."):
        self.base = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
        self.sshd = None

    def __enter__(self):
        base = self.base
        try:
            os.chmod(base, 0o700)
            hostkey, self.userkey = base / "host_ed25519", base / "user_ed25519"
            for k in (hostkey, self.userkey):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
            auth = base / "authorized_keys"
            shutil.copy(str(self.userkey) + ".pub", auth)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
            self.port = free_port()
            self.sshd = Proc("sshd", [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null",
                                      "-h", hostkey, "-p", self.port, "-o", "ListenAddress=127.0.0.1",
                                      "-o", f"AuthorizedKeysFile={auth}", "-o", "StrictModes=no",
                                      "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                                      "-o", "PermitRootLogin=prohibit-password", "-o", "UsePAM=no",
                                      "-o", "PidFile=none", "-o", "LogLevel=INFO",
                                      "-o", "Subsystem=sftp internal-sftp"])
            self.user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                                 text=True).stdout.strip()
            wait_for(self.sshd, r"Server listening on 127\.0\.0\.1 port", 30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.ssh_opts = ["-i", str(self.userkey), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
        return self

    def target(self, path):
        return f"{self.user}@127.0.0.1:{path}"

    def tail(self):
        return self.sshd.tail() if self.sshd else ""

    def __exit__(self, *exc):
        if self.sshd:
            self.sshd.stop(signal.SIGINT)
        shutil.rmtree(self.base, ignore_errors=True)


def scp(file: Path, work: Path, reps: int, timeout: float):
    size = file.stat().st_size
    runs = []
    with PrivateSshd(work, prefix="scp.") as ssh:
        for rep in range(reps):
            dest = ssh.base / f"copy{rep}.bin"
            t0 = time.monotonic()
            p = Proc("scp", ["scp", "-q", "-P", ssh.port, *ssh.ssh_opts, file, ssh.target(dest)])
            if not p.reap(timeout):
                p.stop(signal.SIGKILL)
                raise RuntimeError(f"scp unfinished after {timeout:.0f}s")
            secs = p.t_exit - t0
            if p.rc != 0 or not same_file(file, dest):
                raise RuntimeError(f"scp failed (rc {p.rc})\n{p.tail()}\n{ssh.tail()}")
            runs.append({"secs": round(secs, 4), "client_rss_mib": p.rss_mib})
            log(f"  scp rep {rep + 1}: {secs:.3f} s, {mbps(size, secs)} MB/s, RSS {p.rss_mib} MiB")
            dest.unlink()
    secs = med([r["secs"] for r in runs])
    return {"secs": secs, "mb_per_s": mbps(size, secs),
            "downloader_rss_mib_max": mx([r["client_rss_mib"] for r in runs]), "runs": runs,
            "version": version_of(["ssh", "-V"]),
            "notes": "OpenSSH scp (SFTP protocol) to a private sshd on 127.0.0.1, default cipher; "
                     "RSS is the scp client with its ssh child"}


# ----------------------------------------------------------------------------------------------
# Swarm: seeder upload as the bottleneck, shaped with tc in namespaces made here


class Netns:
    """A hub namespace with a bridge, and one namespace per host joined to it by a veth pair.
    Host i has 10.77.0.(i+1)/24. Egress of the host's veth is shaped to its upload rate, egress
    of the hub's end to its download rate (tbf)."""

    def __init__(self, tag, hosts):
        self.tag = tag
        self.hub = f"{tag}-hub"
        self.hosts = hosts  # list of (name, up_mbit or None, down_mbit or None)
        self.made = []

    def sh(self, *argv):
        subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self):
        try:
            self.sh("ip", "netns", "add", self.hub)
            self.made.append(self.hub)
            self.sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            self.sh("ip", "-n", self.hub, "link", "set", "br0", "up")
            self.addr = {}
            for i, (name, up, down) in enumerate(self.hosts):
                ns = f"{self.tag}-{name}"
                self.sh("ip", "netns", "add", ns)
                self.made.append(ns)
                hub_end = f"v{i}"
                self.sh("ip", "-n", self.hub, "link", "add", hub_end, "type", "veth", "peer", "name", "eth0",
                        "netns", ns)
                self.sh("ip", "-n", self.hub, "link", "set", hub_end, "master", "br0", "up")
                addr = f"10.77.0.{i + 1}"
                self.sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
                self.sh("ip", "-n", ns, "link", "set", "eth0", "up")
                self.sh("ip", "-n", ns, "link", "set", "lo", "up")
                for dev_ns, dev, rate in ((ns, "eth0", up), (self.hub, hub_end, down)):
                    if rate:
                        burst = max(64 * 1024, int(rate * 1e6 / 8 / 100))  # 10 ms of traffic
                        self.sh("ip", "netns", "exec", dev_ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                                "rate", f"{rate}mbit", "burst", burst, "latency", "100ms")
                self.addr[name] = (ns, addr)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.made = []


def netns_usable():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        return False, "needs root, ip and tc"
    probe = f"tgbp{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return False, "ip netns add failed: " + r.stderr.strip()
    subprocess.run(["ip", "netns", "del", probe])
    return True, ""


class Loopback:
    """Stand-in for Netns when namespaces are unusable: every host on 127.0.0.1, unshaped."""

    def __init__(self, hosts):
        self.addr = {name: (None, "127.0.0.1") for name, _, _ in hosts}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def swarm(tg: TG, file: Path, work: Path, n: int, reps: int, up_s: float, up: float, down: float,
          use_netns=True, tag=None):
    """N downloaders (each seeding what it has) from one seeder whose upload is the bottleneck.
    Shaped with tc in namespaces; without them, with the agent's own --upload-limit on loopback
    (no download limit then, so d drops out of the bound)."""
    size = file.stat().st_size
    bits = size * 8 / 1e6  # file size in Mbit
    if not use_netns:
        down = None
    bound = max(bits / up_s, bits / down if down else 0, n * bits / (up_s + n * up))
    hosts = [("tracker", None, None), ("seed", up_s, None)] + [(f"d{i}", up, down) for i in range(n)]
    base = Path(tempfile.mkdtemp(prefix="swarm.", dir=work))
    runs = []
    tracker = seeder = None

    def limit(mbit):
        return [] if use_netns else ["--upload-limit", str(int(mbit * 1e6 / 8))]

    # tag: the namespaces' name prefix, so a caller can sweep up after a killed run.
    net_ctx = Netns(tag or f"tgb{os.getpid() % 10000}", hosts) if use_netns else Loopback(hosts)
    with net_ctx as net:
        t_ns, t_addr = net.addr["tracker"]
        try:
            tracker, url, fp = tg.tracker(base / "tracker", listen=f"{t_addr}:0", ns=t_ns)
            s_ns, s_addr = net.addr["seed"]
            seeder, file_id = tg.share(base / "seeder", file, url, fp, listen=f"{s_addr}:0", ns=s_ns,
                                       extra=limit(up_s))
            for rep in range(reps):
                events = queue.Queue()
                downs = []
                t0 = time.monotonic()
                for i in range(n):
                    ns, addr = net.addr[f"d{i}"]
                    d = base / f"r{rep}-d{i}"
                    downs.append(Proc(f"swarm-get{i}", tg.get_argv(d / "data", file_id, d / "out", url, fp,
                                                                   listen=f"{addr}:0", seed=True, ns=ns,
                                                                   extra=limit(up)),
                                      events=events))
                done = {}
                deadline = t0 + max(tg.timeout, 10 * bound)
                while len(done) < n:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RuntimeError("swarm: downloads unfinished\n" + "\n".join(p.tail(5) for p in downs))
                    try:
                        p, t, tag, line = events.get(timeout=min(left, 1.0))
                    except queue.Empty:
                        continue
                    if line is None and tag == "out" and p not in done:
                        p.reap(10)
                        raise RuntimeError(f"{p.name} ended without completing (rc {p.rc})\n{p.tail()}")
                    ev = completed_event(line) if tag == "out" else None
                    if ev is not None and p not in done:
                        done[p] = t - t0
                for p in downs:
                    p.stop(signal.SIGINT)
                for i in range(n):
                    if not same_file(file, base / f"r{rep}-d{i}" / "out" / file.name):
                        raise RuntimeError(f"swarm downloader {i}: output differs")
                    shutil.rmtree(base / f"r{rep}-d{i}", ignore_errors=True)
                total = max(done.values())
                runs.append({"secs": round(total, 4), "per_downloader_secs": sorted(round(v, 4) for v in done.values()),
                             "downloader_rss_mib": [p.rss_mib for p in downs]})
                log(f"  swarm rep {rep + 1}: {total:.3f} s vs fluid bound {bound:.3f} s (x{total / bound:.2f})")
        finally:
            if seeder:
                seeder.stop(signal.SIGINT)
            if tracker:
                tracker.stop(signal.SIGINT)
            shutil.rmtree(base, ignore_errors=True)
    secs = med([r["secs"] for r in runs])
    return {"downloaders": n, "upload_seeder_mbit": up_s, "upload_peer_mbit": up, "download_peer_mbit": down,
            "fluid_bound_secs": round(bound, 4), "secs": secs, "ratio_to_bound": round(secs / bound, 3),
            "seeder_rss_mib": seeder.rss_mib if seeder else None,
            "downloader_rss_mib_max": mx([x for r in runs for x in r["downloader_rss_mib"]]), "runs": runs,
            "shaping": "tc tbf on veth pairs in network namespaces created by the bench" if use_netns
            else "the agent's --upload-limit on loopback (namespaces unusable; no download limit)"}


# ----------------------------------------------------------------------------------------------
# Rate limits (issue 13 §1)


def rate_limits(tg: TG, work: Path, rate: int, secs: float):
    """The rate achieved under each limit, as a ratio to it (target: within 5 % over >= 10 s):
    `get --download-limit RATE` from an unlimited seeder, then an unlimited get from
    `share --upload-limit RATE`, of a file of RATE x secs incompressible bytes. The rate is the
    chunk bytes fetched over the download's own time from its `completed` event, which also
    counts connecting and fetching the manifest (tens of ms: a little low) while the limit lets
    its burst go at once (100 ms of the rate and one chunk: a little high)."""
    base = Path(tempfile.mkdtemp(prefix="ratelimit.", dir=work))
    file = keystream_file(base / "limited.bin", int(rate * secs), "ratelimit")
    tracker, url, fp = tg.tracker(base / "tracker")
    res = {"limit_bytes_per_s": rate, "bytes": file.stat().st_size}
    try:
        for key, share_extra, get_extra in (("download", [], ["--download-limit", str(rate)]),
                                            ("upload", ["--upload-limit", str(rate)], [])):
            seeder, file_id = tg.share(base / f"{key}-seeder", file, url, fp, extra=share_extra)
            try:
                d = base / f"{key}-get"
                p = Proc(f"get-{key}-limited", tg.get_argv(d / "data", file_id, d / "out", url, fp, extra=get_extra))
                m, _ = wait_for(p, r'^\{.*"event"\s*:\s*"completed".*\}$', max(tg.timeout, 4 * secs), stream="out")
                ev = json.loads(m.group(0))
                p.reap(60)
                if p.rc != 0 or not same_file(file, d / "out" / file.name):
                    raise RuntimeError(f"{p.name}: rc {p.rc} or output differs\n{p.tail()}")
            finally:
                seeder.stop(signal.SIGINT)
            achieved = ev["bytes_fetched"] / ev["secs"]
            res[key] = {"secs": round(ev["secs"], 3), "bytes_fetched": ev["bytes_fetched"],
                        "achieved_bytes_per_s": round(achieved), "ratio": round(achieved / rate, 4)}
            log(f"  --{key}-limit {rate} B/s: {ev['bytes_fetched']} B in {ev['secs']:.2f} s, "
                f"{achieved / rate:.4f} of the limit")
    finally:
        tracker.stop(signal.SIGINT)
        shutil.rmtree(base, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------------


def keystream_file(path: Path, nbytes: int, tag: str):
    """Writes nbytes of incompressible data to path: openssl's AES-CTR keystream over zeros,
    the same bytes for the same tag."""
    zero = open("/dev/zero", "rb")
    ks = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-pbkdf2", "-pass", f"pass:{tag}"],
                          stdin=zero, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    zero.close()
    try:
        with open(path, "wb") as f:
            left = nbytes
            while left:
                data = ks.stdout.read(min(left, 4 << 20))
                if not data:
                    raise RuntimeError("openssl keystream ended early")
                f.write(data)
                left -= len(data)
    finally:
        ks.kill()
        ks.wait()
    return path


def attempter(res, only=None):
    """attempt(key, fn): res[key] = fn(), unless key is not in `only`; a failure is noted in
    res["skipped"] and res["errors"] and the run goes on (one failing tool or scenario must
    not sink the rest)."""

    def attempt(key, fn):
        if only is not None and key not in only:
            return
        log(f"== {key}")
        try:
            res[key] = fn()
        except Exception as e:
            log(f"  {key} failed: {e}")
            res["skipped"][key] = f"failed: {str(e).splitlines()[0]}"
            res.setdefault("errors", {})[key] = str(e)

    return attempt


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--file", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--release-dir", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fanout", default="4,8", help="downloader counts for the one-to-N runs")
    ap.add_argument("--swarm-n", type=int, default=4)
    ap.add_argument("--swarm-up-seeder-mbit", type=float, default=400)
    ap.add_argument("--swarm-up-peer-mbit", type=float, default=400)
    ap.add_argument("--swarm-down-peer-mbit", type=float, default=1600)
    ap.add_argument("--swarm-no-netns", action="store_true",
                    help="shape the swarm with the agent's --upload-limit on loopback instead of tc")
    ap.add_argument("--ratelimit-bytes-per-s", type=int, default=8_000_000)
    ap.add_argument("--ratelimit-secs", type=float, default=12.0, help="at the limit; at least 10")
    ap.add_argument("--only", default="tg,aria2,rqbit,scp,swarm,ratelimit")
    a = ap.parse_args()

    only = set(a.only.split(","))
    size = a.file.stat().st_size
    timeout = max(120.0, size / 1e6 * 0.5)  # 0.5 s per MB: far beyond any sane transfer
    res = {"bytes": size, "reps": a.reps, "skipped": {}, "versions": {}}
    tg = TG(a.release_dir, timeout)

    attempt = attempter(res)

    ok, why = tg.available()
    if "tg" in only:
        if ok:
            res["versions"]["torrentguard"] = version_of([tg.cli, "--version"])
            attempt("tg_1to1", lambda: tg_one_to_n(tg, a.file, a.work, 1, a.reps))
            for n in [int(x) for x in a.fanout.split(",") if x]:
                attempt(f"tg_1to{n}", lambda n=n: tg_one_to_n(tg, a.file, a.work, n, a.reps))
        else:
            res["skipped"]["tg"] = f"TorrentGuard CLI not built ({why})"
    if "aria2" in only:
        if shutil.which("aria2c") and shutil.which("opentracker"):
            attempt("aria2", lambda: aria2(a.file, a.work, a.reps, timeout))
        else:
            res["skipped"]["aria2"] = "aria2c or opentracker not installed (Debian: aria2, opentracker)"
    if "rqbit" in only:
        rq = shutil.which("rqbit") or str(Path.home() / ".cargo/bin/rqbit")
        if os.access(rq, os.X_OK):
            attempt("rqbit", lambda: rqbit(rq, a.file, a.work, a.reps, timeout))
        else:
            res["skipped"]["rqbit"] = "rqbit not installed (cargo install rqbit failed or was skipped)"
    if "scp" in only:
        if shutil.which("sshd") or os.access("/usr/sbin/sshd", os.X_OK):
            attempt("scp", lambda: scp(a.file, a.work, a.reps, timeout))
        else:
            res["skipped"]["scp"] = "no sshd (Debian: openssh-server)"
    if "swarm" in only:
        usable, why_ns = netns_usable()
        if a.swarm_no_netns:
            usable, why_ns = False, "--swarm-no-netns"
        has_limit = ok and "--upload-limit" in subprocess.run([tg.cli, "share", "--help"], capture_output=True,
                                                               text=True).stdout
        if not ok:
            res["skipped"]["swarm"] = "TorrentGuard CLI not built"
        elif not usable and not has_limit:
            res["skipped"]["swarm"] = f"network namespaces unusable ({why_ns}) and the agent has no --upload-limit"
        else:
            if not usable:
                log(f"  network namespaces unusable ({why_ns}): shaping with the agent's --upload-limit instead")
            attempt("swarm", lambda: swarm(tg, a.file, a.work, a.swarm_n, a.reps, a.swarm_up_seeder_mbit,
                                           a.swarm_up_peer_mbit, a.swarm_down_peer_mbit, use_netns=usable))
    if "ratelimit" in only:
        if ok:
            attempt("ratelimit", lambda: rate_limits(tg, a.work, a.ratelimit_bytes_per_s, a.ratelimit_secs))
        else:
            res["skipped"]["ratelimit"] = "TorrentGuard CLI not built"
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
