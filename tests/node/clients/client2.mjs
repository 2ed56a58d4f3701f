#!/usr/bin/env node
// Client driver on @modelcontextprotocol/client 2.x (handshake era and 2026-07-28 stateless era).
//   --era legacy      (default) plain initialize handshake, byte-identical to a 2025 client
//   --era auto        probe server/discover, fall back to initialize
//   --era 2026-07-28  pinned modern era, no fallback ({pin: '2026-07-28'})
// Contract: tests/node/README.md. Prints one JSON document on stdout.
import { readFileSync } from 'node:fs';
import { Client, ProtocolError, SdkError, SdkErrorCode, SdkHttpError, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { z } from 'zod';
import { crash, elicitationReply, finish, makeCounters, parseArgs, runSteps, samplingReply, usage } from './common.mjs';

const SDK_VERSION = JSON.parse(readFileSync(new URL('../node_modules/@modelcontextprotocol/client/package.json', import.meta.url))).version;
const ERA_HELP = `--era legacy|auto|2026-07-28   version negotiation (default legacy)
  --probe-timeout-ms N           server/discover probe timeout (auto / pinned modes)`;

let opts;
try {
    opts = await parseArgs(process.argv.slice(2), {
        driver: 'client2',
        defaults: { sampleText: 'sampled-by-client2', name: 'client2-driver' },
        extraFlags: {
            '--era': { key: 'era', default: 'legacy', parse: v => v, help: 'legacy|auto|2026-07-28' },
            '--probe-timeout-ms': { key: 'probeTimeoutMs', default: undefined, parse: Number, help: 'N' }
        }
    });
} catch (e) {
    process.stderr.write(`${e.message}\n${usage('client2.mjs', ERA_HELP)}`);
    process.exit(64);
}

let mode;
if (opts.era === 'legacy' || opts.era === 'auto') mode = opts.era;
else if (/^\d{4}-\d{2}-\d{2}$/.test(opts.era)) mode = { pin: opts.era };
else {
    process.stderr.write(`bad --era ${opts.era}\n${usage('client2.mjs', ERA_HELP)}`);
    process.exit(64);
}

const counters = makeCounters();
const doc = {
    driver: 'client2',
    sdk: `@modelcontextprotocol/client@${SDK_VERSION}`,
    transport: opts.url ? 'http' : 'stdio',
    eraRequested: opts.era,
    era: null,
    protocolVersion: null,
    sessionId: null,
    serverInfo: null,
    serverCapabilities: null,
    steps: [],
    totals: counters
};

const capabilities = opts.capabilities ? { sampling: {}, elicitation: {}, roots: { listChanged: true } } : {};
const versionNegotiation = { mode };
if (opts.probeTimeoutMs !== undefined) versionNegotiation.probe = { timeoutMs: opts.probeTimeoutMs };
const client = new Client({ name: opts.name, version: '1.0.0' }, { capabilities, versionNegotiation });

// The same handlers serve 2025-era server->client requests and 2026-07-28 `input_required`
// results (the client fulfils the embedded requests through them and retries the call).
if (opts.capabilities) {
    client.setRequestHandler('sampling/createMessage', async () => {
        counters.sampling++;
        return samplingReply(opts);
    });
    client.setRequestHandler('elicitation/create', async () => {
        counters.elicitation++;
        return elicitationReply(opts);
    });
    client.setRequestHandler('roots/list', async () => {
        counters.roots++;
        return { roots: opts.roots };
    });
}
client.onerror = e => process.stderr.write(`[client2] client error: ${e?.message ?? e}\n`);

let transport;
if (opts.url) {
    transport = new StreamableHTTPClientTransport(new URL(opts.url), { requestInit: { headers: opts.headers } });
} else {
    transport = new StdioClientTransport({
        command: opts.stdio.command,
        args: opts.stdio.args,
        env: { ...process.env },
        stderr: 'inherit'
    });
}

const LOCAL_TRANSPORT_CODES = new Set([
    SdkErrorCode.NotConnected,
    SdkErrorCode.ConnectionClosed,
    SdkErrorCode.SendFailed,
    SdkErrorCode.ClientHttpNotImplemented,
    SdkErrorCode.ClientHttpAuthentication,
    SdkErrorCode.ClientHttpForbidden,
    SdkErrorCode.ClientHttpUnexpectedContent,
    SdkErrorCode.ClientHttpFailedToOpenStream,
    SdkErrorCode.ClientHttpFailedToTerminateSession
]);

function classify(err) {
    if (err instanceof ProtocolError) return 'jsonrpc';
    if (err instanceof SdkError) {
        if (err.code === SdkErrorCode.RequestTimeout) return 'timeout';
        if (LOCAL_TRANSPORT_CODES.has(err.code)) return 'transport';
        return 'client'; // local SDK refusal: invalid result, era gate, MRTR rounds exceeded, ...
    }
    if (err?.name === 'AbortError') return 'cancelled';
    return 'transport';
}

function httpInfo(err) {
    if (!(err instanceof SdkHttpError) || typeof err.data?.status !== 'number') return undefined;
    return { status: err.data.status, text: err.data.text };
}

const api = {
    classify,
    httpInfo,
    list: (step, o) => client.listTools(step.cursor ? { cursor: step.cursor } : undefined, { ...o, cacheMode: 'bypass' }),
    call: (step, o) => {
        const params = { name: step.name, arguments: step.args ?? {} };
        if (step.meta) params._meta = step.meta;
        return client.callTool(params, o);
    },
    request: (step, o) => client.request({ method: step.method, params: step.params ?? {} }, z.any(), o),
    ping: o => client.ping(o),
    terminate: () => {
        if (typeof transport.terminateSession !== 'function') throw new Error('terminate needs the HTTP transport');
        return transport.terminateSession();
    },
    close: () => client.close()
};

try {
    await client.connect(transport, opts.timeoutMs ? { timeout: opts.timeoutMs } : undefined);
} catch (e) {
    crash(e, doc, api);
}
doc.era = client.getProtocolEra() ?? null;
doc.protocolVersion = client.getNegotiatedProtocolVersion() ?? null;
doc.sessionId = transport.sessionId ?? null;
doc.serverInfo = client.getServerVersion() ?? null;
doc.serverCapabilities = client.getServerCapabilities() ?? null;

try {
    doc.steps = await runSteps(opts.script, api, counters, opts);
} catch (e) {
    crash(e, doc, api);
}
finish(doc);
