// Connection state recovery with the official socket.io-client (v4.6+ behaviour, no client
// options needed): the CONNECT answer on /ws carries a `pid`, every lossless event carries its
// offset as a last string argument, and a client that loses its connection and reconnects
// within the window gets `socket.recovered === true`, its socket id, its rooms, and every
// trade and private event it missed, in order and once. Beyond the window, with another
// user's token, or with recovery off, it is a new session. The cluster case (an instance
// killed, its clients taken over by another through a load balancer) runs three instances on
// a redis-server started here.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import jwt from 'jsonwebtoken';
import { createClient } from 'redis';
import { io } from 'socket.io-client';
import { startGateway, startRedis, startBalancer, haveRedis, sleep, waitFor } from './harness.mjs';
import { Recorder, closeAllClients, emitAck } from './clients.mjs';

const T = { timeout: 60000 };
const SECRET = 'maven-gateway-recovery-secret-0123456789abcdef-0123456789abcdef';
const sign = (sub) => jwt.sign({ sub }, SECRET, { algorithm: 'HS256', expiresIn: 600 });

let symSeq = 0;
const RUN = Math.floor(Math.random() * 36 ** 3).toString(36).toUpperCase().padStart(3, '0');
const sym = () => `R${RUN}${++symSeq}`;
const trade = (s, seq) => ({ type: 'trade', symbol: s, data: { symbol: s, price: `${100 + seq}.00`, qty: '1', seq } });
const order = (user, seq) => ({ type: 'order.filled', userId: user, data: { orderId: `o-${seq}`, seq } });

const sockets = new Set();

/** A socket.io-client socket with default reconnection (the delay pinned, so tests can order
 * what happens while it is away). */
function client(url, opts = {}) {
  const socket = io(`${url}/ws`, {
    forceNew: true,
    reconnectionDelay: 600,
    reconnectionDelayMax: 600,
    randomizationFactor: 0,
    ...opts,
  });
  sockets.add(socket);
  const rec = new Recorder(socket);
  return { socket, rec };
}

function once(socket, event, timeout = 8000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${timeout} ms`)), timeout);
    socket.once(event, (...a) => {
      clearTimeout(timer);
      resolve(a);
    });
  });
}

async function subscribe(socket, payload) {
  const ack = await emitAck(socket, 'subscribe', payload);
  assert.equal(ack && ack.ok, true, `subscribe ${JSON.stringify(payload)}: ${JSON.stringify(ack)}`);
}

async function subscribePrivate(socket, channel) {
  const ack = await emitAck(socket, 'subscribe.private', { channel });
  assert.equal(ack && ack.ok, true, `subscribe.private ${channel}: ${JSON.stringify(ack)}`);
}

async function ingestOk(gw, events) {
  const res = await gw.ingest(events);
  assert.equal(res.status, 202, `ingest answered ${res.status} ${res.text}`);
}

/** The `seq` of every event named `event` received, and each one's last argument. */
const seqs = (rec, event) => rec.since(0, event).map((i) => i.args[0].data.seq);

afterEach(() => {
  for (const s of sockets) s.close();
  sockets.clear();
  closeAllClients();
});

describe('connection state recovery (standalone)', T, () => {
  let gw;
  let lb;
  before(async () => {
    gw = await startGateway(['--jwt-secret', SECRET]);
    lb = await startBalancer(gw.port);
  });
  after(async () => {
    lb.close();
    await gw.stop();
  });
  const cutConnection = () => lb.cutAll();

  for (const transports of [['websocket'], ['polling']]) {
    it(`gives back rooms and every missed trade and private event (${transports})`, async () => {
      const s = sym();
      const { socket, rec } = client(lb.url, { transports, auth: { token: sign('alice') } });
      await once(socket, 'connect');
      assert.equal(socket.recovered, false);
      assert.equal(typeof socket._pid, 'string', 'the CONNECT answer carries a pid');
      const firstId = socket.id;
      await subscribe(socket, { channel: 'trades', symbol: s });
      await subscribePrivate(socket, 'user.orders');

      await ingestOk(gw, [trade(s, 1), order('alice', 1), trade(s, 2)]);
      await waitFor(() => seqs(rec, 'trade').length === 2 && seqs(rec, 'order.filled').length === 1, 5000, 'first events');
      const last = rec.since(0, 'trade').at(-1).args;
      assert.equal(last.length, 2, 'a trade carries its offset as a last argument');
      assert.match(last[1], /^\d+-\d+$/);

      cutConnection();
      await once(socket, 'disconnect');
      // Published while the client is away.
      const events = [];
      for (let i = 3; i <= 30; i++) {
        events.push(trade(s, i));
        if (i % 5 === 0) events.push(order('alice', i));
      }
      await ingestOk(gw, events);
      await once(socket, 'connect', 10000);
      assert.equal(socket.recovered, true, 'socket.recovered');
      assert.equal(socket.id, firstId, 'the socket id comes back');

      // Live again without subscribing anew.
      await ingestOk(gw, [trade(s, 31), order('alice', 31)]);
      await waitFor(() => seqs(rec, 'trade').includes(31) && seqs(rec, 'order.filled').includes(31), 5000, 'live events after recovery');
      const want = Array.from({ length: 31 }, (_, i) => i + 1);
      assert.deepEqual(seqs(rec, 'trade'), want, 'every trade once, in order');
      assert.deepEqual(seqs(rec, 'order.filled'), [1, 5, 10, 15, 20, 25, 30, 31], 'every private event once, in order');
      const offsets = rec.since(0, 'trade').map((i) => i.args[1]);
      assert.equal(new Set(offsets).size, offsets.length, 'offsets are distinct');
    });
  }

  it('owes a client that got nothing before it dropped everything since it subscribed', async () => {
    const s = sym();
    const { socket, rec } = client(lb.url, { transports: ['websocket'] });
    await once(socket, 'connect');
    await subscribe(socket, { channel: 'trades', symbol: s });
    cutConnection();
    await once(socket, 'disconnect');
    await ingestOk(gw, [1, 2, 3, 4, 5].map((i) => trade(s, i)));
    await once(socket, 'connect', 10000);
    assert.equal(socket.recovered, true);
    await waitFor(() => seqs(rec, 'trade').length === 5, 5000, 'the missed trades');
    await sleep(200);
    assert.deepEqual(seqs(rec, 'trade'), [1, 2, 3, 4, 5]);
  });

  it('sends a fresh ticker and order book on recovery', async () => {
    const s = sym();
    const { socket, rec } = client(lb.url, { transports: ['websocket'] });
    await once(socket, 'connect');
    await subscribe(socket, { channel: 'ticker', symbol: s });
    await subscribe(socket, { channel: 'orderbook', symbol: s });
    await ingestOk(gw, [
      { type: 'ticker.update', symbol: s, data: { symbol: s, lastPrice: '1.00' } },
      { type: 'orderbook.update', symbol: s, data: { type: 'snapshot', bids: [['1.00', '1']], asks: [['2.00', '1']], lastUpdateId: 1 } },
    ]);
    await waitFor(() => rec.since(0, 'orderbook.update').length >= 1, 5000, 'the first book');
    cutConnection();
    await once(socket, 'disconnect');
    await ingestOk(gw, [
      { type: 'ticker.update', symbol: s, data: { symbol: s, lastPrice: '9.00' } },
      { type: 'orderbook.update', symbol: s, data: { type: 'delta', bids: [['1.50', '2']], asks: [], firstUpdateId: 2, lastUpdateId: 2 } },
    ]);
    const mark = rec.mark();
    await once(socket, 'connect', 10000);
    assert.equal(socket.recovered, true);
    const book = await waitFor(() => rec.since(mark, 'orderbook.update').find((i) => i.args[0].data.type === 'snapshot'), 5000, 'a fresh book snapshot');
    assert.deepEqual(book.args[0].data.bids[0], ['1.50', '2']);
    // The ticker throttle may hold 9.00 back for its trailing edge; it arrives either way.
    await waitFor(() => rec.since(mark, 'ticker.update').some((i) => i.args[0].data.lastPrice === '9.00'), 5000, 'the latest ticker');
  });

  it("cannot take over another user's session with its pid", async () => {
    const a = client(lb.url, { transports: ['websocket'], auth: { token: sign('carol') }, reconnection: false });
    await once(a.socket, 'connect');
    await subscribePrivate(a.socket, 'user.orders');
    const pid = a.socket._pid;
    const sid = a.socket.id;
    cutConnection();
    await once(a.socket, 'disconnect');
    await ingestOk(gw, [order('carol', 1)]);
    const b = client(gw.publicUrl, { transports: ['websocket'], auth: { token: sign('mallory'), pid }, reconnection: false });
    await once(b.socket, 'connect');
    assert.notEqual(b.socket.id, sid);
    await sleep(400);
    assert.equal(b.rec.since(0, 'order.filled').length, 0, "no replay of carol's events");
    // An anonymous claim on the same pid gets nothing either.
    const c = client(gw.publicUrl, { transports: ['websocket'], auth: { pid }, reconnection: false });
    await once(c.socket, 'connect');
    await sleep(300);
    assert.equal(c.rec.since(0, 'order.filled').length, 0);
  });

  it('treats a malformed claim as a new session', async () => {
    for (const auth of [{ pid: 12 }, { pid: 'x', offset: 'not-an-offset' }, { pid: 'x'.repeat(500) }, { pid: 'unknown', offset: '1-1' }]) {
      const { socket } = client(gw.publicUrl, { transports: ['websocket'], auth, reconnection: false });
      await once(socket, 'connect');
      assert.equal(socket.recovered, false, JSON.stringify(auth));
      assert.equal(typeof socket._pid, 'string');
      socket.close();
    }
  });
});

describe('connection state recovery limits', T, () => {
  it('restored subscriptions pass the caps again: what no longer fits is not restored, and the client is told', async () => {
    const gw = await startGateway(['--max-views-per-ip', '3']);
    const lb = await startBalancer(gw.port);
    try {
      const syms = [sym(), sym(), sym()];
      await ingestOk(gw, syms.map((s) => ({ type: 'ticker.update', symbol: s, data: { symbol: s, lastPrice: '1.00' } })));
      const a = client(lb.url, { transports: ['websocket'], reconnectionDelay: 2000, reconnectionDelayMax: 2000 });
      await once(a.socket, 'connect');
      for (const s of syms) await subscribe(a.socket, { channel: 'ticker', symbol: s, speed: 0 });
      await subscribe(a.socket, { channel: 'trades', symbol: syms[0] });
      lb.cutAll();
      await once(a.socket, 'disconnect');
      // While it is away, another connection from the same address takes the address's views.
      const b = client(gw.publicUrl, { transports: ['websocket'] });
      await once(b.socket, 'connect');
      await waitFor(async () => {
        const ack = await emitAck(b.socket, 'subscribe', { channel: 'ticker', symbols: syms, speed: 0 });
        if (!ack.ok) await sleep(100);
        return ack.ok;
      }, 1500, 'the views the dropped session gave back');
      const mark = a.rec.mark();
      await once(a.socket, 'connect', 10000);
      assert.equal(a.socket.recovered, true);
      const told = await waitFor(() => a.rec.since(mark, 'error')[0], 3000, 'an error naming what was not restored');
      const e = told.args[0];
      assert.equal(e.code, 'SUBSCRIPTION_LIMIT');
      assert.match(e.message, /3 subscription\(s\) not restored/);
      assert.deepEqual([...e.request.rooms].sort(), syms.map((s) => `ticker:${s}:0ms`).sort());
      // What fitted was restored: the trades room is live again.
      await ingestOk(gw, [trade(syms[0], 1)]);
      await waitFor(() => seqs(a.rec, 'trade').includes(1), 5000, 'a trade on the restored room');
      // And the views can be subscribed to again once the address has room for them.
      b.socket.close();
      await waitFor(async () => {
        const ack = await emitAck(a.socket, 'subscribe', { channel: 'ticker', symbols: syms, speed: 0 });
        if (!ack.ok) await sleep(100);
        return ack.ok;
      }, 3000, 'the views again');
    } finally {
      lb.close();
      await gw.stop();
    }
  });

  it('beyond the window the client gets a new session, not a partial replay', async () => {
    const gw = await startGateway(['--recovery-window-ms', '300']);
    const lb = await startBalancer(gw.port);
    try {
      const s = sym();
      const { socket, rec } = client(lb.url, {
        transports: ['websocket'],
        reconnectionDelay: 1500,
        reconnectionDelayMax: 1500,
      });
      await once(socket, 'connect');
      const sid = socket.id;
      await subscribe(socket, { channel: 'trades', symbol: s });
      await ingestOk(gw, [trade(s, 1)]);
      await waitFor(() => seqs(rec, 'trade').length === 1, 5000, 'trade 1');
      lb.cutAll();
      await once(socket, 'disconnect');
      await ingestOk(gw, [trade(s, 2)]);
      await once(socket, 'connect', 10000);
      assert.equal(socket.recovered, false);
      assert.notEqual(socket.id, sid);
      await ingestOk(gw, [trade(s, 3)]);
      await sleep(300);
      assert.deepEqual(seqs(rec, 'trade'), [1], 'no rooms carried over into the new session');
    } finally {
      lb.close();
      await gw.stop();
    }
  });

  /** A gateway with `args` behind a balancer, and a client subscribed to a new trades room
   * whose connection has just been cut. */
  async function subscribedThenCut(args) {
    const gw = await startGateway(args);
    const lb = await startBalancer(gw.port);
    const s = sym();
    const { socket, rec } = client(lb.url, { transports: ['websocket'] });
    await once(socket, 'connect');
    await subscribe(socket, { channel: 'trades', symbol: s });
    lb.cutAll();
    await once(socket, 'disconnect');
    return { gw, lb, s, socket, rec };
  }

  it('a gap bigger than the outbound hard limit is a new session, not a cut-off replay', async () => {
    const { gw, lb, s, socket, rec } = await subscribedThenCut(['--outbound-soft-limit', '16384', '--outbound-hard-limit', '65536']);
    try {
      // ~1,000 trades of ~200 bytes: about three times the hard limit.
      await ingestOk(gw, Array.from({ length: 1000 }, (_, i) => trade(s, i + 1)));
      await once(socket, 'connect', 10000);
      assert.equal(socket.recovered, false);
      await sleep(300);
      assert.equal(seqs(rec, 'trade').length, 0, 'nothing replayed');
      assert.equal(socket.connected, true);
    } finally {
      lb.close();
      await gw.stop();
    }
  });

  it('a gap of many small events is measured as the queue holds them: a new session, not a retry loop', async () => {
    const { gw, lb, s, socket, rec } = await subscribedThenCut(['--outbound-soft-limit', '16384', '--outbound-hard-limit', '262144']);
    try {
      // ~1,100 small trades: their frames alone (~150 KB) fit under the hard limit, but not
      // with the queue's bookkeeping per frame beside what else is queued.
      const small = (i) => ({ type: 'trade', symbol: s, data: { seq: i } });
      await ingestOk(gw, Array.from({ length: 1100 }, (_, i) => small(i + 1)));
      let disconnects = 0;
      socket.on('disconnect', () => (disconnects += 1));
      await once(socket, 'connect', 10000);
      assert.equal(socket.recovered, false, 'a new session');
      await sleep(1000);
      assert.equal(disconnects, 0, 'connected once, and stays');
      assert.equal(socket.connected, true);
      assert.equal(seqs(rec, 'trade').length, 0, 'nothing replayed');
    } finally {
      lb.close();
      await gw.stop();
    }
  });

  it('with recovery off there is no pid and no offset argument', async () => {
    const gw = await startGateway(['--recovery-window-ms', '0']);
    try {
      const s = sym();
      const { socket, rec } = client(gw.publicUrl, { transports: ['websocket'], reconnection: false });
      await once(socket, 'connect');
      assert.equal(socket._pid, undefined);
      await subscribe(socket, { channel: 'trades', symbol: s });
      await ingestOk(gw, [trade(s, 1)]);
      const t = await waitFor(() => rec.since(0, 'trade')[0], 5000, 'trade');
      assert.equal(t.args.length, 1);
    } finally {
      await gw.stop();
    }
  });
});

// ---------------------------------------------------------------------------
// cluster: a load balancer in front of three instances; one is killed
// ---------------------------------------------------------------------------

/** A TCP load balancer: new connections go to the current backend; `to(port)` switches. */
describe('connection state recovery across instances', { ...T, skip: !haveRedis && 'redis-server not installed' }, () => {
  let redis;
  let rc;
  let gws = [];
  let lb;
  before(async () => {
    redis = await startRedis();
    rc = createClient({ url: redis.url });
    await rc.connect();
    for (let i = 0; i < 3; i++) gws.push(await startGateway(['--redis', redis.url, '--jwt-secret', SECRET]));
    lb = await startBalancer(gws[0].port);
  });
  after(async () => {
    lb.close();
    await rc.quit().catch(() => {});
    for (const g of gws) await g.stop({ accept: () => true }).catch(() => {});
    redis.stop();
  });

  it('clients of a killed instance recover on another with every missed trade and private event', async () => {
    const s = sym();
    const users = ['dave', 'erin'];
    const clients = [];
    for (const [i, u] of users.entries()) {
      const c = client(lb.url, { transports: i === 0 ? ['websocket'] : ['polling'], auth: { token: sign(u) } });
      await once(c.socket, 'connect');
      await subscribe(c.socket, { channel: 'trades', symbol: s });
      await subscribePrivate(c.socket, 'user.orders');
      clients.push({ ...c, user: u, sid: c.socket.id });
    }
    // Ingest through instance C: events travel through the stream.
    await ingestOk(gws[2], [trade(s, 1), order('dave', 1), order('erin', 1)]);
    for (const c of clients) {
      await waitFor(() => seqs(c.rec, 'trade').length === 1 && seqs(c.rec, 'order.filled').length === 1, 5000, `${c.user}: first events`);
    }
    // Fay subscribes now and gets nothing before A dies: she is owed everything after.
    const fay = client(lb.url, { transports: ['websocket'], auth: { token: sign('fay') } });
    await once(fay.socket, 'connect');
    await subscribe(fay.socket, { channel: 'trades', symbol: s });
    // Session records are written asynchronously, within milliseconds: an instance killed
    // sooner than that after a subscribe loses it. Wait for it, as the test is about the kill.
    const key = `gateway:events:session:${fay.socket._pid}`;
    await waitFor(async () => ((await rc.get(key)) || '').includes(`trades:${s}`), 5000, "fay's session record");
    // A dies without a goodbye; the balancer sends new connections to B.
    lb.to(gws[1].port);
    gws[0].child.proc.kill('SIGKILL');
    await Promise.all([...clients, fay].map((c) => once(c.socket, 'disconnect')));
    const events = [];
    for (let i = 2; i <= 40; i++) {
      events.push(trade(s, i));
      if (i % 4 === 0) events.push(order('dave', i), order('erin', i));
    }
    await ingestOk(gws[2], events);
    await Promise.all([...clients, fay].map((c) => once(c.socket, 'connect', 15000)));
    await ingestOk(gws[2], [trade(s, 41), order('dave', 41), order('erin', 41)]);
    const wantTrades = Array.from({ length: 41 }, (_, i) => i + 1);
    const wantOrders = [1, ...Array.from({ length: 10 }, (_, i) => (i + 1) * 4), 41];
    for (const c of clients) {
      assert.equal(c.socket.recovered, true, `${c.user}: socket.recovered`);
      assert.equal(c.socket.id, c.sid, `${c.user}: same socket id`);
      await waitFor(() => seqs(c.rec, 'trade').includes(41) && seqs(c.rec, 'order.filled').includes(41), 8000, `${c.user}: live events`);
      assert.deepEqual(seqs(c.rec, 'trade'), wantTrades, `${c.user}: every trade once, in order`);
      assert.deepEqual(seqs(c.rec, 'order.filled'), wantOrders, `${c.user}: every private event once, in order`);
      for (const o of c.rec.since(0, 'order.filled')) assert.equal(o.args[0].channel, `user:${c.user}:orders`);
    }
    assert.equal(fay.socket.recovered, true, 'fay: socket.recovered');
    await waitFor(() => seqs(fay.rec, 'trade').includes(41), 8000, 'fay: live trades');
    assert.deepEqual(seqs(fay.rec, 'trade'), wantTrades.slice(1), 'fay: every trade since she subscribed');
  });
});
