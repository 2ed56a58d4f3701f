// Visual policy builder: one upstream's Airlock-JSON policy as an object,
// changed per tool (Allow, Deny + reason, Hide, Require approval, Custom)
// and by its default; the resulting JSON beside it, a server-made diff
// against the file in force, and Save (admins only; others see it read-only).
// The server validates exactly as `airlock check` does; nothing here decides
// whether a policy is valid.
import { h, clear, clip, visible, toast, announce } from './dom.js';
import { policy as apiPolicy, checkPolicy, savePolicy, ApiError } from './api.js';

export const STATES = [
  ['default', 'Default'],
  ['allow', 'Allow'],
  ['deny', 'Deny'],
  ['hide', 'Hide'],
  ['require_approval', 'Require approval'],
  ['custom', 'Custom'],
];

const SIMPLE_KEYS = ['action', 'reason', 'approval'];

/** The builder's reading of one tool's entry in the policy object. */
export function toolState(doc, name) {
  if (Array.isArray(doc.hide) && doc.hide.includes(name)) return { state: 'hide' };
  const rules = doc.rules && typeof doc.rules === 'object' ? doc.rules : {};
  const r = Object.prototype.hasOwnProperty.call(rules, name) ? rules[name] : null;
  if (!r || typeof r !== 'object') return { state: 'default' };
  const simple = Object.keys(r).every((k) => SIMPLE_KEYS.includes(k));
  const reason = typeof r.reason === 'string' ? r.reason : '';
  if (simple && r.action === 'allow' && !r.reason && !r.approval) return { state: 'allow' };
  if (simple && r.action === 'deny' && !r.approval) return { state: 'deny', reason };
  if (simple && r.action === 'require_approval') {
    const a = r.approval && typeof r.approval === 'object' ? r.approval : {};
    // Keys the builder has no control for (max_grant, escalation) are kept
    // as they are: editing a reason must never weaken the rule.
    const { timeout, on_timeout: onTimeout, approvers, groups, ...rest } = a;
    return {
      state: 'require_approval', reason,
      timeout: Number.isFinite(timeout) ? timeout : 300,
      on_timeout: onTimeout === 'allow' ? 'allow' : 'deny',
      approvers: Number.isInteger(approvers) ? approvers : 1,
      groups: Array.isArray(groups) ? groups.filter((g) => typeof g === 'string') : [],
      approvalRest: rest,
    };
  }
  return { state: 'custom', rule: r };
}

/** Writes one tool's state into the policy object (its exact-name rule and `hide`). */
export function setToolState(doc, name, st) {
  const hide = (Array.isArray(doc.hide) ? doc.hide : []).filter((x) => x !== name);
  if (!doc.rules || typeof doc.rules !== 'object') doc.rules = {};
  delete doc.rules[name];
  switch (st.state) {
    case 'hide': hide.push(name); break;
    case 'allow': doc.rules[name] = { action: 'allow' }; break;
    case 'deny': doc.rules[name] = st.reason ? { action: 'deny', reason: st.reason } : { action: 'deny' }; break;
    case 'require_approval': {
      const rule = { action: 'require_approval' };
      if (st.reason) rule.reason = st.reason;
      rule.approval = { ...(st.approvalRest || {}), timeout: st.timeout ?? 300, on_timeout: st.on_timeout || 'deny' };
      if (st.approvers > 1) rule.approval.approvers = st.approvers;
      if (st.groups && st.groups.length) rule.approval.groups = st.groups;
      doc.rules[name] = rule;
      break;
    }
    case 'custom': doc.rules[name] = st.rule; break;
    default: break;
  }
  if (hide.length) doc.hide = hide; else delete doc.hide;
}

export const policyText = (doc) => `${JSON.stringify(doc, null, 2)}\n`;

/**
 * One builder for one upstream. `host` is the panel element; `rows` maps
 * tool name → the element its state control goes into.
 */
export class Builder {
  constructor(upstream, host, { onSaved } = {}) {
    this.upstream = upstream;
    this.host = host;
    this.onSaved = onSaved || (() => {});
    this.doc = null;
    this.base = null;       // the GET /api/policy answer
    this.canEdit = false;
    this.checked = null;    // text of the last successful review
    this.controls = new Map();
  }

  async load() {
    clear(this.host);
    this.host.appendChild(h('p', { class: 'muted' }, 'Loading the policy…'));
    try {
      this.base = await apiPolicy(this.upstream);
    } catch (e) {
      clear(this.host);
      this.host.appendChild(h('p', { class: 'form-error' }, `Could not load the policy: ${clip(e?.message || 'error', 300)}`));
      return false;
    }
    this.canEdit = this.base.can_edit === true;
    this.checked = null;
    if (this.base.format === 'Airlock JSON' && typeof this.base.text === 'string') {
      try { this.doc = JSON.parse(this.base.text); } catch { this.doc = null; }
    } else if (this.base.text === null || this.base.text === undefined) {
      this.doc = null;
    } else {
      this.doc = null;
    }
    this.render();
    return true;
  }

  get text() { return this.doc ? policyText(this.doc) : ''; }
  get dirty() { return !!this.doc && this.base && this.text !== this.base.text; }

  /** The state control for one tool, for its row in the list. */
  control(name) {
    const wrap = h('div', { class: 'tool-state' });
    this.controls.set(name, wrap);
    this.fillControl(name);
    return wrap;
  }

  fillControl(name) {
    const wrap = this.controls.get(name);
    if (!wrap) return;
    clear(wrap);
    if (!this.doc) return;
    const st = toolState(this.doc, name);
    const id = `st-${this.upstream}-${name}`.replace(/[^A-Za-z0-9_-]/g, '_');
    const select = h('select', { id, class: 'state-select', disabled: !this.canEdit, dataset: { tool: name } },
      STATES.map(([v, label]) => h('option', { value: v, selected: v === st.state }, label)));
    wrap.appendChild(h('label', { for: id, class: 'state-label' }, 'Policy'));
    wrap.appendChild(select);
    const extra = h('div', { class: 'state-extra' });
    wrap.appendChild(extra);
    const update = (next) => { setToolState(this.doc, name, next); this.changed(); };
    select.addEventListener('change', () => {
      const v = select.value;
      const prev = toolState(this.doc, name);
      const next = { state: v, reason: prev.reason || '' };
      if (v === 'require_approval') {
        next.timeout = prev.timeout ?? 300;
        next.on_timeout = prev.on_timeout || 'deny';
        next.approvers = prev.approvers ?? 1;
        next.groups = prev.groups || [];
        next.approvalRest = prev.approvalRest || {};
      }
      if (v === 'custom') {
        next.rule = prev.rule || (this.doc.rules && this.doc.rules[name]) || { action: 'allow', rate_limit: { max: 10, window: 60 } };
      }
      update(next);
      this.fillControl(name);
      this.controls.get(name)?.querySelector('select')?.focus();
    });
    const field = (label, input) => h('label', { class: 'state-field' }, h('span', null, label), input);
    if (st.state === 'deny' || st.state === 'require_approval') {
      const reason = h('input', { type: 'text', class: 'state-reason', value: st.reason || '', placeholder: 'Reason (shown to the agent)', readonly: !this.canEdit, maxlength: '500' });
      reason.addEventListener('input', () => update({ ...toolState(this.doc, name), reason: reason.value }));
      extra.appendChild(field('Reason', reason));
    }
    if (st.state === 'require_approval') {
      const timeout = h('input', { type: 'number', class: 'state-timeout', min: '1', max: '604800', value: String(st.timeout), readonly: !this.canEdit });
      timeout.addEventListener('input', () => {
        const n = Number(timeout.value);
        if (Number.isInteger(n) && n > 0) update({ ...toolState(this.doc, name), timeout: n });
      });
      const onTimeout = h('select', { class: 'state-on-timeout', disabled: !this.canEdit },
        h('option', { value: 'deny', selected: st.on_timeout !== 'allow' }, 'deny'),
        h('option', { value: 'allow', selected: st.on_timeout === 'allow' }, 'allow'));
      onTimeout.addEventListener('change', () => update({ ...toolState(this.doc, name), on_timeout: onTimeout.value }));
      const approvers = h('input', { type: 'number', class: 'state-approvers', min: '1', max: '10', value: String(st.approvers), readonly: !this.canEdit });
      approvers.addEventListener('input', () => {
        const n = Number(approvers.value);
        if (Number.isInteger(n) && n >= 1 && n <= 10) update({ ...toolState(this.doc, name), approvers: n });
      });
      const groups = h('input', { type: 'text', class: 'state-groups', value: st.groups.join(', '), placeholder: 'any approver', readonly: !this.canEdit, maxlength: '500' });
      groups.addEventListener('input', () => {
        const list = groups.value.split(',').map((g) => g.trim()).filter(Boolean);
        update({ ...toolState(this.doc, name), groups: list });
      });
      extra.append(field('Timeout (s)', timeout), field('On timeout', onTimeout),
        field('Approvers needed', approvers), field('Groups (comma-separated)', groups));
    }
    if (st.state === 'custom') {
      const area = h('textarea', { class: 'state-custom mono', rows: '4', spellcheck: 'false', readonly: !this.canEdit });
      area.value = JSON.stringify(st.rule, null, 2);
      const err = h('p', { class: 'state-error', role: 'alert', hidden: true });
      area.addEventListener('input', () => {
        let rule;
        try { rule = JSON.parse(area.value); } catch (e) { err.textContent = `Not JSON yet: ${clip(e.message, 200)}`; err.hidden = false; return; }
        if (!rule || typeof rule !== 'object' || Array.isArray(rule)) { err.textContent = 'A rule is a JSON object.'; err.hidden = false; return; }
        err.hidden = true;
        setToolState(this.doc, name, { state: 'custom', rule });
        this.changed();
      });
      extra.append(field('Rule (conditions under "when", "rate_limit": {max, window}; see docs/policy.md)', area), err);
    }
  }

  changed() {
    this.checked = null;
    this.refs.json.textContent = this.text;
    this.refs.save.disabled = true;
    this.refs.status.textContent = this.dirty ? 'Changed — review the diff before saving.' : 'No changes.';
    clear(this.refs.diff);
    this.refs.diffBox.hidden = true;
  }

  render() {
    const host = clear(this.host);
    const b = this.base;
    host.appendChild(h('h3', null, `Policy of ${visible(this.upstream)}`));
    host.appendChild(h('p', { class: 'muted builder-file' },
      b.file ? `File: ${visible(b.file)} · ${b.format}` : 'No policy file: every tool is allowed. Start the gateway with a policy file to edit it here.'));
    if (!this.canEdit) {
      host.appendChild(h('p', { class: 'builder-readonly' },
        b.role === 'admin' ? 'Read-only: there is no policy file to save to.' : `Read-only: editing policies needs the admin role (you are ${b.role || 'a viewer'}).`));
    }
    if (!this.doc && typeof b.text === 'string') {
      host.appendChild(h('p', null, `This policy is written in ${b.format}; the builder edits Airlock JSON, so it is shown read-only.`));
      host.appendChild(h('pre', { class: 'policy-json policy-original' }, b.text));
      if (b.converted && this.canEdit) {
        const convert = h('button', { type: 'button', class: 'btn btn-primary', id: 'convert-policy' }, 'Convert to Airlock format');
        convert.addEventListener('click', () => {
          this.doc = JSON.parse(b.converted.text);
          this.render();
          for (const name of this.controls.keys()) this.fillControl(name);
          this.changed();
          if (Array.isArray(b.converted.dropped) && b.converted.dropped.length) {
            toast('Some limits have no Airlock equivalent; see the list above the JSON.', 'info', 8000);
          }
          announce('Converted. Review the diff, then save to replace the file.');
        });
        host.appendChild(convert);
      }
      return;
    }
    if (!this.doc) return;
    if (b.format !== 'Airlock JSON' && b.converted?.dropped?.length) {
      host.appendChild(h('div', { class: 'builder-dropped' },
        h('p', null, 'Converted from ', b.format, '. Not carried over:'),
        h('ul', null, b.converted.dropped.map((d) => h('li', null, visible(d))))));
    }
    const defaultSel = h('select', { id: `default-${this.upstream}`.replace(/[^A-Za-z0-9_-]/g, '_'), class: 'policy-default', disabled: !this.canEdit },
      ['deny', 'allow', 'require_approval'].map((v) => h('option', { value: v, selected: (this.doc.default || 'deny') === v }, v)));
    defaultSel.addEventListener('change', () => { this.doc.default = defaultSel.value; this.changed(); });
    host.appendChild(h('div', { class: 'field builder-default' },
      h('label', { for: defaultSel.id }, 'Default for tools no rule names'), defaultSel));
    const json = h('pre', { class: 'policy-json', 'aria-label': 'Resulting policy JSON', tabindex: '0' }, this.text);
    const review = h('button', { type: 'button', class: 'btn', id: 'policy-review' }, 'Review diff');
    const save = h('button', { type: 'button', class: 'btn btn-primary', id: 'policy-save', disabled: true }, 'Save policy');
    const reset = h('button', { type: 'button', class: 'btn btn-ghost' }, 'Discard changes');
    const status = h('p', { class: 'muted builder-status', role: 'status' }, 'No changes.');
    const error = h('p', { class: 'form-error', role: 'alert', hidden: true });
    const diff = h('pre', { class: 'policy-diff', 'aria-label': 'Diff against the file in force' });
    const warnings = h('ul', { class: 'builder-warnings' });
    const diffBox = h('section', { class: 'builder-diff', hidden: true }, h('h4', null, 'Diff against the file in force'), diff, warnings);
    this.refs = { json, save, status, error, diff, diffBox, warnings };
    const actions = this.canEdit ? h('div', { class: 'builder-actions' }, review, save, reset) : null;
    host.append(h('div', { class: 'builder-cols' },
      h('section', { class: 'builder-json' }, h('h4', null, 'Resulting JSON'), json),
      diffBox), actions, status, error);
    review.addEventListener('click', () => this.review());
    save.addEventListener('click', () => this.save());
    reset.addEventListener('click', () => {
      try { this.doc = JSON.parse(this.base.text); } catch { return; }
      this.render();
      for (const name of this.controls.keys()) this.fillControl(name);
    });
  }

  showError(e) {
    const d = e instanceof ApiError ? e.details : {};
    const where = Number.isFinite(d.line) ? ` (line ${d.line}, column ${d.column} of the JSON)` : '';
    this.refs.error.textContent = `${clip(e?.message || 'error', 1000)}${where}`;
    this.refs.error.hidden = false;
  }

  async review() {
    const text = this.text;
    this.refs.error.hidden = true;
    try {
      const res = await checkPolicy(this.upstream, text);
      clear(this.refs.diff);
      for (const line of String(res.diff || '').split('\n')) {
        if (!line) continue;
        const cls = line.startsWith('+++') || line.startsWith('---') ? 'd-file'
          : line.startsWith('@@') ? 'd-hunk' : line.startsWith('+') ? 'd-add' : line.startsWith('-') ? 'd-del' : 'd-same';
        this.refs.diff.appendChild(h('span', { class: cls }, `${line}\n`));
      }
      if (!res.diff) this.refs.diff.appendChild(h('span', { class: 'd-same' }, 'No difference from the file in force.\n'));
      clear(this.refs.warnings);
      for (const w of res.warnings || []) this.refs.warnings.appendChild(h('li', null, `Warning: ${visible(w)}`));
      this.refs.diffBox.hidden = false;
      this.checked = text;
      this.refs.save.disabled = res.unchanged === true;
      this.refs.status.textContent = res.unchanged ? 'No changes.' : `Valid: ${res.summary}. Save to put it in force.`;
    } catch (e) {
      this.refs.save.disabled = true;
      this.showError(e);
      this.refs.status.textContent = 'Not valid — nothing was saved.';
    }
  }

  async save() {
    const text = this.text;
    if (this.checked !== text) { await this.review(); return; }
    this.refs.save.disabled = true;
    this.refs.save.textContent = 'Saving…';
    try {
      const res = await savePolicy(this.upstream, text, this.base.sha256);
      toast(res.reloaded ? `Policy of ${this.upstream} saved and in force.` : `Policy of ${this.upstream} saved; the gateway has not reloaded it yet.`);
      announce('Policy saved.');
      await this.load();
      this.onSaved();
    } catch (e) {
      this.showError(e);
      this.refs.save.disabled = false;
    } finally {
      if (this.refs?.save) this.refs.save.textContent = 'Save policy';
    }
  }
}
