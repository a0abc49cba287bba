// A backend using socket.io's Redis emitter (@socket.io/redis-emitter, unchanged) to emit to
// rooms of /ws keeps working in cluster mode: two instances on a redis-server started here,
// official socket.io-client sockets on both. Emits reach the named rooms' members on every
// instance, each socket once even when it is in several of the rooms, everyone on /ws when
// no room is named, nobody in an `except` room, and nothing of another namespace.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import jwt from 'jsonwebtoken';
import { createClient } from 'redis';
import { Emitter } from '@socket.io/redis-emitter';
import { startGateway, startRedis, haveRedis, sleep, waitFor } from './harness.mjs';
import { connectClient, closeAllClients, emitAck } from './clients.mjs';

const T = { timeout: 60000 };
const SECRET = 'maven-gateway-emitter-secret-0123456789abcdef-0123456789abcdef-0';
const sign = (sub) => jwt.sign({ sub }, SECRET, { algorithm: 'HS256', expiresIn: 600 });
const QUIET_MS = 400;

async function metric(gw, name) {
  const text = await (await fetch(`${gw.internalUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('socket.io Redis emitter packets', { ...T, skip: !haveRedis && 'redis-server not installed' }, () => {
  let redis;
  let gws = [];
  let pub;
  let emitter;
  before(async () => {
    redis = await startRedis();
    for (let i = 0; i < 2; i++) gws.push(await startGateway(['--redis', redis.url, '--jwt-secret', SECRET]));
    pub = createClient({ url: redis.url });
    await pub.connect();
    // Pub/sub keeps nothing: wait until both instances listen.
    const subscribers = async () => (await pub.sendCommand(['CLIENT', 'LIST'])).split('\n').filter((l) => / psub=1 /.test(l)).length;
    await waitFor(async () => (await subscribers()) >= 2, 10000, 'both instances to subscribe');
    emitter = new Emitter(pub).of('/ws');
  });
  after(async () => {
    await pub.quit().catch(() => {});
    for (const g of gws) await g.stop();
    redis.stop();
  });
  afterEach(() => closeAllClients());

  async function user(gw, name, { trades } = {}) {
    const c = await connectClient(`${gw.publicUrl}/ws`, { transports: ['websocket'], ioOpts: { auth: { token: sign(name) } } });
    const ack = await emitAck(c.socket, 'subscribe.private', { channel: 'user.orders' });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    if (trades) assert.equal((await emitAck(c.socket, 'subscribe', { channel: 'trades', symbol: trades })).ok, true);
    return c;
  }

  it('delivers to room members on every instance, each socket once', async () => {
    const a = await user(gws[0], 'dana', { trades: 'EMITUSDT' });
    const b = await user(gws[1], 'dana', { trades: 'EMITUSDT' });
    const other = await user(gws[1], 'omar');
    emitter.to('user:dana:orders').emit('order.update', { orderId: 'o-1', status: 'FILLED' }, 2);
    emitter.to('user:dana:orders').to('trades:EMITUSDT').emit('multi', { n: 1 });
    for (const c of [a, b]) {
      const got = await c.rec.next('order.update');
      assert.deepEqual(got, { orderId: 'o-1', status: 'FILLED' });
      assert.deepEqual(c.rec.since(0, 'order.update')[0].args, [{ orderId: 'o-1', status: 'FILLED' }, 2]);
      await c.rec.next('multi');
    }
    await sleep(QUIET_MS);
    for (const c of [a, b]) assert.equal(c.rec.since(0, 'multi').length, 1, 'once, though in both rooms');
    assert.equal(other.rec.since(0, 'order.update').length + other.rec.since(0, 'multi').length, 0, "omar is in neither room");
  });

  it('reaches every /ws socket without rooms, and skips except rooms', async () => {
    const a = await user(gws[0], 'ivan');
    const b = await user(gws[1], 'judy');
    emitter.emit('announcement', { text: 'maintenance at 02:00' });
    for (const c of [a, b]) assert.deepEqual(await c.rec.next('announcement'), { text: 'maintenance at 02:00' });
    emitter.except('user:ivan:orders').emit('promo', 1);
    assert.equal(await b.rec.next('promo'), 1);
    await sleep(QUIET_MS);
    assert.equal(a.rec.since(0, 'promo').length, 0, 'ivan is in the except room');
  });

  it('ignores other namespaces and malformed packets, and counts them', async () => {
    const a = await user(gws[0], 'kim');
    const before = await metric(gws[0], 'gateway_emitter_packets_total{outcome="refused"}');
    new Emitter(pub).emit('root-only', 1);
    await pub.publish('socket.io#/ws#', Buffer.from([0x93, 0xa1, 0x78]));
    await pub.publish('socket.io#/ws#', 'not msgpack at all');
    emitter.to('user:kim:orders').emit('after', 1);
    await a.rec.next('after');
    await sleep(QUIET_MS);
    assert.equal(a.rec.since(0, 'root-only').length, 0);
    assert.equal(await metric(gws[0], 'gateway_emitter_packets_total{outcome="refused"}'), before + 2);
    assert.ok((await metric(gws[0], 'gateway_emitter_packets_total{outcome="delivered"}')) >= 1);
  });
});
