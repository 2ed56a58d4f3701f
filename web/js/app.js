// Airlock dashboard: boot, login, routing and the chrome around the views.
import { $, announce } from './dom.js';
import { login, loginOptions, me, logout, session, ApiError } from './api.js';
import { startLive, stopLive, retryNow } from './live.js';
import { initPending, onFrame, setLiveState, resetPending, pendingKeydown, pendingCount } from './pending.js';
import { initHistory, showHistory } from './history.js';
import { initTools, showTools, toolsFrame } from './tools.js';
import { initPower, powerFrame, resetPower } from './power.js';
import { setNotify, setSound, alerts, notificationsSupported } from './notify.js';

const VIEWS = ['login', 'pending', 'tools', 'history'];
let current = '';
let afterLogin = '/';

const CONN_TEXT = {
  connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', offline: 'Offline',
};

function viewFor(pathname) {
  if (pathname === '/login') return 'login';
  if (pathname === '/history') return 'history';
  if (pathname === '/tools') return 'tools';
  return 'pending';
}

function show(view) {
  for (const v of VIEWS) $(`#view-${v}`).hidden = v !== view;
  $('#topbar').hidden = view === 'login';
  for (const tab of document.querySelectorAll('.tab')) {
    if (tab.dataset.view === view) tab.setAttribute('aria-current', 'page');
    else tab.removeAttribute('aria-current');
  }
  current = view;
  updateTitle();
}

function updateTitle() {
  const n = pendingCount();
  const name = { login: 'Log in', pending: 'Pending', tools: 'Tools', history: 'History' }[current] || '';
  document.title = `${n > 0 && current !== 'login' ? `(${n}) ` : ''}${name ? `${name} · ` : ''}Airlock`;
  const badge = $('#pending-count');
  badge.textContent = String(n);
  badge.hidden = n === 0;
}

/** Route the current location (user must be logged in). */
function route(focus) {
  if (!session.approver) { showLogin(); return; }
  let view = viewFor(location.pathname);
  if (view === 'login') { history.replaceState(null, '', '/'); view = 'pending'; }
  show(view);
  if (view === 'history') showHistory(location.search);
  if (view === 'tools') showTools();
  if (focus) $('#main').focus({ preventScroll: true });
}

export function navigate(url) {
  if (`${location.pathname}${location.search}` !== url) history.pushState(null, '', url);
  route(true);
}

function showLogin(message) {
  const path = `${location.pathname}${location.search}`;
  if (viewFor(location.pathname) !== 'login') afterLogin = path;
  if (location.pathname !== '/login') history.replaceState(null, '', '/login');
  show('login');
  const err = $('#login-error');
  err.textContent = message || '';
  err.hidden = !message;
  const input = $('#login-token');
  input.setAttribute('aria-invalid', message ? 'true' : 'false');
  showLoginOptions().then((sso) => {
    if (sso && $('#login-token-part').hidden) $('#login-sso-link').focus();
    else input.focus();
  });
}

let loginOptionsShown = null;

/** Shows "Sign in with …" when single sign-on is configured (asked once). */
function showLoginOptions() {
  if (!loginOptionsShown) {
    loginOptionsShown = loginOptions().then((opts) => {
      const sso = opts && typeof opts.sso === 'object' && opts.sso ? opts.sso : null;
      if (sso) {
        $('#login-sso-name').textContent = typeof sso.provider === 'string' ? sso.provider : 'single sign-on';
        if (typeof sso.login_url === 'string' && /^\/(?!\/)/.test(sso.login_url)) $('#login-sso-link').setAttribute('href', sso.login_url);
        $('#login-sso').hidden = false;
      }
      const token = !opts || opts.token !== false;
      $('#login-token-part').hidden = !token;
      $('#login-or').hidden = !token;
      return !!sso;
    }).catch(() => { loginOptionsShown = null; return false; });
  }
  return loginOptionsShown;
}

function startSession(data) {
  session.set(data);
  $('#whoami').textContent = session.approver ? `Signed in as ${session.approver} (${session.role})` : '';
  document.body.dataset.role = session.role;
  startLive({
    onFrame: (f) => { onFrame(f); powerFrame(f); toolsFrame(f, current === 'tools'); },
    onState: (s) => { setConn(s); setLiveState(s); },
    onUnauthorized: () => endSession('Your session has ended. Log in again.'),
  });
}

function setConn(s) {
  $('#conn').dataset.state = s;
  $('#conn-text').textContent = CONN_TEXT[s] || s;
  $('#conn-retry').hidden = !(s === 'reconnecting' || s === 'offline');
}

function endSession(message) {
  stopLive();
  setConn('offline');
  session.clear();
  resetPending();
  resetPower();
  $('#whoami').textContent = '';
  showLogin(message);
}

async function doLogin(token, fromLink) {
  const submit = $('#login-submit');
  submit.disabled = true;
  submit.textContent = 'Logging in…';
  try {
    const data = await login(token);
    $('#login-token').value = '';
    startSession(data);
    const dest = viewFor(afterLogin.split('?')[0]) === 'login' ? '/' : afterLogin;
    history.replaceState(null, '', dest);
    route(true);
    announce(`Logged in as ${session.approver}.`);
  } catch (e) {
    let msg;
    if (e instanceof ApiError && e.status === 401) {
      msg = fromLink
        ? 'That login link is not valid (the token may have changed). Paste your approver token instead.'
        : 'Invalid approver token.';
    } else if (e instanceof ApiError && e.status === 429) {
      msg = 'Too many attempts. Wait a moment and try again.';
    } else if (e instanceof ApiError) {
      msg = `Login failed: ${e.message}`;
    } else {
      msg = 'Could not reach the gateway. Is airlock running?';
    }
    showLogin(msg);
  } finally {
    submit.disabled = false;
    submit.textContent = 'Log in';
  }
}

function tokenFromFragment() {
  if (!location.hash || location.hash.length < 2) return '';
  const params = new URLSearchParams(location.hash.slice(1));
  return params.get('token') || '';
}

async function boot() {
  initPending({ onCount: updateTitle });
  initHistory({ onNavigate: navigate });
  initTools();
  initPower();
  wireChrome();

  const token = tokenFromFragment();
  if (token) {
    // Never leave the secret in the address bar or history, whatever happens next.
    history.replaceState(null, '', location.pathname === '/login' ? '/login' : `${location.pathname}${location.search}`);
    afterLogin = '/';
    await doLogin(token, true);
    return;
  }
  try {
    const data = await me();
    startSession(data);
    route(false);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) showLogin();
    else showLogin('Could not reach the gateway. Is airlock running? Reload to try again.');
  }
}

function wireChrome() {
  $('#login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('#login-token').value.trim();
    if (!token) { showLogin('Enter your approver token.'); return; }
    doLogin(token, false);
  });

  document.addEventListener('click', (e) => {
    const a = e.target.closest?.('a[data-nav]');
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(a.getAttribute('href'));
  });
  window.addEventListener('popstate', () => route(false));
  // A login link pasted into a tab that already shows the dashboard only
  // changes the fragment; treat it like a fresh visit.
  window.addEventListener('hashchange', () => {
    const token = tokenFromFragment();
    if (!token) return;
    history.replaceState(null, '', `${location.pathname}${location.search}`);
    if (session.approver) { stopLive(); session.clear(); resetPending(); }
    afterLogin = '/';
    doLogin(token, true);
  });

  $('#logout').addEventListener('click', async () => {
    let out = null;
    try { out = await logout(); } catch { /* the session is dropped locally either way */ }
    // Single sign-on: end the identity provider's session too; it sends the browser back to /login.
    const next = out && typeof out.logout_url === 'string' ? out.logout_url : '';
    if (/^https?:\/\//i.test(next)) { stopLive(); session.clear(); location.assign(next); return; }
    afterLogin = '/';
    endSession('');
    $('#login-error').hidden = true;
  });
  window.addEventListener('airlock:unauthorized', () => {
    if (session.approver) endSession('Your session has ended. Log in again.');
  });
  $('#conn-retry').addEventListener('click', () => retryNow());

  const optNotify = $('#opt-notify');
  const optSound = $('#opt-sound');
  const optMsg = $('#opt-message');
  optNotify.checked = alerts.notify;
  optSound.checked = alerts.sound;
  if (!notificationsSupported()) optNotify.closest('label').hidden = true;
  optNotify.addEventListener('change', async () => {
    const msg = await setNotify(optNotify.checked);
    optNotify.checked = alerts.notify;
    optMsg.textContent = msg;
    optMsg.hidden = !msg;
  });
  optSound.addEventListener('change', () => setSound(optSound.checked));

  document.addEventListener('keydown', (e) => {
    if (current === 'pending') pendingKeydown(e);
  });
}

boot();
