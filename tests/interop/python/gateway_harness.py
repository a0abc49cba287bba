"""Start/stop the gateway binary and talk to it with python-socketio.

Everything here targets 127.0.0.1 only.
"""

import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import engineio
import socketio

REPO = Path(__file__).resolve().parents[3]
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

# Never route loopback traffic through a proxy (requests / websocket-client / urllib read these).
for _k in list(os.environ):
    if _k.lower() in ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy"):
        del os.environ[_k]
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

# Every test client comes from loopback: lift the per-address caps, and let tests subscribe
# to symbols before anything was ingested for them; a test of those limits passes the flags
# explicitly (flags win over the environment).
LOOPBACK_LIMITS = {
    "GATEWAY_MAX_CONNECTIONS_PER_IP": "100000",
    "GATEWAY_HANDSHAKE_RATE_PER_IP": "100000",
    "GATEWAY_MAX_MESSAGES_PER_SEC": "100000",
    "GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS": "true",
}

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def gateway_bin():
    return Path(os.environ.get("GATEWAY_BIN") or REPO / "target" / "debug" / "maven-gateway")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_ms():
    return int(time.time() * 1000)


def unique_symbol(prefix="T"):
    """A fresh symbol matching [A-Z0-9]{2,20}, so tests never share rooms or cached values."""
    return (prefix + uuid.uuid4().hex.upper())[:16]


def http(method, url, body=None, headers=None, timeout=10.0):
    """Plain urllib request; returns (status, raw bytes, headers) for every status code."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def parse_json(raw):
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw


class Gateway:
    """One gateway process on fresh loopback ports."""

    def __init__(self, flags=(), log_dir=None, name="gw", env=None, nofile=None,
                 await_ready=True):
        self.flags = [str(f) for f in flags]
        # False: `start` returns once /ready answers at all (e.g. 503 while catching up).
        self.await_ready = await_ready
        # The gateway's descriptor limit (soft and hard), when a test sets one.
        self.nofile = nofile
        # Environment set for this gateway over the defaults; None removes a variable.
        self.env = dict(env or {})
        self.log_dir = Path(log_dir) if log_dir else Path("/tmp")
        self.name = name
        self.proc = None
        self.port = self.internal_port = None
        self.log_path = None

    @property
    def public_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def internal_url(self):
        return f"http://127.0.0.1:{self.internal_port}"

    def start(self):
        binary = gateway_bin()
        if not binary.exists():
            raise RuntimeError(f"gateway binary not found: {binary} (set GATEWAY_BIN)")
        last_err = None
        for attempt in range(3):  # a port picked by bind-0 may be taken again in between
            self.port, self.internal_port = free_port(), free_port()
            while self.internal_port == self.port:
                self.internal_port = free_port()
            self.log_path = self.log_dir / f"{self.name}-{self.port}-{attempt}.log"
            log = open(self.log_path, "wb")
            cmd = [str(binary), "--listen", f"127.0.0.1:{self.port}",
                   "--internal-listen", f"127.0.0.1:{self.internal_port}", *self.flags]
            # GATEWAY_* variables configure the binary too: only the flags given here apply
            env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
            # Every test client comes from 127.0.0.1: lift the per-address caps unless a test
            # sets them with flags (flags win over the environment).
            env.update(LOOPBACK_LIMITS)
            for k, v in self.env.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v
            limit = None
            if self.nofile:
                limit = lambda n=self.nofile: resource.setrlimit(  # noqa: E731
                    resource.RLIMIT_NOFILE, (n, n))
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env, preexec_fn=limit)
            log.close()
            try:
                self._wait_ready()
                return self
            except RuntimeError as e:
                last_err = e
                self.kill()
        raise last_err

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited early with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _, _ = http("GET", self.public_url + "/ready", timeout=1.0)
                if status == 200 or not self.await_ready:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready within {READY_TIMEOUT}s:\n{self.log_tail()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=40):
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "<no log>"

    def stop(self, sig=signal.SIGTERM):
        """Signal the process and return its exit code; kill it when it does not stop."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"gateway did not exit within {STOP_TIMEOUT}s of {sig!r}")
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # ---- ingest ------------------------------------------------------------------------------

    def ingest_raw(self, body, token=None, content_type="application/json", timeout=10.0):
        if isinstance(body, str):
            body = body.encode()
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, raw, _ = http("POST", self.internal_url + "/internal/events", body, headers,
                              timeout=timeout)
        return status, parse_json(raw)

    def ingest(self, events, token=None):
        """POST one event (dict) or a batch (list, sent as a JSON array)."""
        return self.ingest_raw(json.dumps(events), token=token)

    def ingest_ndjson(self, events, token=None):
        body = "".join(json.dumps(e) + "\n" for e in events)
        return self.ingest_raw(body, token=token, content_type="application/x-ndjson")

    def ingest_ok(self, events, token=None):
        status, body = self.ingest(events, token=token)
        n = len(events) if isinstance(events, list) else 1
        assert (status, body) == (202, {"accepted": n}), (status, body)


# ---- python-socketio helpers -------------------------------------------------------------------


class _SyncDispatchEngineIO(engineio.Client):
    """engine.io client that runs message handlers in the read loop, i.e. in arrival order.

    The stock client starts a thread per incoming message, which can reorder handlers; the wire
    protocol is unchanged.
    """

    def _trigger_event(self, event, *args, **kwargs):
        kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)


class OrderedClient(socketio.Client):
    def _engineio_client_class(self):
        return _SyncDispatchEngineIO


class Recorder:
    """Collects every event of one namespace as (name, payload)."""

    def __init__(self):
        self.events = []
        self.times = []  # time.monotonic() of each entry of self.events
        self.offsets = []  # the recovery offset of each entry of self.events, or None
        self.cond = threading.Condition()

    def __call__(self, event, *args):
        # With connection state recovery on (the default), lossless events (trades, private
        # events) carry their offset as a last string argument after the payload.
        offset = None
        if len(args) == 2 and isinstance(args[0], dict) and isinstance(args[1], str):
            args, offset = args[:1], args[1]
        with self.cond:
            self.events.append((event, args[0] if len(args) == 1 else (args or None)))
            self.times.append(time.monotonic())
            self.offsets.append(offset)
            self.cond.notify_all()

    def timed(self, name):
        """[(arrival time.monotonic(), payload)] of the events called `name`."""
        with self.cond:
            return [(t, d) for t, (e, d) in zip(self.times, self.events) if e == name]

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def named(self, name):
        return [d for e, d in self.snapshot() if e == name]

    def wait_for(self, pred, timeout=5.0, what="event"):
        """Return the first recorded (name, data) with pred(name, data) true."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e, d in self.events:
                    if pred(e, d):
                        return e, d
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; got {self.events[-20:]!r}")
                self.cond.wait(left)

    def wait_event(self, name, timeout=5.0, pred=None):
        return self.wait_for(lambda e, d: e == name and (pred is None or pred(d)), timeout,
                             what=repr(name))[1]

    def wait_count(self, name, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [d for e, d in self.events if e == name]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s: {len(got)}/{n} {name!r} events")
                self.cond.wait(left)


def connect_client(gw, transports=None, namespace="/ws", ordered=False, wait_connected=True,
                   **client_kwargs):
    """Connect a python-socketio client to gw; returns (client, recorder of `namespace`)."""
    cls = OrderedClient if ordered else socketio.Client
    client_kwargs.setdefault("reconnection", False)
    sio = cls(**client_kwargs)
    rec = Recorder()
    sio.on("*", rec, namespace=namespace)
    sio.connect(gw.public_url, namespaces=[namespace], transports=transports, wait_timeout=5)
    if wait_connected and namespace == "/ws":
        try:
            rec.wait_event("connected", timeout=5)
        except AssertionError:
            sio.disconnect()
            raise
    return sio, rec


def is_numbered(room):
    """Lossless streams (trades, private rooms, broadcasts' own rooms) number their messages."""
    return not room.startswith(("ticker:", "orderbook:", "klines:", "bookTicker:"))


def assert_envelope(msg, room, data, numbered=None):
    """Data events carry exactly {channel, data, timestamp}, plus `seq` (a positive integer)
    on a lossless stream (`numbered=False`: an event a backend added to the cluster stream
    itself, which has none)."""
    assert isinstance(msg, dict), msg
    if is_numbered(room) if numbered is None else numbered:
        assert set(msg) == {"channel", "data", "timestamp", "seq"}, msg
        assert isinstance(msg["seq"], int) and msg["seq"] > 0, msg
    else:
        assert set(msg) == {"channel", "data", "timestamp"}, msg
    assert msg["channel"] == room, msg
    assert msg["data"] == data, msg
    ts = msg["timestamp"]
    assert isinstance(ts, int) and not isinstance(ts, bool), msg
    assert abs(ts - now_ms()) < 60_000, msg


def check_alive(gw, timeout=5.0):
    """The gateway still serves: a fresh client connects and receives an ingested trade."""
    assert gw.alive(), f"gateway process died (rc={gw.proc.returncode}):\n{gw.log_tail()}"
    status, raw, _ = http("GET", gw.public_url + "/health", timeout=timeout)
    assert status == 200, (status, raw)
    sym = unique_symbol("ALIVE")
    sio, rec = connect_client(gw, transports=["websocket"])
    try:
        ack = sio.call("subscribe", {"channel": "trades", "symbol": sym}, namespace="/ws",
                       timeout=timeout)
        assert ack["ok"] is True and ack["rooms"] == [f"trades:{sym}"], ack
        data = {"tradeId": "alive", "symbol": sym, "price": "1.00", "quantity": "1"}
        gw.ingest_ok({"type": "trade", "symbol": sym, "data": data})
        msg = rec.wait_event("trade", timeout=timeout)
        assert_envelope(msg, f"trades:{sym}", data)
    finally:
        sio.disconnect()


# ---- redis-server for the cluster tests ----------------------------------------------------------


def redis_server_bin():
    return os.environ.get("REDIS_SERVER_BIN") or "redis-server"


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (AOF with fsync always, no RDB) that can be stopped
    and restarted on the same port and data directory."""

    def __init__(self, data_dir, log_dir=None, name="redis"):
        self.dir = Path(data_dir)
        self.log_dir = Path(log_dir) if log_dir else self.dir
        self.name = name
        self.port = None
        self.proc = None
        self.starts = 0

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout=10.0):
        """Start (the first time on a free port, afterwards on the same port and dir)."""
        if self.alive():
            return self
        if self.port is None:
            self.port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            self.starts += 1
            log = open(self.log_dir / f"{self.name}-{self.port}.log", "ab")
            self.proc = subprocess.Popen(
                [redis_server_bin(), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                 "--dir", str(self.dir), "--daemonize", "no"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            log.close()
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # e.g. the port is briefly still held: try again
                if self.ping():
                    return self
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.kill()
                raise RuntimeError(f"redis-server not answering on {self.port}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)

    def ping(self, timeout=0.5):
        """True when the server answers PING with PONG (not while it is still loading)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def cli(self, *args, check=True, timeout=10.0):
        """redis-cli -p PORT ARGS...; returns stdout (str)."""
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port),
                            *[str(a) for a in args]],
                           capture_output=True, text=True, timeout=timeout)
        if check and (r.returncode != 0 or r.stdout.startswith("(error)")
                      or r.stdout.startswith("ERR")):
            raise AssertionError(f"redis-cli {args!r}: rc={r.returncode} "
                                 f"out={r.stdout!r} err={r.stderr!r}")
        return r.stdout

    def stop(self, how="shutdown", timeout=10.0):
        """Stop with `redis-cli shutdown` (or SIGTERM: how="sigterm"); returns the exit code."""
        if not self.alive():
            return None if self.proc is None else self.proc.returncode
        if how == "shutdown":
            subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "shutdown"],
                           capture_output=True, timeout=timeout)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.proc.returncode

    def restart(self, how="shutdown"):
        self.stop(how)
        return self.start()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=30):
        try:
            text = (self.log_dir / f"{self.name}-{self.port}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-n:])
        except OSError:
            return "<no log>"


def _resp(*parts):
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def fill_stream(port, events, key="gateway:events"):
    """XADDs each event (a dict, as ingest takes it) to the stream, fast (`redis-cli --pipe`)."""
    proc = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    chunk = []
    for ev in events:
        chunk.append(_resp("XADD", key, "*", "event", json.dumps(ev)))
        if len(chunk) == 10_000:
            proc.stdin.write(b"".join(chunk))
            chunk = []
    proc.stdin.write(b"".join(chunk))
    proc.stdin.close()
    assert proc.wait() == 0, "redis-cli --pipe failed"


def book_checksum(bids, asks):
    """An order book window's checksum as the gateway sends it (Kraken's WebSocket v2 book
    checksum): CRC32 of the top 10 asks (low to high) then the top 10 bids (high to low),
    each price and quantity string without its decimal point and leading zeros."""
    import zlib

    def digits(s):
        return s.replace(".", "").lstrip("0")

    text = "".join(digits(p) + digits(q) for p, q in list(asks)[:10] + list(bids)[:10])
    return zlib.crc32(text.encode())


def rss(pid):
    """The resident memory of process `pid`, in bytes (0 once it is gone)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def metric(gw, name):
    """The sum of every series of a Prometheus metric the gateway exports."""
    status, raw, _ = http("GET", gw.internal_url + "/metrics")
    assert status == 200
    total = 0.0
    for line in raw.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
