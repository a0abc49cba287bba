"""Raw-socket HTTP, Engine.IO polling and WebSocket (RFC 6455) client pieces, no client library.

Only for talking to 127.0.0.1.
"""

import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RS = "\x1e"  # Engine.IO v4 polling payload separator

CLOSED_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Closed(Exception):
    """The peer closed (EOF or reset)."""


class Response:
    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<HTTP {self.status} {self.reason} {self.body[:200]!r}>"


class Conn:
    """A TCP connection with a read buffer and an overall deadline per read call."""

    def __init__(self, port, timeout=5.0, rcvbuf=None, source=None):
        if rcvbuf is None and source is None:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        else:
            # a small receive buffer (set before connect, so the advertised window stays small)
            # lets a test that stops reading push the server's backlog up quickly; a source
            # address (any of 127.0.0.0/8) makes the connection another client address
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                self.sock.bind((source, 0))
            self.sock.settimeout(timeout)
            self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        """sendall; returns False when the peer already closed/reset."""
        try:
            self.sock.sendall(data)
            return True
        except CLOSED_ERRORS:
            return False

    def shut_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except CLOSED_ERRORS as e:
            raise Closed(repr(e)) from e
        if not chunk:
            raise Closed("eof")
        self.buf += chunk

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until(self, marker, deadline, limit=1 << 20):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise AssertionError("response header too large")
            self._fill(deadline)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_to_eof(self, deadline):
        try:
            while True:
                self._fill(deadline)
        except Closed:
            pass
        out, self.buf = self.buf, b""
        return out

    def read_response(self, timeout=None, head=False):
        """Parse one HTTP/1.1 response; raises Closed when the peer closes before a status line."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            raw_head = self.read_until(b"\r\n\r\n", deadline)
        except Closed:
            if self.buf:
                raise AssertionError(f"truncated HTTP response: {self.buf[:200]!r}")
            raise
        lines = raw_head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0].startswith("HTTP/1."), lines[0]
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if head or status in (101, 204, 304) or 100 <= status < 200:
            return Response(status, reason, headers, b"")
        if "content-length" in headers:
            body = self.read_exact(int(headers["content-length"]), deadline)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self.read_until(b"\r\n", deadline).split(b";")[0].strip(), 16)
                if size == 0:
                    self.read_until(b"\r\n", deadline)
                    break
                body += self.read_exact(size, deadline)
                self.read_exact(2, deadline)
        else:
            body = self.read_to_eof(deadline)
        return Response(status, reason, headers, body)


def exchange(port, raw, timeout=5.0, half_close=True):
    """Send raw bytes, return ("response", Response) or ("closed", None).

    A timeout propagates as socket.timeout (the server neither answered nor closed).
    """
    with Conn(port, timeout) as c:
        sent = c.send(raw)
        if sent and half_close:
            c.shut_write()
        try:
            return "response", c.read_response(timeout)
        except Closed:
            return "closed", None


def request_bytes(method, target, port, headers=None, body=b"", close=True):
    h = {"Host": f"127.0.0.1:{port}"}
    if body or method in ("POST", "PUT"):
        h["Content-Length"] = str(len(body))
    if close:
        h["Connection"] = "close"
    h.update(headers or {})
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode("latin-1") + b"\r\n" + body


def http_request(port, method, target, headers=None, body=b"", timeout=5.0):
    if isinstance(body, str):
        body = body.encode()
    kind, resp = exchange(port, request_bytes(method, target, port, headers, body), timeout,
                          half_close=False)
    assert kind == "response", f"{method} {target}: connection closed without a response"
    return resp


# ---- Engine.IO long-polling --------------------------------------------------------------------

EIO_POLL = "/socket.io/?EIO=4&transport=polling"


def decode_payload(body):
    return body.decode("utf-8").split(RS) if body else []


def polling_open(port):
    """Engine.IO handshake over polling; returns (sid, open-packet dict)."""
    resp = http_request(port, "GET", EIO_POLL)
    assert resp.status == 200, resp
    packets = decode_payload(resp.body)
    assert packets and packets[0].startswith("0"), packets
    hs = json.loads(packets[0][1:])
    return hs["sid"], hs


def polling_get(port, sid, timeout=5.0):
    return http_request(port, "GET", f"{EIO_POLL}&sid={sid}", timeout=timeout)


def polling_post(port, sid, body, timeout=5.0, headers=None):
    h = {"Content-Type": "text/plain;charset=UTF-8"}
    h.update(headers or {})
    return http_request(port, "POST", f"{EIO_POLL}&sid={sid}", headers=h, body=body,
                        timeout=timeout)


def polling_session_state(port, sid, timeout=5.0, seen=None):
    """"closed" when the server ended the session (400 code 1 or a CLOSE packet), else "open".

    Pings are answered so the session is not ended by the test itself; a long-poll that returns
    nothing within `timeout` means the session is still open.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = polling_get(port, sid, timeout=max(0.1, deadline - time.monotonic()))
        except socket.timeout:
            return "open"
        except AssertionError:  # closed without a response
            return "closed"
        if resp.status == 400:
            body = resp.json()
            assert body.get("code") == 1, resp
            return "closed"
        assert resp.status == 200, resp
        packets = decode_payload(resp.body)
        if seen is not None:
            seen.extend(packets)
        if "1" in packets:
            return "closed"
        if "2" in packets:
            polling_post(port, sid, "3")
    return "open"


# ---- WebSocket ---------------------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
    """A client frame; `length` overrides the declared payload length."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


class RawWS:
    """Hand-written WebSocket client over a raw socket."""

    def __init__(self, port, target="/socket.io/?EIO=4&transport=websocket", timeout=5.0,
                 headers=None, rcvbuf=None, source=None):
        self.conn = Conn(port, timeout, rcvbuf=rcvbuf, source=source)
        self.key = base64.b64encode(os.urandom(16)).decode()
        h = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": self.key, "Sec-WebSocket-Version": "13"}
        h.update(headers or {})
        req = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items() if v is not None)
        self.conn.send(req.encode() + b"\r\n")
        self.response = self.conn.read_response(timeout, head=True)
        self.close_code = None

    def handshake_ok(self):
        r = self.response
        expect = base64.b64encode(hashlib.sha1(self.key.encode() + WS_GUID).digest()).decode()
        return (r.status == 101 and r.headers.get("upgrade", "").lower() == "websocket"
                and r.headers.get("sec-websocket-accept") == expect)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        return self.conn.send(data)

    def send_frame(self, opcode, payload=b"", **kw):
        return self.conn.send(encode_frame(opcode, payload, **kw))

    def send_text(self, s):
        return self.send_frame(OP_TEXT, s.encode() if isinstance(s, str) else s)

    def send_binary(self, b):
        return self.send_frame(OP_BIN, b)

    def recv_frame(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        b0, b1 = self.conn.read_exact(2, deadline)
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.conn.read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.conn.read_exact(8, deadline))[0]
        payload = self.conn.read_exact(n, deadline)
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_message(self, timeout=5.0):
        """Next data message as (opcode, bytes); answers WS pings; raises Closed on close."""
        deadline = time.monotonic() + timeout
        parts, first_op = [], None
        while True:
            fin, op, payload = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if op == OP_PING:
                self.send_frame(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(f"close frame {self.close_code}")
            if op != OP_CONT:
                first_op = op
            parts.append(payload)
            if fin:
                return first_op, b"".join(parts)

    def recv_eio(self, timeout=5.0, answer_pings=True):
        """Next Engine.IO text packet; Engine.IO pings are answered unless told otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            op, data = self.recv_message(max(0.01, deadline - time.monotonic()))
            if op == OP_BIN:
                return data
            text = data.decode("utf-8")
            if text == "2" and answer_pings:
                self.send_text("3")
                continue
            return text

    def wait_closed(self, timeout=5.0, stop_when=None):
        """Read until the server ends the connection.

        Returns (closed, close_code, packets): closed is False when it stayed open for `timeout`;
        close_code is the code of a close frame the server sent (None without one); packets are
        the Engine.IO text packets received meanwhile. With `stop_when`, it also returns (open)
        as soon as stop_when(packet) holds for a received packet.
        """
        deadline = time.monotonic() + timeout
        packets = []
        replied = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, self.close_code, packets
            try:
                fin, op, payload = self.recv_frame(left)
            except Closed:
                return True, self.close_code, packets
            except socket.timeout:
                return False, self.close_code, packets
            if op == OP_CLOSE:
                if len(payload) >= 2:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
                elif self.close_code is None:
                    self.close_code = 1005
                if not replied:
                    replied = True
                    self.send_frame(OP_CLOSE, payload[:2])
            elif op == OP_TEXT:
                text = payload.decode("utf-8", "replace")
                packets.append(text)
                if stop_when is not None and stop_when(text):
                    return False, self.close_code, packets
            elif op == OP_PING:
                self.send_frame(OP_PONG, payload)


def ws_open(port, target="/socket.io/?EIO=4&transport=websocket", rcvbuf=None, source=None):
    """Raw WebSocket Engine.IO session; returns (RawWS, open-packet dict)."""
    ws = RawWS(port, target, rcvbuf=rcvbuf, source=source)
    assert ws.handshake_ok(), ws.response
    pkt = ws.recv_eio()
    assert pkt.startswith("0"), pkt
    return ws, json.loads(pkt[1:])


def ws_open_namespace(port, nsp="/ws", rcvbuf=None, source=None):
    """Raw session connected to a Socket.IO namespace; returns (RawWS, namespace sid)."""
    ws, _ = ws_open(port, rcvbuf=rcvbuf, source=source)
    ws.send_text(f"40{nsp},")
    deadline = time.monotonic() + 5
    sid = None
    while time.monotonic() < deadline:
        pkt = ws.recv_eio(max(0.01, deadline - time.monotonic()))
        if pkt.startswith(f"40{nsp},"):
            sid = json.loads(pkt[len(f"40{nsp},"):])["sid"]
        if pkt.startswith(f"42{nsp},") and '"connected"' in pkt:
            return ws, sid
    raise AssertionError("no CONNECT reply / connected event")


def open_tcp(port, source, count):
    """Tries `count` bare TCP connections from `source`; returns the ones that connected."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def peer_keeps_open(sock):
    """True while the peer has neither closed nor reset `sock` (it may have sent data)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True  # open and silent
    except OSError:
        return False


def churn_subscriptions(ws, texts, stop, pause=0.02):
    """Sends each of `texts` in turn until `stop` is set, reading every answer so the
    connection is never a slow consumer. Returns when the gateway closes it."""
    ws.conn.sock.settimeout(pause)
    while not stop.is_set():
        for text in texts:
            try:
                ws.send_text(text)
                while True:
                    ws.recv_eio(timeout=pause)
            except (socket.timeout, TimeoutError):
                pass
            except (Closed, OSError):
                return
            stop.wait(pause)


def hold_partial_frames(port, sources, per_source, partial):
    """From each source address, `per_source` namespace sessions that each send `partial`
    (an unfinished frame) as far as the socket buffers take it, all addresses at once.
    Returns the sessions that opened; sessions refused by a handshake limit are skipped."""
    opened = []

    def attack(source):
        for _ in range(per_source):
            try:
                ws, _ = ws_open_namespace(port, source=source)
            except (Closed, OSError, AssertionError):
                time.sleep(0.05)
                continue
            opened.append(ws)
            ws.conn.sock.setblocking(False)
            try:
                ws.conn.sock.send(partial)
            except OSError:
                pass

    threads = [threading.Thread(target=attack, args=(s,), daemon=True) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return opened


def send_for(sock, data, seconds):
    """Sends `data` over and over for `seconds` without blocking; returns the bytes the
    kernel took."""
    sock.setblocking(False)
    sent, view, deadline = 0, memoryview(data), time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            n = sock.send(view)
            sent += n
            view = view[n:] if n < len(view) else memoryview(data)
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break
    sock.setblocking(True)
    return sent
