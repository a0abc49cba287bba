"""Malformed input on every listener, with raw sockets only.

For each input the gateway must answer with the protocol's error or close that connection, and
afterwards a fresh python-socketio client must still connect and receive an ingested event.
"""

import json
import os
import re
import socket
import struct
import time

import pytest

from gateway_harness import Gateway, check_alive
from rawproto import (EIO_POLL, OP_BIN, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RS,
                      Conn, RawWS, encode_frame, exchange, http_request, polling_get,
                      polling_open, polling_post, polling_session_state, request_bytes, ws_open,
                      ws_open_namespace)

MAX_PAYLOAD = 100_000


class _Holder:
    """The module's gateway; replaced by a fresh one when an input kills it."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.gw = None
        self.start()

    def start(self):
        try:
            # A short handshake timeout so that half-sent requests are dropped within the
            # exchange timeout of these tests.
            self.gw = Gateway(["--max-payload", str(MAX_PAYLOAD), "--handshake-timeout-ms", "2000"],
                              log_dir=self.log_dir,
                              name="robust").start()
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def holder(gateway_log_dir):
    h = _Holder(gateway_log_dir)
    yield h
    rc = h.gw.stop()
    assert rc == 0, f"gateway exited with {rc} after SIGTERM:\n{h.gw.log_tail()}"


@pytest.fixture
def gw(holder):
    """The shared gateway; afterwards a fresh client must still connect and receive an event."""
    if not holder.gw.alive():
        holder.start()
    g = holder.gw
    yield g
    if not g.alive():
        rc, tail = g.proc.returncode, g.log_tail(8)
        holder.start()  # so that later inputs are still tested
        pytest.fail(f"the gateway died on this input (exit {rc}):\n{tail}", pytrace=False)
    check_alive(g)


def port_of(gw, listener):
    return gw.port if listener == "public" else gw.internal_port


LISTENERS = ["public", "internal"]


def assert_refused(kind, resp, what):
    """An error status (4xx, or 501/505) or a closed connection; never success."""
    if kind == "closed":
        return
    assert resp.status in range(400, 500) or resp.status in (501, 505), f"{what}: {resp!r}"


# ---- HTTP garbage on both listeners --------------------------------------------------------------

GARBAGE = [
    ("binary", b"\x00\x01\x02\xff\xfe\xfd\r\n\r\n"),
    ("tls-client-hello", bytes.fromhex("16030100a5010000a10303") + bytes(range(64))),
    ("not-http", b"HELLO WORLD\r\n\r\n"),
    ("http-9.9", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n"),
    ("http-0.9", b"GET /\r\n\r\n"),
    ("blank-lines", b"\r\n\r\n\r\n\r\n"),
    ("no-space", b"GET/health HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("header-without-colon", b"GET /health HTTP/1.1\r\nHost x\r\nno colon here\r\n\r\n"),
    ("nul-in-header", b"GET /health HTTP/1.1\r\nHost: a\x00b\r\n\r\n"),
    ("space-before-colon", b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n"),
    ("truncated-request-line", b"GET /socket.io/?EIO=4&transport=poll"),
    ("truncated-headers", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b"),
    ("truncated-body",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"type\":"),
    ("content-length-abc",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"),
    ("content-length-negative",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}"),
    ("content-length-overflow",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}"),
    ("content-length-conflict",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x"),
    ("content-length-and-chunked",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bad-chunk-size",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
    ("chunk-size-overflow",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"ffffffffffffffffffffff\r\n{}\r\n0\r\n\r\n"),
    ("unknown-transfer-encoding",
     b"POST /internal/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, zz\r\n\r\n{}"),
]


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("raw", [g[1] for g in GARBAGE], ids=[g[0] for g in GARBAGE])
def test_http_garbage(gw, listener, raw):
    kind, resp = exchange(port_of(gw, listener), raw, timeout=5)
    assert_refused(kind, resp, raw[:40])


def _huge(port, which):
    if which == "header-2MiB":
        return request_bytes("GET", "/health", port, {"X-Big": "a" * (2 << 20)})
    if which == "5000-headers":
        h = {f"X-H{i}": "v" for i in range(5000)}
        return request_bytes("GET", "/health", port, h)
    if which == "url-1MiB":
        return request_bytes("GET", "/health?" + "q" * (1 << 20), port)
    raise ValueError(which)


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("which", ["header-2MiB", "5000-headers", "url-1MiB"])
def test_huge_request_head(gw, listener, which):
    port = port_of(gw, listener)
    kind, resp = exchange(port, _huge(port, which), timeout=10)
    assert_refused(kind, resp, which)


PARTIAL_HEADS = [b"\r\n\r\n", b"GET /socket.io/?EIO=4&transport=poll",
                 b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b"]


@pytest.mark.parametrize("listener", LISTENERS)
def test_partial_request_then_eof_closes_promptly(gw, listener):
    """A peer that half-closes (FIN) in the middle of a request head can send nothing more:
    the server must close at once, not hold the connection until some request timeout.
    Repeated, because data and FIN arriving together is the case that matters."""
    for attempt in range(8):
        for raw in PARTIAL_HEADS:
            t0 = time.monotonic()
            try:
                kind, resp = exchange(port_of(gw, listener), raw, timeout=2)
            except socket.timeout:
                pytest.fail(f"attempt {attempt}: {raw!r} + FIN: still open after 2 s")
            assert_refused(kind, resp, raw)
            took = time.monotonic() - t0
            assert took < 1.9, \
                f"attempt {attempt}: {raw!r} + FIN: {kind} {resp!r} only after {took:.1f} s"


@pytest.mark.parametrize("listener", LISTENERS)
def test_slow_partial_request_then_abort(gw, listener):
    """A client that sends half a request and vanishes must not wedge anything."""
    for _ in range(20):
        c = Conn(port_of(gw, listener))
        c.send(b"POST /internal/events HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST


@pytest.mark.parametrize("listener", LISTENERS)
def test_unknown_path_404(gw, listener):
    resp = http_request(port_of(gw, listener), "GET", "/definitely/not/here")
    assert resp.status == 404, resp


# ---- Engine.IO HTTP errors -----------------------------------------------------------------------

EIO_ERRORS = [
    ("eio3", "GET", "/socket.io/?EIO=3&transport=polling", 5, "Unsupported protocol version"),
    ("eio5", "GET", "/socket.io/?EIO=5&transport=polling", 5, "Unsupported protocol version"),
    ("unknown-transport", "GET", "/socket.io/?EIO=4&transport=carrier-pigeon", 0,
     "Transport unknown"),
    ("constructor-transport", "GET", "/socket.io/?EIO=4&transport=constructor", 0,
     "Transport unknown"),
    ("missing-transport", "GET", "/socket.io/?EIO=4", 0, "Transport unknown"),
    ("unknown-sid-get", "GET", f"{EIO_POLL}&sid=doesnotexist", 1, "Session ID unknown"),
    ("unknown-sid-post", "POST", f"{EIO_POLL}&sid=doesnotexist", 1, "Session ID unknown"),
    ("post-handshake", "POST", EIO_POLL, 2, "Bad handshake method"),
    ("websocket-without-upgrade", "GET", "/socket.io/?EIO=4&transport=websocket", 3,
     "Bad request"),
]


@pytest.mark.parametrize("method,target,code,message", [e[1:] for e in EIO_ERRORS],
                         ids=[e[0] for e in EIO_ERRORS])
def test_engineio_http_errors(gw, method, target, code, message):
    body = "4hello" if method == "POST" else b""
    resp = http_request(gw.port, method, target, body=body,
                        headers={"Content-Type": "text/plain"} if method == "POST" else None)
    assert resp.status == 400, resp
    assert resp.json() == {"code": code, "message": message}


def test_transport_mismatch_is_bad_request(gw):
    sid, _ = polling_open(gw.port)
    resp = http_request(gw.port, "GET", f"/socket.io/?EIO=4&transport=websocket&sid={sid}")
    assert resp.status == 400, resp
    assert resp.json() == {"code": 3, "message": "Bad request"}


def test_handshake_reports_max_payload(gw):
    sid, hs = polling_open(gw.port)
    assert hs["maxPayload"] == MAX_PAYLOAD and hs["upgrades"] == ["websocket"], hs
    polling_post(gw.port, sid, "1")  # close it


def _upgrade_refused(port, target, code, message):
    """An upgrade the Engine.IO layer refuses: 400 with the error (the JSON body, or the bare
    message as the reference server writes on upgrade requests), or an upgrade that is closed
    before any Engine.IO OPEN packet."""
    ws = RawWS(port, target)
    with ws:
        if ws.response.status == 101:
            closed, _, packets = ws.wait_closed(timeout=5)
            assert closed and not any(p.startswith("0") for p in packets), packets
            return
        assert ws.response.status == 400, ws.response
        n = int(ws.response.headers.get("content-length", "0"))
        body = ws.conn.read_exact(n, time.monotonic() + 5) if n else ws.conn.read_to_eof(
            time.monotonic() + 5)
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        assert parsed == {"code": code, "message": message} or text == message, text


def test_websocket_upgrade_eio3(gw):
    _upgrade_refused(gw.port, "/socket.io/?EIO=3&transport=websocket", 5,
                     "Unsupported protocol version")


def test_websocket_upgrade_unknown_sid(gw):
    _upgrade_refused(gw.port, "/socket.io/?EIO=4&transport=websocket&sid=nope", 1,
                     "Session ID unknown")


@pytest.mark.parametrize("case", ["no-key", "version-99", "short-key", "no-upgrade-token"])
def test_websocket_bad_handshake(gw, case):
    headers = {}
    if case == "no-key":
        headers["Sec-WebSocket-Key"] = None
    elif case == "version-99":
        headers["Sec-WebSocket-Version"] = "99"
    elif case == "short-key":
        headers["Sec-WebSocket-Key"] = "c2hvcnQ="
    elif case == "no-upgrade-token":
        headers["Connection"] = "keep-alive"
    ws = RawWS(gw.port, headers=headers)
    with ws:
        assert 400 <= ws.response.status < 500, ws.response


# ---- Engine.IO long-polling bodies ---------------------------------------------------------------

POLL_BODIES = [
    ("unknown-packet-type", b"9garbage"),
    ("empty-body", b""),
    ("bad-base64", b"b!!!not*base64!!!"),
    ("trailing-separator", ("4hello" + RS).encode()),
    ("only-separators", (RS * 3).encode()),
    ("invalid-utf8", b"4\xff\xfe\xfd"),
    ("nul-bytes", b"\x00\x00\x00"),
]


def _session_ended_or_refused(port, sid, resp, what):
    if resp.status == 400:
        return
    assert resp.status == 200, f"{what}: {resp!r}"
    assert polling_session_state(port, sid) == "closed", f"{what}: session still open"


@pytest.mark.parametrize("body", [b[1] for b in POLL_BODIES], ids=[b[0] for b in POLL_BODIES])
def test_polling_bad_engineio_payload(gw, body):
    sid, _ = polling_open(gw.port)
    resp = polling_post(gw.port, sid, body)
    _session_ended_or_refused(gw.port, sid, resp, body)


def test_polling_binary_content_type(gw):
    sid, _ = polling_open(gw.port)
    resp = polling_post(gw.port, sid, b"\x04\x01\x02",
                        headers={"Content-Type": "application/octet-stream"})
    _session_ended_or_refused(gw.port, sid, resp, "octet-stream")


def test_polling_body_over_max_payload(gw):
    sid, _ = polling_open(gw.port)
    body = ("4" + "x" * (MAX_PAYLOAD * 3)).encode()
    raw = request_bytes("POST", f"{EIO_POLL}&sid={sid}", gw.port,
                        {"Content-Type": "text/plain;charset=UTF-8"}, body)
    kind, resp = exchange(gw.port, raw, timeout=10, half_close=False)
    assert kind == "closed" or resp.status == 413, resp


def test_polling_truncated_body(gw):
    sid, _ = polling_open(gw.port)
    raw = request_bytes("POST", f"{EIO_POLL}&sid={sid}", gw.port,
                        {"Content-Type": "text/plain", "Content-Length": "100"}, b"4hel")
    kind, resp = exchange(gw.port, raw, timeout=5, half_close=True)
    assert_refused(kind, resp, "truncated polling body")


def _polling_sio_session(port):
    sid, _ = polling_open(port)
    assert polling_post(port, sid, "40/ws,").status == 200
    deadline = time.monotonic() + 5
    seen = []
    while time.monotonic() < deadline:
        seen += polling_get(port, sid).body.decode().split(RS)
        if any(p.startswith("42/ws,") and '"connected"' in p for p in seen):
            return sid
    raise AssertionError(f"no connected event over polling: {seen}")


SIO_STRICT = [
    ("unknown-packet-type", "4abc"),
    ("event-payload-object", "42{}"),
    ("invalid-ack-id", '42abc["message-with-ack",1,"2",{"3":[false]}]'),
    ("ns-event-payload-object", "42/ws,{}"),
    ("ns-unterminated-json", '42/ws,["subscribe",{"channel":'),
    ("ns-bad-json", "42/ws,[subscribe]"),
]

SIO_CLOSE_OR_ERROR = [
    ("event-empty-array", "42/ws,[]"),
    ("binary-event-absurd-count", '4599999-/ws,["subscribe",{"_placeholder":true,"num":0}]'),
    ("binary-ack-absurd-count", '4699999-/ws,5[{"_placeholder":true,"num":0}]'),
    ("binary-event-negative-count", '45-1-/ws,["subscribe",{"_placeholder":true,"num":0}]'),
    ("binary-event-count-overflow",
     '4599999999999999999999-/ws,["subscribe",{"_placeholder":true,"num":0}]'),
]


@pytest.mark.parametrize("body", [c[1] for c in SIO_STRICT], ids=[c[0] for c in SIO_STRICT])
def test_polling_bad_socketio_packet(gw, body):
    sid = _polling_sio_session(gw.port)
    resp = polling_post(gw.port, sid, body)
    _session_ended_or_refused(gw.port, sid, resp, body)


@pytest.mark.parametrize("body", [c[1] for c in SIO_CLOSE_OR_ERROR[1:3]],
                         ids=[c[0] for c in SIO_CLOSE_OR_ERROR[1:3]])
def test_polling_absurd_attachments(gw, body):
    sid = _polling_sio_session(gw.port)
    resp = polling_post(gw.port, sid, body)
    if resp.status == 400:
        return
    assert resp.status == 200, resp
    seen = []
    state = polling_session_state(gw.port, sid, timeout=3, seen=seen)
    assert state == "closed" or any(_is_error_reply(p) for p in seen), \
        f"{body!r}: neither closed nor refused (got {seen})"


# ---- WebSocket frames (RFC 6455) -----------------------------------------------------------------

P1002 = {1002}
WS_FRAMES = [
    ("unmasked", encode_frame(OP_TEXT, "3", mask=False), P1002),
    ("rsv1", encode_frame(OP_TEXT, "3", rsv=4), P1002),
    ("rsv2", encode_frame(OP_TEXT, "3", rsv=2), P1002),
    ("rsv3", encode_frame(OP_TEXT, "3", rsv=1), P1002),
    ("reserved-opcode-3", encode_frame(0x3, "x"), P1002),
    ("reserved-opcode-7", encode_frame(0x7, "x"), P1002),
    ("reserved-control-opcode-B", encode_frame(0xB, "x"), P1002),
    ("ping-126-bytes", encode_frame(OP_PING, b"p" * 126), P1002),
    ("close-126-bytes", encode_frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124), P1002),
    ("fragmented-ping", encode_frame(OP_PING, b"x", fin=False), P1002),
    ("fragmented-close", encode_frame(OP_CLOSE, struct.pack("!H", 1000), fin=False), P1002),
    ("continuation-without-start", encode_frame(OP_CONT, "3"), P1002),
    ("text-inside-fragmented-text",
     encode_frame(OP_TEXT, "4a", fin=False) + encode_frame(OP_TEXT, "4b"), P1002),
    ("invalid-utf8-text", encode_frame(OP_TEXT, b"4\xff\xfe"), {1007}),
    ("invalid-utf8-across-fragments",
     encode_frame(OP_TEXT, b"4\xe2\x82", fin=False) + encode_frame(OP_CONT, b"\x28"), {1007}),
    ("overlong-utf8", encode_frame(OP_TEXT, b"4\xc0\xaf"), {1007}),
    ("utf16-surrogate", encode_frame(OP_TEXT, b"4\xed\xa0\x80"), {1007}),
    ("length-2^63", encode_frame(OP_BIN, b"", length=1 << 63) + b"abcd", {1002, 1009}),
    ("length-2^63-1", encode_frame(OP_BIN, b"", length=(1 << 63) - 1) + b"abcd", {1002, 1009}),
    ("over-max-payload", encode_frame(OP_TEXT, "4" + "x" * (MAX_PAYLOAD + 10)), {1009}),
    ("close-code-999", encode_frame(OP_CLOSE, struct.pack("!H", 999)), P1002),
    ("close-code-1005", encode_frame(OP_CLOSE, struct.pack("!H", 1005)), P1002),
    ("close-code-1006", encode_frame(OP_CLOSE, struct.pack("!H", 1006)), P1002),
    ("close-code-1016", encode_frame(OP_CLOSE, struct.pack("!H", 1016)), P1002),
    ("close-code-2999", encode_frame(OP_CLOSE, struct.pack("!H", 2999)), P1002),
    ("close-code-5000", encode_frame(OP_CLOSE, struct.pack("!H", 5000)), P1002),
    ("close-one-byte-payload", encode_frame(OP_CLOSE, b"\x03"), P1002),
    ("close-bad-utf8-reason", encode_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff\xfe"),
     {1007, 1002}),
    ("clean-close-1000", encode_frame(OP_CLOSE, struct.pack("!H", 1000)), {1000}),
]


@pytest.mark.parametrize("frames,codes", [c[1:] for c in WS_FRAMES], ids=[c[0] for c in WS_FRAMES])
def test_websocket_bad_frames(gw, frames, codes):
    ws, _ = ws_open(gw.port)
    with ws:
        ws.send_raw(frames)
        closed, code, _ = ws.wait_closed(timeout=5)
        assert closed, "connection still open 5 s after the frame"
        assert code is None or code in codes, f"close code {code}, expected one of {codes}"


def test_websocket_ping_is_ponged(gw):
    ws, _ = ws_open(gw.port)
    with ws:
        ws.send_frame(OP_PING, b"hello")
        deadline = time.monotonic() + 5
        while True:
            fin, op, payload = ws.recv_frame(max(0.01, deadline - time.monotonic()))
            if op == OP_PONG:
                assert payload == b"hello"
                break


@pytest.mark.parametrize("case", ["truncated-frame", "header-only", "half-header"])
def test_websocket_abandoned_mid_frame(gw, case):
    ws, _ = ws_open(gw.port)
    frame = encode_frame(OP_TEXT, "4" + "y" * 99)
    data = {"truncated-frame": frame[:20], "header-only": frame[:8],
            "half-header": frame[:1]}[case]
    ws.send_raw(data)
    time.sleep(0.1)
    ws.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()


EIO_WS_GARBAGE = [
    ("unknown-packet-type", "9garbage"),
    ("empty-text", ""),
]


@pytest.mark.parametrize("text", [c[1] for c in EIO_WS_GARBAGE], ids=[c[0] for c in EIO_WS_GARBAGE])
def test_websocket_bad_engineio_packet(gw, text):
    ws, _ = ws_open(gw.port)
    with ws:
        ws.send_text(text)
        closed, _, _ = ws.wait_closed(timeout=5)
        assert closed, f"{text!r} did not close the connection"


@pytest.mark.parametrize("text", [c[1] for c in SIO_STRICT], ids=[c[0] for c in SIO_STRICT])
def test_websocket_bad_socketio_packet(gw, text):
    ws, _ = ws_open_namespace(gw.port)
    with ws:
        ws.send_text(text)
        closed, _, packets = ws.wait_closed(timeout=5)
        assert closed, f"{text!r} did not close the connection (got {packets})"


SIO_PACKET = re.compile(r"^4(?P<type>[0-6])(?:\d+-)?(?:/ws,)?(?P<id>\d*)(?P<data>.*)$", re.S)


def _is_error_reply(p):
    """CONNECT_ERROR, an `error` event (plain or binary), or an ack {ok:false} (plain or binary)."""
    m = SIO_PACKET.match(p)
    if not m:
        return False
    t, data = m["type"], m["data"].replace(" ", "")
    return (t == "4" or (t in "25" and data.startswith('["error"'))
            or (t in "36" and '"ok":false' in data))


@pytest.mark.parametrize("text", [c[1] for c in SIO_CLOSE_OR_ERROR],
                         ids=[c[0] for c in SIO_CLOSE_OR_ERROR])
def test_websocket_socketio_packet_refused(gw, text):
    ws, _ = ws_open_namespace(gw.port)
    with ws:
        ws.send_text(text)
        closed, _, packets = ws.wait_closed(timeout=3, stop_when=_is_error_reply)
        assert closed or any(_is_error_reply(p) for p in packets), \
            f"{text!r}: neither closed nor refused (got {packets})"


@pytest.mark.parametrize("case", ["binary-without-header", "placeholder-out-of-range",
                                  "binary-subscribe-payload", "binary-subscribe-with-ack"])
def test_websocket_binary_attachments(gw, case):
    """Attachments are decoded or refused with a clear error; never a crash."""
    ws, _ = ws_open_namespace(gw.port)
    with ws:
        if case == "binary-without-header":
            ws.send_binary(b"\x01\x02\x03")
        elif case == "placeholder-out-of-range":
            ws.send_text('451-/ws,["subscribe",{"_placeholder":true,"num":5}]')
            ws.send_binary(b"\x01\x02\x03")
        elif case == "binary-subscribe-payload":
            ws.send_text('451-/ws,["subscribe",{"_placeholder":true,"num":0}]')
            ws.send_binary(b"\x01\x02\x03")
        else:
            ws.send_text('451-/ws,7["subscribe",{"_placeholder":true,"num":0}]')
            ws.send_binary(b"\x01\x02\x03")
        closed, _, packets = ws.wait_closed(timeout=3, stop_when=_is_error_reply)
        assert closed or any(_is_error_reply(p) for p in packets), \
            f"{case}: neither closed nor refused (got {packets})"
        if case == "binary-subscribe-with-ack" and not closed:
            acks = [p for p in packets if p.startswith("43/ws,7")]
            assert acks and json.loads(acks[0][len("43/ws,7"):])[0]["error"]["code"] \
                == "BAD_REQUEST", packets


def test_websocket_many_abrupt_disconnects(gw):
    """Connections that vanish (RST) right after CONNECT, repeatedly."""
    for _ in range(30):
        ws, _ = ws_open_namespace(gw.port)
        ws.send_text('42/ws,["subscribe",{"channel":"trades","symbol":"BTCUSDT"}]')
        ws.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.close()


# ---- ingest --------------------------------------------------------------------------------------


def ingest_raw(gw, body, content_type="application/json", timeout=10):
    if isinstance(body, str):
        body = body.encode()
    return http_request(gw.internal_port, "POST", "/internal/events",
                        headers={"Content-Type": content_type}, body=body, timeout=timeout)


INGEST_BAD_JSON = [
    ("truncated", '{"type":"trade","symbol":"BTCUSDT","data":{'),
    ("trailing-garbage", '{"type":"trade","symbol":"BTCUSDT","data":{}} xyz'),
    ("single-quotes", "{'type':'trade'}"),
    ("invalid-utf8", b'{"type":"trade","symbol":"BTCUSDT","data":"\xff\xfe"}'),
    ("nan", '{"type":"trade","symbol":"BTCUSDT","data":NaN}'),
    ("deep-nesting", "[" * 100_000 + "]" * 100_000),
    ("deep-nesting-in-data",
     '{"type":"trade","symbol":"BTCUSDT","data":' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("lone-surrogate-escape", '{"type":"trade","symbol":"BTCUSDT","data":"\\ud800"}'),
]


@pytest.mark.parametrize("body", [c[1] for c in INGEST_BAD_JSON],
                         ids=[c[0] for c in INGEST_BAD_JSON])
def test_ingest_invalid_json(gw, body):
    resp = ingest_raw(gw, body)
    if resp.status == 202:
        # only acceptable where JSON itself allows it (lone surrogate escapes are legal JSON text)
        assert isinstance(body, str) and "\\ud800" in body, resp
        return
    assert resp.status in (400, 413), resp
    if resp.status == 400:
        assert resp.json()["error"] in ("BAD_JSON", "BAD_EVENT"), resp


def _deep(levels):
    return "[" * levels + "1" + "]" * levels


def _trade_with(data):
    return '{"type":"trade","symbol":"BTCUSDT","data":' + data + "}"


# Valid JSON, whichever way a batch is framed: the same answer as a line of NDJSON, as an
# element of an array, or alone (data nesting 127 levels is 128 with the event: the limit).
INGEST_VALID_EDGES = [
    ("lone-surrogate", _trade_with('{"s":"\\ud800","t":"\\udc00\\ud800"}'), 202, None),
    ("5000-digit-integer", _trade_with("1" + "0" * 5000), 202, None),
    ("127-deep-data", _trade_with(_deep(127)), 202, None),
    ("128-deep-data", _trade_with(_deep(128)), 400, "BAD_EVENT"),
]


@pytest.mark.parametrize("event,status,error", [c[1:] for c in INGEST_VALID_EDGES],
                         ids=[c[0] for c in INGEST_VALID_EDGES])
@pytest.mark.parametrize("framing", ["alone", "ndjson", "array"])
def test_ingest_answers_valid_json_alike_whatever_its_framing(gw, event, status, error, framing):
    good = _trade_with('{"n":1}')
    body = {"alone": event, "ndjson": good + "\n" + event,
            "array": "[" + good + "," + event + "]"}[framing]
    resp = ingest_raw(gw, body)
    assert resp.status == status, (resp, resp.body[:300])
    if error:
        want_index = 0 if framing == "alone" else 1
        assert resp.json()["error"] == error and resp.json()["index"] == want_index, resp.json()


def test_a_batch_of_millions_of_tiny_values_is_refused_within_bounded_memory(gw):
    """15 MB of `[1,1,...]`: refused at its first element, without holding per value more
    than a few words (the gateway's peak RSS stays well under a gigabyte)."""
    body = "[" + ",".join(["1"] * 7_000_000) + "]"
    resp = ingest_raw(gw, body, timeout=60)
    assert resp.status == 400 and resp.json()["error"] == "BAD_EVENT", resp
    assert resp.json()["index"] == 0, resp.json()
    with open(f"/proc/{gw.proc.pid}/status") as f:
        peak_kib = int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib} KiB"


INGEST_WRONG_CONTENT = [
    ("empty", ""),
    ("null", "null"),
    ("number", "42"),
    ("string", '"ticker.update"'),
    ("bool", "true"),
    ("array-of-numbers", "[1,2]"),
    ("nested-array", "[[]]"),
    ("empty-object", "{}"),
    ("type-number", '{"type":5,"symbol":"BTCUSDT","data":{}}'),
    ("symbol-object", '{"type":"trade","symbol":{"a":1},"data":{}}'),
    ("symbol-1MiB", '{"type":"trade","symbol":"' + "A" * (1 << 20) + '","data":{}}'),
    ("interval-number", '{"type":"kline.update","symbol":"BTCUSDT","interval":1,"data":{}}'),
]


@pytest.mark.parametrize("body", [c[1] for c in INGEST_WRONG_CONTENT],
                         ids=[c[0] for c in INGEST_WRONG_CONTENT])
def test_ingest_wrong_content(gw, body):
    resp = ingest_raw(gw, body)
    if body == "" and resp.status == 202:
        assert resp.json() == {"accepted": 0}, resp  # an empty NDJSON stream holds no events
        return
    assert resp.status == 400, resp
    assert resp.json()["error"] in ("BAD_EVENT", "BAD_JSON"), resp


def test_ingest_second_event_bad(gw):
    good = {"type": "trade", "symbol": "BTCUSDT", "data": {"x": 1}}
    resp = ingest_raw(gw, json.dumps([good, 5]))
    assert resp.status == 400, resp
    body = resp.json()
    assert body["error"] == "BAD_EVENT" and body["index"] == 1, body


@pytest.mark.parametrize("size_mib", [20])
def test_ingest_huge_body(gw, size_mib):
    body = b'{"type":"trade","symbol":"BTCUSDT","data":"' + b"x" * (size_mib << 20) + b'"}'
    raw = request_bytes("POST", "/internal/events", gw.internal_port,
                        {"Content-Type": "application/json"}, body)
    kind, resp = exchange(gw.internal_port, raw, timeout=30, half_close=False)
    assert kind == "closed" or resp.status in (202, 400, 413), resp


def test_ingest_huge_garbage_body(gw):
    body = os.urandom(1 << 20) * 16
    raw = request_bytes("POST", "/internal/events", gw.internal_port,
                        {"Content-Type": "application/json"}, body)
    kind, resp = exchange(gw.internal_port, raw, timeout=30, half_close=False)
    assert kind == "closed" or resp.status in (400, 413), resp


def test_ingest_wrong_method(gw):
    resp = http_request(gw.internal_port, "GET", "/internal/events")
    assert resp.status in (404, 405), resp
