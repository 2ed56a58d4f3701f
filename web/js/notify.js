// Opt-in attention helpers: desktop notifications and a short chime.
// Both are off until the approver turns them on; the choice is remembered
// in localStorage (no secrets there).

const KEY = 'airlock.alerts';
let prefs = { notify: false, sound: false };
try {
  const saved = JSON.parse(localStorage.getItem(KEY) || '{}');
  prefs = { notify: saved.notify === true, sound: saved.sound === true };
} catch { /* private mode or garbage: keep defaults */ }

function save() {
  try { localStorage.setItem(KEY, JSON.stringify(prefs)); } catch { /* ignore */ }
}

export const alerts = {
  get notify() { return prefs.notify && notificationsAllowed(); },
  get sound() { return prefs.sound; },
};

export function notificationsSupported() {
  return typeof window.Notification === 'function';
}

function notificationsAllowed() {
  return notificationsSupported() && Notification.permission === 'granted';
}

/** Returns a message to show when the wish could not be granted. */
export async function setNotify(on) {
  if (!on) { prefs.notify = false; save(); return ''; }
  if (!notificationsSupported()) return 'This browser does not support desktop notifications.';
  let perm = Notification.permission;
  if (perm === 'default') {
    try { perm = await Notification.requestPermission(); } catch { perm = 'denied'; }
  }
  if (perm !== 'granted') {
    prefs.notify = false; save();
    return 'Notifications are blocked for this site in the browser settings.';
  }
  prefs.notify = true; save();
  return '';
}

let audioCtx = null;
export function setSound(on) {
  prefs.sound = !!on; save();
  if (on) {
    // Creating/resuming the context inside the click makes later chimes allowed.
    ensureAudio();
    chime();
  }
}

function ensureAudio() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  if (!audioCtx) { try { audioCtx = new Ctx(); } catch { return null; } }
  if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
  return audioCtx;
}

/** Two soft notes, synthesized (no audio file, works offline). */
export function chime() {
  const ctx = ensureAudio();
  if (!ctx) return;
  const t0 = ctx.currentTime + 0.01;
  [[660, 0], [880, 0.14]].forEach(([freq, at]) => {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = 'sine';
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, t0 + at);
    gain.gain.exponentialRampToValueAtTime(0.2, t0 + at + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t0 + at + 0.25);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t0 + at);
    osc.stop(t0 + at + 0.3);
  });
}

const shown = new Map(); // pending id -> Notification

/** Called for each new pending call (not for snapshot contents). */
let lastChime = 0;
export function alertNew(item) {
  if (prefs.sound && Date.now() - lastChime > 2000) { lastChime = Date.now(); chime(); }
  if (alerts.notify && document.visibilityState !== 'visible') {
    try {
      const tool = String(item.tool ?? '').slice(0, 80);
      const who = [item.agent, item.upstream].filter((x) => typeof x === 'string' && x).join(' via ').slice(0, 120);
      const n = new Notification(`Approval needed: ${tool}`, {
        body: who ? `${who} is waiting.` : 'An agent is waiting.',
        tag: `airlock-${String(item.id).slice(0, 64)}`,
        icon: '/favicon.svg',
      });
      n.addEventListener('click', () => { window.focus(); n.close(); });
      n.addEventListener('close', () => shown.delete(item.id));
      shown.set(item.id, n);
    } catch { /* some platforms only allow notifications from a service worker */ }
  }
}

/** Close the desktop notification of a call that is no longer pending. */
export function closeAlert(id) {
  const n = shown.get(id);
  if (n) { shown.delete(id); try { n.close(); } catch { /* ignore */ } }
}
