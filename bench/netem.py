#!/usr/bin/env python3
"""Real links for bench/run (issue 12 §2-§4): TorrentGuard over shaped links with latency and
loss in network namespaces, beside iperf3 on the same link in the same run. Writes one JSON
object to --out.

Scenarios (each skipped with a reason in "skipped" when it cannot run):
  profile_a, profile_b  iperf3 TCP vs TorrentGuard one-to-one on 1 Gbit/s 40 ms 0.1 % loss and
                        100 Mbit/s 150 ms 1 % loss (target: TorrentGuard >= 0.90 x iperf3)
  multi_seed            4 seeders at 100 Mbit/s up each -> 1 downloader (target >= 0.90 x 400)
  hostage               the same, one seeder cut to 1 Mbit/s at 30 % done, against 3 good
                        seeders alone (target <= 1.10 x)
  compression           --compression auto vs off, compressible and random, shaped and loopback
  swarm_n16             bench/scenarios.py's shaped swarm with 16 downloaders

How the links are made. This kernel (like many VM kernels) may lack sch_netem, so delay and loss
do not come from `tc netem`: two hosts are joined by a pair of TUN devices, one in each
namespace, and `netem.py relay` (a child process holding both) moves every packet from one to
the other after the one-way delay, dropping each TCP segment with the loss probability. The
TUN devices take TSO/GSO packets (virtio-net headers), so the relay handles up to 64 KiB per
packet and keeps up with 1 Gbit/s; a lost segment is cut out of its GSO packet (the packet is
split around it), so loss is per MSS-sized segment as on a real link. The rate is `tc tbf` on
each TUN device's egress (the sender's side, ahead of the delay line), its queue limit one
bandwidth-delay product, and `tc qdisc change` slows a link mid-run. The RTT is checked with
ping before the measurements.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import json
import math
import os
import queue
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import TG, Proc, attempter, keystream_file, completed_event, log, mbps, med, mx, netns_usable, same_file, swarm, wait_for  # noqa: E402

# ----------------------------------------------------------------------------------------------
# The relay: delay and per-segment loss between TUN devices in two namespaces

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
CLONE_NEWNET = 0x40000000
VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
GSO_NONE = 0
LIBC = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_tun(ns, name):
    """A TUN device NAME created inside namespace NS, with TSO offloads; returns its fd."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        setns(target)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        return fd
    finally:
        setns(home)
        os.close(home)
        os.close(target)


def ip_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_segments(pkt: bytes):
    """(gso_size, ip_hdr_len, tcp_hdr_len, payload_len) of an IPv4 TCP packet behind its vnet
    header, or None for anything else (counted as one segment)."""
    if len(pkt) < VNET_HDR.size + 40 or pkt[VNET_HDR.size] >> 4 != 4 or pkt[VNET_HDR.size + 9] != 6:
        return None
    gso_size = VNET_HDR.unpack_from(pkt)[3]
    ihl = (pkt[VNET_HDR.size] & 0x0F) * 4
    doff = (pkt[VNET_HDR.size + ihl + 12] >> 4) * 4
    payload = len(pkt) - VNET_HDR.size - ihl - doff
    return gso_size, ihl, doff, payload


def tcp_part(pkt: bytes, ihl: int, doff: int, mss: int, first: int, last: int, nseg: int):
    """The packet carrying only segments first..last-1 of a GSO TCP packet: IP length and
    checksum, TCP sequence number and flags (FIN/PSH only on the last part, CWR only on the
    first) rewritten. The TCP checksum stays partial (NEEDS_CSUM), which local delivery of a
    CHECKSUM_PARTIAL packet does not verify."""
    v = VNET_HDR.size
    flags, _, hdr_len, _, cs_start, cs_off = VNET_HDR.unpack_from(pkt)
    head = bytearray(pkt[v:v + ihl + doff])
    body = pkt[v + ihl + doff + first * mss: v + ihl + doff + min(last * mss, len(pkt))]
    struct.pack_into("!H", head, 2, ihl + doff + len(body))
    struct.pack_into("!H", head, 10, 0)
    struct.pack_into("!H", head, 10, ip_checksum(bytes(head[:ihl])))
    seq = struct.unpack_from("!I", head, ihl + 4)[0]
    struct.pack_into("!I", head, ihl + 4, (seq + first * mss) & 0xFFFFFFFF)
    tcp_flags = head[ihl + 13]
    if last < nseg:
        tcp_flags &= ~0x09  # FIN, PSH
    if first > 0:
        tcp_flags &= ~0x80  # CWR
    head[ihl + 13] = tcp_flags
    gso_type = VNET_HDR.unpack_from(pkt)[1] if last - first > 1 else GSO_NONE
    vh = VNET_HDR.pack(flags, gso_type, hdr_len, mss if gso_type else 0, cs_start, cs_off)
    return vh + bytes(head) + body


class Direction:
    """One direction of a link: packets read from src wait `delay` s, then are written to dst;
    each TCP segment (or other packet) is lost with probability `loss`."""

    def __init__(self, src, dst, delay, loss, rng):
        self.src, self.dst, self.delay, self.loss, self.rng = src, dst, delay, loss, rng
        self.line = collections.deque()
        self.until_loss = self.draw()
        self.packets = self.lost = 0

    def draw(self):
        """Segments before the next loss (geometric), so the cost is per loss, not per segment."""
        if self.loss <= 0:
            return math.inf
        return int(math.log(1.0 - self.rng.random()) / math.log(1.0 - self.loss))

    def take(self, pkt, now):
        info = tcp_segments(pkt)
        nseg = 1
        if info and info[0] and info[3] > info[0]:
            nseg = -(-info[3] // info[0])
        self.packets += nseg
        if self.until_loss >= nseg:
            self.until_loss -= nseg
            self.line.append((now + self.delay, pkt))
            return
        # Cut the lost segments out: keep the runs between them.
        lost = []
        pos = self.until_loss
        while pos < nseg:
            lost.append(pos)
            pos += 1 + self.draw()
        self.until_loss = pos - nseg
        self.lost += len(lost)
        if nseg == 1:
            return
        gso, ihl, doff, _ = info
        start = 0
        for cut in lost + [nseg]:
            if cut > start:
                self.line.append((now + self.delay, tcp_part(pkt, ihl, doff, gso, start, cut, nseg)))
            start = cut + 1

    def flush(self, now):
        while self.line and self.line[0][0] <= now:
            try:
                os.write(self.dst, self.line.popleft()[1])
            except OSError:
                # EAGAIN: the receiving stack's backlog is full; EIO: its device is not up yet.
                # Either is a drop, as on a real link.
                pass

    def next_due(self):
        return self.line[0][0] if self.line else math.inf


def parent_check(pid):
    """A function of the time that says, at most once a second, whether pid still runs: a
    relay whose harness was killed (SIGKILL skips its cleanup) ends by itself."""
    last = [time.monotonic()]

    def alive(now):
        if not pid or now - last[0] < 1:
            return True
        last[0] = now
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    return alive


def relay_main(a):
    """`netem.py relay --link NS_A,NS_B,DEV,DELAY_MS,LOSS_PCT ...`: makes the TUN pairs, prints
    `ready`, and relays until SIGINT/SIGTERM; prints per-direction counts at the end."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The relay is the wire: ahead of the programs under test for the CPU, so their load
    # stretches its delay as little as possible (niceness only; a real-time class could
    # starve them while it spins out a sub-millisecond wait).
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
    rng = random.Random(a.seed)
    dirs = {}
    for spec in a.link:
        ns_a, ns_b, dev, delay_ms, loss_pct = spec.split(",")
        fa, fb = open_tun(ns_a, dev), open_tun(ns_b, dev)
        delay, loss = float(delay_ms) / 1000, float(loss_pct) / 100
        dirs[fa] = Direction(fa, fb, delay, loss, random.Random(rng.random()))
        dirs[fb] = Direction(fb, fa, delay, loss, random.Random(rng.random()))
        dirs[fa].name, dirs[fb].name = f"{dev} {ns_a}->{ns_b}", f"{dev} {ns_b}->{ns_a}"
    print("ready", flush=True)
    parent_alive = parent_check(a.parent)
    poll = select.poll()
    for fd in dirs:
        poll.register(fd, select.POLLIN)
    try:
        while True:
            due = min(d.next_due() for d in dirs.values())
            # poll() counts whole ms: round down, and spin through the last fraction, so a
            # packet leaves within a few µs of its time rather than up to 1 ms late.
            wait = 1000 if due == math.inf else max(0, int((due - time.monotonic()) * 1000))
            for fd, _ in poll.poll(min(wait, 1000)):
                now = time.monotonic()
                d = dirs[fd]
                for _ in range(64):
                    try:
                        pkt = os.read(fd, 65536 + VNET_HDR.size + 256)
                    except BlockingIOError:
                        break
                    d.take(pkt, now)
            now = time.monotonic()
            for d in dirs.values():
                d.flush(now)
            if not parent_alive(now):
                break
    except KeyboardInterrupt:
        pass
    finally:
        for d in dirs.values():
            print(json.dumps({"direction": d.name, "segments": d.packets, "lost": d.lost}), flush=True)


# ----------------------------------------------------------------------------------------------
# Namespaces joined by relayed links


def sh(*argv):
    r = subprocess.run([str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {r.stderr.strip()}")


class Link:
    """Host a (10.78.I.1) and host b (10.78.I.2) joined by TUN devices tglI; `up_a` is a's
    upload rate in Mbit/s (tbf on a's tglI), `up_b` b's; `delay_ms` one way; `loss_pct` per
    segment, each way."""

    def __init__(self, a, b, up_a, up_b, delay_ms, loss_pct=0.0):
        self.a, self.b, self.up_a, self.up_b = a, b, up_a, up_b
        self.delay_ms, self.loss_pct = delay_ms, loss_pct


class Links:
    """A namespace TAG-HOST per host and the relay for the links; everything made here is
    deleted on exit, whatever ends the block (an exception, Ctrl-C, SIGTERM)."""

    def __init__(self, tag, hosts, links, seed=1):
        self.tag, self.hosts, self.links, self.seed = tag, hosts, links, seed
        self.made = []
        self.relay = None

    def ns(self, host):
        return f"{self.tag}-{host}"

    def addr(self, i, host):
        """host's address on link i."""
        return f"10.78.{i}.{1 if self.links[i].a == host else 2}"

    def __enter__(self):
        try:
            for h in self.hosts:
                sh("ip", "netns", "add", self.ns(h))
                self.made.append(self.ns(h))
                sh("ip", "-n", self.ns(h), "link", "set", "lo", "up")
                # Room for a BDP of 5 MB (1 Gbit/s x 40 ms) in the socket buffers, for iperf3 and
                # TorrentGuard alike (tcp_rmem/wmem are per namespace).
                for key, val in (("net.ipv4.tcp_rmem", "4096 131072 67108864"),
                                 ("net.ipv4.tcp_wmem", "4096 16384 67108864")):
                    sh("ip", "netns", "exec", self.ns(h), "sysctl", "-qw", f"{key}={val}")
            specs = []
            for i, ln in enumerate(self.links):
                specs += ["--link", f"{self.ns(ln.a)},{self.ns(ln.b)},tgl{i},{ln.delay_ms},{ln.loss_pct}"]
            self.relay = Proc("relay", [sys.executable, Path(__file__).resolve(), "relay", "--seed", self.seed,
                                        "--parent", os.getpid(), *specs])
            wait_for(self.relay, r"^ready$", 30)
            for i, ln in enumerate(self.links):
                for host, peer, rate in ((ln.a, ln.b, ln.up_a), (ln.b, ln.a, ln.up_b)):
                    ns, dev = self.ns(host), f"tgl{i}"
                    sh("ip", "-n", ns, "addr", "add", self.addr(i, host), "peer", self.addr(i, peer), "dev", dev)
                    sh("ip", "-n", ns, "link", "set", dev, "txqueuelen", "10000", "up")
                    if rate:
                        self.shape(i, host, rate)
        except BaseException as e:
            tail = self.relay.tail() if self.relay else ""
            self.__exit__(None, None, None)
            if isinstance(e, Exception) and tail:
                raise RuntimeError(f"{e}\n{tail}") from e
            raise
        return self

    def shape(self, i, host, mbit, change=False):
        """tbf at mbit on host's side of link i. The burst holds a whole 64 KiB GSO packet (a
        smaller one would make tbf split them into MTU packets for the relay to carry one by
        one); the queue holds one bandwidth-delay product of the link."""
        ln = self.links[i]
        rtt = 2 * ln.delay_ms / 1000
        limit = max(256 * 1024, int(mbit * 1e6 / 8 * rtt))
        burst = max(128 * 1024, int(mbit * 1e6 / 8 / 1000))
        sh("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "change" if change else "add", "dev", f"tgl{i}",
           "root", "tbf", "rate", f"{mbit}mbit", "burst", burst, "limit", limit)

    def rtt_ms(self, i):
        """Average of 5 pings across link i (from a to b), in ms; None without ping."""
        if not shutil.which("ping"):
            return None
        ln = self.links[i]
        r = subprocess.run(["ip", "netns", "exec", self.ns(ln.a), "ping", "-c", "5", "-i", "0.2", "-q",
                            self.addr(i, ln.b)], capture_output=True, text=True, timeout=60)
        m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
        if not m:
            raise RuntimeError(f"ping across link {i} failed: {r.stdout.strip()} {r.stderr.strip()}")
        return float(m.group(1))

    def __exit__(self, *exc):
        if self.relay:
            self.relay.stop(signal.SIGINT, grace=5)
            self.counts = [json.loads(l) for t, l in self.relay.lines if t == "out" and l.startswith("{")]
            self.relay = None
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.made = []


# ----------------------------------------------------------------------------------------------
# TorrentGuard and iperf3 on the links


def tracker_in(tg: TG, data_dir, ns):
    """The tracker on every address of ns (0.0.0.0): each host reaches it across its own link."""
    p = Proc("tracker", ns_exec(ns) + [tg.tracker_bin, "--listen", "0.0.0.0:0", "--data-dir", data_dir])
    m, _ = wait_for(p, r"listening on https://\S+:(\d+) fingerprint (sha256:[0-9a-f]{64})", 60)
    return p, int(m.group(1)), m.group(2)


def ns_exec(ns):
    return ["ip", "netns", "exec", ns] if ns else []


def download(tg: TG, ns, base: Path, file_id, url, fp, src: Path, on_progress=None, extra=()):
    """One `get` in ns; wall time from start to exit (manifest fetch and handshakes count).
    on_progress(event, secs) sees every progress event. Checks the copy byte for byte."""
    d = Path(tempfile.mkdtemp(prefix="get.", dir=base))
    t0 = time.monotonic()
    p = Proc("get", tg.get_argv(d / "data", file_id, d / "out", url, fp, listen="0.0.0.0:0", ns=ns, extra=extra))
    done = None
    try:
        deadline = t0 + tg.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"get unfinished after {tg.timeout:.0f}s\n{p.tail()}")
            try:
                _, t, tag, line = p.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                if tag == "out":
                    break
                continue
            if tag != "out" or not line.startswith("{"):
                continue
            ev = json.loads(line)
            if ev.get("event") == "progress" and on_progress:
                on_progress(ev, t - t0)
            elif completed_event(line):
                done = ev
        p.reap(60)
    finally:
        p.stop(signal.SIGINT)
    if p.rc != 0 or done is None:
        raise RuntimeError(f"get ended with rc {p.rc} without completing\n{p.tail()}")
    if not same_file(src, done["path"]):
        raise RuntimeError(f"{done['path']} differs from {src}")
    shutil.rmtree(d, ignore_errors=True)
    return {"secs": round(p.t_exit - t0, 4), "engine_secs": done.get("secs"), "rss_mib": p.rss_mib}


def iperf3(net: Links, i, sender, receiver, secs):
    """iperf3 TCP, one stream, sender -> receiver across link i for secs; bit/s received."""
    srv = Proc("iperf3-s", ns_exec(net.ns(receiver)) + ["iperf3", "-s", "-1", "-B", net.addr(i, receiver),
                                                         "--forceflush"])
    cli = None
    try:
        wait_for(srv, r"Server listening on", 30)
        cli = Proc("iperf3-c", ns_exec(net.ns(sender)) + ["iperf3", "-c", net.addr(i, receiver), "-t", secs, "-J"])
        if not cli.reap(secs + 60):
            raise RuntimeError("iperf3 client did not finish")
        out = json.loads("\n".join(l for t, l in cli.lines if t == "out"))
        if cli.rc != 0 or "end" not in out:
            raise RuntimeError(f"iperf3 failed (rc {cli.rc}): {out.get('error')}")
        return {"bits_per_s": out["end"]["sum_received"]["bits_per_second"],
                "retransmits": out["end"]["sum_sent"].get("retransmits"),
                "secs": out["end"]["sum_received"]["seconds"]}
    finally:
        if cli:
            cli.stop(signal.SIGINT, grace=5)
        srv.stop(signal.SIGINT, grace=5)


def random_file(src: Path, dst: Path, nbytes):
    """nbytes of incompressible data: a prefix of src, or a keystream of its own when src is
    shorter (never src repeated: TorrentGuard would fetch the repeated chunks once)."""
    if nbytes <= src.stat().st_size:
        return prefix_copy(src, dst, nbytes)
    return keystream_file(dst, nbytes, f"torrentguard-netem-{nbytes}")


def prefix_copy(src: Path, dst: Path, nbytes):
    """The first nbytes of src (random data) as a file of its own."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        left = nbytes
        while left:
            buf = f.read(min(left, 1 << 22))
            if not buf:
                raise RuntimeError(f"{src} is shorter than {nbytes} bytes")
            g.write(buf)
            left -= len(buf)
    return dst



# ----------------------------------------------------------------------------------------------
# Scenarios


def profile(tg: TG, src: Path, work: Path, tag, name, mbit, rtt_ms, loss_pct, max_mib, secs, reps):
    """iperf3 and TorrentGuard one-to-one, seeder -> downloader, on one shaped link. The file is
    sized so TorrentGuard needs about `secs` at iperf3's rate (at most max_mib); iperf3 runs for
    `secs`. Alternates iperf3 and TorrentGuard so drifting load hits both alike."""
    base = Path(tempfile.mkdtemp(prefix=f"netem-{name}.", dir=work))
    link = Link("seed", "down", mbit, mbit, rtt_ms / 2, loss_pct)
    runs = []
    try:
        with Links(tag, ["seed", "down"], [link]) as net:
            rtt = net.rtt_ms(0)
            log(f"  {name}: {mbit} Mbit/s, RTT {rtt_ms} ms set, {rtt:.1f} ms by ping, loss {loss_pct} %")
            tracker = seeder = None
            file = size = None
            try:
                tracker, port, fp = tracker_in(tg, base / "tracker", net.ns("down"))
                url_s, url_d = (f"https://{net.addr(0, 'down')}:{port}",) * 2
                for rep in range(reps):
                    ip = iperf3(net, 0, "seed", "down", secs)
                    if file is None:
                        mib = max(8, min(max_mib, int(ip["bits_per_s"] / 8 * secs / 1048576)))
                        size = mib * 1048576
                        file = random_file(src, base / f"{name}-{mib}MiB.bin", size)
                        seeder, file_id = tg.share(base / "seeder", file, url_s, fp,
                                                   listen=f"{net.addr(0, 'seed')}:0", ns=net.ns("seed"))
                    got = download(tg, net.ns("down"), base, file_id, url_d, fp, file)
                    tg_bits = size * 8 / got["secs"]
                    runs.append({"iperf3_mbit": round(ip["bits_per_s"] / 1e6, 1),
                                 "iperf3_retransmits": ip["retransmits"], "tg_secs": got["secs"],
                                 "tg_mbit": round(tg_bits / 1e6, 1), "tg_rss_mib": got["rss_mib"]})
                    log(f"  {name} rep {rep + 1}: iperf3 {ip['bits_per_s'] / 1e6:.1f} Mbit/s, TorrentGuard "
                        f"{tg_bits / 1e6:.1f} Mbit/s ({size >> 20} MiB in {got['secs']:.2f} s)")
            finally:
                for p in (seeder, tracker):
                    if p:
                        p.stop(signal.SIGINT)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ip_med, tg_med = med([r["iperf3_mbit"] for r in runs]), med([r["tg_mbit"] for r in runs])
    return {"rate_mbit": mbit, "rtt_ms_set": rtt_ms, "rtt_ms_ping": rtt, "loss_pct": loss_pct,
            "bytes": size, "iperf3_secs": secs, "iperf3_mbit": ip_med, "tg_mbit": tg_med,
            "tg_secs": med([r["tg_secs"] for r in runs]), "ratio": round(tg_med / ip_med, 3),
            "seeder_rss_mib": seeder.rss_mib if seeder else None,
            "downloader_rss_mib_max": mx([r["tg_rss_mib"] for r in runs]), "relay_counts": net.counts, "runs": runs}


class Seeders:
    """Tracker in the downloader's namespace, and k seeders (hosts s0..s{k-1}, link i joining
    si to the downloader) sharing one file, each with its own identity."""

    def __init__(self, tg: TG, net: Links, base: Path, file: Path, which):
        self.tg, self.net, self.base, self.file, self.which = tg, net, base, file, which
        self.procs = []

    def __enter__(self):
        try:
            tracker, port, fp = tracker_in(self.tg, self.base / "tracker", self.net.ns("down"))
            self.procs.append(tracker)
            self.fp, self.url = fp, f"https://{self.net.addr(0, 'down')}:{port}"
            for i in self.which:
                url = f"https://{self.net.addr(i, 'down')}:{port}"
                p, self.file_id = self.tg.share(self.base / f"s{i}", self.file, url, fp,
                                                listen=f"{self.net.addr(i, f's{i}')}:0", ns=self.net.ns(f"s{i}"))
                self.procs.append(p)
        except BaseException:
            self.__exit__()
            raise
        return self

    def get(self, on_progress=None):
        return download(self.tg, self.net.ns("down"), self.base, self.file_id, self.url, self.fp, self.file,
                        on_progress=on_progress)

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            p.stop(signal.SIGINT)
        self.rss = mx([p.rss_mib for p in self.procs[1:]])
        self.procs = []


def star(tag, k, up_mbit, rtt_ms):
    """k seeders s0.. each on its own link to `down`, upload shaped to up_mbit, RTT rtt_ms."""
    hosts = ["down"] + [f"s{i}" for i in range(k)]
    return Links(tag, hosts, [Link(f"s{i}", "down", up_mbit, None, rtt_ms / 2) for i in range(k)])


def multi_seed(tg: TG, src: Path, work: Path, tag, mib, reps, up_mbit=100, rtt_ms=10):
    """Four seeders at up_mbit each -> one downloader: goodput over 4 x up_mbit."""
    base = Path(tempfile.mkdtemp(prefix="netem-multi.", dir=work))
    try:
        file = prefix_copy(src, base / f"multi-{mib}MiB.bin", mib * 1048576)
        runs = []
        with star(tag, 4, up_mbit, rtt_ms) as net, Seeders(tg, net, base, file, range(4)) as seeders:
            rtt = net.rtt_ms(0)
            for rep in range(reps):
                got = seeders.get()
                got["mbit"] = round(file.stat().st_size * 8 / got["secs"] / 1e6, 1)
                runs.append(got)
                log(f"  4 seeders x {up_mbit} Mbit/s rep {rep + 1}: {got['mbit']} Mbit/s ({got['secs']:.2f} s)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mbit = med([r["mbit"] for r in runs])
    return {"seeders": 4, "up_mbit_each": up_mbit, "rtt_ms_set": rtt_ms, "rtt_ms_ping": rtt, "bytes": mib * 1048576,
            "secs": med([r["secs"] for r in runs]), "mbit": mbit, "ratio": round(mbit / (4 * up_mbit), 3),
            "seeder_rss_mib": seeders.rss, "downloader_rss_mib_max": mx([r["rss_mib"] for r in runs]), "runs": runs}


def hostage(tg: TG, src: Path, work: Path, tag, mib, reps, up_mbit=100, rtt_ms=10, slow_mbit=1, at=0.3):
    """4 seeders, s0 cut to slow_mbit once the download is `at` done, against s1..s3 alone."""
    base = Path(tempfile.mkdtemp(prefix="netem-hostage.", dir=work))
    try:
        file = prefix_copy(src, base / f"hostage-{mib}MiB.bin", mib * 1048576)
        ref, slow = [], []
        with star(tag, 4, up_mbit, rtt_ms) as net:
            with Seeders(tg, net, base / "ref", file, range(1, 4)) as seeders:
                for rep in range(reps):
                    ref.append(seeders.get())
                    log(f"  3 good seeders rep {rep + 1}: {ref[-1]['secs']:.2f} s")
            with Seeders(tg, net, base / "four", file, range(4)) as seeders:
                for rep in range(reps):
                    cut = {}

                    def on_progress(ev, t):
                        if not cut and ev["bytes_done"] >= at * ev["bytes_total"]:
                            net.shape(0, "s0", slow_mbit, change=True)
                            cut["at_secs"] = round(t, 3)
                            cut["at_fraction"] = round(ev["bytes_done"] / ev["bytes_total"], 3)
                    try:
                        got = seeders.get(on_progress)
                    finally:
                        net.shape(0, "s0", up_mbit, change=True)
                    if not cut:
                        raise RuntimeError("no progress event reached the cut-off: the slow-down never happened")
                    got.update(cut)
                    slow.append(got)
                    log(f"  4 seeders, s0 cut to {slow_mbit} Mbit/s at {cut['at_fraction']:.0%} "
                        f"rep {rep + 1}: {got['secs']:.2f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    t_ref, t_slow = med([r["secs"] for r in ref]), med([r["secs"] for r in slow])
    return {"bytes": mib * 1048576, "up_mbit_each": up_mbit, "rtt_ms_set": rtt_ms, "slow_mbit": slow_mbit,
            "cut_at_fraction": at, "secs_three_good": t_ref, "secs_with_slow_peer": t_slow,
            "ratio": round(t_slow / t_ref, 3), "runs_three_good": ref, "runs_with_slow_peer": slow}


LEVELS = ["INFO"] * 70 + ["DEBUG"] * 18 + ["WARN"] * 9 + ["ERROR"] * 3
SERVICES = ["api-gateway", "auth", "billing", "search", "inventory", "notifier", "scheduler", "ingest"]
MESSAGES = [
    "request completed", "cache miss, loading from store", "user session refreshed", "payment authorised",
    "retrying upstream call", "slow query detected", "message enqueued", "rate limit applied",
    "connection pool exhausted, waiting", "job finished", "token validation failed", "index segment merged",
]
PATHS = ["/v1/orders", "/v1/orders/{id}", "/v1/users/{id}", "/v1/search", "/v1/cart", "/healthz", "/v1/invoices"]


def json_logs(path: Path, mib, seed=12):
    """A compressible corpus: mib MiB of JSON log lines (timestamps, levels, services, messages,
    ids, latencies), the same bytes for a given seed."""
    rng = random.Random(seed)
    t = 1_764_000_000.0
    target = mib * 1048576
    with open(path, "w") as f:
        written = 0
        while written < target:
            lines = []
            for _ in range(2000):
                t += rng.expovariate(2000)
                ms = int((t % 1) * 1000)
                lvl, svc = rng.choice(LEVELS), rng.choice(SERVICES)
                lines.append(
                    f'{{"ts":"{time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))}.{ms:03d}Z","level":"{lvl}",'
                    f'"service":"{svc}","host":"{svc}-{rng.randrange(12)}","trace_id":"{rng.getrandbits(64):016x}",'
                    f'"user_id":{rng.randrange(1, 250000)},"method":"{rng.choice(("GET", "GET", "POST", "PUT"))}",'
                    f'"path":"{rng.choice(PATHS).replace("{id}", str(rng.randrange(1, 10**6)))}",'
                    f'"status":{rng.choice((200, 200, 200, 201, 204, 304, 400, 404, 500))},'
                    f'"latency_ms":{rng.lognormvariate(3, 1):.1f},"msg":"{rng.choice(MESSAGES)}"}}\n')
            chunk = "".join(lines)
            f.write(chunk)
            written += len(chunk)
        f.truncate(target)
    return path


def compression_flags(tg: TG):
    """Where `--compression` is accepted: the subcommands whose help lists it."""
    sites = []
    for sub in ("share", "get"):
        out = subprocess.run([tg.cli, sub, "--help"], capture_output=True, text=True).stdout
        if "--compression" in out:
            sites.append(sub)
    return sites


def compression(tg: TG, src: Path, work: Path, tag, mib, reps, sites):
    """auto vs off on a 1 Gbit/s 40 ms link without loss (compressible and random), and on
    loopback (random): the flag goes to every subcommand that accepts it."""
    base = Path(tempfile.mkdtemp(prefix="netem-zstd.", dir=work))
    res = {"bytes": mib * 1048576, "flag_on": sites, "runs": {}}
    try:
        files = {"json": json_logs(base / f"logs-{mib}MiB.json", mib),
                 "random": prefix_copy(src, base / f"random-{mib}MiB.bin", mib * 1048576)}

        def measure(net, key, file, mode):
            flag = ["--compression", mode]
            ns = net.ns("down") if net else None
            if net:
                tracker, port, fp = tracker_in(tg, base / f"t-{key}-{mode}", ns)
                url = f"https://{net.addr(0, 'down')}:{port}"
                listen, s_ns = f"{net.addr(0, 's0')}:0", net.ns("s0")
            else:
                tracker, url, fp = tg.tracker(base / f"t-{key}-{mode}")
                listen, s_ns = "127.0.0.1:0", None
            seeder = None
            try:
                seeder, file_id = tg.share(base / f"s-{key}-{mode}", file, url, fp, listen=listen, ns=s_ns,
                                           extra=flag if "share" in sites else ())
                runs = [download(tg, ns, base, file_id, url, fp, file, extra=flag if "get" in sites else ())
                        for _ in range(reps)]
            finally:
                for p in (seeder, tracker):
                    if p:
                        p.stop(signal.SIGINT)
            secs = med([r["secs"] for r in runs])
            mbit = round(file.stat().st_size * 8 / secs / 1e6, 1)
            res["runs"][f"{key}_{mode}"] = {"secs": secs, "mbit": mbit, "runs": runs}
            log(f"  {key} --compression {mode}: {mbit} Mbit/s ({secs:.2f} s)")
            return secs

        with star(tag, 1, 1000, 40) as net:
            # star() shapes only the seeder's side; the ACK path is unshaped, as in profile A.
            res["rtt_ms_ping"] = net.rtt_ms(0)
            t = {(k, m): measure(net, k, files[k], m) for k in ("json", "random") for m in ("off", "auto")}
        lo = {m: measure(None, "loopback_random", files["random"], m) for m in ("off", "auto")}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res["json_speedup"] = round(t[("json", "off")] / t[("json", "auto")], 3)
    res["random_auto_over_off"] = round(t[("random", "off")] / t[("random", "auto")], 3)
    res["loopback_auto_over_off"] = round(lo["off"] / lo["auto"], 3)
    return res



SCENARIOS = ("profile_a", "profile_b", "multi_seed", "hostage", "compression", "swarm_n16")


def run_main(a):
    # Ctrl-C and SIGTERM unwind the stack, so every `with Links(...)` deletes its namespaces.
    # SIGINT explicitly too: a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = set(a.only.split(",")) if a.only else set(SCENARIOS)
    size = a.file.stat().st_size
    tg = TG(a.release_dir, max(300.0, size / 1e6 * 2))
    res = {"reps": a.reps, "quick": a.quick, "skipped": {}, "notes": []}
    if a.quick:
        a.secs, a.a_max_mib, a.b_max_mib, a.multi_mib, a.zstd_mib, a.swarm_mib = 6, 64, 16, 96, 32, 64
    # The profiles' files are made to measure (random_file); the others are prefixes.
    cap = size >> 20
    a.multi_mib, a.zstd_mib, a.swarm_mib = (min(x, cap) for x in (a.multi_mib, a.zstd_mib, a.swarm_mib))

    attempt = attempter(res, only)

    ok, why = tg.available()
    usable, why_ns = netns_usable()
    if not ok or not usable:
        reason = f"TorrentGuard CLI not built ({why})" if not ok else f"network namespaces unusable ({why_ns})"
        for k in sorted(only & set(SCENARIOS)):
            res["skipped"][k] = reason
        a.out.write_text(json.dumps(res, indent=2) + "\n")
        return
    tag = a.tag
    # New namespaces start with the host's congestion control; iperf3 and TorrentGuard share it.
    res["tcp_congestion_control"] = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    res["link_emulation"] = ("TUN pairs and a userspace relay (delay, per-segment loss), tc tbf for the rate; "
                             "sch_netem " + ("present but not needed" if netem_present() else "absent from this kernel"))
    if shutil.which("iperf3"):
        attempt("profile_a", lambda: profile(tg, a.file, a.work, tag, "A", 1000, 40, 0.1, a.a_max_mib, a.secs, a.reps))
        attempt("profile_b", lambda: profile(tg, a.file, a.work, tag, "B", 100, 150, 1.0, a.b_max_mib, a.secs, a.reps))
    else:
        for k in ("profile_a", "profile_b"):
            if k in only:
                res["skipped"][k] = "iperf3 not installed (Debian: iperf3)"
    attempt("multi_seed", lambda: multi_seed(tg, a.file, a.work, tag, a.multi_mib, a.reps))
    attempt("hostage", lambda: hostage(tg, a.file, a.work, tag, a.multi_mib, a.reps))
    sites = compression_flags(tg)
    if sites:
        attempt("compression", lambda: compression(tg, a.file, a.work, tag, a.zstd_mib, a.reps, sites))
    elif "compression" in only:
        res["skipped"]["compression"] = "this build's agent has no --compression (not in `share --help` or `get --help`)"
    # Rates that make 16 downloaders bound by their links, not by this machine's CPU: at
    # bench/run's own 400/400/1600 Mbit/s the fluid bound asks 850 MB/s of TLS, SHA-256 and
    # writes in aggregate, more than two cores do (the one-to-eight row shows what they do).
    up_s, up, down = 200, 100, 400

    def swarm_n16():
        # A prefix of the test file: 16 copies of it are held at once, and at these rates the
        # fluid bound of 1 GiB would be 76 s a repetition.
        file = prefix_copy(a.file, a.work / f"swarm-{a.swarm_mib}MiB.bin", a.swarm_mib << 20)
        try:
            return swarm(tg, file, a.work, a.swarm_n, a.reps, up_s, up, down, tag=f"{tag}-sw")
        finally:
            file.unlink(missing_ok=True)

    attempt("swarm_n16", swarm_n16)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


def netem_present():
    probe = subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
        return True
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay", help="the link relay (started by `run`)")
    r.add_argument("--link", action="append", default=[], help="NS_A,NS_B,DEV,DELAY_MS,LOSS_PCT")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    m = sub.add_parser("run", help="the scenarios (bench/run --only netem)")
    m.add_argument("--file", type=Path, required=True, help="random test file; prefixes of it are sent")
    m.add_argument("--work", type=Path, required=True)
    m.add_argument("--release-dir", type=Path, required=True)
    m.add_argument("--reps", type=int, default=3)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--tag", default=f"tgn{os.getpid()}", help="prefix of the namespaces made here")
    m.add_argument("--only", default="", help="comma list of: " + ",".join(SCENARIOS))
    m.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every scenario")
    m.add_argument("--secs", type=int, default=20, help="iperf3 duration; profile files sized to take about this")
    m.add_argument("--a-max-mib", type=int, default=2048)
    m.add_argument("--b-max-mib", type=int, default=256)
    m.add_argument("--multi-mib", type=int, default=768, help="file of the 4-seeder and slow-peer runs")
    m.add_argument("--zstd-mib", type=int, default=1024, help="size of the compressible corpus and random file")
    m.add_argument("--swarm-n", type=int, default=16)
    m.add_argument("--swarm-mib", type=int, default=256, help="file of the N = 16 swarm (a prefix of the test file)")
    a = ap.parse_args()
    if a.cmd == "relay":
        relay_main(a)
    else:
        run_main(a)


if __name__ == "__main__":
    main()
