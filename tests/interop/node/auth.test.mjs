// Authentication, private channels and in-band token refresh through the official
// socket.io-client v4, run with the default transports (polling, then upgrade) and
// WebSocket-only. What is asserted comes from docs/test-interface.md ("Authentication,
// private channels, caps and limits") and shared/gateway-contract.md sections 2-4.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import jwt from 'jsonwebtoken';
import { startGateway, sleep } from './harness.mjs';
import { MODES, Recorder, rawClient, closeAllClients, emitAck, assertEnvelope } from './clients.mjs';

const T = { timeout: 30000 };
const QUIET_MS = 400;
const SECRET = 'maven-gateway-node-interop-secret-0123456789abcdef-0123456789abcdef';
const ISS = 'maven-auth';
const AUD = 'maven-gateway';
const INVALID = { message: 'Unauthorized: Invalid token', data: { code: 'INVALID_TOKEN' } };

// The seed's private event table: event -> room suffix.
const PRIVATE = {
  'order.created': 'orders',
  'order.filled': 'orders',
  'order.cancelled': 'orders',
  'order.expired': 'orders',
  'trade.executed': 'trades',
  'balance.updated': 'balances',
  'balance.locked': 'balances',
  'balance.unlocked': 'balances',
  'deposit.detected': 'deposits',
  'deposit.confirmed': 'deposits',
  'deposit.credited': 'deposits',
};
const CHANNELS = { 'user.orders': 'orders', 'user.trades': 'trades', 'user.balances': 'balances', 'user.deposits': 'deposits' };

const RUN = Math.floor(Math.random() * 36 ** 4).toString(36).padStart(4, '0');
let seq = 0;
const uniq = (p) => `${p}-${RUN}-${++seq}`;
const usym = (p = 'AU') => `${p}${RUN.toUpperCase()}${++seq}`.slice(0, 20);

// ---- tokens ------------------------------------------------------------------------------------

const b64url = (s) => Buffer.from(s).toString('base64url');

function sign(sub, { secret = SECRET, algorithm = 'HS256', expiresIn = 300, iss = ISS, aud = AUD, ...extra } = {}) {
  const payload = { ...(sub === undefined ? {} : { sub }), ...extra };
  const opts = { algorithm };
  if (expiresIn !== null) opts.expiresIn = expiresIn;
  if (iss !== null) opts.issuer = iss;
  if (aud !== null) opts.audience = aud;
  return jwt.sign(payload, secret, opts);
}

function unsigned(header, payload) {
  return `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}.`;
}

function claims(sub = 'alice', expIn = 300) {
  const now = Math.floor(Date.now() / 1000);
  return { sub, iat: now, exp: now + expIn, iss: ISS, aud: AUD };
}

function tampered(sub) {
  const [h, p, s] = sign('alice').split('.');
  const c = JSON.parse(Buffer.from(p, 'base64url').toString());
  c.sub = sub;
  return `${h}.${b64url(JSON.stringify(c))}.${s}`;
}

// ---- clients -----------------------------------------------------------------------------------

/**
 * Connects to `${url}/ws`; resolves {socket, rec, connected} or {error: {message, data}} for a
 * CONNECT_ERROR.
 */
function attempt(url, { transports, ioOpts = {}, query } = {}) {
  const target = `${url}/ws${query ? `?token=${encodeURIComponent(query)}` : ''}`;
  const socket = rawClient(target, { ...(transports ? { transports } : {}), ...ioOpts });
  const rec = new Recorder(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connect or connect_error from ${target} in 8 s`)), 8000);
    socket.once('connect', async () => {
      clearTimeout(timer);
      try {
        const connected = await rec.next('connected');
        resolve({ socket, rec, connected });
      } catch (e) {
        reject(e);
      }
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      socket.disconnect();
      resolve({ error: { message: err.message, data: err.data }, socket });
    });
  });
}

async function connectAs(url, user, opts) {
  const r = await attempt(url, opts);
  assert.equal(r.error, undefined, `connection refused: ${JSON.stringify(r.error)}`);
  const c = r.connected;
  assert.deepEqual(Object.keys(c).sort(), ['authenticated', 'serverTime', 'socketId', 'userId']);
  assert.equal(c.socketId, r.socket.id);
  assert.equal(c.userId, user);
  assert.equal(c.authenticated, user !== null);
  return r;
}

async function refused(url, opts, expected = INVALID) {
  const r = await attempt(url, opts);
  assert.deepEqual(r.error, expected, `expected a refusal, got ${JSON.stringify(r.connected)}`);
}

async function subPrivate(socket, user, channel) {
  const ack = await emitAck(socket, 'subscribe.private', { channel });
  assert.deepEqual(ack, { ok: true, channel, rooms: [`user:${user}:${CHANNELS[channel]}`] });
}

async function subAllPrivate(socket, user) {
  for (const ch of Object.keys(CHANNELS)) await subPrivate(socket, user, ch);
}

function errAck(ack, code) {
  assert.equal(ack && ack.ok, false, JSON.stringify(ack));
  assert.deepEqual(Object.keys(ack).sort(), ['error', 'ok'], JSON.stringify(ack));
  assert.equal(ack.error.code, code, JSON.stringify(ack));
  assert.equal(typeof ack.error.message, 'string');
}

const privData = (event, user, n) => ({ ref: `${event}-${n}`, owner: user, seq: n, amount: '100.00', timestamp: 1234567890 + n });
const privEv = (event, user, n) => ({ type: event, userId: user, data: privData(event, user, n) });
const privateOf = (rec) => rec.items.filter((i) => i.event in PRIVATE).map((i) => ({ event: i.event, msg: i.args[0] }));
const tradeEv = (symbol, n) => ({ type: 'trade', symbol, data: { tradeId: `${symbol}-${n}`, symbol, price: '1.00', quantity: '1', seq: n } });

async function waitPrivate(rec, n, timeout = 5000) {
  const deadline = Date.now() + timeout;
  while (privateOf(rec).length < n) {
    if (Date.now() > deadline) throw new Error(`${privateOf(rec).length}/${n} private events; last:\n  ${rec.summary()}`);
    await sleep(20);
  }
}


async function ingestOk(gw, events) {
  const res = await gw.ingest(events);
  assert.equal(res.status, 202, res.text);
  return res;
}

async function authFailures(gw) {
  const res = await fetch(`${gw.internalUrl}/stats`);
  return (await res.json()).total.auth_failures;
}

const isErr = (code) => (d) => d && d.code === code;

// =================================================================================================

for (const mode of MODES) {
  describe(`auth [${mode.name}]`, () => {
    let gw;
    const base = (o = {}) => ({ transports: mode.transports, ...o });

    before(async () => {
      gw = await startGateway(['--jwt-secret', SECRET, '--jwt-issuer', ISS, '--jwt-audience', AUD]);
    });
    afterEach(() => closeAllClients());
    after(async () => {
      closeAllClients();
      if (gw) await gw.stop();
    });

    describe('token sources', () => {
      it('auth payload {token}', T, async () => {
        const { socket } = await connectAs(gw.publicUrl, 'alice', base({ ioOpts: { auth: { token: sign('alice') } } }));
        await subPrivate(socket, 'alice', 'user.orders');
      });
      it('query ?token= (in the URL, as the seed shows)', T, async () => {
        const { socket } = await connectAs(gw.publicUrl, 'alice', base({ query: sign('alice') }));
        await subPrivate(socket, 'alice', 'user.trades');
      });
      it('query option {token}', T, async () => {
        await connectAs(gw.publicUrl, 'alice', base({ ioOpts: { query: { token: sign('alice') } } }));
      });
      it('extraHeaders Authorization: Bearer', T, async () => {
        const ioOpts = { extraHeaders: { Authorization: `Bearer ${sign('alice')}` } };
        const { socket } = await connectAs(gw.publicUrl, 'alice', base({ ioOpts }));
        await subPrivate(socket, 'alice', 'user.balances');
      });
      it('no token: anonymous; subscribe.private is UNAUTHORIZED', T, async () => {
        const { socket, rec } = await connectAs(gw.publicUrl, null, base());
        errAck(await emitAck(socket, 'subscribe.private', { channel: 'user.orders' }), 'UNAUTHORIZED');
        socket.emit('subscribe.private', { channel: 'user.deposits' });
        const e = await rec.next('error', { where: isErr('UNAUTHORIZED') });
        assert.deepEqual(e.request, { channel: 'user.deposits' });
        errAck(await emitAck(socket, 'auth', { token: sign('alice') }), 'UNAUTHORIZED');
      });

      const hdr = (t) => ({ Authorization: `Bearer ${t}` });
      const cases = [
        ['valid payload + garbage query -> accepted', { auth: 'alice', query: 'garbage' }, 'alice'],
        ['garbage payload + valid query -> refused', { auth: 'garbage', query: 'alice' }, undefined],
        ['valid query + garbage header -> accepted', { query: 'alice', header: 'garbage' }, 'alice'],
        ['garbage query + valid header -> refused', { query: 'garbage', header: 'alice' }, undefined],
        ['payload bob + query alice + header carol -> bob', { auth: 'bob', query: 'alice', header: 'carol' }, 'bob'],
        ['expired payload + valid header -> refused', { auth: 'expired', header: 'alice' }, undefined],
      ];
      for (const [name, src, user] of cases) {
        it(`precedence: ${name}`, T, async () => {
          const tok = (v) => (v === 'garbage' ? 'garbage.not-a.jwt' : v === 'expired' ? sign('alice', { expiresIn: -120 }) : sign(v));
          const ioOpts = {};
          if (src.auth) ioOpts.auth = { token: tok(src.auth) };
          if (src.header) ioOpts.extraHeaders = hdr(tok(src.header));
          const opts = base({ ioOpts, query: src.query ? tok(src.query) : undefined });
          if (user === undefined) await refused(gw.publicUrl, opts);
          else await connectAs(gw.publicUrl, user, opts);
        });
      }
    });

    describe('private channels', () => {
      it('every private event reaches the subscribed owner, in the envelope', T, async () => {
        const u = uniq('u');
        const { socket, rec } = await connectAs(gw.publicUrl, u, base({ ioOpts: { auth: { token: sign(u) } } }));
        await subAllPrivate(socket, u);
        const evs = Object.keys(PRIVATE).map((e, i) => privEv(e, u, i));
        await ingestOk(gw, evs);
        await waitPrivate(rec, evs.length);
        await sleep(QUIET_MS);
        const got = privateOf(rec);
        assert.deepEqual(got.map((g) => g.event), evs.map((e) => e.type));
        got.forEach((g, i) => assertEnvelope(g.msg, `user:${u}:${PRIVATE[g.event]}`, evs[i].data));
      });

      it('two users at once each receive exactly their own events', T, async () => {
        const a = uniq('a');
        const b = uniq('b');
        const A = await connectAs(gw.publicUrl, a, base({ ioOpts: { auth: { token: sign(a) } } }));
        const B = await connectAs(gw.publicUrl, b, base({ ioOpts: { extraHeaders: { Authorization: `Bearer ${sign(b)}` } } }));
        await subAllPrivate(A.socket, a);
        await subAllPrivate(B.socket, b);
        const evs = [];
        Object.keys(PRIVATE).forEach((e, i) => evs.push(privEv(e, a, i), privEv(e, b, i)));
        await ingestOk(gw, evs.slice(0, 10));
        for (const ev of evs.slice(10)) await ingestOk(gw, ev);
        await waitPrivate(A.rec, evs.length / 2);
        await waitPrivate(B.rec, evs.length / 2);
        await sleep(QUIET_MS);
        for (const [who, rec] of [[a, A.rec], [b, B.rec]]) {
          const got = privateOf(rec);
          const want = evs.filter((e) => e.userId === who);
          assert.deepEqual(got.map((g) => g.msg.data), want.map((e) => e.data), `${who} got ${JSON.stringify(got.slice(0, 3))}`);
          got.forEach((g) => assert.equal(g.msg.channel, `user:${who}:${PRIVATE[g.event]}`));
        }
      });

      it("another user's channel cannot be subscribed by any payload shape", T, async () => {
        const a = uniq('a');
        const v = uniq('v');
        const A = await connectAs(gw.publicUrl, a, base({ ioOpts: { auth: { token: sign(a) } } }));
        const V = await connectAs(gw.publicUrl, v, base({ ioOpts: { auth: { token: sign(v) } } }));
        await subAllPrivate(V.socket, v);
        const shapes = [
          ['subscribe.private', { channel: 'user.orders', userId: v }],
          ['subscribe.private', { channel: 'user.orders', room: `user:${v}:orders` }],
          ['subscribe.private', { channel: 'user.balances', user: v }],
          ['subscribe.private', { channel: `user:${v}:orders` }],
          ['subscribe.private', { channel: 'user.trades', userId: v, sub: v, user: { id: v } }],
          ['subscribe.private', [{ channel: 'user.orders', userId: v }]],
          ['subscribe.private', { channel: ['user.deposits'], userId: v }],
          ['subscribe.private', { channel: { name: 'user.orders', userId: v } }],
          ['subscribe', { channel: `user:${v}:orders` }],
          ['subscribe', { channel: 'trades', symbol: `user:${v}:trades` }],
        ];
        for (const [event, payload] of shapes) {
          const ack = await emitAck(A.socket, event, payload);
          if (ack && ack.ok) {
            for (const r of ack.rooms) assert.ok(r.startsWith(`user:${a}:`), `${event} ${JSON.stringify(payload)} -> ${JSON.stringify(ack)}`);
          }
          A.socket.emit(event, payload, { userId: v });
        }
        await emitAck(A.socket, 'ping');
        const evs = Object.keys(PRIVATE).map((e, i) => privEv(e, v, i));
        await ingestOk(gw, evs);
        await waitPrivate(V.rec, evs.length);
        await sleep(QUIET_MS);
        const leaked = A.rec.items.filter((i) => i.event !== 'error' && JSON.stringify(i.args).includes(v));
        assert.deepEqual(leaked, [], `${a} received ${v}'s data`);
      });
    });

    describe('invalid tokens -> INVALID_TOKEN', () => {
      const bad = [
        ['tampered payload', () => tampered('bob')],
        ['wrong secret', () => sign('alice', { secret: 'another-secret-0123456789abcdef-0123456789abcdef-0123456789' })],
        ['expired', () => sign('alice', { expiresIn: -120 })],
        ['not yet valid (nbf)', () => sign('alice', { nbf: Math.floor(Date.now() / 1000) + 120 })],
        ['wrong issuer', () => sign('alice', { iss: 'evil' })],
        ['wrong audience', () => sign('alice', { aud: 'other' })],
        ['alg none', () => unsigned({ alg: 'none', typ: 'JWT' }, claims('alice'))],
        ['HS512 with the same secret', () => sign('alice', { algorithm: 'HS512' })],
        ['missing exp', () => sign('alice', { expiresIn: null })],
        ['missing sub', () => sign(undefined)],
        ['malformed', () => 'not-a-jwt'],
        ['number', () => 12345],
        ['object', () => ({ token: sign('alice') })],
        ['array', () => [sign('alice')]],
      ];
      for (const [name, make] of bad) {
        it(`auth payload: ${name}`, T, async () => {
          await refused(gw.publicUrl, base({ ioOpts: { auth: { token: make() } } }));
        });
      }
      it('query and header sources too (expired, alg none, HS512)', T, async () => {
        const before = await authFailures(gw);
        const toks = [sign('alice', { expiresIn: -120 }), unsigned({ alg: 'none' }, claims('alice')), sign('alice', { algorithm: 'HS512' })];
        for (const t of toks) {
          await refused(gw.publicUrl, base({ query: t }));
          await refused(gw.publicUrl, base({ ioOpts: { extraHeaders: { Authorization: `Bearer ${t}` } } }));
        }
        const deadline = Date.now() + 3000;
        while ((await authFailures(gw)) < before + 6 && Date.now() < deadline) await sleep(50);
        assert.ok((await authFailures(gw)) >= before + 6, '/stats total.auth_failures moved');
      });
    });
  });

  describe(`token refresh and expiry [${mode.name}] (--token-expiry-notice-secs 2 --jwt-leeway-secs 0)`, () => {
    let gw;
    before(async () => {
      gw = await startGateway(['--jwt-secret', SECRET, '--token-expiry-notice-secs', '2', '--jwt-leeway-secs', '0']);
    });
    afterEach(() => closeAllClients());
    after(async () => {
      closeAllClients();
      if (gw) await gw.stop();
    });
    const short = (sub, secs) => {
      const exp = Math.floor(Date.now() / 1000) + secs;
      return { token: jwt.sign({ sub, exp }, SECRET, { algorithm: 'HS256' }), exp };
    };
    const open = (user, token) =>
      connectAs(gw.publicUrl, user, { transports: mode.transports, ioOpts: { auth: { token } } });

    it('refreshed vs unrefreshed connection: TOKEN_EXPIRING, TOKEN_EXPIRED, refresh keeps private events flowing', T, async () => {
      const sym = usym('RX');
      // two users, each token valid for 3 s
      const uOld = uniq('old');
      const uNew = uniq('new');
      const o = short(uOld, 3);
      const n = short(uNew, 3);
      const X = await open(uOld, o.token);
      const R = await open(uNew, n.token);
      for (const [c, u] of [[X, uOld], [R, uNew]]) {
        await subPrivate(c.socket, u, 'user.orders');
        assert.equal((await emitAck(c.socket, 'subscribe', { channel: 'trades', symbol: sym })).ok, true);
      }
      // the notice, before exp
      for (const [c, exp] of [[X, o.exp], [R, n.exp]]) {
        const notice = await c.rec.next('error', { timeout: 4000, where: isErr('TOKEN_EXPIRING') });
        assert.deepEqual(Object.keys(notice).sort(), ['code', 'expiresAt', 'message']);
        assert.equal(notice.expiresAt, exp * 1000);
        assert.ok(Date.now() < exp * 1000, 'TOKEN_EXPIRING before exp');
      }
      // refresh R in-band before exp
      assert.ok(Date.now() < n.exp * 1000 - 300, 'time left to refresh');
      const newExp = Math.floor(Date.now() / 1000) + 60;
      const ack = await R.socket.timeout(5000).emitWithAck('auth', { token: jwt.sign({ sub: uNew, exp: newExp }, SECRET) });
      assert.deepEqual(ack, { ok: true, expiresAt: newExp * 1000 });
      // refresh with another user's token: refused, identity unchanged
      errAck(await emitAck(X.socket, 'auth', { token: sign(uNew, { iss: null, aud: null }) }), 'UNAUTHORIZED');

      // X: TOKEN_EXPIRED at exp
      const expired = await X.rec.next('error', { timeout: o.exp * 1000 - Date.now() + 3000, where: isErr('TOKEN_EXPIRED') });
      assert.equal(typeof expired.message, 'string');
      assert.ok(Date.now() >= o.exp * 1000 - 100, 'TOKEN_EXPIRED not before exp');
      await sleep(Math.max(0, n.exp * 1000 + 800 - Date.now()));

      await ingestOk(gw, [privEv('order.created', uOld, 1), privEv('order.created', uNew, 1), tradeEv(sym, 1)]);
      await R.rec.next('order.created');
      await X.rec.next('trade');
      await R.rec.next('trade');
      await sleep(QUIET_MS);
      assert.equal(X.rec.since(0, 'order.created').length, 0, 'private events stop after expiry');
      assert.equal(R.rec.since(0, 'error').filter((i) => i.args[0].code === 'TOKEN_EXPIRED').length, 0);
      errAck(await emitAck(X.socket, 'subscribe.private', { channel: 'user.orders' }), 'TOKEN_EXPIRED');

      // X re-enabled by a fresh token of the same user
      const fresh = jwt.sign({ sub: uOld, exp: Math.floor(Date.now() / 1000) + 60 }, SECRET);
      assert.equal((await X.socket.timeout(5000).emitWithAck('auth', { token: fresh })).ok, true);
      await subPrivate(X.socket, uOld, 'user.orders');
      await ingestOk(gw, privEv('order.filled', uOld, 2));
      const msg = await X.rec.next('order.filled');
      assertEnvelope(msg, `user:${uOld}:orders`, privData('order.filled', uOld, 2));
    });
  });
}
