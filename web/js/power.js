// Pinned tool definitions that changed (with their diff and an Accept button
// for admins) and standing approvals (grants, with Revoke) on the Pending view.
// Everything from the server is rendered as text.
import { h, $, clear, clip, visible, fmtDateTime, toast, announce } from './dom.js';
import { request, session } from './api.js';
import { showQuorum } from './pending.js';

const els = {};
let loading = 0;
let expiryTimer = 0;

const str = (v) => (v === null || v === undefined ? '' : String(v));
const seg = (s) => encodeURIComponent(str(s));

export function initPower() {
  els.pins = $('#pins-notice');
  els.pinList = $('#pin-list');
  els.grants = $('#grants-section');
  els.grantList = $('#grant-list');
}

/** Reloads both lists (on connect and after every related event). */
export async function refreshPower() {
  const mine = ++loading;
  try {
    const [pins, grants] = await Promise.all([
      request('GET', '/api/pins'),
      request('GET', '/api/grants'),
    ]);
    if (mine !== loading) return;
    renderPins(Array.isArray(pins?.pins) ? pins.pins.filter((p) => p && p.status === 'changed') : []);
    renderGrants(Array.isArray(grants?.grants) ? grants.grants : []);
  } catch {
    // A failed refresh keeps what is shown; the next event tries again.
  }
}

let quorumLoading = 0;
/** Reloads who must approve the open holds, and shows it on their cards. */
export async function refreshQuorum() {
  const mine = ++quorumLoading;
  try {
    const body = await request('GET', '/api/quorum');
    if (mine === quorumLoading) showQuorum(body?.quorum || {});
  } catch { /* the next event tries again */ }
}

export function powerFrame(f) {
  switch (f.type) {
    case 'snapshot':
      refreshPower();
      refreshQuorum();
      break;
    case 'pending.created':
      refreshQuorum();
      break;
    case 'pending.approval':
      refreshQuorum();
      if (Number.isFinite(f.needed)) {
        toast(`${clip(visible(str(f.tool)), 80)}: ${Array.isArray(f.approvals) ? f.approvals.length : '?'} of ${f.needed} approvals.`);
      }
      break;
    case 'pending.escalated':
      refreshQuorum();
      toast(`${clip(visible(str(f.tool)), 80)} waited too long: escalated to ${clip(visible(str(f.to)), 80)}.`, 'error', 10000);
      break;
    case 'tool.changed':
      toast(`The definition of ${clip(visible(str(f.tool)), 80)} on ${clip(visible(str(f.upstream)), 80)} changed.`, 'error', 10000);
      refreshPower();
      break;
    case 'tool.accepted': case 'tool.pinned': case 'grant.created': case 'grant.ended':
      refreshPower();
      break;
    case 'power.changed': // shared by replicas: a change made on any of them
      if (f.what !== 'votes') refreshPower();
      if (f.what === 'votes' || f.what === 'everything') refreshQuorum();
      break;
    default: break;
  }
}

export function resetPower() {
  loading++;
  clearTimeout(expiryTimer);
  if (els.pinList) clear(els.pinList);
  if (els.grantList) clear(els.grantList);
  if (els.pins) els.pins.hidden = true;
  if (els.grants) els.grants.hidden = true;
}

function renderPins(changed) {
  clear(els.pinList);
  els.pins.hidden = changed.length === 0;
  for (const pin of changed) {
    const name = `${clip(visible(str(pin.upstream)), 80)} / ${clip(visible(str(pin.tool)), 200)}`;
    const error = h('p', { class: 'card-error', role: 'alert', hidden: true });
    let action;
    if (session.can('admin')) {
      action = h('button', { type: 'button', class: 'btn btn-approve' }, 'Accept new definition');
      action.addEventListener('click', async () => {
        action.disabled = true;
        error.hidden = true;
        try {
          await request('POST', `/api/tools/${seg(pin.upstream)}/${seg(pin.tool)}/accept`);
          announce(`Accepted the new definition of ${pin.tool}.`);
          refreshPower();
        } catch (e) {
          action.disabled = false;
          error.textContent = `Could not accept: ${clip(e?.message || 'unknown error', 300)}`;
          error.hidden = false;
        }
      });
    } else {
      action = h('p', { class: 'muted' }, 'An admin must accept the new definition.');
    }
    els.pinList.appendChild(h('li', { class: 'pin', dataset: { tool: str(pin.tool), upstream: str(pin.upstream) } },
      h('h3', null, h('code', null, name)),
      h('p', { class: 'muted' }, `Changed ${fmtDateTime(str(pin.changed?.seen_at))}; pinned ${fmtDateTime(str(pin.pinned_at))}.`),
      h('pre', { class: 'pin-diff', 'aria-label': 'Changes to the definition' }, clip(str(pin.diff), 16000)),
      action, error));
  }
}

function renderGrants(grants) {
  clear(els.grantList);
  clearTimeout(expiryTimer);
  els.grants.hidden = grants.length === 0;
  let soonest = Infinity;
  for (const g of grants) {
    const who = g.scope === 'session'
      ? `session ${clip(visible(str(g.session)), 40)} of ${clip(visible(str(g.agent)), 120)}`
      : `agent ${clip(visible(str(g.agent)), 120)}`;
    const args = g.arguments === null || g.arguments === undefined
      ? 'any arguments' : `only arguments ${clip(JSON.stringify(g.arguments), 500)}`;
    const expires = Date.parse(g.expires_at);
    if (Number.isFinite(expires)) soonest = Math.min(soonest, expires);
    const error = h('p', { class: 'card-error', role: 'alert', hidden: true });
    let revoke = null;
    if (session.can('approver')) {
      revoke = h('button', { type: 'button', class: 'btn btn-deny btn-small' }, 'Revoke');
      revoke.addEventListener('click', async () => {
        revoke.disabled = true;
        try {
          await request('DELETE', `/api/grants/${seg(g.id)}`);
          announce('Grant revoked.');
          refreshPower();
        } catch (e) {
          revoke.disabled = false;
          error.textContent = `Could not revoke: ${clip(e?.message || 'unknown error', 300)}`;
          error.hidden = false;
        }
      });
    }
    els.grantList.appendChild(h('li', { class: 'grant', dataset: { id: str(g.id) } },
      h('p', null, h('code', null, `${clip(visible(str(g.upstream)), 80)} / ${clip(visible(str(g.tool)), 200)}`),
        ` for ${who}, ${args}`),
      h('p', { class: 'muted' }, `Granted by ${clip(visible(str(g.granted_by)), 120)}; until ${fmtDateTime(str(g.expires_at))}.`),
      revoke, error));
  }
  // Drop grants from the list when they expire (the server ends them too).
  if (Number.isFinite(soonest)) {
    expiryTimer = setTimeout(refreshPower, Math.max(500, soonest - Date.now() + 500));
  }
}
