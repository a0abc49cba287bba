"""Operations: Prometheus /metrics moves with what happens, and SIGTERM drains gracefully."""

import json
import re
import signal
import socket
import time

from gateway_harness import Gateway, connect_client, http, unique_symbol
from rawproto import decode_payload, polling_get, polling_open, polling_post, ws_open_namespace


def scrape(gw):
    status, raw, headers = http("GET", gw.internal_url + "/metrics")
    assert status == 200, (status, raw)
    text = raw.decode()
    assert text.rstrip().endswith("# EOF"), text[-200:]
    return text


def value(text, name, **labels):
    """The sum of the samples of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    assert found, f"no sample {name}{labels}"
    return total


def until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    assert pred()


def test_publishes_wake_only_shards_with_members(gateway_factory, clients):
    gw = gateway_factory("--shards", "2", "--ticker-throttle-ms", "0")
    sym = unique_symbol("WAKE")

    def wakeups():
        text = scrape(gw)
        return [value(text, "gateway_shard_wakeups_total", shard=str(i)) for i in (0, 1)]

    # Nobody subscribed anywhere: each batch is queued to both shards, and a shard is woken
    # once per 16 it was left to take, not once per batch.
    n = 320
    before = wakeups()
    for i in range(n):
        gw.ingest_ok({"type": "ticker.update", "symbol": sym, "data": {"n": i}})
    idle = [a - b for a, b in zip(wakeups(), before)]
    assert sum(idle) <= 2 * n / 16 + 8, idle

    # What a shard was left to take is not lost: a client subscribing now gets the newest
    # value first.
    sio, rec = clients(gw, ["websocket"], ordered=True)
    sio.call("subscribe", {"channel": "ticker", "symbol": sym}, namespace="/ws", timeout=5)
    assert rec.wait_event("ticker.update", timeout=5)["data"] == {"n": n - 1}
    sio.call("subscribe", {"channel": "trades", "symbol": sym}, namespace="/ws", timeout=5)

    # The member's shard is woken for each batch it delivers; the other is still left alone.
    m = 48
    before = wakeups()
    for i in range(m):
        gw.ingest_ok({"type": "trade", "symbol": sym, "data": {"i": i}})
        rec.wait_event("trade", timeout=5, pred=lambda d, i=i: d["data"] == {"i": i})
    busy = [a - b for a, b in zip(wakeups(), before)]
    assert max(busy) >= m and min(busy) <= m / 16 + 4, busy
    assert [d["data"]["i"] for d in rec.named("trade")] == list(range(m))


def test_a_request_handed_to_an_unwoken_shard_sees_what_was_published_before_it(gateway_factory):
    # Each polling request comes on a new TCP connection, so about half of them reach the
    # session's shard handed over from the other one. Batches for rooms nobody follows were
    # queued to that shard without waking it: the subscribe must still be answered from
    # state that includes them (the newest ticker, no trades from before it).
    gw = gateway_factory("--shards", "2", "--ticker-throttle-ms", "0")
    for attempt in range(12):
        sym = unique_symbol("HAND")
        sid, _ = polling_open(gw.port)
        assert polling_post(gw.port, sid, "40/ws,").status == 200
        got = []
        while not any(p.startswith('42/ws,["connected"') for p in got):
            got += decode_payload(polling_get(gw.port, sid).body)
        for i in range(10):
            gw.ingest_ok({"type": "ticker.update", "symbol": sym, "data": {"v": i}})
        for i in range(5):
            gw.ingest_ok({"type": "trade", "symbol": sym, "data": {"t": i}})
        body = "\x1e".join("42/ws," + json.dumps(["subscribe", {"channel": c, "symbol": sym}])
                           for c in ("ticker", "trades"))
        assert polling_post(gw.port, sid, body).status == 200
        packets = []
        deadline = time.monotonic() + 5
        while not any('"ticker.update"' in p for p in packets) and time.monotonic() < deadline:
            packets += decode_payload(polling_get(gw.port, sid).body)
        try:  # whatever else was queued by now
            packets += decode_payload(polling_get(gw.port, sid, timeout=0.3).body)
        except socket.timeout:
            pass
        tickers = [json.loads(p[6:])[1]["data"]["v"] for p in packets if p.startswith('42/ws,["ticker.update"')]
        trades = [p for p in packets if p.startswith('42/ws,["trade"')]
        assert tickers[:1] == [9], (attempt, tickers)
        assert trades == [], (attempt, trades)
        polling_post(gw.port, sid, "1")


def test_metrics_move_with_connections_subscriptions_events_drops_and_refusals(gateway_factory, clients):
    gw = gateway_factory("--shards", "2", "--max-connections", "3",
                         "--outbound-soft-limit", "4096", "--outbound-hard-limit", "65536",
                         "--ticker-throttle-ms", "0")
    before = scrape(gw)
    assert value(before, "gateway_connections") == 0
    assert value(before, "gateway_subscriptions", channel="trades") == 0
    assert "gateway_fanout_latency_seconds_bucket" in before
    assert value(before, "process_resident_memory_bytes") > 0

    sym = unique_symbol("MET")
    sio, rec = clients(gw, ["websocket"])
    sio.call("subscribe", {"channel": "trades", "symbol": sym}, namespace="/ws", timeout=5)
    sio.call("subscribe", {"channel": "ticker", "symbol": sym}, namespace="/ws", timeout=5)
    until(lambda: value(scrape(gw), "gateway_connections", transport="websocket") == 1)
    until(lambda: value(scrape(gw), "gateway_subscriptions", channel="trades") == 1)
    assert value(scrape(gw), "gateway_subscriptions", channel="ticker") == 1

    gw.ingest_ok([{"type": "trade", "symbol": sym, "data": {"n": i}} for i in range(5)])
    rec.wait_count("trade", 5)
    until(lambda: value(scrape(gw), "gateway_messages_out_total") >= 5)
    now = scrape(gw)
    assert value(now, "gateway_events_ingested_total", type="trade") == 5
    assert value(now, "gateway_broadcasts_encoded_total") >= 5
    assert value(now, "gateway_fanout_latency_seconds_count") >= 1

    # A client that stops reading: ticker updates past the soft limit are dropped (latest only).
    raw, _ = ws_open_namespace(gw.port, rcvbuf=4096)
    with raw:
        raw.send_text(f'42/ws,["subscribe",{{"channel":"ticker","symbol":"{sym}"}}]')
        time.sleep(0.2)
        blob = "x" * 2000
        for chunk in range(10):
            gw.ingest_ok([{"type": "ticker.update", "symbol": sym, "data": {"n": chunk * 100 + i, "pad": blob}}
                          for i in range(100)])
        until(lambda: value(scrape(gw), "gateway_slow_consumer_drops_total") > 0)

    # Over the connection cap: the handshake is refused and counted.
    others = []
    try:
        for _ in range(3):
            status, body, _ = http("GET", gw.public_url + "/socket.io/?EIO=4&transport=polling")
            if status != 200:
                assert status == 503 and b"MAX_CONNECTIONS" in body, (status, body)
                break
            others.append(body)
        until(lambda: value(scrape(gw), "gateway_handshakes_refused_total", reason="MAX_CONNECTIONS") >= 1)
    finally:
        sio.disconnect()


def test_sigterm_drains_with_notice_and_every_queued_trade(gateway_log_dir):
    gw = Gateway(["--shards", "2", "--drain-timeout-ms", "5000", "--reconnect-after-ms", "1500"],
                 log_dir=gateway_log_dir, name="drain").start()
    try:
        sym = unique_symbol("DRN")
        subs = []
        for transports in (["websocket"], None):
            sio, rec = connect_client(gw, transports=transports, ordered=True)
            sio.call("subscribe", {"channel": "trades", "symbol": sym}, namespace="/ws", timeout=5)
            subs.append((sio, rec))
        n = 2000
        gw.ingest_ok([{"type": "trade", "symbol": sym, "data": {"seq": i}} for i in range(n)])
        gw.proc.send_signal(signal.SIGTERM)
        # Readiness turns 503 while draining (or the listener is already gone).
        for sio, rec in subs:
            notice = rec.wait_event("server.shutdown", timeout=8)
            assert notice == {"reconnectAfterMs": 1500}, notice
            got = [m["data"]["seq"] for m in rec.wait_count("trade", n, timeout=8)]
            assert got == list(range(n)), "every queued trade, in order, before the close"
        assert gw.proc.wait(timeout=10) == 0
        for sio, _ in subs:
            until(lambda: not sio.connected, timeout=5)
    finally:
        for sio, _ in subs:
            sio.disconnect()
        gw.kill()


def test_second_signal_exits_at_once(gateway_log_dir):
    gw = Gateway(["--drain-timeout-ms", "60000"], log_dir=gateway_log_dir, name="drain2").start()
    raw, _ = ws_open_namespace(gw.port, rcvbuf=4096)
    try:
        sym = unique_symbol("DR2")
        raw.send_text(f'42/ws,["subscribe",{{"channel":"trades","symbol":"{sym}"}}]')
        time.sleep(0.2)
        # A client that never reads keeps the drain waiting on its queue.
        gw.ingest_ok([{"type": "trade", "symbol": sym, "data": {"pad": "y" * 4000, "i": i}} for i in range(2000)])
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert gw.proc.poll() is None, "still draining"
        status, _, _ = http("GET", gw.public_url + "/ready", timeout=2) if gw.proc.poll() is None else (503, b"", {})
        assert status == 503
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=5) == 0
    finally:
        raw.close()
        gw.kill()
