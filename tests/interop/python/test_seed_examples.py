"""The seed document's "Connect and Subscribe to Public Channels" example, in python-socketio,
against a gateway running its built-in market simulator (--demo)."""

import threading
import time

import pytest
import socketio

from gateway_harness import Gateway

SYMBOL = "BTCUSDT"
EXPECTED = {
    "ticker.update": f"ticker:{SYMBOL}",
    "orderbook.update": f"orderbook:{SYMBOL}",
    "trade": f"trades:{SYMBOL}",
    "kline.update": f"klines:{SYMBOL}:1m",
}


@pytest.fixture(scope="module")
def demo_gateway(gateway_log_dir):
    try:
        gw = Gateway(["--demo"], log_dir=gateway_log_dir, name="demo").start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield gw
    rc = gw.stop()
    assert rc == 0, f"demo gateway exited with {rc}:\n{gw.log_tail()}"


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["default", "websocket"])
def test_seed_public_channels_example(demo_gateway, transports):
    received = {}
    lock = threading.Lock()
    all_in = threading.Event()

    # const socket = io('ws://localhost:3000/ws');
    socket = socketio.Client()

    def keep(event):
        # Trades carry their recovery offset as a second argument (socket.io's connection
        # state recovery); a python handler takes it, or ignores it as here.
        def handler(message, offset=None):
            with lock:
                received.setdefault(event, message)
                if len(received) == len(EXPECTED):
                    all_in.set()
        return handler

    connected = []

    # socket.on('connected', (data) => console.log('Connected to WebSocket:', data));
    @socket.on("connected", namespace="/ws")
    def on_connected(data):
        connected.append(data)

    # socket.on('ticker.update' | 'orderbook.update' | 'trade' | 'kline.update', ...)
    for event in EXPECTED:
        socket.on(event, keep(event), namespace="/ws")

    socket.connect(f"ws://127.0.0.1:{demo_gateway.port}", namespaces=["/ws"],
                   transports=transports, wait_timeout=5)
    try:
        socket.emit("subscribe", {"channel": "ticker", "symbol": SYMBOL}, namespace="/ws")
        socket.emit("subscribe", {"channel": "orderbook", "symbol": SYMBOL}, namespace="/ws")
        socket.emit("subscribe", {"channel": "trades", "symbol": SYMBOL}, namespace="/ws")
        socket.emit("subscribe", {"channel": "klines", "symbol": SYMBOL, "interval": "1m"},
                    namespace="/ws")

        all_in.wait(timeout=15)
        with lock:
            got = dict(received)
        missing = sorted(set(EXPECTED) - set(got))
        assert not missing, f"nothing received within 15 s for {missing}"
        assert connected and connected[0]["socketId"] == socket.get_sid("/ws")

        for event, room in EXPECTED.items():
            message = got[event]
            # console.log('...', message.data)
            assert isinstance(message, dict) and message.get("data"), (event, message)
            assert message["channel"] == room, (event, message)
            assert isinstance(message["timestamp"], int), (event, message)
        # the seed's data structures
        assert got["ticker.update"]["data"]["symbol"] == SYMBOL
        assert "lastPrice" in got["ticker.update"]["data"]
        book = got["orderbook.update"]["data"]
        assert book["symbol"] == SYMBOL and isinstance(book["bids"], list) \
            and isinstance(book["asks"], list), book
        trade = got["trade"]["data"]
        assert trade["symbol"] == SYMBOL and "price" in trade and "quantity" in trade, trade
        kline = got["kline.update"]["data"]
        assert kline["symbol"] == SYMBOL and kline["interval"] == "1m", kline

        # socket.emit('unsubscribe', { channel: 'ticker', symbol: 'BTCUSDT' });
        ack = socket.call("unsubscribe", {"channel": "ticker", "symbol": SYMBOL},
                          namespace="/ws", timeout=5)
        assert ack["ok"] is True and ack["rooms"] == [f"ticker:{SYMBOL}"], ack
    finally:
        socket.disconnect()
    time.sleep(0.1)
