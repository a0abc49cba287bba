// The --demo page in a real headless Chromium (Debian's, driven by playwright-core): prices,
// book levels, trades and candles must update from the live feed. Saves a screenshot.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = process.env.GATEWAY_BIN || path.join(REPO, 'target', 'debug', 'maven-gateway');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARTIFACTS = process.env.ARTIFACTS_DIR || path.join(REPO, 'target', 'test-artifacts');

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

async function waitReady(url, deadline) {
  while (Date.now() < deadline) {
    try {
      if ((await fetch(url)).status === 200) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} not ready`);
}

test('demo page shows live prices, book, trades and candles', { timeout: 90_000 }, async () => {
  const [port, internal] = [await freePort(), await freePort()];
  const gw = spawn(BIN, ['--listen', `127.0.0.1:${port}`, '--internal-listen', `127.0.0.1:${internal}`, '--demo'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  let browser;
  try {
    await waitReady(`http://127.0.0.1:${port}/ready`, Date.now() + 20_000);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction(() => document.getElementById('status').textContent === 'live', null, { timeout: 15_000 });

    // Each panel must change while we watch, not just fill once.
    const sample = () => page.evaluate(() => ({
      price: document.getElementById('last-price').textContent,
      bookId: document.getElementById('book-id').textContent,
      bids: document.querySelectorAll('#bids tr').length,
      asks: document.querySelectorAll('#asks tr').length,
      trades: document.querySelectorAll('#trades tr').length,
      firstTrade: document.querySelector('#trades tr')?.textContent ?? '',
      candles: Number(document.getElementById('chart').dataset.candles || 0),
    }));
    await page.waitForFunction(() => document.querySelectorAll('#trades tr').length > 0 &&
      document.getElementById('last-price').textContent !== '–', null, { timeout: 15_000 });
    const first = await sample();
    await page.waitForFunction((id) => document.getElementById('book-id').textContent !== id, first.bookId, { timeout: 10_000 });
    await page.waitForFunction((t) => (document.querySelector('#trades tr')?.textContent ?? '') !== t, first.firstTrade, { timeout: 10_000 });
    await page.waitForFunction((p) => document.getElementById('last-price').textContent !== p, first.price, { timeout: 10_000 });
    const later = await sample();
    assert.match(later.price, /^\d+\.\d+$/);
    assert.ok(later.bids > 5 && later.asks > 5, `book levels shown: ${JSON.stringify(later)}`);
    assert.ok(later.candles >= 1, 'at least one candle drawn');
    assert.ok(Number(later.bookId) > Number(first.bookId), 'book update ids advance');
    assert.deepEqual(errors, [], 'no page errors');

    // Chromium offered permessage-deflate and the page above decoded what came compressed:
    // the browser is the gateway's only client.
    const metrics = await (await fetch(`http://127.0.0.1:${internal}/metrics`)).text();
    const deflateBytes = (stage) => Number(metrics.match(new RegExp(`^gateway_deflate_bytes_total\\{stage="${stage}"\\} (\\d+)`, 'm'))?.[1] ?? 0);
    const [before, after] = [deflateBytes('before'), deflateBytes('after')];
    assert.ok(after > 0 && after < before, `compressed ${after} of ${before} bytes`);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo-page.png') });
  } finally {
    if (browser) await browser.close();
    gw.kill('SIGTERM');
  }
});
