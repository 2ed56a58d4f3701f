// Collapsible, lazy JSON viewer. Safe for hostile input:
//  - all text goes in as text nodes;
//  - long strings are folded (only a prefix is ever put in the DOM until the
//    user asks for more, in chunks);
//  - big objects/arrays render their first children and a "show more" button;
//  - nested containers below OPEN_DEPTH render only when opened.
import { h, fmtNumber, visible } from './dom.js';

const STR_FOLD = 240;        // characters shown of a long string
const STR_CHUNK = 20000;     // characters added per "show more"
const KEY_FOLD = 120;        // characters shown of a long key
const CHILD_PAGE = 100;      // children rendered per page of a big container
const OPEN_DEPTH = 2;        // containers shallower than this start open

const hasRaw = typeof JSON.rawJSON === 'function' && typeof JSON.isRawJSON === 'function';
const isRaw = (v) => hasRaw && v !== null && typeof v === 'object' && JSON.isRawJSON(v);

/**
 * JSON.parse that keeps numbers exactly as written when a JS number would
 * change them (12345678901234567890, 1.10, 1e400): an approver must see the
 * amount the agent actually sent. Uses the reviver's source text where the
 * browser has it; elsewhere it is plain JSON.parse.
 */
export function parseJson(text) {
  if (!hasRaw) return JSON.parse(text);
  return JSON.parse(text, (key, value, ctx) => {
    if (typeof value === 'number' && ctx && typeof ctx.source === 'string' && String(value) !== ctx.source) {
      return JSON.rawJSON(ctx.source);
    }
    return value;
  });
}

/** JSON-escape a slice for display (quotes, backslashes, control and bidi chars). */
function esc(s) {
  const j = JSON.stringify(s);
  return visible(j.slice(1, -1));
}

function keyLabel(k) {
  const shown = k.length > KEY_FOLD ? `${esc(k.slice(0, KEY_FOLD))}…` : esc(k);
  return [h('span', { class: 'jk' }, `"${shown}"`), h('span', { class: 'jp' }, ': ')];
}

function primitive(v) {
  if (v === null) return h('span', { class: 'jnull' }, 'null');
  if (isRaw(v)) return h('span', { class: 'jnum' }, String(v.rawJSON));
  switch (typeof v) {
    case 'number': return h('span', { class: 'jnum' }, String(v));
    case 'boolean': return h('span', { class: 'jbool' }, String(v));
    case 'string': return stringNode(v);
    default: return h('span', { class: 'jnull' }, String(v));
  }
}

function stringNode(s) {
  if (s.length <= STR_FOLD) return h('span', { class: 'jstr' }, `"${esc(s)}"`);

  // Long string: prefix + "…" + controls. The full value is only sliced into
  // the DOM on demand, STR_CHUNK at a time (or all at once into a scroll box).
  const wrap = h('span', { class: 'jstr jstr-long' });
  const text = h('span', { class: 'jstr-text' });
  const tail = h('span', { class: 'jstr-fold' });
  const info = h('span', { class: 'jstr-info' });
  const more = h('button', { type: 'button', class: 'linkish' });
  const all = h('button', { type: 'button', class: 'linkish' }, 'show all');
  const fold = h('button', { type: 'button', class: 'linkish' }, 'fold');
  let shown = 0;

  const render = (n) => {
    shown = Math.min(s.length, n);
    text.textContent = `"${esc(s.slice(0, shown))}`;
    const rest = s.length - shown;
    wrap.classList.toggle('jstr-open', shown > STR_FOLD);
    if (rest > 0) {
      tail.textContent = '…';
      info.textContent = ` ${fmtNumber(rest)} more of ${fmtNumber(s.length)} chars `;
      more.textContent = `show ${fmtNumber(Math.min(rest, STR_CHUNK))} more`;
      more.hidden = false;
      all.hidden = rest <= STR_CHUNK;
    } else {
      tail.textContent = '"';
      info.textContent = ` ${fmtNumber(s.length)} chars `;
      more.hidden = true;
      all.hidden = true;
    }
    fold.hidden = shown <= STR_FOLD;
  };
  more.addEventListener('click', () => render(shown + STR_CHUNK));
  all.addEventListener('click', () => render(s.length));
  fold.addEventListener('click', () => render(STR_FOLD));
  render(STR_FOLD);
  wrap.append(text, tail, h('span', { class: 'jstr-controls' }, info, more, ' ', all, ' ', fold));
  return wrap;
}

function container(value, key, depth, last) {
  const isArr = Array.isArray(value);
  const keys = isArr ? null : Object.keys(value);
  const count = isArr ? value.length : keys.length;
  const [open, close] = isArr ? ['[', ']'] : ['{', '}'];
  const comma = last ? '' : ',';

  if (count === 0) {
    return h('div', { class: 'jrow' }, key === undefined ? null : keyLabel(key),
      h('span', { class: 'jp' }, `${open}${close}${comma}`));
  }

  const details = h('details', { class: 'jnode' });
  const label = `${fmtNumber(count)} ${isArr ? (count === 1 ? 'item' : 'items') : (count === 1 ? 'key' : 'keys')}`;
  const summary = h('summary', { class: 'jrow' },
    key === undefined ? null : keyLabel(key),
    h('span', { class: 'jp' }, open),
    h('span', { class: 'jcollapsed' }, h('span', { class: 'jmeta' }, ` ${label} `), h('span', { class: 'jp' }, `${close}${comma}`)));
  const body = h('div', { class: 'jchildren' });
  const closing = h('div', { class: 'jrow jclose' }, h('span', { class: 'jp' }, `${close}${comma}`));
  details.append(summary, body, closing);

  let rendered = 0;
  const renderMore = () => {
    body.querySelector(':scope > .jmore')?.remove();
    const end = Math.min(count, rendered + (rendered === 0 ? CHILD_PAGE : CHILD_PAGE * 5));
    const frag = document.createDocumentFragment();
    for (let i = rendered; i < end; i++) {
      const k = isArr ? undefined : keys[i];
      const v = isArr ? value[i] : value[k];
      frag.appendChild(node(v, k, depth + 1, i === count - 1));
    }
    rendered = end;
    if (rendered < count) {
      const btn = h('button', { type: 'button', class: 'linkish jmore' }, `show ${fmtNumber(Math.min(count - rendered, CHILD_PAGE * 5))} more of ${fmtNumber(count - rendered)}`);
      btn.addEventListener('click', renderMore);
      frag.appendChild(btn);
    }
    body.appendChild(frag);
  };
  details.addEventListener('toggle', () => {
    if (details.open && rendered === 0) renderMore();
  });
  if ((depth < OPEN_DEPTH && count <= CHILD_PAGE * 5) || (depth < OPEN_DEPTH + 2 && count <= 10)) {
    renderMore();
    details.open = true;
  }
  return details;
}

function node(v, key, depth, last) {
  if (v !== null && typeof v === 'object' && !isRaw(v)) return container(v, key, depth, last);
  return h('div', { class: 'jrow' }, key === undefined ? null : keyLabel(key), primitive(v), last ? null : h('span', { class: 'jp' }, ','));
}

/** Render any JSON value as a collapsible tree. */
export function jsonView(value) {
  const root = h('div', { class: 'json' });
  root.appendChild(node(value === undefined ? null : value, undefined, 0, true));
  return root;
}

/** Plain-text search haystack for a value (bounded: big strings are cut). */
export function haystack(value, limit = 20000) {
  let out = '';
  const walk = (v, depth) => {
    if (out.length >= limit || depth > 20) return;
    if (isRaw(v)) { out += ` ${v.rawJSON}`; return; }
    if (v === null || typeof v !== 'object') { out += ` ${String(v).slice(0, 500)}`; return; }
    if (Array.isArray(v)) { for (const x of v) { walk(x, depth + 1); if (out.length >= limit) return; } return; }
    for (const [k, x] of Object.entries(v)) {
      out += ` ${k.slice(0, 200)}`;
      walk(x, depth + 1);
      if (out.length >= limit) return;
    }
  };
  walk(value, 0);
  return out.toLowerCase();
}
