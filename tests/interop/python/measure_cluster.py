#!/usr/bin/env python3
"""Measure (not a test): events/s one Redis Stream carries to three cluster instances.

Starts its own redis-server (AOF, `--appendfsync always` like test_cluster.py unless
--appendfsync is given) and three gateways with --redis, all on 127.0.0.1. One raw WebSocket
subscriber per instance (a hand-written frame reader, so the Python client is not the
bottleneck) subscribes to trades:SYM. One publisher POSTs batches of --batch trades to
instance A back to back (the next batch as soon as the previous 202 came) for --seconds.

Reports accepted events/s (sum of 202'd batches / publishing time) and, per instance, delivered
events/s (trades received by its subscriber / time from the first POST to its last trade) and the
lag of its last trade after the last 202.

Run: tests/interop/python/.venv/bin/python tests/interop/python/measure_cluster.py [--seconds 10]
"""

import argparse
import http.client
import json
import socket
import struct
import sys
import tempfile
import threading
import time

from gateway_harness import Gateway, RedisServer, metric, unique_symbol
from rawproto import OP_TEXT, encode_frame, ws_open_namespace

TRADE_PREFIX = b'42/ws,["trade"'


class Counter(threading.Thread):
    """Raw WebSocket subscriber of trades:SYM on one instance; counts trade frames."""

    def __init__(self, gw, sym):
        super().__init__(daemon=True)
        self.gw, self.sym = gw, sym
        self.count = 0
        self.first = self.last = None
        self.last_seq_ok = True
        self.closed = None
        self.halt = threading.Event()
        self.ws, _ = ws_open_namespace(gw.port)
        self.ws.send_text('42/ws,0["subscribe",' + json.dumps({"channel": "trades", "symbol": sym})
                          + "]")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pkt = self.ws.recv_eio(1.0)
            if pkt.startswith("43/ws,0"):
                assert '"ok":true' in pkt, pkt
                break
        else:
            raise RuntimeError("no subscribe ack")
        self.sock = self.ws.conn.sock
        self.buf = bytearray(self.ws.conn.buf)

    def run(self):
        sock, buf = self.sock, self.buf
        sock.settimeout(0.2)
        while not self.halt.is_set():
            # parse every complete frame in buf
            pos, n = 0, len(buf)
            while n - pos >= 2:
                b1 = buf[pos + 1] & 0x7F
                hdr = 2
                if b1 == 126:
                    if n - pos < 4:
                        break
                    b1 = struct.unpack_from("!H", buf, pos + 2)[0]
                    hdr = 4
                elif b1 == 127:
                    if n - pos < 10:
                        break
                    b1 = struct.unpack_from("!Q", buf, pos + 2)[0]
                    hdr = 10
                if n - pos < hdr + b1:
                    break
                op = buf[pos] & 0x0F
                start = pos + hdr
                if op == OP_TEXT:
                    if buf.startswith(TRADE_PREFIX, start):
                        self.count += 1
                        self.last = time.monotonic()
                        if self.first is None:
                            self.first = self.last
                    elif b1 == 1 and buf[start] == 0x32:  # Engine.IO ping "2"
                        sock.sendall(encode_frame(OP_TEXT, b"3"))
                elif op == 0x8:
                    self.closed = bytes(buf[start:start + b1])
                    return
                elif op == 0x9:
                    sock.sendall(encode_frame(0xA, bytes(buf[start:start + b1])))
                pos = start + b1
            del buf[:pos]
            try:
                chunk = sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as e:
                self.closed = repr(e)
                return
            if not chunk:
                self.closed = "EOF"
                return
            buf += chunk


def batch_body(sym, first_seq, size):
    parts = []
    for s in range(first_seq, first_seq + size):
        parts.append('{"type":"trade","symbol":"%s","data":{"tradeId":"t%d","symbol":"%s",'
                     '"price":"45000.00","quantity":"0.5","timestamp":%d,"seq":%d}}'
                     % (sym, s, sym, 1_700_000_000_000 + s, s))
    return ("[" + ",".join(parts) + "]").encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--appendfsync", default="always", choices=["always", "everysec", "no"])
    ap.add_argument("--drain-timeout", type=float, default=60.0)
    ap.add_argument("gateway_flags", nargs="*", help="extra flags for every instance")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="measure-cluster-")
    redis = RedisServer(f"{tmp.name}/data", tmp.name).start()
    if args.appendfsync != "always":
        redis.cli("CONFIG", "SET", "appendfsync", args.appendfsync)
    gws, counters = [], []
    try:
        for name in "ABC":
            gws.append(Gateway(["--redis", redis.url, *args.gateway_flags], log_dir=tmp.name,
                               name=f"measure-{name}").start())
        sym = unique_symbol("MEAS")
        counters = [Counter(gw, sym) for gw in gws]
        for c in counters:
            c.start()

        conn = http.client.HTTPConnection("127.0.0.1", gws[0].internal_port, timeout=30)
        accepted = refused = 0
        seq = 1
        body = batch_body(sym, seq, args.batch)
        t0 = time.monotonic()
        t_last_202 = t0
        while time.monotonic() - t0 < args.seconds:
            conn.request("POST", "/internal/events", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            if r.status == 202:
                accepted += json.loads(raw)["accepted"]
                t_last_202 = time.monotonic()
            else:
                refused += args.batch
                print(f"POST answered {r.status} {raw[:200]!r}", file=sys.stderr)
            seq += args.batch
            body = batch_body(sym, seq, args.batch)
        t_pub = time.monotonic() - t0
        conn.close()

        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and any(
                c.count < accepted and c.closed is None for c in counters):
            time.sleep(0.05)

        cpu = "?"
        try:
            import os
            cpu = os.cpu_count()
        except Exception:
            pass
        print(f"host: {cpu} CPUs; redis appendfsync={args.appendfsync}; batch={args.batch}; "
              f"extra gateway flags={args.gateway_flags}")
        print(f"accepted: {accepted} events in {t_pub:.2f}s = {accepted / t_pub:,.0f} events/s "
              f"({accepted / args.batch / t_pub:,.1f} batches/s); refused {refused}")
        print(f"stream length: {redis.cli('XLEN', 'gateway:events').strip()}")
        for gw, c in zip(gws, counters):
            span = (c.last or t0) - t0
            rate = c.count / span if span > 0 else 0.0
            ingested = metric(gw, 'gateway_events_ingested_total{type="trade"}')
            print(f"instance {gw.name[-1]}: delivered {c.count}/{accepted} in {span:.2f}s = "
                  f"{rate:,.0f} events/s; last trade {((c.last or t0) - t_last_202):+.2f}s after "
                  f"the last 202; applied from stream (metric) {ingested:.0f}"
                  + (f"; subscriber closed: {c.closed!r}" if c.closed else ""))
    finally:
        for c in counters:
            c.halt.set()
        for c in counters:
            c.join(timeout=2)
            c.ws.close()
        for gw in gws:
            gw.stop()
        redis.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
