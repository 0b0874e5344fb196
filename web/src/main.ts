// A small storefront for the Keel shop, in plain DOM. It lists the
// catalogue, registers and logs in a user, places an order and shows it as
// the storefront service's order view, every call through Keel's edge over
// gRPC-Web. The edge is given in the page's query string as
// ?edge=http://host:port (default: this page's host, port 8080); the page
// is meant to be served from another origin than the edge, so every call
// is a cross-origin fetch the browser lets through only if the edge's CORS
// answers allow it.
//
// Elements carry ids and data-testid attributes the browser end-to-end
// test (cmd/keel/platform/browser_e2e_test.go) drives the page by.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { InventoryService, type Item } from "../../gen/ts/shop/inventory/v1/inventory_pb.js";
import type { Money } from "../../gen/ts/shop/money/v1/money_pb.js";
import { OrderSchema, OrderService, OrderStatus } from "../../gen/ts/shop/order/v1/order_pb.js";
import { PaymentStatus } from "../../gen/ts/shop/payment/v1/payment_pb.js";
import { StorefrontService, type GetOrderViewResponse } from "../../gen/ts/shop/storefront/v1/storefront_pb.js";
import { UserService, type User } from "../../gen/ts/shop/user/v1/user_pb.js";

const edge =
  new URLSearchParams(location.search).get("edge") ?? `${location.protocol}//${location.hostname}:8080`;

/** session is the logged-in user and their access token, kept in memory only. */
let session: { token: string; user: User } | undefined;

/** bearer sends the login token, when there is one. */
const bearer: Interceptor = (next) => async (req) => {
  if (session) req.header.set("Authorization", `Bearer ${session.token}`);
  return await next(req);
};

// Public methods (the catalogue, Register, Login) go without the token: the
// edge refuses an expired one even where none is needed.
const anonymous = createGrpcWebTransport({ baseUrl: edge });
const loggedIn = createGrpcWebTransport({ baseUrl: edge, interceptors: [bearer] });
const users = createClient(UserService, anonymous);
const inventory = createClient(InventoryService, anonymous);
const orders = createClient(OrderService, loggedIn);
const storefront = createClient(StorefrontService, loggedIn);

/** items is the catalogue as last listed; basket the quantity picked per sku. */
let items: Item[] = [];
const basket = new Map<string, number>();
/** shownOrder is the id of the order in the order view. */
let shownOrder = "";
let busy = false;

// ---- DOM helpers ----

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`page has no #${id}`);
  return e as T;
}

/** el makes an element with attributes (data-* and others) and children. */
function el(tag: string, attrs: Record<string, string> = {}, ...children: (Node | string)[]): HTMLElement {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

function badge(name: string, text: string): HTMLElement {
  return el("span", { class: "badge", "data-testid": `degraded-${name}` }, text);
}

/** Amount is what formatMoney reads of a Money. */
type Amount = Pick<Money, "amountMinor" | "currencyCode">;

/** formatMoney writes an amount with two decimals, as the demo's EUR has: "49.00 EUR". */
function formatMoney(m: Amount | undefined): string {
  if (!m) return "–";
  const minor = m.amountMinor;
  return `${minor / 100n}.${(minor % 100n).toString().padStart(2, "0")} ${m.currencyCode}`;
}

/** codeName spells a Connect code as it appears on the wire: "invalid_argument". */
function codeName(code: Code): string {
  return Code[code].replace(/[A-Z]/g, (c, i: number) => (i ? "_" : "") + c.toLowerCase());
}

function showError(err: unknown): void {
  const e = ConnectError.from(err);
  const box = $("error");
  box.dataset.code = codeName(e.code);
  box.replaceChildren(el("code", {}, codeName(e.code)), " ", e.rawMessage);
  box.hidden = false;
}

function clearError(): void {
  const box = $("error");
  box.hidden = true;
  box.replaceChildren();
  delete box.dataset.code;
}

/** act runs one user action: clears the last error, shows the new one, keeps actions one at a time. */
async function act(action: () => Promise<void>): Promise<void> {
  if (busy) return;
  busy = true;
  document.body.dataset.busy = "true";
  clearError();
  try {
    await action();
  } catch (err) {
    showError(err);
  } finally {
    busy = false;
    delete document.body.dataset.busy;
    renderBasket();
  }
}

// ---- catalogue and basket ----

async function loadCatalogue(): Promise<void> {
  const all: Item[] = [];
  let pageToken = "";
  do {
    const res = await inventory.listItems({ pageSize: 100, pageToken });
    all.push(...res.items);
    pageToken = res.nextPageToken;
  } while (pageToken);
  items = all;
  renderCatalogue();
}

function renderCatalogue(): void {
  const rows = items.map((it) => {
    const qty = basket.get(it.sku) ?? 0;
    const step = (delta: number) => () => {
      const next = Math.min(Math.max((basket.get(it.sku) ?? 0) + delta, 0), Number(it.available));
      basket.set(it.sku, next);
      renderCatalogue();
      renderBasket();
    };
    const less = el("button", { type: "button", "data-testid": `less-${it.sku}`, "aria-label": `one ${it.name} less` }, "−");
    const more = el("button", { type: "button", "data-testid": `more-${it.sku}`, "aria-label": `one ${it.name} more` }, "+");
    less.addEventListener("click", step(-1));
    more.addEventListener("click", step(+1));
    return el(
      "tr",
      { "data-testid": "item", "data-sku": it.sku },
      el("td", {}, el("strong", { "data-testid": "item-name" }, it.name), el("br"), el("span", { class: "muted" }, it.description)),
      el("td", { class: "num", "data-testid": "item-price" }, formatMoney(it.price)),
      el("td", { class: "num", "data-testid": "item-available" }, it.available.toString()),
      el("td", { class: "num" }, less, el("span", { class: "qty", id: `qty-${it.sku}`, "data-testid": `qty-${it.sku}` }, String(qty)), more),
    );
  });
  $("items").querySelector("tbody")?.replaceChildren(...rows);
  $("items").hidden = items.length === 0;
  $("catalogue-status").textContent = items.length ? `${items.length} items` : "The catalogue is empty.";
}

/** picked is the basket as order lines, in catalogue order. */
function picked(): { sku: string; quantity: bigint }[] {
  return items
    .filter((it) => (basket.get(it.sku) ?? 0) > 0)
    .map((it) => ({ sku: it.sku, quantity: BigInt(basket.get(it.sku) ?? 0) }));
}

function renderBasket(): void {
  const lines = picked();
  let total = 0n;
  let currencyCode = "";
  for (const line of lines) {
    const price = items.find((it) => it.sku === line.sku)?.price;
    total += (price?.amountMinor ?? 0n) * line.quantity;
    currencyCode = price?.currencyCode ?? currencyCode;
  }
  $("basket-total").textContent = lines.length
    ? formatMoney({ amountMinor: total, currencyCode })
    : "nothing picked";
  $<HTMLButtonElement>("place-order").disabled = busy || !session || lines.length === 0;
}

// ---- account ----

function credentials(): { email: string; password: string } {
  return { email: $<HTMLInputElement>("email").value.trim(), password: $<HTMLInputElement>("password").value };
}

async function login(): Promise<void> {
  const res = await users.login(credentials());
  if (!res.user) throw new Error("login answered without the user");
  session = { token: res.accessToken, user: res.user };
  const s = $("session");
  s.dataset.userId = res.user.id;
  s.textContent = `Logged in as ${res.user.displayName} (${res.user.email}).`;
}

async function register(): Promise<void> {
  await users.register({ ...credentials(), displayName: $<HTMLInputElement>("display-name").value.trim() });
  await login();
}

// ---- orders ----

/** idempotencyKey is a fresh key per click: a retry of the same call may repeat it. */
function idempotencyKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  // randomUUID needs a secure context (https, or localhost); a v4 UUID by hand otherwise.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function placeOrder(): Promise<void> {
  if (!session) throw new ConnectError("log in first", Code.Unauthenticated);
  let orderId: string;
  try {
    const res = await orders.placeOrder({ idempotencyKey: idempotencyKey(), userId: session.user.id, lines: picked() });
    orderId = res.order?.orderId ?? "";
  } catch (err) {
    // Out of stock or payment declined: the order is recorded, cancelled,
    // and comes with the error. Show it, and the error.
    const cancelled = ConnectError.from(err).findDetails(OrderSchema)[0];
    if (cancelled) await showOrder(cancelled.orderId).catch(() => undefined);
    await loadCatalogue().catch(() => undefined);
    throw err;
  }
  basket.clear();
  await showOrder(orderId);
  await loadCatalogue();
}

let pendingRefresh: number | undefined;

async function showOrder(orderId: string): Promise<void> {
  window.clearTimeout(pendingRefresh);
  const view = await storefront.getOrderView({ orderId });
  shownOrder = orderId;
  renderOrderView(view);
  // The saga may still run (an order recovered after a crash): look again.
  if (view.order?.status === OrderStatus.PENDING) {
    pendingRefresh = window.setTimeout(() => void act(() => showOrder(orderId)), 1000);
  }
}

const degradedLabels: Record<string, string> = {
  items: "items unavailable",
  payment: "payment unavailable",
  buyer: "buyer unavailable",
};

function renderOrderView(view: GetOrderViewResponse): void {
  const order = view.order;
  if (!order) throw new Error("order view without an order");
  const status = OrderStatus[order.status];
  const section = $("order-view");
  $("order-id").textContent = order.orderId;
  const st = $("order-status");
  st.textContent = status;
  st.className = `status status-${status}`;
  $("order-reason").textContent = order.failureReason;
  $("degraded").replaceChildren(...view.degraded.map((d) => badge(d, degradedLabels[d] ?? `${d} unavailable`)));

  const lines = view.lines.map(({ line, item }) => {
    const price = line?.unitPrice;
    const lineTotal = price && line && { currencyCode: price.currencyCode, amountMinor: price.amountMinor * line.quantity };
    return el(
      "tr",
      { "data-testid": "order-line", "data-sku": line?.sku ?? "" },
      el("td", { "data-testid": "order-line-name" }, item ? item.name : line?.sku ?? "", ...(item ? [] : [" ", badge("item", "item unavailable")])),
      el("td", { class: "num", "data-testid": "order-line-quantity" }, line?.quantity.toString() ?? ""),
      el("td", { class: "num" }, formatMoney(price)),
      el("td", { class: "num" }, formatMoney(lineTotal)),
    );
  });
  $("order-lines").querySelector("tbody")?.replaceChildren(...lines);
  const total = $("order-total");
  total.textContent = formatMoney(order.total);
  total.dataset.amountMinor = order.total?.amountMinor.toString() ?? "";
  total.dataset.currency = order.total?.currencyCode ?? "";

  const p = view.payment;
  $("payment").replaceChildren(
    p
      ? `${formatMoney(p.amount)}, ${PaymentStatus[p.status]} (${p.paymentId})`
      : view.degraded.includes("payment")
        ? badge("payment-inline", "payment unavailable")
        : "none yet",
  );
  $("buyer").replaceChildren(view.buyerDisplayName || badge("buyer-inline", "buyer unavailable"));

  section.dataset.orderId = order.orderId;
  section.dataset.status = status;
  section.dataset.degraded = view.degraded.join(" ");
  section.dataset.renders = String(Number(section.dataset.renders ?? 0) + 1);
  section.hidden = false;
}

// ---- wiring ----

$("edge").textContent = edge;
$("account-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void act(login);
});
$("register").addEventListener("click", () => {
  if ($<HTMLFormElement>("account-form").reportValidity()) void act(register);
});
$("place-order").addEventListener("click", () => void act(placeOrder));
$("order-refresh").addEventListener("click", () => void act(() => showOrder(shownOrder)));
void act(async () => {
  try {
    await loadCatalogue();
  } catch (err) {
    $("catalogue-status").textContent = "The catalogue could not be listed.";
    throw err;
  }
});
