/* jwtchat browser client.
 * Flow: login form → POST /auth → WebSocket /ws?token=… → chat view.
 * Rooms: every connection is in `general`; others are joined with
 * `subscribe`, and `dm:<a>:<b>` rooms are direct messages between two users.
 * Resuming: a reconnect or a reload joins each room again after the last
 * message shown, so nothing is missed or shown twice (or a marker says so).
 * Rule: user and server strings reach the DOM only via textContent. */
'use strict';

const DEFAULT_MAX_BYTES = 4096;  // until welcome brings the server's limit
const COUNTER_FROM = 0.8;        // show the byte counter from 80 % of the limit
const SESSION_WARN_S = 5 * 60;   // show the countdown when the session cap is this near
const RENEW_LEAD_S = 120;        // renew this long before expiry (at most half the life):
                                 // survives a hidden tab's timers running once a minute
const STORAGE_KEY = 'jwtchat.session';  // in sessionStorage only (see README)
const RESTARTED_TEXT = 'The server was restarted — please log in again.';
const BACKOFF_FIRST_MS = 500;    // reconnect delay doubles from here…
const BACKOFF_MAX_MS = 10000;    // …up to this cap
const NEAR_BOTTOM_PX = 40;       // "at the bottom" tolerance for auto-scroll
const NOTICE_MS = 6000;          // lifetime of a transient notice
const AVATAR_HUES = 8;           // .hue-0 … .hue-7 in style.css
const CLOSE_NORMAL = 1000;
const CLOSE_TOKEN_EXPIRED = 4001;
const GENERAL = 'general';       // the room every connection is in
const ROOM_NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;  // the server's rule for room names
const BADGE_MAX = 99;            // an unread badge shows "99+" past this
const MISSING_TEXT = 'Some messages may be missing';  // a room's view was rebuilt
const RELOAD_REPLAY = 100;       // a reload asks a room back for this many of its messages
const MAX_EPOCH_BYTES = 64;      // the longest epoch the server takes back in `since`

const encoder = new TextEncoder();
const $ = (id) => document.getElementById(id);
const el = {
  login: $('login'), loginForm: $('login-form'), loginButton: $('login-button'),
  username: $('username'), password: $('password'), loginError: $('login-error'),
  chat: $('chat'), me: $('me'), status: $('status'), countdown: $('countdown'),
  logout: $('logout-button'), online: $('online'), onlineCount: $('online-count'),
  messages: $('messages'), newMessages: $('new-messages'), notice: $('notice'),
  composer: $('composer'), input: $('message-input'), send: $('send-button'),
  counter: $('counter'), expiry: $('expiry'), empty: $('empty'),
  roomNav: $('room-nav'), rooms: $('rooms'), dms: $('dms'), dmsHeading: $('dms-heading'),
  roomTitle: $('room-title'), joinRoom: $('join-room'), joinForm: $('join-form'),
  joinInput: $('join-input'), joinButton: $('join-button'), joinHint: $('join-hint'),
};

// Everything tied to one login, in one place, so logout/expiry can reset it.
const session = {
  state: 'login',      // login | connecting | connected | disconnected | expired
  token: null,
  me: '',
  expiresAt: 0,        // unix seconds
  sessionEndsAt: Infinity,  // unix seconds: --max-session stops renewals here
  limits: { maxBytes: DEFAULT_MAX_BYTES, rate: 0 },
  pending: null,       // { id, text, room }: sent, not yet taken or refused
  unconfirmed: null,   // the pending message when its socket closed: a resumed
                       // room's `missed` may still show it was taken
  unread: 0,           // messages that arrived while the tab was hidden (the title)
  stuck: true,         // the view was at the bottom: keep it there on resize
  socket: null,        // events from any other (older) socket are ignored
  rooms: new Map(),    // name → room (see newRoom): general, the list, open DMs
  current: GENERAL,    // the room on screen
  roomsSupported: false,  // welcome listed `rooms`: an older server has general only
  allowed: [],         // welcome's `rooms`: names and prefix patterns ("team-*")
  retries: 0,          // failed attempts since the last welcome
  reconnectTimer: 0,
  countdownTimer: 0,
  renewTimer: 0,       // the next token renewal (see scheduleRenewal)
  noticeTimer: 0,
};
let socketsOpened = 0;
let sentCount = 0;     // numbers this tab's message ids

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

/** Two letters for a name: the first letters of its first and last words
 *  ("userA" → "UA", "ada_lovelace" → "AL"), or its first two ("bob" → "Bo"). */
function initials(name) {
  const words = name.split(/[\s._-]+|(?<=\p{Ll})(?=[\p{Lu}\d])/u).filter(Boolean);
  const first = (word) => Array.from(word)[0] || '';
  if (words.length >= 2) return (first(words[0]) + first(words[words.length - 1])).toUpperCase();
  const chars = Array.from(name);
  return (chars[0] || '?').toUpperCase() + (chars[1] || '').toLowerCase();
}

/** Initials circle; same name → same colour. The letters are drawn by
 *  CSS from data-initial so they stay out of the surrounding textContent. */
function avatar(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const node = make('span', `avatar hue-${hash % AVATAR_HUES}`);
  node.dataset.initial = initials(name);
  node.setAttribute('aria-hidden', 'true');
  return node;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** "14:02" today, "Yesterday 14:02", "28 Nov 14:02", "28 Nov 2023 14:02". */
function formatTime(date, now = new Date()) {
  const time = `${pad2(date.getHours())}:${pad2(date.getMinutes())}`;
  const midnight = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const today = midnight(now);
  const yesterday = midnight(new Date(today - 12 * 3600 * 1000));  // DST-safe
  const day = midnight(date);
  if (day === today) return time;
  if (day === yesterday) return `Yesterday ${time}`;
  const year = date.getFullYear() === now.getFullYear() ? '' : ` ${date.getFullYear()}`;
  return `${date.getDate()} ${MONTHS[date.getMonth()]}${year} ${time}`;
}

/** Appends `text` to `parent`, with each http(s) URL in it as a link. Built
 *  node by node: the text never goes through an HTML parser. */
function appendLinked(parent, text) {
  const pattern = /https?:\/\/\S+/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    // Punctuation that ends a sentence is not part of the link.
    const url = match[0].replace(/[.,;:!?)\]'"]+$/, '');
    const href = safeHref(url);
    if (!href) continue;
    parent.append(text.slice(last, match.index));
    const link = make('a', 'link', url);
    link.href = href;
    link.rel = 'noopener noreferrer';
    link.target = '_blank';
    parent.append(link);
    last = match.index + url.length;
  }
  parent.append(text.slice(last));
}

/** The URL if it parses as http: or https:, else null. */
function safeHref(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.href : null;
  } catch {
    return null;
  }
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
  session.unread = 0;
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

/** POST /auth → { token, expiresIn, sessionEndsAt }, or throw an Error with a human message.
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
  if (response.ok && typeof body.token === 'string') return grantFrom(body);
  throw new Error(authErrorText(response, body));
}

/** The parts of a /auth or /auth/refresh answer the page keeps. */
function grantFrom(body) {
  const end = Number(body.session_expires_at);
  return {
    token: body.token,
    expiresIn: Number(body.expires_in),
    sessionEndsAt: Number.isFinite(end) && end > 0 ? end : Infinity,
  };
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

function startSession({ token, expiresIn, sessionEndsAt }, username) {
  session.token = token;
  session.me = username;
  // An estimate until "welcome" brings the exact expires_at.
  session.expiresAt = expiresIn > 0 ? nowSeconds() + expiresIn : Infinity;
  session.sessionEndsAt = sessionEndsAt;
  resumeSession();
}

/** Opens the chat for the token in `session` (a login, or a reload, which
 *  brings back the DMs and joined rooms named in `rooms`, and where each
 *  room's view ended, `positions`, to resume from). */
function resumeSession(rooms = [], positions = {}) {
  session.retries = 0;
  session.pending = null;
  session.unconfirmed = null;
  resetRooms(rooms, positions);    // the new login may be someone else
  el.me.textContent = session.me;
  saveSession();
  showChat();
  startCountdown();
  scheduleRenewal();
  connect();
  el.input.focus();
}

// The session survives a reload in sessionStorage: this tab only, gone
// when the tab closes (README, "The browser front end", says why not
// localStorage).
function saveSession() {
  const { token, me, expiresAt, sessionEndsAt } = session;
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({
      token, me, expiresAt, sessionEndsAt: Number.isFinite(sessionEndsAt) ? sessionEndsAt : null,
      rooms: remembered(),
      positions: positions(),
    }));
  } catch { /* storage disabled or full: the session just won't survive a reload */ }
}

/** The stored session, if its token has not expired yet. */
function loadSession() {
  let stored = null;
  try {
    stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY));
  } catch { /* unreadable: start from the login form */ }
  if (!stored || typeof stored.token !== 'string' || typeof stored.me !== 'string') return null;
  if (!(Number(stored.expiresAt) > nowSeconds())) return null;
  return stored;
}

function forgetSession() {
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch { /* nothing stored */ }
}

/** Drop everything tied to the current token. */
function endSession() {
  clearTimeout(session.reconnectTimer);
  clearTimeout(session.renewTimer);
  session.renewTimer = 0;
  clearInterval(session.countdownTimer);
  hideNotice();
  forgetSession();
  const socket = session.socket;
  session.socket = null;           // so its close event is ignored
  if (socket) socket.close(CLOSE_NORMAL);
  session.token = null;
  session.pending = null;
  session.unconfirmed = null;
}

function logout() {
  endSession();
  writeHash(GENERAL);              // the next user starts in general
  setState('login');
  showLogin('', false);
  el.username.focus();
}

/** The token is dead: back to the login form, saying why. */
function endWith(state, message) {
  endSession();
  setState(state);
  el.username.value = el.username.value || session.me;
  showLogin(message, true);
  el.password.focus();             // the username is still filled in
}

function expireSession() {
  endWith('expired', 'Your session expired — please log in again.');
}

// ---- WebSocket ----

function connect() {
  clearTimeout(session.reconnectTimer);
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let url = `${scheme}//${location.host}/ws?token=${encodeURIComponent(session.token)}`;
  // A reconnect (or a reload) resumes general inside the welcome itself:
  // a browser cannot set the Jwtchat-Since header on a WebSocket.
  const since = resumeFrom(session.rooms.get(GENERAL));
  if (since) url += `&since=${encodeURIComponent(`${GENERAL}:${since.epoch}:${since.seq}`)}`;
  const socket = new WebSocket(url);
  socketsOpened += 1;
  session.socket = socket;
  session.welcomed = false;
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
  // Its fate is unknown: the text stays in the composer to send again,
  // unless resuming its room finds it was taken after all.
  if (session.pending) session.unconfirmed = session.pending;
  session.pending = null;
  // A refused upgrade (e.g. 401 for a stale token) only shows up as 1006,
  // so checking the expiry locally covers that case too.
  if (event.code === CLOSE_TOKEN_EXPIRED || tokenExpired()) return expireSession();
  const delay = Math.min(BACKOFF_FIRST_MS * 2 ** session.retries, BACKOFF_MAX_MS);
  session.retries += 1;
  setState('disconnected');
  if (session.welcomed) {
    session.reconnectTimer = setTimeout(reconnect, delay);
  } else {
    // Closed before welcome with a token we believe valid: the upgrade may
    // have been refused. A page cannot read that status, so ask
    // /auth/refresh: a 401 means the server no longer knows the token
    // (restarted with another secret, or the user was changed).
    checkToken().then((alive) => {
      if (alive && session.state === 'disconnected') {
        session.reconnectTimer = setTimeout(reconnect, delay);
      }
    });
  }
}

/** Whether the server still accepts our token. False after ending the
 *  session; true when unsure (offline, rate-limited): then keep trying. */
async function checkToken() {
  const result = await refreshToken();
  if (result === 'dead') {
    endWith('login', RESTARTED_TEXT);
    return false;
  }
  if (result === 'over') {
    expireSession();
    return false;
  }
  return session.token !== null;
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
    case 'subscribed': return onSubscribed(frame);
    case 'unsubscribed': return onUnsubscribed(frame);
    case 'join': return onPresence(frame, [String(frame.user)], []);
    case 'leave': return onPresence(frame, [], [String(frame.user)]);
    case 'presence': return onPresence(frame, names(frame.joined), names(frame.left));
    case 'message': return onMessage(frame);
    case 'error': return onError(frame);
    case 'expiring': return onExpiring(frame);
    case 'reauthed': return onExpiry(frame.expires_at);
    default: return;               // unknown type from a newer server
  }
}

/** Welcome describes `general`, and lists the other rooms this user may
 *  join: the page joins again the rooms and DMs it had open, and shows the
 *  room the URL names. */
function onWelcome(frame) {
  const wasReconnect = session.retries > 0;
  session.retries = 0;
  session.welcomed = true;
  session.me = String(frame.user);
  if (Number.isFinite(frame.expires_at)) session.expiresAt = frame.expires_at;
  const limits = frame.limits || {};
  if (Number.isFinite(limits.max_message_bytes) && limits.max_message_bytes > 0) {
    session.limits.maxBytes = limits.max_message_bytes;
  }
  if (Number.isFinite(limits.message_rate)) session.limits.rate = limits.message_rate;
  saveSession();
  const general = session.rooms.get(GENERAL);
  general.state = 'joined';
  setPresence(general, frame);
  el.me.textContent = session.me;
  renderTitle();
  renderCountdown();
  onGreeting(general, frame, false);
  setState('connected');
  setAllowedRooms(frame.rooms);
  // An older server has general only: a room from the URL cannot be had.
  const wanted = session.roomsSupported ? roomFromHash() : GENERAL;
  selectRoom(wanted ?? session.current);
  if (wasReconnect) addSystemLine(currentRoom(), 'Reconnected.');
}

/** A room's `online`, `online_count` and `online_truncated`, from a
 *  `welcome` (general) or a `subscribed`. */
function setPresence(room, frame) {
  room.online = new Set(names(frame.online));
  room.online.add(session.me);
  // online_count is the true number; an older server sends only the list.
  room.onlineTruncated = frame.online_truncated === true;
  room.onlineCount = Number.isInteger(frame.online_count)
    ? Math.max(frame.online_count, room.online.size) : room.online.size;
  if (room.name === session.current) renderOnline();
}

/** A room joined: its presence and history. Asked for by this page, or
 *  opened by the server (a first DM from someone): then it is new here,
 *  and its history is news. */
function onSubscribed(frame) {
  const name = String(frame.room);
  const isNew = !session.rooms.has(name);
  const room = knownRoom(name, true);
  if (!room) return;
  room.state = 'joined';
  setPresence(room, frame);
  onGreeting(room, frame, isNew);
  renderRoomState(room);
}

// ---- Resuming ----
// Each room remembers where its view ends: the `epoch` of its history and
// the last `seq` shown. A reconnect (or a reload) joins every room again
// with `since` (general in the /ws URL, the others in `subscribe`).
// `recovered: true` brings exactly the messages missed meanwhile; any other
// answer rebuilds the view from `history`, under a "missing" marker, unless
// that history itself shows that nothing after the last seq was lost.

/** The `since` to join `room` with, { epoch, seq }, or null when the page
 *  has no view of it yet (the first join after logging in). Notes what the
 *  page has seen, to tell news from what a reload shows again. */
function resumeFrom(room) {
  if (!room || !isEpoch(room.epoch)) {
    if (room) room.resume = null;
    return null;
  }
  room.resume = { seen: room.lastSeq };
  return { epoch: room.epoch, seq: room.replayAfter ?? room.lastSeq };
}

/** An epoch `since` can carry: `general:EPOCH:SEQ` splits at its colons. */
const isEpoch = (epoch) => typeof epoch === 'string' && epoch !== ''
  && !epoch.includes(':') && byteLength(epoch) <= MAX_EPOCH_BYTES;

/** A room's `welcome` (general) or `subscribed`: its epoch, and the
 *  messages it missed or its history (`news` when the server opened the
 *  room: a first DM from someone). */
function onGreeting(room, frame, news) {
  const resumed = room.resume;
  const seen = resumed ? resumed.seen : room.lastSeq;
  room.resume = null;
  room.replayAfter = null;
  const epoch = typeof frame.epoch === 'string' && frame.epoch ? frame.epoch : null;
  const history = Array.isArray(frame.history) ? frame.history : [];
  // A seq after `seen` is news; up to it, a reload's replay of its view.
  const split = (frames) => {
    addMessages(room, frames.filter((m) => !(m?.seq > seen)), false);
    addMessages(room, frames.filter((m) => m?.seq > seen), true);
  };
  if (epoch !== null && room.epoch === epoch && frame.recovered === true
      && Array.isArray(frame.missed)) {
    split(frame.missed);
  } else if (epoch !== null && room.epoch !== null
      && !(epoch === room.epoch && covers(history, seen, frame.last_seq))) {
    rebuildRoom(room, epoch, history);
  } else if (resumed && epoch !== null) {
    split(history);
  } else {
    // A first join, or a server without epochs (which never resumes).
    if (room.epoch === null) room.epoch = epoch;
    addMessages(room, history, news);
  }
  if (epoch !== null && room.epoch === epoch && Number.isSafeInteger(frame.last_seq)) {
    room.lastSeq = Math.max(room.lastSeq, frame.last_seq);
  }
  // The message in flight when the socket closed was not among the missed:
  // its text stays in the composer, to send again.
  if (session.unconfirmed?.room === room.name) session.unconfirmed = null;
  saveSession();
}

/** Whether `history`, of the epoch the page has seen up to seq `seen`,
 *  holds every message after it. */
function covers(history, seen, lastSeq) {
  const first = history.find((m) => Number.isSafeInteger(m?.seq));
  if (first) return first.seq <= seen + 1;
  return Number.isSafeInteger(lastSeq) ? lastSeq <= seen : seen === 0;
}

/** The room's view could not be brought up to date: its lines are
 *  replaced by `history`, under a marker saying messages may be missing. */
function rebuildRoom(room, epoch, history) {
  room.epoch = epoch;
  room.seenSeqs = new Set();
  room.lastSeq = 0;
  room.firstSeq = null;
  room.count = 0;
  roomLog(room).replaceChildren(missingMarker());
  addMessages(room, history, false);
  if (room.name !== session.current) return;
  renderEmpty();
  scrollToBottom();
}

/** A message of another epoch than the room's: the history its seqs
 *  belonged to was lost while the page was in the room (a server restarted
 *  without its data, Redis lost its data). Seqs start again; what was sent
 *  in between may be gone, and the view says so where it happened. */
function onNewEpoch(room, epoch) {
  const known = room.epoch !== null;
  room.epoch = epoch;
  room.seenSeqs = new Set();
  room.lastSeq = 0;
  room.firstSeq = null;
  if (known) roomLog(room).append(missingMarker());
}

function missingMarker() {
  const marker = make('div', 'system missing', MISSING_TEXT);
  marker.setAttribute('role', 'note');
  return marker;
}

/** Out of a room: asked for, or the renewed token no longer allows it
 *  (`reason: "forbidden"`), and then it leaves the list. */
function onUnsubscribed(frame) {
  const room = knownRoom(String(frame.room), false);
  if (!room || room.name === GENERAL) return;
  room.state = 'idle';
  room.open = false;
  saveSession();
  if (frame.reason === 'forbidden') {
    session.allowed = session.allowed.filter((name) => name !== room.name);
    showNotice(`You no longer have access to ${roomLabel(room)}.`);
  }
  if (isListed(room)) renderRoomState(room);
  else dropRoom(room);
}

function onMessage(frame) {
  const room = knownRoom(frameRoomName(frame), true);
  if (!room) return;
  markOpen(room);                  // a DM the server brought us into is listed now
  addMessages(room, [frame], true);
}

/** A frame's room: `general` when it names none (an older server). */
function frameRoomName(frame) {
  return frame.room === undefined ? GENERAL : String(frame.room);
}

/** A frame's list of names, as strings; anything else is no names. */
function names(list) {
  return Array.isArray(list) ? list.map(String) : [];
}

/** Users came into a room and went: `join` and `leave` carry one name,
 *  `presence` all the changes of one window, `left` applied after `joined`
 *  (a name in both came and went). The count follows the server's changes:
 *  while the list is truncated a name we don't know may still be online
 *  (and leave), so then every `left` name counts. */
function onPresence(frame, joined, left) {
  const room = knownRoom(frameRoomName(frame), false);
  if (!room) return;
  for (const name of joined) {
    if (!room.online.has(name)) room.onlineCount += 1;
    room.online.add(name);
  }
  for (const name of left) {
    if (room.online.delete(name) || room.onlineTruncated) room.onlineCount -= 1;
  }
  room.onlineCount = Math.max(room.onlineCount, room.online.size, 1);
  if (room.name === session.current) renderOnline();
  // A frame may name you if you joined within its window: your own
  // welcome already said so, and the log need not. In a DM, the other's
  // comings and goings say nothing the online list does not.
  const others = (names) => names.filter((name) => name !== session.me);
  const text = presenceText(others(joined), others(left));
  if (text && !room.peer) addSystemLine(room, text);
}

/** "userB joined" for one change; "3 people joined, 1 left" for several
 *  (one line, not one per name). */
function presenceText(joined, left) {
  if (joined.length + left.length === 1) {
    return joined.length ? `${joined[0]} joined` : `${left[0]} left`;
  }
  const people = (n) => `${n} ${n === 1 ? 'person' : 'people'}`;
  if (!left.length) return joined.length ? `${people(joined.length)} joined` : '';
  if (!joined.length) return `${people(left.length)} left`;
  return `${people(joined.length)} joined, ${left.length} left`;
}

// ---- Renewal ----

/** Renews the token before it expires, in the background too (a hidden
 *  tab keeps its session), for as long as --max-session allows: a token
 *  that already runs to the session's end cannot be renewed further. */
function scheduleRenewal() {
  clearTimeout(session.renewTimer);
  session.renewTimer = 0;
  if (!session.token || !(session.expiresAt < session.sessionEndsAt)) return;
  const left = Math.max(0, session.expiresAt - nowSeconds());
  const wait = left - Math.min(RENEW_LEAD_S, left / 2);
  session.renewTimer = setTimeout(renew, wait * 1000);
}

/** The server warns a minute before expiry; renewal is normally under way. */
function onExpiring(frame) {
  onExpiry(frame.expires_at);
  if (!session.renewTimer) scheduleRenewal();
}

/** POST /auth/refresh with the current token → 'ok' (the session has the
 *  new token), 'dead' (401 invalid_token), 'over' (401 session_expired),
 *  or 'unsure' (offline, rate-limited, logged out meanwhile). */
async function refreshToken() {
  const old = session.token;
  let response;
  try {
    response = await fetch('/auth/refresh', {
      method: 'POST',
      headers: { Authorization: `Bearer ${old}` },
    });
  } catch {
    return 'unsure';
  }
  const body = (await response.json().catch(() => null)) || {};
  if (session.token !== old || !old) return 'unsure';   // logged out or in again meanwhile
  if (response.status === 401) return body.error === 'session_expired' ? 'over' : 'dead';
  if (!response.ok || typeof body.token !== 'string') return 'unsure';
  const grant = grantFrom(body);
  session.token = grant.token;
  session.sessionEndsAt = grant.sessionEndsAt;
  if (grant.expiresIn > 0) session.expiresAt = nowSeconds() + grant.expiresIn;
  saveSession();
  return 'ok';
}

/** Renews, then hands the new token to the open socket ({"type":"reauth"});
 *  reconnects will use it too. */
async function renew() {
  session.renewTimer = 0;
  const result = await refreshToken();
  if (result === 'ok') {
    send({ type: 'reauth', token: session.token });
    scheduleRenewal();
  } else if (result === 'unsure' && session.token) {
    session.renewTimer = setTimeout(renew, 10000);
  } else if (result === 'dead') {
    endWith('login', 'Your session is no longer valid — please log in again.');
  } else if (result === 'over') {
    // The session cap is here: the countdown shows what is left.
    session.sessionEndsAt = Math.min(session.sessionEndsAt, session.expiresAt);
    saveSession();
  }
  renderCountdown();
}

function onExpiry(expiresAt) {
  if (Number.isFinite(expiresAt)) session.expiresAt = expiresAt;
  saveSession();
  renderCountdown();
}

// ---- Rendering ----

/** The current room's presence: who is in it, you included. */
function renderOnline() {
  const room = currentRoom();
  const known = [...room.online].sort((a, b) => a.localeCompare(b));
  const items = known.map(onlineItem);
  // A truncated list says how many it leaves out.
  const more = room.onlineCount - known.length;
  if (more > 0) items.push(make('li', 'more', `and ${more} more`));
  el.online.replaceChildren(...items);
  el.onlineCount.textContent = String(room.onlineCount);
}

/** One person; anyone but you is a button that opens your DM with them
 *  (a server without rooms has no DMs). */
function onlineItem(name) {
  const item = make('li');
  item.dataset.user = name;
  const parts = [avatar(name), make('span', 'name', name)];
  if (name === session.me) {
    item.append(...parts, make('span', 'you', ' (you)'));
  } else if (session.roomsSupported) {
    const button = make('button', 'person');
    button.type = 'button';
    button.title = `Message ${name}`;
    button.append(...parts);
    item.append(button);
  } else {
    item.append(...parts);
  }
  return item;
}

/** Adds messages to a room: `news` ones as they happen (unread unless on
 *  screen), or a history, which is not news. */
function addMessages(room, frames, news = false) {
  const shown = room.name === session.current;
  const stick = shown && isNearBottom();  // measure before the list grows
  let mine = false;
  let added = 0;
  let fromOthers = 0;
  for (const frame of frames) {
    if (!frame) continue;
    if (typeof frame.epoch === 'string' && frame.epoch !== room.epoch) onNewEpoch(room, frame.epoch);
    if (room.seenSeqs.has(frame.seq)) continue;
    if (frame.seq !== undefined) room.seenSeqs.add(frame.seq);
    if (Number.isSafeInteger(frame.seq)) {
      room.lastSeq = Math.max(room.lastSeq, frame.seq);
      room.firstSeq = Math.min(room.firstSeq ?? frame.seq, frame.seq);
    }
    roomLog(room).append(renderMessage(frame));
    added += 1;
    const own = String(frame.from) === session.me;
    if (own) onOwnMessage(frame);
    else fromOthers += 1;
    mine = mine || own;
  }
  if (!added) return;
  room.count += added;
  saveSession();                   // where the view ends, for a reload to resume
  if (news && fromOthers && !shown) {
    room.unread += fromOthers;
    renderRoomItem(room);
  }
  // Live messages from others (and those missed while away) are news in
  // the title while the tab is hidden.
  if (document.hidden && news && fromOthers) {
    session.unread += fromOthers;
    renderTitle();
  }
  if (!shown) return;
  renderEmpty();
  // My own message coming back means I just sent it: always show it.
  if (stick || mine) scrollToBottom();
  else el.newMessages.hidden = false;
}

function renderMessage(frame) {
  const from = String(frame.from ?? '?');
  const item = make('div', 'message');
  item.dataset.seq = String(frame.seq);
  const own = from === session.me;
  if (own) item.classList.add('own');

  const date = new Date(frame.ts);
  const time = make('time', 'time');
  if (!isNaN(date)) {
    time.textContent = formatTime(date);
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
  }
  const meta = make('div', 'meta');
  // Your own bubbles are marked by their side and colour, not your name.
  if (!own) meta.append(make('span', 'from', from), ' ');
  meta.append(time);
  const text = make('div', 'text');
  appendLinked(text, String(frame.text ?? ''));
  const bubble = make('div', 'bubble');
  bubble.append(meta, text);
  item.append(avatar(from), bubble);
  return item;
}

/** `(N) jwtchat — me` while hidden messages wait unread. */
function renderTitle() {
  const base = session.me ? `jwtchat — ${session.me}` : 'jwtchat';
  document.title = session.unread ? `(${session.unread}) ${base}` : base;
}

function onVisibilityChange() {
  if (!document.hidden && session.unread) {
    session.unread = 0;
    renderTitle();
  }
}

function addSystemLine(room, text) {
  const shown = room.name === session.current;
  const stick = shown && isNearBottom();
  roomLog(room).append(make('div', 'system', text));
  if (stick) scrollToBottom();     // a mere notice never yanks the view
}

/** "No messages yet" in a joined room without any. */
function renderEmpty() {
  const room = currentRoom();
  el.empty.hidden = !(room.state === 'joined' && room.count === 0);
}

/** After a resize (narrower window, on-screen keyboard), a view that was at
 *  the bottom stays there. */
function onResize() {
  if (session.stuck) scrollToBottom();
}

function isNearBottom() {
  const m = el.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight <= NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  el.messages.scrollTop = el.messages.scrollHeight;
  el.newMessages.hidden = true;
  session.stuck = true;
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

/** The session's end, shown only when the cap (--max-session) is near:
 *  renewal keeps the token alive until then, so its own expiry is noise. */
function renderCountdown() {
  const end = session.sessionEndsAt;
  const left = Math.max(0, Math.floor(end - nowSeconds()));
  el.expiry.hidden = !(left < SESSION_WARN_S);
  el.countdown.textContent = Number.isFinite(left)
    ? `${pad2(Math.floor(left / 60))}:${pad2(left % 60)}` : '--:--';
  el.countdown.classList.toggle('soon', left < 60);
}


// ---- Rooms ----
// Each room keeps its own messages, presence, unread count and draft; the
// view shows the current one. Room names come from the server and the URL:
// they reach the DOM only as text, and the URL's only once they pass as a
// room name.

function newRoom(name) {
  return {
    name,
    peer: dmPeer(name),            // a DM room's other user, else null
    open: false,                   // to be in: opened here, or put in by the server
    state: 'idle',                 // idle → joining (subscribe sent) → joined → leaving
    log: document.createDocumentFragment(),  // its lines while off screen
    count: 0,                      // its messages, for "No messages yet"
    seenSeqs: new Set(),           // `seq` is per room; a replayed history must not duplicate
    epoch: null,                   // the history its seqs belong to; null: no view of it yet
    lastSeq: 0,                    // the last seq shown (of `epoch`): a reconnect resumes after it
    firstSeq: null,                // the first seq shown (of `epoch`), for a reload's replay
    replayAfter: null,             // after a reload: resume from here, to show the last messages again
    resume: null,                  // { seen }: the join under way resumes; seqs up to `seen` are not news
    unread: 0,                     // messages from others while off screen
    online: new Set(),             // who is in it: everyone, or only some if onlineTruncated
    onlineCount: 0,                // how many are in it, however many `online` lists
    onlineTruncated: false,        // the server cut the list (--presence-list-max)
    draft: '',                     // the composer's text while off screen
    scrollTop: null,               // where its view was left; null: at the bottom
    item: null, button: null, badge: null,  // its entry in the list, once made
  };
}

const currentRoom = () => session.rooms.get(session.current);
const roomLabel = (room) => room.peer ?? `#${room.name}`;

/** Where a room's lines go: on screen, or aside until it is shown. */
function roomLog(room) {
  return room.name === session.current ? el.messages : room.log;
}

/** UTF-8 byte order, as the server sorts a DM's two names (JS's own `<`
 *  compares UTF-16 units, which puts U+E000–U+FFFF after emoji). */
function compareBytes(a, b) {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

/** A username inside a DM room's name: `%` as %25, then `:` as %3A, so
 *  the one `:` between the names is unambiguous. */
const escapeDmName = (name) => name.replaceAll('%', '%25').replaceAll(':', '%3A');
const unescapeDmName = (part) => part.replace(/%(25|3A)/g, (_, hex) => (hex === '25' ? '%' : ':'));

/** The DM room of two users: `dm:<a>:<b>`, the names in byte order. */
function dmRoom(me, other) {
  const [a, b] = compareBytes(me, other) <= 0 ? [me, other] : [other, me];
  return `dm:${escapeDmName(a)}:${escapeDmName(b)}`;
}

/** The other user of DM room `name`, or null unless it is `me`'s and
 *  spelled exactly as dmRoom spells it. */
function dmPeer(name, me = session.me) {
  const parts = name.startsWith('dm:') ? name.slice(3).split(':') : [];
  if (parts.length !== 2) return null;
  const [a, b] = parts.map(unescapeDmName);
  if (!a || !b || dmRoom(a, b) !== name) return null;
  if (a === me) return b;
  return b === me ? a : null;
}

/** A room name (`ops`), or a DM room of this user's. */
function isRoomName(name) {
  return ROOM_NAME.test(name) || dmPeer(name) !== null;
}

/** Whether welcome's list lets this user join `name`: listed, or starting
 *  with the prefix of a pattern such as "team-*" (as the server checks). */
function mayJoin(name) {
  return ROOM_NAME.test(name) && session.allowed.some((entry) => (entry.endsWith('*')
    ? name.startsWith(entry.slice(0, -1))
    : name === entry));
}

/** General and welcome's names stay listed even when refused (a click
 *  tries again); other rooms leave the list then. */
function isListed(room) {
  return room.name === GENERAL || session.allowed.includes(room.name);
}

/** In the list: listed by welcome, or open (a DM is, once it has a message or you opened it). */
const isShown = (room) => room.open || isListed(room);

/** The open rooms, which a reload opens again. */
function remembered() {
  return [...session.rooms.values()]
    .filter((room) => room.open && room.name !== GENERAL).map((room) => room.name);
}

/** Where the views of general and of the open rooms end, for a reload:
 *  { room: { epoch, seq, after } }. A reloaded page has lost its lines, so
 *  it resumes from `after`, up to RELOAD_REPLAY messages before `seq`,
 *  and shows those again. */
function positions() {
  const out = {};
  for (const room of session.rooms.values()) {
    if (room.epoch === null || !(room.open || room.name === GENERAL)) continue;
    const after = room.replayAfter ?? (room.firstSeq === null
      ? room.lastSeq : Math.max(room.firstSeq - 1, room.lastSeq - RELOAD_REPLAY, 0));
    out[room.name] = { epoch: room.epoch, seq: room.lastSeq, after };
  }
  return out;
}

/** A stored position (see positions), if it is well formed. */
function restorePosition(room, stored) {
  const p = stored && Object.hasOwn(stored, room.name) ? stored[room.name] : null;
  if (!p || !isEpoch(p.epoch)) return;
  if (!Number.isSafeInteger(p.seq) || !Number.isSafeInteger(p.after)) return;
  if (p.after < 0 || p.after > p.seq) return;
  room.epoch = p.epoch;
  room.lastSeq = p.seq;
  room.replayAfter = p.after;
}

/** Back to general alone, plus the open rooms of `names` (a reload), none
 *  of them joined until welcome, each to resume where `stored` says. */
function resetRooms(names, stored = {}) {
  for (const room of session.rooms.values()) room.item?.remove();
  session.rooms = new Map([[GENERAL, newRoom(GENERAL)]]);
  session.current = GENERAL;
  session.roomsSupported = false;
  session.allowed = [];
  el.messages.replaceChildren();
  for (const name of names.filter(isRoomName)) ensureRoom(name).open = true;
  for (const room of session.rooms.values()) restorePosition(room, stored);
  renderRoomList();
  renderJoinBox();
  showRoom(currentRoom());
}

/** The room called `name`, made if it is new here (see markOpen). */
function ensureRoom(name) {
  if (!session.rooms.has(name)) session.rooms.set(name, newRoom(name));
  return session.rooms.get(name);
}

/** The room a server frame names, or null. With `create`, one new to the
 *  page (a DM someone opened with you) is listed: the server sends its
 *  frames, so this connection is in it. */
function knownRoom(name, create) {
  const room = session.rooms.get(name);
  if (room || !create || !isRoomName(name)) return room ?? null;
  const added = ensureRoom(name);
  added.state = 'joined';
  markOpen(added);
  renderRoomState(added);
  return added;
}

/** The page means to stay in `room`: it is listed, and joined again after
 *  a reconnect or a reload. */
function markOpen(room) {
  if (room.open || room.name === GENERAL) return;
  room.open = true;
  renderRoomList();
  saveSession();
}

/** Takes a room off the list; off screen first, back to general. */
function dropRoom(room) {
  if (room.name === GENERAL) return;
  if (room.name === session.current) selectRoom(GENERAL);
  session.rooms.delete(room.name);
  room.item?.remove();
  renderRoomList();
  saveSession();
}

/** Welcome's `rooms`: the names are listed, to be joined when opened (a
 *  room costs a subscription, and a subscribe counts against the message
 *  rate); the open ones are joined again (a reconnect, a reload); patterns
 *  show the join box. Without the list, the server has general only. */
function setAllowedRooms(list) {
  session.roomsSupported = Array.isArray(list);
  session.allowed = names(list);
  for (const name of session.allowed.filter((entry) => ROOM_NAME.test(entry))) ensureRoom(name);
  for (const room of session.rooms.values()) {
    if (room.name === GENERAL) continue;
    room.state = 'idle';
    if (room.open) subscribe(room);
  }
  renderRoomList();
  renderJoinBox();
}

function subscribe(room) {
  if (room.name === GENERAL || !session.roomsSupported) return;
  const since = resumeFrom(room);
  const frame = { type: 'subscribe', room: room.name };
  if (since) frame.since = since;
  if (send(frame)) room.state = 'joining';
  renderRoomState(room);
}

/** Leaves a room; `unsubscribed` then takes it off the page. */
function unsubscribe(room) {
  if (send({ type: 'unsubscribe', room: room.name })) room.state = 'leaving';
}

/** Shows room `name`, opening it first if need be, and puts it in the URL. */
function selectRoom(name) {
  const room = ensureRoom(name);
  markOpen(room);
  if (room.state === 'idle') subscribe(room);
  showRoom(room);
  writeHash(room.name);
}

/** Opens your DM with `user`: subscribing to a DM room of your own is
 *  allowed, and shows its history before you write. */
function openDm(user) {
  if (!session.roomsSupported || user === session.me) return;
  selectRoom(dmRoom(session.me, user));
  el.input.focus();
}

/** Puts `room` on screen: its lines, presence and draft, where its view
 *  was left; it has nothing unread any more. */
function showRoom(room) {
  const previous = currentRoom();
  if (previous !== room) {
    previous.scrollTop = session.stuck ? null : el.messages.scrollTop;
    previous.draft = el.input.value;
    previous.log.append(...el.messages.childNodes);
    session.current = room.name;
    renderRoomItem(previous);
    el.messages.append(room.log);  // moves its lines out of the fragment
    el.input.value = room.draft;
    if (room.scrollTop === null) {
      scrollToBottom();
    } else {
      el.messages.scrollTop = room.scrollTop;
      el.newMessages.hidden = true;
      session.stuck = isNearBottom();
    }
  }
  room.unread = 0;
  renderRoomItem(room);
  // In the phone-width strip the room may be scrolled out of sight.
  room.button?.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  el.roomTitle.textContent = roomLabel(room);
  renderOnline();
  renderEmpty();
  updateComposer();
}

/** An error about a room. Not subscribed where the page thought it was:
 *  join again. Refused: the room is not joined (and leaves the list
 *  unless welcome listed it); the notice says why. */
function onRoomRefused(frame) {
  const room = session.rooms.get(String(frame.room));
  if (!room || room.name === GENERAL) return;
  if (frame.code === 'not_subscribed') {
    if (room.state === 'joined') {
      room.state = 'idle';
      subscribe(room);
    }
  } else if (['bad_room', 'forbidden', 'too_many_rooms'].includes(frame.code)) {
    room.state = 'idle';
    room.open = false;
    saveSession();
    if (isListed(room)) renderRoomState(room);
    else dropRoom(room);
  }
}

/** The room named by a URL hash (`#room=ops`, `#ops`, a DM room's name
 *  percent-encoded): general for none, null for anything that is not a
 *  room of yours. Anyone can write a link's hash: it is only ever used
 *  after this check. */
function parseRoomHash(hash) {
  const value = hash.replace(/^#/, '').replace(/^room=/, '');
  if (!value) return GENERAL;
  try {
    const name = decodeURIComponent(value);
    return isRoomName(name) ? name : null;
  } catch {
    return null;                   // malformed percent-encoding
  }
}

/** The URL's room, if this page may go there: general, a room welcome
 *  lists (or a pattern of it allows), a DM of this user's, or one already
 *  open. A link is anybody's to write: it must not make the page join, or
 *  make, a room the user never chose. */
function roomFromHash() {
  const name = parseRoomHash(location.hash);
  if (name === null) return null;
  const open = session.rooms.get(name)?.open;
  return name === GENERAL || mayJoin(name) || dmPeer(name) !== null || open ? name : null;
}

/** The current room in the URL, so a reload comes back to it. Replaced,
 *  not pushed: Back leaves the chat rather than stepping through rooms. */
function writeHash(name) {
  const hash = name === GENERAL ? '' : `#room=${encodeURIComponent(name)}`;
  if (location.hash === hash) return;
  history.replaceState(history.state, '', `${location.pathname}${location.search}${hash}`);
}

/** The URL's hash was edited: go to its room, or put the current one back. */
function onHashChange() {
  if (session.state !== 'connected' || !session.roomsSupported) return;
  selectRoom(roomFromHash() ?? session.current);
}

/** Alt+ArrowUp / Alt+ArrowDown: the previous / next room in the list. */
function onRoomKeydown(event) {
  const step = { ArrowUp: -1, ArrowDown: 1 }[event.key];
  if (!step || !event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
  if (el.chat.hidden || !session.roomsSupported) return;
  event.preventDefault();
  const order = roomOrder();
  const next = order[order.indexOf(currentRoom()) + step];
  if (next) selectRoom(next.name);
}

/** The list's order: general, the other rooms by name, then the DMs by
 *  the other user's name. */
function roomOrder() {
  const all = [...session.rooms.values()].filter(isShown);
  const byName = (a, b) => (b.name === GENERAL) - (a.name === GENERAL) || a.name.localeCompare(b.name);
  return [
    ...all.filter((room) => !room.peer).sort(byName),
    ...all.filter((room) => room.peer).sort((a, b) => a.peer.localeCompare(b.peer)),
  ];
}

/** Rebuilds the list when rooms come or go (unread counts and the current
 *  room change in place: see renderRoomItem). */
function renderRoomList() {
  const order = roomOrder();
  el.rooms.replaceChildren(...order.filter((room) => !room.peer).map(roomItem));
  el.dms.replaceChildren(...order.filter((room) => room.peer).map(roomItem));
  el.dmsHeading.hidden = el.dms.children.length === 0;
  el.roomNav.hidden = !session.roomsSupported;
  el.roomTitle.hidden = !session.roomsSupported;
}

function roomItem(room) {
  if (!room.item) {
    room.item = make('li');
    room.item.dataset.room = room.name;
    room.button = make('button', room.peer ? 'room dm' : 'room');
    room.button.type = 'button';
    if (room.peer) room.button.append(avatar(room.peer));
    room.badge = make('span', 'badge');
    room.button.append(make('span', 'name', room.peer ?? room.name), room.badge);
    room.item.append(room.button);
  }
  renderRoomItem(room);
  return room.item;
}

/** A room's entry: joined or not, on screen or not, its unread badge. */
function renderRoomItem(room) {
  if (!room.item) return;
  room.item.dataset.state = room.state;
  room.button.setAttribute('aria-current', String(room.name === session.current));
  const n = room.unread;
  room.badge.hidden = n === 0;
  room.badge.textContent = n > BADGE_MAX ? `${BADGE_MAX}+` : String(n || '');
  room.badge.title = `${n} unread`;
}

/** A room was joined or refused: its entry, and the view if it is shown. */
function renderRoomState(room) {
  renderRoomItem(room);
  if (room.name !== session.current) return;
  renderEmpty();
  updateComposer();
}

function onRoomListClick(event) {
  const item = event.target.closest('li[data-room]');
  if (item) selectRoom(item.dataset.room);
}

function onOnlineClick(event) {
  const button = event.target.closest('button.person');
  if (button) openDm(button.parentElement.dataset.user);
}

// ---- Joining a room by name ----

/** The name box, for welcome's patterns ("team-*"). */
function renderJoinBox() {
  el.joinRoom.hidden = !session.allowed.some((entry) => entry.endsWith('*'));
  el.joinInput.placeholder = `${joinPrefixes()[0] ?? ''}…`;
  onJoinInput();
}

const joinPrefixes = () => session.allowed
  .filter((entry) => entry.endsWith('*')).map((entry) => entry.slice(0, -1));

/** Why `name` cannot be joined, or '' when it can. */
function joinProblem(name) {
  if (!ROOM_NAME.test(name)) {
    return 'Use a–z, 0–9, - and _ (at most 32), starting with a letter or digit.';
  }
  return mayJoin(name) ? '' : `You may join only ${joinHint()}.`;
}

/** What the patterns allow: "names starting with team-". */
function joinHint() {
  const prefixes = joinPrefixes();
  return prefixes.includes('') ? 'any name' : `names starting with ${prefixes.join(' or ')}`;
}

/** Checks the name as it is typed: the hint turns into the problem. */
function onJoinInput() {
  const name = el.joinInput.value.trim();
  const problem = name ? joinProblem(name) : '';
  const hint = joinHint();
  el.joinHint.textContent = problem || hint.charAt(0).toUpperCase() + hint.slice(1);
  el.joinHint.classList.toggle('error', problem !== '');
  el.joinInput.setAttribute('aria-invalid', String(problem !== ''));
  el.joinButton.disabled = !name || problem !== '';
}

function onJoinSubmit(event) {
  event.preventDefault();
  const name = el.joinInput.value.trim();
  if (!name || joinProblem(name)) return onJoinInput();
  el.joinInput.value = '';
  el.joinRoom.open = false;
  onJoinInput();
  selectRoom(name);
  el.input.focus();
}

// ---- Composer ----

function canSend(text) {
  return session.state === 'connected'
    && session.socket?.readyState === WebSocket.OPEN
    && currentRoom().state === 'joined'
    && !session.pending            // one message in flight at a time
    && text.trim() !== ''
    && byteLength(text) <= session.limits.maxBytes;
}

/** Refresh the byte counter and the Send button after any change. The
 *  counter shows only near the server's limit. */
function updateComposer() {
  const text = el.input.value;
  const bytes = byteLength(text);
  const max = session.limits.maxBytes;
  const over = bytes > max;
  el.counter.textContent = `${bytes} / ${max}`;
  el.counter.hidden = bytes < max * COUNTER_FROM;
  el.counter.classList.toggle('over', over);
  el.input.classList.toggle('over', over);
  el.input.setAttribute('aria-invalid', String(over));
  el.send.disabled = !canSend(text);
}

function sendMessage() {
  const text = el.input.value;
  if (!canSend(text)) return;
  // No local echo: the message shows when the server sends it back, so
  // every client sees the server's order. The text stays in the composer
  // until then: a refused message is not lost.
  sentCount += 1;
  const id = `${Date.now().toString(36)}-${sentCount}`;
  const room = session.current;
  session.pending = { id, text, room };
  // Without `room` a message goes to general, as with an older server.
  send(room === GENERAL ? { type: 'message', text, id } : { type: 'message', room, text, id });
  updateComposer();
  el.input.focus();
}

/** My message came back: taken. Clear its text from the composer (or from
 *  the draft of the room it was written in) unless it was edited. It may
 *  also be the one in flight when the socket closed, found among a resumed
 *  room's `missed`: that one matches by its id only. */
function onOwnMessage(frame) {
  const unconfirmed = session.unconfirmed;
  if (unconfirmed && frame.id !== undefined && frame.id === unconfirmed.id) {
    session.unconfirmed = null;
    return taken(unconfirmed);
  }
  const pending = session.pending;
  // An older server does not echo ids: then the same text is the match.
  if (!pending || (frame.id ?? pending.id) !== pending.id) return;
  if (frame.id === undefined && frame.text !== pending.text) return;
  session.pending = null;
  taken(pending);
}

/** Clears a taken message's text from where it was written. */
function taken(pending) {
  const room = session.rooms.get(pending.room);
  if (pending.room === session.current) {
    if (el.input.value === pending.text) el.input.value = '';
  } else if (room && room.draft === pending.text) {
    room.draft = '';
  }
  updateComposer();
}

function onError(frame) {
  const message = String(frame.message || frame.code || 'Error');
  if (frame.room !== undefined) onRoomRefused(frame);
  const pending = session.pending;
  if (pending && frame.id === pending.id) {
    // Refused: the text is still in the composer, ready to send again.
    session.pending = null;
    updateComposer();
    return showNotice(`Not sent: ${message}`);
  }
  showNotice(message);
}

/** Sends a frame on the open socket; false when there is none. */
function send(frame) {
  if (session.socket?.readyState !== WebSocket.OPEN) return false;
  session.socket.send(JSON.stringify(frame));
  return true;
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
  resetRooms([]);
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
  el.roomNav.addEventListener('click', onRoomListClick);
  el.online.addEventListener('click', onOnlineClick);
  el.joinForm.addEventListener('submit', onJoinSubmit);
  el.joinInput.addEventListener('input', onJoinInput);
  document.addEventListener('keydown', onRoomKeydown);
  window.addEventListener('hashchange', onHashChange);
  el.messages.addEventListener('scroll', () => { session.stuck = isNearBottom(); });
  new ResizeObserver(onResize).observe(el.messages);
  window.visualViewport?.addEventListener('resize', onResize);
  document.addEventListener('visibilitychange', onVisibilityChange);
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
      get sessionEndsAt() { return session.sessionEndsAt; },
      get onlineCount() { return currentRoom().onlineCount; },
      get room() { return session.current; },
      formatTime: (ms, nowMs) => formatTime(new Date(ms), new Date(nowMs)),
      initials,
      dmRoom,
      dmPeer,
      parseRoomHash,
    }),
  });
  const stored = loadSession();
  if (stored) {
    // A reload: carry on with the same session.
    session.token = stored.token;
    session.me = stored.me;
    session.expiresAt = Number(stored.expiresAt);
    session.sessionEndsAt = Number(stored.sessionEndsAt) || Infinity;
    const rooms = Array.isArray(stored.rooms) ? stored.rooms.map(String) : [];
    const where = typeof stored.positions === 'object' && stored.positions !== null
      ? stored.positions : {};
    return resumeSession(rooms, where);
  }
  forgetSession();
  setState('login');
  el.username.focus();
}

init();
