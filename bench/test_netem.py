#!/usr/bin/env python3
"""Unit tests of bench/netem.py's packet handling (no namespaces, no root):
python3 -m unittest bench/test_netem.py"""

import random
import struct
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netem import GSO_NONE, VNET_HDR, Direction, ip_checksum, tcp_part, tcp_segments  # noqa: E402

GSO_TCPV4 = 1
MSS = 1448


def gso_packet(nseg, seq=1000, flags=0x18 | 0x80, tail=0):
    """A vnet header and an IPv4/TCP GSO packet of nseg segments (the last `tail` bytes short)."""
    payload = bytes(i % 251 for i in range(nseg * MSS - tail))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 7, 5 << 4, flags, 65535, 0, 0)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0,
                               bytes([10, 78, 0, 1]), bytes([10, 78, 0, 2])))
    struct.pack_into("!H", ip, 10, ip_checksum(bytes(ip)))
    vh = VNET_HDR.pack(1, GSO_TCPV4, 40, MSS, 20, 16)
    return vh + bytes(ip) + tcp + payload, payload


def parse(pkt):
    v = VNET_HDR.size
    flags, gso_type, _, gso_size, _, _ = VNET_HDR.unpack_from(pkt)
    ip = pkt[v:v + 20]
    tot_len = struct.unpack_from("!H", ip, 2)[0]
    seq = struct.unpack_from("!I", pkt, v + 20 + 4)[0]
    tcp_flags = pkt[v + 20 + 13]
    return {"gso_type": gso_type, "gso_size": gso_size, "tot_len": tot_len, "ip_ok": ip_checksum(ip) == 0,
            "seq": seq, "flags": tcp_flags, "payload": pkt[v + 40:]}


class TcpPart(unittest.TestCase):
    def test_split_around_a_lost_segment_keeps_sequence_lengths_and_checksums(self):
        pkt, payload = gso_packet(10, tail=100)
        info = tcp_segments(pkt)
        self.assertEqual(info, (MSS, 20, 20, len(payload)))
        before, after = (parse(tcp_part(pkt, 20, 20, MSS, a, b, 10)) for a, b in ((0, 3), (4, 10)))
        self.assertEqual(before["seq"], 1000)
        self.assertEqual(after["seq"], 1000 + 4 * MSS)
        self.assertEqual(before["payload"], payload[:3 * MSS])
        self.assertEqual(after["payload"], payload[4 * MSS:])
        for part in (before, after):
            self.assertTrue(part["ip_ok"])
            self.assertEqual(part["tot_len"], 40 + len(part["payload"]))
            self.assertEqual((part["gso_type"], part["gso_size"]), (GSO_TCPV4, MSS))
        # PSH only on the part that ends the packet, CWR only on the one that starts it.
        self.assertEqual(before["flags"] & 0x88, 0x80)
        self.assertEqual(after["flags"] & 0x88, 0x08)

    def test_a_single_segment_part_is_not_gso(self):
        pkt, payload = gso_packet(3)
        part = parse(tcp_part(pkt, 20, 20, MSS, 1, 2, 3))
        self.assertEqual((part["gso_type"], part["gso_size"]), (GSO_NONE, 0))
        self.assertEqual(part["payload"], payload[MSS:2 * MSS])

    def test_non_tcp_is_one_segment(self):
        pkt = VNET_HDR.pack(0, 0, 0, 0, 0, 0) + bytes([0x45, 0, 0, 84, 0, 0, 0, 0, 64, 1]) + bytes(74)
        self.assertIsNone(tcp_segments(pkt))


class Loss(unittest.TestCase):
    def test_loss_counts_segments_and_cuts_them_out(self):
        d = Direction(0, 1, 0.02, 0.01, random.Random(5))
        pkt, payload = gso_packet(40)
        for _ in range(500):
            d.take(pkt, 0.0)
        self.assertEqual(d.packets, 500 * 40)
        # 20 000 segments at 1 %: 200 expected; a binomial spread of +-60 is over 4 sigma.
        self.assertLess(abs(d.lost - 200), 60)
        delivered = sum(len(parse(p)["payload"]) for _, p in d.line)
        self.assertEqual(delivered, 500 * len(payload) - d.lost * MSS)
        self.assertTrue(all(t == 0.02 for t, _ in d.line))

    def test_no_loss_passes_every_packet_whole(self):
        d = Direction(0, 1, 0.0, 0.0, random.Random(5))
        pkt, _ = gso_packet(5)
        for _ in range(100):
            d.take(pkt, 1.0)
        self.assertEqual((d.lost, len(d.line)), (0, 100))
        self.assertTrue(all(p is pkt for _, p in d.line))


if __name__ == "__main__":
    unittest.main()
