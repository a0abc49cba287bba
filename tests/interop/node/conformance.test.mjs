// Engine.IO v4 / Socket.IO v5 protocol conformance, written from the protocol
// specs, against the `conformance` example (pingInterval 300, pingTimeout 200,
// maxPayload 1000000). Raw `ws` WebSockets and fetch only.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startConformance, sleep } from './harness.mjs';
import { RawWs, closeAllRaw } from './clients.mjs';

const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;
const T = { timeout: 15000 };
const HANDSHAKE_KEYS = ['maxPayload', 'pingInterval', 'pingTimeout', 'sid', 'upgrades'];

let srv;
const EIO = () => `${srv.url}/engine.io/`;
const EIO_WS = () => `${srv.wsUrl}/engine.io/`;
const SIO = () => `${srv.url}/socket.io/`;
const SIO_WS = () => `${srv.wsUrl}/socket.io/`;

async function http(url, init = {}) {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000), ...init });
  const text = await res.text();
  return { status: res.status, text, headers: res.headers };
}

function parseOpen(text) {
  assert.equal(text[0], '0', `open packet: ${text}`);
  return JSON.parse(text.slice(1));
}

async function openPolling(base = EIO()) {
  const r = await http(`${base}?EIO=4&transport=polling`);
  assert.equal(r.status, 200, r.text);
  return parseOpen(r.text).sid;
}

const pollUrl = (sid, base = EIO()) => `${base}?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;

function assertEioError(r, status, code, message) {
  assert.equal(r.status, status, `status for ${r.text}`);
  assert.deepEqual(JSON.parse(r.text), { code, message });
}

/** A raw Engine.IO WebSocket whose open packet has been read. */
async function openWs(base, opts) {
  const ws = new RawWs(`${base}?EIO=4&transport=websocket`, opts);
  const open = await ws.next();
  return { ws, open: parseOpen(open) };
}

/** Raw Socket.IO: Engine.IO open, then CONNECT `packet`; returns ws after the CONNECT reply and auth event. */
async function sioConnect(packet = '40', nsp = '') {
  const { ws } = await openWs(SIO_WS());
  ws.send(packet);
  const reply = await ws.next();
  const prefix = `40${nsp ? `${nsp},` : ''}`;
  assert.ok(reply.startsWith(prefix), `CONNECT reply ${reply}`);
  const auth = await ws.next();
  assert.ok(auth.startsWith(`42${nsp ? `${nsp},` : ''}["auth"`), `auth event ${auth}`);
  return ws;
}

/** Next message that is not a noop "6" (for tests whose point is elsewhere; see the dedicated noop test). */
async function nextSkippingNoop(ws) {
  let m = await ws.next();
  if (m === '6') m = await ws.next();
  return m;
}

/** Expects that `ws` yields no further non-ping message and does not close within `ms`. */
async function assertQuiet(ws, ms = 400) {
  await sleep(ms);
  assert.deepEqual(ws.queue, []);
  assert.equal(ws.closed, false);
}

before(async () => {
  srv = await startConformance();
});
afterEach(() => closeAllRaw());
after(async () => {
  closeAllRaw();
  if (srv) await srv.stop();
});

describe('Engine.IO v4 (/engine.io/)', () => {
  describe('handshake', () => {
    it('polling: open packet 0{...} with exactly sid, upgrades, pingInterval, pingTimeout, maxPayload', T, async () => {
      const r = await http(`${EIO()}?EIO=4&transport=polling`);
      assert.equal(r.status, 200);
      const open = parseOpen(r.text);
      assert.deepEqual(Object.keys(open).sort(), HANDSHAKE_KEYS);
      assert.equal(typeof open.sid, 'string');
      assert.ok(open.sid.length > 0);
      assert.deepEqual(open.upgrades, ['websocket']);
      assert.equal(open.pingInterval, PING_INTERVAL);
      assert.equal(open.pingTimeout, PING_TIMEOUT);
      assert.equal(open.maxPayload, 1000000);
      // a fresh session each time
      const sid2 = await openPolling();
      assert.notEqual(sid2, open.sid);
    });

    it('unsupported or missing EIO -> 400 {"code":5}', T, async () => {
      for (const q of ['EIO=3&transport=polling', 'transport=polling', 'EIO=abc&transport=polling', 'EIO=5&transport=polling']) {
        const r = await http(`${EIO()}?${q}`);
        assertEioError(r, 400, 5, 'Unsupported protocol version');
      }
    });

    it('unknown or missing transport -> 400 {"code":0}', T, async () => {
      for (const q of ['EIO=4&transport=abc', 'EIO=4']) {
        const r = await http(`${EIO()}?${q}`);
        assertEioError(r, 400, 0, 'Transport unknown');
      }
    });

    it('handshake with POST/PUT -> 400 {"code":2}', T, async () => {
      for (const method of ['POST', 'PUT']) {
        const r = await http(`${EIO()}?EIO=4&transport=polling`, { method, body: method === 'POST' ? '4x' : '' });
        assertEioError(r, 400, 2, 'Bad handshake method');
      }
    });

    it('unknown sid -> 400 {"code":1} (GET and POST)', T, async () => {
      assertEioError(await http(pollUrl('no-such-sid')), 400, 1, 'Session ID unknown');
      assertEioError(await http(pollUrl('no-such-sid'), { method: 'POST', body: '4hi' }), 400, 1, 'Session ID unknown');
    });

    it('websocket-only handshake: open packet with upgrades []', T, async () => {
      const { ws, open } = await openWs(EIO_WS());
      assert.deepEqual(Object.keys(open).sort(), HANDSHAKE_KEYS);
      assert.equal(typeof open.sid, 'string');
      assert.deepEqual(open.upgrades, []);
      assert.equal(open.pingInterval, PING_INTERVAL);
      assert.equal(open.pingTimeout, PING_TIMEOUT);
      assert.equal(open.maxPayload, 1000000);
      ws.close();
    });

    it('websocket with bad EIO or transport never opens a session', T, async () => {
      for (const q of ['transport=websocket', 'EIO=3&transport=websocket', 'EIO=4', 'EIO=4&transport=abc']) {
        const ws = new RawWs(`${EIO_WS()}?${q}`);
        await ws.waitClose(3000);
        assert.ok(
          !ws.queue.some((m) => typeof m === 'string' && m.startsWith('0')),
          `${q}: no open packet (${JSON.stringify(ws.queue)})`,
        );
      }
    });
  });

  describe('HTTP long-polling messages', () => {
    it('one text packet: POST answers "ok", GET returns it', T, async () => {
      const sid = await openPolling();
      const push = await http(pollUrl(sid), { method: 'POST', body: '4hello' });
      assert.equal(push.status, 200);
      assert.equal(push.text, 'ok');
      const poll = await http(pollUrl(sid));
      assert.equal(poll.status, 200);
      assert.equal(poll.text, '4hello');
    });

    it('several packets joined by \\x1e', T, async () => {
      const sid = await openPolling();
      const push = await http(pollUrl(sid), { method: 'POST', body: '4test1\x1e4test2\x1e4test3' });
      assert.equal(push.status, 200);
      assert.equal(push.text, 'ok');
      const poll = await http(pollUrl(sid));
      assert.equal(poll.status, 200);
      assert.equal(poll.text, '4test1\x1e4test2\x1e4test3');
    });

    it('text and binary (b<base64>) packets', T, async () => {
      const sid = await openPolling();
      const push = await http(pollUrl(sid), { method: 'POST', body: '4hello\x1ebAQIDBA==' });
      assert.equal(push.status, 200);
      assert.equal(push.text, 'ok');
      const poll = await http(pollUrl(sid));
      assert.equal(poll.status, 200);
      assert.equal(poll.text, '4hello\x1ebAQIDBA==');
    });

    it('UTF-8 text round-trips', T, async () => {
      const sid = await openPolling();
      const push = await http(pollUrl(sid), {
        method: 'POST',
        headers: { 'content-type': 'text/plain;charset=UTF-8' },
        body: '4€ 日本 🚀',
      });
      assert.equal(push.text, 'ok');
      const poll = await http(pollUrl(sid));
      assert.equal(poll.text, '4€ 日本 🚀');
    });

    it('invalid packet closes the session', T, async () => {
      const sid = await openPolling();
      // the spec leaves the POST's own answer open (error status or dropped request);
      // what counts is that the session is gone afterwards
      await http(pollUrl(sid), { method: 'POST', body: 'abc' }).catch(() => null);
      const poll = await http(pollUrl(sid));
      assert.equal(poll.status, 400);
    });

    it('a second concurrent GET closes the session', T, async () => {
      const sid = await openPolling();
      const first = http(pollUrl(sid));
      await sleep(30);
      const second = await http(`${pollUrl(sid)}&t=burst`);
      const firstRes = await first;
      assert.ok([400, 500].includes(second.status), `second GET answered ${second.status}`);
      assert.equal(firstRes.status, 200);
      assert.equal(firstRes.text, '1', 'the pending GET receives a close packet');
      const after = await http(pollUrl(sid));
      assert.equal(after.status, 400);
    });
  });

  describe('WebSocket messages', () => {
    it('text echo', T, async () => {
      const { ws } = await openWs(EIO_WS());
      ws.send('4hello');
      assert.equal(await ws.next(), '4hello');
      ws.send('4€ 🚀');
      assert.equal(await ws.next(), '4€ 🚀');
      ws.close();
    });

    it('binary echo (binary frame in, binary frame out)', T, async () => {
      const { ws } = await openWs(EIO_WS());
      ws.send(Uint8Array.from([1, 2, 3, 4]));
      const got = await ws.next();
      assert.ok(Buffer.isBuffer(got), `binary frame, got ${JSON.stringify(got)}`);
      assert.deepEqual([...got], [1, 2, 3, 4]);
      ws.close();
    });

    it('invalid packet closes the connection', T, async () => {
      const { ws } = await openWs(EIO_WS());
      ws.send('abc');
      await ws.waitClose();
    });
  });

  describe('heartbeat', () => {
    it('polling: server ping, client pong (3 rounds)', T, async () => {
      const sid = await openPolling();
      for (let i = 0; i < 3; i++) {
        const t0 = Date.now();
        const poll = await http(pollUrl(sid));
        assert.equal(poll.status, 200);
        assert.equal(poll.text, '2');
        if (i > 0) assert.ok(Date.now() - t0 >= PING_INTERVAL - 100, 'pings are pingInterval apart');
        const push = await http(pollUrl(sid), { method: 'POST', body: '3' });
        assert.equal(push.status, 200);
        assert.equal(push.text, 'ok');
      }
    });

    it('polling: missing pong closes the session', T, async () => {
      const sid = await openPolling();
      await sleep(PING_INTERVAL + PING_TIMEOUT + 200);
      const poll = await http(pollUrl(sid));
      assert.ok(
        poll.status === 400 || (poll.status === 200 && poll.text === '1'),
        `poll after timeout answered ${poll.status} ${JSON.stringify(poll.text)}`,
      );
      const again = await http(pollUrl(sid));
      assert.equal(again.status, 400);
    });

    it('websocket: server ping, client pong (3 rounds)', T, async () => {
      const { ws } = await openWs(EIO_WS(), { autoPong: false });
      for (let i = 0; i < 3; i++) {
        assert.equal(await ws.next(2000), '2');
        ws.send('3');
      }
      assert.equal(ws.closed, false);
      ws.close();
    });

    it('websocket: missing pong closes the connection', T, async () => {
      const { ws } = await openWs(EIO_WS(), { autoPong: false });
      const t0 = Date.now();
      await ws.waitClose(PING_INTERVAL + PING_TIMEOUT + 1500);
      assert.ok(Date.now() - t0 >= PING_INTERVAL, 'not closed before the first ping');
    });
  });

  describe('close', () => {
    it('polling: close packet ends the pending GET with noop and the session', T, async () => {
      const sid = await openPolling();
      const [poll, push] = await Promise.all([
        http(pollUrl(sid)),
        sleep(30).then(() => http(pollUrl(sid), { method: 'POST', body: '1' })),
      ]);
      assert.equal(push.status, 200);
      assert.equal(poll.status, 200);
      assert.equal(poll.text, '6');
      const after = await http(pollUrl(sid));
      assert.equal(after.status, 400);
    });

    it('websocket: close packet closes the connection', T, async () => {
      const { ws } = await openWs(EIO_WS());
      ws.send('1');
      await ws.waitClose();
    });
  });

  describe('upgrade', () => {
    it('2probe -> 3probe, pending GET receives noop 6, then 5 completes the upgrade', T, async () => {
      const sid = await openPolling();
      const pending = http(pollUrl(sid));
      await sleep(30);
      const ws = new RawWs(`${EIO_WS()}?EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
      await ws.opened;
      ws.send('2probe');
      assert.equal(await ws.next(), '3probe');
      const p = await pending;
      assert.equal(p.status, 200);
      assert.equal(p.text, '6');
      ws.send('5');
      ws.send('4hello');
      assert.equal(await ws.next(), '4hello');
      ws.send(Uint8Array.from([9, 8, 7]));
      assert.deepEqual([...(await ws.next())], [9, 8, 7]);
    });

    it('a GET issued after the probe answers noop 6', T, async () => {
      const sid = await openPolling();
      const ws = new RawWs(`${EIO_WS()}?EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
      await ws.opened;
      ws.send('2probe');
      assert.equal(await ws.next(), '3probe');
      const p = await http(pollUrl(sid));
      assert.equal(p.status, 200);
      assert.equal(p.text, '6');
      ws.send('5');
      ws.send('4hello');
      assert.equal(await ws.next(), '4hello');
    });

    it('packets buffered before the upgrade are flushed over the websocket', T, async () => {
      const sid = await openPolling();
      const ws = new RawWs(`${EIO_WS()}?EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
      await ws.opened;
      ws.send('2probe');
      assert.equal(await ws.next(), '3probe');
      // sent over polling during the upgrade: the echo is buffered and must come over the websocket
      const push = await http(pollUrl(sid), { method: 'POST', body: '4during' });
      assert.equal(push.text, 'ok');
      ws.send('5');
      assert.equal(await nextSkippingNoop(ws), '4during');
    });

    it('no noop is sent over the websocket: after 3probe and 5 the next frame is the echo', T, async () => {
      // official engine.io-protocol suite ("ignores HTTP requests with same sid after upgrade"):
      // 3probe, then 4hello; the noop is only for a pending polling request
      const sid = await openPolling();
      const ws = new RawWs(`${EIO_WS()}?EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
      await ws.opened;
      ws.send('2probe');
      assert.equal(await ws.next(), '3probe');
      ws.send('5');
      await sleep(50);
      ws.send('4hello');
      assert.equal(await ws.next(), '4hello');
    });

    it('HTTP requests with the same sid are refused after the upgrade', T, async () => {
      const sid = await openPolling();
      const ws = new RawWs(`${EIO_WS()}?EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
      await ws.opened;
      ws.send('2probe');
      assert.equal(await ws.next(), '3probe');
      ws.send('5');
      await sleep(50);
      const poll = await http(pollUrl(sid));
      assert.equal(poll.status, 400);
      ws.send('4hello');
      assert.equal(await nextSkippingNoop(ws), '4hello');
    });

    it('a second websocket with the same sid is refused after the upgrade', T, async () => {
      const sid = await openPolling();
      const ws = new RawWs(`${EIO_WS()}?EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
      await ws.opened;
      ws.send('2probe');
      assert.equal(await ws.next(), '3probe');
      ws.send('5');
      await sleep(50);
      const ws2 = new RawWs(`${EIO_WS()}?EIO=4&transport=websocket&sid=${encodeURIComponent(sid)}`);
      await ws2.waitClose();
      ws.send('4hello');
      assert.equal(await nextSkippingNoop(ws), '4hello');
    });

    it('websocket upgrade with an unknown sid is refused', T, async () => {
      const ws = new RawWs(`${EIO_WS()}?EIO=4&transport=websocket&sid=no-such-sid`);
      await ws.waitClose();
      assert.deepEqual(ws.queue, []);
    });
  });
});

describe('Socket.IO v5 (/socket.io/)', () => {
  describe('connect', () => {
    it('engine handshake on /socket.io/ has the same shape', T, async () => {
      const r = await http(`${SIO()}?EIO=4&transport=polling`);
      assert.equal(r.status, 200);
      const open = parseOpen(r.text);
      assert.deepEqual(Object.keys(open).sort(), HANDSHAKE_KEYS);
      assert.deepEqual(open.upgrades, ['websocket']);
    });

    it('CONNECT / -> 40{"sid"} then auth event {}', T, async () => {
      const { ws } = await openWs(SIO_WS());
      ws.send('40');
      const reply = await ws.next();
      assert.ok(reply.startsWith('40'), reply);
      const hs = JSON.parse(reply.slice(2));
      assert.deepEqual(Object.keys(hs), ['sid']);
      assert.equal(typeof hs.sid, 'string');
      assert.equal(await ws.next(), '42["auth",{}]');
    });

    it('CONNECT / with auth payload -> auth event carries it', T, async () => {
      const { ws } = await openWs(SIO_WS());
      ws.send('40{"token":"123"}');
      const reply = await ws.next();
      assert.ok(reply.startsWith('40{'), reply);
      assert.deepEqual(Object.keys(JSON.parse(reply.slice(2))), ['sid']);
      assert.equal(await ws.next(), '42["auth",{"token":"123"}]');
    });

    it('CONNECT /custom, -> 40/custom,{"sid"} then auth event', T, async () => {
      const { ws } = await openWs(SIO_WS());
      ws.send('40/custom,');
      const reply = await ws.next();
      assert.ok(reply.startsWith('40/custom,'), reply);
      const hs = JSON.parse(reply.slice('40/custom,'.length));
      assert.deepEqual(Object.keys(hs), ['sid']);
      assert.equal(typeof hs.sid, 'string');
      assert.equal(await ws.next(), '42/custom,["auth",{}]');
    });

    it('CONNECT /custom with auth payload', T, async () => {
      const { ws } = await openWs(SIO_WS());
      ws.send('40/custom,{"token":"abc"}');
      const reply = await ws.next();
      assert.ok(reply.startsWith('40/custom,{'), reply);
      assert.equal(await ws.next(), '42/custom,["auth",{"token":"abc"}]');
    });

    it('CONNECT /custom without trailing comma', T, async () => {
      const { ws } = await openWs(SIO_WS());
      ws.send('40/custom');
      const reply = await ws.next();
      assert.ok(reply.startsWith('40/custom,{'), reply);
      assert.equal(await ws.next(), '42/custom,["auth",{}]');
    });

    it('CONNECT to an unknown namespace -> 44/random,{"message":"Invalid namespace"}', T, async () => {
      const { ws } = await openWs(SIO_WS());
      ws.send('40/random');
      assert.equal(await ws.next(), '44/random,{"message":"Invalid namespace"}');
      // the Engine.IO connection survives; a valid namespace still connects
      ws.send('40/custom,');
      assert.ok((await ws.next()).startsWith('40/custom,{'));
    });

    it('invalid packet before CONNECT (4abc) closes the connection', T, async () => {
      const { ws } = await openWs(SIO_WS());
      ws.send('4abc');
      await ws.waitClose();
    });
  });

  describe('disconnect', () => {
    it('DISCONNECT from / keeps the Engine.IO connection (next packet is a ping)', T, async () => {
      const ws = await sioConnect('40');
      ws.send('41');
      // keep reading raw: pings are hidden by RawWs, so observe them via the counter
      const seen = ws.pingsSeen;
      await sleep(PING_INTERVAL + 150);
      assert.equal(ws.closed, false);
      assert.ok(ws.pingsSeen > seen, 'still pinged');
      assert.deepEqual(ws.queue, []);
    });

    it('connect then disconnect /custom, / keeps working', T, async () => {
      const ws = await sioConnect('40');
      ws.send('40/custom');
      assert.ok((await ws.next()).startsWith('40/custom,'));
      assert.equal(await ws.next(), '42/custom,["auth",{}]');
      ws.send('41/custom');
      ws.send('42["message","message to main namespace",1,2]');
      assert.equal(await ws.next(), '42["message-back","message to main namespace",1,2]');
    });
  });

  describe('messages', () => {
    it('message -> message-back with the same args', T, async () => {
      const ws = await sioConnect('40');
      ws.send('42["message",1,"2",{"3":[true]}]');
      assert.equal(await ws.next(), '42["message-back",1,"2",{"3":[true]}]');
    });

    it('namespace packets with trailing comma (/custom)', T, async () => {
      const ws = await sioConnect('40/custom,', '/custom');
      ws.send('42/custom,["message","x",{"y":null}]');
      assert.equal(await ws.next(), '42/custom,["message-back","x",{"y":null}]');
      ws.send('42/custom,7["message-with-ack","z"]');
      assert.equal(await ws.next(), '43/custom,7["z"]');
    });

    it('binary attachments: 452-["message",...] -> 452-["message-back",...] + 2 binary frames', T, async () => {
      const ws = await sioConnect('40');
      ws.send('452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      ws.send(Uint8Array.from([1, 2, 3]));
      ws.send(Uint8Array.from([4, 5, 6]));
      const [head, b0, b1] = await ws.take(3);
      assert.equal(head, '452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      assert.ok(Buffer.isBuffer(b0) && Buffer.isBuffer(b1), 'attachments as binary frames');
      assert.deepEqual([...b0], [1, 2, 3]);
      assert.deepEqual([...b1], [4, 5, 6]);
    });

    it('message-with-ack is acked with the same args', T, async () => {
      const ws = await sioConnect('40');
      ws.send('42456["message-with-ack",1,"2",{"3":[false]}]');
      assert.equal(await ws.next(), '43456[1,"2",{"3":[false]}]');
    });

    it('message-with-ack with one binary attachment -> BINARY_ACK + binary frame', T, async () => {
      const ws = await sioConnect('40');
      ws.send('451-789["message-with-ack",{"_placeholder":true,"num":0}]');
      ws.send(Uint8Array.from([1, 2, 3]));
      const [head, b0] = await ws.take(2);
      assert.equal(head, '461-789[{"_placeholder":true,"num":0}]');
      assert.ok(Buffer.isBuffer(b0));
      assert.deepEqual([...b0], [1, 2, 3]);
    });

    it('message-with-ack with two binary attachments', T, async () => {
      const ws = await sioConnect('40');
      ws.send('452-790["message-with-ack",{"_placeholder":true,"num":0},"mid",{"_placeholder":true,"num":1}]');
      ws.send(Uint8Array.from([1, 2, 3]));
      ws.send(Uint8Array.from([4, 5, 6]));
      const [head, b0, b1] = await ws.take(3);
      assert.equal(head, '462-790[{"_placeholder":true,"num":0},"mid",{"_placeholder":true,"num":1}]');
      assert.deepEqual([...b0], [1, 2, 3]);
      assert.deepEqual([...b1], [4, 5, 6]);
    });

    for (const [name, packet] of [
      ['unknown packet type (4abc)', '4abc'],
      ['payload not an array (42{})', '42{}'],
      ['invalid ack id (42abc[...])', '42abc["message-with-ack",1,"2",{"3":[false]}]'],
    ]) {
      it(`invalid packet closes the connection: ${name}`, T, async () => {
        const ws = await sioConnect('40');
        ws.send(packet);
        await ws.waitClose();
      });
    }

    it('socket.io over HTTP long-polling: CONNECT, auth, message round trip', T, async () => {
      const sid = await openPolling(SIO());
      const url = pollUrl(sid, SIO());
      /** GETs until `n` non-ping packets arrived; answers pings with pongs. */
      async function pollPackets(n) {
        const out = [];
        const deadline = Date.now() + 5000;
        while (out.length < n && Date.now() < deadline) {
          const r = await http(url);
          assert.equal(r.status, 200, r.text);
          for (const p of r.text.split('\x1e')) {
            if (p === '2') {
              const pong = await http(url, { method: 'POST', body: '3' });
              assert.equal(pong.text, 'ok');
            } else {
              out.push(p);
            }
          }
        }
        return out;
      }
      let push = await http(url, { method: 'POST', body: '40{"token":"poll"}' });
      assert.equal(push.text, 'ok');
      const [hs, auth] = await pollPackets(2);
      assert.ok(hs.startsWith('40{'), hs);
      assert.deepEqual(Object.keys(JSON.parse(hs.slice(2))), ['sid']);
      assert.equal(auth, '42["auth",{"token":"poll"}]');
      push = await http(url, { method: 'POST', body: '42["message","a"]\x1e42["message","b"]' });
      assert.equal(push.text, 'ok');
      assert.deepEqual(await pollPackets(2), ['42["message-back","a"]', '42["message-back","b"]']);
      push = await http(url, { method: 'POST', body: '451-3["message-with-ack",{"_placeholder":true,"num":0}]\x1ebAQID' });
      assert.equal(push.text, 'ok');
      assert.deepEqual(await pollPackets(2), ['461-3[{"_placeholder":true,"num":0}]', 'bAQID']);
    });
  });
});
