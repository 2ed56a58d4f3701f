#!/usr/bin/env node
// Runs @modelcontextprotocol/server-everything's Streamable HTTP transport bound to 127.0.0.1
// (upstream listens on all interfaces) and prints `LISTENING http://127.0.0.1:PORT/mcp` on stdout.
//
//   node servers/everything-http.mjs [--port 0]
//
// server-everything also logs to stdout ("Received MCP POST request", ...): wait for the LISTENING line.
import net from 'node:net';

let port = '0';
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--port') port = argv[++i];
    else {
        process.stderr.write(`unknown argument ${argv[i]}\nusage: node everything-http.mjs [--port N]\n`);
        process.exit(64);
    }
}
// server-everything reads PORT (`process.env.PORT || 3001`); "0" is truthy, so 0 = any free port.
process.env.PORT = String(port);

const origListen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
    // app.listen(PORT, cb) -> server.listen(PORT, cb): force the loopback host.
    if (args.length && (typeof args[0] === 'number' || typeof args[0] === 'string') && typeof args[1] !== 'string') {
        args.splice(1, 0, '127.0.0.1');
    }
    this.once('listening', () => {
        const addr = this.address();
        if (addr && typeof addr === 'object') process.stdout.write(`LISTENING http://127.0.0.1:${addr.port}/mcp\n`);
    });
    return origListen.apply(this, args);
};

process.argv = [process.argv[0], 'mcp-server-everything', 'streamableHttp'];
await import(new URL('../node_modules/@modelcontextprotocol/server-everything/dist/index.js', import.meta.url).href);
