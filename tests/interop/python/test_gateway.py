"""Gateway API through python-socketio (namespace /ws), per docs/test-interface.md."""

import json
import re
import signal
import subprocess
import time

import pytest
import socketio

from gateway_harness import (assert_envelope, book_checksum, gateway_bin, http, now_ms,
                             parse_json, unique_symbol)
from rawproto import ws_open

NS = "/ws"
QUIET = 0.4  # how long we wait before concluding that nothing more arrives


@pytest.fixture(params=[pytest.param(None, id="default"),
                        pytest.param(["websocket"], id="websocket")])
def transports(request):
    """None = python-socketio's default: polling first, then upgrade to websocket."""
    return request.param


def room_of(channel, symbol, interval=None):
    return {"ticker": f"ticker:{symbol}", "orderbook": f"orderbook:{symbol}",
            "trades": f"trades:{symbol}", "klines": f"klines:{symbol}:{interval}"}[channel]


def sub(channel, symbol=None, symbols=None, interval=None):
    p = {"channel": channel}
    if symbol is not None:
        p["symbol"] = symbol
    if symbols is not None:
        p["symbols"] = symbols
    if interval is not None:
        p["interval"] = interval
    return p


def trade_event(symbol, **data):
    d = {"tradeId": data.pop("tradeId", "t-1"), "symbol": symbol, "price": "45000.00",
         "quantity": "1.5", "timestamp": 1234567890}
    d.update(data)
    return {"type": "trade", "symbol": symbol, "data": d}


def subscribe_ok(sio, payload):
    ack = sio.call("subscribe", payload, namespace=NS, timeout=5)
    assert isinstance(ack, dict) and ack.get("ok") is True, ack
    return ack


def assert_ack(ack, channel, rooms, payload):
    """{ok:true, channel, rooms}; an echo of the request's symbol/symbols/interval is tolerated."""
    assert isinstance(ack, dict) and ack.get("ok") is True, ack
    assert ack.get("channel") == channel and ack.get("rooms") == rooms, ack
    for k in set(ack) - {"ok", "channel", "rooms"}:
        assert k in ("symbol", "symbols", "interval") and ack[k] == payload.get(k), ack


CHANNELS = [("ticker", None), ("orderbook", None), ("trades", None), ("klines", "1m")]
CHANNEL_IDS = [c for c, _ in CHANNELS]


# ---- plain HTTP ----------------------------------------------------------------------------------


def test_health_and_ready(gateway):
    status, raw, _ = http("GET", gateway.public_url + "/health")
    assert (status, parse_json(raw)) == (200, {"status": "ok"})
    status, raw, _ = http("GET", gateway.public_url + "/ready")
    assert (status, parse_json(raw)) == (200, {"status": "ready"})


# ---- connection ----------------------------------------------------------------------------------


def test_connected_payload(gateway, clients, transports):
    sio, rec = clients(gateway, transports)
    # the default transport list starts with polling and must have upgraded
    assert sio.transport() == "websocket"
    connected = rec.named("connected")
    assert len(connected) == 1, connected
    data = connected[0]
    assert data["socketId"] == sio.get_sid(NS), (data, sio.get_sid(NS))
    assert data["userId"] is None
    assert data["authenticated"] is False
    st = data["serverTime"]
    if isinstance(st, int):
        assert abs(st - now_ms()) < 60_000, data
    else:
        assert isinstance(st, str) and st, data


def test_main_namespace_accepts(gateway, clients, transports):
    sio, _ = clients(gateway, transports, namespace="/")
    assert sio.connected and sio.get_sid("/")


def test_invalid_namespace_refused(gateway, transports):
    sio = socketio.Client(reconnection=False)
    errors = []
    sio.on("connect_error", lambda *a: errors.append(a), namespace="/nope")
    try:
        with pytest.raises(socketio.exceptions.ConnectionError) as ei:
            sio.connect(gateway.public_url, namespaces=["/nope"], transports=transports,
                        wait_timeout=5)
        assert "/nope" in str(ei.value)
    finally:
        sio.disconnect()
    assert errors, "no connect_error for /nope"
    assert isinstance(errors[0][0], dict) and errors[0][0].get("message") == "Invalid namespace", \
        errors


# ---- subscribe / unsubscribe ---------------------------------------------------------------------


@pytest.mark.parametrize("channel,interval", CHANNELS, ids=CHANNEL_IDS)
def test_subscribe_events(gateway, clients, transports, channel, interval):
    sio, rec = clients(gateway, transports)
    s1, s2, s3 = unique_symbol("A"), unique_symbol("B"), unique_symbol("C")

    sio.emit("subscribe", sub(channel, symbol=s1, interval=interval), namespace=NS)
    got = rec.wait_event("subscribed")
    expected = {"channel": channel, "rooms": [room_of(channel, s1, interval)], "symbol": s1}
    if interval:
        expected["interval"] = interval
    assert got == expected

    sio.emit("subscribe", sub(channel, symbols=[s2, s3], interval=interval), namespace=NS)
    got = rec.wait_event("subscribed", pred=lambda d: "symbols" in d)
    expected = {"channel": channel, "symbols": [s2, s3],
                "rooms": [room_of(channel, s2, interval), room_of(channel, s3, interval)]}
    if interval:
        expected["interval"] = interval
    assert got == expected
    assert rec.named("error") == []


@pytest.mark.parametrize("channel,interval", CHANNELS, ids=CHANNEL_IDS)
def test_subscribe_acks(gateway, clients, transports, channel, interval):
    sio, rec = clients(gateway, transports)
    s1, s2, s3 = unique_symbol("A"), unique_symbol("B"), unique_symbol("C")

    p1 = sub(channel, symbol=s1, interval=interval)
    ack = sio.call("subscribe", p1, namespace=NS, timeout=5)
    assert_ack(ack, channel, [room_of(channel, s1, interval)], p1)
    p2 = sub(channel, symbols=[s2, s3], interval=interval)
    ack = sio.call("subscribe", p2, namespace=NS, timeout=5)
    assert_ack(ack, channel, [room_of(channel, s2, interval), room_of(channel, s3, interval)], p2)
    time.sleep(QUIET)
    # with an ack, success comes only as the ack
    assert rec.named("subscribed") == []


@pytest.mark.parametrize("channel,interval", CHANNELS, ids=CHANNEL_IDS)
def test_unsubscribe_event_and_ack(gateway, clients, transports, channel, interval):
    sio, rec = clients(gateway, transports)
    s1, s2, s3 = unique_symbol("A"), unique_symbol("B"), unique_symbol("C")
    subscribe_ok(sio, sub(channel, symbol=s1, interval=interval))
    subscribe_ok(sio, sub(channel, symbols=[s2, s3], interval=interval))

    sio.emit("unsubscribe", sub(channel, symbol=s1, interval=interval), namespace=NS)
    got = rec.wait_event("unsubscribed")
    expected = {"channel": channel, "rooms": [room_of(channel, s1, interval)], "symbol": s1}
    if interval:
        expected["interval"] = interval
    assert got == expected

    p2 = sub(channel, symbols=[s2, s3], interval=interval)
    ack = sio.call("unsubscribe", p2, namespace=NS, timeout=5)
    assert_ack(ack, channel, [room_of(channel, s2, interval), room_of(channel, s3, interval)], p2)
    time.sleep(QUIET)
    assert len(rec.named("unsubscribed")) == 1


# ---- error codes ---------------------------------------------------------------------------------

S = "<SYM>"  # replaced by a fresh symbol per test

ERROR_CASES = [
    ("missing-channel", "subscribe", {"symbol": S}, "INVALID_CHANNEL"),
    ("unknown-channel", "subscribe", {"channel": "nope", "symbol": S}, "INVALID_CHANNEL"),
    ("missing-symbol", "subscribe", {"channel": "ticker"}, "INVALID_SYMBOL"),
    ("lowercase-symbol", "subscribe", {"channel": "ticker", "symbol": "btcusdt"}, "INVALID_SYMBOL"),
    ("short-symbol", "subscribe", {"channel": "trades", "symbol": "B"}, "INVALID_SYMBOL"),
    ("long-symbol", "subscribe", {"channel": "trades", "symbol": "A" * 21}, "INVALID_SYMBOL"),
    ("dash-symbol", "subscribe", {"channel": "orderbook", "symbol": "BTC-USDT"}, "INVALID_SYMBOL"),
    ("all-on-orderbook", "subscribe", {"channel": "orderbook", "symbol": "all"}, "INVALID_SYMBOL"),
    ("all-on-trades", "subscribe", {"channel": "trades", "symbol": "all"}, "INVALID_SYMBOL"),
    ("bad-in-symbols", "subscribe", {"channel": "trades", "symbols": [S, "bad!"]},
     "INVALID_SYMBOL"),
    ("klines-no-interval", "subscribe", {"channel": "klines", "symbol": S}, "INVALID_INTERVAL"),
    ("klines-2m", "subscribe", {"channel": "klines", "symbol": S, "interval": "2m"},
     "INVALID_INTERVAL"),
    ("klines-1H", "subscribe", {"channel": "klines", "symbol": S, "interval": "1H"},
     "INVALID_INTERVAL"),
    ("payload-string", "subscribe", "abc", "BAD_REQUEST"),
    ("payload-number", "subscribe", 42, "BAD_REQUEST"),
    ("payload-array", "subscribe", [{"channel": "ticker", "symbol": S}], "BAD_REQUEST"),
    ("symbols-empty", "subscribe", {"channel": "trades", "symbols": []}, "BAD_REQUEST"),
    ("symbols-string", "subscribe", {"channel": "trades", "symbols": "BTCUSDT"}, "BAD_REQUEST"),
    ("symbols-numbers", "subscribe", {"channel": "trades", "symbols": [1, 2]}, "BAD_REQUEST"),
    ("unsub-unknown-channel", "unsubscribe", {"channel": "nope", "symbol": S}, "INVALID_CHANNEL"),
    ("unsub-bad-interval", "unsubscribe", {"channel": "klines", "symbol": S, "interval": "7m"},
     "INVALID_INTERVAL"),
    ("private-orders", "subscribe.private", {"channel": "user.orders"}, "UNAUTHORIZED"),
    ("private-balances", "subscribe.private", {"channel": "user.balances"}, "UNAUTHORIZED"),
]


def _fill(payload, sym):
    return json.loads(json.dumps(payload).replace(S, sym))


@pytest.mark.parametrize("event,payload,code", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_error_codes(gateway, clients, transports, event, payload, code):
    sio, rec = clients(gateway, transports)
    payload = _fill(payload, unique_symbol())

    sio.emit(event, payload, namespace=NS)
    err = rec.wait_event("error")
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["request"] == payload, err

    ack = sio.call(event, payload, namespace=NS, timeout=5)
    assert isinstance(ack, dict) and set(ack) == {"ok", "error"}, ack
    assert ack["ok"] is False
    assert ack["error"]["code"] == code, ack
    assert isinstance(ack["error"]["message"], str) and ack["error"]["message"], ack

    time.sleep(QUIET)
    assert len(rec.named("error")) == 1, "with an ack the failure must come only as the ack"
    assert rec.named("subscribed") == [] and rec.named("unsubscribed") == []


def test_error_missing_payload(gateway, clients, transports):
    sio, rec = clients(gateway, transports)
    sio.emit("subscribe", namespace=NS)  # ["subscribe"], no argument at all
    err = rec.wait_event("error")
    assert err["code"] == "BAD_REQUEST", err
    assert err.get("request") is None, err
    ack = sio.call("subscribe", namespace=NS, timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "BAD_REQUEST", ack


def test_symbols_all_or_nothing(gateway, clients, transports):
    sio, rec = clients(gateway, transports)
    good, sentinel = unique_symbol("G"), unique_symbol("Z")
    subscribe_ok(sio, sub("trades", symbol=sentinel))
    ack = sio.call("subscribe", sub("trades", symbols=[good, "bad!"]), namespace=NS, timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "INVALID_SYMBOL", ack
    gateway.ingest_ok([trade_event(good), trade_event(sentinel)])
    rec.wait_event("trade", pred=lambda m: m["channel"] == f"trades:{sentinel}")
    time.sleep(0.2)
    assert [m["channel"] for m in rec.named("trade")] == [f"trades:{sentinel}"]


def _subscription_limit_flag():
    try:
        out = subprocess.run([str(gateway_bin()), "--help"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    flags = [f for f in re.findall(r"--[a-z0-9][a-z0-9-]*", out) if "subscription" in f]
    return flags[0] if flags else None


def test_subscription_limit(gateway_factory, clients):
    flag = _subscription_limit_flag()
    if flag is None:
        pytest.skip("--help lists no subscriptions-per-connection flag")
    gw = gateway_factory(flag, "2")
    sio, rec = clients(gw, ["websocket"])
    a, b, c, d = (unique_symbol(p) for p in "ABCD")
    subscribe_ok(sio, sub("trades", symbol=a))
    subscribe_ok(sio, sub("trades", symbol=b))
    ack = sio.call("subscribe", sub("trades", symbol=c), namespace=NS, timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "SUBSCRIPTION_LIMIT", ack
    payload = sub("ticker", symbol=c)
    sio.emit("subscribe", payload, namespace=NS)
    err = rec.wait_event("error")
    assert err["code"] == "SUBSCRIPTION_LIMIT" and err["request"] == payload, err
    # freeing one slot: a two-symbol list still does not fit, and subscribes none of it
    ack = sio.call("unsubscribe", sub("trades", symbol=b), namespace=NS, timeout=5)
    assert ack["ok"] is True, ack
    ack = sio.call("subscribe", sub("trades", symbols=[c, d]), namespace=NS, timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "SUBSCRIPTION_LIMIT", ack
    gw.ingest_ok([trade_event(c), trade_event(a)])
    rec.wait_event("trade", pred=lambda m: m["channel"] == f"trades:{a}")
    time.sleep(0.2)
    assert [m["channel"] for m in rec.named("trade")] == [f"trades:{a}"]
    subscribe_ok(sio, sub("trades", symbol=c))


# ---- delivery ------------------------------------------------------------------------------------


def _delivery_case(kind, sym):
    """(subscribe payload, ingest event, client event name, room, data)."""
    if kind == "ticker":
        d = {"symbol": sym, "lastPrice": "45000.00", "priceChange": "1500.00",
             "priceChangePercent": "3.45", "high24h": "46000.00", "low24h": "43000.00",
             "volume24h": "12500.50", "quoteVolume24h": "562525000.00",
             "openTime": 1234567890, "closeTime": 1234654290}
        return (sub("ticker", symbol=sym), {"type": "ticker.update", "symbol": sym, "data": d},
                "ticker.update", f"ticker:{sym}", d)
    if kind == "orderbook":
        d = {"type": "snapshot", "bids": [["45000.00", "1.5"], ["44999.00", "2.3"]],
             "asks": [["45001.00", "1.2"], ["45002.00", "0.8"]], "lastUpdateId": 12345}
        # A backend snapshot replaces the gateway's book: subscribers get it as a resync.
        seen = {"symbol": sym, "type": "snapshot", "reason": "resync", "bids": d["bids"],
                "asks": d["asks"], "lastUpdateId": 12345,
                "checksum": book_checksum(d["bids"], d["asks"])}
        return (sub("orderbook", symbol=sym),
                {"type": "orderbook.update", "symbol": sym, "data": d},
                "orderbook.update", f"orderbook:{sym}", seen)
    if kind == "trade":
        ev = trade_event(sym, tradeId="9b2c", timestamp=1234567890)
        return sub("trades", symbol=sym), ev, "trade", f"trades:{sym}", ev["data"]
    if kind == "kline":
        d = {"symbol": sym, "interval": "5m", "openTime": 1234567800, "closeTime": 1234568099,
             "open": "45000.00", "high": "45100.00", "low": "44900.00", "close": "45050.00",
             "volume": "125.50", "quoteVolume": "5650000.00", "trades": 450, "closed": False}
        return (sub("klines", symbol=sym, interval="5m"),
                {"type": "kline.update", "symbol": sym, "interval": "5m", "data": d},
                "kline.update", f"klines:{sym}:5m", d)
    if kind == "broadcast":
        d = {"text": "maintenance at 02:00", "level": 2, "nested": {"a": [1, None, True]}}
        return (sub("trades", symbol=sym),
                {"room": f"trades:{sym}", "event": "announcement", "data": d},
                "announcement", f"trades:{sym}", d)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["ticker", "orderbook", "trade", "kline", "broadcast"])
def test_ingest_delivery(gateway, clients, transports, kind):
    sio, rec = clients(gateway, transports)
    sym = unique_symbol()
    payload, event, name, room, data = _delivery_case(kind, sym)
    subscribe_ok(sio, payload)
    gateway.ingest_ok(event)
    msg = rec.wait_event(name)
    assert_envelope(msg, room, data)
    time.sleep(QUIET)
    assert len(rec.named(name)) == 1, rec.named(name)


def test_tickers_update_on_ticker_all(gateway_factory, clients, transports):
    gw = gateway_factory()  # fresh: no known tickers, no throttle window in progress
    sio, rec = clients(gw, transports)
    p = sub("ticker", symbol="all")
    ack = sio.call("subscribe", p, namespace=NS, timeout=5)
    assert_ack(ack, "ticker", ["ticker:all"], p)
    sio2, rec2 = clients(gw, transports)
    sio2.emit("subscribe", sub("ticker", symbol="all"), namespace=NS)
    assert rec2.wait_event("subscribed") == {"channel": "ticker", "rooms": ["ticker:all"],
                                             "symbol": "all"}

    sym = unique_symbol()
    d = {"symbol": sym, "lastPrice": "101.5", "volume24h": "7"}
    gw.ingest_ok({"type": "ticker.update", "symbol": sym, "data": d})
    for r in (rec, rec2):
        # an empty snapshot on subscribe (no tickers known yet) is tolerated and skipped
        msg = r.wait_event("tickers.update", pred=lambda m: m.get("data"))
        assert_envelope(msg, "ticker:all", [d])
        assert r.named("ticker.update") == []


def test_private_events_accepted(gateway, clients):
    sio, rec = clients(gateway, ["websocket"])
    types = ["order.created", "order.filled", "order.cancelled", "order.expired",
             "trade.executed", "balance.updated", "balance.locked", "balance.unlocked",
             "deposit.detected", "deposit.confirmed", "deposit.credited"]
    gateway.ingest_ok([{"type": t, "userId": "u-1", "data": {"n": i}} for i, t in enumerate(types)])
    time.sleep(QUIET)
    # an anonymous connection is in no user room
    assert [e for e, _ in rec.snapshot() if e in types] == []


def test_unsubscribe_stops_delivery(gateway, clients, transports):
    sio, rec = clients(gateway, transports)
    sym, sentinel = unique_symbol("U"), unique_symbol("Z")
    subscribe_ok(sio, sub("trades", symbol=sym))
    subscribe_ok(sio, sub("trades", symbol=sentinel))
    gateway.ingest_ok(trade_event(sym, tradeId="before"))
    rec.wait_event("trade", pred=lambda m: m["data"]["tradeId"] == "before")

    p = sub("trades", symbol=sym)
    ack = sio.call("unsubscribe", p, namespace=NS, timeout=5)
    assert_ack(ack, "trades", [f"trades:{sym}"], p)
    gateway.ingest_ok([trade_event(sym, tradeId="after"), trade_event(sentinel, tradeId="sent")])
    rec.wait_event("trade", pred=lambda m: m["data"]["tradeId"] == "sent")
    time.sleep(0.2)
    assert [m["data"]["tradeId"] for m in rec.named("trade")] == ["before", "sent"]


def test_no_cross_room_leakage(gateway, clients, transports):
    a, ra = clients(gateway, transports)
    b, rb = clients(gateway, transports)
    s1, s2 = unique_symbol("P"), unique_symbol("Q")
    for p in (sub("trades", symbol=s1), sub("ticker", symbol=s1),
              sub("klines", symbol=s1, interval="1m"), sub("orderbook", symbol=s1)):
        subscribe_ok(a, p)
    for p in (sub("trades", symbol=s2), sub("klines", symbol=s1, interval="5m")):
        subscribe_ok(b, p)

    ob = {"symbol": s2, "type": "snapshot", "bids": [["1", "1"]], "asks": [], "lastUpdateId": 1}
    events = [
        trade_event(s1, tradeId="a1"),
        trade_event(s2, tradeId="b1"),
        {"type": "ticker.update", "symbol": s2, "data": {"symbol": s2, "lastPrice": "2"}},
        {"type": "kline.update", "symbol": s1, "interval": "5m", "data": {"i": "5m"}},
        {"type": "kline.update", "symbol": s1, "interval": "1m", "data": {"i": "1m"}},
        {"type": "orderbook.update", "symbol": s2, "data": ob},
        {"room": f"trades:{s2}", "event": "custom.b", "data": {"to": "b"}},
        {"room": f"nobody:{s1}", "event": "custom.none", "data": {}},
        {"type": "ticker.update", "symbol": s1, "data": {"symbol": s1, "lastPrice": "1"}},
        {"type": "orderbook.update", "symbol": s1, "data": dict(ob, symbol=s1)},
    ]
    gateway.ingest_ok(events)

    want_a = {("trade", f"trades:{s1}"), ("kline.update", f"klines:{s1}:1m"),
              ("ticker.update", f"ticker:{s1}"), ("orderbook.update", f"orderbook:{s1}")}
    want_b = {("trade", f"trades:{s2}"), ("kline.update", f"klines:{s1}:5m"),
              ("custom.b", f"trades:{s2}")}

    def data_events(rec):
        return [(e, d["channel"]) for e, d in rec.snapshot()
                if isinstance(d, dict) and "channel" in d and "timestamp" in d]

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if want_a <= set(data_events(ra)) and want_b <= set(data_events(rb)):
            break
        time.sleep(0.05)
    time.sleep(QUIET)
    assert sorted(data_events(ra)) == sorted(want_a)
    assert sorted(data_events(rb)) == sorted(want_b)


def test_ingest_batch_formats(gateway, clients):
    sio, rec = clients(gateway, ["websocket"])
    sym = unique_symbol()
    subscribe_ok(sio, sub("trades", symbol=sym))
    assert gateway.ingest(trade_event(sym, tradeId="o1")) == (202, {"accepted": 1})
    assert gateway.ingest([trade_event(sym, tradeId=f"a{i}") for i in range(3)]) == \
        (202, {"accepted": 3})
    assert gateway.ingest_ndjson([trade_event(sym, tradeId=f"n{i}") for i in range(2)]) == \
        (202, {"accepted": 2})
    got = rec.wait_count("trade", 6)
    assert sorted(m["data"]["tradeId"] for m in got) == ["a0", "a1", "a2", "n0", "n1", "o1"]


def test_ping_pong(gateway, clients, transports):
    sio, rec = clients(gateway, transports)
    sio.emit("ping", namespace=NS)
    pong = rec.wait_event("pong")
    assert set(pong) == {"timestamp"}, pong
    assert isinstance(pong["timestamp"], int) and abs(pong["timestamp"] - now_ms()) < 60_000
    ack = sio.call("ping", namespace=NS, timeout=5)
    assert isinstance(ack, dict) and set(ack) == {"ok", "timestamp"} and ack["ok"] is True, ack
    assert abs(ack["timestamp"] - now_ms()) < 60_000
    time.sleep(QUIET)
    assert len(rec.named("pong")) == 1, "with an ack the pong comes only as the ack"


# ---- ingest validation ---------------------------------------------------------------------------

BAD_EVENTS = [
    ("unknown-type", {"type": "nope.update", "symbol": "BTCUSDT", "data": {}}),
    ("lowercase-symbol", {"type": "ticker.update", "symbol": "btcusdt", "data": {}}),
    ("short-symbol", {"type": "trade", "symbol": "B", "data": {}}),
    ("long-symbol", {"type": "trade", "symbol": "A" * 21, "data": {}}),
    ("bad-interval", {"type": "kline.update", "symbol": "BTCUSDT", "interval": "2m", "data": {}}),
    ("no-interval", {"type": "kline.update", "symbol": "BTCUSDT", "data": {}}),
    ("missing-data", {"type": "trade", "symbol": "BTCUSDT"}),
    ("private-no-user", {"type": "order.filled", "data": {}}),
    ("room-empty", {"room": "", "event": "x", "data": 1}),
    ("room-number", {"room": 5, "event": "x", "data": 1}),
    ("event-empty", {"room": "trades:BTCUSDT", "event": "", "data": 1}),
    ("event-number", {"room": "trades:BTCUSDT", "event": 7, "data": 1}),
] + [(f"reserved-{n}", {"room": "trades:BTCUSDT", "event": n, "data": 1})
     for n in ("connect", "connect_error", "disconnect", "disconnecting", "newListener",
               "removeListener")]


@pytest.mark.parametrize("event", [c[1] for c in BAD_EVENTS], ids=[c[0] for c in BAD_EVENTS])
def test_ingest_bad_event(gateway, event):
    status, body = gateway.ingest(event)
    assert status == 400, (status, body)
    assert body["error"] == "BAD_EVENT" and body["index"] == 0, body
    assert isinstance(body["message"], str) and body["message"], body


@pytest.mark.parametrize("fmt", ["array", "ndjson"])
def test_ingest_bad_batch_applies_nothing(gateway, clients, fmt):
    sio, rec = clients(gateway, ["websocket"])
    sym = unique_symbol()
    subscribe_ok(sio, sub("trades", symbol=sym))
    batch = [trade_event(sym, tradeId="x0"), trade_event(sym, tradeId="x1"),
             {"type": "trade", "symbol": "bad!", "data": {}}, trade_event(sym, tradeId="x3")]
    status, body = (gateway.ingest if fmt == "array" else gateway.ingest_ndjson)(batch)
    assert status == 400 and body["error"] == "BAD_EVENT" and body["index"] == 2, (status, body)
    gateway.ingest_ok(trade_event(sym, tradeId="after"))
    rec.wait_event("trade", pred=lambda m: m["data"]["tradeId"] == "after")
    time.sleep(0.2)
    assert [m["data"]["tradeId"] for m in rec.named("trade")] == ["after"]


def test_ingest_bad_json(gateway, clients):
    status, body = gateway.ingest_raw('{"type": "trade", "symbol": ')
    assert status == 400 and body["error"] == "BAD_JSON" and "index" in body, (status, body)
    assert isinstance(body["message"], str)

    sio, rec = clients(gateway, ["websocket"])
    sym = unique_symbol()
    subscribe_ok(sio, sub("trades", symbol=sym))
    ndjson = json.dumps(trade_event(sym, tradeId="l0")) + "\n" + '{"type": "trade", "sym\n'
    status, body = gateway.ingest_raw(ndjson, content_type="application/x-ndjson")
    assert status == 400 and body["error"] == "BAD_JSON", (status, body)
    assert body["index"] in (1, None), body
    gateway.ingest_ok(trade_event(sym, tradeId="after"))
    rec.wait_event("trade", pred=lambda m: m["data"]["tradeId"] == "after")
    time.sleep(0.2)
    assert [m["data"]["tradeId"] for m in rec.named("trade")] == ["after"]


def test_ingest_token(gateway_factory, clients):
    gw = gateway_factory("--ingest-token", "s3cret-token")
    sio, rec = clients(gw, ["websocket"])
    sym = unique_symbol()
    subscribe_ok(sio, sub("trades", symbol=sym))
    ev = trade_event(sym, tradeId="authed")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                    {"Authorization": "Basic czNjcmV0LXRva2Vu"}):
        status, raw, _ = http("POST", gw.internal_url + "/internal/events",
                              json.dumps(ev).encode(),
                              {"Content-Type": "application/json", **headers})
        body = parse_json(raw)
        assert status == 401, (headers, status, body)
        assert body["error"] == "UNAUTHORIZED" and isinstance(body["message"], str), body
    assert gw.ingest(ev, token="s3cret-token") == (202, {"accepted": 1})
    msg = rec.wait_event("trade")
    assert_envelope(msg, f"trades:{sym}", ev["data"])
    time.sleep(0.2)
    assert len(rec.named("trade")) == 1, "a refused ingest must not be delivered"


# ---- heartbeats ----------------------------------------------------------------------------------


def test_heartbeat_keeps_idle_connection(gateway_factory, clients, transports):
    gw = gateway_factory("--ping-interval-ms", "200", "--ping-timeout-ms", "200")
    sio, rec = clients(gw, transports)
    drops = []
    sio.on("disconnect", lambda *a: drops.append(a), namespace=NS)
    assert (sio.eio.ping_interval, sio.eio.ping_timeout) == (0.2, 0.2)
    time.sleep(2.0)
    assert sio.connected and not drops, drops
    sym = unique_symbol()
    subscribe_ok(sio, sub("trades", symbol=sym))
    ev = trade_event(sym, tradeId="after-idle")
    gw.ingest_ok(ev)
    assert_envelope(rec.wait_event("trade"), f"trades:{sym}", ev["data"])


def test_heartbeat_closes_silent_connection(gateway_factory):
    gw = gateway_factory("--ping-interval-ms", "200", "--ping-timeout-ms", "200")
    ws, hs = ws_open(gw.port)
    with ws:
        assert hs["pingInterval"] == 200 and hs["pingTimeout"] == 200, hs
        assert ws.recv_eio(timeout=2, answer_pings=False) == "2"
        t0 = time.monotonic()
        closed, _, packets = ws.wait_closed(timeout=3)  # never answer the ping
        assert closed, f"connection not closed 3 s after an unanswered ping ({packets})"
        assert time.monotonic() - t0 < 2.0


# ---- ordering ------------------------------------------------------------------------------------


def test_500_trades_in_order(gateway, clients, transports):
    # OrderedClient runs handlers in arrival order (the stock client uses a thread per message)
    sio, rec = clients(gateway, transports, ordered=True)
    sym = unique_symbol("ORD")
    subscribe_ok(sio, sub("trades", symbol=sym))
    events = [trade_event(sym, tradeId=f"t{i}", seq=i) for i in range(500)]
    assert gateway.ingest_ndjson(events) == (202, {"accepted": 500})
    got = rec.wait_count("trade", 500, timeout=20)
    assert [m["data"]["seq"] for m in got] == list(range(500))
    for m, ev in zip(got, events):
        assert_envelope(m, f"trades:{sym}", ev["data"])
    time.sleep(0.2)
    assert len(rec.named("trade")) == 500


# ---- shutdown ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_exit_0(gateway_factory, sig):
    gw = gateway_factory()
    sio = socketio.Client(reconnection=False)
    gone = []
    sio.on("disconnect", lambda *a: gone.append(a), namespace=NS)
    sio.connect(gw.public_url, namespaces=[NS], transports=["websocket"], wait_timeout=5)
    try:
        assert gw.stop(sig) == 0, gw.log_tail()
        deadline = time.monotonic() + 5
        while sio.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sio.connected and gone
    finally:
        sio.disconnect()


# ---- long-polling only -----------------------------------------------------------------------------


def test_polling_only_client(gateway, clients):
    """Without the upgrade, everything flows over HTTP long-polling."""
    sio, rec = clients(gateway, ["polling"])
    assert sio.transport() == "polling"
    assert rec.named("connected")[0]["socketId"] == sio.get_sid(NS)
    sym = unique_symbol()
    subscribe_ok(sio, sub("trades", symbol=sym))
    # python-engineio refuses a polling payload of more than 16 packets; the gateway splits a
    # burst over several polls, so a polling-only client survives and gets all of it, in order.
    events = [trade_event(sym, tradeId=f"p{i}") for i in range(200)]
    gateway.ingest_ok(events)
    got = rec.wait_count("trade", 200)
    assert [m["data"]["tradeId"] for m in got] == [e["data"]["tradeId"] for e in events]
    assert sio.connected
    ack = sio.call("ping", namespace=NS, timeout=5)
    assert ack["ok"] is True, ack
