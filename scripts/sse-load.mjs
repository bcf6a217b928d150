// Load figure for live stock: opens WATCHERS concurrent Server-Sent Event streams on one sku,
// then makes PURCHASES buy-now purchases one at a time and measures, for every watcher, the
// delay from sending the purchase to receiving the new count; reports the service's memory
// (VmRSS of SERVICE_PID) before and with the watchers. scripts/sse-load runs it against a
// throwaway service; it can also be pointed at a running one (BASE_URL, ADMIN_PASSWORD,
// SERVICE_PID, JWT-free: it signs up one customer).
//
// Prints a human summary and, last, one JSON line.

import http from 'node:http';
import { readFileSync } from 'node:fs';

const BASE = new URL(process.env.BASE_URL || 'http://127.0.0.1:8080');
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD || 'admin-dev-password';
const WATCHERS = Number(process.env.WATCHERS || 10_000);
const PURCHASES = Number(process.env.PURCHASES || 20);
const GAP_MS = Number(process.env.GAP_MS || 700);
const RAMP = Number(process.env.RAMP || 200); // connections opened at once
const PID = process.env.SERVICE_PID;

const log = (...a) => console.error('sse-load:', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function rssKb() {
  if (!PID) return null;
  const m = readFileSync(`/proc/${PID}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : null;
}

function cpuSeconds() {
  if (!PID) return null;
  const f = readFileSync(`/proc/${PID}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, clock ticks (100/s)
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function request(method, path, { token, body, headers } = {}) {
  return new Promise((resolve, reject) => {
    const h = Object.assign({}, headers);
    if (token) h.authorization = 'Bearer ' + token;
    const data = body === undefined ? undefined : JSON.stringify(body);
    if (data) h['content-type'] = 'application/json';
    const req = http.request({ host: BASE.hostname, port: BASE.port, method, path, headers: h, agent }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => {
        if (res.statusCode >= 300) reject(new Error(`${method} ${path}: ${res.statusCode} ${text}`));
        else resolve(text ? JSON.parse(text) : null);
      });
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

async function seed(units) {
  const admin = (await request('POST', '/v1/auth/token', { body: { username: 'admin', password: ADMIN_PASSWORD } })).access_token;
  const run = Date.now().toString(36);
  const wh = await request('POST', '/v1/warehouses', { token: admin, body: { name: 'load-' + run } });
  const { sku } = await request('POST', '/v1/products', { token: admin, body: { name: 'Load test item', price: 1000 } });
  await request('POST', `/v1/products/${sku}/stock`, { token: admin, body: { warehouse_id: wh.warehouse_id, delta: units } });
  const now = Date.now();
  await request('PUT', `/v1/products/${sku}/sale`, {
    token: admin,
    body: { sale_price: 500, starts_at: new Date(now - 60_000).toISOString(), ends_at: new Date(now + 3_600_000).toISOString() },
  });
  const user = { username: 'loadbuyer_' + run, password: 'loadbuyer-password' };
  await request('POST', '/v1/users', { body: user });
  const token = (await request('POST', '/v1/auth/token', { body: user })).access_token;
  return { sku, token };
}

// One watcher: a raw SSE stream; calls onCount(count, now) for each stock event.
function watch(sku, onCount) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: BASE.hostname,
      port: BASE.port,
      path: `/v1/products/${sku}/stock/stream`,
      agent: false,
      headers: { accept: 'text/event-stream' },
    });
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return reject(new Error('stream: ' + res.statusCode));
      }
      res.setEncoding('utf8');
      let buf = '';
      let first = true;
      res.on('data', (chunk) => {
        const t = performance.now();
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const m = block.match(/^data:\s*(.*)$/m);
          if (!m) continue;
          const count = JSON.parse(m[1]).available;
          if (first) {
            first = false;
            resolve(req);
          }
          onCount(count, t);
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main() {
  const units = PURCHASES + 10;
  const { sku, token } = await seed(units);
  await sleep(300);
  const rssBefore = rssKb();
  log(`sku ${sku}: ${units} units; service RSS ${rssBefore} kB before watchers; opening ${WATCHERS} streams`);

  // Per watcher: the time it first saw a count <= target (per purchase).
  let target = Infinity;
  const seen = new Float64Array(WATCHERS).fill(0);
  const opened = [];
  const started = performance.now();
  for (let i = 0; i < WATCHERS; i += RAMP) {
    const batch = [];
    for (let j = i; j < Math.min(WATCHERS, i + RAMP); j++) {
      batch.push(
        watch(sku, (count, t) => {
          if (count <= target && seen[j] === 0) seen[j] = t;
        }),
      );
    }
    opened.push(...(await Promise.all(batch)));
  }
  const openSecs = (performance.now() - started) / 1000;
  await sleep(2000);
  const rssWith = rssKb();
  const cpu0 = cpuSeconds();
  await sleep(5000);
  const idleCpu = cpuSeconds() !== null ? (cpuSeconds() - cpu0) / 5 : null;
  log(`${opened.length} streams open in ${openSecs.toFixed(1)} s; service RSS ${rssWith} kB (+${rssWith - rssBefore} kB); idle CPU ${idleCpu} cores`);

  const delays = [];
  let missed = 0;
  let available = units;
  const cpuBuy0 = cpuSeconds();
  for (let k = 0; k < PURCHASES; k++) {
    seen.fill(0);
    target = available - 1;
    const t0 = performance.now();
    await request('POST', '/v1/orders/buy-now', { token, body: { sku, count: 1 } });
    available -= 1;
    await sleep(GAP_MS);
    for (let j = 0; j < WATCHERS; j++) {
      if (seen[j] === 0) missed++;
      else delays.push(seen[j] - t0);
    }
  }
  const buyCpu = cpuSeconds() !== null ? (cpuSeconds() - cpuBuy0) / PURCHASES : null;
  delays.sort((a, b) => a - b);
  const result = {
    watchers: opened.length,
    purchases: PURCHASES,
    updates_received: delays.length,
    updates_missed: missed,
    delay_ms: {
      p50: +pct(delays, 50).toFixed(1),
      p99: +pct(delays, 99).toFixed(1),
      max: +delays[delays.length - 1].toFixed(1),
    },
    rss_kb_before: rssBefore,
    rss_kb_with_watchers: rssWith,
    rss_bytes_per_watcher: rssBefore && rssWith ? Math.round(((rssWith - rssBefore) * 1024) / opened.length) : null,
    idle_cpu_cores: idleCpu,
    cpu_seconds_per_purchase_fanout: buyCpu,
    open_seconds: +openSecs.toFixed(1),
  };
  log(
    `${delays.length} updates (${missed} missed): delay p50 ${result.delay_ms.p50} ms, ` +
      `p99 ${result.delay_ms.p99} ms, max ${result.delay_ms.max} ms`,
  );
  console.log(JSON.stringify(result));
  for (const r of opened) r.destroy();
  agent.destroy();
  process.exit(missed === 0 ? 0 : 1);
}

main().catch((e) => {
  log('FAILED:', e.stack || e.message);
  process.exit(1);
});
