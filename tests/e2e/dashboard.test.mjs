/*
 * Browser tests for the approval dashboard (issue 5), run with
 *   node --test tests/e2e/
 * using node:test + playwright-core driving Debian's chromium.
 *
 * ─── WHAT THE HARNESS MUST PROVIDE ────────────────────────────────────────────
 * Mode A — this file starts the gateway itself (preferred; needed for the
 *          restart test without extra hooks):
 *   AIRLOCK_BIN=target/debug/airlock      the built binary
 *   → runs, on a free port, with a fresh temp audit db and a random token:
 *       AIRLOCK_APPROVER_TOKEN=<random> $AIRLOCK_BIN serve --listen 127.0.0.1:<port>
 *         --policy tests/e2e/policy.json --audit <tmp>/audit.db
 *         -- <node> tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js stdio
 *     waits for GET /healthz = 200, and restarts it (SIGTERM, same port, same db,
 *     same token) for the restart test.
 * Mode B — the harness started the gateway (quick mode, tests/e2e/policy.json in
 *          front of server-everything) and sets:
 *   AIRLOCK_URL               gateway base URL, e.g. http://127.0.0.1:8080
 *   AIRLOCK_APPROVER_TOKEN    the approver token of that gateway
 *   AIRLOCK_MCP_URL           the agent endpoint, e.g. http://127.0.0.1:8080/mcp
 *   AIRLOCK_STOP_CMD / AIRLOCK_START_CMD   optional shell commands that stop and
 *                             start it again on the same address with the same
 *                             token (START returns once /healthz answers); without
 *                             them the restart test is skipped.
 * Both modes:
 *   AIRLOCK_CHROMIUM          default /usr/bin/chromium (apt-get install -y chromium)
 *   AIRLOCK_E2E_ARTIFACTS     screenshots + gateway log; default tests/e2e/artifacts
 *   playwright-core           resolved normally, else from tests/node/node_modules
 *
 * What the gateway must behave like (beyond DESIGN.md §5–6), so these pass:
 *   - the session cookie (and its CSRF token) stays valid across a restart of the
 *     gateway with the same approver token (e.g. HMAC-signed with a key derived
 *     from the token); otherwise the page falls back to the login view;
 *   - the body cap admits a ~1 MB tools/call; the deny text carries the comment.
 * ──────────────────────────────────────────────────────────────────────────────
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { HERE, ROOT, EVERYTHING, sleep, freePort, waitHealthy, readRpc, McpClient, launchBrowser } from './lib.mjs';

const ARTIFACTS = process.env.AIRLOCK_E2E_ARTIFACTS || path.join(HERE, 'artifacts');
const POLICY = path.join(HERE, 'policy.json');

const uniq = (p) => `${p}-${randomBytes(4).toString('hex')}`;

/* ───────────────────────── gateway lifecycle ───────────────────────── */

const gw = {
  mode: process.env.AIRLOCK_BIN ? 'A' : 'B',
  url: (process.env.AIRLOCK_URL || '').replace(/\/$/, ''),
  mcpUrl: process.env.AIRLOCK_MCP_URL || '',
  token: process.env.AIRLOCK_APPROVER_TOKEN || '',
  proc: null,
  port: 0,
  dir: '',
  log: null,
  canRestart: false,
};

// Mode A serves a copy of the policy, so a test can edit it live.
const livePolicy = () => path.join(gw.dir, 'policy.json');

function startGateway() {
  if (!fs.existsSync(livePolicy())) fs.copyFileSync(POLICY, livePolicy());
  const args = ['serve', '--listen', `127.0.0.1:${gw.port}`, '--policy', livePolicy(),
    '--audit', path.join(gw.dir, 'audit.db'), '--', process.execPath, EVERYTHING, 'stdio'];
  gw.proc = spawn(process.env.AIRLOCK_BIN, args, {
    env: { ...process.env, AIRLOCK_APPROVER_TOKEN: gw.token },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  gw.proc.stdout.pipe(gw.log, { end: false });
  gw.proc.stderr.pipe(gw.log, { end: false });
  return waitHealthy(gw.url);
}

async function stopGateway() {
  if (gw.mode === 'B') { await sh(process.env.AIRLOCK_STOP_CMD); return; }
  const p = gw.proc;
  if (!p || p.exitCode !== null) return;
  const exited = new Promise((r) => p.once('exit', r));
  p.kill('SIGTERM');
  const t = setTimeout(() => p.kill('SIGKILL'), 10000);
  await exited;
  clearTimeout(t);
}

async function restartStart() {
  if (gw.mode === 'B') { await sh(process.env.AIRLOCK_START_CMD); await waitHealthy(gw.url); return; }
  await startGateway();
}

function sh(cmd) {
  return new Promise((resolve, reject) => {
    execFile('sh', ['-c', cmd], { timeout: 60000 }, (err) => (err ? reject(err) : resolve()));
  });
}

/* ───────────────────────── MCP client (plain fetch) ───────────────────────── */

function resultText(msg) {
  assert.ok(msg.result, `expected a result, got ${JSON.stringify(msg).slice(0, 500)}`);
  return (msg.result.content || []).filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}

/* ───────────────────────── browser helpers ───────────────────────── */

let browser;
let approver = '';

async function newPage(opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true, ...opts });
  const page = await ctx.newPage();
  page.dialogs = [];
  page.problems = [];
  page.on('dialog', (d) => { page.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) page.problems.push(`csp: ${m.text()}`);
  });
  return { ctx, page };
}

async function login(page) {
  await page.goto(`${gw.url}/login#token=${encodeURIComponent(gw.token)}`);
  await page.locator('#view-pending').waitFor({ state: 'visible' });
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 10000 });
}

const card = (page, text) => page.locator('#cards > li.card', { hasText: text });
const note = (page, text) => page.locator('#cards > li.note', { hasText: text });

/** Fails if the page reports CSP violations / uncaught errors or opened a dialog. */
function assertClean(page) {
  assert.deepEqual(page.dialogs, [], 'no dialog may open');
  assert.deepEqual(page.problems, [], 'no CSP violation or page error');
}

async function pageApi(page, method, url, { csrf = true, body } = {}) {
  return page.evaluate(async ({ method, url, csrf, body }) => {
    const headers = { 'Content-Type': 'application/json' };
    if (csrf) {
      const me = await (await fetch('/api/me', { credentials: 'same-origin' })).json();
      headers['X-Airlock-CSRF'] = typeof csrf === 'string' ? csrf : me.csrf;
    }
    const r = await fetch(url, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
    let json = null;
    try { json = await r.json(); } catch { /* empty */ }
    return { status: r.status, json };
  }, { method, url, csrf, body });
}

/** All audit entries for a filter, following the cursor, through the page's session. */
async function auditAll(page, params) {
  return page.evaluate(async (params) => {
    const out = [];
    let cursor = null;
    for (let i = 0; i < 100; i++) {
      const q = new URLSearchParams({ ...params, limit: '100' });
      if (cursor) q.set('cursor', cursor);
      const r = await (await fetch(`/api/audit?${q}`, { credentials: 'same-origin' })).json();
      out.push(...r.entries);
      cursor = r.next_cursor;
      if (!cursor) break;
    }
    return out;
  }, params);
}

async function waitFor(fn, what, ms = 10000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** How long the main thread takes to answer (ms). */
async function responsiveness(page) {
  const t0 = Date.now();
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
  return Date.now() - t0;
}

function parseCsv(text) {
  const rows = [];
  let row = [], field = '', q = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (q) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (c === '"') q = false; else field += c;
    } else if (c === '"') q = true;
    else if (c === ',') { row.push(field); field = ''; } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field); rows.push(row); row = []; field = '';
    } else field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows;
}

/* ───────────────────────── setup / teardown ───────────────────────── */

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  if (gw.mode === 'A') {
    gw.port = await freePort();
    gw.url = `http://127.0.0.1:${gw.port}`;
    gw.mcpUrl = `${gw.url}/mcp`;
    gw.token = randomBytes(16).toString('hex');
    gw.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-e2e-'));
    gw.log = fs.createWriteStream(path.join(ARTIFACTS, 'gateway.log'));
    gw.canRestart = true;
    await startGateway();
  } else {
    assert.ok(gw.url && gw.mcpUrl && gw.token, 'set AIRLOCK_BIN, or AIRLOCK_URL + AIRLOCK_MCP_URL + AIRLOCK_APPROVER_TOKEN');
    gw.canRestart = !!(process.env.AIRLOCK_STOP_CMD && process.env.AIRLOCK_START_CMD);
    await waitHealthy(gw.url);
  }
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  if (gw.mode === 'A') {
    await stopGateway();
    gw.log?.end();
    if (gw.dir) fs.rmSync(gw.dir, { recursive: true, force: true });
  }
});

/* ───────────────────────── tests ───────────────────────── */

test('static files: content types, CSP, SPA routes, no unsafe DOM APIs', async () => {
  for (const p of ['/', '/history', '/login']) {
    const r = await fetch(`${gw.url}${p}`);
    assert.equal(r.status, 200, p);
    assert.match(r.headers.get('content-type'), /^text\/html/, p);
    const csp = r.headers.get('content-security-policy') || '';
    assert.match(csp, /default-src 'self'/, `${p} CSP: ${csp}`);
    assert.match(csp, /connect-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
    const html = await r.text();
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'no inline <script>');
    assert.doesNotMatch(html, /\sstyle\s*=|<style/i, 'no inline style');
    assert.doesNotMatch(html, /https?:\/\//i, 'no CDN / absolute URLs');
  }
  for (const [p, type] of [['/app.css', /^text\/css/], ['/js/app.js', /^(text|application)\/javascript/], ['/favicon.svg', /^image\/svg\+xml/]]) {
    const r = await fetch(`${gw.url}${p}`);
    assert.equal(r.status, 200, p);
    assert.match(r.headers.get('content-type'), type, p);
  }
  const jsDir = path.join(ROOT, 'web', 'js');
  for (const f of fs.readdirSync(jsDir).filter((n) => n.endsWith('.js'))) {
    const src = fs.readFileSync(path.join(jsDir, f), 'utf8');
    assert.doesNotMatch(src, /\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\s*\(|new\s+Function\s*\(/, `web/js/${f} must not use HTML/eval sinks`);
  }
});

test('login: wrong token fails with a message, right token and login link log in, logout', async () => {
  const { ctx, page } = await newPage();
  await page.goto(`${gw.url}/history`);
  await page.locator('#login-token').waitFor();
  assert.equal(new URL(page.url()).pathname, '/login', 'unauthenticated visits land on /login');

  await page.fill('#login-token', 'definitely-not-the-token');
  await page.click('#login-submit');
  await page.locator('#login-error').waitFor({ state: 'visible' });
  assert.match(await page.locator('#login-error').textContent(), /invalid/i);
  assert.ok(await page.locator('#view-pending').isHidden());

  await page.fill('#login-token', gw.token);
  await page.click('#login-submit');
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 10000 });
  assert.equal(new URL(page.url()).pathname, '/history', 'goes back to the page that asked for login');
  approver = (await pageApi(page, 'GET', '/api/me', { csrf: false })).json.approver;
  assert.ok(approver, '/api/me names the approver');
  assert.match(await page.locator('#whoami').textContent(), new RegExp(approver));

  const cookies = await ctx.cookies();
  const sess = cookies.find((c) => c.name === 'airlock_session');
  assert.ok(sess, 'session cookie set');
  assert.equal(sess.httpOnly, true);
  assert.equal(sess.sameSite, 'Strict');

  await page.reload();
  await page.locator('#conn[data-state="live"]').waitFor();

  await page.getByRole('button', { name: 'Log out' }).click();
  await page.locator('#login-token').waitFor();
  assert.equal((await pageApi(page, 'GET', '/api/me', { csrf: false })).status, 401, 'logout ends the session');

  // The quick-mode link logs straight in and does not leave the token in the URL.
  await page.goto(`${gw.url}/login#token=${encodeURIComponent(gw.token)}`);
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 10000 });
  assert.equal(page.url(), `${gw.url}/`);
  assert.equal(await page.evaluate(() => location.hash), '');

  const { page: p2, ctx: c2 } = await newPage();
  await p2.goto(`${gw.url}/login#token=wrong-token`);
  await p2.locator('#login-error').waitFor({ state: 'visible' });
  assert.ok(!p2.url().includes('wrong-token'), 'a bad token is cleared from the URL too');

  assertClean(page);
  await ctx.close();
  await c2.close();
});

test('CSRF: the API refuses the page\'s unsafe requests without the token; websocket checks Origin', async () => {
  const { ctx, page } = await newPage();
  await login(page);

  const noToken = await pageApi(page, 'POST', '/api/pending/does-not-exist/approve', { csrf: false, body: { comment: '' } });
  assert.equal(noToken.status, 403, 'approve without X-Airlock-CSRF');
  const badToken = await pageApi(page, 'POST', '/api/pending/does-not-exist/deny', { csrf: 'nope', body: { comment: '' } });
  assert.equal(badToken.status, 403, 'deny with a wrong X-Airlock-CSRF');
  const logout = await pageApi(page, 'POST', '/api/logout', { csrf: false });
  assert.equal(logout.status, 403, 'logout without CSRF');
  assert.equal((await pageApi(page, 'GET', '/api/me', { csrf: false })).status, 200, 'session still valid');
  const withToken = await pageApi(page, 'POST', '/api/pending/does-not-exist/approve', { body: { comment: '' } });
  assert.equal(withToken.status, 404, 'with the token the request reaches the handler');

  // Cross-site websocket: same cookie, foreign Origin → refused.
  const cookie = (await ctx.cookies()).map((c) => `${c.name}=${c.value}`).join('; ');
  const upgrade = (origin) => new Promise((resolve, reject) => {
    const u = new URL(`${gw.url}/api/ws`);
    const req = http.request({
      host: u.hostname, port: u.port, path: u.pathname,
      headers: {
        Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'), Origin: origin, Cookie: cookie,
      },
    });
    req.on('upgrade', (res, socket) => { socket.destroy(); resolve(101); });
    req.on('response', (res) => { res.resume(); resolve(res.statusCode); });
    req.on('error', reject);
    req.end();
  });
  assert.equal(await upgrade(gw.url), 101, 'same-origin websocket accepted');
  assert.equal(await upgrade('http://evil.example'), 403, 'foreign Origin refused');

  assertClean(page);
  await ctx.close();
});

test('a held call appears live within 1 s; approve returns the upstream result; deny carries the comment', async () => {
  const { ctx, page } = await newPage();
  await login(page);
  await page.evaluate(() => { window.__noReload = 'still here'; });
  const mcp = await new McpClient(gw.mcpUrl).connect();

  // Empty state and opt-in alerts.
  if (await page.locator('#cards > li.card').count() === 0) {
    assert.match(await page.locator('#empty-text').textContent(), /^No calls waiting\. Agents connected: \d+$/);
  }
  assert.equal(await page.locator('#opt-sound').isChecked(), false, 'sound is opt-in');

  // --- approve ---
  const m1 = uniq('approve-me');
  const t0 = Date.now();
  const call1 = mcp.callTool('echo', { message: m1 });
  await card(page, m1).waitFor({ timeout: 5000 });
  const elapsed = Date.now() - t0;
  assert.ok(elapsed < 1000, `card appeared after ${elapsed} ms (limit 1000)`);

  const c1 = card(page, m1);
  assert.equal((await c1.locator('.card-tool').textContent()).trim(), 'echo');
  assert.match(await c1.textContent(), /a human checks every echo/);
  assert.match(await c1.textContent(), /default/);
  assert.match(await c1.locator('.timer-text').textContent(), /expires in \d/);
  assert.match(await page.title(), /^\(\d+\)/, 'tab title counts pending calls');

  // Buttons are disabled while the decision is in flight.
  await page.route('**/api/pending/*/approve', async (route) => { await sleep(600); await route.continue(); });
  await c1.getByRole('button', { name: 'Approve' }).click();
  await waitFor(async () => c1.locator('.btn-approve').isDisabled().catch(() => true), 'approve button disabled');
  assert.ok(await c1.locator('.btn-deny').isDisabled().catch(() => true), 'deny disabled while in flight');
  await c1.waitFor({ state: 'detached', timeout: 3000 });
  await note(page, 'You approved it').waitFor();
  await page.unroute('**/api/pending/*/approve');
  const r1 = await call1;
  assert.ok(!r1.result.isError, JSON.stringify(r1));
  assert.equal(resultText(r1), `Echo: ${m1}`, 'the upstream\'s real result');

  // --- deny with a comment (asks to confirm) ---
  const m2 = uniq('deny-me');
  const comment = uniq('not today, robot');
  const call2 = mcp.callTool('echo', { message: m2 });
  const c2 = card(page, m2);
  await c2.waitFor({ timeout: 5000 });
  await c2.getByLabel('Comment').fill(comment);
  await c2.getByRole('button', { name: 'Deny' }).click();
  const yes = c2.getByRole('button', { name: 'Yes, deny' });
  await yes.waitFor();
  await sleep(200);
  assert.equal(await c2.count(), 1, 'nothing is denied before the confirmation');
  await yes.click();
  await c2.waitFor({ state: 'detached', timeout: 1000 });
  await note(page, 'You denied it').waitFor();
  const r2 = await call2;
  assert.equal(r2.result?.isError, true, JSON.stringify(r2));
  assert.ok(resultText(r2).includes(comment), `the agent sees the comment: ${resultText(r2)}`);

  assert.equal(await page.evaluate(() => window.__noReload), 'still here', 'no reload happened');
  assertClean(page);
  await ctx.close();
});

test('keyboard: j/k move, a approves, d asks to confirm, / searches', async () => {
  const { ctx, page } = await newPage();
  await login(page);
  const mcp = await new McpClient(gw.mcpUrl).connect();
  const tag = uniq('kbd');
  const [ma, mb] = [`${tag}-first`, `${tag}-second`];
  const ca = mcp.callTool('echo', { message: ma });
  await card(page, ma).waitFor();
  const cb = mcp.callTool('echo', { message: mb });
  await card(page, mb).waitFor();

  await page.keyboard.press('/');
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'pending-search');
  await page.keyboard.type(tag);
  await page.keyboard.press('Enter');            // leave the box for the first match, keep the filter
  assert.equal(await card(page, ma).getAttribute('aria-current'), 'true', 'Enter selects the first match');
  assert.equal(await page.locator('#cards > li.card:not([hidden])').count(), 2, 'search narrows to this test\'s calls');

  await page.keyboard.press('j');
  await page.keyboard.press('k');
  await page.keyboard.press('k');
  assert.equal(await card(page, ma).getAttribute('aria-current'), 'true', 'k stops at the first call');
  await page.keyboard.press('j');
  assert.equal(await card(page, mb).getAttribute('aria-current'), 'true', 'j selects the next call');

  await page.keyboard.press('d');
  await card(page, mb).getByRole('button', { name: 'Yes, deny' }).waitFor();
  await page.keyboard.press('Escape');
  assert.ok(await card(page, mb).getByRole('button', { name: 'Yes, deny' }).isHidden(), 'Esc cancels the deny');
  await page.keyboard.press('d');
  await page.keyboard.press('Enter');              // focus is on "Yes, deny"
  await card(page, mb).waitFor({ state: 'detached', timeout: 1000 });
  assert.equal((await cb).result?.isError, true);

  await page.keyboard.press('k');
  assert.equal(await card(page, ma).getAttribute('aria-current'), 'true');
  await page.keyboard.press('a');
  await card(page, ma).waitFor({ state: 'detached', timeout: 1000 });
  assert.equal(resultText(await ca), `Echo: ${ma}`);

  assertClean(page);
  await ctx.close();
});

test('two approvers: one decides, the other\'s card disappears; the loser of a race sees "already decided by"', async () => {
  const a = await newPage();
  const b = await newPage();
  // B's websocket goes through a proxy that can hold back pending.resolved frames,
  // so B still shows the card when A has already decided it: a deterministic race.
  let dropResolved = false;
  await b.page.routeWebSocket(/\/api\/ws$/, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((m) => {
      if (dropResolved && String(m).includes('"pending.resolved"')) return;
      ws.send(m);
    });
  });
  await login(a.page);
  await login(b.page);
  const mcp = await new McpClient(gw.mcpUrl).connect();

  const m1 = uniq('both-see');
  const call1 = mcp.callTool('echo', { message: m1 });
  await card(a.page, m1).waitFor();
  await card(b.page, m1).waitFor();
  await card(a.page, m1).getByRole('button', { name: 'Approve' }).click();
  const t0 = Date.now();
  await card(b.page, m1).waitFor({ state: 'detached', timeout: 1000 });
  assert.ok(Date.now() - t0 < 1000);
  assert.match(await note(b.page, 'Approved by').first().textContent(), new RegExp(`Approved by ${approver}`));
  await call1;

  dropResolved = true;
  const m2 = uniq('race');
  const call2 = mcp.callTool('echo', { message: m2 });
  await card(a.page, m2).waitFor();
  await card(b.page, m2).waitFor();
  await card(a.page, m2).getByRole('button', { name: 'Approve' }).click();
  await call2;
  assert.equal(await card(b.page, m2).count(), 1, 'B has not heard about it yet');
  await card(b.page, m2).getByRole('button', { name: 'Approve' }).click();
  const loser = b.page.locator('#cards > li.note', { hasText: 'Already decided by' });
  await loser.waitFor({ timeout: 3000 });
  assert.match(await loser.textContent(), new RegExp(`Already decided by ${approver}`));

  assertClean(a.page);
  assertClean(b.page);
  await a.ctx.close();
  await b.ctx.close();
});

test('hostile arguments render as text; a 1 MB string does not freeze the page', async () => {
  const { ctx, page } = await newPage({ viewport: { width: 375, height: 812 } });
  await login(page);
  const mcp = await new McpClient(gw.mcpUrl).connect();
  const marker = uniq('xss');
  const big = 'A'.repeat(1_000_000);
  const args = {
    message: `${marker} <img src=x onerror=alert(1)>`,
    closer: '</script><script>alert(2)</script>',
    html: '<b>bold</b><iframe src="javascript:alert(3)"></iframe>',
    big,
    deep: { a: { b: { c: { d: { e: ['<svg onload=alert(4)>'] } } } } },
  };
  const ac = new AbortController();
  const call = mcp.callTool('echo', args, { signal: ac.signal }).catch(() => null);
  const c = card(page, marker);
  await c.waitFor({ timeout: 10000 });

  const text = await c.textContent();
  assert.ok(text.includes('<img src=x onerror=alert(1)>'), 'shown literally');
  assert.ok(text.includes('</script><script>alert(2)</script>'));
  assert.ok(text.length < 100_000, `the 1 MB value is folded (card text ${text.length} chars)`);
  assert.equal(await page.locator('#cards img, #cards script, #cards iframe, #cards b, #cards svg').count(), 0, 'no element injected');
  assert.ok(await responsiveness(page) < 500, 'main thread answers quickly');

  const overflow = await page.evaluate(() => ({
    doc: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    cards: [...document.querySelectorAll('#cards > li.card')].map((el) => el.scrollWidth - el.clientWidth),
  }));
  assert.ok(overflow.doc <= 0, `page does not scroll sideways at 375 px (${overflow.doc})`);
  assert.ok(overflow.cards.every((d) => d <= 1), `arguments never overflow a card (${overflow.cards})`);

  // "show more" / "show all" add the rest lazily and the page stays usable.
  await c.getByRole('button', { name: /^show [\d,.\s]+ more$/ }).first().click();
  assert.ok((await c.textContent()).length > 20_000);
  await c.getByRole('button', { name: 'show all' }).first().click();
  assert.ok(await responsiveness(page) < 2000, 'still responsive after showing 1 MB');
  assert.equal((await c.locator('.jstr-text').first().textContent()).length > 1_000_000, true);
  assert.ok((await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)) <= 0);

  await sleep(300);
  assertClean(page);
  // Clean up: deny it.
  await c.getByRole('button', { name: 'Deny' }).click();
  await c.getByRole('button', { name: 'Yes, deny' }).click();
  await c.waitFor({ state: 'detached' });
  await call;

  // The history renders the same record safely.
  await page.goto(`${gw.url}/history?tool=echo`);
  const row = page.locator('#history-list > li.entry').first();
  await row.waitFor();
  await row.locator('.entry-toggle').click();
  await row.locator('.entry-detail').waitFor();
  assert.equal(await page.locator('#history-list img, #history-list script, #history-list iframe').count(), 0);
  assertClean(page);
  ac.abort();
  await ctx.close();
});

test('a refused policy edit shows a red notice with the error as text and a lasting banner; a good edit clears it', async (t) => {
  if (gw.mode !== 'A') { t.skip('needs the policy file of a gateway this test started (AIRLOCK_BIN)'); return; }
  const { ctx, page } = await newPage();
  await login(page);
  const good = fs.readFileSync(livePolicy(), 'utf8');
  const hostile = '<img src=x onerror="window.__pwned=1">';
  try {
    // An unknown key: the error names it, so the notice carries text from the file.
    const bad = JSON.parse(good);
    bad[hostile] = true;
    fs.writeFileSync(livePolicy(), JSON.stringify(bad, null, 2));
    const refused = page.locator('#toasts .toast-error', { hasText: 'Policy edit refused' });
    await refused.waitFor({ timeout: 5000 });
    const text = await refused.textContent();
    assert.match(text, /previous policy is still in force/);
    assert.ok(text.includes(hostile), `the error is shown as text: ${text}`);
    assert.equal(await page.locator('#toasts img').count(), 0, 'no markup from the file is rendered');
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    // A lasting banner, here and for a dashboard that connects later (from the snapshot).
    const banner = page.locator('#policy-banner');
    await banner.waitFor({ state: 'visible' });
    assert.match(await banner.textContent(), /Policy not in force for default \(last edit refused\)/);
    const later = await newPage();
    await login(later.page);
    await later.page.locator('#policy-banner', { hasText: 'default (last edit refused)' }).waitFor({ timeout: 5000 });
    await later.ctx.close();
  } finally {
    fs.writeFileSync(livePolicy(), good + '\n');
  }
  await page.locator('#toasts .toast', { hasText: 'Policy reloaded for default' }).waitFor({ timeout: 5000 });
  await page.locator('#policy-banner').waitFor({ state: 'hidden', timeout: 5000 });
  assertClean(page);
  await ctx.close();
});

test('gateway restart: reconnecting, then live with a fresh snapshot', async (t) => {
  if (!gw.canRestart) { t.skip('no way to restart the gateway (set AIRLOCK_BIN, or AIRLOCK_STOP_CMD + AIRLOCK_START_CMD)'); return; }
  const { ctx, page } = await newPage();
  await login(page);
  await page.evaluate(() => { window.__noReload = 'still here'; });
  const old = uniq('before-restart');
  const mcp = await new McpClient(gw.mcpUrl).connect();
  const oldCall = mcp.callTool('echo', { message: old }).catch(() => null);
  await card(page, old).waitFor();

  await stopGateway();
  await page.locator('#conn[data-state="reconnecting"], #conn[data-state="offline"]').waitFor({ timeout: 5000 });
  assert.ok(await page.locator('#stale-banner').isVisible(), 'the list is marked as possibly stale');
  await oldCall;

  await restartStart();
  // A call made right after the restart is in the snapshot (or arrives live) exactly once.
  const fresh = uniq('after-restart');
  const mcp2 = await new McpClient(gw.mcpUrl).connect();
  const freshCall = mcp2.callTool('echo', { message: fresh });
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 20000 });
  await card(page, fresh).waitFor({ timeout: 5000 });
  assert.equal(await card(page, old).count(), 0, 'the stale card is gone: the snapshot replaced the list');
  assert.equal(await card(page, fresh).count(), 1, 'no duplicates');
  assert.ok(await page.locator('#stale-banner').isHidden());
  assert.equal(await page.evaluate(() => window.__noReload), 'still here', 'reconnected without reload');

  await card(page, fresh).getByRole('button', { name: 'Approve' }).click();
  assert.equal(resultText(await freshCall), `Echo: ${fresh}`, 'decisions work after the restart');
  assertClean(page);
  await ctx.close();
});

test('history: filters, paging, expandable rows, export of the current filter', async () => {
  const { ctx, page } = await newPage();
  await login(page);
  const mcp = await new McpClient(gw.mcpUrl).connect();

  // Material: 30 allowed get-sum calls, one policy denial, one human denial with a comment.
  for (let i = 0; i < 30; i++) assert.ok(!(await mcp.callTool('get-sum', { a: i, b: 1 })).result.isError);
  const denied = await mcp.callTool('get-tiny-image', {});
  assert.equal(denied.result?.isError, true);
  const m = uniq('history-deny');
  const why = uniq('history comment');
  const held = mcp.callTool('echo', { message: m });
  await card(page, m).waitFor();
  await card(page, m).getByLabel('Comment').fill(why);
  await card(page, m).getByRole('button', { name: 'Deny' }).click();
  await card(page, m).getByRole('button', { name: 'Yes, deny' }).click();
  await held;

  // Audit writes are batched: wait until the API has them.
  const sums = await waitFor(async () => {
    const e = await auditAll(page, { tool: 'get-sum' });
    return e.length >= 30 ? e : null;
  }, '30 get-sum audit rows');
  await waitFor(async () => (await auditAll(page, { decision: 'denied_by_human', decider: approver })).some((e) => e.comment === why), 'the human denial in the audit');

  await page.getByRole('link', { name: 'History' }).click();
  await page.locator('#history-list > li.entry').first().waitFor();

  // tool filter + paging
  await page.fill('#f-tool', 'get-sum');
  await page.selectOption('#f-limit', '25');
  await page.getByRole('button', { name: 'Apply' }).click();
  await waitFor(async () => new URL(page.url()).searchParams.get('tool') === 'get-sum', 'filter in the URL');
  await waitFor(async () => (await page.locator('#history-list > li.entry').count()) === 25, 'first page of 25');
  const tools = await page.locator('#history-list .entry-tool').allTextContents();
  assert.ok(tools.every((t) => t.trim() === 'get-sum'), `only get-sum rows: ${tools}`);
  await page.getByRole('button', { name: 'Load older entries' }).click();
  await waitFor(async () => (await page.locator('#history-list > li.entry').count()) === Math.min(50, sums.length), 'second page appended');
  const seqs = await page.locator('#history-list > li.entry').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
  assert.equal(new Set(seqs).size, seqs.length, 'no row twice across pages');
  assert.deepEqual(seqs, [...seqs].sort((x, y) => y - x), 'newest first');

  // export JSONL and CSV for the current filter
  const [dl1] = await Promise.all([page.waitForEvent('download'), page.click('#export-jsonl')]);
  const lines = fs.readFileSync(await dl1.path(), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  await dl1.saveAs(path.join(ARTIFACTS, 'history-get-sum.jsonl'));
  assert.equal(lines.length, sums.length, 'JSONL has every matching row');
  assert.ok(lines.every((e) => e.tool === 'get-sum'));
  const [dl2] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const csv = parseCsv(fs.readFileSync(await dl2.path(), 'utf8')).filter((r) => r.length > 1);
  const toolCol = csv[0].indexOf('tool');
  assert.ok(toolCol >= 0, `CSV header names the columns: ${csv[0]}`);
  assert.equal(csv.length - 1, sums.length, 'CSV has every matching row');
  assert.ok(csv.slice(1).every((r) => r[toolCol] === 'get-sum'));

  // outcome + decider filter, expandable row with the full record
  await page.getByRole('button', { name: 'Reset' }).click();
  await page.selectOption('#f-decision', 'denied_by_human');
  await page.fill('#f-decider', approver);
  await page.getByRole('button', { name: 'Apply' }).click();
  await waitFor(async () => new URL(page.url()).searchParams.get('decision') === 'denied_by_human', 'outcome filter applied');
  const row = page.locator('#history-list > li.entry', { hasText: 'echo' }).first();
  await row.waitFor();
  const outcomes = await page.locator('#history-list .entry-outcome').allTextContents();
  assert.ok(outcomes.length > 0 && outcomes.every((o) => o.trim() === 'Denied by approver'), `${outcomes}`);
  const mine = page.locator('#history-list > li.entry').filter({ has: page.locator('.entry-toggle') });
  let found = false;
  for (let i = 0; i < await mine.count() && !found; i++) {
    const r = mine.nth(i);
    await r.locator('.entry-toggle').click();
    assert.equal(await r.locator('.entry-toggle').getAttribute('aria-expanded'), 'true');
    found = (await r.locator('.entry-detail').textContent()).includes(why);
  }
  assert.ok(found, 'an expanded row shows the full record, comment included');
  const [dl3] = await Promise.all([page.waitForEvent('download'), page.click('#export-jsonl')]);
  const denials = fs.readFileSync(await dl3.path(), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.ok(denials.length > 0 && denials.every((e) => e.decision === 'denied_by_human' && e.decider === approver));

  // time range: nothing in the future
  await page.getByRole('button', { name: 'Reset' }).click();
  const future = new Date(Date.now() + 3600_000);
  const local = new Date(future.getTime() - future.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  await page.fill('#f-since', local);
  await page.getByRole('button', { name: 'Apply' }).click();
  await waitFor(async () => /No entries match/.test(await page.locator('#history-status').textContent()), 'empty result for a future range');
  assert.equal(await page.locator('#history-list > li.entry').count(), 0);

  assertClean(page);
  await ctx.close();
});

test('screenshots at 1280×800 and 375×812, light and dark', async () => {
  const mcp = await new McpClient(gw.mcpUrl).connect();
  const ac = new AbortController();
  const calls = [
    mcp.callTool('echo', { message: 'Delete all invoices from 2023', path: '/srv/erp/invoices', options: { dryRun: false, batch: 500, tags: ['finance', 'cleanup'] } }, { signal: ac.signal }).catch(() => null),
  ];
  for (const scheme of ['light', 'dark']) {
    for (const [w, h] of [[1280, 800], [375, 812]]) {
      const { ctx, page } = await newPage({ viewport: { width: w, height: h }, colorScheme: scheme });
      await login(page);
      await card(page, 'Delete all invoices').first().waitFor();
      await page.evaluate(() => document.activeElement?.blur());
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.ok(overflow <= 0, `no sideways scroll at ${w}px (${overflow})`);
      await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${w}x${h}-${scheme}.png`) });
      assertClean(page);
      await ctx.close();
    }
  }
  ac.abort();
  await Promise.all(calls);
});
