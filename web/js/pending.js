// Pending view: live cards, decisions, countdowns, keyboard.
import { h, $, fmtRemaining, fmtTime, clip, visible, announce, toast } from './dom.js';
import { decide as apiDecide, session } from './api.js';
import { jsonView, haystack } from './json-view.js';
import { alertNew, closeAlert } from './notify.js';

const NOTE_MS = 6000;            // how long the "what happened" note stays
const URGENT_MS = 30000;         // countdown turns red below this

const recs = new Map();          // id -> record (see makeRecord)
const notes = new Map();         // id -> { el, text, timer, final }
let selectedId = null;
let agentsConnected = null;
let haveSnapshot = false;
let liveState = 'connecting';
let skew = 0;                    // server clock - local clock, ms
let tickTimer = 0;
let seqId = 0;
let query = '';
let onCount = () => {};
let policyProblems = new Map();  // upstream -> 'refused' | 'unreadable'


const els = {};

const DECISION_LABEL = {
  approved: 'approved', denied: 'denied', timed_out: 'timed out', cancelled: 'cancelled',
};

export function initPending(opts) {
  onCount = opts.onCount || onCount;
  els.cards = $('#cards');
  els.empty = $('#empty');
  els.emptyText = $('#empty-text');
  els.emptySub = $('#empty-sub');
  els.search = $('#pending-search');
  els.filterInfo = $('#filter-info');
  els.stale = $('#stale-banner');
  els.policy = $('#policy-banner');
  els.search.addEventListener('input', () => { query = els.search.value.trim().toLowerCase(); applyFilter(); });
  els.search.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.stopPropagation();
      if (els.search.value) { els.search.value = ''; query = ''; applyFilter(); } else els.search.blur();
    } else if (e.key === 'Enter') {
      e.preventDefault();
      const first = visibleRecs()[0];
      if (first) { select(first.id, true); }
    }
  });
  renderEmpty();
}

/**
 * Shows each card's approval requirement: `map` is id → {needed, approvals,
 * you_approved, groups, escalate_to, escalated, may_decide} (GET /api/quorum).
 */
export function showQuorum(map) {
  for (const rec of recs.values()) {
    const q = map && typeof map === 'object' ? map[rec.id] : null;
    const { quorum, decideBlock } = rec.refs;
    if (!q || typeof q !== 'object') continue;
    const parts = [];
    const needed = Number(q.needed) || 1;
    const approvals = Array.isArray(q.approvals) ? q.approvals.map((a) => visible(str(a))) : [];
    if (needed > 1) {
      parts.push(`${approvals.length} of ${needed} approvals${approvals.length ? ` (${clip(approvals.join(', '), 300)})` : ''}`);
    }
    const groups = Array.isArray(q.groups) ? q.groups.map((g) => visible(str(g))) : [];
    if (groups.length) {
      let who = `Decided by group ${clip(groups.join(', '), 200)}`;
      if (q.escalate_to) who += q.escalated ? `; escalated to ${clip(visible(str(q.escalate_to)), 100)}` : `; escalates to ${clip(visible(str(q.escalate_to)), 100)}`;
      parts.push(who);
    }
    quorum.textContent = parts.join(' · ');
    quorum.hidden = parts.length === 0;
    rec.el.dataset.approvals = String(approvals.length);
    rec.el.dataset.needed = String(needed);
    // Counted by who signed in (provider account or token), not by name: a
    // vote given earlier, maybe under another display name, shows here too.
    if (q.you_approved === true && !rec.busy) {
      rec.refs.approveBtn.disabled = true;
      rec.refs.approveBtn.textContent = 'You approved';
    }
    // Someone outside the rule's groups gets no buttons (the API answers 403 anyway).
    const may = q.may_decide !== false;
    if (decideBlock && decideBlock.classList.contains('card-decide')) decideBlock.hidden = !may;
    let note = rec.el.querySelector('.card-not-yours');
    if (!may && !note) {
      note = h('p', { class: 'card-not-yours muted' }, 'You are not in a group that may decide this call.');
      decideBlock?.after(note);
    } else if (may && note) note.remove();
  }
}

/* ---------- incoming frames ---------- */

export function onFrame(f) {
  if (typeof f.at === 'string') {
    const t = Date.parse(f.at);
    if (Number.isFinite(t)) skew = t - Date.now();
  }
  switch (f.type) {
    case 'snapshot':
      if (Number.isFinite(f.agents_connected)) agentsConnected = f.agents_connected;
      policyProblems = new Map(Object.entries(f.policy_problems && typeof f.policy_problems === 'object' ? f.policy_problems : {}));
      renderPolicyProblems();
      applySnapshot(Array.isArray(f.pending) ? f.pending : []);
      break;
    case 'pending.created':
      if (f.pending && typeof f.pending === 'object') addItem(f.pending, true);
      break;
    case 'pending.resolved':
      if (f.id !== undefined && f.id !== null) {
        resolve(String(f.id), {
          kind: 'event',
          decision: f.decision, outcome: f.outcome, decider: f.decider,
          channel: f.channel, comment: f.comment,
        });
      }
      break;
    case 'agents':
      if (Number.isFinite(f.agents_connected)) { agentsConnected = f.agents_connected; renderEmpty(); }
      break;
    case 'policy.reloaded':
      toast(typeof f.upstream === 'string' ? `Policy reloaded for ${clip(visible(f.upstream), 80)}.` : 'Policy reloaded.');
      if (typeof f.upstream === 'string') { policyProblems.delete(f.upstream); renderPolicyProblems(); }
      break;
    case 'policy.reload_failed': {
      // Stays up longer: an approver should see that an edit did not take.
      const where = typeof f.upstream === 'string' ? ` for ${clip(visible(f.upstream), 80)}` : '';
      const why = typeof f.error === 'string' ? ` ${clip(visible(f.error), 300)}` : '';
      toast(`Policy edit refused${where}; the previous policy is still in force.${why}`, 'error', 20000);
      if (typeof f.upstream === 'string') { policyProblems.set(f.upstream, 'refused'); renderPolicyProblems(); }
      break;
    }
    default: break;
  }
}

/** A lasting banner while a policy file is not the policy in force (seen on connect, too). */
function renderPolicyProblems() {
  const parts = [...policyProblems].map(([up, why]) =>
    `${clip(visible(up), 80)} (${why === 'unreadable' ? 'file cannot be read' : 'last edit refused'})`);
  els.policy.hidden = parts.length === 0;
  els.policy.textContent = parts.length
    ? `Policy not in force for ${parts.join(', ')}: the previous policy is still deciding calls. See the gateway log.`
    : '';
}

export function setLiveState(s) {
  liveState = s;
  const stale = s !== 'live' && haveSnapshot;
  els.cards.classList.toggle('stale', stale);
  els.stale.hidden = !stale;
  els.stale.textContent = s === 'offline'
    ? 'Offline — this list may be out of date. Still trying to reconnect.'
    : 'Connection lost — this list may be out of date. Reconnecting…';
  renderEmpty();
}

/** Forget everything (logout). */
export function resetPending() {
  for (const rec of recs.values()) rec.el.remove();
  recs.clear();
  for (const n of notes.values()) { clearTimeout(n.timer); n.el.remove(); }
  notes.clear();
  selectedId = null;
  haveSnapshot = false;
  policyProblems = new Map();
  renderPolicyProblems();
  agentsConnected = null;
  clearInterval(tickTimer);
  tickTimer = 0;
  updateCount();
  renderEmpty();
}

export function pendingCount() { return recs.size; }

function applySnapshot(list) {
  const incoming = new Map();
  for (const it of list) {
    if (it && typeof it === 'object' && it.id !== undefined && it.id !== null) incoming.set(String(it.id), it);
  }
  // Anything we show that the server no longer holds was decided while we were away.
  for (const id of [...recs.keys()]) {
    if (!incoming.has(id)) resolve(id, { kind: 'vanished' });
  }
  for (const it of incoming.values()) addItem(it, false);
  // Keep the DOM in created_at order (oldest first).
  const sorted = [...recs.values()].sort(byCreated);
  const current = [...els.cards.querySelectorAll(':scope > .card')];
  if (sorted.some((r, i) => current[i] !== r.el)) {
    for (const r of sorted) els.cards.appendChild(r.el);
  }
  haveSnapshot = true;
  setLiveState(liveState);
  afterChange();
}

function byCreated(a, b) { return (a.created - b.created) || (a.seq - b.seq); }

/* ---------- cards ---------- */

function str(v) { return v === null || v === undefined ? '' : String(v); }

function addItem(item, isNew) {
  const id = String(item.id);
  if (recs.has(id)) { recs.get(id).item = item; return; }
  // A resolution may have raced ahead of the creation event; don't resurrect
  // it. (A snapshot is authoritative and always wins.)
  if (isNew && notes.has(id)) return;
  if (!isNew && notes.has(id)) { const n = notes.get(id); clearTimeout(n.timer); n.el.remove(); notes.delete(id); }
  const rec = makeRecord(id, item);
  recs.set(id, rec);
  // Insert in created_at order; new calls almost always go last.
  let before = null;
  for (const other of recs.values()) {
    if (other !== rec && other.el.isConnected && byCreated(other, rec) > 0 && (!before || byCreated(other, before) < 0)) before = other;
  }
  els.cards.insertBefore(rec.el, before ? before.el : null);
  if (isNew) {
    alertNew({ id, tool: item.tool, agent: item.agent, upstream: item.upstream });
    announce(`New call waiting: ${clip(str(item.tool), 80)}${item.agent ? ` from ${clip(str(item.agent), 80)}` : ''}.`);
    afterChange();
  }
}

function makeRecord(id, item) {
  const n = ++seqId;
  const created = Date.parse(item.created_at);
  const expires = Date.parse(item.expires_at);
  const tool = visible(str(item.tool)) || '(unnamed tool)';
  const headId = `card-${n}-title`;

  const timerText = h('span', { class: 'timer-text' });
  const timerFill = h('span', { class: 'timer-fill' });
  const timer = h('div', { class: 'card-timer' }, timerText, h('span', { class: 'timer-bar', 'aria-hidden': 'true' }, timerFill));

  const meta = h('dl', { class: 'card-meta' });
  const addMeta = (label, value, cls) => {
    if (value === '' || value === null || value === undefined) return;
    meta.appendChild(h('div', { class: cls || null }, h('dt', null, label), h('dd', null, value)));
  };
  addMeta('Agent', clip(visible(str(item.agent)), 200));
  addMeta('Upstream', clip(visible(str(item.upstream)), 200));
  addMeta('Rule', clip(visible(str(item.rule)), 200));
  addMeta('Held since', Number.isFinite(created) ? fmtTime(item.created_at) : '');
  addMeta('Session', clip(visible(str(item.session)), 40), 'meta-minor');
  addMeta('Call ID', clip(visible(id), 60), 'meta-minor');

  // "1 of 2 approvals", who may decide (filled by showQuorum from /api/quorum).
  const quorum = h('p', { class: 'card-quorum', hidden: true });

  const reason = str(item.reason)
    ? h('p', { class: 'card-reason' }, h('span', { class: 'reason-label' }, 'Reason: '), clip(visible(str(item.reason)), 2000))
    : null;

  // `approval.via`: the agent's own user is asked in their client (MCP elicitation).
  const via = Array.isArray(item.via) ? item.via.map(str) : [];
  const userOnly = via.includes('agent_user') && !via.includes('approvers');
  const asksUser = via.includes('agent_user')
    ? h('p', { class: 'card-asks-user muted' }, userOnly
      ? 'Only the agent\'s own user may approve this call (asked in their client). You can deny it.'
      : 'The agent\'s own user is asked too, in their client: the first decision wins.')
    : null;

  const args = item.arguments === undefined ? null : item.arguments;
  const argsBody = h('div', { class: 'card-args-body' });
  argsBody.appendChild(jsonView(args));
  const copyBtn = navigator.clipboard && window.isSecureContext
    ? h('button', { type: 'button', class: 'btn btn-small btn-ghost' }, 'Copy')
    : null;
  copyBtn?.addEventListener('click', async () => {
    try { await navigator.clipboard.writeText(JSON.stringify(args, null, 2)); toast('Arguments copied.'); } catch { toast('Could not copy.', 'error'); }
  });
  const argsSec = h('section', { class: 'card-args', 'aria-label': 'Arguments' },
    h('div', { class: 'card-args-head' }, h('h3', null, 'Arguments'), copyBtn),
    argsBody);

  const commentId = `card-${n}-comment`;
  const comment = h('textarea', { id: commentId, class: 'card-comment', rows: '1', maxlength: '2000', placeholder: 'Optional — the agent sees it', spellcheck: 'true' });
  const approveBtn = h('button', { type: 'button', class: 'btn btn-approve', 'aria-describedby': headId, hidden: userOnly }, 'Approve');
  // "Approve for a while": a grant lets later matching calls pass (docs/approvals.md).
  const grantId = `card-${n}-grant`;
  const grantFor = h('select', { id: grantId, class: 'grant-for' },
    h('option', { value: '' }, 'this call only'),
    h('option', { value: '5' }, 'and later calls for 5 minutes'),
    h('option', { value: '15' }, 'and later calls for 15 minutes'),
    h('option', { value: '60' }, 'and later calls for 1 hour'),
    h('option', { value: '240' }, 'and later calls for 4 hours'));
  const grantScope = h('select', { class: 'grant-scope', 'aria-label': 'Whom the grant covers' },
    h('option', { value: 'agent' }, 'of this agent'),
    h('option', { value: 'session' }, 'of this session only'));
  const grantExact = h('input', { type: 'checkbox', class: 'grant-exact' });
  const grantOpts = h('span', { class: 'grant-opts', hidden: true }, grantScope,
    h('label', { class: 'toggle' }, grantExact, h('span', null, 'with these exact arguments')));
  grantFor.addEventListener('change', () => { grantOpts.hidden = !grantFor.value; });
  const grantRow = h('div', { class: 'card-grant' },
    h('label', { for: grantId, class: 'comment-label' }, 'Approve'), grantFor, grantOpts);
  const denyBtn = h('button', { type: 'button', class: 'btn btn-deny', 'aria-describedby': headId }, 'Deny');
  const actions = h('div', { class: 'card-actions' }, approveBtn, denyBtn);
  const confirmYes = h('button', { type: 'button', class: 'btn btn-deny btn-confirm' }, 'Yes, deny');
  const confirmNo = h('button', { type: 'button', class: 'btn' }, 'Cancel');
  const confirm = h('div', { class: 'card-confirm', role: 'group', 'aria-label': 'Confirm deny', hidden: true },
    h('span', { class: 'confirm-q' }, 'Deny this call?'), confirmYes, confirmNo);
  const error = h('p', { class: 'card-error', role: 'alert', hidden: true });
  // A viewer watches held calls but cannot decide them (the API answers 403).
  const canDecide = session.can('approver');
  const decideBlock = canDecide
    ? h('div', { class: 'card-decide' },
      h('label', { for: commentId, class: 'comment-label' }, 'Comment'),
      comment,
      item.rule === 'on_tool_change' || userOnly ? null : grantRow,
      actions,
      confirm,
      error)
    : h('p', { class: 'card-viewer muted' }, 'Your role is viewer: you can watch this call but not decide it.');

  const el = h('li', { class: 'card', tabindex: '-1', 'aria-labelledby': headId, dataset: { id } },
    h('article', null,
      h('header', { class: 'card-head' },
        h('h2', { class: 'card-tool', id: headId }, h('code', null, clip(tool, 300))),
        timer),
      meta,
      quorum,
      reason,
      asksUser,
      argsSec,
      decideBlock));

  const rec = {
    id, item, el, seq: n,
    created: Number.isFinite(created) ? created : Date.now(),
    expires: Number.isFinite(expires) ? expires : NaN,
    hay: [item.tool, item.agent, item.upstream, item.rule, item.reason, item.session, id].map((x) => clip(str(x), 1000)).join(' ').toLowerCase() + haystack(args),
    busy: false,
    refs: { timerText, timerFill, timer, comment, approveBtn, denyBtn, actions, confirm, confirmYes, confirmNo, error, grantFor, grantScope, grantExact, quorum, decideBlock },
  };

  approveBtn.addEventListener('click', () => { select(id, false); decide(rec, 'approve'); });
  denyBtn.addEventListener('click', () => { select(id, false); openConfirm(rec); });
  confirmYes.addEventListener('click', () => decide(rec, 'deny'));
  confirmNo.addEventListener('click', () => closeConfirm(rec, true));
  confirm.addEventListener('keydown', (e) => { if (e.key === 'Escape') { e.stopPropagation(); closeConfirm(rec, true); } });
  comment.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { e.stopPropagation(); comment.blur(); el.focus(); }
  });
  el.addEventListener('focusin', () => select(id, false));
  el.addEventListener('click', (e) => { if (e.target === el || e.target.closest('.card-head, .card-meta')) select(id, false); });

  tickOne(rec, Date.now() + skew);
  return rec;
}

function openConfirm(rec) {
  if (rec.busy) return;
  rec.refs.actions.hidden = true;
  rec.refs.confirm.hidden = false;
  rec.refs.confirmYes.focus();
}

function closeConfirm(rec, refocus) {
  rec.refs.confirm.hidden = true;
  rec.refs.actions.hidden = false;
  if (refocus) rec.refs.denyBtn.focus();
}

function setBusy(rec, busy, verb) {
  rec.busy = busy;
  const { approveBtn, denyBtn, confirmYes, confirmNo, comment } = rec.refs;
  for (const b of [approveBtn, denyBtn, confirmYes, confirmNo]) b.disabled = busy;
  comment.readOnly = busy;
  rec.el.setAttribute('aria-busy', String(busy));
  rec.el.classList.toggle('busy', busy);
  approveBtn.textContent = busy && verb === 'approve' ? 'Approving…' : 'Approve';
  confirmYes.textContent = busy && verb === 'deny' ? 'Denying…' : 'Yes, deny';
}

async function decide(rec, verb) {
  if (rec.busy || !recs.has(rec.id)) return;
  const comment = rec.refs.comment.value.trim();
  rec.refs.error.hidden = true;
  setBusy(rec, true, verb);
  try {
    const { grantFor, grantScope, grantExact } = rec.refs;
    const grant = grantFor.value && rec.item.rule !== 'on_tool_change'
      ? { minutes: Number(grantFor.value), scope: grantScope.value, exact_arguments: grantExact.checked }
      : null;
    const res = await apiDecide(rec.id, verb, comment, grant);
    if (res && res.decision === 'vote') {
      // Counted toward a rule that needs several approvers: the call stays held.
      setBusy(rec, false);
      rec.refs.approveBtn.disabled = true;
      rec.refs.approveBtn.textContent = 'You approved';
      const n = Array.isArray(res.approvals) ? res.approvals.length : 1;
      announce(`Your approval counts: ${n} of ${res.needed} approvals.`);
      toast(`Your approval counts: ${n} of ${res.needed}. It needs another approver.`);
      return;
    }
    resolve(rec.id, {
      kind: 'mine',
      decision: res && typeof res.decision === 'string' ? res.decision : (verb === 'approve' ? 'approved' : 'denied'),
      decider: res?.decider ?? session.approver, channel: res?.channel ?? 'dashboard', comment,
    });
  } catch (e) {
    if (e && (e.code === 'same_approver' || e.code === 'tool_changed' || e.code === 'forbidden_group' || e.code === 'grant_refused')) {
      setBusy(rec, false);
      if (verb === 'deny') closeConfirm(rec, false);
      rec.refs.error.textContent = clip(e.message || 'refused', 400);
      rec.refs.error.hidden = false;
    } else if (e && e.status === 409) {
      resolve(rec.id, { kind: 'conflict', by: e.details?.decided_by, decision: e.details?.decision, message: e.message });
    } else if (e && e.status === 404) {
      resolve(rec.id, { kind: 'gone' });
    } else if (e && e.status === 401) {
      // The app switches to the login view.
    } else {
      if (!recs.has(rec.id)) return;
      setBusy(rec, false);
      if (verb === 'deny') closeConfirm(rec, false);
      rec.refs.error.textContent = e instanceof TypeError
        ? 'Could not reach the gateway. Your decision was not sent — try again.'
        : `Decision failed: ${clip(e?.message || 'unknown error', 300)}`;
      rec.refs.error.hidden = false;
    }
  }
}

/* ---------- resolution notes ---------- */

function describe(info) {
  const who = (x) => clip(visible(str(x)), 80);
  const withComment = (s) => (info.comment ? `${s} — “${clip(visible(str(info.comment)), 300)}”` : s);
  const via = info.channel ? ` via ${who(info.channel)}` : '';
  switch (info.kind) {
    case 'conflict': {
      const label = DECISION_LABEL[info.decision] || (info.decision ? who(info.decision) : '');
      if (info.by) return { cls: 'conflict', text: `Already decided by ${who(info.by)}${label ? ` (${label})` : ''}.` };
      return { cls: 'conflict', text: info.message ? `Already decided: ${clip(visible(info.message), 200)}` : 'Already decided.' };
    }
    case 'gone': return { cls: 'gone', text: 'No longer pending.' };
    case 'vanished': return { cls: 'gone', text: 'No longer pending — it ended while this page was disconnected.' };
    default: break;
  }
  const mine = info.kind === 'mine';
  switch (info.decision) {
    case 'approved':
      return { cls: 'approved', text: withComment(mine ? 'You approved it.' : `Approved by ${info.decider ? who(info.decider) : 'someone'}${via}.`) };
    case 'denied':
      return { cls: 'denied', text: withComment(mine ? 'You denied it.' : `Denied by ${info.decider ? who(info.decider) : 'someone'}${via}.`) };
    case 'timed_out':
      return { cls: 'timeout', text: `Timed out — the call was ${info.outcome === 'allowed' ? 'allowed' : 'refused'}.` };
    case 'cancelled':
      return { cls: 'gone', text: 'Cancelled — the agent withdrew the call.' };
    default:
      return { cls: 'gone', text: `Resolved${info.decision ? ` (${who(info.decision)})` : ''}.` };
  }
}

function resolve(id, info) {
  const rec = recs.get(id);
  const existing = notes.get(id);
  if (!rec) {
    // Already gone (usually the websocket event beat our own HTTP answer).
    // Our answer is more precise: "You approved it", or who won the race.
    if (existing && (info.kind === 'conflict' || info.kind === 'mine') && !existing.final) {
      const d = describe(info);
      existing.final = true;
      existing.text.textContent = d.text;
      existing.el.className = `note note-${d.cls}`;
      restartNoteTimer(id);
    }
    return;
  }
  const d = describe(info);
  const tool = clip(visible(str(rec.item.tool)), 120) || '(unnamed tool)';
  const text = h('span', { class: 'note-text' }, d.text);
  const note = h('li', { class: `note note-${d.cls}`, dataset: { noteId: id } },
    h('span', { class: 'note-icon', 'aria-hidden': 'true' }),
    h('code', { class: 'note-tool' }, tool), ' ', text);
  const wasSelected = selectedId === id;
  const next = wasSelected ? neighbour(id) : null;
  const hadFocus = rec.el.contains(document.activeElement);
  rec.el.replaceWith(note);
  recs.delete(id);
  closeAlert(id);
  notes.set(id, { el: note, text, timer: 0, final: info.kind === 'conflict' || info.kind === 'mine' });
  restartNoteTimer(id);
  announce(`${tool}: ${d.text}`);
  if (wasSelected) {
    selectedId = null;
    if (next) select(next.id, hadFocus);
    else if (hadFocus) document.getElementById('main')?.focus({ preventScroll: true });
  }
  afterChange();
}

function restartNoteTimer(id) {
  const n = notes.get(id);
  if (!n) return;
  clearTimeout(n.timer);
  n.timer = setTimeout(() => {
    n.el.classList.add('note-leaving');
    setTimeout(() => { n.el.remove(); notes.delete(id); }, 300);
  }, NOTE_MS);
}

/* ---------- selection, search, keyboard ---------- */

function visibleRecs() {
  return [...els.cards.querySelectorAll(':scope > .card:not([hidden])')].map((el) => recs.get(el.dataset.id)).filter(Boolean);
}

function neighbour(id) {
  const list = visibleRecs();
  const i = list.findIndex((r) => r.id === id);
  if (i < 0) return list[0] || null;
  return list[i + 1] || list[i - 1] || null;
}

function select(id, focus) {
  if (selectedId !== id) {
    const prev = recs.get(selectedId);
    if (prev) { prev.el.classList.remove('selected'); prev.el.removeAttribute('aria-current'); }
    selectedId = id;
  }
  const rec = recs.get(id);
  if (!rec) return;
  rec.el.classList.add('selected');
  rec.el.setAttribute('aria-current', 'true');
  if (focus) {
    rec.el.focus({ preventScroll: true });
    rec.el.scrollIntoView({ block: 'nearest', behavior: matchMedia('(prefers-reduced-motion: reduce)').matches ? 'auto' : 'smooth' });
  }
}

function ensureSelection() {
  const list = visibleRecs();
  if (selectedId && list.some((r) => r.id === selectedId)) return;
  if (list.length) select(list[0].id, false);
  else selectedId = null;
}

function applyFilter() {
  let shown = 0;
  for (const rec of recs.values()) {
    const match = !query || rec.hay.includes(query);
    rec.el.hidden = !match;
    if (match) shown++;
  }
  if (query && recs.size) {
    els.filterInfo.textContent = `${shown} of ${recs.size} calls match “${clip(query, 100)}”.`;
    els.filterInfo.hidden = false;
  } else els.filterInfo.hidden = true;
  ensureSelection();
}

export function focusSearch() {
  els.search.focus();
  els.search.select();
}

function isTyping(t) {
  return t && (t.isContentEditable || t.closest?.('input, textarea, select'));
}

/** Keyboard shortcuts, active only while the pending view is shown. */
export function pendingKeydown(e) {
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
  if (isTyping(e.target)) return;
  const list = visibleRecs();
  const i = list.findIndex((r) => r.id === selectedId);
  const cur = i >= 0 ? list[i] : null;
  switch (e.key) {
    case 'j':
      if (list.length) select(list[Math.min(list.length - 1, i + 1)].id, true);
      break;
    case 'k':
      if (list.length) select(list[Math.max(0, i - 1)].id, true);
      break;
    case 'a':
      if (cur && session.can('approver')) decide(cur, 'approve');
      break;
    case 'd':
      if (cur && session.can('approver')) openConfirm(cur);
      break;
    case 'c':
      if (cur && session.can('approver')) cur.refs.comment.focus();
      break;
    case '/':
      focusSearch();
      break;
    case 'Escape':
      if (cur && !cur.refs.confirm.hidden) closeConfirm(cur, false);
      return;
    default:
      return;
  }
  e.preventDefault();
}

/* ---------- countdown, counts, empty state ---------- */

function tickOne(rec, now) {
  const { timerText, timerFill, timer, approveBtn, denyBtn } = rec.refs;
  if (!Number.isFinite(rec.expires)) { timerText.textContent = 'no deadline'; return; }
  const left = rec.expires - now;
  const total = Math.max(1, rec.expires - rec.created);
  const frac = Math.max(0, Math.min(1, left / total));
  timerFill.style.transform = `scaleX(${frac})`;
  timer.classList.toggle('urgent', left < URGENT_MS);
  if (left > 0) {
    timerText.textContent = `expires in ${fmtRemaining(left)}`;
  } else {
    timerText.textContent = 'expired — timing out…';
    if (!rec.busy) { approveBtn.disabled = true; denyBtn.disabled = true; }
  }
}

function tick() {
  const now = Date.now() + skew;
  for (const rec of recs.values()) tickOne(rec, now);
}

function afterChange() {
  if (recs.size && !tickTimer) tickTimer = setInterval(tick, 1000);
  if (!recs.size && tickTimer) { clearInterval(tickTimer); tickTimer = 0; }
  applyFilter();
  updateCount();
  renderEmpty();
}

function updateCount() { onCount(recs.size); }

function renderEmpty() {
  if (!els.empty) return;
  const none = recs.size === 0;
  els.empty.hidden = !none;
  if (!none) return;
  if (!haveSnapshot) {
    els.emptyText.textContent = liveState === 'offline' ? 'Cannot reach the gateway.' : 'Connecting to the gateway…';
    els.emptySub.textContent = liveState === 'offline' ? 'Still trying — held calls will appear here once connected.' : '';
    return;
  }
  els.emptyText.textContent = agentsConnected === null
    ? 'No calls waiting.'
    : `No calls waiting. Agents connected: ${agentsConnected}`;
  els.emptySub.textContent = 'Held calls appear here the moment an agent makes them.';
}
