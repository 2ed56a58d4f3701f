// Tools view: every upstream's tools with their risk class (from
// annotations), what the live policy does to each and the deciding rule,
// and calls in the last 24 h; search and filters; the policy builder per
// upstream (builder.js). Tool names, descriptions and annotations come from
// the servers: all of it goes in as text.
import { h, $, clear, clip, visible, fmtShortDateTime } from './dom.js';
import { tools as apiTools } from './api.js';
import { Builder } from './builder.js';

const RISK_TONE = { 'read-only': 'ok', destructive: 'bad', 'open-world': 'warn', unknown: 'muted' };
const OUTCOME_TONE = { allow: 'ok', deny: 'bad', require_approval: 'info', hidden: 'muted' };
const OUTCOME_TEXT = { allow: 'Allowed', deny: 'Denied', require_approval: 'Needs approval', hidden: 'Hidden' };
const CALL_LABEL = {
  allowed: 'allowed', denied: 'denied', rate_limited: 'rate-limited', hidden: 'hidden',
  approval_requested: 'held', approved: 'approved', denied_by_human: 'denied by approver',
  timed_out: 'timed out', cancelled: 'cancelled', abandoned: 'abandoned',
};

const els = {};
let data = null;
let controller = null;
let builder = null;   // the open Builder, if any

export function initTools() {
  els.list = $('#tools-list');
  els.status = $('#tools-status');
  els.error = $('#tools-error');
  els.search = $('#t-search');
  els.upstream = $('#t-upstream');
  els.outcome = $('#t-outcome');
  els.risk = $('#t-risk');
  els.riskText = $('#risk-text');
  $('#tools-filters').addEventListener('submit', (e) => e.preventDefault());
  for (const el of [els.search, els.upstream, els.outcome, els.risk]) {
    el.addEventListener(el.tagName === 'SELECT' ? 'change' : 'input', () => render());
  }
  $('#tools-refresh').addEventListener('click', () => load(true));
}

export function showTools() {
  load(false);
}

/** Live events: a policy change elsewhere re-reads the page, unless an edit is under way. */
export function toolsFrame(frame, isCurrent) {
  if (!isCurrent || !frame || typeof frame.type !== 'string') return;
  if (!['policy.changed', 'policy.reloaded', 'tools.listed'].includes(frame.type)) return;
  if (builder?.dirty) {
    els.status.textContent = 'The policy changed on the gateway; your unsaved edit is kept (saving will ask you to reload).';
    return;
  }
  load(false, true);
}

async function load(refresh, quiet) {
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  els.error.hidden = true;
  if (!quiet) els.status.textContent = refresh ? 'Asking the servers for their tools…' : 'Loading…';
  const refreshBtn = $('#tools-refresh');
  refreshBtn.disabled = true;
  try {
    data = await apiTools({ refresh, signal });
    els.riskText.textContent = typeof data?.risk_classes === 'string' ? data.risk_classes : '';
    fillUpstreams();
    render();
  } catch (e) {
    if (e?.name === 'AbortError') return;
    els.status.textContent = '';
    els.error.textContent = e instanceof TypeError ? 'Could not reach the gateway.' : `Could not load the tools: ${clip(e?.message || 'error', 300)}`;
    els.error.hidden = false;
  } finally {
    if (!signal.aborted) refreshBtn.disabled = false;
  }
}

function fillUpstreams() {
  const keep = els.upstream.value;
  clear(els.upstream);
  els.upstream.appendChild(h('option', { value: '' }, 'All'));
  for (const up of data?.upstreams || []) els.upstream.appendChild(h('option', { value: String(up.name) }, clip(visible(up.name), 80)));
  els.upstream.value = [...els.upstream.options].some((o) => o.value === keep) ? keep : '';
}

function outcomeKey(outcome) {
  return String(outcome || '').startsWith('depends') ? 'depends' : String(outcome || '');
}

function matches(tool, q) {
  if (els.outcome.value && outcomeKey(tool.outcome) !== els.outcome.value) return false;
  if (els.risk.value && tool.risk !== els.risk.value) return false;
  if (!q) return true;
  return [tool.name, tool.title, tool.description, tool.rule].some((v) => typeof v === 'string' && v.toLowerCase().includes(q));
}

function render() {
  if (!data) return;
  const q = els.search.value.trim().toLowerCase();
  const wanted = els.upstream.value;
  clear(els.list);
  let shown = 0;
  let total = 0;
  for (const up of data.upstreams || []) {
    if (wanted && up.name !== wanted) continue;
    const tools = Array.isArray(up.tools) ? up.tools : [];
    total += tools.length;
    const visibleTools = tools.filter((t) => matches(t, q));
    shown += visibleTools.length;
    els.list.appendChild(upstreamSection(up, visibleTools));
  }
  const filtered = q || els.outcome.value || els.risk.value;
  els.status.textContent = total === 0
    ? 'No tools listed yet.'
    : `${shown} of ${total} tool${total === 1 ? '' : 's'}${filtered ? ' match' : ''}.${data.counts_capped ? ' Call counts cover the newest 100 000 rows of the last 24 h.' : ''}`;
}

function upstreamSection(up, tools) {
  const name = String(up.name);
  const panel = h('aside', { class: 'builder-panel', 'aria-label': `Policy builder for ${name}`, hidden: true });
  const open = builder && builder.upstream === name;
  const toggle = h('button', { type: 'button', class: 'btn btn-small builder-toggle', 'aria-expanded': String(open), dataset: { upstream: name } },
    open ? 'Close policy builder' : 'Policy builder');
  const list = h('ol', { class: 'tool-list', 'aria-label': `Tools of ${name}` });
  const head = h('header', { class: 'upstream-head' },
    h('h2', null, clip(visible(name), 120)),
    h('p', { class: 'muted upstream-meta' },
      `${up.policy_format || ''}${up.policy_file ? ` · ${visible(up.policy_file)}` : ' · no policy file'} · default ${up.default || '?'}`,
      up.listed_at ? ` · listed ${fmtShortDateTime(up.listed_at)}` : ''),
    toggle);
  const section = h('section', { class: `upstream${open ? ' building' : ''}`, dataset: { upstream: name } }, head);
  if (up.error) section.appendChild(h('p', { class: 'form-error' }, `Could not list this server's tools: ${clip(visible(up.error), 500)}`));
  section.appendChild(h('div', { class: 'upstream-body' }, list, panel));
  if (open) {
    builder.host = panel;
    panel.hidden = false;
    builder.controls = new Map();
    if (builder.base) builder.render(); else builder.load();
  }
  for (const t of tools) list.appendChild(toolRow(t, open ? builder : null));
  if (!tools.length && !up.error) list.appendChild(h('li', { class: 'tool tool-none muted' }, 'No tool matches.'));
  toggle.addEventListener('click', async () => {
    if (builder && builder.upstream === name) {
      if (builder.dirty && !window.confirm('Discard the unsaved policy changes?')) return;
      builder = null;
    } else {
      if (builder?.dirty && !window.confirm('Discard the unsaved policy changes of the other upstream?')) return;
      builder = new Builder(name, panel, { onSaved: () => load(false, true) });
      await builder.load();
    }
    render();
    document.querySelector(`.builder-toggle[data-upstream="${CSS.escape(name)}"]`)?.focus();
  });
  return section;
}

function chip(text, tone) {
  return h('span', { class: `badge tone-${tone}` }, text);
}

function toolRow(t, b) {
  const name = String(t.name ?? '');
  const outcome = String(t.outcome ?? '');
  const key = outcomeKey(outcome);
  const annotations = t.annotations && typeof t.annotations === 'object' ? Object.entries(t.annotations) : [];
  const calls = t.calls_24h && typeof t.calls_24h === 'object' ? Object.entries(t.calls_24h) : [];
  const conditions = Array.isArray(t.conditions) ? t.conditions : [];
  const meta = h('dl', { class: 'tool-meta' });
  const add = (label, value) => meta.appendChild(h('div', null, h('dt', null, label), h('dd', null, value)));
  add('Rule', h('span', null, h('code', null, clip(visible(t.rule), 200)),
    t.reason ? ` — ${clip(visible(t.reason), 300)}` : '',
    t.rate_limit ? ` · rate limit ${t.rate_limit.max} per ${t.rate_limit.window} s` : ''));
  if (conditions.length) {
    add('Conditions', h('ul', { class: 'tool-conds' },
      conditions.map((c) => h('li', null, h('code', null, clip(visible(c.label), 300)), ` → ${visible(c.action)}`))));
  }
  add('Annotations', annotations.length
    ? h('span', { class: 'chips' }, annotations.map(([k, v]) => h('code', { class: 'chip' }, `${clip(visible(k), 60)}: ${clip(visible(JSON.stringify(v)), 60)}`)))
    : '—');
  add('Calls, last 24 h', calls.length ? calls.map(([k, n]) => `${n} ${CALL_LABEL[k] || visible(k)}`).join(' · ') : 'none');
  return h('li', { class: 'tool', dataset: { tool: name, outcome: key, risk: String(t.risk ?? '') } },
    h('div', { class: 'tool-head' },
      h('code', { class: 'tool-name' }, clip(visible(name), 200)),
      chip(String(t.risk ?? 'unknown'), RISK_TONE[t.risk] || 'muted'),
      h('span', { class: `badge tone-${OUTCOME_TONE[key] || 'warn'} tool-outcome` }, OUTCOME_TEXT[key] || clip(visible(outcome), 80)),
      t.pin === 'changed' ? h('span', { class: 'badge tone-bad tool-pin', title: 'Its definition changed since it was pinned; see Pending.' }, 'definition changed') : null),
    t.title ? h('p', { class: 'tool-title' }, clip(visible(t.title), 200)) : null,
    t.description ? h('p', { class: 'tool-desc muted' }, clip(visible(t.description), 600)) : null,
    meta,
    b ? b.control(name) : null);
}
