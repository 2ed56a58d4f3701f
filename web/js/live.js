// The live connection: one websocket to /api/ws, reconnected with backoff.
// Every (re)connect starts with a `snapshot` frame that replaces the list,
// so nothing depends on having seen every event.
import { me } from './api.js';
import { parseJson } from './json-view.js';

const MIN_DELAY = 500;
const MAX_DELAY = 10000;
const OFFLINE_AFTER = 5;     // failed attempts in a row before we say "offline"

let ws = null;
let running = false;
let attempts = 0;
let timer = 0;
let state = 'offline';
let handlers = null;

function setState(s) {
  if (s === state) return;
  state = s;
  handlers?.onState?.(s, { attempts, retryIn: nextDelay() });
}

export function liveState() { return state; }

function nextDelay() {
  const base = Math.min(MAX_DELAY, MIN_DELAY * 2 ** Math.max(0, attempts - 1));
  return Math.round(base * (0.85 + Math.random() * 0.3));
}

function url() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/api/ws`;
}

function connect() {
  clearTimeout(timer);
  if (!running) return;
  if (ws) { const old = ws; ws = null; detach(old); try { old.close(); } catch { /* ignore */ } }
  setState(attempts === 0 ? 'connecting' : (state === 'offline' ? 'offline' : 'reconnecting'));
  let sock;
  try { sock = new WebSocket(url()); } catch { scheduleRetry(false); return; }
  ws = sock;
  let opened = false;
  let gotSnapshot = false;
  sock.onopen = () => { opened = true; };
  sock.onmessage = (ev) => {
    if (typeof ev.data !== 'string') return;
    let frame;
    try { frame = parseJson(ev.data); } catch { return; }
    if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
    if (frame.type === 'snapshot') {
      gotSnapshot = true;
      attempts = 0;
      setState('live');
    }
    try { handlers?.onFrame?.(frame); } catch (e) { console.error('airlock: frame handler failed', e); }
  };
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    ws = null;
    if (!running) return;
    // 4401: the login behind this socket ended; scheduleRetry asks /api/me first.
    if (ev && ev.code === 4401) { scheduleRetry(false, false); return; }
    scheduleRetry(opened && gotSnapshot, opened);
  };
  sock.onerror = () => { /* onclose follows */ };
}

function detach(sock) {
  sock.onopen = sock.onmessage = sock.onclose = sock.onerror = null;
}

async function scheduleRetry(wasLive, opened) {
  attempts += 1;
  const offline = navigator.onLine === false || attempts > OFFLINE_AFTER;
  setState(offline ? 'offline' : 'reconnecting');
  // A refused upgrade may mean the session ended: ask /api/me (it fires
  // `airlock:unauthorized` through the app when the answer is 401).
  if (!opened && !wasLive) {
    try { await me(); } catch (e) {
      if (e && e.status === 401) { handlers?.onUnauthorized?.(); return; }
    }
  }
  if (!running) return;
  clearTimeout(timer);
  timer = setTimeout(connect, wasLive ? MIN_DELAY : nextDelay());
}

function onOnline() { if (running && !ws) { attempts = Math.min(attempts, 1); connect(); } }
function onOffline() { if (running) setState('offline'); }
// Background tabs throttle timers; when the approver comes back, don't make
// them wait for the next backoff tick.
function onVisible() {
  if (running && document.visibilityState === 'visible' && state !== 'live' && !(ws && ws.readyState === WebSocket.CONNECTING)) connect();
}

export function startLive(h) {
  handlers = h;
  if (running) return;
  running = true;
  attempts = 0;
  state = '';
  window.addEventListener('online', onOnline);
  window.addEventListener('offline', onOffline);
  document.addEventListener('visibilitychange', onVisible);
  connect();
}

/** Skip the wait and try again now (the "Retry now" button). */
export function retryNow() {
  if (!running) return;
  if (ws && ws.readyState <= WebSocket.OPEN && state === 'live') return;
  connect();
}

export function stopLive() {
  running = false;
  clearTimeout(timer);
  window.removeEventListener('online', onOnline);
  window.removeEventListener('offline', onOffline);
  document.removeEventListener('visibilitychange', onVisible);
  if (ws) { const old = ws; ws = null; detach(old); try { old.close(); } catch { /* ignore */ } }
  state = 'offline';
}
