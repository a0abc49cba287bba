// Client-side helpers: socket.io-client sockets with an event recorder, and a
// raw Engine.IO WebSocket client (package `ws`) for protocol-level tests.
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import WebSocket from 'ws';

/** The two transport settings every socket.io-client test runs with. */
export const MODES = [
  { name: 'polling+upgrade', transports: undefined },
  { name: 'websocket-only', transports: ['websocket'] },
];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function short(v) {
  let s;
  try {
    s = JSON.stringify(v);
  } catch {
    s = String(v);
  }
  return s && s.length > 300 ? `${s.slice(0, 300)}…` : s;
}

/**
 * Records every event a socket.io-client socket receives (socket.onAny), so a
 * test can wait for events that may already have arrived.
 */
export class Recorder {
  constructor(socket) {
    this.items = []; // {event, args, consumed, at (Date.now() on arrival)}
    this.waiters = new Set();
    socket.onAny((event, ...args) => {
      this.items.push({ event, args, consumed: false, at: Date.now() });
      for (const w of [...this.waiters]) w();
    });
  }

  /** A position in the stream of received events. */
  mark() {
    return this.items.length;
  }

  /** Events named `event` (all events when omitted) received since `mark`. */
  since(mark, event) {
    return this.items.slice(mark).filter((i) => event === undefined || i.event === event);
  }

  /** First payloads of all events named `event` received so far. */
  payloads(event) {
    return this.items.filter((i) => i.event === event).map((i) => i.args[0]);
  }

  summary(last = 10) {
    return this.items
      .slice(-last)
      .map((i) => `${i.event} ${short(i.args)}`)
      .join('\n  ');
  }

  /**
   * Resolves with the first payload of the first not yet consumed event named
   * `event` for which `where(payload, args)` holds; consumes it.
   */
  next(event, { timeout = 5000, where = () => true } = {}) {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        const it = this.items.find((i) => !i.consumed && i.event === event && where(i.args[0], i.args));
        if (!it) return false;
        it.consumed = true;
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(it.args[0]);
        return true;
      };
      if (check()) return;
      timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(
          new Error(
            `timed out after ${timeout} ms waiting for event '${event}'; last events received:\n  ${this.summary()}`,
          ),
        );
      }, timeout);
      this.waiters.add(check);
    });
  }

  /** Waits until `n` matching events arrived (consuming them); resolves with their payloads. */
  async collect(event, n, { timeout = 10000, where = () => true } = {}) {
    const deadline = Date.now() + timeout;
    const out = [];
    while (out.length < n) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`received only ${out.length} of ${n} '${event}' events within ${timeout} ms`);
      }
      try {
        out.push(await this.next(event, { timeout: left, where }));
      } catch (e) {
        throw new Error(`received only ${out.length} of ${n} '${event}' events within ${timeout} ms`);
      }
    }
    return out;
  }
}

const openSockets = new Set();

/**
 * Connects a socket.io-client socket to `url` (namespace included in the URL).
 * Resolves {socket, rec, connected} once `connect` fired and, unless
 * `waitConnected` is false, the gateway's `connected` event arrived.
 */
export async function connectClient(
  url,
  { transports, waitConnected = true, timeout = 8000, ioOpts = {} } = {},
) {
  const socket = io(url, {
    forceNew: true,
    reconnection: false,
    timeout: 5000,
    ...(transports ? { transports } : {}),
    ...ioOpts,
  });
  openSockets.add(socket);
  const rec = new Recorder(socket);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`connect to ${url} timed out after ${timeout} ms`));
    }, timeout);
    const onConnect = () => {
      cleanup();
      resolve();
    };
    const onError = (err) => {
      cleanup();
      reject(new Error(`connect_error from ${url}: ${err && err.message}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    };
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
  let connected;
  if (waitConnected) connected = await rec.next('connected', { timeout });
  return { socket, rec, connected };
}

/** Creates a socket without waiting for anything (caller handles events). */
export function rawClient(url, opts = {}) {
  const socket = io(url, { forceNew: true, reconnection: false, timeout: 5000, ...opts });
  openSockets.add(socket);
  return socket;
}

export function closeAllClients() {
  for (const s of openSockets) {
    try {
      s.disconnect();
    } catch {
      /* ignore */
    }
  }
  openSockets.clear();
}

/** emit with an ack callback; rejects after 5 s without ack. */
export function emitAck(socket, event, ...args) {
  return socket.timeout(5000).emitWithAck(event, ...args);
}

/** Resolves true when the engine runs on WebSocket within `timeout` ms. */
export async function waitWebsocketTransport(socket, timeout = 5000) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    const t = socket.io.engine && socket.io.engine.transport;
    if (t && t.name === 'websocket' && socket.io.engine.readyState === 'open') return true;
    await sleep(25);
  }
  return false;
}

// ---------------------------------------------------------------------------
// raw Engine.IO over WebSocket
// ---------------------------------------------------------------------------
const openRaw = new Set();

/**
 * A raw WebSocket with a message queue. Text frames are strings, binary frames
 * Buffers. With `autoPong` (default) every Engine.IO ping "2" is answered with
 * "3" and (with `hidePings`, default) not queued.
 */
export class RawWs {
  constructor(url, { autoPong = true, hidePings = true, headers, perMessageDeflate = true } = {}) {
    this.url = url;
    this.queue = [];
    this.waiters = new Set();
    this.closed = false;
    this.closeInfo = null;
    this.error = null;
    this.pingsSeen = 0;
    this.ws = new WebSocket(url, { headers, handshakeTimeout: 5000, perMessageDeflate });
    openRaw.add(this);
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('close', () => reject(new Error(`websocket ${url} closed before open`)));
      this.ws.once('error', () => {});
    });
    this.opened.catch(() => {});
    this.ws.on('message', (data, isBinary) => {
      const msg = isBinary ? Buffer.from(data) : data.toString('utf8');
      if (msg === '2') {
        this.pingsSeen++;
        if (autoPong && this.ws.readyState === WebSocket.OPEN) this.ws.send('3');
        if (autoPong && hidePings) return;
      }
      this.queue.push(msg);
      this._wake();
    });
    this.ws.on('error', (e) => {
      this.error = e;
    });
    this.ws.on('close', (code, reason) => {
      this.closed = true;
      this.closeInfo = { code, reason: reason.toString() };
      openRaw.delete(this);
      this._wake();
    });
  }

  _wake() {
    for (const w of [...this.waiters]) w();
  }

  send(data) {
    this.ws.send(data);
  }

  /** Next queued message; rejects on timeout or when the socket closes first. */
  next(timeout = 3000) {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        if (this.queue.length) {
          done();
          resolve(this.queue.shift());
          return true;
        }
        if (this.closed) {
          done();
          reject(new Error(`websocket closed (${JSON.stringify(this.closeInfo)}) while waiting for a message`));
          return true;
        }
        return false;
      };
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      if (check()) return;
      timer = setTimeout(() => {
        done();
        reject(new Error(`no websocket message within ${timeout} ms`));
      }, timeout);
      this.waiters.add(check);
    });
  }

  /** Collects `n` messages. */
  async take(n, timeout = 3000) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await this.next(timeout));
    return out;
  }

  /** Resolves with close info once closed; rejects when still open after `timeout`. */
  waitClose(timeout = 3000) {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        if (!this.closed) return false;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(this.closeInfo);
        return true;
      };
      if (check()) return;
      timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`websocket still open after ${timeout} ms`));
      }, timeout);
      this.waiters.add(check);
    });
  }

  close() {
    try {
      this.ws.terminate();
    } catch {
      /* ignore */
    }
  }
}

export function closeAllRaw() {
  for (const r of openRaw) r.close();
  openRaw.clear();
}

/** Lossless streams (trades, private rooms, broadcasts' own rooms) number their messages. */
export function isNumbered(room) {
  return !/^(ticker|orderbook|klines|bookTicker):/.test(room);
}

/** A data event's envelope: `{channel, data, timestamp}`, plus `seq` (a positive integer) on a
 * lossless stream. */
export function assertEnvelope(msg, room, data) {
  assert.equal(typeof msg, 'object', `envelope is an object: ${JSON.stringify(msg)}`);
  const keys = isNumbered(room) ? ['channel', 'data', 'seq', 'timestamp'] : ['channel', 'data', 'timestamp'];
  assert.deepEqual(Object.keys(msg).sort(), keys, JSON.stringify(msg));
  assert.equal(msg.channel, room);
  assert.deepEqual(msg.data, data);
  assert.ok(Number.isInteger(msg.timestamp), `timestamp is an integer: ${msg.timestamp}`);
  assert.ok(Math.abs(msg.timestamp - Date.now()) < 60000, `timestamp is ms near now: ${msg.timestamp}`);
  if (isNumbered(room)) assert.ok(Number.isInteger(msg.seq) && msg.seq > 0, `seq: ${msg.seq}`);
}

/** Kraken's WebSocket v2 book checksum of a window's top 10 levels, as the gateway sends it. */
export function topChecksum({ bids, asks }) {
  const digits = (s) => s.replace('.', '').replace(/^0+/, '');
  const levels = [...asks.slice(0, 10), ...bids.slice(0, 10)];
  return crc32(levels.map(([p, q]) => digits(p) + digits(q)).join(''));
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(text) {
  let c = 0xffffffff;
  for (const b of Buffer.from(text)) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
