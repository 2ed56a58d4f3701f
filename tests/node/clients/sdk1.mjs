#!/usr/bin/env node
// Client driver on @modelcontextprotocol/sdk 1.x (handshake era only).
// Contract: tests/node/README.md. Prints one JSON document on stdout.
import { readFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import {
    CallToolResultSchema,
    CreateMessageRequestSchema,
    ElicitRequestSchema,
    ListRootsRequestSchema,
    McpError
} from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { crash, elicitationReply, finish, makeCounters, parseArgs, runSteps, samplingReply, usage } from './common.mjs';

const SDK_VERSION = JSON.parse(readFileSync(new URL('../node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url))).version;

let opts;
try {
    opts = await parseArgs(process.argv.slice(2), { driver: 'sdk1', defaults: { sampleText: 'sampled-by-sdk1', name: 'sdk1-driver' } });
} catch (e) {
    process.stderr.write(`${e.message}\n${usage('sdk1.mjs')}`);
    process.exit(64);
}

const counters = makeCounters();
const doc = {
    driver: 'sdk1',
    sdk: `@modelcontextprotocol/sdk@${SDK_VERSION}`,
    transport: opts.url ? 'http' : 'stdio',
    era: 'legacy',
    protocolVersion: null,
    sessionId: null,
    serverInfo: null,
    serverCapabilities: null,
    steps: [],
    totals: counters
};

const capabilities = opts.capabilities ? { sampling: {}, elicitation: {}, roots: { listChanged: true } } : {};
const client = new Client({ name: opts.name, version: '1.0.0' }, { capabilities });

if (opts.capabilities) {
    client.setRequestHandler(CreateMessageRequestSchema, async () => {
        counters.sampling++;
        return samplingReply(opts);
    });
    client.setRequestHandler(ElicitRequestSchema, async () => {
        counters.elicitation++;
        return elicitationReply(opts);
    });
    client.setRequestHandler(ListRootsRequestSchema, async () => {
        counters.roots++;
        return { roots: opts.roots };
    });
}
client.onerror = e => process.stderr.write(`[sdk1] client error: ${e?.message ?? e}\n`);

let transport;
let negotiated = null;
if (opts.url) {
    transport = new StreamableHTTPClientTransport(new URL(opts.url), { requestInit: { headers: opts.headers } });
} else {
    transport = new StdioClientTransport({
        command: opts.stdio.command,
        args: opts.stdio.args,
        env: { ...process.env },
        stderr: 'inherit'
    });
    // The stdio transport has no protocolVersion; the client calls this hook after initialize.
    transport.setProtocolVersion = v => {
        negotiated = v;
    };
}

function classify(err) {
    if (err instanceof McpError) {
        if (err.code === -32001 && /timed out/i.test(err.message)) return 'timeout';
        if (err.code === -32000 && /connection closed/i.test(err.message)) return 'transport';
        return 'jsonrpc';
    }
    if (err?.name === 'AbortError') return 'cancelled';
    // StreamableHTTPError (non-2xx HTTP), fetch failures, closed pipes, ...
    return 'transport';
}

function httpInfo(err) {
    if (!(err instanceof StreamableHTTPError) || !(err.code > 0)) return undefined;
    const m = /^Streamable HTTP error: [^:]*: ([\s\S]*)$/.exec(err.message);
    return { status: err.code, text: m ? m[1] : err.message };
}

const api = {
    classify,
    httpInfo,
    list: (step, o) => client.listTools(step.cursor ? { cursor: step.cursor } : undefined, o),
    call: (step, o) => {
        const params = { name: step.name, arguments: step.args ?? {} };
        if (step.meta) params._meta = step.meta;
        return client.callTool(params, CallToolResultSchema, o);
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
    doc.steps = [];
    crash(e, doc, api);
}
doc.protocolVersion = transport.protocolVersion ?? negotiated;
doc.sessionId = transport.sessionId ?? null;
doc.serverInfo = client.getServerVersion() ?? null;
doc.serverCapabilities = client.getServerCapabilities() ?? null;

try {
    doc.steps = await runSteps(opts.script, api, counters, opts);
} catch (e) {
    crash(e, doc, api);
}
finish(doc);
