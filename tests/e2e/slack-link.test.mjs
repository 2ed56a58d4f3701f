/*
 * Browser test for Slack decision links (issue 6), run with
 *   cd tests/node && AIRLOCK_BIN=… node --test ../e2e/slack-link.test.mjs
 * using node:test + playwright-core driving Debian's chromium, like
 * dashboard.test.mjs.
 *
 * The test process plays Slack: a node:http server on 127.0.0.1 that records
 * every JSON payload POSTed to its incoming-webhook path. The real gateway is
 * started with `airlock serve --config <tmp>/airlock.toml`: public_url = its
 * own base URL, one stdio upstream (server-everything, `echo` held by a
 * require_approval rule), one approver, and `[slack] webhook_url_env`
 * pointing at the fake. Then:
 *   an agent's tools/call (plain fetch, handshake era) is held →
 *   the fake Slack gets the Block Kit message → its Approve button's URL is
 *   opened on a 375×812 touch viewport → the confirm page shows the call as
 *   text → tap Approve (with a name) → the agent gets the upstream's real
 *   result, the page says "Approved by …", the fake Slack gets the follow-up.
 *
 * Environment:
 *   AIRLOCK_BIN               the built binary (required; the test is skipped without it)
 *   AIRLOCK_CHROMIUM          default /usr/bin/chromium
 *   AIRLOCK_E2E_ARTIFACTS     screenshot + gateway log; default tests/e2e/artifacts
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { HERE, EVERYTHING, sleep, freePort, waitHealthy, McpClient, launchBrowser } from './lib.mjs';

const ARTIFACTS = process.env.AIRLOCK_E2E_ARTIFACTS || path.join(HERE, 'artifacts');
const BIN = process.env.AIRLOCK_BIN;

const WEBHOOK_PATH = `/services/T000/B000/${randomBytes(12).toString('hex')}`;
const APPROVER_TOKEN = randomBytes(16).toString('hex');

/* ───────────────────────── fake Slack ───────────────────────── */

/** An incoming-webhook endpoint that records each POSTed JSON payload. */
class FakeSlack {
  constructor() {
    this.received = []; // { path, body }
    this.waiters = new Set();
    this.server = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        let body = null;
        try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch { /* recorded as null */ }
        this.received.push({ method: req.method, path: req.url, body });
        for (const w of this.waiters) w();
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end('ok');
      });
    });
  }

  async start() {
    await new Promise((r) => this.server.listen(0, '127.0.0.1', r));
    this.base = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  get webhookUrl() { return `${this.base}${WEBHOOK_PATH}`; }

  /** The first recorded webhook payload for which `pred(body)` holds. */
  waitFor(pred, what, ms = 10000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const hit = this.received.find((r) => r.method === 'POST' && r.path === WEBHOOK_PATH && r.body && pred(r.body));
        if (hit) { done(); resolve(hit.body); }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`fake Slack got no ${what} within ${ms} ms; got ${JSON.stringify(this.received).slice(0, 2000)}`));
      }, ms);
      const done = () => { clearTimeout(timer); this.waiters.delete(check); };
      this.waiters.add(check);
      check();
    });
  }

  close() { this.server.closeAllConnections?.(); return new Promise((r) => this.server.close(r)); }
}

/** Every `text` string of a Block Kit payload, joined. */
function allText(v) {
  const out = [];
  const walk = (x) => {
    if (Array.isArray(x)) x.forEach(walk);
    else if (x && typeof x === 'object') {
      if (typeof x.text === 'string') out.push(x.text);
      Object.values(x).forEach(walk);
    }
  };
  walk(v);
  return out.join('\n');
}

/* ───────────────────────── gateway ───────────────────────── */

const gw = { proc: null, dir: '', log: null, base: '', mcp: '' };
let slack;
let browser;

/* ───────────────────────── setup / teardown ───────────────────────── */

before(async () => {
  if (!BIN) return;
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  slack = await new FakeSlack().start();
  const port = await freePort();
  gw.base = `http://127.0.0.1:${port}`;
  gw.mcp = `${gw.base}/mcp/everything`;
  gw.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-e2e-slack-'));
  const policy = path.join(gw.dir, 'policy.json');
  fs.writeFileSync(policy, JSON.stringify({
    version: '1',
    default: 'allow',
    rules: { echo: { action: 'require_approval', reason: 'a human checks every echo', approval: { timeout: 120, on_timeout: 'deny' } } },
  }));
  const toml = (s) => JSON.stringify(s); // a JSON string is a valid TOML basic string
  const config = path.join(gw.dir, 'airlock.toml');
  fs.writeFileSync(config, [
    `listen = ${toml(`127.0.0.1:${port}`)}`,
    `public_url = ${toml(gw.base)}`,
    '',
    '[[upstream]]',
    'name = "everything"',
    `command = ${toml(process.execPath)}`,
    `args = [${toml(EVERYTHING)}, "stdio"]`,
    `policy = ${toml(policy)}`,
    '',
    '[[approver]]',
    'name = "alice"',
    'token_env = "AIRLOCK_E2E_ALICE_TOKEN"',
    '',
    '[audit]',
    `path = ${toml(path.join(gw.dir, 'audit.db'))}`,
    '',
    '[slack]',
    'webhook_url_env = "AIRLOCK_E2E_SLACK_WEBHOOK"',
    '',
  ].join('\n'));
  gw.log = fs.createWriteStream(path.join(ARTIFACTS, 'slack-gateway.log'));
  gw.proc = spawn(BIN, ['serve', '--config', config], {
    env: { ...process.env, AIRLOCK_E2E_ALICE_TOKEN: APPROVER_TOKEN, AIRLOCK_E2E_SLACK_WEBHOOK: slack.webhookUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  gw.proc.stdout.pipe(gw.log, { end: false });
  gw.proc.stderr.pipe(gw.log, { end: false });
  const launched = launchBrowser();
  await waitHealthy(gw.base, { ms: 15000, proc: gw.proc, log: path.join(ARTIFACTS, 'slack-gateway.log') });
  browser = await launched;
});

after(async () => {
  await browser?.close();
  const p = gw.proc;
  if (p && p.exitCode === null) {
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }
  gw.log?.end();
  await slack?.close();
  if (gw.dir) fs.rmSync(gw.dir, { recursive: true, force: true });
});

/* ───────────────────────── the test ───────────────────────── */

test('a Slack Approve link, tapped on a 375 px phone, releases the held call', { skip: !BIN && 'set AIRLOCK_BIN', timeout: 30000 }, async () => {
  // Hostile-looking text: it must show as text on the page, not as markup.
  const message = `slack-e2e ${randomBytes(3).toString('hex')} <b>bold</b> & "quoted" <!channel>`;
  const args = { message };

  // 1. The agent's call is held.
  const client = await new McpClient(gw.mcp, 'airlock-e2e-slack').connect();
  let settled = false;
  const answer = client.callTool('echo', args).finally(() => { settled = true; });

  // 2. Slack gets the held-call message, with an Approve button that links to the confirm page.
  const held = await slack.waitFor((b) => Array.isArray(b.blocks) && b.blocks.some((bl) => bl.type === 'actions'), 'held-call message');
  assert.match(held.text, /^Approval needed: echo on everything/, held.text);
  const actions = held.blocks.find((bl) => bl.type === 'actions');
  const approve = actions.elements.find((e) => e.action_id === 'approve_link');
  assert.ok(approve?.url, `no Approve URL button in ${JSON.stringify(actions)}`);
  assert.match(approve.url, new RegExp(`^${gw.base.replace(/[.]/g, '\\.')}/approve/[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$`), approve.url);
  const pendingId = /Request `([^`]+)`/.exec(allText(held))?.[1];
  assert.ok(pendingId, 'the message names the request');
  assert.equal(settled, false, 'the call is still held');

  // 3. The approver opens the link on a phone.
  const ctx = await browser.newContext({ viewport: { width: 375, height: 812 }, isMobile: true, hasTouch: true });
  try {
    const page = await ctx.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    page.on('dialog', (d) => { problems.push(`dialog: ${d.message()}`); d.dismiss().catch(() => {}); });

    const shown = await page.goto(approve.url);
    assert.equal(shown.status(), 200);
    await page.locator('#approve').waitFor({ state: 'visible' });
    assert.match(await page.locator('#call-title').innerText(), /echo\s+on\s+everything/);
    assert.equal((await page.locator('#arguments').textContent()).trim(), JSON.stringify(args, null, 2),
      'the arguments are shown whole, as text');
    assert.equal(await page.locator('#arguments b, main b').count(), 0, 'argument text is not markup');
    assert.ok(await page.locator('#main').innerText().then((t) => t.includes(pendingId)), 'the page names the request');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow} px at 375 px`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'slack-confirm-375.png'), fullPage: true });

    // Opening the page decided nothing.
    await sleep(200);
    assert.equal(settled, false, 'GET must not decide');

    // 4. Tap Approve (with a name, when the page asks for one).
    const name = `carol-${randomBytes(2).toString('hex')}`;
    if (await page.locator('#name').count()) await page.locator('#name').fill(name);
    const posted = page.waitForResponse((r) => r.request().method() === 'POST' && r.url() === approve.url);
    await page.locator('#approve').tap();
    const decided = await posted;
    assert.equal(decided.status(), 200, `POST ${approve.url} → HTTP ${decided.status()}`);
    await page.locator('#notice').waitFor();
    const decider = `${name} (Slack link)`;
    assert.match(await page.locator('#notice').innerText(), new RegExp(`Approved by ${decider.replace(/[()]/g, '\\$&')}`));
    await page.screenshot({ path: path.join(ARTIFACTS, 'slack-approved-375.png'), fullPage: true });
    assert.deepEqual(problems, [], 'no page errors, CSP violations or dialogs');

    // 5. The agent gets the upstream's real result.
    const msg = await answer;
    assert.ok(msg.result, `expected a result, got ${JSON.stringify(msg).slice(0, 500)}`);
    assert.ok(!msg.result.isError, `the call failed: ${JSON.stringify(msg.result).slice(0, 500)}`);
    const text = (msg.result.content || []).filter((c) => c.type === 'text').map((c) => c.text).join('\n');
    assert.equal(text, `Echo: ${message}`);

    // 6. Slack gets the follow-up, naming who approved and how.
    const followup = await slack.waitFor((b) => allText(b).includes(pendingId) && allText(b).includes('approved'), 'follow-up');
    assert.ok(allText(followup).includes(`✅ approved by ${decider} after`), allText(followup));

    // The audit history has it under the typed name, channel slack-link.
    const audit = await (await fetch(`${gw.base}/api/audit?pending_id=${encodeURIComponent(pendingId)}`, {
      headers: { Authorization: `Bearer ${APPROVER_TOKEN}` },
    })).json();
    const row = audit.entries.find((e) => e.decision === 'approved');
    assert.ok(row, `no approved row in ${JSON.stringify(audit).slice(0, 1000)}`);
    assert.equal(row.decider, decider);
    assert.equal(row.channel, 'slack-link');

    // The link is spent: opening it again says who decided.
    const again = await page.goto(approve.url);
    assert.equal(again.status(), 409);
    assert.match(await page.locator('#notice').innerText(), new RegExp(`Already approved by ${decider.replace(/[()]/g, '\\$&')}`));
  } finally {
    await ctx.close();
  }
});
