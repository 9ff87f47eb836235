#!/usr/bin/env python3
"""Merges the JSON outputs of one bench/run into results/latest.json and results/latest.md."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def load(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def fanout_cpu_md(sc):
    """Where the time goes as the fan-out grows (issue 12 §2): the CPU seconds per GiB
    delivered, split by process and user/system, for each one-to-N row."""
    rows = [sc[k] for k in sorted((k for k in sc if k.startswith("tg_1to")), key=lambda k: int(k[6:]))
            if sc[k].get("cpu_split")]
    if not rows:
        return []
    out = ["", "CPU per GiB delivered (user + system seconds of the seeder and every downloader, from "
           "/proc and GNU time; the whole machine has " + str(os.cpu_count()) + " cores):", "",
           "| downloaders | seeder user | seeder sys | downloaders user | downloaders sys | CPU s per GiB |",
           "|---:|---:|---:|---:|---:|---:|"]
    for v in rows:
        c = v["cpu_split"]
        out.append(f"| {v['downloaders']} | {c['seeder_user']} | {c['seeder_sys']} | {c['downloaders_user']} | "
                   f"{c['downloaders_sys']} | {c['secs_per_gib']} |")
    return out


def fmt(x, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float):
        x = f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"
    return f"{x}{unit}"


# --- many small files and peak RSS at several sizes (issue 12 §5, §1; bench/smallfiles.py) ---

def tree_label(t):
    """"100 000 files of 4 KiB", from the tree's own counts (a --quick run has fewer files)."""
    size = t.get("file_bytes") or 0
    unit = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
    return f"{t.get('files', 0):,} files of {unit}".replace(",", " ")


def small_ratios_targets(sm):
    """Ratios (the other tool's time over ours: > 1 means we are faster) and targets. A target
    is missed as soon as one measured tool beats us, unknown while one is missing."""
    ratios, targets = {}, {}
    trees = ((sm.get("small") or {}).get("trees") or {})
    for name, t in trees.items():
        known = []
        for tool in ("rsync", "rqbit"):
            r = t.get(f"tg_speedup_over_{tool}")
            ratios[f"small files {name}: {tool} time over ours"] = r
            known.append(r)
        label = tree_label(t)
        if any(r is not None and r <= 1 for r in known):
            met = False
        else:
            met = None if None in known else True
        targets[f"{label}: faster than rsync -a and rqbit"] = met
    rss = sm.get("rss") or {}
    peaks = [rss.get("peak_rss_mib")] if rss.get("sizes") else []
    what = [f"{s['size_mib']} MiB" for s in rss.get("sizes") or []]
    for name, t in trees.items():
        tg = t.get("tg") or {}
        if tg:
            peaks += [tg.get("downloader_rss_mib_max"), tg.get("seeder_rss_mib_max")]
            what.append(tree_label(t))
    peaks = [p for p in peaks if p is not None]
    if peaks:
        targets[f"share and get peak RSS < 64 MiB at every size ({', '.join(what)})"] = max(peaks) < 64
    return ratios, targets


def small_md(sm):
    md = []
    small = sm.get("small") or {}
    if small.get("trees"):
        md += ["", "## Many small files, one seeder to one downloader (loopback)", "",
               "Trees from a fixed seed (incompressible), 100 files per folder, two levels deep. "
               "TorrentGuard: wall time of `get` from start to exit; *hashing* is `share DIR` from start to "
               "its `seeding` line (fresh each rep). rsync: `rsync -a` over ssh to a private loopback sshd. "
               "rqbit: `share DIR` then `download --initial-peers`, *hashing* to its magnet line. "
               "Every copy checked file by file (paths, sizes, SHA-256). rqbit keeps a descriptor open per "
               f"file, so the open-file limit is raised to {small.get('fd_limit', '?')} for every tool.", "",
               "| tree | tool | reps | wall secs | files/s | MB/s | hashing secs | downloader RSS (MiB) | "
               "seeder RSS (MiB) |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, t in small["trees"].items():
            for tool, label in (("tg", "TorrentGuard"), ("rsync", "rsync -a over ssh"), ("rqbit", "rqbit")):
                v = t.get(tool)
                if not v:
                    continue
                down = v.get("downloader_rss_mib_max", v.get("client_rss_mib_max"))
                md.append(f"| {tree_label(t)} | {label} | {v['reps']} | {fmt(v['secs'])} | "
                          f"{fmt(v['files_per_s'])} | {fmt(v['mb_per_s'])} | {fmt(v.get('share_hash_secs'))} | "
                          f"{fmt(down)} | {fmt(v.get('seeder_rss_mib_max'))} |")
    rss = sm.get("rss") or {}
    if rss.get("sizes"):
        md += ["", "## TorrentGuard peak RSS by file size (one seeder, one downloader)", "",
               f"Files in {rss.get('fs')} ({rss.get('dir')}). Peak RSS from GNU time; anon / file: the largest "
               "anonymous and file-backed resident sets sampled from /proc every 50 ms (the seeder's from its "
               "`seeding` line on). Target < 64 MiB each.", "",
               "| size | hashing secs | get secs | MB/s | seeder peak RSS (MiB) | seeder anon / file | "
               "downloader peak RSS (MiB) | downloader anon / file |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v in rss["sizes"]:
            sd, dd = v.get("seeder_sampled_while_serving") or {}, v.get("downloader_sampled") or {}
            md.append(f"| {v['size_mib']} MiB | {fmt(v['share_hash_secs'])} | {fmt(v['get_secs'])} | "
                      f"{fmt(v['mb_per_s'])} | {fmt(v['seeder_rss_mib'])} | "
                      f"{fmt(sd.get('RssAnon_mib'))} / {fmt(sd.get('RssFile_mib'))} | {fmt(v['downloader_rss_mib'])} | "
                      f"{fmt(dd.get('RssAnon_mib'))} / {fmt(dd.get('RssFile_mib'))} |")
    return md


def small_skipped(sm):
    out = {}
    for k, v in ((sm.get("small") or {}).get("skipped") or {}).items():
        out[f"small files, {k}"] = v
    for name, t in ((sm.get("small") or {}).get("trees") or {}).items():
        for k, v in (t.get("skipped") or {}).items():
            out[f"small files {name}, {k}"] = v
    for k, v in ((sm.get("rss") or {}).get("skipped") or {}).items():
        out[f"peak RSS at {k} MiB" if k.isdigit() else "peak RSS"] = v
    return out

# ----------------------------------------------------------------------------------------------
# Real links (bench/netem.py): its own ratios, targets and section, merged into the report.

NETEM_TARGETS = (
    # key, ratio key, target label, test
    ("profile_a", "netem_a_tg_over_iperf3", "1 Gbit/s 40 ms 0.1 % loss: TorrentGuard >= 0.90 x iperf3",
     lambda r: r >= 0.9),
    ("profile_b", "netem_b_tg_over_iperf3", "100 Mbit/s 150 ms 1 % loss: TorrentGuard >= 0.90 x iperf3",
     lambda r: r >= 0.9),
    ("multi_seed", "netem_4_seeders_over_400mbit", "4 seeders x 100 Mbit/s: >= 0.90 x 400 Mbit/s",
     lambda r: r >= 0.9),
    ("hostage", "netem_slow_peer_over_3_good", "seeder cut to 1 Mbit/s at 30 %: <= 1.10 x 3 good seeders",
     lambda r: r <= 1.1),
    ("swarm_n16", "swarm_n16_over_fluid_bound", "swarm N = 16 <= 1.2 x fluid bound", lambda r: r <= 1.2),
)
COMPRESSION_TARGETS = (
    ("json_speedup", "zstd_json_auto_speedup", "compressible corpus, auto vs off: >= 2x faster",
     lambda r: r >= 2),
    ("random_auto_over_off", "zstd_random_auto_over_off", "random data, auto vs off: within 3 %",
     lambda r: abs(r - 1) <= 0.03),
    ("loopback_auto_over_off", "zstd_loopback_auto_over_off", "loopback random, auto vs off: no regression (>= 0.97)",
     lambda r: r >= 0.97),
)


def netem_results(nm):
    """(ratios, targets, markdown lines) of bench/netem.py's output."""
    ratios, targets = {}, {}
    for key, rkey, label, ok in NETEM_TARGETS:
        v = nm.get(key)
        r = v and (v.get("ratio") if key != "swarm_n16" else v.get("ratio_to_bound"))
        ratios[rkey] = r
        targets[label] = None if r is None else ok(r)
    zs = nm.get("compression") or {}
    for key, rkey, label, ok in COMPRESSION_TARGETS:
        ratios[rkey] = zs.get(key)
        targets[label] = None if zs.get(key) is None else ok(zs[key])
    md = ["", "## Real links: latency and loss (network namespaces)", ""]
    md.append(f"Links: {nm.get('link_emulation') or '–'}. TCP congestion control "
              f"{nm.get('tcp_congestion_control') or '?'}. Median of {nm.get('reps')}"
              + (" (quick: small files, not figures to quote)." if nm.get("quick") else "."))
    md += ["", "| link | RTT set / ping (ms) | loss | file | iperf3 Mbit/s | TorrentGuard Mbit/s | ratio (target) |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for key, label in (("profile_a", "A: 1 Gbit/s"), ("profile_b", "B: 100 Mbit/s")):
        v = nm.get(key)
        if v:
            md.append(f"| {label} | {v['rtt_ms_set']} / {fmt(v['rtt_ms_ping'])} | {v['loss_pct']} % | "
                      f"{v['bytes'] >> 20} MiB | {fmt(v['iperf3_mbit'])} | {fmt(v['tg_mbit'])} | "
                      f"**{fmt(v['ratio'])}** (≥ 0.90) |")
    v = nm.get("multi_seed")
    if v:
        md.append("")
        md.append(f"4 seeders, each's upload shaped to {v['up_mbit_each']} Mbit/s (RTT {v['rtt_ms_set']} ms set, "
                  f"{fmt(v['rtt_ms_ping'])} by ping) → 1 downloader, {v['bytes'] >> 20} MiB: {fmt(v['secs'])} s, "
                  f"{fmt(v['mbit'])} Mbit/s = **{fmt(v['ratio'])} × {4 * v['up_mbit_each']} Mbit/s** (target ≥ 0.90).")
    v = nm.get("hostage")
    if v:
        md.append("")
        md.append(f"Slow peer: the same 4 seeders, one cut to {v['slow_mbit']} Mbit/s (`tc qdisc change`) when the "
                  f"download is {v['cut_at_fraction']:.0%} done: {fmt(v['secs_with_slow_peer'])} s against "
                  f"{fmt(v['secs_three_good'])} s with the 3 good seeders alone: **{fmt(v['ratio'])}×** (target ≤ 1.10).")
    if zs:
        r = zs["runs"]
        md += ["", f"Compression (`--compression` on {', '.join(zs['flag_on'])}), {zs['bytes'] >> 20} MiB, "
               f"1 Gbit/s 40 ms without loss (ping {fmt(zs.get('rtt_ms_ping'))} ms) and loopback:", "",
               "| data | off Mbit/s | auto Mbit/s | ratio (target) |", "|---|---:|---:|---|",
               f"| JSON logs, shaped | {fmt(r['json_off']['mbit'])} | {fmt(r['json_auto']['mbit'])} | "
               f"**{fmt(zs['json_speedup'])}×** (≥ 2) |",
               f"| random, shaped | {fmt(r['random_off']['mbit'])} | {fmt(r['random_auto']['mbit'])} | "
               f"**{fmt(zs['random_auto_over_off'])}** (0.97–1.03) |",
               f"| random, loopback | {fmt(r['loopback_random_off']['mbit'])} | "
               f"{fmt(r['loopback_random_auto']['mbit'])} | **{fmt(zs['loopback_auto_over_off'])}** (≥ 0.97) |"]
    v = nm.get("swarm_n16")
    if v:
        md.append("")
        md.append(f"Swarm with N = {v['downloaders']} downloaders (u_s = {v['upload_seeder_mbit']:g}, "
                  f"u = {v['upload_peer_mbit']:g}, d = {v['download_peer_mbit']:g} Mbit/s, tbf on veth pairs): "
                  f"{fmt(v['secs'])} s against the fluid bound {fmt(v['fluid_bound_secs'])} s: "
                  f"**{fmt(v['ratio_to_bound'])}×** (target ≤ 1.2).")
    return ratios, targets, md


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--machine", type=Path, required=True)
    ap.add_argument("--versions", type=Path, required=True)
    ap.add_argument("--hash", type=Path)
    ap.add_argument("--tls", type=Path)
    ap.add_argument("--disk", type=Path)
    ap.add_argument("--scenarios", type=Path)
    ap.add_argument("--netem", type=Path, help="bench/netem.py's output")
    ap.add_argument("--notes", type=Path)
    ap.add_argument("--smallfiles", type=Path, help="bench/smallfiles.py output (issue 12 §5, RSS by size)")
    ap.add_argument("--out-json", type=Path, required=True)
    ap.add_argument("--out-md", type=Path, required=True)
    a = ap.parse_args()

    machine = load(a.machine) or {}
    versions = load(a.versions) or {}
    h = load(a.hash) if a.hash else None
    tls = load(a.tls) if a.tls else None
    disk = load(a.disk) if a.disk else None
    sc = load(a.scenarios) if a.scenarios else None
    notes = [line for line in (a.notes.read_text().splitlines() if a.notes and a.notes.exists() else []) if line]
    sc = sc or {"skipped": {}}
    versions.update((sc.get("versions") or {}))

    size = (sc.get("bytes") or (tls or {}).get("bytes") or (h or {}).get("bytes") or 0)
    ceiling = (tls.get("ceiling_mb_per_s") or tls["modes"]["hash_write"]["mb_per_s"]) if tls else None
    bare = tls["modes"]["bare"]["mb_per_s"] if tls else None
    ours = (sc.get("tg_1to1") or {}).get("mb_per_s_per_downloader")

    ratios = {
        "hash_ours_over_openssl": (h or {}).get("ours_over_openssl"),
        "ours_over_tls_ceiling": ratio(ours, ceiling),
        "ours_over_bare_tls": ratio(ours, bare),
    }
    for peer in ("aria2", "rqbit", "scp"):
        ratios[f"ours_over_{peer}"] = ratio(ours, (sc.get(peer) or {}).get("mb_per_s"))
    if sc.get("swarm"):
        ratios["swarm_over_fluid_bound"] = sc["swarm"]["ratio_to_bound"]
    for way in ("download", "upload"):
        ratios[f"{way}_limit_achieved_over_limit"] = ((sc.get("ratelimit") or {}).get(way) or {}).get("ratio")
    # Fan-out (issue 12 §2): one-to-N aggregate over one-to-one's.
    for n in (4, 8):
        agg = (sc.get(f"tg_1to{n}") or {}).get("mb_per_s_aggregate")
        ratios[f"fan_out_1to{n}_over_1to1"] = ratio(agg, ours)

    agents_rss = []
    for k, v in sc.items():
        if k.startswith("tg_") and isinstance(v, dict):
            agents_rss += [v.get("downloader_rss_mib_max"), v.get("seeder_rss_mib")]
    if sc.get("swarm"):
        agents_rss += [sc["swarm"].get("downloader_rss_mib_max"), sc["swarm"].get("seeder_rss_mib")]
    agents_rss = [x for x in agents_rss if x is not None]
    targets = {
        "hash >= 0.90 x openssl": ratios["hash_ours_over_openssl"] and ratios["hash_ours_over_openssl"] >= 0.9,
        "one-to-one >= 0.80 x verified-TLS ceiling": ratios["ours_over_tls_ceiling"] and ratios["ours_over_tls_ceiling"] >= 0.8,
        ">= 5 x aria2": ratios["ours_over_aria2"] and ratios["ours_over_aria2"] >= 5,
        ">= 2 x rqbit": ratios["ours_over_rqbit"] and ratios["ours_over_rqbit"] >= 2,
        "1 -> 4 aggregate >= 0.95 x one-to-one": None if ratios["fan_out_1to4_over_1to1"] is None
        else ratios["fan_out_1to4_over_1to1"] >= 0.95,
        "1 -> 8 aggregate >= 0.90 x one-to-one": None if ratios["fan_out_1to8_over_1to1"] is None
        else ratios["fan_out_1to8_over_1to1"] >= 0.90,
        "agent peak RSS < 64 MiB": (max(agents_rss) < 64) if agents_rss else None,
        "swarm <= 1.2 x fluid bound": (ratios.get("swarm_over_fluid_bound") or 99) <= 1.2 if sc.get("swarm") else None,
        "download limit held within 5 % over >= 10 s": None if ratios["download_limit_achieved_over_limit"] is None
        else 0.95 <= ratios["download_limit_achieved_over_limit"] <= 1.05,
        "upload limit held within 5 % over >= 10 s": None if ratios["upload_limit_achieved_over_limit"] is None
        else 0.95 <= ratios["upload_limit_achieved_over_limit"] <= 1.05,
    }
    sm = (load(a.smallfiles) if a.smallfiles else None) or {}
    sm_ratios, sm_targets = small_ratios_targets(sm)
    ratios.update(sm_ratios)
    targets.update(sm_targets)
    versions.update({k: v for k, v in ((sm.get("small") or {}).get("versions") or {}).items() if v})
    versions.update({k: v for k, v in (sm.get("versions") or {}).items() if v})
    targets = {k: (None if v is None else bool(v)) for k, v in targets.items()}
    nm = load(a.netem) if a.netem else None
    netem_md = []
    if nm:
        n_ratios, n_targets, netem_md = netem_results(nm)
        ratios.update(n_ratios)
        targets.update(n_targets)
        sc.setdefault("skipped", {}).update({f"netem {k}": v for k, v in (nm.get("skipped") or {}).items()})

    result = {"machine": machine, "versions": versions, "bytes": size, "hash": h, "tls_ceiling": tls,
              "disk_write": disk, "scenarios": sc, "netem": nm, "small_files_and_rss": sm or None,
              "ratios": ratios, "targets": targets, "notes": notes}
    a.out_json.write_text(json.dumps(result, indent=2) + "\n")

    mib = size / 1048576 if size else 0
    md = []
    md.append(f"# TorrentGuard benchmark: {mib:.0f} MiB file, median of {sc.get('reps') or (tls or {}).get('reps')}")
    md.append("")
    md.append(f"- Date: {machine.get('date')}")
    md.append(f"- Machine: {machine.get('cpu')}, {machine.get('cores')} cores "
              f"(SHA-NI {'yes' if machine.get('sha_ni') else 'no'}, AES-NI {'yes' if machine.get('aes_ni') else 'no'}), "
              f"{machine.get('mem_mib', 0) // 1024} GiB RAM, kernel {machine.get('kernel')}, "
              f"load average at start {round(machine.get('load_avg_1m') or 0, 2)} "
              "(other work on the machine skews every figure)")
    md.append("- Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items() if v and k != "work_fs"))
    md.append(f"- Files in: {versions.get('work_fs', '?')}; MB/s = 10^6 bytes per second of wall time; "
              "RSS = peak resident set from /usr/bin/time -v")
    md.append("")
    md.append("## Limits of the machine")
    md.append("")
    md.append("| measure | MB/s | secs | peak RSS (MiB) |")
    md.append("|---|---:|---:|---:|")
    if h:
        md.append(f"| SHA-256 `openssl dgst -sha256` (1 core) | {fmt(h['openssl']['mb_per_s'])} | {fmt(h['openssl']['secs'])} | |")
        md.append(f"| SHA-256 TorrentGuard `hash_stream` (chunk + file digests) | {fmt(h['tg_hash']['mb_per_s'])} | {fmt(h['tg_hash']['secs'])} | |")
        md.append(f"| SHA-256 coreutils `sha256sum` (reference) | {fmt(h['sha256sum']['mb_per_s'])} | {fmt(h['sha256sum']['secs'])} | |")
    if tls:
        m = tls["modes"]
        for key, label in (("bare", "rustls TLS 1.3 loopback, bare stream"),
                           ("hash", "… + SHA-256 of each chunk"),
                           ("hash_write", "… + SHA-256 + pwrite, one thread"),
                           ("hash_write_pipelined", "… + SHA-256 + pwrite on a 2nd thread")):
            if key not in m:
                continue
            md.append(f"| {label} | {fmt(m[key]['mb_per_s'])} | {fmt(m[key]['secs'])} | "
                      f"send {m[key]['sender_rss_mib']} / recv {m[key]['receiver_rss_mib']} |")
    for d in (disk or []):
        md.append(f"| `dd` write + fsync to {d['path_fs']} ({d['path']}) | {fmt(d['mb_per_s'])} | {fmt(d['secs'])} | |")
    if tls:
        md.append("")
        md.append(f"Verified-transfer ceiling (better of the two pwrite rows): **{fmt(ceiling)} MB/s**. "
                  f"TLS: {tls.get('suite')}, key exchange {tls.get('kx_group')}, 256 KiB chunks with 9-byte Chunk headers.")
    md.append("")
    md.append("## Transfers over loopback (one seeder)")
    md.append("")
    md.append("| tool | downloaders | wall secs | MB/s per downloader | aggregate MB/s | downloader RSS (MiB) | seeder RSS (MiB) | CPU s per GiB |")
    md.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k in sorted((k for k in sc if k.startswith("tg_1to")), key=lambda k: int(k[6:])):
        v = sc[k]
        md.append(f"| TorrentGuard (mutual TLS 1.3, SHA-256 verified) | {v['downloaders']} | {fmt(v['secs'])} | "
                  f"{fmt(v['mb_per_s_per_downloader'])} | {fmt(v['mb_per_s_aggregate'])} | "
                  f"{fmt(v['downloader_rss_mib_max'])} | {fmt(v['seeder_rss_mib'])} | {fmt(v.get('cpu_secs_per_gib'))} |")
    fan_cpu = fanout_cpu_md(sc)
    for k, label in (("aria2", "aria2c → aria2c (BitTorrent, plaintext)"),
                     ("rqbit", "rqbit → rqbit (BitTorrent, plaintext)"),
                     ("scp", "scp → local sshd (SSH)")):
        v = sc.get(k)
        if v:
            md.append(f"| {label} | 1 | {fmt(v['secs'])} | {fmt(v['mb_per_s'])} | {fmt(v['mb_per_s'])} | "
                      f"{fmt(v.get('downloader_rss_mib_max'))} | {fmt(v.get('seeder_rss_mib'))} |")
    md += fan_cpu
    if sc.get("swarm"):
        s = sc["swarm"]
        md.append("")
        md.append("## Swarm, seeder upload the bottleneck")
        md.append("")
        d = f"{s['download_peer_mbit']:g} Mbit/s" if s["download_peer_mbit"] else "unlimited"
        md.append(f"Shaping: {s['shaping']}. "
                  f"N = {s['downloaders']} downloaders (each seeding what it has), seeder upload u_s = "
                  f"{s['upload_seeder_mbit']:g} Mbit/s, peer upload u = {s['upload_peer_mbit']:g} Mbit/s, "
                  f"peer download d = {d}. Fluid lower bound "
                  f"T = max(F/u_s, F/d, N·F/(u_s + N·u)) = {s['fluid_bound_secs']} s; measured (last downloader done) "
                  f"{s['secs']} s: **{s['ratio_to_bound']}× the bound** (target ≤ 1.2). Peak RSS seeder "
                  f"{fmt(s['seeder_rss_mib'])} MiB, downloaders ≤ {fmt(s['downloader_rss_mib_max'])} MiB.")
    if sc.get("ratelimit"):
        rl = sc["ratelimit"]
        md.append("")
        md.append("## Rate limits")
        md.append("")
        md.append(f"A {rl['bytes']} B file at a limit of {rl['limit_bytes_per_s']} B/s, chunk bytes fetched over "
                  "the download's own time, as a ratio to the limit (target 0.95-1.05): "
                  + "; ".join(f"`--{w}-limit` **{rl[w]['ratio']}** ({rl[w]['secs']} s)" for w in ("download", "upload")
                              if rl.get(w)) + ".")
    md += netem_md
    md += small_md(sm)
    md.append("")
    md.append("## Ratios and targets")
    md.append("")
    md.append("| ratio | value |")
    md.append("|---|---:|")
    for k, v in ratios.items():
        md.append(f"| {k.replace('_', ' ')} | {fmt(v)} |")
    md.append("")
    md.append("| target | met |")
    md.append("|---|---|")
    for k, v in targets.items():
        md.append(f"| {k} | {'–' if v is None else ('yes' if v else '**no**')} |")
    skipped = dict(sc.get("skipped") or {}, **small_skipped(sm))
    if skipped or notes:
        md.append("")
        md.append("## Notes")
        md.append("")
        for k, v in skipped.items():
            md.append(f"- {k}: skipped — {v}")
        for n in notes:
            md.append(f"- {n}")
    a.out_md.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
