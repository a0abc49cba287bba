// permessage-deflate: the official socket.io-client (which offers it by default in Node) and
// a raw `ws` client get compressed frames and decode every event unchanged; one broadcast is
// compressed once for all of them; clients that do not offer it, and a gateway started with
// --compression off, get plain frames; a compressed bomb is closed with 1009.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, waitFor } from './harness.mjs';
import { MODES, connectClient, closeAllClients, closeAllRaw, emitAck, RawWs } from './clients.mjs';

const T = { timeout: 30000 };
let seq = 0;
const sym = () => `DF${Date.now().toString(36).toUpperCase().slice(-5)}${++seq}`.slice(0, 20);

/** The sum of the samples of `name` (with `labels`) in the gateway's /metrics. */
async function metric(gw, name, labels = '') {
  const text = await (await fetch(`${gw.internalUrl}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{${labels}`) || line.startsWith(`${name} `)) {
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return total;
}

/** A 100-level-a-side order book snapshot, as the backend ingests it. */
function deepBook(n) {
  const side = (from, step) =>
    Array.from({ length: 100 }, (_, i) => [`${(from + i * step).toFixed(2)}`, `${(1 + ((i * 7 + n) % 13) / 10).toFixed(3)}`]);
  return { type: 'snapshot', bids: side(44999, -0.5), asks: side(45001, 0.5), lastUpdateId: 1000 + n };
}

const tradeData = (s, n) => ({ tradeId: `t-${n}`, symbol: s, price: `45000.${n}`, quantity: '0.125', side: 'buy', timestamp: 1700000000000 + n });

describe('permessage-deflate', () => {
  let gw;
  before(async () => {
    gw = await startGateway(['--shards', '2', '--orderbook-depth', '100']);
  });
  after(async () => {
    closeAllClients();
    closeAllRaw();
    await gw.stop();
  });
  afterEach(() => {
    closeAllClients();
    closeAllRaw();
  });

  for (const mode of MODES) {
    it(`socket.io-client (${mode.name}) decodes compressed books and trades unchanged`, T, async () => {
      const S = sym();
      assert.equal((await gw.ingest({ type: 'orderbook.update', symbol: S, data: deepBook(0) })).status, 202);
      const before = await metric(gw, 'gateway_deflate_bytes_total', 'stage="after"');
      const clients = [];
      for (let i = 0; i < 3; i++) {
        const c = await connectClient(`${gw.publicUrl}/ws`, { transports: mode.transports });
        if (!mode.transports) await waitFor(() => c.socket.io.engine.transport.name === 'websocket', 5000, 'upgrade');
        await emitAck(c.socket, 'subscribe', { channel: 'orderbook', symbol: S });
        await emitAck(c.socket, 'subscribe', { channel: 'trades', symbol: S });
        clients.push(c);
      }
      for (const { rec } of clients) {
        const snap = await rec.next('orderbook.update', { where: (m) => m.data.type === 'snapshot' });
        assert.equal(snap.data.bids.length, 100);
        assert.deepEqual(snap.data.bids[0], deepBook(0).bids[0]);
        assert.deepEqual(snap.data.asks[99], deepBook(0).asks[99]);
      }
      const compressionsBefore = await metric(gw, 'gateway_compressions_total');
      const trades = Array.from({ length: 20 }, (_, n) => ({ type: 'trade', symbol: S, data: tradeData(S, n) }));
      assert.equal((await gw.ingest([{ type: 'orderbook.update', symbol: S, data: deepBook(1) }, ...trades])).status, 202);
      for (const { rec } of clients) {
        const snap = await rec.next('orderbook.update', { where: (m) => m.data.lastUpdateId === 1001 });
        assert.deepEqual(snap.data.bids, deepBook(1).bids);
        assert.deepEqual(snap.data.asks, deepBook(1).asks);
        for (let n = 0; n < 20; n++) {
          const t = await rec.next('trade', { where: (m) => m.data.tradeId === `t-${n}` });
          assert.deepEqual(t.data, tradeData(S, n));
        }
      }
      const after = await metric(gw, 'gateway_deflate_bytes_total', 'stage="after"');
      assert.ok(after > before, 'frames went out compressed');
      // 21 broadcasts (the new snapshot and 20 trades) to three subscribers on up to two
      // shards: each compressed once at most, not once per subscriber (63).
      const compressions = (await metric(gw, 'gateway_compressions_total')) - compressionsBefore;
      assert.ok(compressions >= 1 && compressions <= 21, `compressions: ${compressions}`);
    });
  }

  it('a raw ws client negotiates no context takeover; one that offers nothing gets plain frames', T, async () => {
    const S = sym();
    const url = `${gw.wsUrl}/socket.io/?EIO=4&transport=websocket`;
    const offering = new RawWs(url);
    const plain = new RawWs(url, { perMessageDeflate: false });
    const answered = (c) => new Promise((r) => c.ws.once('upgrade', (res) => r(res.headers['sec-websocket-extensions'])));
    const [offered, none] = await Promise.all([answered(offering), answered(plain)]);
    await Promise.all([offering.opened, plain.opened]);
    assert.equal(offered, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    assert.equal(none, undefined);
    assert.equal(offering.ws.extensions, 'permessage-deflate');
    assert.equal(plain.ws.extensions, '');
    const rawFrames = [];
    plain.ws._socket.on('data', (d) => rawFrames.push(Buffer.from(d)));
    for (const c of [offering, plain]) {
      await c.next(); // open
      c.send('40/ws,');
      await c.next(); // connect ack
      await c.next(); // connected
      c.send(`42/ws,1["subscribe",{"channel":"orderbook","symbol":"${S}"}]`);
    }
    assert.equal((await gw.ingest({ type: 'orderbook.update', symbol: S, data: deepBook(2) })).status, 202);
    for (const c of [offering, plain]) {
      const msgs = [];
      while (!msgs.some((m) => m.includes('"lastUpdateId":1002'))) msgs.push(await c.next(5000));
      const snap = JSON.parse(msgs.find((m) => m.includes('"lastUpdateId":1002')).slice('42/ws,'.length))[1];
      assert.deepEqual(snap.data.bids, deepBook(2).bids);
    }
    // No frame to the plain client has RSV1 set.
    assert.ok(rawFrames.length > 0 && rawFrames.every((f) => (f[0] & 0x40) === 0));
  });

  it('a compressed message that inflates past --max-payload is closed with 1009', T, async () => {
    const small = await startGateway(['--max-payload', '10000']);
    try {
      const c = new RawWs(`${small.wsUrl}/socket.io/?EIO=4&transport=websocket`);
      await c.opened;
      await c.next();
      // About 1 KB on the wire, 1 MB inflated.
      c.ws.send('4' + 'a'.repeat(1 << 20), { compress: true });
      const info = await c.waitClose(5000);
      assert.equal(info.code, 1009);
      // The gateway is still there for everyone else.
      const d = new RawWs(`${small.wsUrl}/socket.io/?EIO=4&transport=websocket`);
      await d.opened;
      assert.match(await d.next(), /^0\{"sid"/);
    } finally {
      await small.stop();
    }
  });

  it('--compression off negotiates nothing', T, async () => {
    const off = await startGateway(['--compression', 'off']);
    try {
      const c = new RawWs(`${off.wsUrl}/socket.io/?EIO=4&transport=websocket`);
      await c.opened;
      assert.equal(c.ws.extensions, '');
      assert.match(await c.next(), /^0\{"sid"/);
    } finally {
      await off.stop();
    }
  });
});
