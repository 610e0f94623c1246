// The public dialects, as any outside client speaks them: hub HTTP (form
// bodies), sendapi and the root extensions (JSON, HTTP Basic), pool (JSON,
// optional Bearer token), and the hub WebSocket at /ws.

import { basicAuth } from './sms.js';

/** An answer that is not JSON, or a transport failure. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function json(resp) {
  const text = await resp.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(`HTTP ${resp.status}`, resp.status);
  }
}

/** hub HTTP (`/signup`, `/login`): form fields in, `{code, token}` out. */
export async function hubPost(path, fields) {
  const resp = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(fields),
    credentials: 'omit',
  });
  return json(resp);
}

/**
 * sendapi or a root extension: `{status, body}`; `body` is the JSON answer
 * (`{error, message}` on a refusal).
 */
export async function sendapi(method, path, creds, body) {
  const headers = { authorization: basicAuth(creds.user, creds.password) };
  const init = { method, headers, credentials: 'omit' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  return { status: resp.status, body: await json(resp) };
}

/** A pool route: the body's `code` carries the result. */
export async function pool(method, path, { token, basic, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  else if (basic) headers.authorization = basicAuth(basic.user, basic.password);
  const init = { method, headers, credentials: 'omit' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  return json(await fetch(path, init));
}

/**
 * The hub WebSocket. `request` sends a `CS…` frame and resolves with the
 * matching `SC…` answer; pushes and errors go to `onPush`.
 */
export class Hub {
  constructor({ onPush, onClose }) {
    this.onPush = onPush;
    this.onClose = onClose;
    this.waiting = new Map();
    this.ws = null;
  }

  connect() {
    const url = new URL('/ws', window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      this.ws = ws;
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new ApiError('WebSocket', 0)));
      ws.addEventListener('message', (ev) => this.frame(ev.data));
      ws.addEventListener('close', (ev) => {
        for (const queue of this.waiting.values()) {
          for (const w of queue) w.reject(new ApiError('WebSocket closed', 0));
        }
        this.waiting.clear();
        if (this.ws === ws) {
          this.ws = null;
          this.onClose(ev);
        }
      });
    });
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  frame(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== 'object' || typeof msg.protocol !== 'string') return;
    const queue = this.waiting.get(msg.protocol);
    if (queue && queue.length > 0) {
      const w = queue.shift();
      clearTimeout(w.timer);
      w.resolve(msg);
      return;
    }
    if (msg.protocol === 'SCError') {
      // A refusal before login (-100) or of a frame: fail the oldest wait.
      for (const q of this.waiting.values()) {
        if (q.length > 0) {
          const w = q.shift();
          clearTimeout(w.timer);
          w.resolve(msg);
          return;
        }
      }
    }
    this.onPush(msg);
  }

  request(frame) {
    if (!this.open) return Promise.reject(new ApiError('WebSocket closed', 0));
    const answer = `SC${frame.protocol.slice(2)}`;
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      w.timer = setTimeout(() => {
        const q = this.waiting.get(answer) || [];
        const i = q.indexOf(w);
        if (i >= 0) q.splice(i, 1);
        reject(new ApiError(`${answer}: no answer`, 0));
      }, 15000);
      if (!this.waiting.has(answer)) this.waiting.set(answer, []);
      this.waiting.get(answer).push(w);
      this.ws.send(JSON.stringify(frame));
    });
  }

  close() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
  }
}
