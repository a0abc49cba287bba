"""Bounded cost per client, tried as an attacker would, with real sockets.

Every attack runs from its own loopback address (127.0.0.2) beside a bystander (127.0.0.3)
subscribed to trades published every 50 ms. An attack passes when, during it, the gateway's
memory grows by at most 64 MiB; the attacker is paused or closed; afterwards the process and
both shards serve new clients within a second; and the bystander got every trade, in order,
each within 250 ms of its publish. The per-address limits are the real defaults here, not the
lifted ones the other suites use.
"""

import json
import re
import resource
import socket
import threading
import time

import jwt
import pytest

from gateway_harness import http, metric, rss, unique_symbol
from rawproto import (
    churn_subscriptions,
    send_for,
    hold_partial_frames,
    open_tcp,
    peer_keeps_open,
    Closed,
    Conn,
    OP_PING,
    RawWS,
    encode_frame,
    polling_open,
    polling_post,
    request_bytes,
    ws_open,
    ws_open_namespace,
)

ATTACKER = "127.0.0.2"
BYSTANDER = "127.0.0.3"
MIB = 1 << 20
RSS_BUDGET = 64 * MIB
LATENCY_BUDGET = 0.250

# The contract's defaults for the per-address limits (the harness lifts them for other suites).
DEFAULT_LIMITS = ("--max-connections-per-ip", "200", "--handshake-rate-per-ip", "20",
                  "--max-messages-per-sec", "50", "--shards", "2")


def stats(gw):
    status, raw, _ = http("GET", gw.internal_url + "/stats")
    assert status == 200
    return json.loads(raw)


def publish_trade(gw, symbol, data):
    status, body = gw.ingest({"type": "trade", "symbol": symbol, "data": data})
    assert status == 202, (status, body)


class Arena:
    """A gateway under attack, a bystander and a publisher beside it, and memory watched."""

    def __init__(self, gw):
        self.gw = gw
        self.symbol = unique_symbol("BY")
        self.stop = threading.Event()
        self.published = 0
        self.received = []  # (seq, latency seconds)
        self.errors = []
        self.rss_max = 0
        # The symbol is known (ingested) before anyone subscribes.
        publish_trade(gw, self.symbol, {"seq": -1, "t": time.time()})
        self.ws, _ = ws_open_namespace(gw.port, source=BYSTANDER)
        self.ws.send_text(f'42/ws,1["subscribe",{{"channel":"trades","symbol":"{self.symbol}"}}]')
        ack = self.ws.recv_eio()
        assert ack.startswith('43/ws,1[{"ok":true'), ack
        self.rss_before = rss(gw.proc.pid)
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._publish, self._receive, self._watch)]
        for t in self.threads:
            t.start()

    def _publish(self):
        while not self.stop.is_set():
            try:
                publish_trade(self.gw, self.symbol, {"seq": self.published, "t": time.time()})
                self.published += 1
            except Exception as e:  # noqa: BLE001 - reported by finish()
                self.errors.append(f"publish: {e!r}")
                return
            self.stop.wait(0.05)

    def _receive(self):
        while not self.stop.is_set() or len(self.received) < self.published:
            try:
                text = self.ws.recv_eio(timeout=0.5)
            except socket.timeout:
                if self.stop.is_set():
                    return
                continue
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"bystander: {e!r}")
                return
            if not text.startswith('42/ws,["trade"'):
                continue
            data = json.loads(text[len("42/ws,"):])[1]["data"]
            if data["seq"] >= 0:
                self.received.append((data["seq"], time.time() - data["t"]))

    def _watch(self):
        while not self.stop.is_set():
            try:
                self.rss_max = max(self.rss_max, rss(self.gw.proc.pid))
            except OSError:
                return
            time.sleep(0.01)

    def finish(self):
        """Stops the bystander's traffic and checks everything the arena promises."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        self.ws.close()
        assert not self.errors, self.errors
        assert self.gw.alive(), f"gateway died:\n{self.gw.log_tail()}"
        assert "panicked" not in self.gw.log_path.read_text(errors="replace")
        growth = self.rss_max - self.rss_before
        assert growth <= RSS_BUDGET, f"RSS grew {growth / MIB:.1f} MiB during the attack"
        seqs = [s for s, _ in self.received]
        assert seqs == list(range(self.published)), \
            f"bystander lost or reordered trades: got {len(seqs)} of {self.published}"
        worst = max((lat for _, lat in self.received), default=0.0)
        assert worst <= LATENCY_BUDGET, f"bystander latency {worst * 1000:.0f} ms"
        serves_both_shards(self.gw)
        return growth, worst


def serves_both_shards(gw):
    """New clients are served within a second, on both shards (sids name their shard)."""
    shards = set()
    for _ in range(64):
        t0 = time.monotonic()
        sid, _ = polling_open(gw.port)
        assert time.monotonic() - t0 <= 1.0, "a new client waited over a second"
        shards.add(sid[:2])
        polling_post(gw.port, sid, "1")
        if len(shards) == 2:
            return
    raise AssertionError(f"only shards {shards} answered new clients")


def attacker_ws(gw, rcvbuf=4096):
    ws, _ = ws_open_namespace(gw.port, rcvbuf=rcvbuf, source=ATTACKER)
    return ws


# ---- 1. a shard thread killed remotely --------------------------------------------------------


def test_polling_sessions_that_overflow_at_heartbeats_only_end_themselves(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--ping-interval-ms", "1000",
                         "--outbound-soft-limit", "65536", "--outbound-hard-limit", "65536")
    arena = Arena(gw)
    sids = []
    for _ in range(20):
        sid, _ = polling_open_from(gw.port, ATTACKER)
        sub = f'42/ws,["subscribe",{{"channel":"trades","symbol":"{arena.symbol}"}}]'
        polling_post_from(gw.port, sid, "40/ws,\x1e" + sub, ATTACKER)
        sids.append(sid)
    # Never polled: their queues fill with trades and the server's pings until the hard
    # limit ends them, whichever comes last.
    for i in range(40):
        publish_trade(gw, arena.symbol, {"seq": -1, "pad": "x" * 4000, "t": time.time()})
        time.sleep(0.05)
    time.sleep(1.5)
    arena.finish()
    for sid in sids:
        resp = polling_get_from(gw.port, sid, ATTACKER)
        assert resp.status == 400, resp


# ---- 2. and 3. replies without a limit ----------------------------------------------------------


def test_engine_io_pings_from_a_client_end_its_session(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    arena = Arena(gw)
    ws = attacker_ws(gw)
    burst = b"".join(encode_frame(0x1, b"2") for _ in range(10_000))
    ws.send_raw(burst)
    closed, _, packets = ws.wait_closed(timeout=5)
    assert closed, "a client ping must end the session (invalid heartbeat direction)"
    assert "3" not in packets, "no pong is echoed"
    sid, _ = polling_open_from(gw.port, ATTACKER)
    body = "\x1e".join(["2" + "x" * 100] * 900)
    polling_post_from(gw.port, sid, body, ATTACKER)
    assert polling_get_from(gw.port, sid, ATTACKER).status == 400
    arena.finish()


def test_websocket_ping_frames_from_a_reader_that_never_reads_pause_it(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    arena = Arena(gw)
    ws = attacker_ws(gw, rcvbuf=4096)
    frame = encode_frame(OP_PING, b"p" * 125)
    sent = send_for(ws.conn.sock, frame * 200, 4.0)
    held = metric(gw, "gateway_outbound_queue_bytes")
    time.sleep(0.6)  # the gauge is refreshed twice a second
    held = max(held, metric(gw, "gateway_outbound_queue_bytes"))
    assert held < 2 * MIB, f"{held} bytes queued for a client that never reads"
    growth, _ = arena.finish()
    assert sent > 4 * MIB or growth < RSS_BUDGET, "the attacker sent enough to matter"
    ws.close()


def test_polling_bodies_of_many_packets_are_refused(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    arena = Arena(gw)
    for _ in range(6):
        sid, _ = polling_open_from(gw.port, ATTACKER)
        body = "\x1e".join(["6"] * 499_999)  # ~1 MB of noops
        resp = polling_post_from(gw.port, sid, body, ATTACKER)
        assert resp.status == 400, resp
        assert polling_get_from(gw.port, sid, ATTACKER).status == 400
    arena.finish()


# ---- 4. pipelined requests ------------------------------------------------------------------------


def test_pipelined_requests_from_a_client_that_never_reads_hold_one_response(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    arena = Arena(gw)
    c = Conn(gw.port, rcvbuf=4096, source=ATTACKER)
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    sent = send_for(c.sock, one * 2000, 4.0)
    assert sent < 64 * MIB, "the kernel buffers fill and the gateway stops reading"
    arena.finish()
    # It is paused, not dropped: once it reads, its requests are answered in order.
    c.sock.settimeout(5)
    first = c.read_response(5)
    assert first.status == 200
    c.close()


# ---- 5. connections and buffered input -------------------------------------------------------------


def test_tcp_connections_per_address_are_capped(gateway_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    gw = gateway_factory(*DEFAULT_LIMITS, "--max-connections-per-ip", "10")
    arena = Arena(gw)
    socks = open_tcp(gw.port, ATTACKER, 3000)
    time.sleep(1.0)
    alive = sum(peer_keeps_open(s) for s in socks)
    for s in socks:
        s.close()
    assert alive <= 2 * 10 + 8, f"{alive} TCP connections held for one address"
    assert stats(gw)["total"]["tcp_refused"] >= 3000 - alive
    arena.finish()


def test_overlapping_posts_to_one_session_are_refused(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    arena = Arena(gw)
    sid, _ = polling_open_from(gw.port, ATTACKER)
    head = (f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
            "Host: x\r\nContent-Length: 1000000\r\n\r\n").encode()
    conns = []
    for i in range(5):
        c = Conn(gw.port, source=ATTACKER)
        c.send(head + b"6" * 900_000)
        conns.append(c)
        time.sleep(0.1)
    second = conns[1].read_response(5)
    assert second.status == 400, second
    assert polling_get_from(gw.port, sid, ATTACKER).status == 400, "the overlap ends the session"
    for c in conns:
        c.close()
    arena.finish()


def test_large_input_that_stops_arriving_is_dropped_and_the_budget_given_back(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--handshake-timeout-ms", "1500",
                         "--max-input-per-ip", str(4 * MIB))
    arena = Arena(gw)
    socks = []
    paused = 0
    for _ in range(40):  # 40 x 900 KB in flight: far over the address's input budget
        try:
            ws = attacker_ws(gw)
        except Closed:
            # With the address's budget full, not even its new handshakes are read: one may
            # be given up at the handshake timeout before the budget comes back.
            paused += 1
            continue
        ws.send_raw(encode_frame(0x1, b"4" + b"x" * 999_000)[:900_000])
        socks.append(ws)
    assert len(socks) >= 5, f"the budget was filled ({len(socks)} opened, {paused} paused)"
    time.sleep(3.0)
    for ws in socks:
        closed, _, _ = ws.wait_closed(timeout=2)
        assert closed, "an unfinished message is given up at the handshake timeout"
    # The budget was given back: the address is served again.
    ws = attacker_ws(gw)
    ws.send_text("42/ws,1" + json.dumps(["ping"]))
    assert ws.recv_eio(timeout=5).startswith("43/ws,1"), "the address is served again"
    ws.close()
    arena.finish()


# ---- 6. and 7. recovery used against others ----------------------------------------------------------


def test_recovery_of_a_socket_in_many_rooms_over_a_long_log_does_not_stall_others(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--max-subscriptions", "1024",
                         "--recovery-max-events", "200000")
    rooms = [unique_symbol("R")[:12] + f"{i:04d}" for i in range(1024)]
    ws, _ = ws_open(gw.port, source=ATTACKER)
    ws.send_text("40/ws,")
    answer = ws.recv_eio()
    pid = json.loads(answer[len("40/ws,"):])["pid"]
    ws.send_text("42/ws,1" + json.dumps(["subscribe", {"channel": "trades", "symbols": rooms}]))
    while not ws.recv_eio().startswith("43/ws,1"):
        pass
    ws.close()  # the connection goes; the session is kept for recovery
    time.sleep(0.3)
    other = unique_symbol("O")
    for _ in range(60):  # 60,000 events for other rooms, and one in each of 8 of its rooms
        gw.ingest_ndjson([{"type": "trade", "symbol": other, "data": {"n": i}} for i in range(1000)])
    for room in rooms[:8]:
        publish_trade(gw, room, {"owed": room})
    arena = Arena(gw)
    time.sleep(0.3)
    ws, _ = ws_open(gw.port, source=ATTACKER)
    ws.send_text(f'40/ws,{{"pid":"{pid}"}}')
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(got) < 8:
        pkt = ws.recv_eio(timeout=5)
        if '"owed"' in pkt:
            got.append(pkt)
    assert len(got) == 8, "its missed events, and only those, are replayed"
    ws.close()
    arena.finish()


SECRET = "attack-secret-of-at-least-32-bytes!"


def token(user):
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def test_a_stolen_pid_presented_by_someone_else_leaves_the_owner_its_session(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--jwt-secret", SECRET)
    arena = Arena(gw)
    sym = arena.symbol
    owner, _ = ws_open(gw.port, source=BYSTANDER)
    owner.send_text(f'40/ws,{{"token":"{token("alice")}"}}')
    pid = json.loads(owner.recv_eio()[len("40/ws,"):])["pid"]
    owner.send_text(f'42/ws,1["subscribe",{{"channel":"trades","symbol":"{sym}"}}]')
    while not owner.recv_eio().startswith("43/ws,1"):
        pass
    owner.close()
    time.sleep(0.3)
    publish_trade(gw, sym, {"seq": -1, "missed": True, "t": time.time()})
    for who in (token("mallory"), None):
        thief, _ = ws_open(gw.port, source=ATTACKER)
        auth = f'"token":"{who}",' if who else ""
        thief.send_text(f'40/ws,{{{auth}"pid":"{pid}"}}')
        answer = json.loads(thief.recv_eio()[len("40/ws,"):])
        assert answer["pid"] != pid, "not restored to someone else"
        thief.close()
    back, _ = ws_open(gw.port, source=BYSTANDER)
    back.send_text(f'40/ws,{{"token":"{token("alice")}","pid":"{pid}"}}')
    answer = json.loads(back.recv_eio()[len("40/ws,"):])
    assert answer["pid"] == pid, "the owner still recovers"
    seen = []
    deadline = time.time() + 10
    # Its missed trades come in order, ours among them (data as the backend wrote it).
    while not any(re.search(r'"missed":\s*true', p) for p in seen):
        assert time.time() < deadline, f"the missed trade was not replayed: {seen[:5]}"
        seen.append(back.recv_eio(timeout=5))
    back.close()
    arena.finish()


# ---- 8. forged X-Forwarded-For ------------------------------------------------------------------------


def test_forwarded_for_is_believed_only_from_trusted_proxies_and_from_the_right(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--trust-proxy", "--trusted-proxies", "127.0.0.9",
                         "--max-connections-per-ip", "5")
    arena = Arena(gw)
    accepted = 0
    for i in range(40):
        resp = http_from(gw.port, ATTACKER, "GET", "/socket.io/?EIO=4&transport=polling",
                         {"X-Forwarded-For": f"10.9.0.{i}"})
        accepted += resp.status == 200
    assert accepted == 5, f"{accepted} handshakes past a cap of 5 with forged addresses"
    accepted = 0
    for i in range(10):
        resp = http_from(gw.port, "127.0.0.9", "GET", "/socket.io/?EIO=4&transport=polling",
                         {"X-Forwarded-For": f"10.8.0.{i}, 10.7.0.1"})
        accepted += resp.status == 200
    assert accepted == 5, "the proxy's own entry (right-most) is the client"
    arena.finish()


# ---- 9. rooms at will ---------------------------------------------------------------------------------


def test_unknown_symbols_make_no_rooms(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, env={"GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS": None})
    arena = Arena(gw)
    ws = attacker_ws(gw, rcvbuf=None)
    answers = []
    for batch in range(20):
        syms = [unique_symbol("U")[:14] + f"{batch:02d}{i:04d}" for i in range(1000)]
        ws.send_text("42/ws,7" + json.dumps(["subscribe", {"channel": "trades", "symbols": syms}]))
        answers.append(ws.recv_eio())
        time.sleep(0.03)
    # A 20 KB request costs ~40 events of the connection's rate: refused once it is spent.
    assert '"INVALID_SYMBOL"' in answers[0], answers[0]
    assert all('"INVALID_SYMBOL"' in a or '"RATE_LIMITED"' in a for a in answers), answers
    assert stats(gw)["total"]["rooms"] <= 2, "only the bystander's room exists"
    ws.close()
    arena.finish()


def test_the_room_cap_refuses_new_rooms_with_a_clear_code(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--max-rooms", "50", "--shards", "1")
    ws = attacker_ws(gw, rcvbuf=None)
    syms = [unique_symbol("C")[:14] + f"{i:03d}" for i in range(100)]
    ws.send_text("42/ws,7" + json.dumps(["subscribe", {"channel": "trades", "symbols": syms}]))
    ack = ws.recv_eio()
    assert '"SUBSCRIPTION_LIMIT"' in ack and "limit of rooms" in ack, ack
    ws.send_text("42/ws,8" + json.dumps(["subscribe", {"channel": "trades", "symbols": syms[:40]}]))
    assert ws.recv_eio().startswith('43/ws,8[{"ok":true'), "within the cap it works"
    ws.close()


# ---- 10. request desync -------------------------------------------------------------------------------


def test_a_get_with_a_body_is_refused_not_parsed_as_the_next_request(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    smuggled = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
           + smuggled)
    c = Conn(gw.port, source=ATTACKER)
    c.send(raw)
    first = c.read_response(5)
    assert first.status == 400, first
    with pytest.raises(Closed):
        c.read_response(2)
    c.close()
    for bad in (b"POST /socket.io/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST /socket.io/ HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
                b"POST /socket.io/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"):
        c = Conn(gw.port, source=ATTACKER)
        c.send(bad)
        assert c.read_response(5).status == 400, bad
        c.close()


# ---- 11. CONNECT floods ------------------------------------------------------------------------------


def test_connect_floods_and_huge_namespaces_end_the_session(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    arena = Arena(gw)
    ws, _ = ws_open(gw.port, source=ATTACKER)
    ws.send_raw(b"".join(encode_frame(0x1, b"40/nope,") for _ in range(2000)))
    closed, _, packets = ws.wait_closed(timeout=5)
    assert closed
    refusals = [p for p in packets if p.startswith("44/nope,")]
    assert len(refusals) <= 11, f"{len(refusals)} refusals answered"
    ws, _ = ws_open(gw.port, source=ATTACKER)
    ws.send_text("40/" + "n" * 900_000 + ",")
    closed, _, packets = ws.wait_closed(timeout=5)
    assert closed and not any("nnnn" in p for p in packets), "the namespace is never echoed"
    arena.finish()


# ---- 12. the smaller ones -----------------------------------------------------------------------------


def test_an_internal_listener_off_loopback_needs_a_token(gateway_factory):
    from gateway_harness import Gateway
    gw = Gateway(["--internal-listen", "0.0.0.0:0"])
    with pytest.raises(RuntimeError, match="--ingest-token"):
        gw.start()


def test_cors_wildcard_never_allows_credentials(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--cors-origin", "*")
    c = Conn(gw.port)
    c.send(request_bytes("GET", "/socket.io/?EIO=4&transport=polling", gw.port,
                         {"Origin": "https://evil.example"}))
    resp = c.read_response(5)
    c.close()
    assert resp.headers.get("access-control-allow-origin") == "*"
    assert "access-control-allow-credentials" not in resp.headers


def test_a_second_gateway_on_a_port_in_use_refuses_to_start(gateway_factory):
    from gateway_harness import Gateway, gateway_bin
    import subprocess
    gw = gateway_factory(*DEFAULT_LIMITS)
    other = subprocess.run([str(gateway_bin()), "--listen", f"127.0.0.1:{gw.port}",
                            "--internal-listen", "127.0.0.1:0"],
                           capture_output=True, timeout=20)
    assert other.returncode != 0
    assert b"another gateway" in other.stderr, other.stderr[-400:]
    assert Gateway is not None


def test_a_closing_connection_that_takes_nothing_is_reset(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--close-linger-ms", "1000",
                         "--outbound-soft-limit", "65536", "--outbound-hard-limit", "131072")
    arena = Arena(gw)
    own = unique_symbol("Z")
    publish_trade(gw, own, {"first": True})
    ws = attacker_ws(gw, rcvbuf=2048)
    ws.send_text(f'42/ws,["subscribe",{{"channel":"trades","symbol":"{own}"}}]')
    time.sleep(0.2)
    before = stats(gw)["total"]["linger_resets"]
    # More than the kernel's socket buffers and the hard limit together, in batches smaller
    # than the limit, for a reader that never reads: the buffers fill, then it is dropped as
    # a slow consumer, and its notice is never taken.
    for _ in range(80):
        gw.ingest_ndjson([{"type": "trade", "symbol": own, "data": {"pad": "y" * 20_000}}] * 5)
    # Let go of within the linger time: reset, by the engine (its own queue never emptied)
    # or at release (what was owed fit in the kernel's send buffer, megabytes of it, which the
    # peer never took), so the kernel holds nothing toward the attacker either.
    attacker_port = ws.conn.sock.getsockname()[1]

    def gateway_side():
        """The kernel's sockets from the gateway's port to the attacker's, any state."""
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        return [r for r in rows
                if int(r[1].split(":")[1], 16) == gw.port
                and int(r[2].split(":")[1], 16) == attacker_port]

    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        if stats(gw)["total"]["linger_resets"] > before and not gateway_side():
            break
        time.sleep(0.2)
    assert stats(gw)["total"]["linger_resets"] > before, "held past the linger time"
    assert not gateway_side(), f"the kernel still holds it: {gateway_side()}"
    ws.close()
    arena.finish()


def test_a_second_websocket_for_an_upgraded_session_is_closed_not_refused(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    sid, _ = polling_open(gw.port)
    target = f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
    first = RawWS(gw.port, target)
    first.send_text("2probe")
    assert first.recv_eio() == "3probe"
    first.send_text("5")
    second = RawWS(gw.port, target)
    assert second.response.status == 101
    closed, _, _ = second.wait_closed(timeout=3)
    assert closed
    first.send_text("40")
    assert first.recv_eio().startswith("40{")
    first.close()


# ---- found by review: memory held for a packet, CPU per request, botnets --------------------------------


def test_binary_headers_whose_attachments_never_come_hold_nothing(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS)
    arena = Arena(gw)
    # ~990 KB of JSON that would decode to ~35 MiB, waiting for an attachment never sent.
    header = '451-/ws,7["x",{"_placeholder":true,"num":0},[' + "0," * 494_000 + "0]]"
    socks = []
    for _ in range(30):
        ws = attacker_ws(gw, rcvbuf=None)
        ws.send_text(header)
        socks.append(ws)
    answered = 0
    for ws in socks:
        # Answered at once, unless the address's work budget is spent (1 MB costs ~2,000
        # events of it): then reading pauses, and the unread message ends at its deadline.
        try:
            answer = ws.recv_eio(timeout=15)
        except (Closed, OSError):
            continue
        assert answer.startswith("43/ws,7") and "BAD_REQUEST" in answer, answer[:200]
        answered += 1
    print(f"{answered} of {len(socks)} answered, the rest closed at the message deadline")
    time.sleep(1.0)
    arena.finish()
    for ws in socks:
        ws.close()


def test_subscribe_churn_over_a_thousand_symbols_slows_only_the_churner(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, env={"GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS": None})
    symbols = [unique_symbol("C")[:12] + f"{i:04d}" for i in range(1024)]
    for i in range(0, len(symbols), 256):
        gw.ingest_ok([{"type": "trade", "symbol": s, "data": {}} for s in symbols[i:i + 256]])
    arena = Arena(gw)
    sub = "42/ws," + json.dumps(["subscribe", {"channel": "trades", "symbols": symbols}])
    unsub = sub.replace('"subscribe"', '"unsubscribe"', 1)
    stop = threading.Event()

    def churn():
        ws = attacker_ws(gw, rcvbuf=None)
        churn_subscriptions(ws, (sub, unsub), stop)
        ws.close()

    churners = [threading.Thread(target=churn, daemon=True) for _ in range(20)]
    for t in churners:
        t.start()
    time.sleep(6.0)
    stop.set()
    for t in churners:
        t.join(timeout=5)
    assert stats(gw)["total"]["work_pauses"] > 0, "the churning address was paused"
    arena.finish()


def test_partial_messages_from_many_addresses_stay_within_the_input_budget(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--handshake-rate-per-ip", "1000")
    arena = Arena(gw)
    # Under 64 KiB each: once free of any budget, now charged from the first byte.
    partial = encode_frame(0x1, b"4" + b"x" * 64_000)[:63_000]
    socks = hold_partial_frames(gw.port, [f"127.0.1.{i}" for i in range(1, 9)], 150, partial)
    assert len(socks) >= 8 * 100, f"only {len(socks)} attackers connected"
    # The gateway's budget, past which only connections holding under 4 KiB still read.
    held = stats(gw)["input_buffered_bytes"]
    assert held <= 32 * MIB + len(socks) * 4096 + MIB, f"{held} bytes of input held"
    arena.finish()
    for ws in socks:
        ws.close()


def test_idle_connections_at_the_tcp_cap_give_way_to_new_clients(gateway_factory):
    gw = gateway_factory(*DEFAULT_LIMITS, "--max-tcp-connections", "400")
    arena = Arena(gw)
    socks = []
    for source in ("127.0.2.1", "127.0.2.2", "127.0.2.3"):
        socks += open_tcp(gw.port, source, 200)
    time.sleep(0.5)
    # Past the cap each new one made room (or, on a shard with none idle, was refused).
    total = stats(gw)["total"]
    assert total["idle_evictions"] + total["tcp_refused"] >= 600 - 400, total
    assert total["idle_evictions"] > 0
    serves_both_shards(gw)  # new clients get in: idle connections make room
    arena.finish()
    for s in socks:
        s.close()


# ---- normal clients are not punished -------------------------------------------------------------------


def test_normal_clients_under_the_default_limits(gateway_factory, clients):
    gw = gateway_factory(*DEFAULT_LIMITS, env={"GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS": None})
    symbols = [unique_symbol("N")[:14] + f"{i:02d}" for i in range(50)]
    gw.ingest_ok([{"type": "trade", "symbol": s, "data": {"first": True}} for s in symbols])
    for _ in range(12):  # a dozen sessions in a row from one address
        sio, rec = clients(gw)
        sio.disconnect()
    sio, rec = clients(gw)  # polling, then the upgrade, as the official client does
    acks = [sio.call("subscribe", {"channel": "trades", "symbol": s}, namespace="/ws")
            for s in symbols]
    assert all(a["ok"] for a in acks), acks
    assert sio.call("ping", namespace="/ws")["ok"]
    gw.ingest_ok([{"type": "trade", "symbol": s, "data": {"n": 1}} for s in symbols])
    got = rec.wait_count("trade", len(symbols), timeout=10)
    assert len(got) == len(symbols)
    assert sio.transport() == "websocket"


# ---- raw helpers from the attacker's address ----------------------------------------------------------


def http_from(port, source, method, target, headers=None, body=b""):
    c = Conn(port, source=source)
    try:
        c.send(request_bytes(method, target, port, headers, body))
        return c.read_response(5)
    finally:
        c.close()


def polling_open_from(port, source):
    resp = http_from(port, source, "GET", "/socket.io/?EIO=4&transport=polling")
    assert resp.status == 200, resp
    first = resp.body.decode().split("\x1e")[0]
    hs = json.loads(first[1:])
    return hs["sid"], hs


def polling_post_from(port, sid, body, source):
    if isinstance(body, str):
        body = body.encode()
    return http_from(port, source, "POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}",
                     {"Content-Type": "text/plain;charset=UTF-8"}, body)


def polling_get_from(port, sid, source):
    return http_from(port, source, "GET", f"/socket.io/?EIO=4&transport=polling&sid={sid}")

