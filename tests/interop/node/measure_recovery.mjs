// Measures connection state recovery (not a test: prints figures). A socket.io-client socket
// subscribed to one trade stream loses its connection through a loopback balancer, N trades
// are ingested while it is away, and the time from the recovered `connect` to the last missed
// trade is taken, N = 1,000 / 10,000 / 50,000, three runs each (median printed).
//
//   GATEWAY_BIN=target/release/maven-gateway node tests/interop/node/measure_recovery.mjs
import { io } from 'socket.io-client';
import { startGateway, startBalancer } from './harness.mjs';

const BATCH = 1000;

const once = (s, ev) => new Promise((r) => s.once(ev, r));

async function run(gw, n, tag) {
  const lb = await startBalancer(gw.port);
  const symbol = `MR${tag}`;
  const socket = io(`${lb.url}/ws`, {
    forceNew: true,
    transports: ['websocket'],
    reconnectionDelay: 200,
    reconnectionDelayMax: 200,
    randomizationFactor: 0,
  });
  await once(socket, 'connect');
  await socket.emitWithAck('subscribe', { channel: 'trades', symbol });
  let got = 0;
  let done;
  const all = new Promise((r) => (done = r));
  socket.on('trade', (m) => {
    got += 1;
    if (m.data.seq === n) done(performance.now());
  });
  // Keep the client away (its reconnection attempts fail) while the trades go in.
  lb.pause(true);
  lb.cutAll();
  await once(socket, 'disconnect');
  for (let i = 1; i <= n; i += BATCH) {
    const events = [];
    for (let k = i; k < i + BATCH && k <= n; k++) events.push({ type: 'trade', symbol, data: { symbol, price: '1.00', qty: '1', seq: k } });
    const res = await gw.ingest(events);
    if (res.status !== 202) throw new Error(`ingest ${res.status}`);
  }
  lb.pause(false);
  await once(socket, 'connect');
  const t0 = performance.now();
  if (!socket.recovered) throw new Error('not recovered');
  const t1 = await all;
  socket.close();
  lb.close();
  if (got !== n) throw new Error(`got ${got} of ${n}`);
  return t1 - t0;
}

const gw = await startGateway(['--recovery-max-events', '1000000']);
try {
  for (const n of [1000, 10000, 50000]) {
    const times = [];
    for (let r = 0; r < 3; r++) times.push(await run(gw, n, `${n}${r}`));
    times.sort((a, b) => a - b);
    const med = times[1];
    console.log(
      `${n} missed trades: replayed in ${med.toFixed(1)} ms median (${times.map((t) => t.toFixed(1)).join(', ')}), ` +
        `${Math.round(n / (med / 1000)).toLocaleString('en-US')} events/s`,
    );
  }
} finally {
  await gw.stop();
}
