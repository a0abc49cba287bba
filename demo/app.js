// The demo trading view: the official socket.io-client against the gateway's /ws namespace,
// using the public channels exactly as an exchange front end would.
'use strict';

const $ = (id) => document.getElementById(id);
const LEVELS = 12;
const TRADES = 30;

let socket;
let symbol = $('symbol').value;
let interval = $('interval').value;
let book = { bids: new Map(), asks: new Map(), lastUpdateId: 0 };
let candles = new Map();

function subscriptions() {
  return [
    { channel: 'ticker', symbol },
    { channel: 'orderbook', symbol },
    { channel: 'trades', symbol },
    { channel: 'klines', symbol, interval },
  ];
}

function connect() {
  socket = io('/ws', { transports: ['polling', 'websocket'] });
  socket.on('connected', () => {
    $('status').textContent = 'live';
    $('status').className = 'status live';
    for (const s of subscriptions()) socket.emit('subscribe', s);
  });
  socket.on('disconnect', () => {
    $('status').textContent = 'reconnecting…';
    $('status').className = 'status';
  });
  socket.on('ticker.update', (m) => m.data.symbol === symbol && renderTicker(m.data));
  socket.on('orderbook.update', (m) => m.data.symbol === symbol && applyBook(m.data));
  socket.on('trade', (m) => m.data.symbol === symbol && addTrade(m.data));
  socket.on('kline.update', (m) => m.channel === `klines:${symbol}:${interval}` && addCandle(m.data));
  socket.on('server.shutdown', () => { $('status').textContent = 'gateway restarting…'; });
}

function resubscribe(change) {
  for (const s of subscriptions()) socket.emit('unsubscribe', s);
  change();
  book = { bids: new Map(), asks: new Map(), lastUpdateId: 0 };
  candles = new Map();
  $('trades').innerHTML = '';
  renderBook();
  for (const s of subscriptions()) socket.emit('subscribe', s);
}

$('symbol').addEventListener('change', () => resubscribe(() => { symbol = $('symbol').value; }));
$('interval').addEventListener('change', () => resubscribe(() => { interval = $('interval').value; }));

function renderTicker(t) {
  $('last-price').textContent = t.lastPrice;
  const pct = Number(t.priceChangePercent);
  $('change').textContent = `${pct >= 0 ? '+' : ''}${t.priceChangePercent}%`;
  $('change').className = pct >= 0 ? 'up' : 'down';
  $('high').textContent = t.high24h;
  $('low').textContent = t.low24h;
  $('volume').textContent = t.volume24h;
}

// Snapshot replaces the book; each delta must continue the previous one, else we wait for the
// gateway's resync snapshot (it sends one whenever continuity breaks).
function applyBook(d) {
  if (d.type === 'snapshot') {
    book = { bids: new Map(d.bids), asks: new Map(d.asks), lastUpdateId: d.lastUpdateId };
  } else {
    if (d.firstUpdateId !== book.lastUpdateId + 1) return;
    for (const [p, q] of d.bids) (Number(q) === 0 ? book.bids.delete(p) : book.bids.set(p, q));
    for (const [p, q] of d.asks) (Number(q) === 0 ? book.asks.delete(p) : book.asks.set(p, q));
    book.lastUpdateId = d.lastUpdateId;
  }
  renderBook();
}

function rows(levels) {
  return levels.map(([p, q]) => `<tr><td>${p}</td><td>${q}</td></tr>`).join('');
}

function renderBook() {
  const bids = [...book.bids].sort((a, b) => Number(b[0]) - Number(a[0])).slice(0, LEVELS);
  const asks = [...book.asks].sort((a, b) => Number(a[0]) - Number(b[0])).slice(0, LEVELS);
  $('bids').innerHTML = rows(bids);
  $('asks').innerHTML = rows(asks.slice().reverse());
  $('spread').textContent = bids.length && asks.length ? `spread ${(Number(asks[0][0]) - Number(bids[0][0])).toFixed(3)}` : '–';
  $('book-id').textContent = book.lastUpdateId || '–';
}

function addTrade(t) {
  const tr = document.createElement('tr');
  tr.className = t.side === 'sell' ? 'sell' : 'buy';
  tr.innerHTML = `<td>${t.price}</td><td>${t.quantity}</td><td>${new Date(t.timestamp).toLocaleTimeString()}</td>`;
  const body = $('trades');
  body.prepend(tr);
  while (body.children.length > TRADES) body.lastChild.remove();
}

function addCandle(k) {
  candles.set(k.openTime, k);
  const keys = [...candles.keys()].sort((a, b) => a - b);
  while (keys.length > 60) candles.delete(keys.shift());
  drawChart();
}

function drawChart() {
  const canvas = $('chart');
  const ctx = canvas.getContext('2d');
  const list = [...candles.values()].sort((a, b) => a.openTime - b.openTime);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!list.length) return;
  const hi = Math.max(...list.map((c) => Number(c.high)));
  const lo = Math.min(...list.map((c) => Number(c.low)));
  const span = hi - lo || 1;
  const y = (v) => canvas.height - 10 - ((Number(v) - lo) / span) * (canvas.height - 20);
  const w = canvas.width / 60;
  list.forEach((c, i) => {
    const x = i * w + w / 2;
    const up = Number(c.close) >= Number(c.open);
    ctx.strokeStyle = ctx.fillStyle = up ? '#1fb87a' : '#e5484d';
    ctx.beginPath();
    ctx.moveTo(x, y(c.high));
    ctx.lineTo(x, y(c.low));
    ctx.stroke();
    const top = y(Math.max(Number(c.open), Number(c.close)));
    ctx.fillRect(x - w * 0.35, top, w * 0.7, Math.max(1, y(Math.min(Number(c.open), Number(c.close))) - top));
  });
  canvas.dataset.candles = String(list.length);
}

connect();
