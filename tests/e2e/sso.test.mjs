/*
 * Browser tests for single sign-on with OpenID Connect (issue 16 item 4), run with
 *   cd tests/node && node --test --test-concurrency=1 ../e2e/sso.test.mjs
 *
 * Starts a real OpenID provider (the `oidc-provider` npm package, see idp.mjs)
 * with test users in groups, and two real gateways (AIRLOCK_BIN) configured
 * with `[oidc]` in front of the project's Python test server: one with an
 * hour-long session_ttl and a static-token approver beside SSO, one with a
 * 6-second session_ttl for the expiry test
 * and a second provider that sends groups only from its userinfo endpoint. Chromium (playwright-core) signs
 * in through the provider's own login and consent pages. A third gateway has
 * the wrong client secret. Held calls come
 * from the official Python SDK client (tests/py/pydriver.py).
 * AIRLOCK_DOCS_SCREENSHOTS=1 also writes docs/img/login-sso.png.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HERE, ROOT, sleep, freePort, waitHealthy, launchBrowser } from './lib.mjs';
import { startIdp, USERS } from './idp.mjs';

const ARTIFACTS = process.env.AIRLOCK_E2E_ARTIFACTS || path.join(HERE, 'artifacts');
const DOCS_IMG = path.join(ROOT, 'docs', 'img');
const PYTHON = process.env.AIRLOCK_TEST_PYTHON || path.join(os.homedir(), '.cache/airlock-venv/bin/python');
const TESTSERVER = path.join(ROOT, 'tests/servers/testserver.py');
const PYDRIVER = path.join(ROOT, 'tests/py/pydriver.py');
const OPS_TOKEN = `ops-${randomBytes(12).toString('hex')}`;
/** session_ttl (seconds) of the second gateway, for the expiry test. */
const SHORT_TTL = 6;

const POLICY = {
  version: '1',
  default: 'deny',
  rules: {
    echo: { action: 'allow' },
    'delete_*': { action: 'require_approval', reason: 'destructive', approval: { timeout: 120 } },
    // Only the provider's `staff` group decides these (alice is in it, carl is not).
    secret_tool: { action: 'require_approval', reason: 'staff only', approval: { timeout: 120, groups: ['staff'] } },
    // The two-person rule: votes count by the provider's subject, not the email.
    add: { action: 'require_approval', reason: 'two people', approval: { timeout: 120, approvers: 2 } },
  },
};

let idp;
let idpUserinfo;
let browser;
const gateways = [];
let main;
let short;
let wrongSecret;

async function startGateway(name, port, sessionTtl, provider = idp, secret = provider.clientSecret) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `airlock-sso-${name}-`));
  const policy = path.join(dir, 'policy.json');
  fs.writeFileSync(policy, `${JSON.stringify(POLICY, null, 2)}\n`);
  const config = path.join(dir, 'airlock.toml');
  fs.writeFileSync(config, [
    '[[upstream]]', 'name = "test"', `command = ${JSON.stringify(PYTHON)}`,
    `args = ${JSON.stringify([TESTSERVER, 'stdio'])}`, `policy = ${JSON.stringify(policy)}`, '',
    '[[approver]]', 'name = "ops"', 'token_env = "T_OPS"', '',
    '[oidc]', `issuer = ${JSON.stringify(provider.issuer)}`, `client_id = ${JSON.stringify(provider.clientId)}`,
    'client_secret_env = "T_OIDC_SECRET"', 'scopes = ["openid", "email", "profile", "groups"]',
    `session_ttl = ${sessionTtl}`, 'provider_name = "Test IdP"', '',
    '[oidc.roles]', '"airlock-viewers" = "viewer"', '"airlock-approvers" = "approver"', '"airlock-admins" = "admin"', '',
  ].join('\n'));
  const url = `http://127.0.0.1:${port}`;
  const log = fs.createWriteStream(path.join(ARTIFACTS, `sso-gateway-${name}.log`));
  const proc = spawn(process.env.AIRLOCK_BIN, ['serve', '--config', config, '--listen', `127.0.0.1:${port}`,
    '--audit', path.join(dir, 'audit.db')], {
    env: { ...process.env, T_OPS: OPS_TOKEN, T_OIDC_SECRET: secret, RUST_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout.pipe(log, { end: false });
  proc.stderr.pipe(log, { end: false });
  const gw = { name, url, proc, log, dir };
  gateways.push(gw);
  await waitHealthy(url, { proc });
  return gw;
}

before(async () => {
  assert.ok(process.env.AIRLOCK_BIN, 'set AIRLOCK_BIN to the built airlock binary');
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const [p1, p2, p3] = [await freePort(), await freePort(), await freePort()];
  const urls = [p1, p2, p3].map((p) => `http://127.0.0.1:${p}`);
  idp = await startIdp({
    redirectUris: [urls[0], urls[2]].map((u) => `${u}/auth/oidc/callback`), postLogoutUris: [`${urls[0]}/login`],
  });
  // The second provider puts only `sub` in the ID token: groups and email come from userinfo.
  idpUserinfo = await startIdp({
    redirectUris: [`${urls[1]}/auth/oidc/callback`], postLogoutUris: [`${urls[1]}/login`], claimsInIdToken: false,
  });
  main = await startGateway('main', p1, 3600);
  short = await startGateway('short', p2, SHORT_TTL, idpUserinfo);
  wrongSecret = await startGateway('wrong-secret', p3, 3600, idp, 'not-the-client-secret');
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const gw of gateways) {
    if (gw.proc.exitCode === null) {
      const exited = new Promise((r) => gw.proc.once('exit', r));
      gw.proc.kill('SIGTERM');
      await exited;
    }
    gw.log.end();
    fs.rmSync(gw.dir, { recursive: true, force: true });
  }
  await idp?.close();
  await idpUserinfo?.close();
});

async function newPage(viewport = { width: 1280, height: 800 }) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    // Only Airlock's own pages: the provider's pages are not ours to judge.
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text()) && gateways.some((g) => page.url().startsWith(g.url))) {
      page.problems.push(`csp: ${m.text()}`);
    }
  });
  return { ctx, page };
}

async function shot(page, name, fullPage = false) {
  await page.screenshot({ path: path.join(ARTIFACTS, name), fullPage });
  if (process.env.AIRLOCK_DOCS_SCREENSHOTS) await page.screenshot({ path: path.join(DOCS_IMG, name), fullPage });
}

/** At the provider: its login page (any password), then its consent page when it asks. */
async function signInAtProvider(page, user) {
  const atProvider = (u) => [idp, idpUserinfo].some((p) => u.startsWith(p.issuer));
  await page.waitForURL((u) => atProvider(u.href), { waitUntil: 'domcontentloaded' });
  await page.locator('input[name="login"]').fill(user);
  await page.locator('input[name="password"]').fill('any-password');
  await page.locator('button[type="submit"]', { hasText: 'Sign-in' }).click();
  // The provider answers with its consent page or straight back to the
  // gateway; wait for one of the two. (A URL test cannot tell: the login page
  // and the consent page are both /interaction/<uid>, so it passed on the
  // login page before the form's navigation and the consent went unclicked.)
  const consent = page.locator('button[type="submit"]', { hasText: 'Continue' });
  const backHome = page.waitForURL((u) => !atProvider(u.href), { waitUntil: 'commit', timeout: 20000 }).then(() => false);
  const asked = consent.waitFor({ state: 'visible', timeout: 20000 }).then(() => true);
  backHome.catch(() => {});
  asked.catch(() => {});
  if (await Promise.race([backHome, asked])) await consent.click();
}

/** Signs `user` in from the dashboard's login page; resolves once the dashboard shows. */
async function ssoLogin(page, gw, user) {
  await page.goto(`${gw.url}/login`);
  const link = page.locator('#login-sso-link');
  await link.waitFor({ state: 'visible' });
  await link.click();
  await signInAtProvider(page, user);
  await page.locator('#view-pending').waitFor({ state: 'visible', timeout: 20000 });
}

/** A tools/call through the official Python SDK client; resolves with its one step. */
function pythonCall(gw, name, args) {
  const script = JSON.stringify([{ op: 'call', name, args, timeoutMs: 90000 }]);
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [PYDRIVER, '--mode', 'legacy', '--url', `${gw.url}/mcp/test`, '--script', script,
      '--timeout-ms', '90000', '--name', 'sso-e2e-agent'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('exit', () => {
      try { resolve(JSON.parse(out).steps[0]); } catch { reject(new Error(`pydriver printed no JSON: ${err.slice(-2000)}`)); }
    });
  });
}

async function pendingIds(gw, tool) {
  const r = await fetch(`${gw.url}/api/pending`, { headers: { Authorization: `Bearer ${OPS_TOKEN}` } });
  return (await r.json()).pending.filter((p) => p.tool === tool).map((p) => p.id);
}

/** The first held call of `tool` not in `seen` (calls an earlier failed test left held). */
async function waitPending(gw, tool, seen = []) {
  for (let i = 0; i < 200; i++) {
    const ids = (await pendingIds(gw, tool)).filter((id) => !seen.includes(id));
    if (ids.length) return ids[0];
    await sleep(100);
  }
  throw new Error(`no pending ${tool}`);
}

/** The page's own API session: /api/me as the browser sees it. */
const me = (page) => page.evaluate(async () => {
  const r = await fetch('/api/me', { cache: 'no-store' });
  return { status: r.status, body: await r.json().catch(() => null) };
});

test('the login page offers "Sign in with <provider>" beside the approver token', async () => {
  const { ctx, page } = await newPage();
  await page.goto(`${main.url}/login`);
  const link = page.locator('#login-sso-link');
  await link.waitFor({ state: 'visible' });
  assert.equal((await link.innerText()).trim(), 'Sign in with Test IdP');
  assert.equal(await page.locator('#login-or').innerText(), 'or use an approver token');
  assert.equal(await link.getAttribute('href'), '/auth/oidc/login');
  assert.ok(await page.locator('#login-token').isVisible(), 'static-token login stays available');
  await shot(page, 'login-sso.png');
  const phone = await newPage({ width: 375, height: 812 });
  await phone.page.goto(`${main.url}/login`);
  await phone.page.locator('#login-sso-link').waitFor({ state: 'visible' });
  await phone.page.screenshot({ path: path.join(ARTIFACTS, 'login-sso-375.png') });
  const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the login page scrolls sideways by ${overflow}px on a phone`);
  await phone.ctx.close();
  assert.deepEqual(page.problems, []);
  await ctx.close();
});

test('an approver signs in at the provider, approves a Python SDK call, and is the recorded decider', async () => {
  const held = pythonCall(main, 'delete_record', { id: 'sso-1' });
  const { ctx, page } = await newPage();
  await ssoLogin(page, main, 'alice');
  assert.equal(await page.locator('#whoami').innerText(), 'Signed in as alice@example.com (oidc) (approver)');
  const session = await me(page);
  assert.equal(session.status, 200);
  assert.equal(session.body.role, 'approver');
  assert.equal(session.body.sso, true);
  const card = page.locator('#cards > li.card', { hasText: 'delete_record' });
  await card.waitFor({ timeout: 30000 });
  // A token approver watches in another browser: the pending.resolved event names the decider.
  const watcher = await newPage();
  await watcher.page.goto(`${main.url}/login#token=${encodeURIComponent(OPS_TOKEN)}`);
  await watcher.page.locator('#cards > li.card', { hasText: 'delete_record' }).waitFor({ timeout: 30000 });
  await card.locator('button.btn-approve').click();
  const step = await held;
  await watcher.page.locator('#cards > li.note', { hasText: 'Approved by alice@example.com (oidc) via dashboard' }).waitFor({ timeout: 10000 });
  await watcher.ctx.close();
  assert.ok(step.ok, `the SDK call failed: ${JSON.stringify(step)}`);
  assert.ok(!step.result.isError, `the call was refused: ${JSON.stringify(step.result)}`);
  assert.match(JSON.stringify(step.result.content), /sso-1/);
  // The audit history records the provider's identity as the decider.
  const audit = await page.evaluate(async () => (await fetch('/api/audit?decision=approved&tool=delete_record')).json());
  assert.equal(audit.entries[0].decider, 'alice@example.com (oidc)');
  assert.equal(audit.entries[0].channel, 'dashboard');
  await page.locator('#tab-history').click();
  const row = page.locator('#history-list li.entry', { hasText: 'delete_record' }).filter({ hasText: 'alice@example.com (oidc)' });
  await row.first().waitFor({ timeout: 10000 });
  assert.deepEqual(page.problems, []);
  await ctx.close();
});

test('a viewer from the provider sees no decision buttons and gets 403 from the decide API', async () => {
  const held = pythonCall(main, 'delete_record', { id: 'sso-viewer' });
  const id = await waitPending(main, 'delete_record');
  const { ctx, page } = await newPage();
  await ssoLogin(page, main, 'vic');
  assert.equal(await page.locator('#whoami').innerText(), 'Signed in as vic@example.com (oidc) (viewer)');
  const card = page.locator('#cards > li.card', { hasText: 'delete_record' });
  await card.waitFor({ timeout: 30000 });
  assert.equal(await card.locator('button', { hasText: /Approve|Deny/ }).count(), 0);
  assert.match(await card.innerText(), /role is viewer/);
  const answer = await page.evaluate(async (pid) => {
    const csrf = (await (await fetch('/api/me')).json()).csrf;
    const r = await fetch(`/api/pending/${pid}/approve`, {
      method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Airlock-CSRF': csrf }, body: '{}',
    });
    return { status: r.status, body: await r.json() };
  }, id);
  assert.equal(answer.status, 403);
  assert.equal(answer.body.error.code, 'forbidden_role');
  assert.match(answer.body.error.message, /vic@example\.com \(oidc\)/);
  assert.deepEqual(await pendingIds(main, 'delete_record'), [id], 'the call is still held');
  assert.deepEqual(page.problems, []);
  await ctx.close();
  // The static-token approver ends it: static tokens keep working beside SSO.
  const r = await fetch(`${main.url}/api/pending/${id}/deny`, {
    method: 'POST', headers: { Authorization: `Bearer ${OPS_TOKEN}`, 'Content-Type': 'application/json' }, body: '{"comment":"viewer test"}',
  });
  assert.equal(r.status, 200);
  const step = await held;
  assert.equal(step.result?._meta?.['airlock.decision'], 'approval_denied');
});

test('approver groups come from the provider: only a `staff` member decides a staff-only call', async () => {
  const held = pythonCall(main, 'secret_tool', {});
  const id = await waitPending(main, 'secret_tool');
  // carl has the approver role but is not in `staff`: no buttons, and 403 from the API.
  const outsider = await newPage();
  await ssoLogin(outsider.page, main, 'carl');
  const card = outsider.page.locator('#cards > li.card', { hasText: 'secret_tool' });
  await card.waitFor({ timeout: 30000 });
  await card.locator('.card-not-yours', { hasText: 'You are not in a group that may decide this call.' }).waitFor({ timeout: 10000 });
  assert.equal(await card.locator('button.btn-approve').isVisible(), false);
  const refused = await outsider.page.evaluate(async (pid) => {
    const csrf = (await (await fetch('/api/me')).json()).csrf;
    const r = await fetch(`/api/pending/${pid}/approve`, {
      method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Airlock-CSRF': csrf }, body: '{}',
    });
    return { status: r.status, body: await r.json() };
  }, id);
  assert.equal(refused.status, 403);
  assert.equal(refused.body.error.code, 'forbidden_group');
  assert.match(refused.body.error.message, /staff/);
  assert.deepEqual(await pendingIds(main, 'secret_tool'), [id], 'the call is still held');
  await outsider.ctx.close();
  // The static-token approver has no groups either.
  const tokenTry = await fetch(`${main.url}/api/pending/${id}/approve`, {
    method: 'POST', headers: { Authorization: `Bearer ${OPS_TOKEN}`, 'Content-Type': 'application/json' }, body: '{}',
  });
  assert.equal(tokenTry.status, 403);
  // alice's provider groups include `staff`: her dashboard offers the buttons and her approval releases the call.
  const { ctx, page } = await newPage();
  await ssoLogin(page, main, 'alice');
  const quorum = await page.evaluate(async () => (await fetch('/api/quorum')).json());
  assert.equal(quorum.quorum[id].may_decide, true);
  const mine = page.locator('#cards > li.card', { hasText: 'secret_tool' });
  await mine.waitFor({ timeout: 30000 });
  await mine.locator('button.btn-approve').click();
  const step = await held;
  assert.ok(step.ok && !step.result.isError, `the call was refused: ${JSON.stringify(step)}`);
  const audit = await page.evaluate(async () => (await fetch('/api/audit?decision=approved&tool=secret_tool')).json());
  assert.equal(audit.entries[0].decider, 'alice@example.com (oidc)');
  assert.deepEqual(page.problems, []);
  await ctx.close();
});

/** Approves (or denies) held call `id` through the page's own login: status and body. */
const decideInPage = (page, id, verb = 'approve') => page.evaluate(async ({ pid, v }) => {
  const csrf = (await (await fetch('/api/me')).json()).csrf;
  const r = await fetch(`/api/pending/${pid}/${v}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Airlock-CSRF': csrf }, body: '{}',
  });
  return { status: r.status, body: await r.json() };
}, { pid: id, v: verb });

test('two provider accounts sending the same email are two voters under the two-person rule', async () => {
  const seen = await pendingIds(main, 'add');
  const held = pythonCall(main, 'add', { a: 2, b: 3 });
  const id = await waitPending(main, 'add', seen);
  const alice = await newPage();
  await ssoLogin(alice.page, main, 'alice');
  const card = alice.page.locator('#cards > li.card', { hasText: 'add' });
  await card.locator('.card-quorum', { hasText: '0 of 2 approvals' }).waitFor({ timeout: 30000 });
  await card.locator('button.btn-approve').click();
  await card.locator('.card-quorum', { hasText: '1 of 2 approvals (alice@example.com (oidc))' }).waitFor({ timeout: 10000 });
  // Another account (subject `alice-twin`) whose provider sends alice's email and name.
  const twin = await newPage();
  await ssoLogin(twin.page, main, 'alice-twin');
  assert.equal(await twin.page.locator('#whoami').innerText(), 'Signed in as alice@example.com (oidc) (approver)');
  const quorum = await twin.page.evaluate(async () => (await fetch('/api/quorum')).json());
  assert.equal(quorum.quorum[id].you_approved, false, 'the twin has not voted, whatever its name');
  const twinCard = twin.page.locator('#cards > li.card', { hasText: 'add' });
  await twinCard.locator('.card-quorum', { hasText: '1 of 2 approvals' }).waitFor({ timeout: 10000 });
  assert.equal(await twinCard.locator('button.btn-approve').innerText(), 'Approve');
  const second = await decideInPage(twin.page, id);
  assert.equal(second.status, 200, JSON.stringify(second.body));
  assert.equal(second.body.decision, 'approved');
  const step = await held;
  assert.ok(step.ok && !step.result.isError, `the call was refused: ${JSON.stringify(step)}`);
  // Both appear: the vote row and the approval naming both approvers.
  const audit = await twin.page.evaluate(async (pid) => (await fetch(`/api/audit?pending_id=${pid}`)).json(), id);
  const vote = audit.entries.find((e) => e.decision === 'approval.vote');
  const approved = audit.entries.find((e) => e.decision === 'approved');
  assert.equal(vote.decider, 'alice@example.com (oidc)');
  assert.equal(approved.decider, 'alice@example.com (oidc)');
  assert.equal(approved.comment, 'approved by alice@example.com (oidc), alice@example.com (oidc) (2 of 2)');
  assert.deepEqual(alice.page.problems, []);
  assert.deepEqual(twin.page.problems, []);
  await alice.ctx.close();
  await twin.ctx.close();
});

test('one provider account whose email changed between sign-ins counts once', async () => {
  const seen = await pendingIds(main, 'add');
  const held = pythonCall(main, 'add', { a: 4, b: 5 });
  const id = await waitPending(main, 'add', seen);
  const before = await newPage();
  await ssoLogin(before.page, main, 'ren');
  const first = await decideInPage(before.page, id);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.deepEqual([first.body.decision, first.body.approvals], ['vote', ['ren@example.com (oidc)']]);
  await before.ctx.close();
  // The provider now sends another email for the same subject.
  const email = USERS.ren.email;
  USERS.ren.email = 'ren.new@example.com';
  try {
    const after = await newPage();
    await ssoLogin(after.page, main, 'ren');
    assert.equal(await after.page.locator('#whoami').innerText(), 'Signed in as ren.new@example.com (oidc) (approver)');
    // The dashboard knows this login already voted (by subject, not name).
    const card = after.page.locator('#cards > li.card', { hasText: 'add' });
    await card.locator('button.btn-approve', { hasText: 'You approved' }).waitFor({ timeout: 30000 });
    assert.equal(await card.locator('button.btn-approve').isDisabled(), true);
    const again = await decideInPage(after.page, id);
    assert.equal(again.status, 409, JSON.stringify(again.body));
    assert.equal(again.body.error.code, 'same_approver');
    assert.match(again.body.error.message, /already approved this call; it needs 2 different approvers \(1 so far\)/);
    assert.ok((await pendingIds(main, 'add')).includes(id), 'the call is still held');
    assert.deepEqual(after.page.problems, []);
    await after.ctx.close();
  } finally {
    USERS.ren.email = email;
  }
  // A different approver (the static token) completes it.
  const r = await fetch(`${main.url}/api/pending/${id}/approve`, {
    method: 'POST', headers: { Authorization: `Bearer ${OPS_TOKEN}`, 'Content-Type': 'application/json' }, body: '{}',
  });
  const body = await r.json();
  assert.equal(r.status, 200, JSON.stringify(body));
  assert.equal(body.decision, 'approved');
  assert.equal(body.comment, 'approved by ren@example.com (oidc), ops (2 of 2)');
  const step = await held;
  assert.ok(step.ok && !step.result.isError, `the call was refused: ${JSON.stringify(step)}`);
});

test('an admin group maps to the admin role (highest of the user\'s groups)', async () => {
  const { ctx, page } = await newPage();
  await ssoLogin(page, main, 'ada');
  assert.equal(await page.locator('#whoami').innerText(), 'Signed in as ada@example.com (oidc) (admin)');
  assert.equal((await me(page)).body.role, 'admin');
  await ctx.close();
});

test('a user in no mapped group is refused with a page that says why', async () => {
  const { ctx, page } = await newPage();
  await page.goto(`${main.url}/login`);
  await page.locator('#login-sso-link').click();
  await signInAtProvider(page, 'mallory');
  const problem = page.locator('#problem');
  await problem.waitFor({ timeout: 20000 });
  assert.equal(await problem.innerText(), 'No Airlock role');
  const text = await page.locator('main').innerText();
  assert.match(text, /mallory@example\.com/);
  assert.match(text, /your groups: contractors/);
  assert.ok(page.url().startsWith(`${main.url}/auth/oidc/callback`));
  await shot(page, 'login-sso-no-role.png');
  assert.equal((await me(page)).status, 401, 'no login was made');
  await ctx.close();
});

test('a code exchange the provider refuses (wrong client secret) ends on a page with its error', async () => {
  const { ctx, page } = await newPage();
  await page.goto(`${wrongSecret.url}/login`);
  await page.locator('#login-sso-link').click();
  await signInAtProvider(page, 'alice');
  const problem = page.locator('#problem');
  await problem.waitFor({ timeout: 20000 });
  assert.equal(await problem.innerText(), 'Sign-in failed');
  assert.match(await page.locator('main').innerText(), /invalid_client/);
  assert.equal((await me(page)).status, 401, 'no login was made');
  await ctx.close();
});

test('a callback this browser did not start is refused', async () => {
  const { ctx, page } = await newPage();
  const res = await page.goto(`${main.url}/auth/oidc/callback?code=forged&state=forged`);
  assert.equal(res.status(), 400);
  assert.match(await page.locator('#problem').innerText(), /not started here/);
  const refused = await page.goto(`${main.url}/auth/oidc/callback?error=access_denied&error_description=${encodeURIComponent('<b>nope</b>')}`);
  assert.equal(refused.status(), 401);
  assert.match(await page.locator('main').innerText(), /access_denied: <b>nope<\/b>/, 'provider text is shown as text');
  await ctx.close();
});

test('logout ends the Airlock login and the provider session', async () => {
  const { ctx, page } = await newPage();
  await ssoLogin(page, main, 'alice');
  await page.locator('#logout').click();
  // The provider's end-session page asks to confirm, then sends the browser back to /login.
  await page.waitForURL((u) => u.href.startsWith(idp.issuer), { waitUntil: 'domcontentloaded' });
  await page.locator('button[name="logout"]', { hasText: 'Yes, sign me out' }).click();
  await page.waitForURL(`${main.url}/login`);
  await page.locator('#view-login').waitFor({ state: 'visible' });
  assert.equal((await me(page)).status, 401);
  // The provider forgot the session too: signing in asks for the login again.
  await page.locator('#login-sso-link').click();
  await page.waitForURL((u) => u.href.startsWith(idp.issuer), { waitUntil: 'domcontentloaded' });
  await page.locator('input[name="login"]').waitFor({ state: 'visible' });
  await ctx.close();
});

test('a static-token approver still logs in and decides beside SSO', async () => {
  const { ctx, page } = await newPage();
  await page.goto(`${main.url}/login#token=${encodeURIComponent(OPS_TOKEN)}`);
  await page.locator('#view-pending').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#whoami').innerText(), 'Signed in as ops (approver)');
  assert.equal((await me(page)).body.sso, false);
  await page.locator('#logout').click();
  await page.locator('#view-login').waitFor({ state: 'visible' });
  assert.ok(page.url().startsWith(main.url), 'a token login never goes to the provider');
  await ctx.close();
});

test('an expired SSO session goes back to the login page (groups read from userinfo)', async () => {
  const { ctx, page } = await newPage();
  const started = Date.now();
  await ssoLogin(page, short, 'alice');
  // This provider's ID token has only `sub`: the identity and groups came from userinfo.
  assert.equal(await page.locator('#whoami').innerText(), 'Signed in as alice@example.com (oidc) (approver)');
  assert.equal((await me(page)).status, 200);
  await sleep(Math.max(0, started + SHORT_TTL * 1000 + 700 - Date.now()));
  // The gateway closes the page's live connection when the login ends; the
  // page, left alone, finds the login gone and asks to log in again.
  await page.locator('#view-login').waitFor({ state: 'visible', timeout: 10000 });
  assert.match(await page.locator('#login-error').innerText(), /session has ended/);
  assert.equal((await me(page)).status, 401, 'the login ends after session_ttl');
  await page.reload();
  await page.locator('#view-login').waitFor({ state: 'visible' });
  await ctx.close();
});
