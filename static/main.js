/* jwtchat browser client.
 * Flow: login form → POST /auth → WebSocket /ws?token=… → chat view.
 * Rule: user and server strings reach the DOM only via textContent. */
'use strict';

const MAX_MESSAGE_BYTES = 4096;  // server default, in UTF-8 bytes
const BACKOFF_FIRST_MS = 500;    // reconnect delay doubles from here…
const BACKOFF_MAX_MS = 10000;    // …up to this cap
const NEAR_BOTTOM_PX = 40;       // "at the bottom" tolerance for auto-scroll
const NOTICE_MS = 6000;          // lifetime of a transient notice
const AVATAR_HUES = 8;           // .hue-0 … .hue-7 in style.css
const CLOSE_NORMAL = 1000;
const CLOSE_TOKEN_EXPIRED = 4001;

const encoder = new TextEncoder();
const $ = (id) => document.getElementById(id);
const el = {
  login: $('login'), loginForm: $('login-form'), loginButton: $('login-button'),
  username: $('username'), password: $('password'), loginError: $('login-error'),
  chat: $('chat'), me: $('me'), status: $('status'), countdown: $('countdown'),
  logout: $('logout-button'), online: $('online'), onlineCount: $('online-count'),
  messages: $('messages'), newMessages: $('new-messages'), notice: $('notice'),
  composer: $('composer'), input: $('message-input'), send: $('send-button'),
  counter: $('counter'),
};

// Everything tied to one login, in one place, so logout/expiry can reset it.
const session = {
  state: 'login',      // login | connecting | connected | disconnected | expired
  token: null,
  me: '',
  expiresAt: 0,        // unix seconds
  socket: null,        // events from any other (older) socket are ignored
  online: new Set(),
  seenSeqs: new Set(), // a replayed history must not duplicate messages
  retries: 0,          // failed attempts since the last welcome
  reconnectTimer: 0,
  countdownTimer: 0,
  renewTimer: 0,       // a pending token renewal (see onExpiring)
  lastActivity: 0,     // Date.now() of the last key or pointer use
  noticeTimer: 0,
};
let socketsOpened = 0;

const nowSeconds = () => Date.now() / 1000;
const tokenExpired = () => nowSeconds() >= session.expiresAt;
const pad2 = (n) => String(n).padStart(2, '0');
const byteLength = (text) => encoder.encode(text).length;

/** Create an element with an optional class and plain-text content. */
function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Initial-letter circle; same name → same colour. The letter is drawn by
 *  CSS from data-initial so it stays out of the surrounding textContent. */
function avatar(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const node = make('span', `avatar hue-${hash % AVATAR_HUES}`);
  node.dataset.initial = (Array.from(name)[0] || '?').toUpperCase();
  node.setAttribute('aria-hidden', 'true');
  return node;
}

// ---- State and views ----

const STATUS_TEXT = {
  connecting: () => (session.retries ? 'Reconnecting…' : 'Connecting…'),
  connected: () => 'Connected',
  disconnected: () => 'Disconnected — reconnecting…',
};

function setState(state) {
  session.state = state;
  document.body.dataset.state = state;  // lets CSS react, e.g. fade the online list
  el.status.dataset.state = state;
  el.status.textContent = STATUS_TEXT[state] ? STATUS_TEXT[state]() : '';
  updateComposer();
}

function showLogin(message, isInfo) {
  el.chat.hidden = true;
  el.login.hidden = false;
  el.loginError.textContent = message;
  el.loginError.classList.toggle('info', isInfo);
  document.title = 'jwtchat';
}

function showChat() {
  el.login.hidden = true;
  el.chat.hidden = false;
}

// ---- Login ----

async function onLoginSubmit(event) {
  event.preventDefault();
  const username = el.username.value.trim();
  const password = el.password.value;
  setState('login');
  if (!username || !password) return failLogin('Enter your username and password.');

  el.loginButton.disabled = true;  // one request in flight at a time
  el.loginError.textContent = '';
  try {
    const grant = await requestToken(username, password);
    el.password.value = '';        // don't keep the secret in the page
    startSession(grant, username);
  } catch (error) {
    failLogin(error.message);
  } finally {
    el.loginButton.disabled = false;
  }
}

function failLogin(message) {
  showLogin(message, false);
  // Usually the password was mistyped: select it, ready to retype.
  const field = el.username.value.trim() ? el.password : el.username;
  field.focus();
  field.select();
}

/** POST /auth → { token, expiresIn }, or throw an Error with a human message.
 *  Credentials travel only in the request body, never in a URL. */
async function requestToken(username, password) {
  let response;
  try {
    response = await fetch('/auth', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
  } catch {
    throw new Error('Cannot reach the server.');
  }
  const body = (await response.json().catch(() => null)) || {};
  if (response.ok && typeof body.token === 'string') {
    return { token: body.token, expiresIn: Number(body.expires_in) };
  }
  throw new Error(authErrorText(response, body));
}

function authErrorText(response, body) {
  const detail = typeof body.message === 'string' ? body.message : '';
  switch (response.status) {
    case 200: return 'The server sent an unexpected reply.';
    case 400: return `Login rejected: ${detail || 'bad request'}.`;
    case 401: return 'Wrong username or password.';
    case 429: {
      const seconds = parseInt(response.headers.get('Retry-After'), 10);
      return Number.isFinite(seconds)
        ? `Too many attempts — try again in ${seconds} s.`
        : 'Too many attempts — try again later.';
    }
    default: return detail || `Login failed (HTTP ${response.status}).`;
  }
}

// ---- Session lifecycle ----

function startSession({ token, expiresIn }, username) {
  session.token = token;
  session.me = username;
  // An estimate until "welcome" brings the exact expires_at.
  session.expiresAt = expiresIn > 0 ? nowSeconds() + expiresIn : Infinity;
  session.retries = 0;
  session.online.clear();
  session.seenSeqs.clear();
  el.messages.replaceChildren();   // the new login may be someone else
  el.me.textContent = username;
  renderOnline();
  showChat();
  startCountdown();
  connect();
  el.input.focus();
}

/** Drop everything tied to the current token. */
function endSession() {
  clearTimeout(session.reconnectTimer);
  clearTimeout(session.renewTimer);
  clearInterval(session.countdownTimer);
  hideNotice();
  const socket = session.socket;
  session.socket = null;           // so its close event is ignored
  if (socket) socket.close(CLOSE_NORMAL);
  session.token = null;
}

function logout() {
  endSession();
  setState('login');
  showLogin('', false);
  el.username.focus();
}

function expireSession() {
  endSession();
  setState('expired');
  showLogin('Your session expired — please log in again.', true);
  el.password.focus();             // the username is still filled in
}

// ---- WebSocket ----

function connect() {
  clearTimeout(session.reconnectTimer);
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(
    `${scheme}//${location.host}/ws?token=${encodeURIComponent(session.token)}`);
  socketsOpened += 1;
  session.socket = socket;
  setState('connecting');
  socket.addEventListener('message', (event) => {
    if (socket === session.socket) onFrame(event.data);
  });
  socket.addEventListener('close', (event) => {
    if (socket === session.socket) onSocketClose(event);
  });
}

function onSocketClose(event) {
  session.socket = null;
  // A refused upgrade (e.g. 401 for a stale token) only shows up as 1006,
  // so checking the expiry locally covers that case too.
  if (event.code === CLOSE_TOKEN_EXPIRED || tokenExpired()) return expireSession();
  const delay = Math.min(BACKOFF_FIRST_MS * 2 ** session.retries, BACKOFF_MAX_MS);
  session.retries += 1;
  setState('disconnected');
  session.reconnectTimer = setTimeout(reconnect, delay);
}

function reconnect() {
  if (tokenExpired()) expireSession();
  else connect();
}

// ---- Incoming frames ----

function onFrame(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return console.warn('jwtchat: ignoring a non-JSON frame');
  }
  switch (frame && frame.type) {
    case 'welcome': return onWelcome(frame);
    case 'join': return onPresence(String(frame.user), true);
    case 'leave': return onPresence(String(frame.user), false);
    case 'message': return addMessages([frame]);
    case 'error': return showNotice(String(frame.message || frame.code || 'Error'));
    case 'expiring': return onExpiring(frame);
    case 'reauthed': return onExpiry(frame.expires_at);
    default: return;               // unknown type from a newer server
  }
}

function onWelcome(frame) {
  const wasReconnect = session.retries > 0;
  session.retries = 0;
  session.me = String(frame.user);
  if (Number.isFinite(frame.expires_at)) session.expiresAt = frame.expires_at;
  session.online = new Set(Array.isArray(frame.online) ? frame.online.map(String) : []);
  session.online.add(session.me);
  el.me.textContent = session.me;
  document.title = `jwtchat — ${session.me}`;
  renderOnline();
  renderCountdown();
  if (Array.isArray(frame.history)) addMessages(frame.history);
  if (wasReconnect) addSystemLine('Reconnected.');
  setState('connected');
}

function onPresence(name, joined) {
  if (joined) session.online.add(name);
  else session.online.delete(name);
  renderOnline();
  addSystemLine(`${name} ${joined ? 'joined' : 'left'}`);
}

// ---- Renewal ----

const IN_USE_MS = 5 * 60 * 1000;   // "in use": visible, or touched recently

function inUse() {
  return document.visibilityState === 'visible'
    || Date.now() - session.lastActivity < IN_USE_MS;
}

/** The server warns a minute before expiry. If the tab is in use, renew
 *  half-way through what is left (at most 30 s before the end), so a short
 *  token does not renew in a tight loop. An idle tab lets it lapse. */
function onExpiring(frame) {
  onExpiry(frame.expires_at);
  if (!inUse() || session.renewTimer) return;
  const left = session.expiresAt - nowSeconds();
  const wait = Math.max(0, left - Math.min(30, left / 2));
  session.renewTimer = setTimeout(renew, wait * 1000);
}

/** POST /auth/refresh with the current token, then hand the new one to the
 *  open socket ({"type":"reauth"}); reconnects will use it too. */
async function renew() {
  session.renewTimer = 0;
  const old = session.token;
  let response;
  try {
    response = await fetch('/auth/refresh', {
      method: 'POST',
      headers: { Authorization: `Bearer ${old}` },
    });
  } catch {
    return;                        // offline: the reconnect logic takes over
  }
  const body = (await response.json().catch(() => null)) || {};
  if (session.token !== old) return;   // logged out or in again meanwhile
  if (!response.ok || typeof body.token !== 'string') {
    return showNotice('Your session is ending: please log in again soon.');
  }
  session.token = body.token;
  if (session.socket && session.socket.readyState === WebSocket.OPEN) {
    session.socket.send(JSON.stringify({ type: 'reauth', token: body.token }));
  }
}

function onExpiry(expiresAt) {
  if (Number.isFinite(expiresAt)) session.expiresAt = expiresAt;
  renderCountdown();
}

// ---- Rendering ----

function renderOnline() {
  const names = [...session.online].sort((a, b) => a.localeCompare(b));
  el.online.replaceChildren(...names.map(onlineItem));
  el.onlineCount.textContent = String(names.length);
}

function onlineItem(name) {
  const item = make('li');
  item.dataset.user = name;
  item.append(avatar(name), make('span', 'name', name));
  if (name === session.me) item.append(make('span', 'you', ' (you)'));
  return item;
}

function addMessages(frames) {
  const stick = isNearBottom();    // measure before the list grows
  let mine = false;
  for (const frame of frames) {
    if (!frame || session.seenSeqs.has(frame.seq)) continue;
    if (frame.seq !== undefined) session.seenSeqs.add(frame.seq);
    el.messages.append(renderMessage(frame));
    mine = mine || String(frame.from) === session.me;
  }
  // My own message coming back means I just sent it: always show it.
  if (stick || mine) scrollToBottom();
  else el.newMessages.hidden = false;
}

function renderMessage(frame) {
  const from = String(frame.from ?? '?');
  const item = make('div', 'message');
  item.dataset.seq = String(frame.seq);
  if (from === session.me) item.classList.add('own');

  const date = new Date(frame.ts);
  const time = make('time', 'time');
  if (!isNaN(date)) {
    time.textContent = `${pad2(date.getHours())}:${pad2(date.getMinutes())}`;
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
  }
  const meta = make('div', 'meta');
  meta.append(make('span', 'from', from), ' ', time);
  const bubble = make('div', 'bubble');
  bubble.append(meta, make('div', 'text', String(frame.text ?? '')));
  item.append(avatar(from), bubble);
  return item;
}

function addSystemLine(text) {
  const stick = isNearBottom();
  el.messages.append(make('div', 'system', text));
  if (stick) scrollToBottom();     // a mere notice never yanks the view
}

function isNearBottom() {
  const m = el.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight <= NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  el.messages.scrollTop = el.messages.scrollHeight;
  el.newMessages.hidden = true;
}

function showNotice(text) {
  el.notice.textContent = text;
  el.notice.hidden = false;
  clearTimeout(session.noticeTimer);
  session.noticeTimer = setTimeout(hideNotice, NOTICE_MS);
}

function hideNotice() {
  clearTimeout(session.noticeTimer);
  el.notice.hidden = true;
}

function startCountdown() {
  clearInterval(session.countdownTimer);
  renderCountdown();
  session.countdownTimer = setInterval(renderCountdown, 1000);
}

function renderCountdown() {
  const left = Math.max(0, Math.floor(session.expiresAt - nowSeconds()));
  el.countdown.textContent = Number.isFinite(left)
    ? `${pad2(Math.floor(left / 60))}:${pad2(left % 60)}` : '--:--';
  el.countdown.classList.toggle('soon', left < 60);
}

// ---- Composer ----

function canSend(text) {
  return session.state === 'connected'
    && session.socket?.readyState === WebSocket.OPEN
    && text.trim() !== ''
    && byteLength(text) <= MAX_MESSAGE_BYTES;
}

/** Refresh the byte counter and the Send button after any change. */
function updateComposer() {
  const text = el.input.value;
  const bytes = byteLength(text);
  const over = bytes > MAX_MESSAGE_BYTES;
  el.counter.textContent = `${bytes} / ${MAX_MESSAGE_BYTES}`;
  el.counter.classList.toggle('over', over);
  el.input.classList.toggle('over', over);
  el.input.setAttribute('aria-invalid', String(over));
  el.send.disabled = !canSend(text);
}

function sendMessage() {
  const text = el.input.value;
  if (!canSend(text)) return;
  // No local echo: the message shows when the server sends it back,
  // so every client sees the server's order.
  session.socket.send(JSON.stringify({ type: 'message', text }));
  el.input.value = '';
  updateComposer();
  el.input.focus();
}

function onInputKeydown(event) {
  // Enter sends, Shift+Enter is a newline; leave Enter to an active IME.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
}

// ---- Wiring ----

function init() {
  el.loginForm.addEventListener('submit', onLoginSubmit);
  el.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    sendMessage();
  });
  el.input.addEventListener('input', updateComposer);
  el.input.addEventListener('keydown', onInputKeydown);
  el.logout.addEventListener('click', logout);
  el.messages.addEventListener('scroll', () => {
    if (isNearBottom()) el.newMessages.hidden = true;
  });
  el.newMessages.addEventListener('click', scrollToBottom);
  el.notice.addEventListener('click', hideNotice);
  for (const type of ['keydown', 'pointerdown']) {
    window.addEventListener(type, () => { session.lastActivity = Date.now(); });
  }
  // Network is back: no point waiting out the backoff.
  window.addEventListener('online', () => {
    if (session.state === 'disconnected') reconnect();
  });
  // Read-only hooks for browser tests.
  Object.defineProperty(window, 'jwtchat', {
    enumerable: true,
    value: Object.freeze({
      get state() { return session.state; },
      get socketsOpened() { return socketsOpened; },
      get expiresAt() { return session.expiresAt; },
    }),
  });
  setState('login');
  el.username.focus();
}

init();
