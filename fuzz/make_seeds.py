#!/usr/bin/env python3
"""Writes the seed inputs in fuzz/seeds/<target>/ (committed; re-run after changing a target's
input format). Each seed is a realistic input: real packets, frames, handshakes, bodies."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def masked(fin, op, payload, mask=b"\x37\xfa\x21\x3d", form=0):
    if isinstance(payload, str):
        payload = payload.encode()
    v = bytes([(0x80 if fin else 0) | op])
    n = len(payload)
    if n < 126 and form == 0:
        v += bytes([0x80 | n])
    elif n <= 0xFFFF and form <= 1:
        v += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        v += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return v + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


SUB = '42/ws,1["subscribe",{"channel":"trades","symbol":"BTCUSDT"}]'
OPEN = '0{"sid":"00AbCdEfGhIjKlMnOpQr","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'

# ws_frame: two limit bytes (max frame 1 + 4*b0, max message 1 + 8*b1), then client frames.
L = b"\xff\xff"
write("ws_frame", "text", L + masked(True, 1, SUB))
write("ws_frame", "probe_then_upgrade", L + masked(True, 1, "2probe") + masked(True, 1, "5"))
write("ws_frame", "fragmented_text", L + masked(False, 1, "42/ws,[\"ping\"") + masked(True, 9, "") + masked(True, 0, ",{}]"))
write("ws_frame", "binary_attachment", L + masked(True, 1, '451-/ws,["x",{"_placeholder":true,"num":0}]') + masked(True, 2, bytes([4, 1, 2, 3])))
write("ws_frame", "ping_pong_close", L + masked(True, 9, "hi") + masked(True, 10, "") + masked(True, 8, struct.pack(">H", 1000) + b"bye"))
write("ws_frame", "len16", L + masked(True, 1, "4" + "x" * 300, form=1))
write("ws_frame", "len64_small_limit", b"\x04\x02" + masked(True, 2, b"\x00" * 40, form=2))
write("ws_frame", "truncated", L + masked(True, 1, SUB)[:-5])
write("ws_frame", "unmasked", L + b"\x81\x05hello")

# engineio_packet: one text packet.
for i, p in enumerate([OPEN, "1", "2", "2probe", "3probe", "40", "40/ws,", SUB, '42["message","héllo"]', "5", "6", "4"]):
    write("engineio_packet", f"p{i:02}", p)

# polling_payload: long-polling bodies.
write("polling_payload", "handshake", OPEN)
write("polling_payload", "mixed", b"4hello\x1ebAQIDBA==\x1e2")
write("polling_payload", "connect_and_event", b"40/ws,\x1e" + SUB.encode())
write("polling_payload", "binary_event", b'451-["m",{"_placeholder":true,"num":0}]\x1ebAAECAw==')
write("polling_payload", "noop_close", b"6\x1e1")
write("polling_payload", "empty_binary", b"b")
write("polling_payload", "pong", b"3")

# socketio_packet: the Socket.IO part (no Engine.IO digit); 0xFF-separated attachments follow.
for name, p in [
    ("connect", "0"),
    ("connect_ns", "0/ws,"),
    ("connect_auth", '0{"token":"abc"}'),
    ("connect_sid", '0/ws,{"sid":"oSO0OpakmFGdGOEh"}'),
    ("disconnect", "1/admin,"),
    ("event", SUB[1:]),
    ("event_root", '2["message","x",1,null,true,{"a":[1.5,-2]}]'),
    ("ack", '3/ws,12[{"ok":true,"timestamp":1700000000000}]'),
    ("connect_error", '4/admin,{"message":"Invalid namespace"}'),
    ("connect_error_str", '4"Not authorized"'),
]:
    write("socketio_packet", name, p)
write("socketio_packet", "binary_event", b'51-["message",{"_placeholder":true,"num":0}]\xff\x01\x02\x03')
write("socketio_packet", "binary_ack", b'62-/custom,4[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]\xffab\xffcd')
write("socketio_packet", "bad_placeholder", b'51-["m",{"_placeholder":true,"num":7}]\xffx')

# socket_layer: a settings byte, then 0xFF-separated steps (see the target's header).
S = b"\xff"
def steps(setting, *parts):
    return bytes([setting]) + S.join(p.encode() if isinstance(p, str) else p for p in parts)

write("socket_layer", "subscribe_unsubscribe", steps(0, "0/ws,", SUB[1:],
      '2/ws,["unsubscribe",{"channel":"trades","symbol":"BTCUSDT"}]', "2/ws,7[\"ping\"]", "1/ws,"))
write("socket_layer", "klines_and_ticker_all", steps(3, "0/ws,",
      '2/ws,1["subscribe",{"channel":"klines","symbols":["BTCUSDT","ETHUSDT"],"interval":"1m"}]',
      '2/ws,2["subscribe",{"channel":"ticker","symbol":"all"}]',
      '2/ws,3["subscribe",{"channel":"orderbook","symbol":"SOLUSDT"}]', "0/ws,"))
write("socket_layer", "conformance", steps(0, '0{"token":"t"}', "0/custom,", '2["message","x"]',
      '51-4["message-with-ack",{"_placeholder":true,"num":0}]', b"B\x01\x02\x03",
      "0/admin,", "1/custom,"))
write("socket_layer", "binary_to_gateway", steps(0, "0/ws,",
      '52-/ws,5["subscribe",{"_placeholder":true,"num":0}]', b"Babc", b"Bdef", "2/ws,[\"x\"]"))
write("socket_layer", "jwt_private_expiry", steps(4, 'J{"sub":"u-1","exp":1700000600}',
      '2/ws,2["subscribe.private",{"channel":"user.orders"}]', "+100000", "K", "K",
      'A{"sub":"u-1","exp":1700009999}', '2/ws,3["subscribe.private",{"channel":"user.trades"}]',
      'A{"sub":"u-2","exp":1700009999}', "1/ws,"))
write("socket_layer", "jwt_handshake_and_cap", steps(4, 'H{"sub":"u-7","exp":1700000600,"nbf":1699999999}',
      "0/ws,", "0/", "N", "1/ws,", "0/ws,", "h", 'J{"sub":42,"exp":1800000000}', 'J{"exp":1800000000}',
      'J{"sub":"u-1"}', "Jnot json"))
write("socket_layer", "flood", steps(8, "0/ws,", *(["2/ws,[\"ping\"]"] * 30), "+2000", "2/ws,1[\"ping\"]"))
write("socket_layer", "garbage", steps(0, "Tabc", "0/ws", "2{}", "5-[\"x\"]", b"B\x00", "0/ws,", "0/ws,"))

# http_head: request heads as the public listener sees them.
write("http_head", "polling_open", "GET /socket.io/?EIO=4&transport=polling&t=N8hyd6w HTTP/1.1\r\nHost: localhost:3000\r\nAccept: */*\r\nOrigin: http://localhost:8080\r\n\r\n")
write("http_head", "polling_post", "POST /socket.io/?EIO=4&transport=polling&sid=00AbCdEfGhIjKlMnOpQr HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 7\r\n\r\n40/ws,\x1e")
write("http_head", "ws_upgrade", "GET /socket.io/?EIO=4&transport=websocket&token=a%20b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer abc.def.ghi\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\r\n")
write("http_head", "ws_upgrade_existing", "GET /socket.io/?EIO=4&transport=websocket&sid=01AbCdEfGhIjKlMnOpQr HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n")
write("http_head", "options_cors", "OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n")
write("http_head", "eio3", "GET /socket.io/?EIO=3&transport=polling HTTP/1.0\r\nConnection: close\r\n\r\n")
write("http_head", "health", "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
write("http_head", "partial", "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
write("http_head", "dup_content_length", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n")

# ingest_body: POST /internal/events bodies.
write("ingest_body", "ticker", '{"type":"ticker.update","symbol":"BTCUSDT","data":{"price":"64000.5","volume":"12.3"}}')
write("ingest_body", "ndjson", '{"type":"trade","symbol":"BTCUSDT","data":{"p":"1","q":"2"}}\n{"type":"kline.update","symbol":"ETHUSDT","interval":"1m","data":{"openTime":1700000000000,"closed":true}}\n\n{"type":"order.filled","userId":"u-1","data":{"id":7}}\n')
write("ingest_body", "array", '[{"room":"ticker:BTCUSDT","event":"notice","data":{"text":"hi"}},{"type":"balance.updated","userId":"u-2","data":{}}]')
write("ingest_body", "book_snapshot", '{"type":"orderbook.update","symbol":"BTCUSDT","data":{"type":"snapshot","bids":[["100.5","1"],["99","2"],["98.25","3"],["97","4"]],"asks":[["101","1"],["101.0","2"]],"lastUpdateId":10}}')
write("ingest_body", "book_delta", '{"type":"orderbook.update","symbol":"BTCUSDT","data":{"type":"delta","bids":[["100.5","0"]],"asks":[["0.00000001","12345678901234567890"]],"firstUpdateId":11,"lastUpdateId":12}}')
write("ingest_body", "pretty", '{\n  "type": "trade.executed",\n  "userId": "u-1",\n  "data": {"orderId": 1}\n}\n')
write("ingest_body", "bad_second_line", '{"type":"trade","symbol":"BTCUSDT","data":{}}\n{oops}\n')
write("ingest_body", "deep", "[" * 130 + "]" * 130)

# Round-trip targets take structured (arbitrary) input: a few byte patterns to start from.
for t in ["roundtrip_engineio", "roundtrip_socketio", "roundtrip_ws"]:
    write(t, "zeros", b"\x00" * 64)
    write(t, "ones", b"\xff" * 64)
    write(t, "counting", bytes(range(256)))
    write(t, "text", SUB.encode() + OPEN.encode())
