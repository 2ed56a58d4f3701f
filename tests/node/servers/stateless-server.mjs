#!/usr/bin/env node
// A minimal 2026-07-28-era (stateless) Streamable HTTP MCP server on @modelcontextprotocol/server 2.x.
//
//   node servers/stateless-server.mjs [--port 0] [--legacy reject|stateless] [--response-mode auto|sse|json]
//
// Prints `LISTENING http://127.0.0.1:PORT/mcp` on stdout once listening (bound to 127.0.0.1 only).
// --legacy reject (default): modern-only; 2025-era requests (initialize, ...) get the
//   unsupported-protocol-version error. --legacy stateless: also serve 2025-era requests, each on a
//   fresh instance (no sessions; GET/DELETE -> 405).
//
// Tools:
//   echo {text}            -> text content = text
//   delete_record {id}     -> "deleted record <id>"
//   sample {prompt}        -> input_required (sampling/createMessage, key "sample", requestState
//                             "sample-state:<prompt>"); on the retry returns "sampled: <reply text>"
//   ask {question}         -> input_required (elicitation/create, key "ask"); on the retry returns
//                             "elicited: <action> <content JSON>"
//   slow {steps, ms}       -> sends `steps` notifications/progress (when a progressToken was given),
//                             `ms` apart (default 3 x 200 ms), then "slow done <steps>"
//   fail {message}         -> a tool error (isError: true)
import http from 'node:http';
import {
    McpServer,
    createMcpHandler,
    hostHeaderValidationResponse,
    inputRequired,
    inputResponse,
    localhostAllowedHostnames,
    localhostAllowedOrigins,
    originValidationResponse
} from '@modelcontextprotocol/server';
import { z } from 'zod';

let port = 0;
let legacy = 'reject';
let responseMode = 'auto';
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') port = Number(argv[++i]);
    else if (a === '--legacy') legacy = argv[++i];
    else if (a === '--response-mode') responseMode = argv[++i];
    else {
        process.stderr.write(`unknown argument ${a}\nusage: node stateless-server.mjs [--port N] [--legacy reject|stateless] [--response-mode auto|sse|json]\n`);
        process.exit(64);
    }
}

const text = t => ({ content: [{ type: 'text', text: t }] });

function buildServer(ctx) {
    const server = new McpServer({ name: 'airlock-stateless-test-server', version: '1.0.0' });

    server.registerTool(
        'echo',
        { description: 'Echoes the text back', inputSchema: z.object({ text: z.string() }) },
        async ({ text: t }) => text(t)
    );

    server.registerTool(
        'delete_record',
        {
            description: 'Deletes a record (pretend; destructive)',
            inputSchema: z.object({ id: z.union([z.string(), z.number()]) }),
            annotations: { destructiveHint: true }
        },
        async ({ id }) => text(`deleted record ${id}`)
    );

    server.registerTool(
        'sample',
        { description: 'Asks the client to sample an LLM (2026-07-28 input_required)', inputSchema: z.object({ prompt: z.string() }) },
        async ({ prompt }, c) => {
            if (ctx.era !== 'modern') return { ...text('sample needs the 2026-07-28 era'), isError: true };
            const expectedState = `sample-state:${prompt}`;
            const r = inputResponse(c.mcpReq.inputResponses, 'sample');
            if (r.kind === 'sampling') {
                const state = c.mcpReq.requestState();
                if (state !== expectedState) return { ...text(`bad requestState ${JSON.stringify(state)}`), isError: true };
                const content = Array.isArray(r.result.content) ? r.result.content[0] : r.result.content;
                return text(`sampled: ${content?.text ?? JSON.stringify(content)}`);
            }
            return inputRequired({
                inputRequests: {
                    sample: inputRequired.createMessage({
                        messages: [{ role: 'user', content: { type: 'text', text: prompt } }],
                        maxTokens: 100
                    })
                },
                requestState: expectedState
            });
        }
    );

    server.registerTool(
        'ask',
        { description: 'Asks the user a question (2026-07-28 input_required elicitation)', inputSchema: z.object({ question: z.string() }) },
        async ({ question }, c) => {
            if (ctx.era !== 'modern') return { ...text('ask needs the 2026-07-28 era'), isError: true };
            const r = inputResponse(c.mcpReq.inputResponses, 'ask');
            if (r.kind === 'elicit') return text(`elicited: ${r.action} ${JSON.stringify(r.content ?? null)}`);
            return inputRequired({
                inputRequests: {
                    ask: inputRequired.elicit({
                        message: question,
                        requestedSchema: { type: 'object', properties: { answer: { type: 'string' } }, required: ['answer'] }
                    })
                }
            });
        }
    );

    server.registerTool(
        'slow',
        {
            description: 'Takes a while and reports progress',
            inputSchema: z.object({ steps: z.number().int().min(0).max(1000).default(3), ms: z.number().min(0).max(60000).default(200) })
        },
        async ({ steps, ms }, c) => {
            const token = c.mcpReq._meta?.progressToken;
            for (let i = 1; i <= steps; i++) {
                await new Promise((resolve, reject) => {
                    const t = setTimeout(resolve, ms);
                    c.mcpReq.signal?.addEventListener('abort', () => {
                        clearTimeout(t);
                        reject(new Error('cancelled'));
                    });
                });
                if (token !== undefined) {
                    await c.mcpReq.notify({
                        method: 'notifications/progress',
                        params: { progressToken: token, progress: i, total: steps, message: `step ${i}/${steps}` }
                    });
                }
            }
            return text(`slow done ${steps}`);
        }
    );

    server.registerTool(
        'fail',
        { description: 'Always fails with a tool error', inputSchema: z.object({ message: z.string().default('failed on purpose') }) },
        async ({ message }) => ({ ...text(message), isError: true })
    );

    return server;
}

const handler = createMcpHandler(buildServer, {
    legacy,
    responseMode,
    onerror: e => process.stderr.write(`[stateless-server] ${e?.message ?? e}\n`)
});

const allowedHosts = localhostAllowedHostnames();
const allowedOrigins = localhostAllowedOrigins();

const httpServer = http.createServer(async (req, res) => {
    const ac = new AbortController();
    res.on('close', () => {
        if (!res.writableFinished) ac.abort();
    });
    try {
        const url = new URL(req.url ?? '/', `http://${req.headers.host ?? '127.0.0.1'}`);
        if (url.pathname !== '/mcp') {
            res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
            return;
        }
        const headers = new Headers();
        for (const [k, v] of Object.entries(req.headers)) {
            if (Array.isArray(v)) for (const x of v) headers.append(k, x);
            else if (v !== undefined) headers.set(k, v);
        }
        let body;
        if (req.method !== 'GET' && req.method !== 'HEAD') {
            const chunks = [];
            for await (const c of req) chunks.push(c);
            body = Buffer.concat(chunks);
        }
        const request = new Request(url, { method: req.method, headers, body, signal: ac.signal });
        const response =
            hostHeaderValidationResponse(request, allowedHosts) ??
            originValidationResponse(request, allowedOrigins) ??
            (await handler.fetch(request));
        const outHeaders = {};
        response.headers.forEach((v, k) => {
            outHeaders[k] = v;
        });
        res.writeHead(response.status, outHeaders);
        res.flushHeaders();
        if (response.body) {
            const reader = response.body.getReader();
            ac.signal.addEventListener('abort', () => reader.cancel().catch(() => {}));
            for (;;) {
                const { done, value } = await reader.read();
                if (done) break;
                res.write(value);
            }
        }
        res.end();
    } catch (e) {
        if (!ac.signal.aborted) process.stderr.write(`[stateless-server] request failed: ${e?.stack ?? e}\n`);
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }).end('internal error\n');
        else res.end();
    }
});

httpServer.listen(port, '127.0.0.1', () => {
    process.stdout.write(`LISTENING http://127.0.0.1:${httpServer.address().port}/mcp\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, async () => {
        await handler.close().catch(() => {});
        httpServer.close();
        process.exit(0);
    });
}
