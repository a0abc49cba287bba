// Gateway behaviour through the official socket.io-client v4, run once with the
// default transports (polling, then upgrade) and once WebSocket-only.
// What is asserted comes from docs/test-interface.md.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, sleep } from './harness.mjs';
import {
  MODES,
  connectClient,
  rawClient,
  closeAllClients,
  closeAllRaw,
  emitAck,
  waitWebsocketTransport,
  RawWs,
  assertEnvelope,
  topChecksum,
} from './clients.mjs';

const T = { timeout: 30000 };
const INTERVALS = ['1m', '3m', '5m', '15m', '30m', '1h', '4h', '1d', '1w', '1M'];
const RESERVED = ['connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener'];
const QUIET_MS = 400; // how long "nothing arrives" is watched

const RUN = Math.floor(Math.random() * 36 ** 3)
  .toString(36)
  .toUpperCase()
  .padStart(3, '0');
let symSeq = 0;
/** A fresh symbol matching [A-Z0-9]{2,20}, unique in this run. */
function sym(prefix = 'S') {
  symSeq += 1;
  return `${prefix}${RUN}${symSeq}`.slice(0, 20);
}


function tickerData(symbol, n = 1) {
  return {
    symbol,
    lastPrice: `${45000 + n}.00`,
    priceChange: '1500.00',
    priceChangePercent: '3.45',
    high24h: '46000.00',
    low24h: '43000.00',
    volume24h: '12500.50',
    quoteVolume24h: '562525000.00',
    openTime: 1234567890,
    closeTime: 1234654290 + n,
  };
}
// An order book snapshot as the backend ingests it...
function bookData(symbol, n = 1) {
  return {
    type: 'snapshot',
    bids: [
      ['45000.00', '1.5'],
      ['44999.00', `${n}.3`],
    ],
    asks: [
      ['45001.00', '1.2'],
      ['45002.00', '0.8'],
    ],
    lastUpdateId: 12345 + n,
  };
}
// ...and as subscribers see it: a backend snapshot replaces the book, sent as a resync.
function bookSeen(symbol, n = 1) {
  const { bids, asks, lastUpdateId } = bookData(symbol, n);
  return { symbol, type: 'snapshot', reason: 'resync', bids, asks, lastUpdateId, checksum: topChecksum({ bids, asks }) };
}
function tradeData(symbol, n = 1) {
  return { tradeId: `t-${symbol}-${n}`, symbol, price: '45000.00', quantity: '1.5', timestamp: 1234567890 + n, seq: n };
}
function klineData(symbol, interval, n = 1) {
  return {
    symbol,
    interval,
    openTime: 1234567890,
    closeTime: 1234567950,
    open: '45000.00',
    high: '45100.00',
    low: '44900.00',
    close: `${45050 + n}.00`,
    volume: '125.50',
    quoteVolume: '5650000.00',
    trades: 450 + n,
    closed: false,
  };
}

async function subscribeOk(socket, payload) {
  const ack = await emitAck(socket, 'subscribe', payload);
  assert.equal(ack && ack.ok, true, `subscribe ${JSON.stringify(payload)} acked ${JSON.stringify(ack)}`);
  return ack;
}
async function unsubscribeOk(socket, payload) {
  const ack = await emitAck(socket, 'unsubscribe', payload);
  assert.equal(ack && ack.ok, true, `unsubscribe ${JSON.stringify(payload)} acked ${JSON.stringify(ack)}`);
  return ack;
}
async function ingestOk(gw, events, opts) {
  const res = await gw.ingest(events, opts);
  const n = typeof events === 'string' ? undefined : Array.isArray(events) ? events.length : 1;
  assert.equal(res.status, 202, `ingest answered ${res.status} ${res.text}`);
  if (n !== undefined) assert.deepEqual(res.body, { accepted: n });
  return res;
}
function sortedRooms(r) {
  return [...r].sort();
}

// Subscribe payloads that must fail, with the code the interface names.
function badSubscribeCases() {
  const A = sym('BAD');
  return [
    { name: 'unknown channel', payload: { channel: 'foo', symbol: A }, code: 'INVALID_CHANNEL' },
    { name: 'missing channel', payload: { symbol: A }, code: 'INVALID_CHANNEL' },
    { name: 'missing symbol', payload: { channel: 'ticker' }, code: 'INVALID_SYMBOL' },
    { name: 'lowercase symbol', payload: { channel: 'ticker', symbol: 'btcusdt' }, code: 'INVALID_SYMBOL' },
    { name: 'one-char symbol', payload: { channel: 'orderbook', symbol: 'B' }, code: 'INVALID_SYMBOL' },
    { name: '21-char symbol', payload: { channel: 'trades', symbol: 'A'.repeat(21) }, code: 'INVALID_SYMBOL' },
    { name: 'symbol with dash', payload: { channel: 'trades', symbol: 'BTC-USDT' }, code: 'INVALID_SYMBOL' },
    { name: 'all on orderbook', payload: { channel: 'orderbook', symbol: 'all' }, code: 'INVALID_SYMBOL' },
    { name: 'all on trades', payload: { channel: 'trades', symbol: 'all' }, code: 'INVALID_SYMBOL' },
    { name: 'all on klines', payload: { channel: 'klines', symbol: 'all', interval: '1m' }, code: 'INVALID_SYMBOL' },
    { name: 'bad symbol in symbols', payload: { channel: 'trades', symbols: [A, 'bad'] }, code: 'INVALID_SYMBOL' },
    { name: 'klines without interval', payload: { channel: 'klines', symbol: A }, code: 'INVALID_INTERVAL' },
    { name: 'klines interval 2m', payload: { channel: 'klines', symbol: A, interval: '2m' }, code: 'INVALID_INTERVAL' },
    { name: 'klines interval 1H', payload: { channel: 'klines', symbol: A, interval: '1H' }, code: 'INVALID_INTERVAL' },
    {
      name: 'klines symbols with bad interval',
      payload: { channel: 'klines', symbols: [A, `${A}X`], interval: '7m' },
      code: 'INVALID_INTERVAL',
    },
    { name: 'string payload', payload: 'hello', code: 'BAD_REQUEST' },
    { name: 'number payload', payload: 42, code: 'BAD_REQUEST' },
    { name: 'array payload', payload: [1, 2], code: 'BAD_REQUEST' },
    { name: 'null payload', payload: null, code: 'BAD_REQUEST', skipRequest: true },
    { name: 'no payload', none: true, code: 'BAD_REQUEST', skipRequest: true },
    { name: 'empty symbols', payload: { channel: 'trades', symbols: [] }, code: 'BAD_REQUEST' },
    { name: 'symbols not an array', payload: { channel: 'trades', symbols: A }, code: 'BAD_REQUEST' },
    { name: 'symbols with a number', payload: { channel: 'trades', symbols: [A, 5] }, code: 'BAD_REQUEST' },
  ];
}

for (const mode of MODES) {
  describe(`gateway [${mode.name}]`, () => {
    let gw;
    const connectWs = (opts = {}) =>
      connectClient(`${gw.publicUrl}/ws`, { transports: mode.transports, ...opts });

    before(async () => {
      gw = await startGateway();
    });
    afterEach(() => {
      closeAllClients();
      closeAllRaw();
    });
    after(async () => {
      closeAllClients();
      closeAllRaw();
      if (gw) await gw.stop();
    });

    it('health and ready answer 200', T, async () => {
      const h = await fetch(`${gw.publicUrl}/health`);
      assert.equal(h.status, 200);
      assert.deepEqual(await h.json(), { status: 'ok' });
      const r = await fetch(`${gw.publicUrl}/ready`);
      assert.equal(r.status, 200);
      assert.deepEqual(await r.json(), { status: 'ready' });
    });

    it('Engine.IO errors on /socket.io/ and 404 for unknown paths', T, async () => {
      const get = async (pathAndQuery, init) => {
        const res = await fetch(`${gw.publicUrl}${pathAndQuery}`, init);
        return { status: res.status, text: await res.text() };
      };
      const eioErr = (r, code, message) => {
        assert.equal(r.status, 400, r.text);
        assert.deepEqual(JSON.parse(r.text), { code, message });
      };
      eioErr(await get('/socket.io/?EIO=3&transport=polling'), 5, 'Unsupported protocol version');
      eioErr(await get('/socket.io/?transport=polling'), 5, 'Unsupported protocol version');
      eioErr(await get('/socket.io/?EIO=4&transport=carrier-pigeon'), 0, 'Transport unknown');
      eioErr(await get('/socket.io/?EIO=4&transport=polling&sid=nope'), 1, 'Session ID unknown');
      eioErr(await get('/socket.io/?EIO=4&transport=polling', { method: 'POST', body: '4x' }), 2, 'Bad handshake method');
      const nf = await get('/no/such/path');
      assert.equal(nf.status, 404);
    });

    it('connected payload: socketId === socket.id, anonymous', T, async () => {
      const { socket, connected } = await connectWs();
      assert.deepEqual(Object.keys(connected).sort(), ['authenticated', 'serverTime', 'socketId', 'userId']);
      assert.equal(connected.socketId, socket.id);
      assert.equal(typeof socket.id, 'string');
      assert.equal(connected.userId, null);
      assert.equal(connected.authenticated, false);
      const st =
        typeof connected.serverTime === 'number' ? connected.serverTime : Date.parse(connected.serverTime);
      assert.ok(Number.isFinite(st) && Math.abs(st - Date.now()) < 60000, `serverTime ${connected.serverTime}`);
    });

    it('runs on the expected transport (upgrade to websocket / websocket only)', T, async () => {
      const { socket } = await connectWs();
      if (mode.transports) {
        assert.equal(socket.io.engine.transport.name, 'websocket');
      } else {
        assert.ok(await waitWebsocketTransport(socket, 5000), 'upgraded from polling to websocket within 5 s');
      }
      // the connection still works after the upgrade
      const pong = await emitAck(socket, 'ping');
      assert.equal(pong.ok, true);
    });

    it('main namespace / connects', T, async () => {
      const { socket } = await connectClient(`${gw.publicUrl}/`, {
        transports: mode.transports,
        waitConnected: false,
      });
      assert.equal(socket.connected, true);
      assert.equal(typeof socket.id, 'string');
    });

    it('other namespace gets connect_error "Invalid namespace"', T, async () => {
      const socket = rawClient(`${gw.publicUrl}/nope`, mode.transports ? { transports: mode.transports } : {});
      const err = await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no connect_error within 5 s')), 5000);
        socket.on('connect', () => {
          clearTimeout(t);
          reject(new Error('connected to an unknown namespace'));
        });
        socket.on('connect_error', (e) => {
          clearTimeout(t);
          resolve(e);
        });
      });
      assert.equal(err.message, 'Invalid namespace');
      assert.equal(socket.connected, false);
    });

    describe('subscribe / unsubscribe', () => {
      const single = () => {
        const S = sym('SUB');
        return [
          { payload: { channel: 'ticker', symbol: S }, rooms: [`ticker:${S}`] },
          { payload: { channel: 'ticker', symbol: 'all' }, rooms: ['ticker:all'] },
          { payload: { channel: 'orderbook', symbol: S }, rooms: [`orderbook:${S}`] },
          { payload: { channel: 'trades', symbol: S }, rooms: [`trades:${S}`] },
          { payload: { channel: 'klines', symbol: S, interval: '1m' }, rooms: [`klines:${S}:1m`] },
          { payload: { channel: 'klines', symbol: S, interval: '1M' }, rooms: [`klines:${S}:1M`] },
        ];
      };
      const multi = () => {
        const A = sym('MA');
        const B = sym('MB');
        return [
          { payload: { channel: 'ticker', symbols: [A, B] }, rooms: [`ticker:${A}`, `ticker:${B}`] },
          { payload: { channel: 'ticker', symbols: ['all', A] }, rooms: ['ticker:all', `ticker:${A}`] },
          { payload: { channel: 'orderbook', symbols: [A, B] }, rooms: [`orderbook:${A}`, `orderbook:${B}`] },
          { payload: { channel: 'trades', symbols: [A, B] }, rooms: [`trades:${A}`, `trades:${B}`] },
          {
            payload: { channel: 'klines', symbols: [A, B], interval: '15m' },
            rooms: [`klines:${A}:15m`, `klines:${B}:15m`],
          },
        ];
      };

      function expectedEvent(payload, rooms) {
        const ev = { channel: payload.channel, rooms };
        if ('symbol' in payload) ev.symbol = payload.symbol;
        if ('symbols' in payload) ev.symbols = payload.symbols;
        if ('interval' in payload) ev.interval = payload.interval;
        return ev;
      }
      // ack {ok:true, channel, rooms}; echoing the request's symbol/symbols/interval is tolerated
      function assertOkAck(ack, c) {
        const { ok, channel, rooms, ...extra } = ack;
        assert.deepEqual(
          { ok, channel, rooms: sortedRooms(rooms || []) },
          { ok: true, channel: c.payload.channel, rooms: sortedRooms(c.rooms) },
          JSON.stringify(ack),
        );
        for (const [k, v] of Object.entries(extra)) {
          assert.ok(['symbol', 'symbols', 'interval'].includes(k), `unexpected ack key ${k}: ${JSON.stringify(ack)}`);
          assert.deepEqual(v, c.payload[k], `ack ${k} echoes the request: ${JSON.stringify(ack)}`);
        }
      }
      function normalize(ev) {
        return ev && Array.isArray(ev.rooms) ? { ...ev, rooms: sortedRooms(ev.rooms) } : ev;
      }

      for (const [label, cases] of [
        ['single symbol', single],
        ['symbols array', multi],
      ]) {
        it(`${label}: subscribed / unsubscribed events without ack`, T, async () => {
          const { socket, rec } = await connectWs();
          for (const c of cases()) {
            socket.emit('subscribe', c.payload);
            const sub = await rec.next('subscribed');
            assert.deepEqual(normalize(sub), normalize(expectedEvent(c.payload, c.rooms)), JSON.stringify(c.payload));
            socket.emit('unsubscribe', c.payload);
            const unsub = await rec.next('unsubscribed');
            assert.deepEqual(
              normalize(unsub),
              normalize(expectedEvent(c.payload, c.rooms)),
              JSON.stringify(c.payload),
            );
          }
          assert.equal(rec.since(0, 'error').length, 0, `no error events: ${rec.summary()}`);
        });

        it(`${label}: ack-only answers with ack`, T, async () => {
          const { socket, rec } = await connectWs();
          const mark = rec.mark();
          for (const c of cases()) {
            const ack = await emitAck(socket, 'subscribe', c.payload);
            assertOkAck(ack, c);
            const uack = await emitAck(socket, 'unsubscribe', c.payload);
            assertOkAck(uack, c);
          }
          await sleep(QUIET_MS);
          const extra = rec.since(mark).filter((i) => ['subscribed', 'unsubscribed', 'error'].includes(i.event));
          assert.equal(extra.length, 0, `no subscribed/unsubscribed/error events with an ack: ${rec.summary()}`);
        });
      }

      it('bad payloads: error event per code (no ack)', T, async () => {
        const { socket, rec } = await connectWs();
        for (const c of badSubscribeCases()) {
          if (c.none) socket.emit('subscribe');
          else socket.emit('subscribe', c.payload);
          const err = await rec.next('error');
          assert.equal(err.code, c.code, `${c.name}: ${JSON.stringify(err)}`);
          assert.equal(typeof err.message, 'string', `${c.name}: message`);
          assert.ok(err.message.length > 0);
          if (!c.skipRequest) assert.deepEqual(err.request, c.payload, `${c.name}: request echoes the payload`);
          assert.deepEqual(
            Object.keys(err)
              .filter((k) => k !== 'request')
              .sort(),
            ['code', 'message'],
          );
        }
        await sleep(QUIET_MS);
        assert.equal(rec.since(0, 'subscribed').length, 0, `nothing subscribed: ${rec.summary()}`);
      });

      it('bad payloads: ack {ok:false, error:{code,message}} per code, no error event', T, async () => {
        const { socket, rec } = await connectWs();
        const mark = rec.mark();
        for (const c of badSubscribeCases()) {
          const ack = c.none ? await emitAck(socket, 'subscribe') : await emitAck(socket, 'subscribe', c.payload);
          assert.equal(ack.ok, false, `${c.name}: ${JSON.stringify(ack)}`);
          assert.deepEqual(Object.keys(ack).sort(), ['error', 'ok']);
          assert.equal(ack.error.code, c.code, `${c.name}: ${JSON.stringify(ack)}`);
          assert.equal(typeof ack.error.message, 'string');
        }
        await sleep(QUIET_MS);
        const extra = rec.since(mark).filter((i) => ['subscribed', 'error'].includes(i.event));
        assert.equal(extra.length, 0, `no events besides the acks: ${rec.summary()}`);
      });

      it('unsubscribe validates like subscribe', T, async () => {
        const { socket, rec } = await connectWs();
        socket.emit('unsubscribe', { channel: 'foo', symbol: 'BTCUSDT' });
        assert.equal((await rec.next('error')).code, 'INVALID_CHANNEL');
        socket.emit('unsubscribe', { channel: 'trades', symbol: 'btc' });
        assert.equal((await rec.next('error')).code, 'INVALID_SYMBOL');
        const ack = await emitAck(socket, 'unsubscribe', { channel: 'klines', symbol: 'BTCUSDT', interval: '9m' });
        assert.equal(ack.ok, false);
        assert.equal(ack.error.code, 'INVALID_INTERVAL');
        const ack2 = await emitAck(socket, 'unsubscribe', 'nope');
        assert.equal(ack2.ok, false);
        assert.equal(ack2.error.code, 'BAD_REQUEST');
      });

      it('a symbols list is all-or-nothing', T, async () => {
        const { socket, rec } = await connectWs();
        const A = sym('AON');
        const ack = await emitAck(socket, 'subscribe', { channel: 'trades', symbols: [A, 'not-valid'] });
        assert.equal(ack.ok, false);
        assert.equal(ack.error.code, 'INVALID_SYMBOL');
        await ingestOk(gw, { type: 'trade', symbol: A, data: tradeData(A) });
        await sleep(QUIET_MS);
        assert.equal(rec.since(0, 'trade').length, 0, `the valid symbol was not subscribed: ${rec.summary()}`);
      });

      it('subscription limit answers SUBSCRIPTION_LIMIT', { timeout: 60000 }, async () => {
        const { socket } = await connectWs();
        const batch = 100;
        let total = 0;
        let failure = null;
        for (let b = 0; b < 100 && !failure; b++) {
          const symbols = Array.from({ length: batch }, (_, i) => `L${RUN}B${b}I${i}`);
          let ack;
          for (let attempt = 0; attempt < 5; attempt++) {
            ack = await emitAck(socket, 'subscribe', { channel: 'trades', symbols });
            if (ack.ok || ack.error.code !== 'RATE_LIMITED') break;
            await sleep(1100);
          }
          if (ack.ok) total += ack.rooms.length;
          else failure = ack.error;
        }
        assert.ok(failure, `still subscribing after ${total} rooms without SUBSCRIPTION_LIMIT`);
        assert.equal(failure.code, 'SUBSCRIPTION_LIMIT', JSON.stringify(failure));
        assert.ok(total > 0, 'some subscriptions succeeded before the limit');
      });
    });

    describe('data delivery', () => {
      it('ticker.update on ticker:S', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('TK');
        await subscribeOk(socket, { channel: 'ticker', symbol: S });
        const D = tickerData(S);
        await ingestOk(gw, { type: 'ticker.update', symbol: S, data: D });
        assertEnvelope(await rec.next('ticker.update'), `ticker:${S}`, D);
      });

      it('orderbook.update on orderbook:S', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('OB');
        await subscribeOk(socket, { channel: 'orderbook', symbol: S });
        await ingestOk(gw, { type: 'orderbook.update', symbol: S, data: bookData(S) });
        assertEnvelope(await rec.next('orderbook.update'), `orderbook:${S}`, bookSeen(S));
      });

      it('trade on trades:S', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('TR');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        const D = tradeData(S);
        await ingestOk(gw, { type: 'trade', symbol: S, data: D });
        assertEnvelope(await rec.next('trade'), `trades:${S}`, D);
      });

      it('kline.update on klines:S:I for every interval', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('KL');
        await subscribeOk(socket, { channel: 'klines', symbols: [S], interval: '1m' });
        for (const I of INTERVALS) {
          if (I !== '1m') await subscribeOk(socket, { channel: 'klines', symbol: S, interval: I });
        }
        const events = INTERVALS.map((I, n) => ({ type: 'kline.update', symbol: S, interval: I, data: klineData(S, I, n) }));
        await ingestOk(gw, events);
        for (const [n, I] of INTERVALS.entries()) {
          const msg = await rec.next('kline.update', { where: (m) => m && m.channel === `klines:${S}:${I}` });
          assertEnvelope(msg, `klines:${S}:${I}`, klineData(S, I, n));
        }
      });

      it('symbols subscription delivers for each symbol', T, async () => {
        const { socket, rec } = await connectWs();
        const A = sym('SA');
        const B = sym('SB');
        await subscribeOk(socket, { channel: 'trades', symbols: [A, B] });
        await ingestOk(gw, [
          { type: 'trade', symbol: A, data: tradeData(A, 1) },
          { type: 'trade', symbol: B, data: tradeData(B, 2) },
        ]);
        const got = await rec.collect('trade', 2);
        const byRoom = Object.fromEntries(got.map((m) => [m.channel, m]));
        assertEnvelope(byRoom[`trades:${A}`], `trades:${A}`, tradeData(A, 1));
        assertEnvelope(byRoom[`trades:${B}`], `trades:${B}`, tradeData(B, 2));
      });

      it('manual broadcast {room, event, data}', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('MB');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        const D = { note: 'maintenance', at: 1234, nested: { list: [1, 'two', null, true] } };
        await ingestOk(gw, { room: `trades:${S}`, event: 'system.notice', data: D });
        assertEnvelope(await rec.next('system.notice'), `trades:${S}`, D);
        // scalar data passes through too
        await ingestOk(gw, { room: `trades:${S}`, event: 'system.count', data: 7 });
        assertEnvelope(await rec.next('system.count'), `trades:${S}`, 7);
      });

      it('unsubscribe stops delivery', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('UN');
        const subs = [
          { channel: 'ticker', symbol: S },
          { channel: 'orderbook', symbol: S },
          { channel: 'trades', symbol: S },
          { channel: 'klines', symbol: S, interval: '5m' },
        ];
        for (const p of subs) await subscribeOk(socket, p);
        const batch = (n) => [
          { type: 'ticker.update', symbol: S, data: tickerData(S, n) },
          { type: 'orderbook.update', symbol: S, data: bookData(S, n) },
          { type: 'trade', symbol: S, data: tradeData(S, n) },
          { type: 'kline.update', symbol: S, interval: '5m', data: klineData(S, '5m', n) },
        ];
        await ingestOk(gw, batch(1));
        assertEnvelope(await rec.next('ticker.update'), `ticker:${S}`, tickerData(S, 1));
        assertEnvelope(await rec.next('orderbook.update'), `orderbook:${S}`, bookSeen(S, 1));
        assertEnvelope(await rec.next('trade'), `trades:${S}`, tradeData(S, 1));
        assertEnvelope(await rec.next('kline.update'), `klines:${S}:5m`, klineData(S, '5m', 1));
        for (const p of subs) await unsubscribeOk(socket, p);
        const mark = rec.mark();
        await ingestOk(gw, batch(2));
        await ingestOk(gw, { room: `trades:${S}`, event: 'system.notice', data: 1 });
        // > 1 s: a throttled (trailing-edge) ticker/kline update must not come either
        await sleep(1300);
        assert.deepEqual(
          rec.since(mark).map((i) => i.event),
          [],
          `nothing after unsubscribe: ${rec.summary()}`,
        );
      });

      it('a client never receives a room it did not join', T, async () => {
        const a = await connectWs();
        const b = await connectWs();
        const SA = sym('IA');
        const SB = sym('IB');
        await subscribeOk(a.socket, { channel: 'trades', symbol: SA });
        await subscribeOk(a.socket, { channel: 'ticker', symbol: SA });
        await subscribeOk(b.socket, { channel: 'trades', symbol: SB });
        await subscribeOk(b.socket, { channel: 'orderbook', symbol: SA });
        await ingestOk(gw, [
          { type: 'trade', symbol: SA, data: tradeData(SA, 1) },
          { type: 'trade', symbol: SB, data: tradeData(SB, 2) },
          { type: 'ticker.update', symbol: SA, data: tickerData(SA, 3) },
          { type: 'orderbook.update', symbol: SA, data: bookData(SA, 4) },
          { type: 'ticker.update', symbol: SB, data: tickerData(SB, 5) },
          { type: 'kline.update', symbol: SA, interval: '1m', data: klineData(SA, '1m', 6) },
          { room: `trades:${SB}`, event: 'only.b', data: 1 },
        ]);
        assertEnvelope(await a.rec.next('trade'), `trades:${SA}`, tradeData(SA, 1));
        assertEnvelope(await a.rec.next('ticker.update'), `ticker:${SA}`, tickerData(SA, 3));
        assertEnvelope(await b.rec.next('trade'), `trades:${SB}`, tradeData(SB, 2));
        assertEnvelope(await b.rec.next('orderbook.update'), `orderbook:${SA}`, bookSeen(SA, 4));
        assertEnvelope(await b.rec.next('only.b'), `trades:${SB}`, 1);
        await sleep(QUIET_MS);
        const dataEvents = (rec) => rec.since(0).filter((i) => i.event !== 'connected');
        assert.deepEqual(
          dataEvents(a.rec).map((i) => `${i.event} ${i.args[0].channel}`).sort(),
          [`ticker.update ticker:${SA}`, `trade trades:${SA}`],
        );
        assert.deepEqual(
          dataEvents(b.rec).map((i) => `${i.event} ${i.args[0].channel}`).sort(),
          [`only.b trades:${SB}`, `orderbook.update orderbook:${SA}`, `trade trades:${SB}`],
        );
      });

      it('private events are accepted but never reach an anonymous client', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('PV');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        await subscribeOk(socket, { channel: 'ticker', symbol: 'all' });
        const mark = rec.mark();
        await ingestOk(gw, [
          { type: 'order.filled', userId: 'u-1', data: { orderId: 'o-1', filledQuantity: '0.5' } },
          { type: 'balance.updated', userId: 'u-1', data: { walletId: 'w-1', amount: '1.00' } },
          { type: 'trade.executed', userId: 'u-1', data: { tradeId: 't-1', role: 'maker' } },
          { type: 'deposit.confirmed', userId: 'u-1', data: { depositId: 'd-1', confirmations: 12 } },
        ]);
        await sleep(QUIET_MS);
        const got = rec.since(mark).filter((i) => i.event !== 'tickers.update');
        assert.deepEqual(got.map((i) => i.event), []);
      });

      it('500 trades in one NDJSON batch arrive complete and in order', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('OR');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        const N = 500;
        const lines = [];
        for (let i = 0; i < N; i++) lines.push(JSON.stringify({ type: 'trade', symbol: S, data: tradeData(S, i) }));
        const res = await gw.ingest(`${lines.join('\n')}\n`);
        assert.equal(res.status, 202, res.text);
        assert.deepEqual(res.body, { accepted: N });
        const got = await rec.collect('trade', N, { timeout: 15000 });
        for (let i = 0; i < N; i++) assertEnvelope(got[i], `trades:${S}`, tradeData(S, i));
        await sleep(200);
        assert.equal(rec.since(0, 'trade').length, N, 'no duplicates');
      });
    });

    describe('ping and private', () => {
      it('ping -> pong {timestamp}', T, async () => {
        const { socket, rec } = await connectWs();
        const before = Date.now();
        socket.emit('ping');
        const pong = await rec.next('pong');
        assert.deepEqual(Object.keys(pong), ['timestamp']);
        assert.ok(Number.isInteger(pong.timestamp));
        assert.ok(pong.timestamp >= before - 5000 && pong.timestamp <= Date.now() + 5000, `timestamp ${pong.timestamp}`);
      });

      it('ping with ack -> ack {ok:true, timestamp} only', T, async () => {
        const { socket, rec } = await connectWs();
        const mark = rec.mark();
        const ack = await emitAck(socket, 'ping');
        assert.deepEqual(Object.keys(ack).sort(), ['ok', 'timestamp']);
        assert.equal(ack.ok, true);
        assert.ok(Number.isInteger(ack.timestamp) && Math.abs(ack.timestamp - Date.now()) < 60000);
        await sleep(QUIET_MS);
        assert.equal(rec.since(mark, 'pong').length, 0, 'no pong event with an ack');
      });

      it('subscribe.private on an anonymous connection -> UNAUTHORIZED', T, async () => {
        const { socket, rec } = await connectWs();
        socket.emit('subscribe.private', { channel: 'user.orders' });
        const err = await rec.next('error');
        assert.equal(err.code, 'UNAUTHORIZED');
        assert.equal(typeof err.message, 'string');
        assert.deepEqual(err.request, { channel: 'user.orders' });
        const ack = await emitAck(socket, 'subscribe.private', { channel: 'user.balances' });
        assert.equal(ack.ok, false);
        assert.equal(ack.error.code, 'UNAUTHORIZED');
      });
    });

    describe('ingest endpoint', () => {
      it('202 {accepted:n} for an object, an array and NDJSON', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('IN');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        const ev = (n) => ({ type: 'trade', symbol: S, data: tradeData(S, n) });
        let res = await gw.ingest(ev(0));
        assert.equal(res.status, 202, res.text);
        assert.deepEqual(res.body, { accepted: 1 });
        res = await gw.ingest([ev(1), ev(2)]);
        assert.equal(res.status, 202, res.text);
        assert.deepEqual(res.body, { accepted: 2 });
        res = await gw.ingest([ev(3), ev(4), ev(5)].map((e) => JSON.stringify(e)).join('\n'));
        assert.equal(res.status, 202, res.text);
        assert.deepEqual(res.body, { accepted: 3 });
        const got = await rec.collect('trade', 6);
        got.forEach((m, i) => assertEnvelope(m, `trades:${S}`, tradeData(S, i)));
      });

      it('400 names the first bad event and applies none of the batch', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('BB');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        await subscribeOk(socket, { channel: 'ticker', symbol: S });
        const good = (n) => ({ type: 'trade', symbol: S, data: tradeData(S, n) });
        const goodTicker = { type: 'ticker.update', symbol: S, data: tickerData(S) };
        const bad = [
          ['unknown type', { type: 'nope.update', symbol: S, data: {} }],
          ['lowercase symbol', { type: 'trade', symbol: 'btcusdt', data: {} }],
          ['symbol too long', { type: 'trade', symbol: 'A'.repeat(21), data: {} }],
          ['kline interval 2m', { type: 'kline.update', symbol: S, interval: '2m', data: {} }],
          ['kline without interval', { type: 'kline.update', symbol: S, data: {} }],
          ['missing data', { type: 'trade', symbol: S }],
          ['private event without userId', { type: 'order.filled', data: { orderId: 'x' } }],
          ['broadcast room not a string', { room: 5, event: 'x.y', data: 1 }],
          ['broadcast room empty', { room: '', event: 'x.y', data: 1 }],
          ['broadcast event not a string', { room: `trades:${S}`, event: 7, data: 1 }],
          ['broadcast event empty', { room: `trades:${S}`, event: '', data: 1 }],
          ...RESERVED.map((e) => [`reserved event ${e}`, { room: `trades:${S}`, event: e, data: 1 }]),
        ];
        // the brief's case: a good event then a bad one
        let res = await gw.ingest([good(1), bad[0][1]]);
        assert.equal(res.status, 400, res.text);
        assert.equal(res.body.error, 'BAD_EVENT');
        assert.equal(res.body.index, 1);
        assert.equal(typeof res.body.message, 'string');
        for (const [name, ev] of bad) {
          // alone
          res = await gw.ingest(ev);
          assert.equal(res.status, 400, `${name} alone: ${res.status} ${res.text}`);
          assert.equal(res.body && res.body.error, 'BAD_EVENT', `${name}: ${res.text}`);
          assert.equal(res.body.index, 0, `${name}: ${res.text}`);
          // third in a batch (array and NDJSON), followed by another bad one
          const batch = [good(2), goodTicker, ev, bad[0][1]];
          res = await gw.ingest(batch);
          assert.equal(res.status, 400, `${name} in array: ${res.text}`);
          assert.deepEqual([res.body.error, res.body.index], ['BAD_EVENT', 2], `${name} in array: ${res.text}`);
          res = await gw.ingest(batch.map((e) => JSON.stringify(e)).join('\n'));
          assert.equal(res.status, 400, `${name} in NDJSON: ${res.text}`);
          assert.deepEqual([res.body.error, res.body.index], ['BAD_EVENT', 2], `${name} in NDJSON: ${res.text}`);
        }
        await sleep(QUIET_MS);
        const got = rec.since(0).filter((i) => i.event !== 'connected');
        assert.deepEqual(got.map((i) => i.event), [], `no event of a rejected batch was applied: ${rec.summary()}`);
      });

      it('unparsable body -> 400 BAD_JSON, nothing applied', T, async () => {
        const { socket, rec } = await connectWs();
        const S = sym('BJ');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        let res = await gw.ingest('{"type":"trade",', { contentType: 'application/json' });
        assert.equal(res.status, 400, res.text);
        assert.equal(res.body.error, 'BAD_JSON');
        assert.ok(res.body.index === null || Number.isInteger(res.body.index), res.text);
        assert.equal(typeof res.body.message, 'string');
        const good = JSON.stringify({ type: 'trade', symbol: S, data: tradeData(S) });
        res = await gw.ingest(`${good}\n{"type": nope}\n${good}\n`);
        assert.equal(res.status, 400, res.text);
        assert.equal(res.body.error, 'BAD_JSON');
        assert.ok(res.body.index === 1 || res.body.index === null, `index names line 1 (or null): ${res.text}`);
        await sleep(QUIET_MS);
        assert.equal(rec.since(0, 'trade').length, 0, 'nothing applied');
      });
    });

    describe('ticker:all', () => {
      let gw2;
      before(async () => {
        gw2 = await startGateway();
      });
      after(async () => {
        closeAllClients();
        if (gw2) await gw2.stop();
      });

      it('tickers.update on ticker:all carries [D]', T, async () => {
        const { socket, rec } = await connectClient(`${gw2.publicUrl}/ws`, { transports: mode.transports });
        await subscribeOk(socket, { channel: 'ticker', symbol: 'all' });
        const S = sym('AL');
        const D = tickerData(S);
        await ingestOk(gw2, { type: 'ticker.update', symbol: S, data: D });
        const msg = await rec.next('tickers.update', { where: (m) => m && Array.isArray(m.data) && m.data.length > 0 });
        assertEnvelope(msg, 'ticker:all', [D]);
        // ticker:all is not ticker:S
        assert.equal(rec.since(0, 'ticker.update').length, 0);
      });
    });

    describe('heartbeat (--ping-interval-ms 200 --ping-timeout-ms 200)', () => {
      let gw3;
      before(async () => {
        gw3 = await startGateway(['--ping-interval-ms', '200', '--ping-timeout-ms', '200']);
      });
      after(async () => {
        closeAllClients();
        closeAllRaw();
        if (gw3) await gw3.stop();
      });

      it('handshake announces the configured heartbeat', T, async () => {
        const res = await fetch(`${gw3.publicUrl}/socket.io/?EIO=4&transport=polling`);
        assert.equal(res.status, 200);
        const text = await res.text();
        assert.equal(text[0], '0');
        const open = JSON.parse(text.slice(1));
        assert.equal(open.pingInterval, 200);
        assert.equal(open.pingTimeout, 200);
      });

      it('an idle connection stays alive ~2 s and still receives data', T, async () => {
        const { socket, rec } = await connectClient(`${gw3.publicUrl}/ws`, { transports: mode.transports });
        const S = sym('HB');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        let disconnected = null;
        socket.on('disconnect', (reason) => {
          disconnected = reason;
        });
        await sleep(2000);
        assert.equal(disconnected, null, `disconnected while idle: ${disconnected}`);
        assert.equal(socket.connected, true);
        const D = tradeData(S);
        await ingestOk(gw3, { type: 'trade', symbol: S, data: D });
        assertEnvelope(await rec.next('trade'), `trades:${S}`, D);
      });

      it('a client that never answers pings is closed', T, async () => {
        const raw = new RawWs(`${gw3.wsUrl}/socket.io/?EIO=4&transport=websocket`, { autoPong: false });
        const open = await raw.next(3000);
        assert.equal(open[0], '0');
        raw.send('40/ws,');
        // pings arrive, we stay silent: closed after pingInterval + pingTimeout (400 ms)
        await raw.waitClose(3000);
        assert.ok(raw.pingsSeen >= 1, 'the server pinged before closing');
      });
    });

    describe('ingest token (--ingest-token)', () => {
      let gw4;
      const TOKEN = 'sekret-token-123';
      before(async () => {
        gw4 = await startGateway(['--ingest-token', TOKEN]);
      });
      after(async () => {
        closeAllClients();
        if (gw4) await gw4.stop();
      });

      it('401 without / with a wrong token, 202 with it', T, async () => {
        const { socket, rec } = await connectClient(`${gw4.publicUrl}/ws`, { transports: mode.transports });
        const S = sym('TO');
        await subscribeOk(socket, { channel: 'trades', symbol: S });
        const ev = (n) => ({ type: 'trade', symbol: S, data: tradeData(S, n) });
        let res = await gw4.ingest(ev(1));
        assert.equal(res.status, 401, res.text);
        assert.equal(res.body.error, 'UNAUTHORIZED');
        assert.equal(typeof res.body.message, 'string');
        res = await gw4.ingest(ev(2), { token: 'wrong' });
        assert.equal(res.status, 401, res.text);
        assert.equal(res.body.error, 'UNAUTHORIZED');
        res = await gw4.ingest(ev(3), { headers: { authorization: TOKEN } });
        assert.equal(res.status, 401, `token without "Bearer": ${res.text}`);
        res = await gw4.ingest(ev(4), { token: TOKEN });
        assert.equal(res.status, 202, res.text);
        assert.deepEqual(res.body, { accepted: 1 });
        assertEnvelope(await rec.next('trade'), `trades:${S}`, tradeData(S, 4));
        await sleep(QUIET_MS);
        assert.equal(rec.since(0, 'trade').length, 1, 'refused batches were not applied');
      });
    });

    describe('sharded (--shards 2)', () => {
      let gw5;
      before(async () => {
        gw5 = await startGateway(['--shards', '2']);
      });
      after(async () => {
        closeAllClients();
        if (gw5) await gw5.stop();
      });

      it('20 clients each get every event of their room exactly once, in order', { timeout: 60000 }, async () => {
        const ROOMS = 4;
        const PER_ROOM = 25;
        const symbols = Array.from({ length: ROOMS }, () => sym('SH'));
        const clients = await Promise.all(
          Array.from({ length: 20 }, () => connectClient(`${gw5.publicUrl}/ws`, { transports: mode.transports })),
        );
        // socket ids are unique across shards
        assert.equal(new Set(clients.map((c) => c.socket.id)).size, 20);
        await Promise.all(
          clients.map((c, i) => subscribeOk(c.socket, { channel: 'trades', symbol: symbols[i % ROOMS] })),
        );
        const lines = [];
        for (let n = 0; n < PER_ROOM; n++) {
          for (const S of symbols) lines.push(JSON.stringify({ type: 'trade', symbol: S, data: tradeData(S, n) }));
        }
        const res = await gw5.ingest(lines.join('\n'));
        assert.equal(res.status, 202, res.text);
        assert.deepEqual(res.body, { accepted: ROOMS * PER_ROOM });
        await Promise.all(
          clients.map(async (c, i) => {
            const S = symbols[i % ROOMS];
            const got = await c.rec.collect('trade', PER_ROOM, { timeout: 15000 });
            got.forEach((m, n) => assertEnvelope(m, `trades:${S}`, tradeData(S, n)));
          }),
        );
        await sleep(500);
        for (const c of clients) assert.equal(c.rec.since(0, 'trade').length, PER_ROOM, 'exactly once');
      });
    });
  });
}
