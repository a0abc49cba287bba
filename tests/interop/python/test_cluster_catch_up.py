"""Cluster mode: an instance that catches up with the stream never sends history as live, and
never goes quiet or silent about a loss when the catch-up does not go as planned.

Each test runs its own redis-server (no persistence) and gateway on 127.0.0.1. One reaches
Redis through a proxy on loopback that the test can hold, as a stalled network would.
"""

import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from gateway_harness import (Gateway, connect_client, fill_stream, free_port, http, parse_json,
                             unique_symbol)

STREAM = "gateway:events"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None
                                or shutil.which("redis-cli") is None,
                                reason="redis-server / redis-cli not installed")


class Redis:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="catch-up-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.cli("PING").strip() == "PONG":
                    return
            except subprocess.SubprocessError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *map(str, args)],
                              capture_output=True, text=True, timeout=10).stdout

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class HeldProxy:
    """Forwards loopback TCP to Redis; while held, new connections are refused and open ones
    are cut, as a network partition would."""

    def __init__(self, backend_port):
        self.backend = backend_port
        self.held = False
        self.conns = []
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.held:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.backend))
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def hold(self, on):
        self.held = on
        if on:
            with self.lock:
                for s in self.conns:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.conns = []

    def close(self):
        self.hold(True)
        self.server.close()


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.stop()


@pytest.fixture
def gateways(tmp_path):
    started = []

    def start(redis_port, await_ready=True):
        gw = Gateway(["--redis", f"redis://127.0.0.1:{redis_port}"], log_dir=tmp_path,
                     name="catch-up", await_ready=await_ready).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
        assert "panicked" not in gw.log_path.read_text(errors="replace")


def ready(gw):
    status, raw, _ = http("GET", gw.public_url + "/ready", timeout=2)
    return status, parse_json(raw)


def trades(sym, first, n):
    return [{"type": "trade", "symbol": sym, "data": {"symbol": sym, "price": "1.00",
                                                      "qty": "1", "seq": first + i}}
            for i in range(n)]


def seqs(rec):
    return [m["data"]["seq"] for m in rec.named("trade")]


def subscribed(gw, sym):
    """A python-socketio client on gw subscribed to trades:sym; returns (client, recorder)."""
    sio, rec = connect_client(gw, transports=["websocket"], ordered=True)
    ack = sio.call("subscribe", {"channel": "trades", "symbol": sym}, namespace="/ws", timeout=5)
    assert ack.get("ok") is True, ack
    return sio, rec


def test_a_catch_up_cut_short_by_a_vanished_stream_still_goes_live(redis, gateways):
    fill_stream(redis.port, trades("HISTUSDT", 0, 100_000))
    gw = gateways(redis.port, await_ready=False)
    deadline = time.monotonic() + 30
    while True:  # well into the catch-up
        status, body = ready(gw)
        if status == 503 and body.get("status") == "catching_up" and body.get("events", 0) > 0:
            break
        assert status != 200, "caught up before the test could cut it short"
        assert time.monotonic() < deadline, body
        time.sleep(0.01)
    # The stream goes away and the instance's connection with it (a Redis without
    # persistence restarting would do both).
    redis.cli("DEL", STREAM)
    redis.cli("CLIENT", "KILL", "TYPE", "normal")
    deadline = time.monotonic() + 30
    while ready(gw)[0] != 200:
        assert time.monotonic() < deadline, ready(gw)
        time.sleep(0.05)
    sym = unique_symbol("LIVE")
    sio, rec = subscribed(gw, sym)
    try:
        assert gw.ingest(trades(sym, 1, 3))[0] == 202
        rec.wait_event("trade", timeout=5, pred=lambda m: m["data"]["seq"] == 3)
        assert seqs(rec) == [1, 2, 3], "live after the cut-short catch-up"
    finally:
        sio.disconnect()


def test_entries_trimmed_before_the_instance_read_them_are_not_a_silent_loss(redis, gateways):
    proxy = HeldProxy(redis.port)
    try:
        gw = gateways(proxy.port)
        sym = unique_symbol("TRIM")
        sio, rec = subscribed(gw, sym)
        try:
            fill_stream(redis.port, trades(sym, 0, 10))
            rec.wait_event("trade", timeout=5, pred=lambda m: m["data"]["seq"] == 9)
            # The instance is cut off while 5,000 more trades go in and the stream is
            # trimmed to its last 1,000: 4,000 of them are gone before it could read them.
            proxy.hold(True)
            time.sleep(0.5)
            fill_stream(redis.port, trades(sym, 10, 5000))
            redis.cli("XTRIM", STREAM, "MAXLEN", "1000")
            proxy.hold(False)
            got = rec.wait_event("error", timeout=15,
                                 pred=lambda m: m.get("code") == "STREAM_GAP")
            assert "fell behind" in got["message"], got
            received = seqs(rec)
            assert len(received) < 5010 and received == sorted(set(received)), \
                "what arrived is in order and once"
        finally:
            sio.disconnect()
    finally:
        proxy.close()
