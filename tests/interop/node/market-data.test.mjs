// Market-data semantics through socket.io-client v4 (default transports and
// WebSocket-only): ticker throttling, last value on subscribe, order book
// rebuild from snapshot + deltas. What is asserted comes from
// docs/test-interface.md, "Market-data semantics".
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, sleep, waitFor as waitUntil } from './harness.mjs';
import { MODES, connectClient, closeAllClients, emitAck, assertEnvelope, topChecksum } from './clients.mjs';

const T = { timeout: 60000 };
const QUIET_MS = 400;

const RUN = Math.floor(Math.random() * 36 ** 3)
  .toString(36)
  .toUpperCase()
  .padStart(3, '0');
let symSeq = 0;
function sym(prefix = 'M') {
  symSeq += 1;
  return `${prefix}${RUN}${symSeq}`.slice(0, 20);
}


const ticker = (s, seq) => ({ symbol: s, lastPrice: `${45000 + seq}.00`, volume24h: `${seq}.5`, seq });
const tickerEv = (s, seq) => ({ type: 'ticker.update', symbol: s, data: ticker(s, seq) });
const kline = (s, interval, openTime, seq, closed = false) => ({
  symbol: s,
  interval,
  openTime,
  closeTime: openTime + 59999,
  open: '100.00',
  high: `${110 + seq}.00`,
  low: '90.00',
  close: `${100 + seq}.00`,
  volume: `${seq}.0`,
  trades: seq,
  closed,
  seq,
});
const klineEv = (s, interval, data) => ({ type: 'kline.update', symbol: s, interval, data });
const bookEv = (s, data) => ({ type: 'orderbook.update', symbol: s, data });

async function ingestOk(gw, events) {
  const res = await gw.ingest(events);
  const n = Array.isArray(events) ? events.length : 1;
  assert.equal(res.status, 202, `ingest answered ${res.status} ${res.text}`);
  assert.deepEqual(res.body, { accepted: n });
}
async function subscribeOk(socket, payload) {
  const ack = await emitAck(socket, 'subscribe', payload);
  assert.equal(ack && ack.ok, true, `subscribe ${JSON.stringify(payload)} acked ${JSON.stringify(ack)}`);
  return ack;
}
const named = (rec, event, from = 0) => rec.since(from, event);

/** Subscribe with an ack; the first `event` recorded after the ack and how long it took. */
async function firstAfterAck(socket, rec, payload, event) {
  const mark = rec.mark();
  const t = Date.now();
  await subscribeOk(socket, payload);
  const item = await waitUntil(() => rec.since(mark, event)[0], 5000, `${event} after subscribing`);
  return { msg: item.args[0], dt: item.at - t };
}

// ---------------------------------------------------------------------------
// order book: backend generator, reference book, client-side follower
// ---------------------------------------------------------------------------
class Book {
  constructor() {
    this.bids = new Map(); // Number(price) -> [price, qty]
    this.asks = new Map();
    this.last = null;
  }
  apply(d) {
    if (d.type === 'snapshot') {
      this.bids = new Map(d.bids.map(([p, q]) => [Number(p), [p, q]]));
      this.asks = new Map(d.asks.map(([p, q]) => [Number(p), [p, q]]));
    } else {
      for (const [side, levels] of [
        [this.bids, d.bids],
        [this.asks, d.asks],
      ]) {
        for (const [p, q] of levels) {
          if (Number(q) === 0) side.delete(Number(p));
          else side.set(Number(p), [p, q]);
        }
      }
    }
    this.last = d.lastUpdateId;
  }
  top(depth = Infinity) {
    const bids = [...this.bids.keys()].sort((a, b) => b - a).slice(0, depth).map((k) => this.bids.get(k));
    const asks = [...this.asks.keys()].sort((a, b) => a - b).slice(0, depth).map((k) => this.asks.get(k));
    return { bids, asks };
  }
  checksum() {
    return topChecksum(this.top(10));
  }
}


/** xorshift32, so a failing run can be replayed from its seed. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

class BookGen {
  constructor(seed, mid = 20000, band = 80) {
    this.r = rng(seed);
    this.mid = mid;
    this.band = band;
    this.ref = new Book();
  }
  int(lo, hi) {
    return lo + Math.floor(this.r() * (hi - lo + 1));
  }
  price(bid) {
    const off = this.int(1, this.band) * 0.5;
    return (bid ? this.mid - off : this.mid + off).toFixed(2);
  }
  qty() {
    return (this.int(1, 99999) / 1000).toFixed(3);
  }
  snapshot(levels = 40, lastUpdateId = 1000) {
    const bids = new Set();
    const asks = new Set();
    while (bids.size < levels) bids.add(this.price(true));
    while (asks.size < levels) asks.add(this.price(false));
    const d = {
      type: 'snapshot',
      bids: [...bids].sort((a, b) => b - a).map((p) => [p, this.qty()]),
      asks: [...asks].sort((a, b) => a - b).map((p) => [p, this.qty()]),
      lastUpdateId,
    };
    this.ref.apply(d);
    return d;
  }
  delta({ gap = 0, touchBest = false } = {}) {
    const first = this.ref.last + 1 + gap;
    const d = { type: 'delta', bids: [], asks: [], firstUpdateId: first, lastUpdateId: first + this.int(0, 2) };
    const used = new Set();
    const k = this.int(1, 5);
    for (let i = 0; i < k; i++) {
      const bid = this.r() < 0.5;
      const side = bid ? this.ref.bids : this.ref.asks;
      const x = this.r();
      let p;
      let q;
      if (x < 0.3 && side.size) {
        const keys = [...side.keys()];
        p = side.get(keys[this.int(0, keys.length - 1)])[0];
        q = '0';
      } else if (x < 0.33) {
        p = this.price(bid);
        q = '0';
      } else {
        p = this.price(bid);
        q = this.qty();
      }
      const key = `${bid}:${Number(p)}`;
      if (used.has(key)) continue;
      used.add(key);
      (bid ? d.bids : d.asks).push([p, q]);
    }
    if (touchBest) {
      const best = Math.max(...this.ref.bids.keys());
      d.bids = d.bids.filter(([p]) => Number(p) !== best);
      const [p, old] = this.ref.bids.get(best);
      let q = old;
      while (q === old) q = this.qty();
      d.bids.push([p, q]);
    }
    this.ref.apply(d);
    return d;
  }
  refView(symbol, depth) {
    const top = this.ref.top(depth);
    return { symbol, type: 'snapshot', reason: 'query', ...top, lastUpdateId: this.ref.last, checksum: topChecksum(top) };
  }
}

/** Rebuilds a book from orderbook.update envelopes as a client would; records violations. */
class Follower {
  constructor(symbol, depth, room = `orderbook:${symbol}`) {
    this.symbol = symbol;
    this.depth = depth;
    this.room = room;
    this.book = new Book();
    this.violations = [];
    this.snapshots = []; // [index, reason, lastUpdateId]
    this.deltas = 0;
    this.n = 0;
    this.fed = 0;
  }
  bad(msg, why) {
    this.violations.push(`#${this.n}: ${why}: ${JSON.stringify(msg).slice(0, 300)}`);
  }
  feed(msg) {
    this.n += 1;
    if (msg.channel !== this.room) return this.bad(msg, 'wrong room');
    const d = msg.data;
    if (d.symbol !== this.symbol) return this.bad(msg, 'wrong symbol');
    if (d.type === 'snapshot') {
      const keys = Object.keys(d).sort().join(',');
      if (keys !== 'asks,bids,checksum,lastUpdateId,reason,symbol,type') this.bad(msg, 'snapshot keys');
      if (!['subscribe', 'resync', 'request'].includes(d.reason)) this.bad(msg, 'snapshot reason');
      if (d.reason === 'subscribe' && this.n !== 1) this.bad(msg, 'reason subscribe not first');
      if (d.bids.length > this.depth || d.asks.length > this.depth) this.bad(msg, 'snapshot too deep');
      this.book.apply(d);
      this.snapshots.push([this.n, d.reason, d.lastUpdateId]);
      if (d.checksum !== this.book.checksum()) this.bad(msg, `checksum ${d.checksum} != ${this.book.checksum()}`);
    } else if (d.type === 'delta') {
      const keys = Object.keys(d).sort().join(',');
      if (keys !== 'asks,bids,checksum,firstUpdateId,lastUpdateId,symbol,type') this.bad(msg, 'delta keys');
      if (this.book.last === null) return this.bad(msg, 'delta before any snapshot');
      if (d.firstUpdateId !== this.book.last + 1) {
        this.bad(msg, `continuity: firstUpdateId ${d.firstUpdateId} after lastUpdateId ${this.book.last}`);
      }
      if (d.lastUpdateId < d.firstUpdateId) this.bad(msg, 'lastUpdateId < firstUpdateId');
      this.book.apply(d);
      this.deltas += 1;
      if (d.checksum !== this.book.checksum()) this.bad(msg, `checksum ${d.checksum} != ${this.book.checksum()} (the replica differs)`);
      if (this.book.bids.size > this.depth || this.book.asks.size > this.depth) {
        this.bad(msg, 'book grew past --orderbook-depth');
      }
    } else {
      this.bad(msg, 'unknown type');
    }
  }
  feedFrom(rec) {
    const msgs = rec.payloads('orderbook.update').filter((m) => m.channel === this.room);
    for (const m of msgs.slice(this.fed)) this.feed(m);
    this.fed = msgs.length;
  }
  view() {
    const top = this.book.top();
    return { symbol: this.symbol, type: 'snapshot', reason: 'query', ...top, lastUpdateId: this.book.last, checksum: topChecksum(top) };
  }
}

async function getBook(gw, s) {
  const res = await fetch(`${gw.internalUrl}/internal/orderbook/${s}`);
  return { status: res.status, body: await res.json().catch(() => null) };
}

// ---------------------------------------------------------------------------

for (const mode of MODES) {
  describe(`market data [${mode.name}]`, () => {
    let gw; // shared: tests isolate themselves by symbol
    const gateways = [];
    const fresh = async (args = []) => {
      const g = await startGateway(args);
      gateways.push(g);
      return g;
    };
    const connect = (g) => connectClient(`${g.publicUrl}/ws`, { transports: mode.transports });

    before(async () => {
      gw = await startGateway();
    });
    afterEach(async () => {
      closeAllClients();
      while (gateways.length) await gateways.pop().stop();
    });
    after(async () => {
      closeAllClients();
      if (gw) await gw.stop();
    });

    // 1. throttle ------------------------------------------------------------
    it('ticker throttle: leading + trailing edge, latest value last (ticker:S and ticker:all)', T, async () => {
      const g = await fresh(); // default --ticker-throttle-ms 1000
      const { socket, rec } = await connect(g);
      const S = sym('THR');
      await subscribeOk(socket, { channel: 'ticker', symbol: S });
      await subscribeOk(socket, { channel: 'ticker', symbol: 'all' });
      await sleep(100);
      const pre = rec.mark();
      assert.ok(
        named(rec, 'tickers.update').every((i) => i.args[0].data.length === 0),
        'only an empty tickers.update before any ingest',
      );

      const t0 = Date.now();
      for (let i = 0; i < 50; i++) {
        const wait = t0 + (200 * i) / 49 - Date.now();
        if (wait > 0) await sleep(wait);
        await ingestOk(g, tickerEv(S, i));
      }
      assert.ok(Date.now() - t0 < 900, `ingest too slow for the test (${Date.now() - t0} ms)`);
      const last = ticker(S, 49);
      await rec.next('ticker.update', { timeout: 2000, where: (m) => m.data.seq === 49 });
      await rec.next('tickers.update', { timeout: 2000, where: (m) => m.data.length === 1 && m.data[0].seq === 49 });
      await sleep(1300); // a further window: nothing else may arrive

      for (const [event, room, wrap] of [
        ['ticker.update', `ticker:${S}`, (d) => d],
        ['tickers.update', 'ticker:all', (d) => [d]],
      ]) {
        const got = named(rec, event, pre);
        const seqs = got.map((i) => JSON.stringify(i.args[0].data));
        assert.ok(got.length >= 1 && got.length <= 2, `${event}: ${got.length} messages: ${seqs}`);
        assertEnvelope(got.at(-1).args[0], room, wrap(last));
        assert.ok(got.at(-1).at - t0 < 1600, `${event} trailing edge at ${got.at(-1).at - t0} ms`);
        if (got.length === 2) {
          assertEnvelope(got[0].args[0], room, wrap(ticker(S, 0)));
          assert.ok(got[0].at - t0 < 500, `${event} leading edge at ${got[0].at - t0} ms`);
          assert.ok(got[1].at - t0 > 700, `${event} trailing edge early (${got[1].at - t0} ms)`);
        }
      }
    });

    it('--ticker-throttle-ms 0: every update, in order', T, async () => {
      const g = await fresh(['--ticker-throttle-ms', '0']);
      const { socket, rec } = await connect(g);
      const S = sym('NTH');
      await subscribeOk(socket, { channel: 'ticker', symbol: S });
      await subscribeOk(socket, { channel: 'ticker', symbol: 'all' });
      await sleep(100);
      const pre = rec.mark();
      for (let i = 0; i < 50; i++) {
        await ingestOk(g, tickerEv(S, i));
        await sleep(4);
      }
      const t = await rec.collect('ticker.update', 50, { timeout: 5000 });
      const a = await rec.collect('tickers.update', 50, { timeout: 5000, where: (m) => m.data.length > 0 });
      await sleep(QUIET_MS);
      assert.equal(named(rec, 'ticker.update', pre).length, 50);
      t.forEach((m, i) => assertEnvelope(m, `ticker:${S}`, ticker(S, i)));
      a.forEach((m, i) => assertEnvelope(m, 'ticker:all', [ticker(S, i)]));
    });

    // 3. last value on subscribe ----------------------------------------------
    for (const kind of ['ticker', 'kline']) {
      it(`last value on subscribe: ${kind}`, T, async () => {
        const S = sym('LV');
        let payload;
        let event;
        let room;
        let vals;
        let evs;
        if (kind === 'ticker') {
          payload = { channel: 'ticker', symbol: S };
          event = 'ticker.update';
          room = `ticker:${S}`;
          vals = [0, 1, 2, 3, 4].map((i) => ticker(S, i));
          evs = [0, 1, 2, 3, 4].map((i) => tickerEv(S, i));
        } else {
          payload = { channel: 'klines', symbol: S, interval: '15m' };
          event = 'kline.update';
          room = `klines:${S}:15m`;
          vals = [0, 1, 2, 3, 4].map((i) => kline(S, '15m', 1700000100000, i));
          evs = vals.map((v) => klineEv(S, '15m', v));
        }
        const a = await connect(gw);
        const b = await connect(gw); // subscribes during the window
        await subscribeOk(a.socket, payload);
        for (const ev of evs) await ingestOk(gw, ev); // vals[0] leading; vals[4] held
        await a.rec.next(event, { where: (m) => m.data.seq === 0 });

        const { msg, dt } = await firstAfterAck(b.socket, b.rec, payload, event);
        assertEnvelope(msg, room, vals[0]); // the latest *sent* value
        assert.ok(dt < 1000, `last value came ${dt} ms after subscribing`);

        for (const c of [a, b]) await c.rec.next(event, { timeout: 2000, where: (m) => m.data.seq === 4 });

        // after the trailing edge, without ack: `subscribed`, then the value
        const c = await connect(gw);
        const mark = c.rec.mark();
        c.socket.emit('subscribe', payload);
        await c.rec.next(event, { timeout: 2000 });
        await sleep(QUIET_MS);
        const seen = c.rec.since(mark);
        assert.deepEqual(
          seen.map((i) => i.event),
          ['subscribed', event],
        );
        assertEnvelope(seen[1].args[0], room, vals[4]);
        for (const x of [a, b]) {
          assert.deepEqual(
            x.rec.payloads(event).map((m) => m.data),
            [vals[0], vals[4]],
          );
        }
      });
    }

    it('last value on subscribe: ticker:all gets one tickers.update with every known ticker', T, async () => {
      const g = await fresh();
      const syms = [sym('LA'), sym('LB'), sym('LC')];
      const latest = { [syms[0]]: ticker(syms[0], 1), [syms[1]]: ticker(syms[1], 0), [syms[2]]: ticker(syms[2], 0) };
      const a = await connect(g);
      const b = await connect(g);
      await subscribeOk(a.socket, { channel: 'ticker', symbol: 'all' });
      await ingestOk(g, syms.map((s) => tickerEv(s, 0)));
      await ingestOk(g, tickerEv(syms[0], 1));
      await waitUntil(
        () => {
          const seen = {};
          for (const m of a.rec.payloads('tickers.update')) for (const d of m.data) seen[d.symbol] = d;
          try {
            assert.deepEqual(seen, latest);
            return true;
          } catch {
            return false;
          }
        },
        2500,
        'ticker:all to deliver every latest value',
      );
      const { msg, dt } = await firstAfterAck(b.socket, b.rec, { channel: 'ticker', symbol: 'all' }, 'tickers.update');
      assert.ok(dt < 1000, `came ${dt} ms after subscribing`);
      assert.deepEqual(Object.keys(msg).sort(), ['channel', 'data', 'timestamp']);
      assert.equal(msg.channel, 'ticker:all');
      assert.equal(msg.data.length, 3, JSON.stringify(msg.data));
      assert.deepEqual(Object.fromEntries(msg.data.map((d) => [d.symbol, d])), latest);
      await sleep(QUIET_MS);
      assert.equal(b.rec.payloads('tickers.update').length, 1);
      assert.equal(b.rec.payloads('ticker.update').length, 0);
    });

    // A bot's book: 5,000 random deltas (a fifth leave the window as it was) in 20 batches, with
    // a gap at the 2,000th and a requested resync; every message checksum-verified. `ask` is
    // the subscription's depth and speed (none: the defaults).
    const orderBookBot = async (ask, depth, room) => {
      const g = await fresh(['--orderbook-depth', '20']);
      const S = sym('BOT');
      room = room(S);
      const seed = Math.floor(Math.random() * 2 ** 31) + 1;
      const gen = new BookGen(seed);
      await ingestOk(g, bookEv(S, gen.snapshot()));
      const a = await connect(g);
      const sub = await subscribeOk(a.socket, { channel: 'orderbook', symbol: S, ...ask });
      assert.deepEqual(sub.rooms, [room]);
      const f = new Follower(S, depth, room);
      let n = 0;
      let gapAt;
      let requested;
      for (let batch = 0; batch < 20; batch++) {
        const events = [];
        for (let i = 0; i < 250; i++, n++) {
          let d;
          if (n % 5 === 4) {
            // No level at all: the window stays as it was, the ids still move on.
            const first = gen.ref.last + 1;
            d = { type: 'delta', bids: [], asks: [], firstUpdateId: first, lastUpdateId: first };
            gen.ref.apply(d);
          } else {
            d = gen.delta({ gap: n === 2000 ? 17 : 0 });
            if (n === 2000) gapAt = d;
          }
          events.push(bookEv(S, d));
        }
        await ingestOk(g, events);
        f.feedFrom(a.rec);
        if (batch === 12) {
          const ack = await emitAck(a.socket, 'resync', { channel: 'orderbook', symbol: S, ...ask });
          assert.deepEqual(ack, { ok: true, channel: 'orderbook', rooms: [room], symbol: S, ...ask });
          requested = true;
        }
      }
      const final = gen.ref.last;
      await waitUntil(() => {
        f.feedFrom(a.rec);
        return f.book.last === final;
      }, 15000, `client book at ${final}`).catch((e) => {
        throw new Error(`${e.message}; at ${f.book.last}; ${f.violations.slice(0, 3)} (seed ${seed})`);
      });
      assert.ok(requested);
      assert.deepEqual(f.violations, [], `seed ${seed}`);
      // The replica is the backend's book cut to the subscription's depth.
      assert.deepEqual(f.view(), gen.refView(S, depth), `seed ${seed}`);
      const reasons = f.snapshots.map(([, r]) => r);
      assert.equal(reasons[0], 'subscribe');
      assert.ok(f.snapshots.some(([, r, last]) => r === 'resync' && last >= gapAt.lastUpdateId), JSON.stringify(f.snapshots));
      assert.ok(reasons.includes('request'), JSON.stringify(f.snapshots));
      // Past its burst, resync is refused with a clear code.
      const answers = [];
      for (let i = 0; i < 6; i++) answers.push(await emitAck(a.socket, 'resync', { channel: 'orderbook', symbol: S, ...ask }));
      assert.ok(answers.some((x) => x.ok === false && x.error.code === 'RATE_LIMITED'), JSON.stringify(answers));
      const other = await emitAck(a.socket, 'resync', { channel: 'orderbook', symbol: 'NOTSUBSCRIBED' });
      assert.equal(other.ok, false);
      return f;
    };

    it('order book bot: 5,000 deltas (a fifth leave the window as it was), every message checksum-verified, a gap and a requested resync', T, async () => {
      const f = await orderBookBot({}, 20, (S) => `orderbook:${S}`);
      // Every update id came, at once: 5,000 less the gap's (a snapshot) chained messages.
      assert.ok(f.deltas >= 4990, `${f.deltas} deltas`);
    });

    it('order book bot at depth 5, speed 100: its own window, chain and checksum, at most one delta per 100 ms', T, async () => {
      const f = await orderBookBot({ depth: 5, speed: 100 }, 5, (S) => `orderbook:${S}:5:100ms`);
      assert.ok(f.deltas > 0 && f.deltas < 1000, `${f.deltas} deltas for 5,000 updates in 20 batches`);
    });

    // 4. order book rebuild (small) --------------------------------------------
    it('order book: snapshot + 500 deltas with a gap rebuild the gateway view (--orderbook-depth 20)', T, async () => {
      const depth = 20;
      const g = await fresh(['--orderbook-depth', String(depth)]);
      const S = sym('OB');
      const seed = Math.floor(Math.random() * 2 ** 31) + 1;
      const gen = new BookGen(seed);
      const ctx = `seed ${seed}`;
      await ingestOk(g, bookEv(S, gen.snapshot()));
      const a = await connect(g);
      await subscribeOk(a.socket, { channel: 'orderbook', symbol: S });
      let b;
      let gap;
      let n = 0;
      for (let batch = 0; batch < 10; batch++) {
        const events = [];
        for (let i = 0; i < 50; i++, n++) {
          const d = gen.delta({ gap: n === 310 ? 23 : 0, touchBest: n === 499 });
          if (n === 310) gap = d;
          events.push(bookEv(S, d));
        }
        await ingestOk(g, events);
        if (batch === 3) {
          b = await connect(g);
          await subscribeOk(b.socket, { channel: 'orderbook', symbol: S });
        }
      }
      const final = gen.ref.last;
      const view = await waitUntil(
        async () => {
          const r = await getBook(g, S);
          return r.status === 200 && r.body.lastUpdateId === final && r.body;
        },
        10000,
        `/internal/orderbook at ${final}`,
      );
      assert.deepEqual(view, gen.refView(S, depth), `gateway view vs backend top ${depth} (${ctx})`);
      for (const [who, c] of [
        ['first client', a],
        ['midway client', b],
      ]) {
        const f = new Follower(S, depth);
        await waitUntil(
          () => {
            f.feedFrom(c.rec);
            return f.book.last === final;
          },
          10000,
          `${who} book at ${final}`,
        ).catch((e) => {
          throw new Error(`${e.message}; at ${f.book.last}; violations ${f.violations.slice(0, 3)} (${ctx})`);
        });
        await sleep(100);
        f.feedFrom(c.rec);
        assert.deepEqual(f.violations, [], `${who} (${ctx})`);
        assert.equal(f.snapshots[0][1], 'subscribe', `${who}: ${JSON.stringify(f.snapshots)}`);
        assert.ok(
          f.snapshots.some(([, reason, last]) => reason === 'resync' && last >= gap.lastUpdateId),
          `${who}: no resync after the gap at ${gap.firstUpdateId}: ${JSON.stringify(f.snapshots)}`,
        );
        assert.deepEqual(f.view(), view, `${who}: rebuilt book vs /internal/orderbook (${ctx})`);
        assert.ok(f.deltas > 0 && f.deltas <= n);
      }
    });
  });
}
