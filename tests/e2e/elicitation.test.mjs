/*
 * Asking the agent's own user (issue 15, item 4) with the official TypeScript
 * SDK client (@modelcontextprotocol/sdk 1.x) answering `elicitation/create`
 * through `setRequestHandler(ElicitRequestSchema, …)`, and the dashboard in
 * chromium racing it. Run with
 *   cd tests/node && node --test --test-concurrency=1 ../e2e/elicitation.test.mjs
 *
 * Starts the real gateway (AIRLOCK_BIN) in front of the project's test server
 * (tests/servers/testserver.py on the official Python SDK, over stdio).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { HERE, ROOT, freePort, serveGateway, stopProcess, launchBrowser } from './lib.mjs';

const SDK = path.join(ROOT, 'tests/node/node_modules/@modelcontextprotocol/sdk/dist/esm');
const { Client } = await import(pathToFileURL(path.join(SDK, 'client/index.js')).href);
const { StreamableHTTPClientTransport } = await import(pathToFileURL(path.join(SDK, 'client/streamableHttp.js')).href);
const { ElicitRequestSchema } = await import(pathToFileURL(path.join(SDK, 'types.js')).href);

const ARTIFACTS = process.env.AIRLOCK_E2E_ARTIFACTS || path.join(HERE, 'artifacts');
const PYTHON = process.env.AIRLOCK_TEST_PYTHON || path.join(os.homedir(), '.cache/airlock-venv/bin/python');
const TESTSERVER = path.join(ROOT, 'tests/servers/testserver.py');
const TOKEN = `appr-${randomBytes(12).toString('hex')}`;

const POLICY = {
  version: '1',
  default: 'deny',
  rules: {
    delete_record: { action: 'require_approval', reason: 'destructive', approval: { timeout: 60, via: ['approvers', 'agent_user'] } },
    echo: { action: 'require_approval', reason: 'the user decides', approval: { timeout: 60, via: ['agent_user'] } },
  },
};

const gw = { proc: null, url: '', dir: '', log: null };
let browser;

before(async () => {
  assert.ok(process.env.AIRLOCK_BIN, 'set AIRLOCK_BIN to the built airlock binary');
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  gw.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-elicit-e2e-'));
  gw.log = fs.createWriteStream(path.join(ARTIFACTS, 'elicitation-gateway.log'));
  const policy = path.join(gw.dir, 'policy.json');
  fs.writeFileSync(policy, `${JSON.stringify(POLICY, null, 2)}\n`);
  const config = path.join(gw.dir, 'airlock.toml');
  fs.writeFileSync(config, [
    '[[upstream]]', 'name = "test"', `command = ${JSON.stringify(PYTHON)}`,
    `args = ${JSON.stringify([TESTSERVER, 'stdio'])}`, `policy = ${JSON.stringify(policy)}`, '',
    '[[approver]]', 'name = "ada"', 'token_env = "T_APPROVER"', '',
  ].join('\n'));
  const port = await freePort();
  await serveGateway(gw, config, port, { T_APPROVER: TOKEN });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await stopProcess(gw.proc);
  gw.log?.end();
  if (gw.dir) fs.rmSync(gw.dir, { recursive: true, force: true });
});

/** A connected SDK client whose elicitation handler is `answer(request, extra)`. */
async function connect(name, answer) {
  const client = new Client({ name, version: '1.0.0' }, { capabilities: { elicitation: { form: {} } } });
  client.setRequestHandler(ElicitRequestSchema, answer);
  await client.connect(new StreamableHTTPClientTransport(new URL(`${gw.url}/mcp/test`)));
  return client;
}

async function audit(pendingId) {
  const res = await fetch(`${gw.url}/api/audit?pending_id=${pendingId}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  const body = await res.json();
  return body.entries.filter((e) => e.decision !== 'approval_requested');
}

async function pendingIds() {
  const res = await fetch(`${gw.url}/api/pending`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  return (await res.json()).pending.map((p) => p.id);
}

const text = (result) => (result.content || []).map((c) => c.text || '').join('');

test('the user approves in their own client: the call runs, audited with channel elicitation', async () => {
  const asked = [];
  const client = await connect('ts-user', async (request) => {
    asked.push(request.params);
    return { action: 'accept', content: { decision: 'approve' } };
  });
  const result = await client.callTool({ name: 'delete_record', arguments: { id: 'e1' } });
  assert.equal(text(result), 'deleted e1');
  assert.equal(asked.length, 1);
  assert.match(asked[0].message, /`delete_record`/);
  assert.match(asked[0].message, /"id":"e1"/);
  assert.deepEqual(asked[0].requestedSchema.properties.decision.enum, ['approve', 'deny']);
  const res = await fetch(`${gw.url}/api/audit?decision=approved`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  const [row] = (await res.json()).entries;
  assert.deepEqual([row.channel, row.decider, row.tool], ['elicitation', 'agent_user:ts-user/1.0.0', 'delete_record']);
  await client.close();
});

test('an approver in the dashboard beats the user: one outcome, and the SDK handler is aborted', async () => {
  let aborted = null;
  let askedResolve;
  const asked = new Promise((r) => { askedResolve = r; });
  // The user never answers; the gateway's notifications/cancelled aborts the handler.
  const client = await connect('ts-slow-user', (request, extra) => new Promise((resolve) => {
    askedResolve();
    extra.signal.addEventListener('abort', () => {
      aborted = String(extra.signal.reason);
      resolve({ action: 'cancel' });
    });
  }));
  const held = client.callTool({ name: 'delete_record', arguments: { id: 'e2' } }, undefined, { timeout: 60000 });
  await asked;
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  await page.goto(`${gw.url}/login#token=${encodeURIComponent(TOKEN)}`);
  const card = page.locator('#cards li.card');
  await card.waitFor({ timeout: 15000 });
  const [id] = await pendingIds();
  assert.match(await card.locator('.card-asks-user').innerText(), /asked too, in their client: the first decision wins/);
  await card.locator('.btn-approve').click();
  const result = await held;
  assert.equal(text(result), 'deleted e2');
  assert.match(aborted ?? '', /decided: approved by ada/);
  const rows = await audit(id);
  assert.deepEqual(rows.map((r) => [r.decision, r.channel, r.decider]), [['approved', 'dashboard', 'ada']]);
  await ctx.close();
  await client.close();
});

test('a call only the agent\'s user may approve: the dashboard offers Deny only, and a deny withdraws the question', async () => {
  let aborted = null;
  let askedResolve;
  const asked = new Promise((r) => { askedResolve = r; });
  const client = await connect('ts-away-user', (request, extra) => new Promise((resolve) => {
    askedResolve();
    extra.signal.addEventListener('abort', () => { aborted = String(extra.signal.reason); resolve({ action: 'cancel' }); });
  }));
  const held = client.callTool({ name: 'echo', arguments: { text: 'hi' } }, undefined, { timeout: 60000 });
  await asked;
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  await page.goto(`${gw.url}/login#token=${encodeURIComponent(TOKEN)}`);
  const card = page.locator('#cards li.card');
  await card.waitFor({ timeout: 15000 });
  assert.match(await card.locator('.card-asks-user').innerText(), /Only the agent's own user may approve/);
  assert.equal(await card.locator('.btn-approve').isVisible(), false);
  assert.equal(await card.locator('select.grant-for').count(), 0);
  const [id] = await pendingIds();
  await card.locator('.card-actions .btn-deny').click();
  await card.locator('.btn-confirm').click();
  const result = await held;
  assert.equal(result.isError, true);
  assert.match(text(result), /ada denied/);
  assert.match(aborted ?? '', /decided: denied by ada/);
  const rows = await audit(id);
  assert.deepEqual(rows.map((r) => [r.decision, r.channel]), [['denied_by_human', 'dashboard']]);
  await ctx.close();
  await client.close();
});
