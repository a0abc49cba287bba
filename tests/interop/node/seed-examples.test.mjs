// The seed document's "Connect and Subscribe to Public Channels" client code,
// verbatim except for the URL (and, for the WebSocket-only run, the transports
// option) and with console.log replaced by capturing, against `--demo`.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startGateway, sleep } from './harness.mjs';
import { MODES } from './clients.mjs';

const WAIT_MS = 15000;

/**
 * The seed example. `URL` replaces 'ws://localhost:3000/ws'; `log` replaces
 * console.log. Returns the socket.
 */
function seedExample(URL, ioOptions, log) {
  // Connect to WebSocket
  const socket = ioOptions ? io(URL, ioOptions) : io(URL);

  // Listen for connection
  socket.on('connected', (data) => {
    log('Connected to WebSocket:', data);
  });

  // Subscribe to ticker
  socket.emit('subscribe', {
    channel: 'ticker',
    symbol: 'BTCUSDT',
  });

  // Listen for ticker updates
  socket.on('ticker.update', (message) => {
    log('Ticker update:', message.data, message);
  });

  // Subscribe to order book
  socket.emit('subscribe', {
    channel: 'orderbook',
    symbol: 'BTCUSDT',
  });

  // Listen for order book updates
  socket.on('orderbook.update', (message) => {
    log('Order book update:', message.data, message);
  });

  // Subscribe to trades
  socket.emit('subscribe', {
    channel: 'trades',
    symbol: 'BTCUSDT',
  });

  // Listen for trades
  socket.on('trade', (message) => {
    log('New trade:', message.data, message);
  });

  // Subscribe to klines
  socket.emit('subscribe', {
    channel: 'klines',
    symbol: 'BTCUSDT',
    interval: '1m',
  });

  // Listen for kline updates
  socket.on('kline.update', (message) => {
    log('Kline update:', message.data, message);
  });

  // Unsubscribe
  socket.emit('unsubscribe', {
    channel: 'ticker',
    symbol: 'BTCUSDT',
  });

  return socket;
}

const EXPECTED = {
  'Ticker update:': 'ticker:BTCUSDT',
  'Order book update:': 'orderbook:BTCUSDT',
  'New trade:': 'trades:BTCUSDT',
  'Kline update:': 'klines:BTCUSDT:1m',
};

for (const mode of MODES) {
  describe(`seed example against --demo [${mode.name}]`, () => {
    let gw;
    let socket;
    before(async () => {
      gw = await startGateway(['--demo']);
      // give the simulator a moment to have a value for every stream
      await sleep(1500);
    });
    after(async () => {
      if (socket) socket.disconnect();
      if (gw) await gw.stop();
    });

    it('"Connect and Subscribe to Public Channels" receives every stream within 15 s', { timeout: 30000 }, async () => {
      const logs = [];
      let resolveAll;
      const allSeen = new Promise((r) => {
        resolveAll = r;
      });
      const seen = new Set();
      const log = (label, ...rest) => {
        logs.push({ label, rest });
        if (label in EXPECTED && rest[0] !== undefined && rest[0] !== null) seen.add(label);
        if (label === 'Connected to WebSocket:') seen.add(label);
        if (Object.keys(EXPECTED).every((l) => seen.has(l)) && seen.has('Connected to WebSocket:')) resolveAll();
      };
      // the seed's URL is 'ws://localhost:3000/ws'
      const url = `${gw.wsUrl}/ws`;
      socket = seedExample(url, mode.transports ? { transports: mode.transports } : undefined, log);
      // the seed's own error handler, capturing
      const errors = [];
      socket.on('error', (error) => errors.push(error));
      const timer = sleep(WAIT_MS).then(() => 'timeout');
      const res = await Promise.race([allSeen, timer]);
      const labels = [...new Set(logs.map((l) => l.label))];
      assert.notEqual(res, 'timeout', `within ${WAIT_MS} ms only saw: ${JSON.stringify(labels)}`);

      const connected = logs.find((l) => l.label === 'Connected to WebSocket:').rest[0];
      assert.equal(connected.socketId, socket.id);
      for (const [label, room] of Object.entries(EXPECTED)) {
        const entry = logs.find((l) => l.label === label && l.rest[0] !== undefined && l.rest[0] !== null);
        assert.ok(entry, `${label} with message.data set`);
        const message = entry.rest[1];
        assert.equal(message.channel, room, `${label} envelope channel`);
        assert.ok(Number.isInteger(message.timestamp), `${label} envelope timestamp`);
        assert.ok(message.data !== undefined && message.data !== null, `${label} message.data`);
      }
      // the seed's payloads are all valid: no error event
      assert.deepEqual(errors, []);
    });
  });
}
