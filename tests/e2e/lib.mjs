/*
 * Shared by the browser tests: where things are, chromium via playwright-core,
 * free ports, gateway health, and a minimal MCP client over plain fetch.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
export const CHROMIUM = process.env.AIRLOCK_CHROMIUM || '/usr/bin/chromium';
export const EVERYTHING = path.join(ROOT, 'tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js');

export let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch {
  ({ chromium } = await import(pathToFileURL(path.join(ROOT, 'tests/node/node_modules/playwright-core/index.mjs')).href));
}

/**
 * Headless chromium kept on this machine: no background traffic of its own,
 * and every host name but localhost fails to resolve, so a page that reaches
 * for the internet (the OpenID provider's login page imports a web font) fails
 * at once instead of waiting on a network that is not there. (Chromium sends
 * IP literals through the rules too, hence the 127.0.0.1 exclusion.)
 */
export const launchBrowser = () => chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
  ],
});

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

/** Waits for GET /healthz = 200; fails early if `proc` (optional) has exited. */
export async function waitHealthy(base, { ms = 60000, proc = null, log = '' } = {}) {
  const end = Date.now() + ms;
  let last = '';
  while (Date.now() < end) {
    if (proc && proc.exitCode !== null) throw new Error(`airlock exited with ${proc.exitCode}${log ? `; see ${log}` : ''}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) return;
      last = `HTTP ${r.status}`;
    } catch (e) { last = e.message; }
    await sleep(100);
  }
  throw new Error(`gateway at ${base} not healthy after ${ms} ms (${last})`);
}

/**
 * Starts `airlock serve --config <config>` on `port` (audit in `gw.dir`), its
 * output appended to `gw.log`; fills `gw.url` and `gw.proc` and resolves once
 * it is healthy. `env` adds to the environment (token variables).
 */
export async function serveGateway(gw, config, port, env) {
  gw.url = `http://127.0.0.1:${port}`;
  gw.proc = spawn(process.env.AIRLOCK_BIN, ['serve', '--config', config, '--listen', `127.0.0.1:${port}`,
    '--audit', path.join(gw.dir, 'audit.db')], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  gw.proc.stdout.pipe(gw.log, { end: false });
  gw.proc.stderr.pipe(gw.log, { end: false });
  await waitHealthy(gw.url, { proc: gw.proc });
}

/** SIGTERM to a child still running, resolved once it has exited. */
export async function stopProcess(proc) {
  if (!proc || proc.exitCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await exited;
}

export class McpClient {
  constructor(url, name = 'airlock-e2e') { this.url = url; this.sid = null; this.nextId = 1; this.version = '2025-06-18'; this.name = name; }

  headers() {
    const h = { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' };
    if (this.sid) { h['Mcp-Session-Id'] = this.sid; h['MCP-Protocol-Version'] = this.version; }
    return h;
  }

  async connect() {
    const res = await this.post({
      jsonrpc: '2.0', id: this.nextId++, method: 'initialize',
      params: { protocolVersion: this.version, capabilities: {}, clientInfo: { name: this.name, version: '1.0.0' } },
    });
    this.sid = res.headers.get('mcp-session-id');
    assert.ok(this.sid, 'initialize must return Mcp-Session-Id');
    const msg = await readRpc(res, 1);
    assert.ok(msg.result, `initialize failed: ${JSON.stringify(msg)}`);
    this.version = msg.result.protocolVersion || this.version;
    const n = await this.post({ jsonrpc: '2.0', method: 'notifications/initialized' });
    await n.arrayBuffer();
    assert.ok(n.status === 202 || n.status === 200, `notifications/initialized → HTTP ${n.status}`);
    return this;
  }

  post(body, signal) {
    return fetch(this.url, { method: 'POST', headers: this.headers(), body: JSON.stringify(body), signal });
  }

  /** Sends tools/call; resolves with the JSON-RPC response (held calls resolve when decided). */
  async callTool(name, args, { signal } = {}) {
    const id = this.nextId++;
    const res = await this.post({ jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: args } }, signal);
    assert.equal(res.status, 200, `tools/call ${name} → HTTP ${res.status}`);
    return readRpc(res, id);
  }
}

/** Reads a JSON or SSE response until the JSON-RPC response with `id` arrives. */
export async function readRpc(res, id) {
  const type = res.headers.get('content-type') || '';
  if (type.includes('application/json')) return res.json();
  assert.ok(type.includes('text/event-stream'), `unexpected content-type ${type}`);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`SSE stream ended before the response to ${id}`);
    buf += dec.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
      if (!data) continue;
      const msg = JSON.parse(data);
      if (msg.id === id && (msg.result || msg.error)) { reader.cancel().catch(() => {}); return msg; }
    }
  }
}

