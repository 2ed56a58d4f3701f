/*
 * Browser tests for the Tools page, the visual policy builder, history
 * details and approver roles (issue 16), run with
 *   cd tests/node && node --test --test-concurrency=1 ../e2e/tools.test.mjs
 *
 * Starts the real gateway (AIRLOCK_BIN) with a config in front of the
 * project's Python test server (AIRLOCK_TEST_PYTHON, default
 * ~/.cache/airlock-venv/bin/python), three approvers (admin, approver,
 * viewer), and drives it with Debian's chromium through playwright-core.
 * Enforcement after a save is checked with a real SDK client
 * (@modelcontextprotocol/sdk 1.x, tests/node/clients/sdk1.mjs).
 * AIRLOCK_DOCS_SCREENSHOTS=1 also writes the pages' screenshots to docs/img/.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HERE, ROOT, sleep, freePort, McpClient, serveGateway, stopProcess, launchBrowser } from './lib.mjs';

const ARTIFACTS = process.env.AIRLOCK_E2E_ARTIFACTS || path.join(HERE, 'artifacts');
const DOCS_IMG = path.join(ROOT, 'docs', 'img');
const PYTHON = process.env.AIRLOCK_TEST_PYTHON || path.join(os.homedir(), '.cache/airlock-venv/bin/python');
const TESTSERVER = path.join(ROOT, 'tests/servers/testserver.py');
const SDK1 = path.join(ROOT, 'tests/node/clients/sdk1.mjs');

const tokens = {
  admin: `admin-${randomBytes(12).toString('hex')}`,
  approver: `appr-${randomBytes(12).toString('hex')}`,
  viewer: `view-${randomBytes(12).toString('hex')}`,
};

const POLICY = {
  version: '1',
  default: 'deny',
  hide: ['secret_tool'],
  rules: {
    echo: { action: 'allow' },
    add: { action: 'allow', when: [{ if: [{ path: 'args.a', op: 'gt', value: 100 }], action: 'deny', reason: 'too big' }] },
    'delete_*': { action: 'require_approval', reason: 'destructive' },
  },
};

const gw = { proc: null, url: '', dir: '', log: null, policy: '' };
let browser;

before(async () => {
  assert.ok(process.env.AIRLOCK_BIN, 'set AIRLOCK_BIN to the built airlock binary');
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  gw.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-tools-e2e-'));
  gw.policy = path.join(gw.dir, 'policy.json');
  fs.writeFileSync(gw.policy, `${JSON.stringify(POLICY, null, 2)}\n`);
  const config = path.join(gw.dir, 'airlock.toml');
  fs.writeFileSync(config, [
    '[[upstream]]', 'name = "test"', `command = ${JSON.stringify(PYTHON)}`,
    `args = ${JSON.stringify([TESTSERVER, 'stdio'])}`, `policy = ${JSON.stringify(gw.policy)}`, '',
    '[[approver]]', 'name = "ada"', 'token_env = "T_ADMIN"', 'role = "admin"', '',
    '[[approver]]', 'name = "bo"', 'token_env = "T_APPROVER"', '',
    '[[approver]]', 'name = "vi"', 'token_env = "T_VIEWER"', 'role = "viewer"', '',
  ].join('\n'));
  const port = await freePort();
  gw.log = fs.createWriteStream(path.join(ARTIFACTS, 'tools-gateway.log'));
  await serveGateway(gw, config, port, { T_ADMIN: tokens.admin, T_APPROVER: tokens.approver, T_VIEWER: tokens.viewer });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await stopProcess(gw.proc);
  gw.log?.end();
  if (gw.dir) fs.rmSync(gw.dir, { recursive: true, force: true });
});

async function newPage(role, viewport = { width: 1280, height: 800 }, scheme = 'light') {
  const ctx = await browser.newContext({ viewport, colorScheme: scheme });
  const page = await ctx.newPage();
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) page.problems.push(`csp: ${m.text()}`);
  });
  await page.goto(`${gw.url}/login#token=${encodeURIComponent(tokens[role])}`);
  await page.locator('#view-pending').waitFor({ state: 'visible' });
  return { ctx, page };
}

async function shot(page, name, fullPage = true) {
  await page.screenshot({ path: path.join(ARTIFACTS, name), fullPage });
  if (process.env.AIRLOCK_DOCS_SCREENSHOTS) await page.screenshot({ path: path.join(DOCS_IMG, name), fullPage });
}

/** Calls tools through @modelcontextprotocol/sdk 1.x; returns `ok: text` / `refused <decision>` per call. */
function sdkCalls(calls) {
  const script = calls.map(([name, args]) => ({ op: 'call', name, args }));
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [SDK1, '--script', JSON.stringify(script), '--url', `${gw.url}/mcp/test`],
      { cwd: path.join(ROOT, 'tests/node'), timeout: 60000 }, (err, stdout, stderr) => {
        let doc;
        try { doc = JSON.parse(stdout); } catch { reject(new Error(`sdk1 printed no JSON: ${stderr}`)); return; }
        resolve(doc.steps.map((s) => {
          if (!s.ok) return `error ${s.error?.code}`;
          const text = (s.result.content || []).map((c) => c.text || '').join('');
          return s.result.isError ? `refused ${s.result._meta?.['airlock.decision']}` : `ok: ${text}`;
        }));
      });
  });
}

const tool = (page, name) => page.locator(`#tools-list li.tool[data-tool="${name}"]`);

test('the tools page shows every tool with risk, outcome, rule and calls, and filters', async () => {
  assert.deepEqual(await sdkCalls([['echo', { text: 'hi' }], ['add', { a: 500, b: 1 }]]), ['ok: hi', 'refused denied']);
  const { ctx, page } = await newPage('admin');
  await page.locator('#tab-tools').click();
  await page.locator('#view-tools').waitFor({ state: 'visible' });
  await tool(page, 'delete_record').waitFor({ timeout: 30000 });
  const del = tool(page, 'delete_record');
  assert.match(await del.locator('.tool-head').innerText(), /destructive/);
  assert.match(await del.locator('.tool-outcome').innerText(), /Needs approval/);
  assert.match(await del.innerText(), /delete_\*/);
  assert.match(await tool(page, 'secret_tool').locator('.tool-outcome').innerText(), /Hidden/);
  assert.match(await tool(page, 'echo').innerText(), /1 allowed/);
  assert.match(await tool(page, 'add').innerText(), /args\.a gt 100/);
  assert.match(await tool(page, 'add').innerText(), /1 denied/);
  await page.locator('.risk-help summary').click();
  assert.match(await page.locator('#risk-text').innerText(), /readOnlyHint/);
  await shot(page, 'tools.png');
  // Filters: risk, outcome, search.
  await page.locator('#t-risk').selectOption('destructive');
  assert.deepEqual(await page.locator('#tools-list li.tool[data-tool]').evaluateAll((els) => els.map((e) => e.dataset.tool)), ['delete_record']);
  await page.locator('#t-risk').selectOption('');
  await page.locator('#t-outcome').selectOption('hidden');
  assert.deepEqual(await page.locator('#tools-list li.tool[data-tool]').evaluateAll((els) => els.map((e) => e.dataset.tool)), ['secret_tool']);
  await page.locator('#t-outcome').selectOption('');
  await page.locator('#t-search').fill('echo the');
  assert.deepEqual(await page.locator('#tools-list li.tool[data-tool]').evaluateAll((els) => els.map((e) => e.dataset.tool)), ['echo']);
  assert.deepEqual(page.problems, []);
  await ctx.close();
});

test('the tools page works on a phone (375 px, no sideways scrolling)', async () => {
  const { ctx, page } = await newPage('admin', { width: 375, height: 812 }, 'dark');
  await page.goto(`${gw.url}/tools`);
  await tool(page, 'echo').waitFor({ timeout: 30000 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `page scrolls sideways by ${overflow}px`);
  await shot(page, 'tools-375-dark.png', false);
  assert.deepEqual(page.problems, []);
  await ctx.close();
});

test('an admin builds a policy visually, saves it, and the gateway enforces it', async () => {
  const { ctx, page } = await newPage('admin');
  await page.goto(`${gw.url}/tools`);
  await tool(page, 'echo').waitFor({ timeout: 30000 });
  await page.locator('.builder-toggle[data-upstream="test"]').click();
  await page.locator('#policy-review').waitFor();
  // echo: Deny with a reason; delete_record: approval with a 60 s timeout.
  await tool(page, 'echo').locator('select.state-select').selectOption('deny');
  await tool(page, 'echo').locator('input.state-reason').fill('echo is off today');
  await tool(page, 'delete_record').locator('select.state-select').selectOption('require_approval');
  await tool(page, 'delete_record').locator('input.state-timeout').fill('60');
  const json = JSON.parse(await page.locator('.builder-json .policy-json').innerText());
  assert.deepEqual(json.rules.echo, { action: 'deny', reason: 'echo is off today' });
  assert.deepEqual(json.rules.delete_record, { action: 'require_approval', approval: { timeout: 60, on_timeout: 'deny' } });
  // Two-person rule and groups from the builder, then back to one approver.
  await tool(page, 'delete_record').locator('input.state-approvers').fill('2');
  await tool(page, 'delete_record').locator('input.state-groups').fill('finance, ops');
  const two = JSON.parse(await page.locator('.builder-json .policy-json').innerText());
  assert.deepEqual(two.rules.delete_record.approval, { timeout: 60, on_timeout: 'deny', approvers: 2, groups: ['finance', 'ops'] });
  await tool(page, 'delete_record').locator('input.state-approvers').fill('1');
  await tool(page, 'delete_record').locator('input.state-groups').fill('');
  const one = JSON.parse(await page.locator('.builder-json .policy-json').innerText());
  assert.deepEqual(one.rules.delete_record, { action: 'require_approval', approval: { timeout: 60, on_timeout: 'deny' } });
  // Approval keys the builder has no control for survive an edit of the rule.
  const kept = await page.evaluate(async () => {
    const { toolState, setToolState } = await import('/js/builder.js');
    const doc = { rules: { pay: { action: 'require_approval', approval: { timeout: 90, max_grant: 0, approvers: 2, escalate_after: 30, escalate_to: 'oncall' } } } };
    setToolState(doc, 'pay', { ...toolState(doc, 'pay'), reason: 'money' });
    return doc.rules.pay;
  });
  assert.deepEqual(kept, { action: 'require_approval', reason: 'money', approval: { max_grant: 0, escalate_after: 30, escalate_to: 'oncall', timeout: 90, on_timeout: 'deny', approvers: 2 } });
  await page.locator('#policy-review').click();
  await page.locator('.policy-diff .d-add', { hasText: 'echo is off today' }).waitFor();
  assert.ok(await page.locator('.policy-diff .d-del').count() > 0);
  await tool(page, 'echo').scrollIntoViewIfNeeded();
  await page.evaluate(() => window.scrollBy(0, -80));
  await shot(page, 'policy-builder.png', false);
  await page.locator('#policy-save').click();
  await page.locator('.toast', { hasText: 'saved and in force' }).waitFor({ timeout: 10000 });
  const onDisk = JSON.parse(fs.readFileSync(gw.policy, 'utf8'));
  assert.deepEqual(onDisk.rules.echo, { action: 'deny', reason: 'echo is off today' });
  assert.ok(fs.existsSync(`${gw.policy}.prev`));
  // The page shows the new outcome, and a real SDK client is refused.
  await page.locator('#tools-list li.tool[data-tool="echo"] .tool-outcome', { hasText: 'Denied' }).waitFor({ timeout: 10000 });
  assert.deepEqual(await sdkCalls([['echo', { text: 'after' }]]), ['refused denied']);
  assert.deepEqual(page.problems, []);
  await ctx.close();
});

test('a history row opens its full record, linked approval rows, and verify chain', async () => {
  // A held call denied by the approver (bo), so the row has a decider, a comment and a link.
  const client = await new McpClient(`${gw.url}/mcp/test`).connect();
  const held = client.callTool('delete_record', { id: 'r7', password: 'hunter2' });
  let pending = [];
  for (let i = 0; i < 100 && pending.length === 0; i++) {
    const r = await fetch(`${gw.url}/api/pending`, { headers: { Authorization: `Bearer ${tokens.approver}` } });
    pending = (await r.json()).pending;
    if (!pending.length) await sleep(100);
  }
  assert.equal(pending.length, 1);
  const deny = await fetch(`${gw.url}/api/pending/${pending[0].id}/deny`, {
    method: 'POST', headers: { Authorization: `Bearer ${tokens.approver}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ comment: 'not this one' }),
  });
  assert.equal(deny.status, 200);
  await held;
  const { ctx, page } = await newPage('viewer');
  await page.goto(`${gw.url}/history?tool=delete_record`);
  const row = page.locator('#history-list li.entry', { hasText: 'Denied by approver' });
  await row.locator('.entry-toggle').click();
  const detail = row.locator('.entry-detail');
  await detail.locator('.record-chain', { hasText: 'Row ' }).waitFor();
  assert.match(await detail.innerText(), /not this one/);
  assert.match(await detail.innerText(), /bo/);
  assert.match(await detail.locator('.record-args').innerText(), /\[redacted\]/);
  assert.match(await detail.locator('.record-chain').innerText(), /hash matches its content and links to the row before/);
  // The link to the approval_requested row opens it.
  const link = detail.locator('.related button', { hasText: 'Approval requested' });
  const seq = await link.getAttribute('data-seq');
  await link.click();
  await page.locator(`#history-list li.entry[data-seq="${seq}"] > .entry-detail:not([hidden])`).waitFor();
  await page.locator('#verify-chain').click();
  await page.locator('#verify-result.verify-ok', { hasText: 'Chain intact' }).waitFor();
  await shot(page, 'history-details.png');
  assert.deepEqual(page.problems, []);
  await ctx.close();
});

test('a viewer sees no decision buttons and a read-only builder', async () => {
  const client = await new McpClient(`${gw.url}/mcp/test`).connect();
  const controller = new AbortController();
  const held = client.callTool('delete_record', { id: 'v1' }, { signal: controller.signal }).catch(() => null);
  const { ctx, page } = await newPage('viewer');
  const card = page.locator('#cards > li.card', { hasText: 'delete_record' });
  await card.waitFor({ timeout: 15000 });
  assert.equal(await card.locator('button', { hasText: /Approve|Deny/ }).count(), 0);
  assert.match(await card.innerText(), /role is viewer/);
  await page.keyboard.press('a');
  await sleep(300);
  assert.equal(await card.count(), 1, 'the a shortcut decides nothing for a viewer');
  await page.goto(`${gw.url}/tools`);
  await tool(page, 'echo').waitFor({ timeout: 30000 });
  await page.locator('.builder-toggle[data-upstream="test"]').click();
  await page.locator('.builder-readonly', { hasText: 'admin role' }).waitFor();
  assert.equal(await page.locator('#policy-save').count(), 0);
  assert.ok(await tool(page, 'echo').locator('select.state-select').isDisabled());
  assert.deepEqual(page.problems, []);
  await ctx.close();
  // Let the approver end the hold.
  const r = await fetch(`${gw.url}/api/pending`, { headers: { Authorization: `Bearer ${tokens.approver}` } });
  for (const p of (await r.json()).pending) {
    await fetch(`${gw.url}/api/pending/${p.id}/deny`, { method: 'POST', headers: { Authorization: `Bearer ${tokens.approver}` } });
  }
  await held;
});
