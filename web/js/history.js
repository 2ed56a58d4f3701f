// History view: the audit log with filters, cursor paging, expandable rows
// and export links for the current filter.
import { h, $, clear, fmtDateTime, fmtShortDateTime, fmtDuration, clip, visible } from './dom.js';
import { audit, exportUrl, auditEntry, verifyAudit } from './api.js';
import { jsonView } from './json-view.js';

const FILTERS = ['tool', 'upstream', 'agent', 'decision', 'decider', 'since', 'until'];

export const OUTCOME_LABEL = {
  allowed: 'Allowed',
  denied: 'Denied by policy',
  rate_limited: 'Rate limited',
  hidden: 'Hidden',
  approval_requested: 'Approval requested',
  approved: 'Approved',
  denied_by_human: 'Denied by approver',
  timed_out: 'Timed out',
  cancelled: 'Cancelled',
  abandoned: 'Abandoned',
  'policy.changed': 'Policy changed',
  granted: 'Allowed by a grant',
  'grant.created': 'Grant given',
  'grant.ended': 'Grant ended',
  'tool.changed': 'Tool definition changed',
  'tool.accepted': 'Tool definition accepted',
  'tool.pinned': 'Tool definitions pinned',
};
const OUTCOME_TONE = {
  allowed: 'ok', approved: 'ok',
  denied: 'bad', denied_by_human: 'bad', rate_limited: 'warn', hidden: 'muted',
  approval_requested: 'info', timed_out: 'warn', cancelled: 'muted', abandoned: 'muted',
  'policy.changed': 'info',
  granted: 'ok', 'grant.created': 'info', 'grant.ended': 'muted',
  'tool.changed': 'bad', 'tool.accepted': 'info', 'tool.pinned': 'info',
};

// Field order of the expanded record.
const DETAIL_FIELDS = [
  ['at', 'Time'], ['decision', 'Outcome'], ['tool', 'Tool'], ['upstream', 'Upstream'],
  ['agent', 'Agent'], ['session', 'Session'], ['rule', 'Rule'], ['reason', 'Reason'],
  ['decider', 'Decider'], ['channel', 'Channel'], ['comment', 'Comment'], ['wait_ms', 'Waited'],
  ['pending_id', 'Pending ID'], ['id', 'Entry ID'], ['seq', 'Sequence'],
  ['args_hash', 'Arguments hash'], ['hash', 'Hash'], ['prev_hash', 'Previous hash'],
];

const els = {};
let applied = {};          // the filter the list and the export links reflect
let limit = '50';
let cursor = null;
let controller = null;
let rowSeq = 0;
let loaded = 0;
let onNavigate = () => {};

export function initHistory(opts) {
  onNavigate = opts.onNavigate || onNavigate;
  els.form = $('#history-filters');
  els.list = $('#history-list');
  els.status = $('#history-status');
  els.more = $('#history-more');
  els.error = $('#history-error');
  els.jsonl = $('#export-jsonl');
  els.csv = $('#export-csv');
  els.form.addEventListener('submit', (e) => {
    e.preventDefault();
    const params = readForm();
    onNavigate(`/history${qs(params)}`);
  });
  $('#f-reset').addEventListener('click', () => {
    els.form.reset();
    onNavigate('/history');
  });
  els.more.addEventListener('click', () => load(true));
  els.verify = $('#verify-chain');
  els.verifyResult = $('#verify-result');
  els.verify.addEventListener('click', () => verifyChain());
}

/** "Verify chain": the server runs `airlock audit verify` and checks the checkpoints. */
async function verifyChain() {
  const out = els.verifyResult;
  els.verify.disabled = true;
  els.verify.textContent = 'Verifying…';
  clear(out);
  out.hidden = false;
  try {
    const r = await verifyAudit();
    const chain = r?.chain || {};
    out.className = `verify-result ${r?.ok ? 'verify-ok' : 'verify-bad'}`;
    out.appendChild(h('h2', null, chain.ok ? `Chain intact: ${chain.rows} row${chain.rows === 1 ? '' : 's'} verified.` : 'The chain is broken.'));
    if (!chain.ok) out.appendChild(h('p', null, clip(visible(chain.problem), 1000)));
    const cp = r?.checkpoints;
    if (!cp) {
      out.appendChild(h('p', { class: 'muted' }, 'No signed checkpoint yet (the gateway signs the head of the chain periodically).'));
    } else {
      if (cp.latest) {
        out.appendChild(h('p', null, `Last signed checkpoint: row ${cp.latest.seq}, signed ${fmtDateTime(cp.latest.time)}; ${cp.verified} checkpoint${cp.verified === 1 ? '' : 's'} verified with the gateway's key.`));
        out.appendChild(h('p', { class: 'mono verify-key' }, `hash ${visible(cp.latest.hash)} · key ${visible(cp.latest.public_key)}`));
      } else {
        out.appendChild(h('p', { class: 'muted' }, 'No checkpoint verified yet.'));
      }
      for (const p of cp.problems || []) out.appendChild(h('p', { class: 'form-error' }, clip(visible(p), 1000)));
    }
  } catch (e) {
    out.className = 'verify-result verify-bad';
    out.appendChild(h('p', null, `Could not verify: ${clip(e?.message || 'error', 300)}`));
  } finally {
    els.verify.disabled = false;
    els.verify.textContent = 'Verify chain';
  }
}

function qs(params) {
  const q = new URLSearchParams(params).toString();
  return q ? `?${q}` : '';
}

/** datetime-local value (local time) → RFC 3339 UTC */
function localToIso(v) {
  if (!v) return '';
  const t = new Date(v);
  return Number.isFinite(t.getTime()) ? t.toISOString().replace(/\.000Z$/, 'Z') : '';
}

/** RFC 3339 → datetime-local value in local time */
function isoToLocal(v) {
  const t = new Date(v);
  if (!v || !Number.isFinite(t.getTime())) return '';
  const p = (n) => String(n).padStart(2, '0');
  return `${t.getFullYear()}-${p(t.getMonth() + 1)}-${p(t.getDate())}T${p(t.getHours())}:${p(t.getMinutes())}:${p(t.getSeconds())}`;
}

function readForm() {
  const fd = new FormData(els.form);
  const out = {};
  for (const k of FILTERS) {
    let v = String(fd.get(k) ?? '').trim();
    if (k === 'since' || k === 'until') v = localToIso(v);
    if (v) out[k] = v;
  }
  const l = String(fd.get('limit') || '50');
  if (l !== '50') out.limit = l;
  return out;
}

function writeForm(params) {
  for (const k of FILTERS) {
    const input = els.form.elements.namedItem(k);
    if (!input) continue;
    input.value = (k === 'since' || k === 'until') ? isoToLocal(params[k] || '') : (params[k] || '');
  }
  els.form.elements.namedItem('limit').value = ['25', '50', '100', '200'].includes(params.limit) ? params.limit : '50';
}

/** Show the view for the current URL's query string. */
export function showHistory(search) {
  const sp = new URLSearchParams(search);
  const params = {};
  for (const k of FILTERS) { const v = sp.get(k); if (v) params[k] = v; }
  limit = sp.get('limit') && /^\d{1,4}$/.test(sp.get('limit')) ? sp.get('limit') : '50';
  applied = params;
  writeForm({ ...params, limit });
  els.jsonl.href = exportUrl('jsonl', applied);
  els.csv.href = exportUrl('csv', applied);
  load(false);
}

async function load(more) {
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  const params = { ...applied, limit };
  if (more && cursor) params.cursor = cursor;
  if (!more) { clear(els.list); loaded = 0; cursor = null; }
  els.error.hidden = true;
  els.list.setAttribute('aria-busy', 'true');
  els.more.disabled = true;
  els.status.textContent = more ? 'Loading older entries…' : 'Loading…';
  try {
    const data = await audit(params, { signal });
    const entries = Array.isArray(data?.entries) ? data.entries : [];
    const frag = document.createDocumentFragment();
    for (const e of entries) if (e && typeof e === 'object') frag.appendChild(row(e));
    els.list.appendChild(frag);
    loaded += entries.length;
    cursor = typeof data?.next_cursor === 'string' && data.next_cursor ? data.next_cursor : null;
    els.more.hidden = !cursor;
    const filtered = Object.keys(applied).length > 0;
    els.status.textContent = loaded === 0
      ? (filtered ? 'No entries match this filter.' : 'No entries yet. Every tool call through the gateway is recorded here.')
      : `Showing ${loaded} ${loaded === 1 ? 'entry' : 'entries'}${cursor ? ' — there are older ones' : ''}.`;
  } catch (e) {
    if (e?.name === 'AbortError') return;
    els.status.textContent = '';
    els.error.textContent = e instanceof TypeError
      ? 'Could not reach the gateway.'
      : `Could not load the history: ${clip(e?.message || 'error', 300)}`;
    els.error.hidden = false;
  } finally {
    if (!signal.aborted) {
      els.list.setAttribute('aria-busy', 'false');
      els.more.disabled = false;
    }
  }
}

function text(v) {
  if (v === null || v === undefined || v === '') return '—';
  return visible(String(v));
}

function badge(decision) {
  const d = String(decision ?? '');
  return h('span', { class: `badge tone-${OUTCOME_TONE[d] || 'muted'}` }, OUTCOME_LABEL[d] || clip(text(d), 40));
}

function row(e) {
  const n = ++rowSeq;
  const detailId = `hist-${n}`;
  const toggle = h('button', { type: 'button', class: 'entry-toggle', 'aria-expanded': 'false', 'aria-controls': detailId },
    h('span', { class: 'entry-time' }, h('time', { datetime: typeof e.at === 'string' ? e.at : null }, fmtShortDateTime(e.at))),
    h('span', { class: 'entry-outcome' }, badge(e.decision)),
    h('span', { class: 'entry-tool' }, h('code', null, clip(text(e.tool), 120))),
    h('span', { class: 'entry-agent', 'data-label': 'Agent' }, clip(text(e.agent), 80)),
    h('span', { class: 'entry-upstream', 'data-label': 'Upstream' }, clip(text(e.upstream), 80)),
    h('span', { class: 'entry-decider', 'data-label': 'Decider' }, clip(text(e.decider), 80)));
  const detail = h('div', { class: 'entry-detail', id: detailId, hidden: true });
  const li = h('li', { class: 'entry', dataset: { seq: String(e.seq ?? '') } }, toggle, detail);
  let built = false;
  toggle.addEventListener('click', () => {
    const open = toggle.getAttribute('aria-expanded') !== 'true';
    toggle.setAttribute('aria-expanded', String(open));
    li.classList.toggle('open', open);
    if (open && !built) { buildDetail(detail, e); built = true; }
    detail.hidden = !open;
  });
  return li;
}

function buildDetail(host, e) {
  const dl = h('dl', { class: 'record' });
  for (const [k, label] of DETAIL_FIELDS) {
    let v = e[k];
    if (k === 'decision') v = `${OUTCOME_LABEL[v] || text(v)}${v ? ` (${text(v)})` : ''}`;
    else if (k === 'wait_ms') v = v === null || v === undefined ? '—' : `${fmtDuration(v)} (${v} ms)`;
    else if (k === 'at') v = typeof v === 'string' ? `${fmtDateTime(v)} (${visible(v)})` : text(v);
    else v = clip(text(v), 4000);
    const mono = ['session', 'pending_id', 'id', 'args_hash', 'hash', 'prev_hash', 'seq'].includes(k);
    dl.appendChild(h('div', null, h('dt', null, label), h('dd', { class: mono ? 'mono' : null }, v)));
  }
  const args = h('section', { class: 'record-args', 'aria-label': 'Arguments' }, h('h3', null, 'Arguments'));
  if (e.arguments === null || e.arguments === undefined) {
    args.appendChild(h('p', { class: 'muted' }, e.args_hash ? 'Not stored (redacted or omitted); the hash above identifies them.' : 'None.'));
  } else {
    args.appendChild(jsonView(e.arguments));
  }
  const chain = h('section', { class: 'record-chain', 'aria-label': 'Place in the chain' }, h('p', { class: 'muted' }, 'Loading its place in the chain…'));
  host.append(dl, args, chain);
  loadChain(chain, e.seq);
}

/** The row's position in the hash chain and the rows of the same approval. */
async function loadChain(host, seq) {
  let r;
  try {
    r = await auditEntry(seq);
  } catch (err) {
    clear(host).appendChild(h('p', { class: 'form-error' }, `Could not load the full record: ${clip(err?.message || 'error', 300)}`));
    return;
  }
  clear(host);
  const c = r?.chain || {};
  const ok = c.hash_matches_row && c.links_to_previous;
  host.appendChild(h('h3', null, 'Chain'));
  host.appendChild(h('p', { class: ok ? null : 'form-error' },
    `Row ${c.position} of ${c.last}. `,
    c.hash_matches_row ? 'Its hash matches its content' : 'Its hash does NOT match its content (changed after it was written)',
    c.links_to_previous ? ' and links to the row before.' : ', and it does NOT link to the row before.'));
  const related = Array.isArray(r?.related) ? r.related : [];
  if (related.length) {
    host.appendChild(h('h3', null, 'Same approval'));
    const ul = h('ul', { class: 'related' });
    for (const x of related) {
      const btn = h('button', { type: 'button', class: 'linkish', dataset: { seq: String(x.seq) } },
        `${OUTCOME_LABEL[x.decision] || visible(x.decision)} — row ${x.seq}`);
      btn.addEventListener('click', () => openRow(x.seq, host));
      ul.appendChild(h('li', null, btn, x.at ? ` at ${fmtDateTime(x.at)}` : '', x.decider ? ` by ${clip(visible(x.decider), 80)}` : ''));
    }
    host.appendChild(ul);
  }
}

/** Opens the row `seq` in the list, or shows it below `host` when it is not loaded. */
async function openRow(seq, host) {
  const li = els.list.querySelector(`li.entry[data-seq="${CSS.escape(String(seq))}"]`);
  if (li) {
    const toggle = li.querySelector('.entry-toggle');
    if (toggle.getAttribute('aria-expanded') !== 'true') toggle.click();
    li.scrollIntoView({ block: 'nearest' });
    toggle.focus();
    return;
  }
  try {
    const r = await auditEntry(seq);
    const box = h('div', { class: 'entry-detail nested', dataset: { seq: String(seq) } });
    host.appendChild(box);
    buildDetail(box, r.entry);
  } catch (err) {
    host.appendChild(h('p', { class: 'form-error' }, `Could not load row ${seq}: ${clip(err?.message || 'error', 300)}`));
  }
}
