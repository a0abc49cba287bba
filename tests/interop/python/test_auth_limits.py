"""Authentication, private channels, token refresh/expiry, connection caps and limits.

What is asserted comes from docs/test-interface.md ("Authentication, private channels, caps and
limits") and shared/gateway-contract.md sections 2-4 and 6. Real python-socketio clients and raw
sockets against real gateway processes on 127.0.0.1.
"""

import base64
import hashlib
import hmac
import json
import select
import threading
import time
import urllib.parse

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway_harness import (Gateway, OrderedClient, Recorder, assert_envelope, check_alive, http,
                             parse_json, unique_symbol)
from rawproto import (EIO_POLL, Conn, exchange, http_request, polling_open, polling_post,
                      request_bytes, ws_open_namespace)

SECRET = "maven-gateway-interop-secret-0123456789abcdef-0123456789abcdef-0123"
ISS, AUD = "maven-auth", "maven-gateway"
INVALID = {"message": "Unauthorized: Invalid token", "data": {"code": "INVALID_TOKEN"}}
USER_LIMIT = {"message": "Too many connections for this user", "data": {"code": "CONNECTION_LIMIT"}}
QUIET = 0.4  # how long "nothing (else) arrives" is watched

TRANSPORTS = [pytest.param(None, id="default"), pytest.param(["websocket"], id="websocket")]

# The seed's private event table: event -> (subscribe.private channel, room suffix).
PRIVATE = {
    "order.created": ("user.orders", "orders"),
    "order.filled": ("user.orders", "orders"),
    "order.cancelled": ("user.orders", "orders"),
    "order.expired": ("user.orders", "orders"),
    "trade.executed": ("user.trades", "trades"),
    "balance.updated": ("user.balances", "balances"),
    "balance.locked": ("user.balances", "balances"),
    "balance.unlocked": ("user.balances", "balances"),
    "deposit.detected": ("user.deposits", "deposits"),
    "deposit.confirmed": ("user.deposits", "deposits"),
    "deposit.credited": ("user.deposits", "deposits"),
}
CHANNELS = {"user.orders": "orders", "user.trades": "trades", "user.balances": "balances",
            "user.deposits": "deposits"}


# ---- tokens ------------------------------------------------------------------------------------


def b64url(raw):
    if isinstance(raw, str):
        raw = raw.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")))


def claims(sub="alice", exp_in=300, iss=ISS, aud=AUD, **extra):
    """Standard claims; a value of None drops that claim."""
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + exp_in if exp_in is not None else None,
         "iss": iss, "aud": aud}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def hs(sub="alice", secret=SECRET, alg="HS256", **kw):
    return jwt.encode(claims(sub, **kw), secret, algorithm=alg)


def hand_signed(header, payload, key=b"", digest=hashlib.sha256):
    """A JWT built by hand: HMAC-signed with `key`, or with an empty signature when key is None."""
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
    sig = "" if key is None else b64url(hmac.new(key, signing_input.encode(), digest).digest())
    return f"{signing_input}.{sig}"


def tampered(sub="bob"):
    """A valid alice token whose payload was rewritten to `sub`, signature kept."""
    h, p, s = hs("alice").split(".")
    c = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    c["sub"] = sub
    return f"{h}.{b64url_json(c)}.{s}"


class Keys:
    """RSA and EC key pairs (and a second, unrelated pair of each) with their public PEM files."""

    def __init__(self, tmpdir):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ec_other = ec.generate_private_key(ec.SECP256R1())
        self.rsa_pub_pem = self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.ec_pub_pem = self.ec.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.rsa_pub_der = self.rsa.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.rsa_file = tmpdir / "rsa_pub.pem"
        self.rsa_file.write_bytes(self.rsa_pub_pem)
        self.ec_file = tmpdir / "ec_pub.pem"
        self.ec_file.write_bytes(self.ec_pub_pem)

    def pem(self, key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def sign(self, key, alg, sub="alice", **kw):
        return jwt.encode(claims(sub, iss=None, aud=None, **kw), self.pem(key), algorithm=alg)


# ---- clients -----------------------------------------------------------------------------------


class Attempt:
    def __init__(self, sio, rec, connected, error):
        self.sio, self.rec, self.connected, self.error = sio, rec, connected, error


def attempt(gw, auth=None, query=None, headers=None, transports=None, ordered=True, made=None):
    """One python-socketio connection to /ws; Attempt.error is the CONNECT_ERROR data on refusal."""
    sio = (OrderedClient if ordered else socketio.Client)(reconnection=False)
    rec = Recorder()
    errors = []
    sio.on("*", rec, namespace="/ws")
    sio.on("connect_error", lambda *a: errors.append(a[0] if len(a) == 1 else a), namespace="/ws")
    url = gw.public_url + ("/?" + urllib.parse.urlencode(query) if query else "")
    kw = {}
    if auth is not None:
        kw["auth"] = auth
    if headers:
        kw["headers"] = headers
    try:
        sio.connect(url, namespaces=["/ws"], transports=transports, wait_timeout=5, **kw)
    except socketio.exceptions.ConnectionError as e:
        try:
            sio.disconnect()
        except Exception:
            pass
        return Attempt(None, rec, None, errors[0] if errors else f"<no connect_error: {e!r}>")
    if made is not None:
        made.append(sio)
    connected = rec.wait_event("connected", timeout=5)
    return Attempt(sio, rec, connected, None)


@pytest.fixture
def made(gateway_factory):
    """Clients opened by a test; disconnected before its gateways stop."""
    out = []
    yield out
    for sio in out:
        try:
            sio.disconnect()
        except Exception:
            pass


def connect_ok(gw, made, user=None, **kw):
    a = attempt(gw, made=made, **kw)
    assert a.error is None, f"connection refused: {a.error!r}"
    c = a.connected
    assert set(c) == {"socketId", "userId", "authenticated", "serverTime"}, c
    assert c["socketId"] == a.sio.get_sid("/ws"), c
    assert c["userId"] == user and c["authenticated"] is (user is not None), c
    return a.sio, a.rec


def connect_refused(gw, expected=INVALID, **kw):
    a = attempt(gw, **kw)
    if a.sio is not None:
        a.sio.disconnect()
    assert a.error == expected, f"expected refusal {expected}, got {a.error or a.connected!r}"


def call(sio, event, data=None, timeout=5):
    if data is None:
        return sio.call(event, namespace="/ws", timeout=timeout)
    return sio.call(event, data, namespace="/ws", timeout=timeout)


def sub_private(sio, user, channel):
    ack = call(sio, "subscribe.private", {"channel": channel})
    assert ack == {"ok": True, "channel": channel,
                   "rooms": [f"user:{user}:{CHANNELS[channel]}"]}, ack


def sub_all_private(sio, user):
    for ch in CHANNELS:
        sub_private(sio, user, ch)


def is_err(code):
    return lambda d: isinstance(d, dict) and d.get("code") == code


def err_ack(ack, code):
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    assert set(ack) == {"ok", "error"}, ack
    assert ack["error"]["code"] == code and isinstance(ack["error"]["message"], str), ack


def priv_data(event, user, n):
    """Seed-shaped payloads, tagged with owner and sequence number."""
    base = {
        "order.created": {"orderId": f"o-{n}", "userId": user, "tradingPairId": "tp-1",
                          "type": "LIMIT", "side": "BUY", "quantity": "1.5",
                          "price": "45000.00"},
        "order.filled": {"orderId": f"o-{n}", "filledQuantity": "0.5", "price": "45000.00",
                         "totalFilled": "1.0", "isFullyFilled": False},
        "trade.executed": {"tradeId": f"t-{n}", "role": "maker", "price": "45000.00",
                           "quantity": "1.5", "fee": "0.001"},
        "balance.updated": {"walletId": "w-1", "chainTokenId": "c-1", "amount": "100.00",
                            "newBalance": "1100.00", "type": "credit",
                            "reason": "Trade settlement"},
        "balance.locked": {"walletId": "w-1", "chainTokenId": "c-1", "amount": "50.00",
                           "totalLocked": "150.00", "reason": "Order placement"},
        "deposit.detected": {"depositId": f"d-{n}", "walletId": "w-1", "chainTokenId": "c-1",
                             "amount": "100.00", "txHash": "0xabc", "confirmations": 1},
        "deposit.confirmed": {"depositId": f"d-{n}", "walletId": "w-1", "amount": "100.00",
                              "txHash": "0xabc", "confirmations": 12},
    }.get(event, {"ref": f"x-{n}"})
    return dict(base, owner=user, seq=n, timestamp=1234567890 + n)


def priv_ev(event, user, n):
    return {"type": event, "userId": user, "data": priv_data(event, user, n)}


def room_of(event, user):
    return f"user:{user}:{PRIVATE[event][1]}"


def private_received(rec):
    return [(e, d) for e, d in rec.snapshot() if e in PRIVATE]


def assert_only_own(rec, user, expected):
    """rec got exactly `expected` [(event, data)] as private events, all in user's rooms."""
    got = private_received(rec)
    foreign = [(e, d) for e, d in got if d.get("channel") != room_of(e, user)]
    assert not foreign, f"{user} received events of other rooms: {foreign[:5]}"
    assert [(e, d["data"]) for e, d in got] == expected, got
    for e, d in got:
        assert_envelope(d, room_of(e, user), d["data"])


def wait_private(rec, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(private_received(rec)) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{len(private_received(rec))}/{n} private events: "
                         f"{rec.snapshot()[-10:]}")


def trade_ev(sym, n):
    return {"type": "trade", "symbol": sym,
            "data": {"tradeId": f"{sym}-{n}", "symbol": sym, "price": "1.00", "quantity": "1",
                     "seq": n}}


def stats_total(gw):
    status, raw, _ = http("GET", gw.internal_url + "/stats")
    assert status == 200, (status, raw)
    return parse_json(raw)["total"]


def wait_stat(gw, key, minimum, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        v = stats_total(gw)[key]
        if v >= minimum:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"/stats total.{key} = {v}, expected >= {minimum}")
        time.sleep(0.05)


def eventually(fn, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


# ---- gateways ----------------------------------------------------------------------------------


def _start(flags, log_dir, name):
    try:
        return Gateway(flags, log_dir=log_dir, name=name).start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


def _stop(gw):
    rc = gw.stop()
    assert rc == 0, f"gateway exited with {rc} after SIGTERM:\n{gw.log_tail()}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return Keys(tmp_path_factory.mktemp("jwt-keys"))


@pytest.fixture(scope="module")
def hs_gw(gateway_log_dir):
    """HS256 with issuer and audience checks (default leeway 5 s)."""
    gw = _start(["--jwt-secret", SECRET, "--jwt-issuer", ISS, "--jwt-audience", AUD],
                gateway_log_dir, "auth-hs")
    yield gw
    _stop(gw)


@pytest.fixture(scope="module")
def rs_gw(gateway_log_dir, keys):
    gw = _start(["--jwt-public-key", str(keys.rsa_file)], gateway_log_dir, "auth-rs")
    yield gw
    _stop(gw)


@pytest.fixture(scope="module")
def es_gw(gateway_log_dir, keys):
    gw = _start(["--jwt-public-key", str(keys.ec_file)], gateway_log_dir, "auth-es")
    yield gw
    _stop(gw)


# =================================================================================================
# 1. token sources and precedence
# =================================================================================================


@pytest.mark.parametrize("transports", TRANSPORTS)
@pytest.mark.parametrize("source", ["auth", "query", "header"])
def test_token_sources(hs_gw, made, transports, source):
    tok = hs("alice")
    kw = {"auth": {"token": tok}} if source == "auth" else \
        {"query": {"token": tok}} if source == "query" else \
        {"headers": {"Authorization": f"Bearer {tok}"}}
    sio, _ = connect_ok(hs_gw, made, user="alice", transports=transports, **kw)
    sub_private(sio, "alice", "user.orders")


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_no_token_is_anonymous(hs_gw, made, transports):
    sio, rec = connect_ok(hs_gw, made, user=None, transports=transports)
    err_ack(call(sio, "subscribe.private", {"channel": "user.orders"}), "UNAUTHORIZED")
    # without an ack: an `error` event carrying the request
    req = {"channel": "user.balances"}
    sio.emit("subscribe.private", req, namespace="/ws")
    e = rec.wait_event("error", pred=is_err("UNAUTHORIZED"))
    assert set(e) == {"code", "message", "request"} and e["request"] == req, e


PRECEDENCE = [
    # (id, sources, accepted user or None for INVALID_TOKEN)
    ("payload-valid_query-garbage", {"auth": "alice", "query": "garbage"}, "alice"),
    ("payload-garbage_query-valid", {"auth": "garbage", "query": "alice"}, None),
    ("payload-valid_header-garbage", {"auth": "alice", "header": "garbage"}, "alice"),
    ("payload-garbage_header-valid", {"auth": "garbage", "header": "alice"}, None),
    ("query-valid_header-garbage", {"query": "alice", "header": "garbage"}, "alice"),
    ("query-garbage_header-valid", {"query": "garbage", "header": "alice"}, None),
    ("payload-alice_query-bob", {"auth": "alice", "query": "bob"}, "alice"),
    ("query-alice_header-bob", {"query": "alice", "header": "bob"}, "alice"),
    ("payload-bob_query-alice_header-carol", {"auth": "bob", "query": "alice", "header": "carol"},
     "bob"),
    ("payload-expired_query-valid", {"auth": "expired", "query": "alice"}, None),
]


@pytest.mark.parametrize("transports", TRANSPORTS)
@pytest.mark.parametrize("sources,user", [p[1:] for p in PRECEDENCE],
                         ids=[p[0] for p in PRECEDENCE])
def test_token_precedence(hs_gw, made, transports, sources, user):
    def tok(v):
        if v == "garbage":
            return "garbage.not-a.jwt"
        if v == "expired":
            return hs("alice", exp_in=-120)
        return hs(v)

    kw = {}
    if "auth" in sources:
        kw["auth"] = {"token": tok(sources["auth"])}
    if "query" in sources:
        kw["query"] = {"token": tok(sources["query"])}
    if "header" in sources:
        kw["headers"] = {"Authorization": f"Bearer {tok(sources['header'])}"}
    if user is None:
        connect_refused(hs_gw, transports=transports, **kw)
    else:
        connect_ok(hs_gw, made, user=user, transports=transports, **kw)


def test_tokens_ignored_without_key(gateway_factory, made):
    gw = gateway_factory()
    for kw in ({"auth": {"token": hs("alice")}}, {"auth": {"token": "garbage"}},
               {"query": {"token": hs("alice")}},
               {"headers": {"Authorization": f"Bearer {hs('alice')}"}}):
        sio, _ = connect_ok(gw, made, user=None, **kw)
        err_ack(call(sio, "subscribe.private", {"channel": "user.orders"}), "UNAUTHORIZED")
        err_ack(call(sio, "auth", {"token": hs("alice")}), "UNAUTHORIZED")


# =================================================================================================
# 2. private channels
# =================================================================================================


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_every_private_event_reaches_owner(hs_gw, made, transports):
    user = "u-" + unique_symbol("A").lower()
    sio, rec = connect_ok(hs_gw, made, user=user, transports=transports,
                          auth={"token": hs(user)})
    # user.orders without an ack: a `subscribed` event
    sio.emit("subscribe.private", {"channel": "user.orders"}, namespace="/ws")
    assert rec.wait_event("subscribed") == {"channel": "user.orders",
                                            "rooms": [f"user:{user}:orders"]}
    for ch in ("user.trades", "user.balances", "user.deposits"):
        sub_private(sio, user, ch)
    events = [priv_ev(e, user, i) for i, e in enumerate(PRIVATE)]
    hs_gw.ingest_ok(events)
    wait_private(rec, len(events))
    time.sleep(QUIET)
    assert_only_own(rec, user, [(e["type"], e["data"]) for e in events])

    # unsubscribe.private: that room stops, the others keep flowing
    ack = call(sio, "unsubscribe.private", {"channel": "user.orders"})
    assert ack == {"ok": True, "channel": "user.orders", "rooms": [f"user:{user}:orders"]}, ack
    sio.emit("unsubscribe.private", {"channel": "user.trades"}, namespace="/ws")
    assert rec.wait_event("unsubscribed") == {"channel": "user.trades",
                                              "rooms": [f"user:{user}:trades"]}
    mark = len(private_received(rec))
    hs_gw.ingest_ok([priv_ev("order.created", user, 100), priv_ev("trade.executed", user, 101),
                     priv_ev("balance.updated", user, 102)])
    wait_private(rec, mark + 1)
    time.sleep(QUIET)
    got = private_received(rec)[mark:]
    assert [(e, d["data"]["seq"]) for e, d in got] == [("balance.updated", 102)], got


def test_private_errors(hs_gw, made):
    sio, rec = connect_ok(hs_gw, made, user="alice", auth={"token": hs("alice")})
    for bad in ({"channel": "user.nope"}, {}, {"channel": "orders"}):
        err_ack(call(sio, "subscribe.private", bad), "INVALID_CHANNEL")
    sio.emit("subscribe.private", {"channel": "user.nope"}, namespace="/ws")
    e = rec.wait_event("error", pred=is_err("INVALID_CHANNEL"))
    assert e["request"] == {"channel": "user.nope"}, e


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_two_users_get_only_their_own(hs_gw, made, transports):
    a = "u-" + unique_symbol("A").lower()
    b = "u-" + unique_symbol("B").lower()
    sa, ra = connect_ok(hs_gw, made, user=a, transports=transports, auth={"token": hs(a)})
    sb, rb = connect_ok(hs_gw, made, user=b, transports=["websocket"],
                        headers={"Authorization": f"Bearer {hs(b)}"})
    anon, rn = connect_ok(hs_gw, made, user=None, transports=transports)
    sub_all_private(sa, a)
    sub_all_private(sb, b)
    # interleaved: a, b, a, b ... over a batch, NDJSON and single posts
    evs = []
    for i, e in enumerate(list(PRIVATE) * 2):
        evs.append(priv_ev(e, a, i))
        evs.append(priv_ev(e, b, i))
    hs_gw.ingest_ok(evs[:14])
    status, body = hs_gw.ingest_ndjson(evs[14:30])
    assert (status, body) == (202, {"accepted": 16}), (status, body)
    for ev in evs[30:]:
        hs_gw.ingest_ok(ev)
    wait_private(ra, len(evs) // 2)
    wait_private(rb, len(evs) // 2)
    time.sleep(QUIET)

    def own(u):
        # lossless and ordered per room: compare per room
        return [(e["type"], e["data"]) for e in evs if e["userId"] == u]

    for rec, u in ((ra, a), (rb, b)):
        got = private_received(rec)
        for suffix in ("orders", "trades", "balances", "deposits"):
            want = [x for x in own(u) if PRIVATE[x[0]][1] == suffix]
            have = [(e, d["data"]) for e, d in got if d["channel"] == f"user:{u}:{suffix}"]
            assert have == want, (u, suffix, have)
        assert len(got) == len(own(u)), got
    assert private_received(rn) == []


# =================================================================================================
# 3. attacker tokens
# =================================================================================================


HS_BAD = [
    ("tampered-payload", lambda: tampered("bob")),
    ("tampered-signature", lambda: (lambda h, p, s: f"{h}.{p}.{'B' if s[0] == 'A' else 'A'}{s[1:]}")(
        *hs("alice").split("."))),
    ("signature-stripped", lambda: hs("alice").rsplit(".", 1)[0] + "."),
    ("wrong-secret", lambda: hs("alice", secret="another-secret-0123456789abcdef0123456789abcdef0123456789abcdef")),
    ("expired", lambda: hs("alice", exp_in=-120)),
    ("not-yet-valid", lambda: hs("alice", nbf=int(time.time()) + 120)),
    ("wrong-issuer", lambda: hs("alice", iss="evil-issuer")),
    ("missing-issuer", lambda: hs("alice", iss=None)),
    ("wrong-audience", lambda: hs("alice", aud="other-service")),
    ("missing-audience", lambda: hs("alice", aud=None)),
    ("missing-exp", lambda: hs("alice", exp_in=None)),
    ("missing-sub", lambda: hs(None)),
    ("empty-sub", lambda: hs("")),
    ("alg-none", lambda: hand_signed({"alg": "none", "typ": "JWT"}, claims("alice"), None)),
    ("alg-None", lambda: hand_signed({"alg": "None", "typ": "JWT"}, claims("alice"), None)),
    ("alg-NONE", lambda: hand_signed({"alg": "NONE", "typ": "JWT"}, claims("alice"), None)),
    ("alg-none-with-signature",
     lambda: hand_signed({"alg": "none", "typ": "JWT"}, claims("alice"), SECRET.encode())),
    ("HS512-same-secret", lambda: hs("alice", alg="HS512")),
    ("HS384-same-secret", lambda: hs("alice", alg="HS384")),
    ("HS256-header-HS512", lambda: hand_signed({"alg": "HS512", "typ": "JWT"}, claims("alice"),
                                               SECRET.encode())),
    ("malformed-word", lambda: "garbage"),
    ("malformed-three-parts", lambda: "a.b.c"),
    ("malformed-two-parts", lambda: ".".join(hs("alice").split(".")[:2])),
    ("malformed-extra-part", lambda: hs("alice") + ".AAAA"),
    ("malformed-header-not-json", lambda: b64url("{not json") + "." + hs("alice").split(".", 1)[1]),
]


@pytest.mark.parametrize("make", [c[1] for c in HS_BAD], ids=[c[0] for c in HS_BAD])
def test_invalid_token_hs256(hs_gw, make):
    before = stats_total(hs_gw)["auth_failures"]
    connect_refused(hs_gw, auth={"token": make()})
    wait_stat(hs_gw, "auth_failures", before + 1)


@pytest.mark.parametrize("token", [123, True, {"jwt": "x"}, ["a.b.c"], 1.5],
                         ids=["int", "bool", "object", "array", "float"])
def test_non_string_token(hs_gw, token):
    connect_refused(hs_gw, auth={"token": token})


def test_non_string_token_wrapping_valid_token(hs_gw):
    connect_refused(hs_gw, auth={"token": [hs("alice")]})
    connect_refused(hs_gw, auth={"token": {"token": hs("alice")}})
    check_alive(hs_gw)


@pytest.mark.parametrize("transports", TRANSPORTS)
@pytest.mark.parametrize("source", ["query", "header"])
@pytest.mark.parametrize("case", ["expired", "wrong-secret", "alg-none", "HS512-same-secret"])
def test_invalid_token_other_sources(hs_gw, transports, source, case):
    tok = dict(HS_BAD)[case]()
    kw = {"query": {"token": tok}} if source == "query" else \
        {"headers": {"Authorization": f"Bearer {tok}"}}
    connect_refused(hs_gw, transports=transports, **kw)


def test_valid_within_leeway(hs_gw, made):
    # default leeway is 5 s: exp 2 s ago is still accepted
    connect_ok(hs_gw, made, user="alice", auth={"token": hs("alice", exp_in=-2)})


def test_rs256(rs_gw, keys, made):
    sio, _ = connect_ok(rs_gw, made, user="alice",
                        auth={"token": keys.sign(keys.rsa, "RS256", "alice")})
    sub_private(sio, "alice", "user.balances")
    connect_ok(rs_gw, made, user="bob", transports=["websocket"],
               headers={"Authorization": "Bearer " + keys.sign(keys.rsa, "RS256", "bob")})


def _rs_bad(keys):
    c = claims("alice", iss=None, aud=None)
    pem = keys.rsa_pub_pem
    return [
        ("HS256-signed-with-public-pem", hand_signed({"alg": "HS256", "typ": "JWT"}, c, pem)),
        ("HS256-signed-with-public-pem-stripped",
         hand_signed({"alg": "HS256", "typ": "JWT"}, c, pem.strip())),
        ("HS256-signed-with-public-der",
         hand_signed({"alg": "HS256", "typ": "JWT"}, c, keys.rsa_pub_der)),
        ("HS512-signed-with-public-pem",
         hand_signed({"alg": "HS512", "typ": "JWT"}, c, pem, hashlib.sha512)),
        ("RS256-other-key", keys.sign(keys.rsa_other, "RS256")),
        ("RS384-right-key", keys.sign(keys.rsa, "RS384")),
        ("RS512-right-key", keys.sign(keys.rsa, "RS512")),
        ("PS256-right-key", keys.sign(keys.rsa, "PS256")),
        ("ES256", keys.sign(keys.ec, "ES256")),
        ("alg-none", hand_signed({"alg": "none", "typ": "JWT"}, c, None)),
        ("RS256-expired", keys.sign(keys.rsa, "RS256", exp_in=-120)),
        ("RS256-missing-exp", keys.sign(keys.rsa, "RS256", exp_in=None)),
        ("RS256-tampered", (lambda t: t.split(".")[0] + "." + b64url_json(
            dict(c, sub="bob")) + "." + t.split(".")[2])(keys.sign(keys.rsa, "RS256"))),
    ]


def test_rs256_refusals(rs_gw, keys, made):
    before = stats_total(rs_gw)["auth_failures"]
    cases = _rs_bad(keys)
    for name, tok in cases:
        a = attempt(rs_gw, auth={"token": tok})
        if a.sio is not None:
            a.sio.disconnect()
        assert a.error == INVALID, f"{name}: {a.error or a.connected!r}"
    # algorithm confusion through the other token sources too
    conf = cases[0][1]
    connect_refused(rs_gw, query={"token": conf})
    connect_refused(rs_gw, transports=["websocket"], headers={"Authorization": f"Bearer {conf}"})
    wait_stat(rs_gw, "auth_failures", before + len(cases) + 2)
    check_alive(rs_gw)


def test_es256(es_gw, keys, made):
    sio, _ = connect_ok(es_gw, made, user="alice", transports=["websocket"],
                        auth={"token": keys.sign(keys.ec, "ES256", "alice")})
    sub_private(sio, "alice", "user.deposits")
    c = claims("alice", iss=None, aud=None)
    for name, tok in [
        ("ES256-other-key", keys.sign(keys.ec_other, "ES256")),
        ("HS256-signed-with-public-pem",
         hand_signed({"alg": "HS256", "typ": "JWT"}, c, keys.ec_pub_pem)),
        ("RS256", keys.sign(keys.rsa, "RS256")),
        ("alg-none", hand_signed({"alg": "none", "typ": "JWT"}, c, None)),
        ("ES256-expired", keys.sign(keys.ec, "ES256", exp_in=-120)),
    ]:
        a = attempt(es_gw, auth={"token": tok})
        if a.sio is not None:
            a.sio.disconnect()
        assert a.error == INVALID, f"{name}: {a.error or a.connected!r}"


OTHER_USER_SHAPES = [
    ("subscribe.private", {"channel": "user.orders", "userId": "VICTIM"}),
    ("subscribe.private", {"channel": "user.orders", "room": "user:VICTIM:orders"}),
    ("subscribe.private", {"channel": "user.balances", "user": "VICTIM"}),
    ("subscribe.private", {"channel": "user.trades", "user": {"id": "VICTIM"}}),
    ("subscribe.private", {"channel": "user.deposits", "sub": "VICTIM", "userId": "VICTIM",
                           "rooms": ["user:VICTIM:deposits"]}),
    ("subscribe.private", {"channel": "user:VICTIM:orders"}),
    ("subscribe.private", {"channel": "user:VICTIM:balances", "userId": "VICTIM"}),
    ("subscribe.private", {"channel": ["user.orders"], "userId": "VICTIM"}),
    ("subscribe.private", {"channel": {"name": "user.orders", "userId": "VICTIM"}}),
    ("subscribe.private", [{"channel": "user.orders", "userId": "VICTIM"}]),
    ("subscribe.private", ["user:VICTIM:orders"]),
    ("subscribe.private", "user:VICTIM:orders"),
    ("subscribe.private", {"channel": "user.orders", "data": {"userId": "VICTIM"}}),
    ("subscribe.private", {"channel": "user.VICTIM.orders"}),
    ("subscribe", {"channel": "user:VICTIM:orders"}),
    ("subscribe", {"channel": "user.orders", "userId": "VICTIM"}),
    ("subscribe", {"channel": "trades", "symbol": "user:VICTIM:trades"}),
    ("subscribe", {"channel": "trades", "symbols": ["user:VICTIM:trades"]}),
    ("subscribe", {"channel": "ticker", "symbol": "VICTIM:orders"}),
]


def _subst(obj, victim):
    return json.loads(json.dumps(obj).replace("VICTIM", victim))


def test_cannot_subscribe_other_users_channels(hs_gw, made):
    a = "u-" + unique_symbol("A").lower()
    v = "u-" + unique_symbol("V").lower()
    sa, ra = connect_ok(hs_gw, made, user=a, transports=["websocket"], auth={"token": hs(a)})
    sv, rv = connect_ok(hs_gw, made, user=v, auth={"token": hs(v)})
    sub_all_private(sv, v)
    for event, payload in OTHER_USER_SHAPES:
        payload = _subst(payload, v)
        ack = call(sa, event, payload)
        assert isinstance(ack, dict), (payload, ack)
        if ack.get("ok"):
            assert all(r.startswith(f"user:{a}:") for r in ack["rooms"]), (event, payload, ack)
        # and once more without an ack, and with extra arguments
        sa.emit(event, payload, namespace="/ws")
        sa.emit(event, (payload, {"userId": v}), namespace="/ws")
    call(sa, "ping")  # everything above has been handled
    evs = [priv_ev(e, v, i) for i, e in enumerate(PRIVATE)]
    hs_gw.ingest_ok(evs)
    # manual broadcasts into the victim's rooms reach the victim only
    hs_gw.ingest_ok({"room": f"user:{v}:orders", "event": "order.created",
                     "data": priv_data("order.created", v, 99)})
    wait_private(rv, len(evs) + 1)
    time.sleep(QUIET)
    leaked = [(e, d) for e, d in ra.snapshot() if v in json.dumps(d) and e not in ("error",)]
    assert not leaked, f"{a} received {v}'s data: {leaked[:5]}"
    assert len(private_received(rv)) == len(evs) + 1
    check_alive(hs_gw)


# =================================================================================================
# 4. refresh and expiry
# =================================================================================================

EXPIRY_FLAGS = ["--jwt-secret", SECRET, "--token-expiry-notice-secs", "2", "--jwt-leeway-secs", "0"]


def wall_of(rec, name, pred):
    """Wall-clock ms of the arrival of the first `name` event with pred(data)."""
    offset = time.time() - time.monotonic()
    for t, d in rec.timed(name):
        if pred(d):
            return int((t + offset) * 1000), d
    raise AssertionError(f"no {name}")


def short_token(user="alice", secs=3):
    exp = int(time.time()) + secs
    return jwt.encode({"sub": user, "exp": exp}, SECRET, algorithm="HS256"), exp


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_token_expiry(gateway_factory, made, transports):
    gw = gateway_factory(*EXPIRY_FLAGS)
    sym = unique_symbol("EXP")
    tok, exp = short_token("alice", 3)
    sio, rec = connect_ok(gw, made, user="alice", transports=transports, auth={"token": tok})
    sub_private(sio, "alice", "user.orders")
    sub_private(sio, "alice", "user.balances")
    assert call(sio, "subscribe", {"channel": "trades", "symbol": sym})["ok"] is True
    gw.ingest_ok([priv_ev("order.created", "alice", 1)])
    wait_private(rec, 1)

    rec.wait_event("error", timeout=4, pred=is_err("TOKEN_EXPIRING"))
    at, notice = wall_of(rec, "error", is_err("TOKEN_EXPIRING"))
    assert set(notice) == {"code", "message", "expiresAt"}, notice
    assert notice["expiresAt"] == exp * 1000, (notice, exp)
    assert at < exp * 1000, f"TOKEN_EXPIRING arrived at {at}, exp {exp * 1000}"
    assert at >= (exp - 2) * 1000 - 1500, f"TOKEN_EXPIRING too early: {at} vs exp {exp * 1000}"

    rec.wait_event("error", timeout=exp - time.time() + 3, pred=is_err("TOKEN_EXPIRED"))
    at, expired = wall_of(rec, "error", is_err("TOKEN_EXPIRED"))
    assert expired["code"] == "TOKEN_EXPIRED" and isinstance(expired["message"], str), expired
    assert at >= exp * 1000 - 100, f"TOKEN_EXPIRED at {at}, before exp {exp * 1000}"
    assert at <= exp * 1000 + 2000, f"TOKEN_EXPIRED late: {at} vs exp {exp * 1000}"

    # private rooms left, public subscriptions kept
    gw.ingest_ok([priv_ev("order.filled", "alice", 2), priv_ev("balance.updated", "alice", 3),
                  trade_ev(sym, 1)])
    rec.wait_event("trade")
    time.sleep(QUIET)
    assert len(private_received(rec)) == 1, private_received(rec)
    err_ack(call(sio, "subscribe.private", {"channel": "user.orders"}), "TOKEN_EXPIRED")
    gw.ingest_ok(trade_ev(sym, 2))
    assert len(rec.wait_count("trade", 2)) == 2

    # a fresh token of the same user re-enables private channels
    fresh = hs("alice", iss=None, aud=None)
    ack = call(sio, "auth", {"token": fresh})
    assert ack["ok"] is True and set(ack) == {"ok", "expiresAt"}, ack
    assert ack["expiresAt"] == jwt.decode(fresh, options={"verify_signature": False})["exp"] * 1000
    sub_private(sio, "alice", "user.orders")
    gw.ingest_ok(priv_ev("order.cancelled", "alice", 4))
    wait_private(rec, 2)
    assert private_received(rec)[-1][0] == "order.cancelled"
    assert sio.connected


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_token_refresh_in_band(gateway_factory, made, transports):
    gw = gateway_factory(*EXPIRY_FLAGS)
    sym = unique_symbol("REF")
    tok, exp = short_token("alice", 3)
    sio, rec = connect_ok(gw, made, user="alice", transports=transports, auth={"token": tok})
    sub_private(sio, "alice", "user.orders")
    assert call(sio, "subscribe", {"channel": "trades", "symbol": sym})["ok"] is True
    rec.wait_event("error", timeout=4, pred=is_err("TOKEN_EXPIRING"))
    assert time.time() < exp - 0.3, "too late to refresh"
    new_exp = int(time.time()) + 60
    fresh = jwt.encode({"sub": "alice", "exp": new_exp}, SECRET, algorithm="HS256")
    ack = call(sio, "auth", {"token": fresh})
    assert ack == {"ok": True, "expiresAt": new_exp * 1000}, ack
    # without an ack: `authenticated` {expiresAt}
    newer_exp = new_exp + 1
    sio.emit("auth", {"token": jwt.encode({"sub": "alice", "exp": newer_exp}, SECRET,
                                          algorithm="HS256")}, namespace="/ws")
    assert rec.wait_event("authenticated") == {"expiresAt": newer_exp * 1000}

    time.sleep(max(0.0, exp + 1.0 - time.time()))
    gw.ingest_ok([priv_ev("order.created", "alice", 1), trade_ev(sym, 1)])
    wait_private(rec, 1)
    rec.wait_event("trade")
    time.sleep(QUIET)
    assert not rec.named("error") or all(d.get("code") == "TOKEN_EXPIRING"
                                         for d in rec.named("error")), rec.named("error")
    assert len([d for d in rec.named("error") if d.get("code") == "TOKEN_EXPIRING"]) == 1
    sub_private(sio, "alice", "user.balances")


def test_refresh_with_other_users_token(gateway_factory, made):
    gw = gateway_factory(*EXPIRY_FLAGS)
    tok, exp = short_token("alice", 4)
    sio, rec = connect_ok(gw, made, user="alice", transports=["websocket"], auth={"token": tok})
    sb, rb = connect_ok(gw, made, user="bob", auth={"token": hs("bob", iss=None, aud=None)})
    sub_private(sio, "alice", "user.orders")
    sub_private(sb, "bob", "user.orders")
    err_ack(call(sio, "auth", {"token": hs("bob", iss=None, aud=None)}), "UNAUTHORIZED")
    sio.emit("auth", {"token": hs("bob", iss=None, aud=None)}, namespace="/ws")
    rec.wait_event("error", pred=is_err("UNAUTHORIZED"))
    for bad in ("garbage", hs("alice", secret="wrong-secret-0123456789abcdef0123456789abcdef0123456789abcdef012"),
                hs("alice", exp_in=-60, iss=None, aud=None)):
        err_ack(call(sio, "auth", {"token": bad}), "UNAUTHORIZED")
    err_ack(call(sio, "auth", {}), "BAD_REQUEST")
    # the identity is still alice's
    sub_private(sio, "alice", "user.balances")
    gw.ingest_ok([priv_ev("order.created", "bob", 1), priv_ev("order.created", "alice", 2)])
    wait_private(rec, 1)
    wait_private(rb, 1)
    time.sleep(QUIET)
    assert_only_own(rec, "alice", [("order.created", priv_data("order.created", "alice", 2))])
    assert_only_own(rb, "bob", [("order.created", priv_data("order.created", "bob", 1))])
    # ... and the old token still expires on time
    rec.wait_event("error", timeout=exp - time.time() + 3, pred=is_err("TOKEN_EXPIRED"))
    gw.ingest_ok([priv_ev("order.created", "bob", 3), priv_ev("order.created", "alice", 4)])
    wait_private(rb, 2)
    time.sleep(QUIET)
    assert len(private_received(rec)) == 1


def test_auth_on_anonymous_connection(hs_gw, made):
    sio, rec = connect_ok(hs_gw, made, user=None, transports=["websocket"])
    err_ack(call(sio, "auth", {"token": hs("alice")}), "UNAUTHORIZED")
    err_ack(call(sio, "subscribe.private", {"channel": "user.orders"}), "UNAUTHORIZED")


# =================================================================================================
# 5. caps and limits
# =================================================================================================


def ws_upgrade_raw(port, headers=None):
    """A WebSocket handshake for a new session; returns the full HTTP response."""
    h = {"Upgrade": "websocket", "Connection": "Upgrade",
         "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
         "Sec-WebSocket-Version": "13"}
    h.update(headers or {})
    raw = request_bytes("GET", "/socket.io/?EIO=4&transport=websocket", port, h, close=False)
    kind, resp = exchange(port, raw, timeout=5, half_close=False)
    assert kind == "response", "upgrade closed without a response"
    return resp


def polling_handshake(port, headers=None):
    return http_request(port, "GET", EIO_POLL, headers=headers)


def assert_refusal(resp, status, reason):
    assert resp.status == status, resp
    assert resp.headers.get("retry-after") == "1", resp.headers
    body = resp.json()
    assert set(body) == {"error", "message"} and body["error"] == reason, body
    assert isinstance(body["message"], str) and body["message"], body


def session_sid(resp):
    assert resp.status == 200, resp
    return json.loads(resp.body.decode().split("\x1e")[0][1:])["sid"]


def close_polling(port, sid):
    polling_post(port, sid, "1")


def test_max_connections(gateway_factory, made):
    gw = gateway_factory("--max-connections", "3")
    clients = [connect_ok(gw, made)[0], connect_ok(gw, made)[0],
               connect_ok(gw, made, transports=["websocket"])[0]]
    # polling clients upgrade: not a new session, so it is not refused at the cap
    eventually(lambda: (assert_all_ws(clients)), 5)
    before = stats_total(gw)["handshakes_refused"]
    assert_refusal(polling_handshake(gw.port), 503, "MAX_CONNECTIONS")
    assert_refusal(ws_upgrade_raw(gw.port), 503, "MAX_CONNECTIONS")
    a = attempt(gw, transports=["websocket"])
    assert a.sio is None, "4th connection accepted"
    a = attempt(gw)
    assert a.sio is None, "4th connection accepted"
    wait_stat(gw, "handshakes_refused", before + 4)
    # the others are still served
    sym = unique_symbol("MC")
    for c in clients:
        assert call(c, "subscribe", {"channel": "trades", "symbol": sym})["ok"] is True
    clients[0].disconnect()
    eventually(lambda: check_alive(gw), 5)


def assert_all_ws(clients):
    assert all(c.transport() == "websocket" for c in clients), [c.transport() for c in clients]


def test_max_connections_per_ip(gateway_factory, made):
    gw = gateway_factory("--max-connections-per-ip", "2")
    c1, _ = connect_ok(gw, made)
    c2, _ = connect_ok(gw, made, transports=["websocket"])
    eventually(lambda: assert_all_ws([c1]), 5)
    before = stats_total(gw)["handshakes_refused"]
    assert_refusal(polling_handshake(gw.port), 429, "MAX_CONNECTIONS_PER_IP")
    assert_refusal(ws_upgrade_raw(gw.port), 429, "MAX_CONNECTIONS_PER_IP")
    assert attempt(gw).sio is None
    wait_stat(gw, "handshakes_refused", before + 3)
    c2.disconnect()
    eventually(lambda: check_alive(gw), 5)


def test_max_connections_per_user(gateway_factory, made):
    gw = gateway_factory("--jwt-secret", SECRET, "--max-connections-per-user", "1")
    tok = lambda u: hs(u, iss=None, aud=None)  # noqa: E731
    a1, r1 = connect_ok(gw, made, user="alice", auth={"token": tok("alice")})
    connect_refused(gw, USER_LIMIT, transports=["websocket"], auth={"token": tok("alice")})
    connect_refused(gw, USER_LIMIT, query={"token": tok("alice")})
    connect_ok(gw, made, user="bob", auth={"token": tok("bob")})
    connect_ok(gw, made, user=None)
    connect_ok(gw, made, user=None)
    # the first alice is unaffected
    sub_private(a1, "alice", "user.orders")
    gw.ingest_ok(priv_ev("order.created", "alice", 1))
    wait_private(r1, 1)
    a1.disconnect()
    eventually(lambda: connect_ok(gw, made, user="alice", transports=["websocket"],
                                  auth={"token": tok("alice")}), 5)
    check_alive(gw)


def test_handshake_rate_per_ip(gateway_factory, made):
    gw = gateway_factory("--handshake-rate-per-ip", "2")
    before = stats_total(gw)["handshakes_refused"]
    results = [polling_handshake(gw.port) for _ in range(12)]
    ws = ws_upgrade_raw(gw.port)
    ok = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status != 200]
    assert 2 <= len(ok) <= 5, [r.status for r in results]
    for r in refused:
        assert_refusal(r, 429, "HANDSHAKE_RATE")
    assert_refusal(ws, 429, "HANDSHAKE_RATE")
    # accepted sessions work
    for r in ok:
        close_polling(gw.port, session_sid(r))
    wait_stat(gw, "handshakes_refused", before + len(refused) + 1)
    time.sleep(1.1)
    check_alive(gw)


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_max_subscriptions(gateway_factory, made, transports):
    gw = gateway_factory("--max-subscriptions", "3")
    sio, rec = connect_ok(gw, made, transports=transports)
    s = [unique_symbol("MS") for _ in range(5)]
    assert call(sio, "subscribe", {"channel": "trades", "symbol": s[0]})["ok"] is True
    assert call(sio, "subscribe", {"channel": "trades", "symbol": s[1]})["ok"] is True
    assert call(sio, "subscribe", {"channel": "ticker", "symbol": s[2]})["ok"] is True
    err_ack(call(sio, "subscribe", {"channel": "trades", "symbol": s[3]}), "SUBSCRIPTION_LIMIT")
    req = {"channel": "orderbook", "symbol": s[4]}
    sio.emit("subscribe", req, namespace="/ws")
    e = rec.wait_event("error", pred=is_err("SUBSCRIPTION_LIMIT"))
    assert set(e) == {"code", "message", "request"} and e["request"] == req, e
    gw.ingest_ok([trade_ev(s[3], 1), trade_ev(s[0], 1)])
    rec.wait_event("trade")
    time.sleep(QUIET)
    assert [d["channel"] for d in rec.named("trade")] == [f"trades:{s[0]}"]
    ack = call(sio, "unsubscribe", {"channel": "trades", "symbol": s[0]})
    assert ack["ok"] is True, ack
    assert call(sio, "subscribe", {"channel": "trades", "symbol": s[3]})["ok"] is True
    gw.ingest_ok(trade_ev(s[3], 2))
    rec.wait_event("trade", pred=lambda d: d["channel"] == f"trades:{s[3]}")
    check_alive(gw)


def test_message_rate_limit(gateway_factory, made):
    gw = gateway_factory("--max-messages-per-sec", "5")
    sio, rec = connect_ok(gw, made, transports=["websocket"])
    disconnected = threading.Event()
    sio.on("disconnect", lambda *a: disconnected.set(), namespace="/ws")
    sym = unique_symbol("RL")
    acks = []
    lock = threading.Lock()

    def cb(*a):
        with lock:
            acks.append(a[0] if a else None)

    for _ in range(50):
        sio.emit("subscribe", {"channel": "trades", "symbol": sym}, namespace="/ws", callback=cb)
    deadline = time.monotonic() + 5
    while len(acks) < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(acks) == 50, f"{len(acks)}/50 acks"
    ok = [a for a in acks if a.get("ok") is True]
    limited = [a for a in acks if a.get("ok") is False]
    assert 5 <= len(ok) <= 15 and len(ok) + len(limited) == 50, acks
    for a in limited:
        err_ack(a, "RATE_LIMITED")
    # without an ack: an `error` event
    for _ in range(3):
        sio.emit("ping", namespace="/ws")
    rec.wait_event("error", pred=is_err("RATE_LIMITED"))
    # still connected and served once the bucket refilled
    time.sleep(1.2)
    assert sio.connected and not disconnected.is_set()
    assert call(sio, "ping")["ok"] is True
    gw.ingest_ok(trade_ev(sym, 1))
    rec.wait_event("trade")
    # a sustained flood closes the connection
    t0 = time.monotonic()
    while not disconnected.is_set() and time.monotonic() - t0 < 5:
        try:
            sio.emit("ping", namespace="/ws")
        except Exception:
            break
        time.sleep(0.002)
    assert disconnected.wait(5), "a sustained flood did not disconnect"
    check_alive(gw)


def test_max_payload(gateway_factory, made):
    gw = gateway_factory("--max-payload", "1000")
    # a message within the limit is served
    ws, _ = ws_open_namespace(gw.port)
    with ws:
        ws.send_text('42/ws,["subscribe",{"channel":"trades","symbol":"AB","pad":"'
                     + "x" * 800 + '"}]')
        closed, _, packets = ws.wait_closed(timeout=3, stop_when=lambda p: p.startswith("42/ws,"))
        assert not closed and packets, packets
        # a larger one closes with 1009
        big = '42/ws,["subscribe",{"channel":"trades","symbol":"AB","pad":"' + "x" * 2000 + '"}]'
        ws.send_text(big)
        closed, code, _ = ws.wait_closed(timeout=5)
        assert closed and code == 1009, (closed, code)
    # the polling handshake tells the limit; a larger POST is refused with 413
    sid, hs_ = polling_open(gw.port)
    assert hs_["maxPayload"] == 1000, hs_
    body = ("4" + "x" * 1500).encode()
    resp = polling_post(gw.port, sid, body)
    assert resp.status == 413, resp
    # a python-socketio client sending a too large event is disconnected, others unaffected
    other, _ = connect_ok(gw, made, transports=["websocket"])
    big_sio, _ = connect_ok(gw, made, transports=["websocket"])
    gone = threading.Event()
    big_sio.on("disconnect", lambda *a: gone.set(), namespace="/ws")
    big_sio.emit("subscribe", {"channel": "trades", "symbol": "AB", "pad": "x" * 2000},
                 namespace="/ws")
    assert gone.wait(5), "a client sending more than --max-payload stayed connected"
    check_alive(gw)
    assert other.connected


def _slow_close_time(port, trickle, limit=4.0):
    """Seconds until the server closes a connection that trickles a request head (or sends
    nothing); None when still open after `limit`."""
    head = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    c = Conn(port, timeout=5)
    t0 = time.monotonic()
    try:
        i = 0
        while time.monotonic() - t0 < limit:
            if trickle:  # one byte every 300 ms, the head never completes
                if not c.send(head[i:i + 1] if i < len(head) else b"a"):
                    return time.monotonic() - t0
                i += 1
            r, _, _ = select.select([c.sock], [], [], 0.3)
            if r:
                try:
                    data = c.sock.recv(65536)
                except OSError:
                    return time.monotonic() - t0
                if not data:
                    return time.monotonic() - t0
                # a 408 or similar answer may precede the close: keep reading
        return None
    finally:
        c.close()


def test_slowloris(gateway_factory, made):
    gw = gateway_factory("--handshake-timeout-ms", "1000")
    sio, rec = connect_ok(gw, made)  # polling + upgrade: unaffected by the handshake timeout
    sio2, rec2 = connect_ok(gw, made, transports=["websocket"])
    sym = unique_symbol("SL")
    for c in (sio, sio2):
        assert call(c, "subscribe", {"channel": "trades", "symbol": sym})["ok"] is True
    results = {}

    def run(key, trickle):
        results[key] = _slow_close_time(gw.port, trickle)

    threads = [threading.Thread(target=run, args=(f"trickle{i}", True)) for i in range(8)]
    threads += [threading.Thread(target=run, args=(f"silent{i}", False)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    check_alive(gw)  # served meanwhile
    for t in threads:
        t.join(10)
    for k, v in results.items():
        assert v is not None, f"{k}: still open after 4 s"
        assert 0.7 <= v <= 2.3, f"{k}: closed after {v:.2f}s (handshake timeout 1 s)"
    assert len(results) == 12
    # established sessions were not affected
    gw.ingest_ok(trade_ev(sym, 1))
    rec.wait_event("trade")
    rec2.wait_event("trade")
    assert sio.connected and sio2.connected
    check_alive(gw)


def _health_on(c):
    """GET /health on kept-alive connection c; True when a whole 200 answer came back."""
    if not c.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
        return False
    data = b""
    deadline = time.monotonic() + 3
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")]
            if lengths and len(body) >= lengths[0]:
                return head.startswith(b"HTTP/1.1 200")
        r, _, _ = select.select([c.sock], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            return False
        try:
            chunk = c.sock.recv(65536)
        except OSError:
            return False
        if not chunk:
            return False
        data += chunk


def test_idle_keep_alive_connection_is_closed(gateway_factory, made):
    """The handshake timeout applies to each next request on a kept-alive HTTP connection too:
    one that answered a request and then sits idle is closed; one that keeps asking stays."""
    gw = gateway_factory("--handshake-timeout-ms", "1000")
    idle = Conn(gw.port, timeout=5)
    busy = Conn(gw.port, timeout=5)
    try:
        assert _health_on(idle) and _health_on(busy)
        t0 = time.monotonic()
        closed_after = None
        while time.monotonic() - t0 < 3.0:
            # busy: a request every 400 ms, each within the timeout of the previous answer
            assert _health_on(busy), f"kept-alive connection in use closed after {time.monotonic() - t0:.2f}s"
            r, _, _ = select.select([idle.sock], [], [], 0.4)
            if r and closed_after is None:
                try:
                    data = idle.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    closed_after = time.monotonic() - t0
        assert closed_after is not None, "an idle kept-alive connection stayed open past 3 s"
        assert 0.7 <= closed_after <= 2.3, f"idle connection closed after {closed_after:.2f}s (timeout 1 s)"
    finally:
        idle.close()
        busy.close()
    check_alive(gw)


def test_trust_proxy(gateway_factory, made):
    # The test is the proxy (loopback is trusted by default): the right-most entry is the
    # address it saw; anything to its left is whatever the client claimed.
    gw = gateway_factory("--trust-proxy", "--max-connections-per-ip", "1")
    xff = lambda v: {"X-Forwarded-For": v}  # noqa: E731
    s1 = session_sid(polling_handshake(gw.port, xff("10.1.0.1")))
    assert_refusal(polling_handshake(gw.port, xff("10.1.0.1")), 429, "MAX_CONNECTIONS_PER_IP")
    assert_refusal(ws_upgrade_raw(gw.port, xff("10.1.0.1")), 429, "MAX_CONNECTIONS_PER_IP")
    assert_refusal(polling_handshake(gw.port, xff("10.1.0.9, 10.1.0.1")), 429,
                   "MAX_CONNECTIONS_PER_IP")
    s2 = session_sid(polling_handshake(gw.port, xff("10.1.0.2")))
    s3 = session_sid(polling_handshake(gw.port, xff("10.1.0.1, 10.1.0.3")))
    assert ws_upgrade_raw(gw.port, xff("10.1.0.4")).status == 101
    # the proxy's own address (no header) is one more address
    check_alive(gw)
    close_polling(gw.port, s1)
    eventually(lambda: session_sid(polling_handshake(gw.port, xff("10.1.0.1"))), 5)
    for s in (s2, s3):
        close_polling(gw.port, s)


def test_forwarded_for_ignored_without_trust_proxy(gateway_factory, made):
    gw = gateway_factory("--max-connections-per-ip", "1")
    s1 = session_sid(polling_handshake(gw.port, {"X-Forwarded-For": "10.2.0.1"}))
    assert_refusal(polling_handshake(gw.port, {"X-Forwarded-For": "10.2.0.2"}), 429,
                   "MAX_CONNECTIONS_PER_IP")
    assert_refusal(ws_upgrade_raw(gw.port, {"X-Forwarded-For": "10.2.0.3"}), 429,
                   "MAX_CONNECTIONS_PER_IP")
    assert_refusal(polling_handshake(gw.port), 429, "MAX_CONNECTIONS_PER_IP")
    close_polling(gw.port, s1)
    eventually(lambda: check_alive(gw), 5)
