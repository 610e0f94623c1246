// The console: wiring of the forms to the public dialects. Everything shown
// from the server goes through textContent (never innerHTML).

import { ApiError, Hub, hubPost, pool, sendapi } from './api.js';
import { codeText, initialLanguage, language, setLanguage, t } from './i18n.js';
import { extractCode, formatTime, parseMobiles, parseParams } from './sms.js';

const $ = (id) => document.getElementById(id);

const state = {
  user: null,
  password: null,
  token: null,
  balance: null,
  hub: null,
  leases: new Map(), // number -> {item, until}
  pendingItem: null, // the item of the last CSMobileNum (its pushes follow)
  messages: [], // {number, text, at}
  lastStatus: null, // the task status answer shown
  editing: { sig: null, tpl: null }, // ids of the rows being edited
  signatures: [], // the last lists shown
  templates: [],
};

// ----- small DOM helpers -----------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// Lines whose text is a label: said again when the language changes.
const relabelled = new Map();

/** Shows `msg` (a text, or a function giving a label) in the line `id`. */
function say(id, msg, ok = true) {
  const p = $(id);
  if (typeof msg === 'function') relabelled.set(id, msg);
  else relabelled.delete(id);
  p.textContent = typeof msg === 'function' ? msg() : msg;
  p.classList.toggle('error', !ok);
}

function notice(msg) {
  say('notice', msg);
  $('notice').hidden = !$('notice').textContent;
}

function statusLabel(s) {
  const key = `status_${s}`;
  const v = t(key);
  return v === key ? String(s) : v;
}

/** A sendapi refusal as text: the seed's error code and message. */
function apiRefusal(r) {
  if (r.body && typeof r.body.error === 'string') return `${r.body.error} ${r.body.message ?? ''}`.trim();
  if (r.body && typeof r.body.message === 'string') return `HTTP ${r.status}: ${r.body.message}`;
  return `HTTP ${r.status}`;
}

/** Runs a form's action with its button disabled; failures are reported. */
function onSubmit(formId, resultId, action) {
  $(formId).addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await guarded(ev.submitter || $(formId).querySelector('[type=submit]'), resultId, action);
  });
}

async function guarded(button, resultId, action) {
  if (button) button.disabled = true;
  say(resultId, () => t('busy'));
  try {
    await action();
  } catch (e) {
    say(resultId, () => (e instanceof ApiError && e.status === 0 ? `${t('network')} (${e.message})` : t('network')), false);
  } finally {
    if (button) button.disabled = false;
  }
}

function creds() {
  if (!state.user) throw new NotLoggedIn();
  return { user: state.user, password: state.password };
}

class NotLoggedIn extends Error {}

function needLogin(resultId, action) {
  return async () => {
    if (!state.user) {
      say(resultId, () => t('login_first'), false);
      return;
    }
    await action();
  };
}

// ----- tabs ------------------------------------------------------------------

function selectTab(tab, focus = false) {
  for (const b of document.querySelectorAll('[role=tab]')) {
    const on = b === tab;
    b.setAttribute('aria-selected', String(on));
    b.tabIndex = on ? 0 : -1;
    $(b.getAttribute('aria-controls')).hidden = !on;
  }
  if (focus) tab.focus();
}

function initTabs() {
  const tabs = [...document.querySelectorAll('[role=tab]')];
  for (const tab of tabs) {
    tab.addEventListener('click', () => selectTab(tab));
    tab.addEventListener('keydown', (ev) => {
      const i = tabs.indexOf(tab);
      let next = null;
      if (ev.key === 'ArrowRight') next = tabs[(i + 1) % tabs.length];
      else if (ev.key === 'ArrowLeft') next = tabs[(i - 1 + tabs.length) % tabs.length];
      else if (ev.key === 'Home') next = tabs[0];
      else if (ev.key === 'End') next = tabs[tabs.length - 1];
      if (next) {
        ev.preventDefault();
        selectTab(next, true);
      }
    });
  }
}

// ----- account and the hub session ------------------------------------------

function showAccount() {
  const inside = state.user !== null;
  $('who').hidden = !inside;
  $('auth-form').hidden = inside;
  $('account-info').hidden = !inside;
  $('who-user').textContent = state.user ?? '';
  $('balance').textContent = state.balance === null ? '–' : String(state.balance);
}

async function enter(kind) {
  const user = $('auth-user').value.trim();
  const password = $('auth-password').value;
  const r = await hubPost(kind === 'signup' ? '/signup' : '/login', { user, password });
  if (r.code !== 0 || typeof r.token !== 'string') {
    say('auth-result', () => codeText(kind === 'signup' ? 'signup_codes' : 'login_codes', r.code), false);
    return;
  }
  state.user = user;
  state.password = password;
  state.token = r.token;
  $('auth-password').value = '';
  say('auth-result', '');
  notice('');
  showAccount();
  say('conn', () => t(kind === 'signup' ? 'signed_up' : 'logged_in', { user }));
  $('reconnect').hidden = true;
  await connectHub();
}

async function connectHub() {
  if (state.hub) state.hub.close();
  const hub = new Hub({ onPush, onClose: onHubClose });
  state.hub = hub;
  try {
    await hub.connect();
  } catch {
    say('conn', () => t('disconnected'));
    $('reconnect').hidden = false;
    return;
  }
  await refreshBalance();
}

/** CSLogin again with the session's token: SCLogin carries the balance. */
async function refreshBalance() {
  if (!state.hub || !state.hub.open || !state.token) return;
  const r = await state.hub.request({ protocol: 'CSLogin', token: state.token, gps: '' });
  if (r.code === 0 && r.data && r.data.userInfo) {
    state.balance = r.data.userInfo.balance;
    showAccount();
  } else {
    notice(() => codeText('ws_login_codes', r.code));
  }
}

function leave(message) {
  if (state.hub) {
    const hub = state.hub;
    state.hub = null;
    hub.close();
  }
  state.user = null;
  state.password = null;
  state.token = null;
  state.balance = null;
  state.leases.clear();
  // Nothing of this user stays on the page for the next one.
  state.messages = [];
  state.signatures = [];
  state.templates = [];
  state.lastStatus = null;
  editMode('sig', null);
  editMode('tpl', null);
  renderLeases();
  renderMessages();
  renderSignatures();
  renderTemplates();
  $('task-summary').hidden = true;
  $('recipient-table').hidden = true;
  showAccount();
  say('conn', message);
  $('reconnect').hidden = true;
  selectTab($('tab-account'));
}

function onHubClose() {
  if (state.user === null) return;
  say('conn', () => t('disconnected'));
  $('reconnect').hidden = false;
}

function onPush(msg) {
  switch (msg.protocol) {
    case 'PushMobileNum':
      if (typeof msg.mobileNum === 'string' || typeof msg.mobileNum === 'number') {
        const item = state.pendingItem ?? '';
        state.leases.set(String(msg.mobileNum), { item, until: msg.useTimestamp });
        renderLeases();
      }
      break;
    case 'PushRecvMsg':
      addMessage(String(msg.mobileNum ?? ''), String(msg.msg ?? ''));
      break;
    case 'PushKickout': {
      const key = [1, 2, 3].includes(msg.state) ? `kickout_${msg.state}` : 'kickout_n';
      notice(() => t(key));
      leave(() => t(key));
      break;
    }
    default:
      break;
  }
}

// ----- numbers ----------------------------------------------------------------

function renderLeases() {
  const body = $('lease-table').tBodies[0];
  body.replaceChildren();
  const select = $('sendmsg-number');
  const chosen = select.value;
  select.replaceChildren();
  for (const [number, l] of state.leases) {
    body.append(el('tr', {}, el('td', { class: 'mono' }, number), el('td', {}, l.item), el('td', {}, formatTime(l.until, language()))));
    select.append(el('option', { value: number }, `${number} (${l.item})`));
  }
  if (state.leases.has(chosen)) select.value = chosen;
  $('lease-empty').hidden = state.leases.size > 0;
}

function messageItem(m) {
  const text = el('p', { class: 'sms-text' });
  const found = extractCode(m.text);
  if (found) {
    text.append(found.before, el('mark', { class: 'code', 'aria-label': `${t('code_label')} ${found.code}` }, found.code), found.after);
  } else {
    text.append(m.text);
  }
  return el(
    'li',
    { class: 'sms' },
    el('p', { class: 'sms-meta' }, el('span', {}, t('sms_from', { number: m.number })), ' · ', el('time', {}, m.at.toLocaleTimeString(language()))),
    text,
  );
}

function addMessage(number, text) {
  const m = { number, text, at: new Date() };
  state.messages.push(m);
  $('messages').prepend(messageItem(m));
  $('messages-empty').hidden = true;
}

function renderMessages() {
  $('messages').replaceChildren(...state.messages.map(messageItem).reverse());
  $('messages-empty').hidden = state.messages.length > 0;
}

async function lease() {
  if (!state.hub || !state.hub.open) {
    say('lease-result', () => t('login_first'), false);
    return;
  }
  const item = $('lease-item').value.trim();
  const frame = { protocol: 'CSMobileNum', itemId: item, count: Number($('lease-count').value) };
  const area = $('lease-area').value.trim();
  const operator = $('lease-operator').value;
  const custom = $('lease-custom').value.trim();
  if (area) frame.area = area;
  if (operator) frame.operator = operator;
  if (custom) frame.customNum = custom;
  const before = state.leases.size;
  state.pendingItem = item;
  const r = await state.hub.request(frame);
  if (r.code !== 0) {
    say('lease-result', () => codeText('lease_codes', r.code), false);
    return;
  }
  // The pushes follow the answer on the same socket; the balance after them.
  await refreshBalance();
  say('lease-result', () => t('leased', { n: Math.max(state.leases.size - before, 0) }));
}

async function sendFromNumber() {
  if (!state.hub || !state.hub.open) {
    say('sendmsg-result', () => t('login_first'), false);
    return;
  }
  const number = $('sendmsg-number').value;
  const l = state.leases.get(number);
  const r = await state.hub.request({ protocol: 'CSSendMsg', itemId: l ? l.item : '', mobileNum: number, msg: $('sendmsg-text').value });
  if (r.code !== 0) {
    say('sendmsg-result', () => codeText('sendmsg_codes', r.code), false);
    return;
  }
  $('sendmsg-text').value = '';
  say('sendmsg-result', () => t('sent'));
  await refreshBalance();
}

// ----- sending (sendapi) ----------------------------------------------------------

function statusCell(s) {
  return el('td', { class: `audit audit-${String(s).replace(/[^a-z]/g, '')}` }, statusLabel(s));
}

/** A row's Edit and Delete buttons (they name the row for screen readers). */
function rowActions(id, onEdit, onDelete) {
  const edit = el('button', { type: 'button', class: 'secondary small', 'aria-label': `${t('edit')} ${id}` }, t('edit'));
  const del = el('button', { type: 'button', class: 'secondary small', 'aria-label': `${t('delete')} ${id}` }, t('delete'));
  edit.addEventListener('click', onEdit);
  del.addEventListener('click', onDelete);
  return el('td', { class: 'row-actions' }, edit, del);
}

/** Puts a form in edit mode for `id` (null: back to creating). */
function editMode(prefix, id) {
  state.editing[prefix] = id;
  const submit = $(`${prefix}-form`).querySelector('[type=submit]');
  submit.dataset.i18n = id === null ? 'create' : 'save_changes';
  submit.textContent = t(submit.dataset.i18n);
  $(`${prefix}-cancel`).hidden = id === null;
  $(`${prefix}-editing`).hidden = id === null;
  say(`${prefix}-editing`, id === null ? '' : () => t('editing', { id }));
}

async function listSignatures() {
  const r = await sendapi('GET', '/v1/signature', creds());
  if (r.status !== 200) {
    say('sig-result', apiRefusal(r), false);
    return false;
  }
  state.signatures = r.body.items;
  renderSignatures();
  return true;
}

function renderSignatures() {
  const body = $('sig-table').tBodies[0];
  body.replaceChildren(
    ...state.signatures.map((s) =>
      el(
        'tr',
        {},
        el('td', { class: 'mono' }, s.id),
        el('td', {}, s.signature),
        el('td', {}, s.source),
        statusCell(s.audit_status),
        el('td', {}, s.reject_reason),
        rowActions(
          s.id,
          () => {
            $('sig-text').value = s.signature;
            $('sig-source').value = s.source;
            editMode('sig', s.id);
            $('sig-text').focus();
          },
          (ev) => guarded(ev.currentTarget, 'sig-result', () => deleteSignature(s.id)),
        ),
      ),
    ),
  );
}

async function listTemplates() {
  const r = await sendapi('GET', '/v1/template', creds());
  if (r.status !== 200) {
    say('tpl-result', apiRefusal(r), false);
    return false;
  }
  state.templates = r.body.items;
  renderTemplates();
  return true;
}

function renderTemplates() {
  const body = $('tpl-table').tBodies[0];
  body.replaceChildren(
    ...state.templates.map((x) =>
      el(
        'tr',
        {},
        el('td', { class: 'mono' }, x.id),
        el('td', { class: 'mono' }, x.sign_id),
        el('td', {}, x.name),
        el('td', {}, t(`type_${x.type}`)),
        el('td', {}, x.template),
        statusCell(x.audit_status),
        el('td', {}, x.reject_reason),
        rowActions(
          x.id,
          () => {
            $('tpl-sign').value = x.sign_id;
            $('tpl-name').value = x.name;
            $('tpl-content').value = x.template;
            $('tpl-type').value = String(x.type);
            $('tpl-desc').value = x.description ?? '';
            editMode('tpl', x.id);
            $('tpl-name').focus();
          },
          (ev) => guarded(ev.currentTarget, 'tpl-result', () => deleteTemplate(x.sign_id, x.id)),
        ),
      ),
    ),
  );
}

/** Creates a signature, or saves the one being edited (back to pending). */
async function saveSignature() {
  const editing = state.editing.sig;
  const body = { signature: $('sig-text').value.trim(), source: $('sig-source').value.trim() };
  if (editing !== null) body.sign_id = editing;
  const r = await sendapi(editing === null ? 'POST' : 'PUT', '/v1/signature', creds(), body);
  if (r.status !== 200) {
    say('sig-result', apiRefusal(r), false);
    return;
  }
  const id = r.body.sign_id;
  editMode('sig', null);
  $('sig-text').value = '';
  $('sig-source').value = '';
  $('tpl-sign').value = String(id);
  $('task-sign').value = String(id);
  if (await listSignatures()) say('sig-result', () => t(editing === null ? 'created_sig' : 'saved_sig', { id }));
}

async function deleteSignature(id) {
  const r = await sendapi('DELETE', '/v1/signature', creds(), { sign_id: id });
  if (r.status !== 200) {
    say('sig-result', apiRefusal(r), false);
    return;
  }
  if (state.editing.sig === id) editMode('sig', null);
  if (await listSignatures()) say('sig-result', () => t('deleted', { id }));
}

/** Creates a template, or saves the one being edited (back to pending). */
async function saveTemplate() {
  const editing = state.editing.tpl;
  const body = {
    sign_id: $('tpl-sign').value.trim(),
    name: $('tpl-name').value.trim(),
    template: $('tpl-content').value,
    type: Number($('tpl-type').value),
    description: $('tpl-desc').value.trim(),
  };
  if (editing !== null) body.temp_id = editing;
  const r = await sendapi(editing === null ? 'POST' : 'PUT', '/v1/template', creds(), body);
  if (r.status !== 200) {
    say('tpl-result', apiRefusal(r), false);
    return;
  }
  const id = r.body.temp_id;
  editMode('tpl', null);
  for (const f of ['tpl-name', 'tpl-content', 'tpl-desc']) $(f).value = '';
  $('task-sign').value = $('tpl-sign').value.trim();
  $('task-temp').value = String(id);
  if (await listTemplates()) say('tpl-result', () => t(editing === null ? 'created_tpl' : 'saved_tpl', { id }));
}

async function deleteTemplate(signId, id) {
  const r = await sendapi('DELETE', '/v1/template', creds(), { sign_id: signId, temp_id: id });
  if (r.status !== 200) {
    say('tpl-result', apiRefusal(r), false);
    return;
  }
  if (state.editing.tpl === id) editMode('tpl', null);
  if (await listTemplates()) say('tpl-result', () => t('deleted', { id }));
}

async function sendTask() {
  const params = parseParams($('task-params').value);
  if (params === null) {
    say('task-result', () => t('bad_params'), false);
    return;
  }
  const r = await sendapi('POST', '/v1/message', creds(), {
    sign_id: $('task-sign').value.trim(),
    temp_id: $('task-temp').value.trim(),
    mobiles: parseMobiles($('task-mobiles').value),
    params,
  });
  if (r.status !== 200) {
    say('task-result', apiRefusal(r), false);
    return;
  }
  say('task-result', () => t('task_started', { uuid: r.body.uuid }));
  $('status-uuid').value = r.body.uuid;
  await showTask();
  await refreshBalance();
}

async function showTask() {
  const uuid = $('status-uuid').value.trim();
  const r = await sendapi('GET', `/v1/message?${new URLSearchParams({ uuid })}`, creds());
  if (r.status !== 200) {
    say('status-result', apiRefusal(r), false);
    return;
  }
  state.lastStatus = r.body;
  renderTask();
  say('status-result', '');
}

function renderTask() {
  const task = state.lastStatus;
  if (!task) return;
  const dl = $('task-summary');
  const row = (k, v) => [el('dt', {}, t(k)), el('dd', {}, v)];
  dl.replaceChildren(
    ...row('summary_status', `${task.uuid} · ${statusLabel(task.status)}`),
    ...row('summary_text', task.text),
    ...row('summary_cost', String(task.cost)),
    ...row('summary_counts', `${task.sent} / ${task.failed} / ${task.pending}`),
  );
  dl.hidden = false;
  const table = $('recipient-table');
  table.tBodies[0].replaceChildren(
    ...task.recipients.map((x) => el('tr', {}, el('td', { class: 'mono' }, x.mobile), statusCell(x.status), el('td', {}, x.reason ?? ''))),
  );
  table.hidden = false;
}

// ----- admin (root) --------------------------------------------------------------

async function adminCall(resultId, method, path, body, done) {
  const r = await sendapi(method, path, creds(), body);
  if (r.status !== 200) {
    say(resultId, apiRefusal(r), false);
    return;
  }
  say(resultId, done ?? (() => t('ok')));
}

async function review() {
  const kind = $('review-kind').value;
  const id = $('review-id').value.trim();
  const body = { audit_status: $('review-status').value };
  const reason = $('review-reason').value.trim();
  if (reason) body.reject_reason = reason;
  if (kind === 'sign') body.sign_id = id;
  else body.temp_id = id;
  await adminCall('review-result', 'POST', kind === 'sign' ? '/v2/signreview' : '/v2/tempreview', body);
}

async function charge() {
  const user = $('charge-user').value.trim();
  const amount = Number($('charge-amount').value);
  // One operation id per submission: a retried request is applied once.
  const opId = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  await adminCall('charge-result', 'POST', '/v2/charge', { user, charge: amount, op_id: opId }, () => t('charged', { user, amount }));
}

async function putItem() {
  const body = {
    item_id: $('item-id').value.trim(),
    price: Number($('item-price').value),
    send_price: Number($('item-send-price').value),
  };
  const name = $('item-name').value.trim();
  const pattern = $('item-pattern').value;
  if (name) body.name = name;
  if (pattern) body.code_pattern = pattern;
  await adminCall('item-result', 'POST', '/v2/item', body);
}

async function ban(banned) {
  await adminCall('ban-result', 'POST', '/v2/ban', { user: $('ban-user').value.trim(), banned });
}

/** Root's views: the pool, what waits for review, the items. */
async function loadState() {
  const [pool, reviews, items] = await Promise.all([
    sendapi('GET', '/v2/pool', creds()),
    sendapi('GET', '/v2/reviews', creds()),
    sendapi('GET', '/v2/item', creds()),
  ]);
  const refused = [pool, reviews, items].find((r) => r.status !== 200);
  if (refused) {
    say('state-result', apiRefusal(refused), false);
    return;
  }
  const p = pool.body;
  relabelled.set('pool-state', () => t('pool_state', p));
  $('pool-state').textContent = t('pool_state', p);
  const rows = [
    ...reviews.body.signatures.map((s) => ({ kind: 'sign', id: s.sign_id, user: s.user_id, text: `${s.signature} (${s.source})` })),
    ...reviews.body.templates.map((x) => ({ kind: 'temp', id: x.temp_id, user: x.user_id, text: `${x.name}: ${x.template}` })),
  ];
  $('review-table').tBodies[0].replaceChildren(
    ...rows.map((r) => {
      const what = t(r.kind === 'sign' ? 'signature' : 'template');
      const approve = el('button', { type: 'button', class: 'small', 'aria-label': `${t('approve')} ${what} ${r.id}` }, t('approve'));
      approve.addEventListener('click', (ev) => guarded(ev.currentTarget, 'state-result', async () => {
        const body = { audit_status: 'passed', [r.kind === 'sign' ? 'sign_id' : 'temp_id']: r.id };
        const done = await sendapi('POST', r.kind === 'sign' ? '/v2/signreview' : '/v2/tempreview', creds(), body);
        if (done.status !== 200) say('state-result', apiRefusal(done), false);
        else await loadState();
      }));
      const pick = el('button', { type: 'button', class: 'secondary small', 'aria-label': `${t('review_it')} ${what} ${r.id}` }, t('review_it'));
      pick.addEventListener('click', () => {
        $('review-kind').value = r.kind;
        $('review-id').value = String(r.id);
        $('review-reason').focus();
      });
      return el(
        'tr',
        {},
        el('td', {}, what),
        el('td', { class: 'mono' }, String(r.id)),
        el('td', { class: 'mono' }, r.user),
        el('td', {}, r.text),
        el('td', {}, approve, ' ', pick),
      );
    }),
  );
  $('items-table').tBodies[0].replaceChildren(
    ...items.body.items.map((i) =>
      el(
        'tr',
        {},
        el('td', { class: 'mono' }, i.item_id),
        el('td', {}, i.name),
        el('td', {}, String(i.price)),
        el('td', {}, String(i.send_price)),
        el('td', { class: 'mono' }, i.code_pattern ?? ''),
      ),
    ),
  );
  say('state-result', () => (rows.length ? '' : t('none_pending')));
}

async function setSize() {
  const n = $('pool-size').value.trim();
  const r = await pool('PUT', `/setsize?${new URLSearchParams({ newsize: n })}`, { basic: creds() });
  say('size-result', () => (r.code === 200 ? t('ok') : t('code_n', { code: r.code })), r.code === 200);
}

async function uploadPhones() {
  const cid = $('phones-cid').value.trim();
  const data = parseMobiles($('phones-mobiles').value).map((mobile) => (cid ? { mobile, cid } : { mobile }));
  const token = $('phones-token').value;
  const r = await pool('POST', '/phones', { token: token || undefined, body: { data } });
  if (r.code === 200) say('phones-result', () => t('phones_used', { list: (r.phonesUsed || []).join(', ') }));
  else say('phones-result', () => t('code_n', { code: r.code }), false);
}

// ----- start ---------------------------------------------------------------------

function relabel() {
  setLanguage(language());
  for (const [id, f] of relabelled) $(id).textContent = f();
  $('lang').textContent = language() === 'zh' ? 'English' : '中文';
  $('lang').lang = language() === 'zh' ? 'en' : 'zh';
  showAccount();
  renderLeases();
  renderMessages();
  renderSignatures();
  renderTemplates();
  renderTask();
}

function start() {
  setLanguage(initialLanguage());
  relabel();
  initTabs();
  $('lang').addEventListener('click', () => {
    setLanguage(language() === 'zh' ? 'en' : 'zh');
    relabel();
  });
  onSubmit('auth-form', 'auth-result', () => enter('login'));
  $('signup').addEventListener('click', (ev) => guarded(ev.currentTarget, 'auth-result', () => enter('signup')));
  $('logout').addEventListener('click', async () => {
    if (state.hub && state.hub.open) {
      try {
        await state.hub.request({ protocol: 'CSLogout' });
      } catch {
        // Closing below ends the session anyway.
      }
    }
    leave(() => t('logged_out'));
  });
  $('reconnect').addEventListener('click', () => connectHub());
  $('refresh-balance').addEventListener('click', () => refreshBalance().catch(() => notice(() => t('network'))));
  onSubmit('lease-form', 'lease-result', lease);
  onSubmit('sendmsg-form', 'sendmsg-result', sendFromNumber);
  onSubmit('sig-form', 'sig-result', needLogin('sig-result', saveSignature));
  $('sig-cancel').addEventListener('click', () => editMode('sig', null));
  $('sig-refresh').addEventListener('click', (ev) => guarded(ev.currentTarget, 'sig-result', needLogin('sig-result', async () => {
    if (await listSignatures()) say('sig-result', '');
  })));
  onSubmit('tpl-form', 'tpl-result', needLogin('tpl-result', saveTemplate));
  $('tpl-cancel').addEventListener('click', () => editMode('tpl', null));
  $('tpl-refresh').addEventListener('click', (ev) => guarded(ev.currentTarget, 'tpl-result', needLogin('tpl-result', async () => {
    if (await listTemplates()) say('tpl-result', '');
  })));
  onSubmit('task-form', 'task-result', needLogin('task-result', sendTask));
  onSubmit('status-form', 'status-result', needLogin('status-result', showTask));
  onSubmit('review-form', 'review-result', needLogin('review-result', review));
  onSubmit('charge-form', 'charge-result', needLogin('charge-result', charge));
  onSubmit('item-form', 'item-result', needLogin('item-result', putItem));
  onSubmit('ban-form', 'ban-result', needLogin('ban-result', () => ban(true)));
  $('unban').addEventListener('click', (ev) => guarded(ev.currentTarget, 'ban-result', needLogin('ban-result', () => ban(false))));
  onSubmit('size-form', 'size-result', needLogin('size-result', setSize));
  onSubmit('phones-form', 'phones-result', uploadPhones);
  $('state-refresh').addEventListener('click', (ev) => guarded(ev.currentTarget, 'state-result', needLogin('state-result', loadState)));
  document.body.dataset.ready = 'true';
}

start();
