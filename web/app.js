// flashsale demo storefront: plain JavaScript, no build step.
//
// The API is this page's own origin, or the one origin the server wrote into
// <meta name="flashsale-api"> (FLASHSALE_STOREFRONT_API_ORIGIN, fixed at deploy time; the API
// must then list this page's origin in FLASHSALE_CORS_ORIGINS). Never from the page's URL: a
// link could otherwise send the typed password and the token anywhere.
'use strict';

const API = ((document.querySelector('meta[name="flashsale-api"]') || {}).content || '').replace(/\/$/, '');
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem('flashsale.token'),
  username: sessionStorage.getItem('flashsale.username'),
  sales: new Map(), // sku -> product (with live `available`)
  clockOffset: 0, // server time - device time, ms
  cart: null,
  order: null,
};

// ---- API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || 'http_' + status;
  }
}

async function api(method, path, body, extraHeaders) {
  const headers = Object.assign({}, extraHeaders);
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    if (resp.status === 401 && state.token) signOut();
    throw new ApiError(resp.status, data);
  }
  return data;
}

function idempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

// ---- helpers ---------------------------------------------------------------------------

const money = (minor) => (minor / 100).toFixed(2);
const now = () => Date.now() + state.clockOffset;

function duration(ms) {
  if (ms < 0) ms = 0;
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const hh = String(Math.floor((s % 86400) / 3600)).padStart(2, '0');
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return (d ? d + 'd ' : '') + `${hh}:${mm}:${ss}`;
}

let messageTimer;
function say(text, isError) {
  const m = $('message');
  m.textContent = text;
  m.className = 'message' + (isError ? ' error' : '');
  m.hidden = false;
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => { m.hidden = true; }, isError ? 8000 : 4000);
}

function fail(e) {
  say(e.message || String(e), true);
}

// ---- account ---------------------------------------------------------------------------

function showAccount() {
  const signedIn = !!state.token;
  $('login').hidden = signedIn;
  $('me').hidden = !signedIn;
  $('me-name').textContent = state.username || '';
  $('cart-hint').hidden = signedIn;
  renderSales();
  renderCart();
}

function signOut() {
  state.token = null;
  state.username = null;
  state.cart = null;
  sessionStorage.removeItem('flashsale.token');
  sessionStorage.removeItem('flashsale.username');
  showAccount();
}

async function logIn(username, password) {
  const t = await api('POST', '/v1/auth/token', { username, password });
  state.token = t.access_token;
  state.username = username;
  sessionStorage.setItem('flashsale.token', state.token);
  sessionStorage.setItem('flashsale.username', username);
  showAccount();
  await loadCart();
}

$('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    await logIn($('username').value.trim(), $('password').value);
    say('Welcome, ' + state.username + '.');
  } catch (e) {
    fail(e);
  }
});

$('register').addEventListener('click', async () => {
  const username = $('username').value.trim();
  const password = $('password').value;
  if (!username || !password) return say('Choose a username and a password (8+ characters).', true);
  try {
    await api('POST', '/v1/users', { username, password });
    await logIn(username, password);
    say('Account created. Welcome, ' + username + '.');
  } catch (e) {
    fail(e);
  }
});

$('logout').addEventListener('click', signOut);

// ---- sales and live stock ----------------------------------------------------------------

function saleState(p) {
  if (!p.sale) return { open: true, text: '' };
  const t = now();
  const start = Date.parse(p.sale.starts_at);
  const end = Date.parse(p.sale.ends_at);
  if (t < start) return { open: false, text: 'starts in ' + duration(start - t) };
  if (t < end) return { open: true, text: 'ends in ' + duration(end - t) };
  return { open: false, text: 'sale over' };
}

function renderSales() {
  const box = $('sales');
  $('no-sales').hidden = state.sales.size > 0;
  const seen = new Set();
  for (const p of state.sales.values()) {
    seen.add(String(p.sku));
    let card = box.querySelector(`[data-sku="${p.sku}"]`);
    if (!card) {
      card = $('card').content.firstElementChild.cloneNode(true);
      card.dataset.sku = p.sku;
      card.dataset.testid = 'product-' + p.sku;
      card.querySelector('.available').dataset.testid = 'available-' + p.sku;
      card.querySelector('.countdown').dataset.testid = 'countdown-' + p.sku;
      card.querySelector('.count').dataset.testid = 'count-' + p.sku;
      const add = card.querySelector('.add');
      add.dataset.testid = 'add-' + p.sku;
      add.addEventListener('click', () => addToCart(p.sku, card.querySelector('.count').value));
      box.appendChild(card);
    }
    card.querySelector('.name').textContent = p.name;
    const onSale = p.sale && saleState(p).open;
    card.querySelector('.sale-price').textContent = money(p.sale ? p.sale.sale_price : p.price);
    card.querySelector('.price').textContent = p.sale ? money(p.price) : '';
    updateCard(card, p);
    if (onSale !== card._wasOpen) card._wasOpen = onSale;
  }
  for (const card of [...box.children]) {
    if (!seen.has(card.dataset.sku)) card.remove();
  }
}

function updateCard(card, p) {
  const s = saleState(p);
  const cd = card.querySelector('.countdown');
  cd.textContent = s.text;
  cd.className = 'countdown' + (s.open && p.sale ? ' open' : '');
  const avail = card.querySelector('.available');
  if (avail.textContent !== String(p.available)) {
    avail.textContent = p.available;
    avail.classList.remove('flash');
    void avail.offsetWidth; // restart the animation
    avail.classList.add('flash');
  }
  const left = card.querySelector('.left');
  left.className = 'left' + (p.available <= 0 ? ' gone' : p.available <= 10 ? ' low' : '');
  const add = card.querySelector('.add');
  add.disabled = !state.token || !s.open || p.available <= 0;
  add.textContent = p.available <= 0 ? 'Sold out' : s.open ? 'Add to cart' : 'Not yet';
  if (p.sale && p.sale.per_customer_limit) card.querySelector('.count').max = p.sale.per_customer_limit;
}

function onStock(sku, available) {
  const p = state.sales.get(sku);
  if (!p) return;
  p.available = available;
  const card = $('sales').querySelector(`[data-sku="${sku}"]`);
  if (card) updateCard(card, p);
}

// Sales whose window has not ended, soonest start first, at most 100: what the live snapshot
// lists, read from the plain catalog when the live stream is refused.
async function loadCatalog() {
  const sales = [];
  let after = 0;
  for (let page = 0; page < 10; page++) {
    const r = await api('GET', `/v1/products?limit=200&after_sku=${after}`);
    for (const p of r.items) {
      if (p.sale && Date.parse(p.sale.ends_at) > now()) sales.push(p);
    }
    if (r.next_after_sku == null) break;
    after = r.next_after_sku;
  }
  sales.sort((a, b) => Date.parse(a.sale.starts_at) - Date.parse(b.sale.starts_at) || a.sku - b.sku);
  state.sales = new Map(sales.slice(0, 100).map((p) => [p.sku, p]));
  renderSales();
}

let liveRetry;
function connectLive() {
  clearTimeout(liveRetry);
  const es = new EventSource(API + '/v1/sales/live');
  const live = $('live');
  es.addEventListener('open', () => {
    live.textContent = 'live';
    live.className = 'live';
  });
  es.addEventListener('error', async () => {
    if (es.readyState !== EventSource.CLOSED) {
      // EventSource reconnects by itself; the first event after it is a fresh snapshot.
      live.textContent = 'reconnecting…';
      live.className = 'live off';
      return;
    }
    // Refused (429: this address holds too many streams, 503: the server is full) or gone:
    // EventSource gives up. Show the plain catalog, and try the stream again a little later.
    es.close();
    live.textContent = 'not live';
    live.className = 'live off';
    liveRetry = setTimeout(connectLive, 15000 + Math.random() * 15000);
    try {
      await loadCatalog();
    } catch (e) {
      fail(e);
    }
  });
  es.addEventListener('snapshot', (ev) => {
    const snap = JSON.parse(ev.data);
    state.clockOffset = Date.parse(snap.server_time) - Date.now();
    state.sales = new Map(snap.sales.map((p) => [p.sku, p]));
    renderSales();
  });
  es.addEventListener('stock', (ev) => {
    const d = JSON.parse(ev.data);
    onStock(d.sku, d.available);
  });
}

// ---- cart ----------------------------------------------------------------------------------

async function loadCart() {
  if (!state.token) return;
  try {
    state.cart = await api('GET', '/v1/cart');
    renderCart();
  } catch (e) {
    fail(e);
  }
}

async function addToCart(sku, count) {
  try {
    state.cart = await api('POST', '/v1/cart/items', { sku, count: Number(count) || 1 });
    renderCart();
    say('Added to your cart: held for you for a few minutes.');
  } catch (e) {
    fail(e);
    // The add may have been made (its answer was lost): the cart shows what happened, so
    // look before the shopper clicks again.
    if (e.code === 'outcome_unknown') await loadCart();
  }
}

async function removeLine(sku) {
  try {
    state.cart = await api('DELETE', `/v1/cart/items/${sku}`);
    renderCart();
  } catch (e) {
    fail(e);
  }
}

function renderCart() {
  const ul = $('cart');
  ul.textContent = '';
  const items = (state.token && state.cart && state.cart.items) || [];
  for (const line of items) {
    const li = document.createElement('li');
    li.dataset.testid = 'cart-line-' + line.sku;
    li.innerHTML = '<span><span class="what"></span><br><span class="hold"></span></span>' +
      '<span><span class="amount"></span> <button type="button" class="link" title="remove">✕</button></span>';
    li.querySelector('.what').textContent = `${line.count} × ${line.name}`;
    li.querySelector('.amount').textContent = money(line.line_price);
    const hold = li.querySelector('.hold');
    hold.dataset.testid = 'hold-' + line.sku;
    hold.dataset.until = line.held_until;
    li.querySelector('button').addEventListener('click', () => removeLine(line.sku));
    ul.appendChild(li);
  }
  $('cart-total').textContent = money((state.token && state.cart && state.cart.total_price) || 0);
  $('checkout').disabled = items.length === 0;
  tickHolds();
}

function tickHolds() {
  let expired = false;
  for (const el of document.querySelectorAll('#cart .hold')) {
    const left = Date.parse(el.dataset.until) - now();
    el.textContent = left > 0 ? 'held for ' + duration(left) : 'hold expired';
    if (left <= 0) expired = true;
  }
  return expired;
}

// ---- checkout and payment ------------------------------------------------------------------

$('checkout').addEventListener('click', async () => {
  const btn = $('checkout');
  btn.disabled = true;
  try {
    // One key per click: a retry of this same request (a flaky network) cannot order twice.
    const order = await api('POST', '/v1/orders', undefined, { 'Idempotency-Key': idempotencyKey() });
    state.order = order;
    state.cart = { items: [], total_price: 0 };
    renderCart();
    renderOrder();
    say(`Order ${order.order_id} placed: pay before the timer runs out.`);
  } catch (e) {
    fail(e);
    await loadCart();
  }
});

$('pay').addEventListener('click', async () => {
  if (!state.order) return;
  $('pay').disabled = true;
  try {
    state.order = await api('POST', `/v1/orders/${state.order.order_id}/pay`, { payment_ref: 'demo-' + Date.now() },
      { 'Idempotency-Key': idempotencyKey() });
    renderOrder();
    say('Paid. Thank you!');
  } catch (e) {
    fail(e);
    // A payment whose answer was lost may have gone through: read the order again.
    if (e.code === 'outcome_unknown') {
      try {
        state.order = await api('GET', `/v1/orders/${state.order.order_id}`);
      } catch (_) {
        // Still unreachable: the order keeps its last known state on the page.
      }
    }
    renderOrder();
  }
});

function renderOrder() {
  const o = state.order;
  $('order-section').hidden = !o;
  if (!o) return;
  $('order-id').textContent = '#' + o.order_id;
  $('order-status').textContent = o.status.replace('_', ' ');
  $('order-total').textContent = money(o.total_price);
  const ul = $('order-lines');
  ul.textContent = '';
  for (const it of o.items) {
    const li = document.createElement('li');
    li.textContent = `${it.count} × ${it.name} — ${money(it.unit_price * it.count)}`;
    ul.appendChild(li);
  }
  $('pay').hidden = o.status !== 'awaiting_payment';
  $('pay').disabled = false;
  tickOrder();
}

function tickOrder() {
  const o = state.order;
  const el = $('order-deadline');
  if (!o || o.status !== 'awaiting_payment') {
    el.textContent = '';
    return;
  }
  const left = Date.parse(o.expires_at) - now();
  el.textContent = left > 0 ? 'pay within ' + duration(left) : 'payment window over';
}

// ---- clock -------------------------------------------------------------------------------

setInterval(() => {
  for (const card of $('sales').children) {
    const p = state.sales.get(Number(card.dataset.sku));
    if (p) updateCard(card, p);
  }
  if (tickHolds()) loadCart();
  tickOrder();
}, 1000);

showAccount();
connectLive();
loadCart();
