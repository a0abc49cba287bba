#!/usr/bin/env python3
"""Measure (not a test): how long a cluster instance takes to catch up with a long stream,
i.e. how long one step of a rolling deploy keeps an instance out of the load balancer.

Starts its own redis-server (no persistence) on a free port, fills `gateway:events` with N
trade events (about 200 bytes each, over 100 symbols, every 10th a private event), then starts
the gateway with --redis and times spawn -> `/ready` 200, and the catch-up the gateway logs.
Three runs per size; medians printed.

Run: tests/interop/python/.venv/bin/python tests/interop/python/measure_catch_up.py \
       --bin target/release/maven-gateway [--events 100000 1000000]
"""

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

from gateway_harness import fill_stream, free_port


def events(n):
    for i in range(n):
        if i % 10 == 9:
            yield {"type": "order.filled", "userId": f"u{i % 1000}",
                   "data": {"orderId": f"o-{i}", "price": "100.5", "qty": "0.25", "seq": i}}
        else:
            sym = f"SYM{i % 100:03d}USDT"
            yield {"type": "trade", "symbol": sym,
                   "data": {"symbol": sym, "tradeId": i, "price": "100.50", "qty": "0.250",
                            "side": "buy", "time": 1765000000000 + i}}


def ready_status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def one_run(binary, redis_url):
    port, internal = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(prefix="catch-up-", suffix=".log", delete=False)
    t0 = time.monotonic()
    gw = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--internal-listen",
                           f"127.0.0.1:{internal}", "--redis", redis_url, "--log", "info",
                           "--log-format", "json"], stdout=log, stderr=log)
    try:
        saw_503 = False
        while True:
            s = ready_status(port)
            if s == 503:
                saw_503 = True
            if s == 200:
                break
            if time.monotonic() - t0 > 600:
                raise RuntimeError("not ready within 600 s")
            time.sleep(0.01)
        ready_s = time.monotonic() - t0
    finally:
        gw.terminate()
        gw.wait(timeout=30)
    text = open(log.name).read()
    m = re.search(r'"events":(\d+),"ms":(\d+)[^\n]*caught up', text) or \
        re.search(r'caught up[^\n]*"events":(\d+)[^\n]*"ms":(\d+)', text)
    events, ms = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    return ready_s, events, ms, saw_503


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/maven-gateway")
    ap.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for n in a.events:
        port = free_port()
        d = tempfile.mkdtemp(prefix="catch-up-redis-")
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", d],
                                 stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            t = time.monotonic()
            fill_stream(port, events(n))
            print(f"{n:,} events in the stream ({time.monotonic() - t:.1f} s to fill)")
            runs = [one_run(a.bin, f"redis://127.0.0.1:{port}") for _ in range(a.runs)]
            for ready_s, events, ms, saw_503 in runs:
                print(f"  spawn -> /ready 200: {ready_s:.2f} s; catch-up logged: {events} events "
                      f"in {ms} ms; /ready said 503 meanwhile: {saw_503}")
            med = statistics.median(r[0] for r in runs)
            med_ms = statistics.median(r[2] for r in runs if r[2] is not None)
            print(f"  median: ready after {med:.2f} s, catch-up {med_ms / 1000:.2f} s "
                  f"({n / (med_ms / 1000):,.0f} events/s)")
        finally:
            redis.kill()
            redis.wait()
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
