// A minimal server on the official Node `socket.io` with the same /ws API as maven-gateway,
// for loadtest comparisons: `subscribe {channel, symbol|symbols, interval?}` joins
// `trades:S`, `ticker:S`, `orderbook:S`, `klines:S:I`; `POST /internal/events` on the ingest
// port (the gateway's ingest format: one object, an array, or NDJSON) emits
// `{channel, data, timestamp}` envelopes to rooms. No throttling, no order book replica, no
// last value on subscribe: plain broadcast, as a baseline.
//
// PORT (default 3002) and INGEST_PORT (default 9102) pick the ports; both bind 127.0.0.1.
// RECOVERY=1 turns on socket.io's connection state recovery (2 minutes, as the gateway's
// default window), for the jitter scenario. DEFLATE=1 turns on `perMessageDeflate` (socket.io
// compresses per socket, messages of 1 KB and more by `ws`'s default; DEFLATE_THRESHOLD sets
// another), to compare with the gateway's compression once per broadcast.
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const PORT = Number(process.env.PORT || 3002);
const INGEST_PORT = Number(process.env.INGEST_PORT || 9102);
const INTERVALS = new Set(['1m', '3m', '5m', '15m', '30m', '1h', '4h', '1d', '1w', '1M']);
const SYMBOL = /^[A-Z0-9]{2,20}$/;

const httpServer = createServer();
const io = new Server(httpServer, {
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
  cors: { origin: '*' },
  ...(process.env.RECOVERY === '1'
    ? { connectionStateRecovery: { maxDisconnectionDuration: 120000, skipMiddlewares: true } }
    : {}),
  ...(process.env.DEFLATE === '1'
    ? { perMessageDeflate: { threshold: Number(process.env.DEFLATE_THRESHOLD || 1024) } }
    : {}),
});
const ws = io.of('/ws');

class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function roomsFor(p) {
  if (!p || typeof p !== 'object') throw new ApiError('BAD_REQUEST', 'payload must be an object');
  const { channel } = p;
  if (typeof channel !== 'string') throw new ApiError('INVALID_CHANNEL', 'missing channel');
  let symbols;
  let list = false;
  if (Array.isArray(p.symbols) && p.symbols.length > 0) {
    if (!p.symbols.every((s) => typeof s === 'string')) throw new ApiError('BAD_REQUEST', 'symbols must be strings');
    symbols = p.symbols;
    list = true;
  } else if (typeof p.symbol === 'string') {
    symbols = [p.symbol];
  } else {
    throw new ApiError('INVALID_SYMBOL', 'missing symbol');
  }
  for (const s of symbols) {
    if (!(SYMBOL.test(s) || (s === 'all' && channel === 'ticker'))) throw new ApiError('INVALID_SYMBOL', `invalid symbol ${s}`);
  }
  let rooms;
  switch (channel) {
    case 'ticker':
    case 'orderbook':
      rooms = symbols.map((s) => `${channel}:${s}`);
      break;
    case 'trades':
      rooms = symbols.map((s) => `trades:${s}`);
      break;
    case 'klines':
      if (!INTERVALS.has(p.interval)) throw new ApiError('INVALID_INTERVAL', 'invalid interval');
      rooms = symbols.map((s) => `klines:${s}:${p.interval}`);
      break;
    default:
      throw new ApiError('INVALID_CHANNEL', `unknown channel ${channel}`);
  }
  const reply = { channel, rooms };
  if (list) reply.symbols = symbols;
  else reply.symbol = symbols[0];
  if (p.interval !== undefined) reply.interval = p.interval;
  return reply;
}

// As the gateway: with an ack the answer comes only as the ack, otherwise as an event.
function handle(socket, event, p, ack, fn) {
  try {
    const reply = fn(p);
    if (typeof ack === 'function') ack({ ok: true, ...reply });
    else socket.emit(event, reply);
  } catch (e) {
    const error = { code: e.code || 'BAD_REQUEST', message: e.message };
    if (typeof ack === 'function') ack({ ok: false, error });
    else socket.emit('error', { ...error, request: p });
  }
}

ws.on('connection', (socket) => {
  socket.emit('connected', { socketId: socket.id, userId: null, authenticated: false, serverTime: Date.now() });
  socket.on('subscribe', (p, ack) =>
    handle(socket, 'subscribed', p, ack, (p) => {
      const r = roomsFor(p);
      socket.join(r.rooms);
      return r;
    }),
  );
  socket.on('unsubscribe', (p, ack) =>
    handle(socket, 'unsubscribed', p, ack, (p) => {
      const r = roomsFor(p);
      for (const room of r.rooms) socket.leave(room);
      return r;
    }),
  );
  socket.on('subscribe.private', (p, ack) =>
    handle(socket, 'subscribed', p, ack, () => {
      throw new ApiError('UNAUTHORIZED', 'authentication required');
    }),
  );
  socket.on('ping', (ack) => {
    if (typeof ack === 'function') ack({ ok: true, timestamp: Date.now() });
    else socket.emit('pong', { timestamp: Date.now() });
  });
});

function route(e) {
  if (!e || typeof e !== 'object' || !('data' in e)) throw new Error('missing data');
  const { data } = e;
  if (typeof e.room === 'string' && typeof e.event === 'string') return [[e.room, e.event, data]];
  const sym = () => {
    if (typeof e.symbol !== 'string' || !SYMBOL.test(e.symbol)) throw new Error('invalid symbol');
    return e.symbol;
  };
  switch (e.type) {
    case 'trade':
      return [[`trades:${sym()}`, 'trade', data]];
    case 'ticker.update': {
      const s = sym();
      return [
        [`ticker:${s}`, 'ticker.update', data],
        ['ticker:all', 'tickers.update', [data]],
      ];
    }
    case 'orderbook.update': {
      const s = sym();
      return [[`orderbook:${s}`, 'orderbook.update', { symbol: s, ...data }]];
    }
    case 'kline.update':
      if (!INTERVALS.has(e.interval)) throw new Error('invalid interval');
      return [[`klines:${sym()}:${e.interval}`, 'kline.update', data]];
    default: {
      const t = String(e.type);
      if (typeof e.userId !== 'string') throw new Error('missing userId');
      let suffix;
      if (t.startsWith('order.')) suffix = 'orders';
      else if (t === 'trade.executed') suffix = 'trades';
      else if (t.startsWith('balance.')) suffix = 'balances';
      else if (t.startsWith('deposit.')) suffix = 'deposits';
      else throw new Error(`unknown type ${t}`);
      return [[`user:${e.userId}:${suffix}`, t, data]];
    }
  }
}

function parseBody(text) {
  try {
    const v = JSON.parse(text);
    return Array.isArray(v) ? v : [v];
  } catch {
    return text
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l));
  }
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const ingest = createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/internal/events') return reply(res, 404, { error: 'NOT_FOUND' });
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let events;
    try {
      events = parseBody(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      return reply(res, 400, { error: 'BAD_JSON', message: e.message });
    }
    const out = [];
    for (let i = 0; i < events.length; i++) {
      try {
        out.push(...route(events[i]));
      } catch (e) {
        return reply(res, 400, { error: 'BAD_EVENT', index: i, message: e.message });
      }
    }
    const timestamp = Date.now();
    for (const [room, event, data] of out) ws.to(room).emit(event, { channel: room, data, timestamp });
    reply(res, 202, { accepted: events.length });
  });
});

httpServer.listen(PORT, '127.0.0.1', () => {
  ingest.listen(INGEST_PORT, '127.0.0.1', () => {
    console.error(`compare-node: socket.io on 127.0.0.1:${PORT}, ingest on 127.0.0.1:${INGEST_PORT}`);
  });
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    io.close();
    ingest.close();
    process.exit(0);
  });
}
