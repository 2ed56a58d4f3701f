// Shared plumbing for the client drivers (sdk1.mjs, client2.mjs).
//
// A driver connects one MCP client to a server (Streamable HTTP URL or a
// stdio child), runs a JSON script of steps and prints ONE JSON document on
// stdout describing what happened. See tests/node/README.md for the contract.

export const DEFAULT_ROOTS = [{ uri: 'file:///tmp/airlock-test-root', name: 'airlock-test-root' }];

export function usage(driver, extra = '') {
    return `usage:
  node ${driver} --url http://127.0.0.1:PORT/mcp [--header 'Name: value']... --script JSON [options]
  node ${driver} --script JSON [options] --stdio -- <command> <args...>
options:
  --script JSON | @file    steps, e.g. [{"op":"list"},{"op":"call","name":"echo","args":{"message":"hi"}}]
  --no-capabilities        declare no sampling/elicitation/roots capabilities
  --sample-text TEXT       text of the fixed sampling reply
  --elicit-action A        accept (default) | decline | cancel
  --elicit-content JSON    content for an accepted elicitation (default {"answer":"yes"})
  --roots JSON             roots/list answer (default ${JSON.stringify(DEFAULT_ROOTS)})
  --name NAME              clientInfo.name
  --timeout-ms N           default request timeout for every step
${extra}`;
}

/** Parses argv (without node and script path). */
export async function parseArgs(argv, { driver, defaults = {}, extraFlags = {} }) {
    const opts = {
        url: undefined,
        headers: {},
        stdio: undefined, // { command, args }
        script: undefined,
        capabilities: true,
        sampleText: defaults.sampleText,
        elicitAction: 'accept',
        elicitContent: { answer: 'yes' },
        roots: DEFAULT_ROOTS,
        name: defaults.name ?? driver,
        timeoutMs: undefined,
        ...Object.fromEntries(Object.entries(extraFlags).map(([, f]) => [f.key, f.default]))
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const next = () => {
            if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
            return argv[++i];
        };
        switch (a) {
            case '--url':
                opts.url = next();
                break;
            case '--header': {
                const h = next();
                const idx = h.indexOf(':');
                if (idx <= 0) throw new Error(`bad --header ${JSON.stringify(h)} (want 'Name: value')`);
                opts.headers[h.slice(0, idx).trim()] = h.slice(idx + 1).trim();
                break;
            }
            case '--stdio': {
                let rest = argv.slice(i + 1);
                if (rest[0] === '--') rest = rest.slice(1);
                if (rest.length === 0) throw new Error('--stdio needs -- <command> <args...>');
                opts.stdio = { command: rest[0], args: rest.slice(1) };
                i = argv.length;
                break;
            }
            case '--':
                // `--stdio` may come before other flags only via `--stdio -- cmd`; a bare `--`
                // after flags means "the rest is the stdio command".
                if (opts.stdio === undefined) {
                    const rest = argv.slice(i + 1);
                    if (rest.length) opts.stdio = { command: rest[0], args: rest.slice(1) };
                }
                i = argv.length;
                break;
            case '--script': {
                const v = next();
                const text = v.startsWith('@') ? (await import('node:fs')).readFileSync(v.slice(1), 'utf8') : v;
                opts.script = JSON.parse(text);
                break;
            }
            case '--no-capabilities':
                opts.capabilities = false;
                break;
            case '--sample-text':
                opts.sampleText = next();
                break;
            case '--elicit-action':
                opts.elicitAction = next();
                break;
            case '--elicit-content':
                opts.elicitContent = JSON.parse(next());
                break;
            case '--roots':
                opts.roots = JSON.parse(next());
                break;
            case '--name':
                opts.name = next();
                break;
            case '--timeout-ms':
                opts.timeoutMs = Number(next());
                break;
            case '-h':
            case '--help':
                process.stdout.write(usage(driver, Object.keys(extraFlags).map(k => `  ${k} ${extraFlags[k].help}`).join('\n')) + '\n');
                process.exit(0);
                break;
            default:
                if (extraFlags[a]) {
                    opts[extraFlags[a].key] = extraFlags[a].parse(next());
                    break;
                }
                throw new Error(`unknown argument ${a}`);
        }
    }
    if (!opts.url && !opts.stdio) throw new Error('need --url or --stdio -- <command>');
    if (opts.url && opts.stdio) throw new Error('--url and --stdio are exclusive');
    if (!Array.isArray(opts.script)) opts.script = [{ op: 'list' }, { op: 'close' }];
    return opts;
}

/** Counters shared between the request handlers and the step runner. */
export function makeCounters() {
    return { sampling: 0, elicitation: 0, roots: 0, progress: 0 };
}

export function samplingReply(opts) {
    return {
        model: `${opts.name}-fixed-model`,
        role: 'assistant',
        content: { type: 'text', text: opts.sampleText },
        stopReason: 'endTurn'
    };
}

export function elicitationReply(opts) {
    if (opts.elicitAction === 'accept') return { action: 'accept', content: opts.elicitContent };
    return { action: opts.elicitAction };
}

/**
 * Turns anything thrown into `{kind, code, message, name, data?, httpStatus?}`. `classify` and
 * `httpInfo` are driver-specific. When the transport rejected a non-2xx HTTP answer whose body is a
 * JSON-RPC error (e.g. 400 + -32020, 404 + -32601 in the 2026-07-28 era), the step reports that
 * JSON-RPC error (kind "jsonrpc") with `httpStatus`, not a transport failure.
 */
export function errorJson(err, classify, httpInfo) {
    const out = {
        kind: err?.scriptCancel ? 'cancelled' : classify(err),
        code: err?.code ?? null,
        message: String(err?.message ?? err),
        name: err?.name ?? err?.constructor?.name ?? typeof err
    };
    if (err?.data !== undefined) out.data = err.data;
    const http = httpInfo?.(err);
    if (http) {
        out.httpStatus = http.status;
        const rpc = parseJsonRpcError(http.text);
        if (rpc) {
            out.kind = 'jsonrpc';
            out.transportMessage = out.message;
            out.code = rpc.code;
            out.message = rpc.message;
            if (rpc.data !== undefined) out.data = rpc.data;
            else delete out.data;
        }
    }
    return out;
}

function parseJsonRpcError(text) {
    if (typeof text !== 'string') return undefined;
    const i = text.indexOf('{');
    if (i < 0) return undefined;
    try {
        const msg = JSON.parse(text.slice(i));
        if (msg && typeof msg === 'object' && msg.error && typeof msg.error.code === 'number') return msg.error;
    } catch {
        /* not JSON */
    }
    return undefined;
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

/**
 * Runs the script. `api` is the driver's adapter:
 *   list(step, reqOpts) -> ListToolsResult
 *   call(step, reqOpts) -> CallToolResult
 *   request(step, reqOpts) -> any result (raw method)
 *   ping(reqOpts)
 *   close()
 *   terminate() (HTTP DELETE of the session, when supported)
 *   classify(err) -> 'jsonrpc' | 'timeout' | 'cancelled' | 'transport' | 'other'
 */
export async function runSteps(steps, api, counters, opts) {
    const results = [];
    for (const step of steps) {
        results.push(await runStep(step, api, counters, opts));
    }
    return results;
}

async function runStep(step, api, counters, opts) {
    const op = step.op;
    const started = Date.now();
    const before = { ...counters };
    const out = { op };
    if (step.name !== undefined) out.name = step.name;
    if (step.label !== undefined) out.label = step.label;
    const progressEvents = [];
    const reqOpts = {};
    const timeout = step.timeoutMs ?? opts.timeoutMs;
    if (timeout !== undefined) reqOpts.timeout = timeout;
    if (step.resetTimeoutOnProgress) reqOpts.resetTimeoutOnProgress = true;
    if (step.maxTotalTimeoutMs !== undefined) reqOpts.maxTotalTimeout = step.maxTotalTimeoutMs;
    if (step.progress) {
        reqOpts.onprogress = p => {
            counters.progress++;
            progressEvents.push(p);
        };
    }
    let abortTimer;
    if (step.cancelAfterMs !== undefined) {
        const ac = new AbortController();
        reqOpts.signal = ac.signal;
        abortTimer = setTimeout(
            () => ac.abort(Object.assign(new Error(`cancelled by script after ${step.cancelAfterMs} ms`), { scriptCancel: true })),
            step.cancelAfterMs
        );
    }
    try {
        switch (op) {
            case 'list': {
                const r = await api.list(step, reqOpts);
                out.tools = r.tools.map(t => t.name);
                out.descriptions = Object.fromEntries(r.tools.map(t => [t.name, t.description ?? null]));
                if (step.full) out.result = r;
                out.ok = true;
                break;
            }
            case 'call': {
                out.result = await api.call(step, reqOpts);
                out.ok = true;
                break;
            }
            case 'request': {
                out.method = step.method;
                out.result = await api.request(step, reqOpts);
                out.ok = true;
                break;
            }
            case 'ping':
                out.result = await api.ping(reqOpts);
                out.ok = true;
                break;
            case 'sleep':
                await sleep(step.ms ?? 0);
                out.ok = true;
                break;
            case 'parallel': {
                out.steps = await Promise.all((step.steps ?? []).map(s => runStep(s, api, counters, opts)));
                out.ok = out.steps.every(s => s.ok);
                break;
            }
            case 'terminate':
                await api.terminate();
                out.ok = true;
                break;
            case 'close':
                await api.close();
                out.ok = true;
                break;
            default:
                throw Object.assign(new Error(`unknown op ${JSON.stringify(op)}`), { scriptError: true });
        }
    } catch (err) {
        if (err?.scriptError) throw err;
        out.ok = false;
        out.error = errorJson(err, api.classify, api.httpInfo);
        if (reqOpts.signal?.aborted) out.error.kind = 'cancelled';
    } finally {
        if (abortTimer) clearTimeout(abortTimer);
    }
    if (op === 'call' || op === 'request' || step.progress) {
        out.progress = progressEvents.length;
        if (progressEvents.length) out.progressEvents = progressEvents;
    }
    if (op !== 'parallel') {
        out.sampling = counters.sampling - before.sampling;
        out.elicitation = counters.elicitation - before.elicitation;
        out.roots = counters.roots - before.roots;
    }
    out.elapsedMs = Date.now() - started;
    return out;
}

/** Prints the document and exits: 0 when every step ran without a transport failure, 3 otherwise. */
export function finish(doc) {
    const transportFailures = [];
    const walk = steps => {
        for (const s of steps ?? []) {
            if (s.error?.kind === 'transport') transportFailures.push(s);
            walk(s.steps);
        }
    };
    walk(doc.steps);
    doc.transportFailures = transportFailures.length;
    process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
    if (transportFailures.length) {
        for (const s of transportFailures) process.stderr.write(`transport failure in step ${s.op} ${s.name ?? ''}: ${s.error.message}\n`);
    }
    // Exit explicitly once stdout is flushed: an open SSE stream or a child process must not keep us alive.
    const code = transportFailures.length ? 3 : 0;
    // (stdout writes to pipes and files are synchronous on Linux, so nothing is lost.)
    process.exit(code);
}

/**
 * Top-level crash (connect failure, bad script): the error to stderr, exit 2. The document is still
 * printed on stdout with `crash` = the error in the step error shape.
 */
export function crash(err, partialDoc, api) {
    process.stderr.write(`${err?.stack ?? err}\n`);
    if (partialDoc) {
        partialDoc.crash = errorJson(err, api?.classify ?? (() => 'other'), api?.httpInfo);
        process.stdout.write(JSON.stringify(partialDoc, null, 2) + '\n');
    }
    process.exit(2);
}
