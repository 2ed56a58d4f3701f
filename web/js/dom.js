// Tiny DOM helpers. Every piece of text goes in through createTextNode /
// textContent; nothing in this app ever assigns HTML from a string.

/**
 * h('div', {class: 'x', dataset: {id}}, 'text', child, [more])
 * Strings and numbers become text nodes; null/undefined/false are skipped.
 * Attributes are set with setAttribute (never `on*` handlers, never style).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on') || k === 'style' || k === 'innerHTML') {
        throw new Error(`h(): refusing attribute ${k}`);
      } else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

const nf = new Intl.NumberFormat();
export const fmtNumber = (n) => nf.format(n);

const dtf = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: '2-digit',
  hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const shortDtf = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const tf = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

export function parseTime(s) {
  if (typeof s !== 'string') return NaN;
  return Date.parse(s);
}

export function fmtDateTime(s) {
  const t = parseTime(s);
  return Number.isFinite(t) ? dtf.format(t) : String(s ?? '');
}

/** Compact: time only for today, no year for this year. */
export function fmtShortDateTime(s) {
  const t = parseTime(s);
  if (!Number.isFinite(t)) return String(s ?? '');
  const d = new Date(t);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return tf.format(t);
  if (d.getFullYear() === now.getFullYear()) return shortDtf.format(t);
  return dtf.format(t);
}

export function fmtTime(s) {
  const t = parseTime(s);
  return Number.isFinite(t) ? tf.format(t) : String(s ?? '');
}

/** "4:05", "1:02:03", "12 s" */
export function fmtRemaining(ms) {
  if (!Number.isFinite(ms)) return '–';
  const total = Math.max(0, Math.ceil(ms / 1000));
  const hrs = Math.floor(total / 3600);
  const min = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  if (hrs > 0) return `${hrs}:${String(min).padStart(2, '0')}:${String(sec).padStart(2, '0')}`;
  if (min > 0) return `${min}:${String(sec).padStart(2, '0')}`;
  return `${sec} s`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return '';
  ms = Number(ms);
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s % 60)} s`;
}

// Invisible and direction-changing characters would let an argument disguise
// itself ("exe.txt" that is really "txt.exe"); show them as \u escapes.
const SNEAKY = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]/g;
export function visible(s) {
  return String(s ?? '').replace(SNEAKY, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Cut a string for one-line display, counting UTF-16 units (cheap, O(limit)). */
export function clip(s, limit) {
  s = String(s ?? '');
  return s.length > limit ? `${s.slice(0, limit)}…` : s;
}

let announceTimer = 0;
/** Screen-reader announcement through the assertive live region. */
export function announce(text) {
  const el = document.getElementById('announcer');
  if (!el) return;
  el.textContent = '';
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => { el.textContent = text; }, 30);
}

/** Small transient message in the corner. */
export function toast(text, kind = 'info', ms = 5000) {
  const host = document.getElementById('toasts');
  if (!host) return;
  const el = h('div', { class: `toast toast-${kind}` }, text);
  host.appendChild(el);
  while (host.childElementCount > 4) host.firstElementChild.remove();
  setTimeout(() => el.remove(), ms);
}
