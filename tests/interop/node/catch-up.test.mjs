// A cluster instance that starts (or restarts) against a long Redis stream rebuilds its state
// from the stream without sending any of it to anyone: `/ready` is 503 `catching_up` and new
// sessions are refused until it has read up to the stream's tail as of its start. Clients
// that connect from its first accepted connection get only what the stream takes after they
// subscribed; a client of a stopped instance that comes back through it is still replayed
// exactly what it missed. Runs on a redis-server started here, with the official client.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import jwt from 'jsonwebtoken';
import { createClient } from 'redis';
import { io } from 'socket.io-client';
import { startGateway, startRedis, startBalancer, haveRedis, sleep, waitFor } from './harness.mjs';
import { Recorder, closeAllClients, emitAck } from './clients.mjs';

const SECRET = 'maven-gateway-catch-up-secret-0123456789abcdef-0123456789abcdef';
const sign = (sub) => jwt.sign({ sub }, SECRET, { algorithm: 'HS256', expiresIn: 600 });
const STREAM = 'gateway:events';
const HISTORY = 100_000;
const SYMBOL = 'CATCHUSDT';
const BULK = 'BULKUSDT';
const trade = (seq, symbol = SYMBOL) => ({ type: 'trade', symbol, data: { symbol, price: '1.00', qty: '1', seq } });
const order = (user, seq) => ({ type: 'order.filled', userId: user, data: { orderId: `o-${seq}`, seq } });
const seqs = (rec, event) => rec.since(0, event).map((i) => i.args[0].data.seq);

const sockets = new Set();
afterEach(() => {
  for (const s of sockets) s.close();
  sockets.clear();
  closeAllClients();
});

function client(url, opts = {}) {
  const socket = io(`${url}/ws`, {
    forceNew: true,
    transports: ['websocket'],
    reconnectionDelay: 100,
    reconnectionDelayMax: 100,
    randomizationFactor: 0,
    ...opts,
  });
  sockets.add(socket);
  return { socket, rec: new Recorder(socket) };
}

const once = (socket, event, timeout = 60000) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${timeout} ms`)), timeout);
    socket.once(event, (...a) => {
      clearTimeout(timer);
      resolve(a);
    });
  });

/** Appends events straight to the stream (as another instance's ingest would), in batches. */
async function append(rc, events) {
  for (let i = 0; i < events.length; i += 5000) {
    const m = rc.multi();
    for (const e of events.slice(i, i + 5000)) m.xAdd(STREAM, '*', { event: JSON.stringify(e) });
    await m.exec();
  }
}

describe('an instance catching up with a long stream', { timeout: 240000, skip: !haveRedis && 'redis-server not installed' }, () => {
  let redis;
  let rc;
  const gws = [];
  before(async () => {
    redis = await startRedis();
    rc = createClient({ url: redis.url });
    await rc.connect();
  });
  after(async () => {
    await rc.quit().catch(() => {});
    for (const g of gws) await g.stop({ accept: () => true }).catch(() => {});
    redis.stop();
  });

  it('sends no history as live, says catching_up until done, and still replays what a recovering client is owed', async () => {
    const flags = ['--redis', redis.url, '--jwt-secret', SECRET];
    const a = await startGateway(flags);
    gws.push(a);
    const lb = await startBalancer(a.port);
    try {
      // Owen follows the trades and his orders on A, then A stops for a deploy.
      const owen = client(lb.url, { auth: { token: sign('owen') }, reconnectionDelay: 300, reconnectionDelayMax: 300 });
      await once(owen.socket, 'connect');
      assert.equal((await emitAck(owen.socket, 'subscribe', { channel: 'trades', symbol: SYMBOL })).ok, true);
      assert.equal((await emitAck(owen.socket, 'subscribe.private', { channel: 'user.orders' })).ok, true);
      const first = await a.ingest([trade(0), order('owen', 0)]);
      assert.equal(first.status, 202, first.text);
      await waitFor(() => seqs(owen.rec, 'trade').length === 1 && seqs(owen.rec, 'order.filled').length === 1, 5000, 'owen: first events');
      const owenSid = owen.socket.id;
      lb.pause(true);
      const gone = once(owen.socket, 'disconnect');
      await a.stop();
      await gone;

      // While nobody is up, the stream grows long: history to anyone who connects from now.
      const history = [];
      for (let i = 1; i <= HISTORY; i++) {
        // Mostly another market; a recovering client is owed its own rooms' events only.
        if (i % 100 === 0) history.push(trade(i), order('owen', i), order('pat', i));
        else history.push(trade(i, BULK));
      }
      await append(rc, history);

      const b = await startGateway(flags, { awaitReady: false, readyTimeoutMs: 60000 });
      gws.push(b);
      lb.to(b.port);
      lb.pause(false);
      // New clients try from the first moment; they get in only once B has caught up.
      const quinn = client(b.publicUrl);
      const pat = client(b.publicUrl, { auth: { token: sign('pat') } });
      const statuses = [];
      const refusals = [];
      for (const c of [quinn, pat]) c.socket.on('connect_error', (e) => refusals.push(String(e && e.message)));
      for (;;) {
        const res = await fetch(`${b.publicUrl}/ready`);
        const body = await res.json();
        statuses.push([res.status, body.status]);
        if (res.status === 200) break;
        assert.equal(res.status, 503);
        if (body.status === 'catching_up') {
          assert.equal(typeof body.events, 'number', JSON.stringify(body));
          assert.equal(typeof body.behind_ms, 'number', JSON.stringify(body));
          // An Engine.IO handshake now is refused, with the reason.
          const h = await fetch(`${b.publicUrl}/socket.io/?EIO=4&transport=polling`);
          const hb = await h.text();
          if (h.status === 503) assert.match(hb, /CATCHING_UP/);
        }
        await sleep(20);
      }
      assert.ok(statuses.some(([, s]) => s === 'catching_up'), `B said catching_up before ready: ${JSON.stringify(statuses.slice(0, 5))}`);

      await Promise.all([quinn, pat].map((c) => (c.socket.connected ? null : once(c.socket, 'connect'))));
      assert.equal((await emitAck(quinn.socket, 'subscribe', { channel: 'trades', symbol: SYMBOL })).ok, true);
      assert.equal((await emitAck(pat.socket, 'subscribe.private', { channel: 'user.orders' })).ok, true);
      // Owen comes back through B and recovers his session.
      if (!owen.socket.connected) await once(owen.socket, 'connect');
      assert.equal(owen.socket.recovered, true, 'owen recovered through the instance that caught up');
      assert.equal(owen.socket.id, owenSid);

      const live = HISTORY + 1;
      const res = await b.ingest([trade(live), order('owen', live), order('pat', live)]);
      assert.equal(res.status, 202, res.text);
      await waitFor(() => seqs(quinn.rec, 'trade').includes(live), 10000, 'quinn: the live trade');
      await waitFor(() => seqs(pat.rec, 'order.filled').includes(live), 10000, 'pat: the live order');
      await waitFor(() => seqs(owen.rec, 'trade').includes(live) && seqs(owen.rec, 'order.filled').includes(live), 20000, 'owen: replay and live');
      await sleep(300);

      assert.deepEqual(seqs(quinn.rec, 'trade'), [live], 'quinn got no trade published before he subscribed');
      assert.deepEqual(seqs(pat.rec, 'order.filled'), [live], 'pat got no order event from before she subscribed');
      const owed = [0, ...Array.from({ length: HISTORY / 100 }, (_, i) => (i + 1) * 100), live];
      assert.deepEqual(seqs(owen.rec, 'trade'), owed, 'owen: every trade he missed, once, in order');
      const wantOrders = owed;
      assert.deepEqual(seqs(owen.rec, 'order.filled'), wantOrders, 'owen: every order event, in order');
      console.log(`# /ready answers while catching up with ${HISTORY} events: ${statuses.length}; refused connects: ${refusals.length}`);
    } finally {
      lb.close();
    }
  });
});
