"""Figures for the attacks of the bounded-cost suite, against any gateway binary: for each
attack, the gateway's RSS growth during it, what became of the attacker, and what the
bystander (trades every 50 ms, its own address) lost and how late it got the rest. Unlike
test_attacks.py it asserts nothing, so it also runs against older builds.

    GATEWAY_BIN=target/release/maven-gateway tests/interop/python/.venv/bin/python \\
        tests/interop/python/measure_attacks.py [attack ...]
"""

import json
import multiprocessing
import socket
import sys
import threading
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from gateway_harness import Gateway, http, rss, unique_symbol  # noqa: E402
from rawproto import (  # noqa: E402
    Conn, OP_PING, churn_subscriptions, encode_frame, hold_partial_frames, open_tcp,
    peer_keeps_open, send_for, ws_open, ws_open_namespace)

ATTACKER, BYSTANDER = "127.0.0.2", "127.0.0.3"
DEFAULTS = ["--max-connections-per-ip", "200", "--handshake-rate-per-ip", "20",
            "--max-messages-per-sec", "50", "--shards", "2"]


class Watch:
    def __init__(self, gw):
        self.gw, self.stop, self.sent, self.got, self.rss_max = gw, threading.Event(), 0, [], 0
        self.symbol = unique_symbol("BY")
        gw.ingest({"type": "trade", "symbol": self.symbol, "data": {"seq": -1, "t": 0}})
        self.ws, _ = ws_open_namespace(gw.port, source=BYSTANDER)
        self.ws.send_text(f'42/ws,1["subscribe",{{"channel":"trades","symbol":"{self.symbol}"}}]')
        self.ws.recv_eio()
        self.rss0 = rss(gw.proc.pid)
        self.health = []
        for f in (self._pub, self._recv, self._rss, self._health):
            threading.Thread(target=f, daemon=True).start()

    def _pub(self):
        while not self.stop.is_set():
            try:
                self.gw.ingest({"type": "trade", "symbol": self.symbol,
                                "data": {"seq": self.sent, "t": time.time()}})
                self.sent += 1
            except OSError:
                pass
            self.stop.wait(0.05)

    def _recv(self):
        while True:
            try:
                text = self.ws.recv_eio(timeout=1)
            except Exception:  # noqa: BLE001 - the end of the bystander
                if self.stop.is_set():
                    return
                continue
            if text.startswith('42/ws,["trade"'):
                d = json.loads(text[6:])[1]["data"]
                if d["seq"] >= 0:
                    self.got.append((d["seq"], time.time() - d["t"]))

    def _health(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                http("GET", f"http://127.0.0.1:{self.gw.port}/health", timeout=5)
                self.health.append(time.monotonic() - t0)
            except OSError:
                self.health.append(float("inf"))
            self.stop.wait(0.2)

    def _rss(self):
        while not self.stop.is_set():
            try:
                self.rss_max = max(self.rss_max, rss(self.gw.proc.pid))
            except OSError:
                return
            time.sleep(0.01)

    def report(self, name, attacker):
        self.stop.set()
        time.sleep(1.5)
        alive = self.gw.alive()
        lost = self.sent - len({s for s, _ in self.got})
        worst = max((lat for _, lat in self.got), default=0)
        health = max(self.health, default=0)
        print(f"{name:<22} RSS +{(self.rss_max - self.rss0) / 2**20:7.1f} MiB  "
              f"attacker: {attacker:<34} bystander: {lost} of {self.sent} lost, "
              f"worst {worst * 1000:.0f} ms  /health worst {health * 1000:.0f} ms  "
              f"gateway {'alive' if alive else 'DEAD'}")


def ws_ping_flood(gw):
    ws, _ = ws_open(gw.port, source=ATTACKER, rcvbuf=4096)
    sent = send_for(ws.conn.sock, encode_frame(0x1, b"2") * 4000, 6)
    return f"sent {sent / 2**20:.0f} MiB of '2' pings"


def ws_control_ping_flood(gw):
    ws, _ = ws_open(gw.port, source=ATTACKER, rcvbuf=4096)
    sent = send_for(ws.conn.sock, encode_frame(OP_PING, b"p" * 125) * 200, 6)
    return f"sent {sent / 2**20:.0f} MiB of ping frames"


def polling_ping_bodies(gw):
    c = Conn(gw.port, source=ATTACKER)
    c.send(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
    sid = json.loads(c.read_response(5).body.decode()[1:])["sid"]
    statuses = []
    for _ in range(6):
        body = b"\x1e".join([b"2"] * 333_333)
        c.send(b"POST /socket.io/?EIO=4&transport=polling&sid=%s HTTP/1.1\r\nHost: x\r\n"
               b"Content-Length: %d\r\n\r\n" % (sid.encode(), len(body)) + body)
        try:
            statuses.append(c.read_response(10).status)
        except Exception:  # noqa: BLE001
            statuses.append("closed")
            break
    return f"POST answers {statuses}"


def pipelined_health(gw):
    c = Conn(gw.port, source=ATTACKER, rcvbuf=4096)
    sent = send_for(c.sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2000, 6)
    return f"sent {sent // 33:,} requests"


def tcp_connections(gw):
    socks = open_tcp(gw.port, ATTACKER, 3000)
    time.sleep(1)
    held = sum(peer_keeps_open(s) for s in socks)
    for s in socks:
        s.close()
    return f"{held} of {len(socks)} held"


def rooms(gw):
    ws, _ = ws_open_namespace(gw.port, source=ATTACKER)
    for b in range(40):
        syms = [unique_symbol("U")[:14] + f"{b:02d}{i:04d}" for i in range(1000)]
        ws.send_text("42/ws," + json.dumps(["subscribe", {"channel": "trades", "symbols": syms}]))
        time.sleep(0.03)
    time.sleep(1)
    _, raw, _ = http("GET", gw.internal_url + "/stats")
    return f"{json.loads(raw)['total']['rooms']:,} rooms made"


def connect_flood(gw):
    ws, _ = ws_open(gw.port, source=ATTACKER)
    ws.send_raw(b"".join(encode_frame(0x1, b"40/nope,") for _ in range(2000)))
    closed, _, packets = ws.wait_closed(timeout=5)
    return f"{len(packets)} CONNECT refusals, {'closed' if closed else 'open'}"


def get_with_body(gw):
    c = Conn(gw.port, source=ATTACKER)
    inner = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
    answers = []
    try:
        while True:
            answers.append(c.read_response(2).status)
    except Exception:  # noqa: BLE001
        pass
    return f"answers {answers}"


def recovery_scan(gw):
    """A socket in 1,024 rooms comes back over a log of 400,000 events of other rooms."""
    syms = [unique_symbol("R")[:12] + f"{i:04d}" for i in range(1024)]
    gw.ingest_ndjson([{"type": "trade", "symbol": s, "data": {}} for s in syms])
    ws, _ = ws_open(gw.port, source=ATTACKER)
    ws.send_text("40/ws,")
    pid = json.loads(ws.recv_eio()[6:])["pid"]
    ws.send_text("42/ws,1" + json.dumps(["subscribe", {"channel": "trades", "symbols": syms}]))
    while not ws.recv_eio().startswith("43/ws,1"):
        pass
    ws.close()
    other = unique_symbol("O")
    for _ in range(80):
        gw.ingest_ndjson([{"type": "trade", "symbol": other, "data": {}}] * 5000)
    ws, _ = ws_open(gw.port, source=ATTACKER)
    t = time.monotonic()
    ws.send_text(f'40/ws,{{"pid":"{pid}"}}')
    stalls = []
    done = threading.Event()

    def ingest_during():
        while not done.is_set():
            t0 = time.monotonic()
            gw.ingest({"type": "trade", "symbol": other, "data": {}})
            stalls.append(time.monotonic() - t0)

    threading.Thread(target=ingest_during, daemon=True).start()
    answer = ws.recv_eio(timeout=30)
    took = time.monotonic() - t
    done.set()
    time.sleep(0.2)
    return (f"recovered={pid in answer} in {took * 1000:.0f} ms, "
            f"worst ingest {max(stalls, default=0) * 1000:.0f} ms")


def binary_header(gw):
    """30 sessions each send a 990 KB BINARY_EVENT header whose attachment never comes."""
    header = '451-/ws,7["x",{"_placeholder":true,"num":0},[' + "0," * 494_000 + "0]]"
    socks, answers = [], 0
    for _ in range(30):
        ws, _ = ws_open_namespace(gw.port, source=ATTACKER)
        ws.send_text(header)
        socks.append(ws)
    for ws in socks:
        try:
            answers += ws.recv_eio(timeout=5).startswith("43/ws,7")
        except Exception:  # noqa: BLE001 - older builds wait for the attachment
            pass
    time.sleep(5)
    return f"{answers} of 30 answered at once"


def subscribe_churn(gw):
    """100 connections alternate subscribe / unsubscribe of 1,024 known symbols at the
    allowed packet rate, reading every answer."""
    syms = [unique_symbol("C")[:12] + f"{i:04d}" for i in range(1024)]
    gw.ingest_ndjson([{"type": "trade", "symbol": s, "data": {}} for s in syms])
    sub = "42/ws," + json.dumps(["subscribe", {"channel": "trades", "symbols": syms}])
    unsub = sub.replace('"subscribe"', '"unsubscribe"', 1)
    stop = threading.Event()

    def churn():
        try:
            ws, _ = ws_open_namespace(gw.port, source=ATTACKER)
        except Exception:  # noqa: BLE001 - past the handshake rate
            return
        churn_subscriptions(ws, (sub, unsub), stop)

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(100)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    time.sleep(10)
    stop.set()
    return f"{sum(t.is_alive() for t in threads)} churning"


def partial_input(gw):
    """8 addresses x 200 connections, each holding 999 KB of an unfinished 1 MB frame."""
    partial = encode_frame(0x1, b"4" + b"x" * 999_999)[:999_000]
    socks = hold_partial_frames(gw.port, [f"127.0.1.{i}" for i in range(1, 9)], 200, partial)
    time.sleep(5)
    _, raw, _ = http("GET", gw.internal_url + "/stats")
    held = json.loads(raw).get("input_buffered_bytes")
    return f"{len(socks)} connections, {held} B held"


def idle_tcp(gw):
    """12 addresses x 408 idle TCP connections (each address at its TCP cap), reconnecting
    as they are closed, against a descriptor limit of 4,096."""
    stop = threading.Event()

    def hold(source):
        socks = []
        while not stop.is_set():
            socks += open_tcp(gw.port, source, 408 - len(socks))
            alive = [s for s in socks if peer_keeps_open(s)]
            for s in set(socks) - set(alive):
                s.close()
            socks = alive
            stop.wait(0.2)
        for s in socks:
            s.close()

    threads = [threading.Thread(target=hold, args=(f"127.0.2.{i}",), daemon=True)
               for i in range(1, 13)]
    for t in threads:
        t.start()
    time.sleep(17)
    stop.set()
    for t in threads:
        t.join()
    _, raw, _ = http("GET", gw.internal_url + "/stats")
    total = json.loads(raw)["total"]
    return f"{total.get('idle_evictions', 0):,} evicted"


ATTACKS = {f.__name__: f for f in (ws_ping_flood, ws_control_ping_flood, polling_ping_bodies,
                                   pipelined_health, tcp_connections, rooms, connect_flood,
                                   get_with_body, recovery_scan, binary_header, subscribe_churn,
                                   partial_input, idle_tcp)}


def run_apart(attack, gw):
    """Runs an attack in a process of its own, so its client threads do not delay the
    bystander's (they would share one interpreter lock)."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=lambda: out.put(attack(gw)), daemon=True)
    p.start()
    what = out.get()
    p.join()
    return what


def main(names):
    extra = {"tcp_connections": ["--max-connections-per-ip", "10"],
             "idle_tcp": ["--max-connections", "2000"],
             "recovery_scan": ["--max-subscriptions", "1024"]}
    # Builds from before the symbol rule ignore the variable.
    env = {"recovery_scan": {"GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS": "true"},
           "subscribe_churn": {"GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS": "true"}}
    nofile = {"idle_tcp": 4096}
    for name in names or ATTACKS:
        # Old builds read limits from flags only: pass the defaults, lift nothing.
        gw = Gateway(DEFAULTS + extra.get(name, []),
                     env=env.get(name, {"GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS": None}),
                     nofile=nofile.get(name)).start()
        try:
            w = Watch(gw)
            what = run_apart(ATTACKS[name], gw)
            time.sleep(1)
            w.report(name, what)
        finally:
            gw.kill()


if __name__ == "__main__":
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    main(sys.argv[1:])
