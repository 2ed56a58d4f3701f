/*
 * Browser test for several replicas on one PostgreSQL (issue 14), run with
 *   cd tests/node && AIRLOCK_BIN=… node --test ../e2e/replicas.test.mjs
 * using node:test + playwright-core driving Debian's chromium, like
 * dashboard.test.mjs.
 *
 * The test starts a throwaway PostgreSQL from the system's binaries (initdb +
 * pg_ctl in a temp dir on a free port, as the `postgres` user when run as
 * root; skipped, saying why, when they are missing) and two `airlock serve
 * --config` replicas A and B on it (`[store] url_env`), each in front of its
 * own server-everything (stdio), `echo` held by a require_approval rule.
 * Then: an agent's tools/call (plain fetch, handshake era) is held on A → the
 * card shows on B's dashboard → click Approve on B → the agent on A gets the
 * upstream's real answer, the card leaves both dashboards (the login made on
 * B is valid on A: same approver tokens, same signed cookie), and B's history
 * API shows one `approved` row.
 *
 * Environment:
 *   AIRLOCK_BIN        the built binary (required; skipped without it)
 *   AIRLOCK_PG_BIN     PostgreSQL's bin/ (default: newest /usr/lib/postgresql/N/bin)
 *   AIRLOCK_CHROMIUM   default /usr/bin/chromium
 *   AIRLOCK_E2E_ARTIFACTS  screenshots + replica logs; default tests/e2e/artifacts
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HERE, EVERYTHING, sleep, freePort, waitHealthy, McpClient, launchBrowser } from './lib.mjs';

const ARTIFACTS = process.env.AIRLOCK_E2E_ARTIFACTS || path.join(HERE, 'artifacts');
const BIN = process.env.AIRLOCK_BIN;
const TOKEN = randomBytes(16).toString('hex');

/* ───────────────────────── PostgreSQL ───────────────────────── */

function pgBin() {
  if (process.env.AIRLOCK_PG_BIN) return process.env.AIRLOCK_PG_BIN;
  const root = '/usr/lib/postgresql';
  const versions = fs.existsSync(root)
    ? fs.readdirSync(root).filter((v) => /^\d+$/.test(v) && fs.existsSync(path.join(root, v, 'bin', 'initdb')))
    : [];
  versions.sort((a, b) => Number(b) - Number(a));
  return versions.length ? path.join(root, versions[0], 'bin') : null;
}

const PG_BIN = pgBin();
const skip = (!BIN && 'set AIRLOCK_BIN') || (!PG_BIN && 'PostgreSQL server binaries not found; run scripts/setup-test-env');

/** A throwaway cluster, the twin of tests/py/pgcluster.py. */
class PgCluster {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-pg-e2e-'));
    fs.mkdirSync(path.join(this.dir, 'sock'));
    this.runAs = process.getuid?.() === 0 ? 'postgres' : null;
    if (this.runAs) spawnSync('chown', ['-R', `${this.runAs}:`, this.dir]);
  }

  run(program, ...args) {
    const exe = path.join(PG_BIN, program);
    const [cmd, argv] = this.runAs ? ['runuser', ['-u', this.runAs, '--', exe, ...args]] : [exe, args];
    return spawnSync(cmd, argv, { encoding: 'utf8' });
  }

  /** Starts the cluster; if it cannot, removes its directory before failing. */
  async start() {
    try {
      return await this.startOrThrow();
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  async startOrThrow() {
    const data = path.join(this.dir, 'data');
    const init = this.run('initdb', '-D', data, '-U', 'airlock', '--auth=trust', '-E', 'UTF8', '--no-sync');
    assert.equal(init.status, 0, `initdb failed: ${init.stderr}`);
    for (let i = 0; i < 5; i++) {
      this.port = await freePort();
      const opts = `-p ${this.port} -k ${path.join(this.dir, 'sock')} -c listen_addresses=127.0.0.1 -c fsync=off`;
      const started = this.run('pg_ctl', '-D', data, '-l', path.join(this.dir, 'log'), '-o', opts, '-w', '-t', '30', 'start');
      if (started.status === 0) return this;
    }
    const log = path.join(this.dir, 'log');
    throw new Error(`PostgreSQL did not start: ${fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '(no log)'}`);
  }

  get url() { return `postgres://airlock@127.0.0.1:${this.port}/postgres`; }

  stop() {
    this.run('pg_ctl', '-D', path.join(this.dir, 'data'), '-m', 'immediate', '-w', 'stop');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/* ───────────────────────── replicas ───────────────────────── */

const replicas = {}; // name → { proc, base, mcp, log }
let pg;
let browser;
let dir;

async function startReplica(name) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const toml = (s) => JSON.stringify(s); // a JSON string is a valid TOML basic string
  const config = path.join(dir, `${name}.toml`);
  fs.writeFileSync(config, [
    `listen = ${toml(`127.0.0.1:${port}`)}`,
    `public_url = ${toml(base)}`,
    '',
    '[[upstream]]',
    'name = "everything"',
    `command = ${toml(process.execPath)}`,
    `args = [${toml(EVERYTHING)}, "stdio"]`,
    `policy = ${toml(path.join(dir, 'policy.json'))}`,
    '',
    '[[approver]]',
    'name = "alice"',
    'token_env = "AIRLOCK_E2E_ALICE_TOKEN"',
    '',
    '[audit]',
    `path = ${toml(path.join(dir, `${name}.db`))}`,
    '',
    '[store]',
    'url_env = "AIRLOCK_E2E_PG_URL"',
    `replica = ${toml(name)}`,
    '',
  ].join('\n'));
  const log = fs.createWriteStream(path.join(ARTIFACTS, `replica-${name}.log`));
  const proc = spawn(BIN, ['serve', '--config', config], {
    env: { ...process.env, AIRLOCK_E2E_ALICE_TOKEN: TOKEN, AIRLOCK_E2E_PG_URL: pg.url },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout.pipe(log, { end: false });
  proc.stderr.pipe(log, { end: false });
  await waitHealthy(base, { ms: 30000, proc, log: path.join(ARTIFACTS, `replica-${name}.log`) });
  replicas[name] = { proc, base, mcp: `${base}/mcp/everything`, log };
}

before(async () => {
  if (skip) return;
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'airlock-e2e-replicas-'));
  fs.writeFileSync(path.join(dir, 'policy.json'), JSON.stringify({
    version: '1',
    default: 'allow',
    rules: { echo: { action: 'require_approval', reason: 'a human checks every echo', approval: { timeout: 120, on_timeout: 'deny' } } },
  }));
  pg = await new PgCluster().start();
  await startReplica('a');
  await startReplica('b');
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const { proc, log } of Object.values(replicas)) {
    if (proc.exitCode === null) {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    log.end();
  }
  pg?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/* ───────────────────────── the test ───────────────────────── */

async function waitFor(check, what, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

test('a call held on replica A is approved by a click in replica B\'s dashboard', { skip, timeout: 60000 }, async () => {
  const { a, b } = replicas;
  // Hostile-looking text: the dashboard must show it as text.
  const message = `replica-e2e ${randomBytes(3).toString('hex')} <img src=x onerror=alert(1)>`;

  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  await page.goto(`${b.base}/login#token=${encodeURIComponent(TOKEN)}`);
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 10000 });

  // The same browser, logged in on B, opens A's dashboard: the login is valid there too.
  const pageA = await context.newPage();
  await pageA.goto(`${a.base}/`);
  await pageA.locator('#conn[data-state="live"]').waitFor({ timeout: 10000 });

  // 1. The agent's call is held on A.
  const client = await new McpClient(a.mcp, 'airlock-e2e-replicas').connect();
  let settled = false;
  const answer = client.callTool('echo', { message }).finally(() => { settled = true; });

  // 2. The card shows on B's dashboard (and A's), the arguments as text.
  const onB = page.locator('#cards > li.card', { hasText: 'replica-e2e' });
  await onB.waitFor({ timeout: 10000 });
  await pageA.locator('#cards > li.card', { hasText: 'replica-e2e' }).waitFor({ timeout: 10000 });
  assert.equal((await onB.locator('.card-tool').textContent()).trim(), 'echo');
  assert.ok((await onB.textContent()).includes('<img src=x onerror=alert(1)>'), 'arguments shown as text');
  await page.screenshot({ path: path.join(ARTIFACTS, 'replicas-held-on-a-shown-on-b.png') });
  assert.equal(settled, false, 'the call is still held');

  // 3. Approve on B.
  await onB.getByRole('button', { name: 'Approve' }).click();

  // 4. The agent on A gets the upstream's answer.
  const reply = await answer;
  assert.ok(reply.result, JSON.stringify(reply));
  assert.ok(!reply.result.isError, JSON.stringify(reply));
  assert.match(reply.result.content[0].text, new RegExp(`Echo: ${message.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));

  // 5. The card leaves both dashboards; one `approved` row, decided by alice through B's dashboard.
  await waitFor(async () => (await onB.count()) === 0, 'card gone on B');
  await waitFor(async () => (await pageA.locator('#cards > li.card', { hasText: 'replica-e2e' }).count()) === 0, 'card gone on A');
  const rows = await (await fetch(`${b.base}/api/audit?tool=echo&limit=100`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
  const decided = rows.entries.filter((e) => e.decision === 'approved');
  assert.equal(decided.length, 1, JSON.stringify(rows.entries));
  assert.equal(decided[0].decider, 'alice');
  assert.equal(decided[0].channel, 'dashboard');
  assert.deepEqual(dialogs, [], 'no script ran from the arguments');
  await context.close();
});

test('a grant given through replica A shows on B\'s dashboard, and Revoke there ends it on A', { skip, timeout: 60000 }, async () => {
  const { a, b } = replicas;
  const auth = { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' };
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(`${b.base}/login#token=${encodeURIComponent(TOKEN)}`);
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 10000 });

  // A call held on A, approved through A's API with a grant for 5 minutes.
  const client = await new McpClient(a.mcp, 'airlock-e2e-grants').connect();
  const answer = client.callTool('echo', { message: 'granted-e2e' });
  let held;
  await waitFor(async () => {
    const body = await (await fetch(`${a.base}/api/pending`, { headers: auth })).json();
    held = body.pending.find((p) => p.arguments?.message === 'granted-e2e');
    return Boolean(held);
  }, 'the hold on A');
  const r = await fetch(`${a.base}/api/pending/${held.id}/approve`, {
    method: 'POST', headers: auth, body: JSON.stringify({ grant: { minutes: 5 } }),
  });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  const { grant } = JSON.parse(text);
  assert.ok((await answer).result, 'the approved call was answered');

  // B's dashboard lists it without a reload (power.changed from the shared store).
  const onB = page.locator(`#grant-list > li.grant[data-id="${grant.id}"]`);
  await onB.waitFor({ timeout: 10000 });
  assert.match(await onB.textContent(), /Granted by alice/);
  await page.screenshot({ path: path.join(ARTIFACTS, 'replicas-grant-from-a-shown-on-b.png') });

  // Revoke on B's dashboard: gone from A's list.
  await onB.getByRole('button', { name: 'Revoke' }).click();
  await waitFor(async () => (await onB.count()) === 0, 'grant gone from B\'s dashboard');
  await waitFor(async () => {
    const body = await (await fetch(`${a.base}/api/grants`, { headers: auth })).json();
    return body.grants.length === 0;
  }, 'grant gone on A');
  await context.close();
});
