// Same-origin JSON API client. The session cookie (HttpOnly) travels by itself;
// every unsafe request also carries the CSRF token from /api/login or /api/me.
import { parseJson } from './json-view.js';

let csrf = '';
let approver = '';
let role = '';

const ROLES = ['viewer', 'approver', 'admin'];

export const session = {
  get approver() { return approver; },
  get csrf() { return csrf; },
  /** viewer | approver | admin (the server enforces it; the page only follows). */
  get role() { return role; },
  /** Whether this approver's role is at least `needed`. */
  can(needed) { return ROLES.indexOf(role) >= ROLES.indexOf(needed); },
  set(data) {
    approver = typeof data?.approver === 'string' ? data.approver : '';
    csrf = typeof data?.csrf === 'string' ? data.csrf : '';
    role = ROLES.includes(data?.role) ? data.role : 'viewer';
  },
  clear() { approver = ''; csrf = ''; role = ''; },
};

export class ApiError extends Error {
  constructor(status, body, fallback) {
    const err = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : null;
    super(err && typeof err.message === 'string' ? err.message : fallback || `HTTP ${status}`);
    this.status = status;
    this.code = err && typeof err.code === 'string' ? err.code : '';
    this.details = err || {};
  }
}

async function readJson(res) {
  if (res.status === 204) return null;
  const type = res.headers.get('content-type') || '';
  if (!type.includes('json')) {
    // Drain the body so the connection can be reused; ignore its content.
    try { await res.text(); } catch { /* ignore */ }
    return null;
  }
  try { return parseJson(await res.text()); } catch { return null; }
}

/**
 * request('GET', '/api/pending') → parsed JSON body.
 * Throws ApiError for non-2xx (and fires `airlock:unauthorized` on 401),
 * or TypeError when the network is down.
 */
export async function request(method, path, body, { signal, quiet401 = false } = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store', signal };
  if (method !== 'GET' && method !== 'HEAD') {
    if (csrf) headers['X-Airlock-CSRF'] = csrf;
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
  }
  const res = await fetch(path, init);
  const data = await readJson(res);
  if (!res.ok) {
    if (res.status === 401 && !quiet401) {
      window.dispatchEvent(new CustomEvent('airlock:unauthorized'));
    }
    throw new ApiError(res.status, data);
  }
  return data;
}

export function login(token) {
  return request('POST', '/api/login', { token }, { quiet401: true });
}

/** How this gateway lets people log in: {token: bool, sso: {provider, login_url} | null}. */
export function loginOptions() {
  return request('GET', '/api/login', undefined, { quiet401: true });
}

export function me() {
  return request('GET', '/api/me', undefined, { quiet401: true });
}

/** Ends the login; resolves to {logout_url} when the identity provider's session should end too. */
export function logout() {
  return request('POST', '/api/logout');
}

/** `grant` (approvals only): `{minutes, scope, exact_arguments}` or null. */
export function decide(id, decision, comment, grant) {
  const verb = decision === 'approve' ? 'approve' : 'deny';
  const body = { comment: comment || '' };
  if (grant && verb === 'approve') body.grant = grant;
  return request('POST', `/api/pending/${encodeURIComponent(id)}/${verb}`, body);
}

export function audit(params, { signal } = {}) {
  const q = new URLSearchParams(params);
  return request('GET', `/api/audit?${q}`, undefined, { signal });
}

export function exportUrl(format, params) {
  const q = new URLSearchParams({ format, ...params });
  return `/api/audit/export?${q}`;
}

export function tools({ refresh = false, signal } = {}) {
  return refresh
    ? request('POST', '/api/tools/refresh', undefined, { signal })
    : request('GET', '/api/tools', undefined, { signal });
}

export function policy(upstream) {
  return request('GET', `/api/policy/${encodeURIComponent(upstream)}`);
}

export function checkPolicy(upstream, text) {
  return request('POST', `/api/policy/${encodeURIComponent(upstream)}/check`, { text });
}

export function savePolicy(upstream, text, baseSha256) {
  return request('PUT', `/api/policy/${encodeURIComponent(upstream)}`, { text, base_sha256: baseSha256 });
}

export function auditEntry(seq) {
  return request('GET', `/api/audit/entries/${encodeURIComponent(seq)}`);
}

export function verifyAudit() {
  return request('POST', '/api/audit/verify');
}
