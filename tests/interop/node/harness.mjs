// Process harness for the interop tests: starts the gateway binary and the
// conformance example on free loopback ports, waits until they serve, and
// always kills them again (SIGTERM on stop(), SIGKILL at process exit as a
// last resort).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..', '..');
export const GATEWAY_BIN =
  process.env.GATEWAY_BIN || path.join(REPO_ROOT, 'target', 'debug', 'maven-gateway');
export const CONFORMANCE_BIN =
  process.env.CONFORMANCE_BIN ||
  path.join(REPO_ROOT, 'target', 'debug', 'examples', 'conformance');

export const HOST = '127.0.0.1';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `pred` (may be async) every 20 ms until it returns something truthy, which it
 * returns; throws after `timeout` ms naming `what`. */
export async function waitFor(pred, timeout, what) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------
// children bookkeeping: whatever happens, no child outlives the test process
// ---------------------------------------------------------------------------
const children = new Set();

function killAllSync() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  children.clear();
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    killAllSync();
    process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
  });
}

// ---------------------------------------------------------------------------
// ports
// ---------------------------------------------------------------------------

/** Returns `n` distinct free TCP ports on 127.0.0.1 (bind port 0, read, close). */
export async function freePorts(n = 1) {
  const servers = [];
  try {
    for (let i = 0; i < n; i++) {
      const srv = net.createServer();
      await new Promise((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, HOST, resolve);
      });
      servers.push(srv);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(() => r()))));
  }
}

export async function freePort() {
  return (await freePorts(1))[0];
}

function tcpConnectOnce(port, timeoutMs = 500) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: HOST, port });
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

// ---------------------------------------------------------------------------
// generic child process wrapper
// ---------------------------------------------------------------------------
class Child {
  constructor(name, bin, args) {
    this.name = name;
    this.bin = bin;
    this.args = args;
    this.logLines = [];
    this.exit = null; // {code, signal}
    this.proc = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      // Every test client comes from 127.0.0.1: lift the per-address caps, and let tests
      // subscribe to symbols before anything was ingested for them, unless a test sets them
      // with flags (flags win over the environment).
      env: {
        RUST_BACKTRACE: '1',
        ...process.env,
        GATEWAY_MAX_CONNECTIONS_PER_IP: '100000',
        GATEWAY_HANDSHAKE_RATE_PER_IP: '100000',
        GATEWAY_MAX_MESSAGES_PER_SEC: '100000',
        GATEWAY_SUBSCRIBE_UNKNOWN_SYMBOLS: 'true',
      },
    });
    children.add(this.proc);
    const echo = process.env.INTEROP_SERVER_LOGS === '1';
    const onData = (buf) => {
      const text = buf.toString('utf8');
      if (echo) process.stderr.write(`[${name}] ${text}`);
      for (const line of text.split('\n')) {
        if (!line) continue;
        this.logLines.push(line);
        if (this.logLines.length > 300) this.logLines.shift();
      }
    };
    this.proc.stdout.on('data', onData);
    this.proc.stderr.on('data', onData);
    this.exited = new Promise((resolve) => {
      this.proc.once('error', (err) => {
        this.spawnError = err;
        this.exit = { code: null, signal: null, error: err };
        children.delete(this.proc);
        resolve(this.exit);
      });
      this.proc.once('exit', (code, signal) => {
        this.exit = { code, signal };
        children.delete(this.proc);
        resolve(this.exit);
      });
    });
  }

  logs() {
    return this.logLines.join('\n');
  }

  describe() {
    return `${this.name} (${this.bin} ${this.args.join(' ')})`;
  }

  /** Fails if the child has already exited. */
  assertAlive() {
    if (this.exit) {
      throw new Error(
        `${this.describe()} exited early: ${JSON.stringify(this.exit)}` +
          (this.spawnError ? ` ${this.spawnError.message}` : '') +
          `\n--- last log lines ---\n${this.logs()}`,
      );
    }
  }

  /**
   * SIGTERM, wait up to `graceMs` for exit, else SIGKILL. Returns the exit
   * status; throws when `accept(exit)` says the exit was not clean.
   */
  async stop({ graceMs = 10000, accept = (e) => e.code === 0 } = {}) {
    if (!this.exit) {
      this.proc.kill('SIGTERM');
      const timer = sleep(graceMs).then(() => 'timeout');
      const res = await Promise.race([this.exited, timer]);
      if (res === 'timeout') {
        this.proc.kill('SIGKILL');
        await this.exited;
        throw new Error(
          `${this.describe()} did not exit within ${graceMs} ms of SIGTERM (killed)` +
            `\n--- last log lines ---\n${this.logs()}`,
        );
      }
    }
    if (!accept(this.exit)) {
      throw new Error(
        `${this.describe()} exit after SIGTERM was ${JSON.stringify(this.exit)}` +
          `\n--- last log lines ---\n${this.logs()}`,
      );
    }
    return this.exit;
  }
}

// ---------------------------------------------------------------------------
// gateway
// ---------------------------------------------------------------------------

/**
 * Starts the gateway with `extraArgs` (array of strings) on free ports and
 * waits until `GET /ready` is 200 (20 s at most), or, with `awaitReady: false`, until it
 * answers at all.
 *
 * Returns {publicUrl, wsUrl, internalUrl, port, internalPort, ingest, stop, logs, child}.
 */
export async function startGateway(extraArgs = [], { readyTimeoutMs = 20000, awaitReady = true } = {}) {
  const [port, internalPort] = await freePorts(2);
  const args = [
    '--listen',
    `${HOST}:${port}`,
    '--internal-listen',
    `${HOST}:${internalPort}`,
    ...extraArgs,
  ];
  const child = new Child('gateway', GATEWAY_BIN, args);
  const publicUrl = `http://${HOST}:${port}`;
  const internalUrl = `http://${HOST}:${internalPort}`;

  const deadline = Date.now() + readyTimeoutMs;
  let last = 'no answer';
  for (;;) {
    try {
      child.assertAlive();
    } catch (e) {
      throw e;
    }
    try {
      const res = await fetch(`${publicUrl}/ready`, { signal: AbortSignal.timeout(1000) });
      await res.text();
      // Not awaiting readiness: any answer means it listens.
      if (res.status === 200 || !awaitReady) break;
      last = `status ${res.status}`;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) {
      await child.stop({ graceMs: 2000, accept: () => true }).catch(() => {});
      throw new Error(
        `${child.describe()} not ready within ${readyTimeoutMs} ms (last: ${last})` +
          `\n--- last log lines ---\n${child.logs()}`,
      );
    }
    await sleep(50);
  }

  /**
   * POST events to /internal/events. `events`: object/array (sent as JSON) or
   * a string (sent as is; NDJSON when it contains newlines, unless
   * `contentType` says otherwise). Resolves {status, body, text}.
   */
  async function ingest(events, { token, contentType, headers = {} } = {}) {
    const isString = typeof events === 'string';
    const body = isString ? events : JSON.stringify(events);
    const h = {
      'content-type':
        contentType || (isString && body.includes('\n') ? 'application/x-ndjson' : 'application/json'),
      ...headers,
    };
    if (token !== undefined) h.authorization = `Bearer ${token}`;
    const res = await fetch(`${internalUrl}/internal/events`, {
      method: 'POST',
      headers: h,
      body,
      signal: AbortSignal.timeout(10000),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, body: json, text };
  }

  let stopped = false;
  return {
    port,
    internalPort,
    publicUrl,
    wsUrl: `ws://${HOST}:${port}`,
    internalUrl,
    child,
    ingest,
    logs: () => child.logs(),
    /** SIGTERM and require exit code 0. Idempotent. */
    async stop(opts) {
      if (stopped) return child.exit;
      stopped = true;
      return child.stop(opts);
    },
  };
}

// ---------------------------------------------------------------------------
// conformance example
// ---------------------------------------------------------------------------

/** Starts `conformance --port P`; ready when a TCP connect succeeds (20 s at most). */
export async function startConformance({ readyTimeoutMs = 20000 } = {}) {
  const port = await freePort();
  const child = new Child('conformance', CONFORMANCE_BIN, ['--port', String(port)]);
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    child.assertAlive();
    if (await tcpConnectOnce(port)) break;
    if (Date.now() > deadline) {
      await child.stop({ graceMs: 2000, accept: () => true }).catch(() => {});
      throw new Error(
        `${child.describe()} not accepting TCP within ${readyTimeoutMs} ms` +
          `\n--- last log lines ---\n${child.logs()}`,
      );
    }
    await sleep(50);
  }
  let stopped = false;
  return {
    port,
    url: `http://${HOST}:${port}`,
    wsUrl: `ws://${HOST}:${port}`,
    child,
    logs: () => child.logs(),
    /** SIGTERM; a clean exit is code 0 or death by that SIGTERM. */
    async stop(opts) {
      if (stopped) return child.exit;
      stopped = true;
      return child.stop({
        accept: (e) => e.code === 0 || e.signal === 'SIGTERM',
        ...opts,
      });
    },
  };
}

// ---------------------------------------------------------------------------
// redis-server (cluster-mode tests)
// ---------------------------------------------------------------------------

export const haveRedis = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).status === 0;

/** A throwaway redis-server on a free port (no persistence). */
export async function startRedis() {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'recovery-redis-'));
  const proc = spawn('redis-server', ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  });
  const deadline = Date.now() + 10000;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, HOST, () => {
        c.write('PING\r\n');
      });
      c.on('data', (d) => {
        c.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
      c.on('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error('redis-server did not start');
    await sleep(50);
  }
  return {
    url: `redis://${HOST}:${port}`,
    stop: () => {
      proc.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------
// a TCP load balancer on loopback (recovery tests)
// ---------------------------------------------------------------------------

/**
 * Forwards each new connection to the current backend port. `to(port)` switches backends,
 * `cutAll()` cuts every open connection as a network failure would, `pause(true)` refuses new
 * connections until `pause(false)`.
 */
export async function startBalancer(backendPort) {
  let backend = backendPort;
  let paused = false;
  const open = new Set();
  const server = net.createServer((inbound) => {
    if (paused) return inbound.destroy();
    const out = net.connect(backend, HOST);
    open.add(inbound);
    inbound.pipe(out).pipe(inbound);
    const end = () => {
      inbound.destroy();
      out.destroy();
      open.delete(inbound);
    };
    for (const s of [inbound, out]) {
      s.on('error', end);
      s.on('close', end);
    }
  });
  await new Promise((r) => server.listen(0, HOST, r));
  return {
    url: `http://${HOST}:${server.address().port}`,
    to: (port) => {
      backend = port;
    },
    cutAll: () => {
      for (const s of open) s.destroy();
    },
    pause: (p) => {
      paused = p;
    },
    close: () => {
      for (const s of open) s.destroy();
      server.close();
    },
  };
}
