"""Market-data semantics (docs/test-interface.md, "Market-data semantics"; contract §4).

Throttling, klines, last value on subscribe, order book rebuild from snapshot + deltas, order book
ingest validation, slow consumers and lossless streams, with python-socketio clients (and a raw
WebSocket client where a test must stop reading).
"""

import json
import random
import socket
import time
from decimal import Decimal

import pytest

from gateway_harness import (assert_envelope, book_checksum, check_alive, http, metric,
                             parse_json, unique_symbol)
from rawproto import Closed, ws_open_namespace

NS = "/ws"
QUIET = 0.4


@pytest.fixture(params=[pytest.param(None, id="default"),
                        pytest.param(["websocket"], id="websocket")])
def transports(request):
    """None = python-socketio's default: polling first, then upgrade to websocket."""
    return request.param


# ---- helpers -------------------------------------------------------------------------------------


def subscribe_ok(sio, payload):
    ack = sio.call("subscribe", payload, namespace=NS, timeout=5)
    assert isinstance(ack, dict) and ack.get("ok") is True, (payload, ack)
    return ack


def ticker(sym, seq, pad=0):
    d = {"symbol": sym, "lastPrice": f"{45000 + seq}.00", "volume24h": f"{seq}.5", "seq": seq}
    if pad:
        d["pad"] = "x" * pad
    return d


def ticker_ev(sym, seq, pad=0):
    return {"type": "ticker.update", "symbol": sym, "data": ticker(sym, seq, pad)}


def kline(sym, interval, open_time, seq, closed=False):
    return {"symbol": sym, "interval": interval, "openTime": open_time,
            "closeTime": open_time + 59_999, "open": "100.00", "high": f"{110 + seq}.00",
            "low": "90.00", "close": f"{100 + seq}.00", "volume": f"{seq}.0", "trades": seq,
            "closed": closed, "seq": seq}


def kline_ev(sym, interval, data):
    return {"type": "kline.update", "symbol": sym, "interval": interval, "data": data}


def trade(sym, seq, pad=0):
    d = {"tradeId": f"t{seq}", "symbol": sym, "price": "45000.00", "quantity": "1.5",
         "timestamp": 1_700_000_000_000 + seq, "seq": seq}
    if pad:
        d["pad"] = "y" * pad
    return d


def trade_ev(sym, seq, pad=0):
    return {"type": "trade", "symbol": sym, "data": trade(sym, seq, pad)}


def book_ev(sym, data):
    return {"type": "orderbook.update", "symbol": sym, "data": data}


def get_json(url):
    status, raw, _ = http("GET", url)
    return status, parse_json(raw)


def get_book(gw, sym):
    return get_json(f"{gw.internal_url}/internal/orderbook/{sym}")


def get_stats(gw):
    status, body = get_json(gw.internal_url + "/stats")
    assert status == 200, (status, body)
    return body


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_stat(gw, key, minimum, timeout=5.0):
    """Poll /stats until total[key] >= minimum; the failure message shows the per-shard values."""
    last = {}

    def ok():
        last["s"] = get_stats(gw)
        return last["s"]["total"].get(key, 0) >= minimum
    try:
        wait_until(ok, timeout, f"/stats total.{key} >= {minimum}")
    except AssertionError:
        s = last["s"]
        per_shard = [sh.get(key) for sh in s.get("shards", [])]
        raise AssertionError(f"/stats total.{key} = {s['total'].get(key)!r} (want >= {minimum}); "
                             f"per shard: {per_shard}; stats: {s}")
    return last["s"]


# ---- order book models ---------------------------------------------------------------------------


class Book:
    """A price-level book keyed by decimal price; keeps the level strings as given."""

    def __init__(self):
        self.bids, self.asks, self.last = {}, {}, None

    def apply(self, d):
        if d["type"] == "snapshot":
            self.bids = {Decimal(p): (p, q) for p, q in d["bids"]}
            self.asks = {Decimal(p): (p, q) for p, q in d["asks"]}
        else:
            for side, levels in ((self.bids, d["bids"]), (self.asks, d["asks"])):
                for p, q in levels:
                    if Decimal(q) == 0:
                        side.pop(Decimal(p), None)
                    else:
                        side[Decimal(p)] = (p, q)
        self.last = d["lastUpdateId"]

    def top(self, depth=None):
        bids = [list(self.bids[k]) for k in sorted(self.bids, reverse=True)[:depth]]
        asks = [list(self.asks[k]) for k in sorted(self.asks)[:depth]]
        return bids, asks

    def checksum(self):
        bids, asks = self.top(10)
        return book_checksum(bids, asks)


class Follower:
    """Rebuilds an order book from `orderbook.update` envelopes exactly as a client would:
    replace on every snapshot, apply delta levels (qty "0" removes), require
    firstUpdateId == previous lastUpdateId + 1. Records every continuity violation."""

    SNAP_KEYS = {"symbol", "type", "reason", "bids", "asks", "lastUpdateId", "checksum"}
    DELTA_KEYS = {"symbol", "type", "firstUpdateId", "lastUpdateId", "bids", "asks", "checksum"}

    def __init__(self, sym, depth):
        self.sym, self.depth = sym, depth
        self.book = Book()
        self.violations = []
        self.snapshots = []  # (message index, reason, lastUpdateId)
        self.deltas = 0
        self.n = 0
        self.consumed = 0

    def _bad(self, msg, why):
        self.violations.append(f"#{self.n}: {why}: {json.dumps(msg)[:300]}")

    def feed(self, msg):
        self.n += 1
        if not (isinstance(msg, dict) and set(msg) == {"channel", "data", "timestamp"}
                and msg["channel"] == f"orderbook:{self.sym}"):
            return self._bad(msg, "bad envelope")
        d = msg["data"]
        if d.get("symbol") != self.sym:
            return self._bad(msg, "wrong symbol")
        if d.get("type") == "snapshot":
            if set(d) != self.SNAP_KEYS:
                self._bad(msg, "snapshot keys")
            if d.get("reason") not in ("subscribe", "resync", "request"):
                self._bad(msg, "snapshot reason")
            if d.get("reason") == "subscribe" and self.n != 1:
                self._bad(msg, "reason subscribe not first")
            bids = [Decimal(p) for p, _ in d["bids"]]
            asks = [Decimal(p) for p, _ in d["asks"]]
            if bids != sorted(set(bids), reverse=True) or asks != sorted(set(asks)):
                self._bad(msg, "snapshot levels not best first")
            if len(bids) > self.depth or len(asks) > self.depth:
                self._bad(msg, "snapshot deeper than --orderbook-depth")
            if any(Decimal(q) == 0 for _, q in d["bids"] + d["asks"]):
                self._bad(msg, "snapshot with a zero quantity")
            self.book.apply(d)
            self.snapshots.append((self.n, d.get("reason"), d["lastUpdateId"]))
            if d.get("checksum") != self.book.checksum():
                self._bad(msg, f"checksum {d.get('checksum')} != {self.book.checksum()}")
        elif d.get("type") == "delta":
            if set(d) != self.DELTA_KEYS:
                self._bad(msg, "delta keys")
            if self.book.last is None:
                return self._bad(msg, "delta before any snapshot")
            if d["firstUpdateId"] != self.book.last + 1:
                self._bad(msg, f"continuity: firstUpdateId {d['firstUpdateId']} after "
                               f"lastUpdateId {self.book.last}")
            if d["lastUpdateId"] < d["firstUpdateId"]:
                self._bad(msg, "lastUpdateId < firstUpdateId")
            self.book.apply(d)
            self.deltas += 1
            if d.get("checksum") != self.book.checksum():
                self._bad(msg, f"checksum {d.get('checksum')} != {self.book.checksum()} "
                               "(the replica differs)")
            if len(self.book.bids) > self.depth or len(self.book.asks) > self.depth:
                self._bad(msg, "book grew past --orderbook-depth (a level leaving was not removed)")
        else:
            self._bad(msg, "unknown type")

    def feed_from(self, rec):
        """Feed the recorder's orderbook.update events not fed yet."""
        msgs = rec.named("orderbook.update")
        for m in msgs[self.consumed:]:
            self.feed(m)
        self.consumed = len(msgs)

    def view(self):
        bids, asks = self.book.top()
        return {"symbol": self.sym, "type": "snapshot", "reason": "query", "bids": bids,
                "asks": asks, "lastUpdateId": self.book.last,
                "checksum": book_checksum(bids, asks)}

    def wait_last(self, rec, last_id, timeout=15.0):
        def done():
            self.feed_from(rec)
            return self.book.last == last_id
        try:
            wait_until(done, timeout, f"order book lastUpdateId {last_id}")
        except AssertionError:
            raise AssertionError(f"client book stuck at lastUpdateId {self.book.last} (want "
                                 f"{last_id}) after {self.n} messages; violations "
                                 f"{self.violations[:5]}")


class BookGen:
    """Backend side: random snapshot and deltas around a mid price, plus the full reference book."""

    def __init__(self, seed, mid=20000, tick=Decimal("0.50"), band=80):
        self.rng = random.Random(seed)
        self.mid, self.tick, self.band = Decimal(mid), tick, band
        self.ref = Book()

    def price(self, bid):
        off = self.rng.randint(1, self.band) * self.tick
        return f"{(self.mid - off) if bid else (self.mid + off):.2f}"

    def qty(self):
        return f"{self.rng.randint(1, 99_999) / 1000:.3f}"

    def snapshot(self, levels=40, last_id=1000):
        bids, asks = set(), set()
        while len(bids) < levels:
            bids.add(self.price(True))
        while len(asks) < levels:
            asks.add(self.price(False))
        d = {"type": "snapshot",
             "bids": [[p, self.qty()] for p in sorted(bids, key=Decimal, reverse=True)],
             "asks": [[p, self.qty()] for p in sorted(asks, key=Decimal)],
             "lastUpdateId": last_id}
        self.ref.apply(d)
        return d

    def delta(self, gap=0, touch_best=False):
        first = self.ref.last + 1 + gap
        d = {"type": "delta", "bids": [], "asks": [], "firstUpdateId": first,
             "lastUpdateId": first + self.rng.randint(0, 2)}
        used = set()
        for _ in range(self.rng.randint(1, 5)):
            bid = self.rng.random() < 0.5
            side = self.ref.bids if bid else self.ref.asks
            r = self.rng.random()
            if r < 0.3 and side:
                p, q = side[self.rng.choice(list(side))][0], "0"
            elif r < 0.33:
                p, q = self.price(bid), "0"  # may remove a level the book does not have
            else:
                p, q = self.price(bid), self.qty()
            if (bid, Decimal(p)) in used:
                continue
            used.add((bid, Decimal(p)))
            d["bids" if bid else "asks"].append([p, q])
        if touch_best:  # a change the top N always shows
            best = max(self.ref.bids)
            d["bids"] = [lv for lv in d["bids"] if Decimal(lv[0]) != best]
            old = self.ref.bids[best][1]
            new = old
            while new == old:
                new = self.qty()
            d["bids"].append([self.ref.bids[best][0], new])
        self.ref.apply(d)
        return d

    def ref_view(self, sym, depth):
        bids, asks = self.ref.top(depth)
        return {"symbol": sym, "type": "snapshot", "reason": "query", "bids": bids, "asks": asks,
                "lastUpdateId": self.ref.last, "checksum": book_checksum(bids, asks)}


def wait_gateway_book(gw, sym, last_id, timeout=10.0):
    got = {}

    def done():
        got["v"] = get_book(gw, sym)
        return got["v"][0] == 200 and got["v"][1].get("lastUpdateId") == last_id
    try:
        wait_until(done, timeout, f"/internal/orderbook/{sym} at lastUpdateId {last_id}")
    except AssertionError:
        raise AssertionError(f"gateway book never reached lastUpdateId {last_id}: {got.get('v')}")
    return got["v"][1]


# ---- raw WebSocket client (can stop reading) -----------------------------------------------------


class RawClient:
    """A Socket.IO client on /ws over a raw WebSocket with a small receive buffer."""

    def __init__(self, gw, rcvbuf=4096):
        self.ws, self.sid = ws_open_namespace(gw.port, rcvbuf=rcvbuf)

    def emit(self, event, data):
        assert self.ws.send_text("42/ws," + json.dumps([event, data]))

    def next_event(self, timeout=5.0):
        """(event, data) of the next /ws EVENT packet; other packets are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            pkt = self.ws.recv_eio(max(0.01, deadline - time.monotonic()))
            if isinstance(pkt, str) and pkt.startswith("42/ws,"):
                ev = json.loads(pkt[len("42/ws,"):])
                return ev[0], (ev[1] if len(ev) > 1 else None)

    def subscribe(self, payload, timeout=5.0):
        """Subscribe without ack; returns the events received up to and including `subscribed`."""
        self.emit("subscribe", payload)
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next_event(max(0.01, deadline - time.monotonic()))
            seen.append(ev)
            assert ev[0] != "error", ev
            if ev[0] == "subscribed" and ev[1].get("channel") == payload["channel"]:
                return seen

    def close(self):
        self.ws.close()


# ---- 1. ticker throttle --------------------------------------------------------------------------


def _ingest_paced(gw, events, span_s):
    """POST each event separately, spread evenly over span_s; returns the monotonic start time."""
    t0 = time.monotonic()
    for i, ev in enumerate(events):
        target = t0 + span_s * i / max(1, len(events) - 1)
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        gw.ingest_ok(ev)
    return t0


def test_ticker_throttle_leading_and_trailing(gateway_factory, clients, transports):
    gw = gateway_factory()  # default --ticker-throttle-ms 1000; fresh, so ticker:all is ours
    sio, rec = clients(gw, transports, ordered=True)
    sym = unique_symbol("THR")
    subscribe_ok(sio, {"channel": "ticker", "symbol": sym})
    subscribe_ok(sio, {"channel": "ticker", "symbol": "all"})
    time.sleep(0.1)
    # an empty tickers.update on subscribe (no ticker known yet) is tolerated; nothing else
    assert all(m["data"] == [] for m in rec.named("tickers.update")), rec.named("tickers.update")
    pre_all = len(rec.named("tickers.update"))

    events = [ticker_ev(sym, i) for i in range(50)]
    t0 = _ingest_paced(gw, events, 0.2)
    t_last_post = time.monotonic()
    assert t_last_post - t0 < 0.9, f"ingest too slow for the test ({t_last_post - t0:.2f}s)"
    last = ticker(sym, 49)
    rec.wait_event("ticker.update", timeout=2.0, pred=lambda m: m["data"] == last)
    rec.wait_event("tickers.update", timeout=2.0, pred=lambda m: m["data"] == [last])
    time.sleep(1.3)  # a whole further window: nothing else may come

    for name, room, wrap in (("ticker.update", f"ticker:{sym}", lambda d: d),
                             ("tickers.update", "ticker:all", lambda d: [d])):
        got = rec.timed(name)[pre_all if name == "tickers.update" else 0:]
        assert 1 <= len(got) <= 2, (name, [m["data"] for _, m in got])
        for _, m in got:
            assert m["channel"] == room, m
        assert_envelope(got[-1][1], room, wrap(last))
        if len(got) == 2:
            assert_envelope(got[0][1], room, wrap(ticker(sym, 0)))  # leading edge
            assert got[0][0] - t0 < 0.5, f"{name}: leading edge came {got[0][0] - t0:.2f}s late"
        assert got[-1][0] - t0 < 1.6, f"{name}: trailing edge at {got[-1][0] - t0:.2f}s"
        if len(got) == 2:
            assert got[-1][0] - t0 > 0.7, f"{name}: trailing edge early ({got[-1][0] - t0:.2f}s)"


def test_ticker_throttle_disabled(gateway_factory, clients, transports):
    gw = gateway_factory("--ticker-throttle-ms", "0")
    sio, rec = clients(gw, transports, ordered=True)
    sym = unique_symbol("NOTHR")
    subscribe_ok(sio, {"channel": "ticker", "symbol": sym})
    subscribe_ok(sio, {"channel": "ticker", "symbol": "all"})
    time.sleep(0.1)
    pre_all = len(rec.named("tickers.update"))
    _ingest_paced(gw, [ticker_ev(sym, i) for i in range(50)], 0.2)
    got = rec.wait_count("ticker.update", 50, timeout=5)
    rec.wait_count("tickers.update", pre_all + 50, timeout=5)
    time.sleep(QUIET)
    got = rec.named("ticker.update")
    assert [m["data"]["seq"] for m in got] == list(range(50))
    for i, m in enumerate(got):
        assert_envelope(m, f"ticker:{sym}", ticker(sym, i))
    alls = rec.named("tickers.update")[pre_all:]
    assert [m["data"] for m in alls] == [[ticker(sym, i)] for i in range(50)]


# ---- 2. klines -----------------------------------------------------------------------------------


def test_kline_closed_candle_and_order(gateway, clients, transports):
    sio, rec = clients(gateway, transports, ordered=True)
    sym, iv = unique_symbol("KL"), "1m"
    subscribe_ok(sio, {"channel": "klines", "symbol": sym, "interval": iv})
    c0, c1 = 1_700_000_040_000, 1_700_000_100_000
    seq = iter(range(100))
    sent = [kline(sym, iv, c0, next(seq)) for _ in range(5)]
    sent.append(kline(sym, iv, c0, next(seq), closed=True))
    sent += [kline(sym, iv, c1, next(seq)) for _ in range(3)]
    for d in sent:
        gateway.ingest_ok(kline_ev(sym, iv, d))
        time.sleep(0.01)
    rec.wait_event("kline.update", timeout=2.5, pred=lambda m: m["data"] == sent[-1])
    time.sleep(QUIET)
    got = rec.named("kline.update")
    for m in got:
        assert m["channel"] == f"klines:{sym}:{iv}" and m["data"] in sent, m
    seqs = [m["data"]["seq"] for m in got]
    assert seqs == sorted(set(seqs)), f"older value after a newer one: {seqs}"
    closed = [m["data"] for m in got if m["data"]["closed"]]
    assert closed == [sent[5]], f"closed candle not delivered exactly once: {seqs}"
    i_closed = seqs.index(5)
    assert all(s >= 6 for s in seqs[i_closed + 1:]) and all(s < 5 for s in seqs[:i_closed])
    assert seqs[0] == 0, f"leading edge missing: {seqs}"
    assert seqs[-1] == sent[-1]["seq"]


def test_kline_new_candle_flushes_held_value(gateway, clients):
    sio, rec = clients(gateway, ["websocket"], ordered=True)
    sym, iv = unique_symbol("KLF"), "5m"
    subscribe_ok(sio, {"channel": "klines", "symbol": sym, "interval": iv})
    c0, c1 = 1_700_000_100_000, 1_700_000_400_000
    a0, a1, b0 = kline(sym, iv, c0, 0), kline(sym, iv, c0, 1), kline(sym, iv, c1, 2)
    for d in (a0, a1, b0):  # a0 leading, a1 held, then the candle changes
        gateway.ingest_ok(kline_ev(sym, iv, d))
        time.sleep(0.01)
    rec.wait_event("kline.update", timeout=2.5, pred=lambda m: m["data"] == b0)
    time.sleep(QUIET)
    got = [m["data"] for m in rec.named("kline.update")]
    assert got == [a0, a1, b0], [d["seq"] for d in got]


# ---- 3. last value on subscribe ------------------------------------------------------------------


def _first_after_ack(sio, rec, payload, name, timeout=0.5):
    """Subscribe with an ack; return the first `name` event recorded after the ack."""
    mark = len(rec.snapshot())
    t = time.monotonic()
    subscribe_ok(sio, payload)
    deadline = t + 5
    while time.monotonic() < deadline:
        evs = rec.snapshot()[mark:]
        data = [d for e, d in evs if e == name]
        if data:
            return data[0], time.monotonic() - t
        time.sleep(0.01)
    raise AssertionError(f"no {name} after subscribing {payload}")


@pytest.mark.parametrize("kind", ["ticker", "kline"])
def test_last_value_on_subscribe(gateway, clients, transports, kind):
    sym = unique_symbol("LV")
    if kind == "ticker":
        payload, name, room = {"channel": "ticker", "symbol": sym}, "ticker.update", f"ticker:{sym}"
        vals = [ticker(sym, i) for i in range(5)]
        evs = [ticker_ev(sym, i) for i in range(5)]
    else:
        payload = {"channel": "klines", "symbol": sym, "interval": "15m"}
        name, room = "kline.update", f"klines:{sym}:15m"
        vals = [kline(sym, "15m", 1_700_000_100_000, i) for i in range(5)]
        evs = [kline_ev(sym, "15m", v) for v in vals]

    a, rec_a = clients(gateway, transports, ordered=True)
    b, rec_b = clients(gateway, transports, ordered=True)  # connected now, subscribes later
    subscribe_ok(a, payload)
    for ev in evs:  # vals[0] goes out (leading edge), vals[4] is held for the window's end
        gateway.ingest_ok(ev)
    rec_a.wait_event(name, pred=lambda m: m["data"] == vals[0])

    # during the window: the latest *sent* value
    msg, dt = _first_after_ack(b, rec_b, payload, name)
    assert_envelope(msg, room, vals[0])
    assert dt < 1.0, f"last value came {dt:.2f}s after subscribing"

    # the trailing edge reaches both subscribers
    for r in (rec_a, rec_b):
        r.wait_event(name, timeout=2.0, pred=lambda m: m["data"] == vals[4])

    # after it: the trailing value; without ack, after the `subscribed` event
    c, rec_c = clients(gateway, transports, ordered=True)
    c.emit("subscribe", payload, namespace=NS)
    rec_c.wait_event(name, timeout=2.0)
    time.sleep(QUIET)
    seq = [(e, d) for e, d in rec_c.snapshot() if e != "connected"]
    assert [e for e, _ in seq] == ["subscribed", name], seq
    assert_envelope(seq[1][1], room, vals[4])
    for r, want in ((rec_a, [vals[0], vals[4]]), (rec_b, [vals[0], vals[4]])):
        assert [m["data"] for m in r.named(name)] == want


def test_last_value_on_subscribe_ticker_all(gateway_factory, clients, transports):
    gw = gateway_factory()
    syms = [unique_symbol(p) for p in ("LA", "LB", "LC")]
    a, rec_a = clients(gw, transports, ordered=True)
    subscribe_ok(a, {"channel": "ticker", "symbol": "all"})
    latest = {syms[0]: ticker(syms[0], 1), syms[1]: ticker(syms[1], 0), syms[2]: ticker(syms[2], 0)}
    gw.ingest_ok([ticker_ev(syms[0], 0), ticker_ev(syms[1], 0), ticker_ev(syms[2], 0)])
    gw.ingest_ok(ticker_ev(syms[0], 1))

    def a_has_all():  # everything ingested has gone out on ticker:all
        seen = {}
        for m in rec_a.named("tickers.update"):
            for d in m["data"]:
                seen[d["symbol"]] = d
        return seen == latest
    wait_until(a_has_all, 2.5, "ticker:all to deliver every latest value")

    b, rec_b = clients(gw, transports, ordered=True)
    msg, dt = _first_after_ack(b, rec_b, {"channel": "ticker", "symbol": "all"}, "tickers.update")
    assert dt < 1.0
    assert set(msg) == {"channel", "data", "timestamp"} and msg["channel"] == "ticker:all", msg
    assert isinstance(msg["data"], list) and len(msg["data"]) == 3, msg
    assert {d["symbol"]: d for d in msg["data"]} == latest
    time.sleep(QUIET)
    assert len(rec_b.named("tickers.update")) == 1, rec_b.named("tickers.update")
    assert rec_b.named("ticker.update") == []


def test_ticker_all_starts_complete_while_the_digest_holds_values(gateway_factory, clients,
                                                                   transports):
    gw = gateway_factory()  # default --ticker-throttle-ms 1000
    syms = [unique_symbol(p) for p in ("TA", "TB", "TC")]
    # One batch: the digest's leading edge takes the first, its throttle holds the others.
    gw.ingest_ok([ticker_ev(s, 0) for s in syms])
    time.sleep(0.05)
    b, rec_b = clients(gw, transports, ordered=True)
    msg, _ = _first_after_ack(b, rec_b, {"channel": "ticker", "symbol": "all"}, "tickers.update")
    got = {d["symbol"]: d for d in msg["data"] if d["symbol"] in syms}
    assert got == {s: ticker(s, 0) for s in syms}, msg
    # A later value for one symbol, still inside the throttle window, is the one a new
    # subscriber starts from.
    gw.ingest_ok(ticker_ev(syms[1], 1))
    time.sleep(0.05)
    c, rec_c = clients(gw, transports, ordered=True)
    msg, _ = _first_after_ack(c, rec_c, {"channel": "ticker", "symbol": "all"}, "tickers.update")
    got = {d["symbol"]: d for d in msg["data"] if d["symbol"] in syms}
    assert got == {syms[0]: ticker(syms[0], 0), syms[1]: ticker(syms[1], 1),
                   syms[2]: ticker(syms[2], 0)}, msg


# ---- 4. order book rebuild -----------------------------------------------------------------------

BOOK_MODES = [
    pytest.param(None, [], id="default"),
    pytest.param(["websocket"], [], id="websocket"),
    pytest.param(["websocket"], ["--orderbook-conflation-ms", "50"], id="conflation50"),
]


@pytest.mark.parametrize("tp,extra", BOOK_MODES)
def test_orderbook_rebuild(gateway_factory, clients, tp, extra):
    depth, n_batches, per_batch, gap_at = 20, 30, 100, 2050
    gw = gateway_factory("--orderbook-depth", depth, *extra)
    sym = unique_symbol("OB")
    seed = int(sym[2:8], 16)
    print(f"BookGen seed {seed}")
    gen = BookGen(seed=seed)
    gw.ingest_ok(book_ev(sym, gen.snapshot()))

    a, rec_a = clients(gw, tp, ordered=True)
    subscribe_ok(a, {"channel": "orderbook", "symbol": sym})
    fa = Follower(sym, depth)
    fb = Follower(sym, depth)
    gap_delta = None
    n = 0
    rec_b = None
    for b_i in range(n_batches):
        batch = []
        for _ in range(per_batch):
            d = gen.delta(gap=37 if n == gap_at else 0, touch_best=(n == n_batches * per_batch - 1))
            if n == gap_at:
                gap_delta = d
            batch.append(book_ev(sym, d))
            n += 1
        gw.ingest_ok(batch)
        if b_i == 14:  # a second client subscribes midway
            b, rec_b = clients(gw, tp, ordered=True)
            subscribe_ok(b, {"channel": "orderbook", "symbol": sym})
        time.sleep(0.005)

    view = wait_gateway_book(gw, sym, gen.ref.last)
    assert view == gen.ref_view(sym, depth), "gateway view differs from the backend's top 20"
    for f, r, who in ((fa, rec_a, "first client"), (fb, rec_b, "midway client")):
        f.wait_last(r, view["lastUpdateId"])
        time.sleep(0.1)
        f.feed_from(r)
        assert f.violations == [], f"{who}: {f.violations[:5]}"
        assert f.snapshots[0][1] == "subscribe", (who, f.snapshots[:3])
        resyncs = [s for s in f.snapshots if s[1] == "resync"]
        assert any(s[2] >= gap_delta["lastUpdateId"] for s in resyncs), \
            f"{who}: no resync snapshot after the gap {gap_delta['firstUpdateId']}: {f.snapshots}"
        assert f.view() == view, f"{who}: rebuilt book differs from /internal/orderbook"
        print(f"{who}: {f.deltas} deltas for {n} ingested, snapshots {f.snapshots}")
        assert 0 < f.deltas <= n
        if extra:
            assert f.deltas < n / 2, f"{who}: {f.deltas} deltas for {n} ingested (no conflation)"


@pytest.mark.parametrize("tp", [None, ["websocket"]], ids=["default", "websocket"])
def test_every_book_update_id_reaches_the_subscriber(gateway_factory, clients, tp):
    """A fifth of the deltas leave the top 5 as it was (a change below it, a removal of a level
    the book does not have, no levels at all): each still reaches the client at once, as a
    delta with empty sides, so its lastUpdateId equals the backend's after every publish."""
    gw = gateway_factory("--orderbook-depth", "5")
    sym = unique_symbol("OI")
    bids = [[f"{100 - i}.00", "1"] for i in range(10)]
    asks = [[f"{101 + i}.00", "1"] for i in range(10)]
    gw.ingest_ok(book_ev(sym, {"type": "snapshot", "lastUpdateId": 1000, "bids": bids, "asks": asks}))
    a, rec = clients(gw, tp, ordered=True)
    subscribe_ok(a, {"channel": "orderbook", "symbol": sym})
    rng = random.Random(7)
    last = 1000
    invisible = 0
    for i in range(60):
        first = last + 1
        last = first + rng.randint(0, 2)
        d = {"type": "delta", "firstUpdateId": first, "lastUpdateId": last, "bids": [], "asks": []}
        kind = i % 5
        if kind == 0:
            invisible += 1
            below_the_window = [("bids", ["95.00", str(rng.randint(2, 9))]),
                                ("asks", ["108.00", str(rng.randint(2, 9))]),
                                ("bids", ["50.00", "0"]),  # a level the book does not have
                                ("asks", ["150.00", "0"])]
            if rng.random() < 0.7:  # else no levels at all
                side, level = rng.choice(below_the_window)
                d[side].append(level)
        else:
            d["bids"].append(["100.00", str(i + 2)])
        gw.ingest_ok(book_ev(sym, d))
        got = rec.wait_event("orderbook.update", timeout=3,
                             pred=lambda m, want=last: m["data"]["lastUpdateId"] == want)
        assert got["data"]["firstUpdateId"] == first, got
    updates = [m["data"] for m in rec.named("orderbook.update")]
    assert updates[0]["type"] == "snapshot" and updates[0]["lastUpdateId"] == 1000, updates[0]
    chain = updates[1:]
    assert all(u["type"] == "delta" for u in chain), chain
    for prev, u in zip([updates[0]] + chain, chain):
        assert u["firstUpdateId"] == prev["lastUpdateId"] + 1, (prev, u)
    empty = [u for u in chain if not u["bids"] and not u["asks"]]
    assert len(empty) == invisible, f"{len(empty)} empty deltas for {invisible} invisible changes"
    assert chain[-1]["lastUpdateId"] == last


@pytest.mark.parametrize("tp", [None, ["websocket"]], ids=["default", "websocket"])
def test_book_ticker_follows_every_change_of_the_best_bid_or_ask(gateway_factory, clients, tp):
    gw = gateway_factory("--orderbook-depth", "20")
    sym = unique_symbol("BT")
    gen = BookGen(seed=int(sym[2:8], 16))
    gw.ingest_ok(book_ev(sym, gen.snapshot()))
    a, rec = clients(gw, tp, ordered=True)
    subscribe_ok(a, {"channel": "bookTicker", "symbol": sym})
    b, rec_all = clients(gw, tp, ordered=True)
    subscribe_ok(b, {"channel": "bookTicker", "symbol": "all"})

    def top():
        (bid, ask) = (gen.ref.bids[max(gen.ref.bids)] if gen.ref.bids else None,
                      gen.ref.asks[min(gen.ref.asks)] if gen.ref.asks else None)
        return (tuple(bid) if bid else None, tuple(ask) if ask else None)

    # The backend's best levels after each update, and the ids where they changed.
    first = rec.wait_event("bookTicker.update", timeout=3)  # the last value on subscribe
    tops = {gen.ref.last: top()}
    changed = []
    for batch in range(6):
        events = []
        for i in range(50):
            before = top()
            d = gen.delta(touch_best=(i % 7 == 0))
            events.append(book_ev(sym, d))
            tops[gen.ref.last] = top()
            if top() != before:
                changed.append(gen.ref.last)
        gw.ingest_ok(events)
    assert changed, "the generator moved the best levels"
    rec.wait_event("bookTicker.update", timeout=5,
                   pred=lambda m: m["data"]["lastUpdateId"] == changed[-1])
    time.sleep(0.2)
    msgs = rec.named("bookTicker.update")
    assert msgs[0] == first and first["channel"] == f"bookTicker:{sym}"
    for m in msgs:
        d = m["data"]
        assert set(d) == {"symbol", "bidPrice", "bidQty", "askPrice", "askQty", "lastUpdateId"}
        bid, ask = tops[d["lastUpdateId"]]
        assert (d["bidPrice"], d["bidQty"]) == (bid or (None, None)), (d, bid)
        assert (d["askPrice"], d["askQty"]) == (ask or (None, None)), (d, ask)
    assert [m["data"]["lastUpdateId"] for m in msgs[1:]] == changed, "every change, only changes"
    mine = [m for m in rec_all.named("bookTicker.update") if m["data"]["symbol"] == sym]
    assert [m["data"] for m in mine] == [m["data"] for m in msgs[1:]]
    assert all(m["channel"] == "bookTicker:all" for m in mine)


def test_a_client_sees_missed_trades_from_the_numbers_alone(gateway_factory, clients):
    gw = gateway_factory("--recovery-window-ms", "0")
    sym = unique_symbol("GAP")
    a, rec = clients(gw, ["websocket"], ordered=True)
    subscribe_ok(a, {"channel": "trades", "symbol": sym})
    gw.ingest_ok([trade_ev(sym, i) for i in range(3)])
    rec.wait_count("trade", 3)
    seen = [m["seq"] for m in rec.named("trade")]
    assert seen == [seen[0], seen[0] + 1, seen[0] + 2], seen
    a.disconnect()
    gw.ingest_ok([trade_ev(sym, i) for i in range(3, 6)])  # while it is away
    b, rec_b = clients(gw, ["websocket"], ordered=True)
    subscribe_ok(b, {"channel": "trades", "symbol": sym})
    gw.ingest_ok(trade_ev(sym, 6))
    first = rec_b.wait_event("trade", timeout=5)
    # No recovery, yet the client knows three were missed, and which.
    assert first["seq"] == seen[-1] + 4, (seen, first)
    assert first["data"]["seq"] == 6


# ---- 5. order book ingest validation -------------------------------------------------------------


def _delta(first, last, bids=(), asks=()):
    return {"type": "delta", "bids": [list(b) for b in bids], "asks": [list(a) for a in asks],
            "firstUpdateId": first, "lastUpdateId": last}


GOOD = _delta(103, 103, bids=[("99.00", "7.000")])

BAD_BOOK = [
    ("non-numeric quantity", [GOOD, "T", _delta(104, 104, bids=[("98.00", "abc")])], 2),
    ("quantity as number", [GOOD, "T", _delta(104, 104, asks=[("101.50", 1.5)])], 2),
    ("price as number", [GOOD, "T", _delta(104, 104, bids=[(98.0, "1.5")])], 2),
    ("negative price", [GOOD, "T", _delta(104, 104, bids=[("-1.00", "1.5")])], 2),
    ("zero price", [GOOD, "T", _delta(104, 104, asks=[("0", "1.5")])], 2),
    ("backwards in batch, first == previous last",
     [_delta(103, 104, bids=[("99.00", "7")]), "T", _delta(104, 105)], 2),
    ("backwards in batch, first < previous last",
     [_delta(103, 106, bids=[("99.00", "7")]), "T", _delta(104, 107)], 2),
    ("backwards across batches, first == book last", ["T", _delta(102, 103, bids=[("99.00", "7")])], 1),
    ("backwards across batches, first < book last", ["T", _delta(90, 95, bids=[("99.00", "7")])], 1),
    ("lastUpdateId < firstUpdateId", [GOOD, "T", _delta(105, 104, bids=[("98.00", "1")])], 2),
    ("snapshot with a zero quantity",
     [GOOD, "T", {"type": "snapshot", "bids": [["99.00", "0"]], "asks": [["101.00", "1"]],
                  "lastUpdateId": 200}], 2),
    ("unknown data type", [GOOD, "T", dict(_delta(104, 104), type="partial")], 2),
]


@pytest.mark.parametrize("batch,index", [pytest.param(b, i, id=n) for n, b, i in BAD_BOOK])
def test_orderbook_ingest_validation(gateway, clients, batch, index):
    sym = unique_symbol("OBV")
    snap = {"type": "snapshot", "bids": [["100.00", "1.000"], ["99.00", "2.000"]],
            "asks": [["101.00", "1.000"], ["102.00", "2.000"]], "lastUpdateId": 100}
    gateway.ingest_ok([book_ev(sym, snap), book_ev(sym, _delta(101, 102, asks=[("101.00", "3")]))])
    before = wait_gateway_book(gateway, sym, 102)
    sio, rec = clients(gateway, ["websocket"], ordered=True)
    subscribe_ok(sio, {"channel": "orderbook", "symbol": sym})
    subscribe_ok(sio, {"channel": "trades", "symbol": sym})
    rec.wait_event("orderbook.update")

    events = [trade_ev(sym, 1) if e == "T" else book_ev(sym, e) for e in batch]
    status, body = gateway.ingest(events)
    assert status == 400, (status, body)
    assert isinstance(body, dict) and body.get("error") == "BAD_EVENT" and body.get("index") == index, body
    assert isinstance(body.get("message"), str) and body["message"], body
    time.sleep(QUIET)
    assert get_book(gateway, sym) == (200, before), "part of a rejected batch was applied"
    assert len(rec.named("orderbook.update")) == 1 and rec.named("trade") == [], rec.snapshot()
    # the book still continues from 102
    gateway.ingest_ok(book_ev(sym, GOOD))
    m = rec.wait_event("orderbook.update", pred=lambda m: m["data"]["type"] == "delta")
    assert m["data"]["firstUpdateId"] == 103 and m["data"]["bids"] == [["99.00", "7.000"]], m


# ---- 6. slow consumers ---------------------------------------------------------------------------

SLOW_FLAGS = ("--outbound-soft-limit", "65536", "--outbound-hard-limit", "1048576",
              "--ticker-throttle-ms", "0", "--shards", "1")


def test_slow_consumer_conflates_and_resyncs(gateway_factory, clients):
    depth = 20
    gw = gateway_factory(*SLOW_FLAGS, "--orderbook-depth", depth)
    sym = unique_symbol("SLOW")
    gen = BookGen(seed=7)
    gw.ingest_ok(book_ev(sym, gen.snapshot()))

    slow = RawClient(gw)
    try:
        slow.subscribe({"channel": "ticker", "symbol": sym})
        slow_events = slow.subscribe({"channel": "orderbook", "symbol": sym})
        slow_events.append(slow.next_event())  # the subscribe snapshot
        assert slow_events[-1][0] == "orderbook.update", slow_events

        fast, rec = clients(gw, ["websocket"], ordered=True)
        subscribe_ok(fast, {"channel": "ticker", "symbol": sym})
        subscribe_ok(fast, {"channel": "orderbook", "symbol": sym})
        rec.wait_event("orderbook.update")

        # the slow client stops reading; ~1 KiB ticker frames, paced on the fast client
        n_tickers, per_round, n_deltas = 5000, 20, 0
        for r in range(n_tickers // per_round):
            batch = [ticker_ev(sym, r * per_round + i, pad=1100) for i in range(per_round)]
            for i in range(per_round // 2):
                batch.insert(2 * i + 1, book_ev(sym, gen.delta(
                    touch_best=(r == n_tickers // per_round - 1 and i == per_round // 2 - 1))))
                n_deltas += 1
            gw.ingest_ok(batch)
            rec.wait_count("ticker.update", (r + 1) * per_round, timeout=10)
        final = gen.ref.last
        view = wait_gateway_book(gw, sym, final)
        assert view == gen.ref_view(sym, depth)

        # the fast client got everything, in order
        ff = Follower(sym, depth)
        ff.wait_last(rec, final)
        assert ff.violations == [], ff.violations[:5]
        assert ff.view() == view
        assert [s[1] for s in ff.snapshots] == ["subscribe"], ff.snapshots
        ticks = rec.named("ticker.update")
        assert [m["data"]["seq"] for m in ticks] == list(range(n_tickers))
        assert all(m["data"] == ticker(sym, m["data"]["seq"], pad=1100) for m in ticks)

        # the slow client resumes: still connected, conflated tickers, a resync, then continuity
        fs = Follower(sym, depth)
        fs.feed(slow_events[-1][1])
        seqs = []
        deadline = time.monotonic() + 20
        while not (seqs and seqs[-1] == n_tickers - 1 and fs.book.last == final
                   and any(s[1] == "resync" for s in fs.snapshots)):
            left = deadline - time.monotonic()
            try:
                ev, data = slow.next_event(max(0.01, left))
            except (socket.timeout, Closed) as e:
                raise AssertionError(
                    f"slow client: {type(e).__name__} {e}; tickers seen {len(seqs)} "
                    f"(last {seqs[-1:]}), book at {fs.book.last}/{final}, "
                    f"snapshots {fs.snapshots[-3:]}")
            if ev == "ticker.update":
                assert data["channel"] == f"ticker:{sym}", data
                assert data["data"] == ticker(sym, data["data"]["seq"], pad=1100)
                seqs.append(data["data"]["seq"])
            elif ev == "orderbook.update":
                fs.feed(data)
            else:
                raise AssertionError(f"slow client got {ev}: {str(data)[:300]}")
        print(f"slow client: {len(seqs)}/{n_tickers} tickers, {fs.deltas} deltas, "
              f"snapshots {fs.snapshots}")
        assert seqs == sorted(set(seqs)), "ticker values out of order"
        assert len(seqs) < n_tickers, "no ticker value was conflated for the slow client"
        assert fs.violations == [], fs.violations[:5]
        assert fs.view() == view
        # after the last resync, every delta continued it (checked by the follower)
        last_resync = [s for s in fs.snapshots if s[1] == "resync"][-1]
        assert last_resync[0] <= fs.n
        # still connected: it answers a ping
        slow.emit("ping", None)
        while True:
            ev, data = slow.next_event(5)
            if ev == "pong":
                break
        stats = wait_stat(gw, "slow_consumer_drops", 1)
        assert stats["total"]["slow_consumer_disconnects"] == 0, stats
    finally:
        slow.close()


def test_slow_consumer_disconnected_past_hard_limit(gateway_factory, clients):
    gw = gateway_factory(*SLOW_FLAGS)
    sym = unique_symbol("HARD")
    slow = RawClient(gw)
    try:
        slow.subscribe({"channel": "trades", "symbol": sym})
        fast, rec = clients(gw, ["websocket"], ordered=True)
        subscribe_ok(fast, {"channel": "trades", "symbol": sym})

        n, per_round, pad = 5000, 100, 2000  # ~10 MB, ten times the hard limit
        for r in range(n // per_round):
            gw.ingest_ok([trade_ev(sym, r * per_round + i, pad=pad) for i in range(per_round)])
            rec.wait_count("trade", (r + 1) * per_round, timeout=10)
        wait_stat(gw, "slow_consumer_disconnects", 1)

        got = rec.named("trade")
        assert [m["data"]["seq"] for m in got] == list(range(n))
        for m in got:
            assert_envelope(m, f"trades:{sym}", trade(sym, m["data"]["seq"], pad=pad))
        assert fast.connected

        closed, code, packets = slow.ws.wait_closed(timeout=10)
        assert closed, "slow client still connected past the hard limit"
        events = []
        for p in packets:
            if p.startswith("42/ws,"):
                events.append(json.loads(p[len("42/ws,"):]))
        trades = [e[1]["data"]["seq"] for e in events if e[0] == "trade"]
        assert trades == list(range(len(trades))), "slow client's trades are not a clean prefix"
        assert len(trades) < n
        print(f"slow client: {len(trades)}/{n} trades, close code {code}, last events "
              f"{[e[0] for e in events[-3:]]}")
        errors = [e for e in events if e[0] == "error"]
        assert len(errors) <= 1, errors
        if errors:
            err = errors[0][1]
            assert set(err) == {"code", "message"}, err
            assert err["code"] == "SLOW_CONSUMER" and isinstance(err["message"], str), err
            assert events[-1][0] == "error", "events after the SLOW_CONSUMER error"
    finally:
        slow.close()
    check_alive(gw)


# ---- 7. lossless streams -------------------------------------------------------------------------


def test_lossless_trades_and_broadcasts(gateway, clients, transports):
    sio, rec = clients(gateway, transports, ordered=True)
    sym = unique_symbol("LL")
    room = f"trades:{sym}"
    subscribe_ok(sio, {"channel": "trades", "symbol": sym})
    events, want = [], []
    for i in range(2000):
        events.append(trade_ev(sym, i))
        want.append(("trade", trade(sym, i)))
        if i % 4 == 3:
            k = i // 4
            events.append({"room": room, "event": "x", "data": {"seq": k}})
            want.append(("x", {"seq": k}))
    for i in range(0, len(events), 250):
        gateway.ingest_ok(events[i:i + 250])

    def have_all():
        return len([1 for e, _ in rec.snapshot() if e in ("trade", "x")]) >= len(want)
    wait_until(have_all, 20, f"{len(want)} events")
    time.sleep(0.2)
    got = [(e, d) for e, d in rec.snapshot() if e in ("trade", "x")]
    assert len(got) == len(want), len(got)
    for (e, m), (we, wd) in zip(got, want):
        assert e == we, (e, m, we, wd)
        assert_envelope(m, room, wd)


def test_concurrent_feeders_keep_each_symbols_order_numbers_and_books(gateway_factory, clients):
    """Four feeders post at once to a gateway applying batches on four threads: each to its
    own symbols (trades and a book chained delta by delta) and all to one shared trades room.
    Every batch is accepted; each symbol's events arrive in the order posted; the shared room's
    `seq` counts 1, 2, 3... with nothing skipped or repeated; recovery offsets only grow; and
    every book chain is unbroken to its last update id."""
    import concurrent.futures
    gw = gateway_factory("--ingest-threads", "4")
    feeders, batches = 4, 40
    shared = unique_symbol("SH")
    own = [unique_symbol(f"OW{f}") for f in range(feeders)]
    books = [unique_symbol(f"BK{f}") for f in range(feeders)]
    a, rec = clients(gw, ["websocket"], ordered=True)
    for sym in own + [shared]:
        subscribe_ok(a, {"channel": "trades", "symbol": sym})
    for sym in books:
        gw.ingest_ok(book_ev(sym, {"type": "snapshot", "lastUpdateId": 1,
                                   "bids": [["100.00", "1"]], "asks": [["101.00", "1"]]}))
        subscribe_ok(a, {"channel": "orderbook", "symbol": sym})

    def feed(f):
        for b in range(batches):
            events = []
            for i in range(5):
                events.append(trade_ev(own[f], b * 5 + i))
            events.append({"type": "trade", "symbol": shared,
                           "data": {"tradeId": f"{f}-{b}", "feeder": f, "n": b}})
            uid = 2 + b
            events.append(book_ev(books[f], _delta(uid, uid, bids=[("100.00", str(b + 2))])))
            status, body = gw.ingest(events)
            assert status == 202, (status, body)

    with concurrent.futures.ThreadPoolExecutor(feeders) as pool:
        for r in [pool.submit(feed, f) for f in range(feeders)]:
            r.result()
    total_trades = feeders * batches * 6
    rec.wait_count("trade", total_trades, timeout=20)
    trades = [(m, off) for (e, m), off in zip(rec.snapshot(), rec.offsets) if e == "trade"]
    for f, sym in enumerate(own):
        got = [m["data"]["seq"] for m, _ in trades if m["channel"] == f"trades:{sym}"]
        assert got == list(range(batches * 5)), (sym, got[:20])
    on_shared = [m for m, _ in trades if m["channel"] == f"trades:{shared}"]
    seqs = [m["seq"] for m in on_shared]
    assert seqs == list(range(seqs[0], seqs[0] + feeders * batches)), seqs
    for f in range(feeders):
        mine = [m["data"]["n"] for m in on_shared if m["data"]["feeder"] == f]
        assert mine == list(range(batches)), (f, mine)
    offsets = [tuple(int(x) for x in off.split("-")) for _, off in trades]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), "offsets out of order"
    for sym in books:
        wait_until(lambda s=sym: any(m["data"]["lastUpdateId"] == 1 + batches
                                     for m in rec.named("orderbook.update")
                                     if m["channel"] == f"orderbook:{s}"), 5, f"{sym} to the end")
        updates = [m["data"] for m in rec.named("orderbook.update") if m["channel"] == f"orderbook:{sym}"]
        assert updates[0]["type"] == "snapshot", updates[0]
        for prev, u in zip(updates, updates[1:]):
            assert u["firstUpdateId"] == prev["lastUpdateId"] + 1, (sym, prev, u)
        assert updates[-1]["bids"][0] == ["100.00", str(batches + 1)], updates[-1]


def test_ticker_all_is_one_list_whatever_symbols_a_batch_spans(gateway_factory, clients):
    """Symbols are applied in parts with locks of their own; `ticker:all` is still one digest
    per throttle window: the first ticker at once (leading edge), every other symbol's in one
    list when the window ends."""
    gw = gateway_factory("--ticker-throttle-ms", "300")
    syms = [unique_symbol(f"DG{i}") for i in range(24)]
    a, rec = clients(gw, ["websocket"], ordered=True)
    subscribe_ok(a, {"channel": "ticker", "symbol": "all"})
    gw.ingest_ok([ticker_ev(s, 0) for s in syms])
    lists = rec.wait_count("tickers.update", 2, timeout=3)
    time.sleep(0.6)
    lists = [[d["symbol"] for d in m["data"]] for m in rec.named("tickers.update")]
    assert lists == [syms[:1], syms[1:]], lists


# ---- per-subscription depth and speed ---------------------------------------------------------


def test_ticker_and_kline_speed_is_the_subscriptions_own_throttle(gateway_factory, clients):
    gw = gateway_factory("--ticker-throttle-ms", "1000")
    sym = unique_symbol("SPD")
    gw.ingest_ok(ticker_ev(sym, 0))
    gw.ingest_ok(kline_ev(sym, "1m", kline(sym, "1m", 0, 0)))
    every, rec_every = clients(gw, ["websocket"], ordered=True)
    ack = subscribe_ok(every, {"channel": "ticker", "symbol": sym, "speed": 0})
    assert ack["rooms"] == [f"ticker:{sym}:0ms"] and ack["speed"] == 0
    ack = subscribe_ok(every, {"channel": "klines", "symbol": sym, "interval": "1m", "speed": 0})
    assert ack["rooms"] == [f"klines:{sym}:1m:0ms"]
    default, rec_default = clients(gw, ["websocket"], ordered=True)
    # Asking for the default speed is the default room.
    ack = subscribe_ok(default, {"channel": "ticker", "symbol": sym, "speed": 1000})
    assert ack["rooms"] == [f"ticker:{sym}"]
    # The first message of a view is the latest value, as for the default room.
    first = rec_every.wait_event("ticker.update", timeout=3)
    assert first["channel"] == f"ticker:{sym}:0ms" and first["data"]["seq"] == 0
    assert rec_every.wait_event("kline.update", timeout=3)["data"]["seq"] == 0
    rec_default.wait_event("ticker.update", timeout=3)
    for seq in range(1, 21):
        gw.ingest_ok([ticker_ev(sym, seq), kline_ev(sym, "1m", kline(sym, "1m", 0, seq))])
    rec_every.wait_event("ticker.update", timeout=5, pred=lambda m: m["data"]["seq"] == 20)
    rec_every.wait_event("kline.update", timeout=5, pred=lambda m: m["data"]["seq"] == 20)
    rec_default.wait_event("ticker.update", timeout=5, pred=lambda m: m["data"]["seq"] == 20)
    ticks = [m for m in rec_every.named("ticker.update")]
    assert [m["data"]["seq"] for m in ticks] == list(range(21)), "speed 0: every update, in order"
    assert all(m["channel"] == f"ticker:{sym}:0ms" for m in ticks)
    assert [m["data"]["seq"] for m in rec_every.named("kline.update")] == list(range(21))
    assert len(rec_default.named("ticker.update")) <= 3, "the default stays throttled"


def test_invalid_depth_and_speed_are_refused_with_their_codes(gateway_factory, clients):
    gw = gateway_factory("--orderbook-depth", "20")
    sym = unique_symbol("BADV")
    gw.ingest_ok(ticker_ev(sym, 0))
    sio, _ = clients(gw, ["websocket"])
    cases = [
        ({"channel": "orderbook", "symbol": sym, "depth": 50}, "INVALID_DEPTH"),
        ({"channel": "orderbook", "symbol": sym, "depth": 7}, "INVALID_DEPTH"),
        ({"channel": "orderbook", "symbol": sym, "depth": "5"}, "INVALID_DEPTH"),
        ({"channel": "trades", "symbol": sym, "depth": 5}, "INVALID_DEPTH"),
        ({"channel": "orderbook", "symbol": sym, "speed": 250}, "INVALID_SPEED"),
        ({"channel": "ticker", "symbol": sym, "speed": -100}, "INVALID_SPEED"),
        ({"channel": "klines", "symbol": sym, "interval": "1m", "speed": 1e3}, "INVALID_SPEED"),
        ({"channel": "trades", "symbol": sym, "speed": 0}, "INVALID_SPEED"),
    ]
    for payload, code in cases:
        ack = sio.call("subscribe", payload, namespace=NS, timeout=5)
        assert ack["ok"] is False and ack["error"]["code"] == code, (payload, ack)
    ok = subscribe_ok(sio, {"channel": "orderbook", "symbol": sym, "depth": 20, "speed": 0})
    assert ok["rooms"] == [f"orderbook:{sym}"], "depth 20 at speed 0 is --orderbook-depth 20's room"


def test_each_view_is_encoded_once_per_update_whatever_its_subscribers(gateway_factory, clients):
    gw = gateway_factory("--orderbook-depth", "20", "--shards", "2")
    sym = unique_symbol("ENC")
    bids = [[str(100 - i), "1"] for i in range(20)]
    gw.ingest_ok(book_ev(sym, {"type": "snapshot", "bids": bids, "asks": [["101", "1"]],
                               "lastUpdateId": 1}))
    last = 1

    def deltas(n):
        # Below the best bid: the book's window changes, its best levels do not.
        nonlocal last
        events = []
        for _ in range(n):
            last += 1
            events.append(book_ev(sym, {"type": "delta", "bids": [["95", str(last)]], "asks": [],
                                        "firstUpdateId": last, "lastUpdateId": last}))
        before = metric(gw, "gateway_broadcasts_encoded_total")
        gw.ingest_ok(events)
        return metric(gw, "gateway_broadcasts_encoded_total") - before

    assert deltas(50) == 50, "no view: the default room's delta only"
    followers = []
    socks = []
    for ask in [{}, {}, {"depth": 5, "speed": 0}, {"depth": 5, "speed": 0}, {"depth": 5, "speed": 0},
                {"depth": 10, "speed": 0}]:
        sio, rec = clients(gw, ["websocket"], ordered=True)
        subscribe_ok(sio, {"channel": "orderbook", "symbol": sym, **ask})
        followers.append(rec)
        socks.append(sio)
    for rec in followers:
        rec.wait_event("orderbook.update", timeout=5)  # each one's snapshot
    assert metric(gw, "gateway_views_open") == 2
    assert deltas(50) == 150, "three distinct variants subscribed: three encodes per update"
    for rec in followers:
        rec.wait_event("orderbook.update", timeout=5,
                       pred=lambda m: m["data"].get("lastUpdateId") == last)
    five = [m for m in followers[2].named("orderbook.update")]
    assert all(m["channel"] == f"orderbook:{sym}:5:0ms" for m in five)
    assert five[0]["data"]["reason"] == "subscribe" and len(five[0]["data"]["bids"]) == 5
    # 95 is the 6th bid: outside the depth-5 window, every delta there is empty but chained.
    assert all(m["data"]["bids"] == [] for m in five[1:])
    assert [m["data"]["firstUpdateId"] for m in five[1:]] == list(range(five[0]["data"]["lastUpdateId"] + 1, last + 1))
    # Nobody left on the views: they are no longer computed.
    for sio in socks[2:]:
        sio.disconnect()
    deadline = time.time() + 5
    while metric(gw, "gateway_views_open") != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert metric(gw, "gateway_views_open") == 0
    assert deltas(20) == 20


def test_views_are_bounded_per_address_apart_from_the_default_channels(gateway_factory, clients):
    gw = gateway_factory("--max-views-per-ip", "3")
    sym = unique_symbol("VLIM")
    gw.ingest_ok(ticker_ev(sym, 0))
    a, _ = clients(gw, ["websocket"])
    for speed in (0, 100):
        subscribe_ok(a, {"channel": "ticker", "symbol": sym, "speed": speed})
    b, _ = clients(gw, ["websocket"])
    subscribe_ok(b, {"channel": "orderbook", "symbol": sym, "depth": 5})
    # The address holds three view subscriptions, over two connections: no fourth.
    ack = b.call("subscribe", {"channel": "orderbook", "symbol": sym, "depth": 10}, namespace=NS,
                 timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "SUBSCRIPTION_LIMIT", ack
    assert "depth/speed" in ack["error"]["message"]
    # The default channels are another budget.
    subscribe_ok(b, {"channel": "orderbook", "symbol": sym})
    subscribe_ok(b, {"channel": "ticker", "symbol": sym})
    # Leaving gives the slot back, and so does a closed connection.
    b.call("unsubscribe", {"channel": "orderbook", "symbol": sym, "depth": 5}, namespace=NS,
           timeout=5)
    subscribe_ok(b, {"channel": "orderbook", "symbol": sym, "depth": 10})
    a.disconnect()
    deadline = time.time() + 5
    while True:
        ack = b.call("subscribe", {"channel": "orderbook", "symbol": sym, "depth": 20},
                     namespace=NS, timeout=5)
        if ack["ok"] or time.time() > deadline:
            break
        time.sleep(0.1)
    assert ack["ok"] is True, ack
