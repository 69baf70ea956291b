// Tally admin page: sign in with an API key, find a SKU, see and fix its
// stock per warehouse, follow events live, watch the cluster.
//
// Everything goes through api-client.js. Every failure, the API's problems
// and the page's own errors alike, lands in the banner at the top (title,
// code, detail): the page never goes blank. The DOM is built with
// textContent only, never innerHTML, so nothing the API returns is markup.

import { ADJUST_REASONS, TallyClient, TallyError } from "./api-client.js";

/** Where the key lives: this tab's session storage only. */
const KEY_STORAGE = "tally.admin.key";
/** Events kept in the feed, newest first. */
const FEED_ROWS_MAX = 100;
/** Live holds tracked for the open SKU. */
const HOLDS_TRACKED_MAX = 500;
/** Search: pages of /v1/items scanned for SKUs containing the text, and matches shown. */
const SEARCH_PAGES_MAX = 10;
const SEARCH_PAGE_LIMIT = 500;
const SEARCH_RESULTS_MAX = 50;
/** Stock alert lists: pages followed per status, and items shown. */
const ALERT_PAGES_MAX = 10;
const ALERT_ITEMS_MAX = 100;
/** Movements read per warehouse and shown in all. */
const HISTORY_PER_WAREHOUSE = 20;
const HISTORY_ROWS_MAX = 40;
/** Ledger entries the item view shows, newest first. */
const LEDGER_ROWS_MAX = 50;
/** How often the cluster panel refreshes itself. */
const CLUSTER_REFRESH_MS = 5000;
/** Coalescing of re-reads that events trigger. */
const SKU_RELOAD_DELAY_MS = 300;
const ALERTS_RELOAD_DELAY_MS = 800;

const $ = (id) => {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element;
};

/** An element with attributes (`class`, `data-*`, properties) and children (nodes or text). */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name in element && typeof value !== "string") element[name] = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const number = (value) => (typeof value === "number" ? value.toLocaleString("en-US") : "—");
const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
const dateTime = (ms) => {
  const date = new Date(ms);
  return `${date.toLocaleDateString("en-CA")} ${date.toLocaleTimeString("en-GB", { hour12: false })}`;
};
const shortId = (id) => (id && id.length > 12 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id || "");
const statusBadge = (status) => h("span", { class: `status status-${status}` }, status.replaceAll("_", " "));

// ---------------------------------------------------------------------------
// The banner: every failure, in one place.

const banner = {
  show({ title, code, detail, signIn = false }) {
    $("banner-title").textContent = title;
    $("banner-code").textContent = code || "";
    $("banner-code").hidden = !code;
    $("banner-detail").textContent = detail || "";
    $("banner-sign-in").hidden = !signIn;
    $("banner").hidden = false;
  },
  hide() {
    $("banner").hidden = true;
  },
};

/** Shows an error: a problem from the API, a network failure, or a bug in this page. */
function report(error) {
  if (error instanceof TallyError) {
    const unauthorized = error.status === 401;
    const status = error.status ? ` (HTTP ${error.status})` : "";
    banner.show({
      title: unauthorized ? "Your API key was refused" : `${error.title}${status}`,
      code: error.code,
      detail: unauthorized ? `${error.explanation} Sign in again with a valid key.` : error.explanation,
      signIn: unauthorized && !$("app").hidden,
    });
  } else {
    const message = error && error.message ? error.message : String(error);
    banner.show({ title: "Something went wrong on this page", code: "page_error", detail: message });
  }
}

/** Runs an action for a button or form: reports what fails, disables the control meanwhile. */
async function act(control, action) {
  if (control) control.disabled = true;
  try {
    await action();
  } catch (error) {
    report(error);
  } finally {
    if (control) control.disabled = false;
  }
}

window.addEventListener("error", (event) => report(event.error || new Error(event.message)));
window.addEventListener("unhandledrejection", (event) => report(event.reason));

// ---------------------------------------------------------------------------
// State

const state = {
  client: null,
  stream: null,
  clusterTimer: null,
  /** The open SKU's view (`GET /v1/items/{sku}`), or null. */
  sku: null,
  /** The item being edited: { sku, warehouse, etag, version, mine: { on_hand, low_stock_threshold } }. */
  edit: null,
  /** Live holds of the open SKU seen on the stream: id -> { lines: Map(warehouse -> units), at_ms }. */
  holds: new Map(),
  feedPaused: false,
  feedQueue: [],
  feedTimer: null,
  skuTimer: null,
  skuHistoryStale: false,
  alertsTimer: null,
};

// ---------------------------------------------------------------------------
// Sign in and out

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

async function signIn(key) {
  const client = new TallyClient({ baseUrl: new URL("./", document.baseURI), key });
  // Any read proves the key; the cluster status is one the page shows anyway.
  const cluster = await client.cluster();
  sessionStorage.setItem(KEY_STORAGE, key);
  state.client = client;
  banner.hide();
  $("signin").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("who").hidden = false;
  $("who").textContent = key ? `Signed in with key …${key.slice(-4)} · node ${cluster.node_id}` : `No key · node ${cluster.node_id}`;
  renderCluster(cluster);
  startStream();
  state.clusterTimer = setInterval(() => refreshCluster().catch(report), CLUSTER_REFRESH_MS);
  loadAlerts().catch(report);
  loadBundles().catch(report);
  const wanted = new URLSearchParams(location.hash.slice(1)).get("sku");
  // A SKU named in the address (#sku=...) opens; one that fails to is reported, not fatal.
  if (wanted) openSku(wanted).catch(report);
  else $("search-input").focus();
}

function showSignIn() {
  $("booting").hidden = true;
  $("app").hidden = true;
  $("signin").hidden = false;
  $("sign-out").hidden = true;
  $("who").hidden = true;
  $("stream-state").hidden = true;
  $("key").focus();
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  if (state.stream) state.stream.close();
  clearInterval(state.clusterTimer);
  state.client = null;
  state.stream = null;
  state.sku = null;
  closeEdit();
  $("key").value = "";
  banner.hide();
  showSignIn();
}

// ---------------------------------------------------------------------------
// Search and new items

async function search(text) {
  const query = text.trim();
  const results = $("search-results");
  results.replaceChildren();
  $("search-note").textContent = "Searching…";
  const found = new Map();
  // An exact SKU first: one read.
  try {
    const view = await state.client.getSku(query);
    found.set(view.sku, true);
  } catch (error) {
    if (!(error instanceof TallyError && (error.code === "item_not_found" || error.status === 400))) throw error;
  }
  // Then SKUs containing the text, over a bounded scan of the listing.
  const needle = query.toLowerCase();
  let cursor = null;
  let scanned = 0;
  let complete = false;
  for (let page = 0; page < SEARCH_PAGES_MAX && found.size < SEARCH_RESULTS_MAX; page++) {
    const answer = await state.client.listItems({ limit: SEARCH_PAGE_LIMIT, cursor, consistency: "stale" });
    scanned += answer.items.length;
    for (const item of answer.items) {
      const haystack = `${item.sku} ${item.name || ""}`.toLowerCase();
      if (haystack.includes(needle)) found.set(item.sku, true);
      if (found.size >= SEARCH_RESULTS_MAX) break;
    }
    cursor = answer.next_cursor;
    if (!cursor) {
      complete = true;
      break;
    }
  }
  for (const sku of found.keys()) {
    results.append(h("li", {}, h("button", { type: "button", class: "link grow", onclick: () => act(null, () => openSku(sku)) }, sku)));
  }
  const note = found.size === 0 ? `No SKU matches “${query}”.` : `${found.size} SKU${found.size === 1 ? "" : "s"} found.`;
  $("search-note").textContent = complete ? note : `${note} Looked at the first ${scanned} items; type more of the SKU to narrow it.`;
  if (found.size === 1) await openSku(found.keys().next().value);
}

async function createItem(form) {
  const sku = $("new-sku").value.trim();
  const warehouse = $("new-warehouse").value.trim();
  const fields = {
    on_hand: Number($("new-on-hand").value),
    low_stock_threshold: Number($("new-threshold").value),
  };
  const name = $("new-name").value.trim();
  if (name) fields.name = name;
  await state.client.putItem(sku, warehouse, fields, { createOnly: true });
  form.reset();
  $("new-item").open = false;
  await openSku(sku);
  notice(`Created ${sku} in ${warehouse}.`);
}

// ---------------------------------------------------------------------------
// The open SKU

async function openSku(sku) {
  const view = await state.client.getSku(sku);
  const changed = !state.sku || state.sku.sku !== view.sku;
  if (changed) {
    state.holds.clear();
    closeEdit();
    notice("");
  }
  state.sku = view;
  history.replaceState(null, "", `#sku=${encodeURIComponent(view.sku)}`);
  renderSku();
  await loadHistory();
  if (changed) $("sku-name").focus();
}

/** Re-reads the open SKU; its movements too unless `history` is false. */
async function reloadSku({ history = true } = {}) {
  if (!state.sku) return;
  try {
    state.sku = await state.client.getSku(state.sku.sku);
  } catch (error) {
    if (error instanceof TallyError && error.code === "item_not_found") {
      state.sku = null;
      renderSku();
      return;
    }
    throw error;
  }
  renderSku();
  if (history) await loadHistory();
}

/**
 * Coalesces the re-reads events ask for into one per SKU_RELOAD_DELAY_MS.
 * Holds and releases move `reserved` only: they need no new movements.
 */
function scheduleSkuReload(onHandMoved) {
  state.skuHistoryStale = state.skuHistoryStale || onHandMoved;
  if (state.skuTimer) return;
  state.skuTimer = setTimeout(() => {
    const history = state.skuHistoryStale;
    state.skuTimer = null;
    state.skuHistoryStale = false;
    reloadSku({ history }).catch(report);
  }, SKU_RELOAD_DELAY_MS);
}

function renderSku() {
  const view = state.sku;
  $("sku-empty").hidden = Boolean(view);
  $("sku-view").hidden = !view;
  if (!view) return;
  $("sku-name").textContent = view.sku;
  $("sku-name").tabIndex = -1;
  const names = [...new Set(view.warehouses.map((item) => item.name).filter(Boolean))];
  $("sku-label").textContent = names.join(" / ");
  $("total-on-hand").textContent = number(view.on_hand);
  $("total-reserved").textContent = number(view.reserved);
  $("total-available").textContent = number(view.available);
  const rows = view.warehouses.map((item) =>
    h(
      "tr",
      { dataset: { warehouse: item.warehouse } },
      h("th", { scope: "row" }, item.warehouse),
      h("td", { class: "num", dataset: { field: "on_hand" } }, number(item.on_hand)),
      h("td", { class: "num", dataset: { field: "reserved" } }, number(item.reserved)),
      h("td", { class: "num", dataset: { field: "available" } }, number(item.available)),
      h("td", { class: "num", dataset: { field: "low_stock_threshold" } }, number(item.low_stock_threshold)),
      h("td", { dataset: { field: "status" } }, statusBadge(item.status)),
      h("td", { dataset: { field: "states" } }, statesText(item)),
      h("td", { class: "num mono" }, String(item.version)),
      h(
        "td",
        {},
        h(
          "button",
          {
            type: "button",
            "aria-label": `Edit ${item.warehouse}`,
            dataset: { edit: item.warehouse },
            onclick: (event) => act(event.currentTarget, () => openEdit(item.warehouse)),
          },
          "Edit",
        ),
        " ",
        h(
          "button",
          {
            type: "button",
            "aria-label": `Delete ${item.warehouse}`,
            dataset: { delete: item.warehouse },
            onclick: (event) => act(event.currentTarget, () => deleteWarehouse(item.warehouse, item.version)),
          },
          "Delete",
        ),
      ),
    ),
  );
  $("warehouses").tBodies[0].replaceChildren(...rows);
  const warehouses = view.warehouses.map((item) => item.warehouse);
  renderLimit(view);
  renderProduct(view);
  renderPriority(view);
  fillSelect($("adjust-warehouse"), warehouses);
  fillSelect($("move-warehouse"), warehouses);
  fillSelect($("levels-warehouse"), warehouses);
  fillSelect($("transfer-from"), warehouses);
  $("transfer-to-list").replaceChildren(...warehouses.map((name) => h("option", { value: name })));
  renderHolds();
}

function fillSelect(select, values) {
  const previous = select.value;
  select.replaceChildren(...values.map((value) => h("option", { value }, value)));
  if (values.includes(previous)) select.value = previous;
}

function notice(text) {
  $("sku-notice").textContent = text;
}

// Editing with the item's ETag ------------------------------------------------

async function openEdit(warehouse) {
  const sku = state.sku.sku;
  // The ETag of what the user sees when the form opens: a change by anyone
  // after this makes the save a 412 instead of a silent overwrite.
  const { item, etag } = await state.client.getItem(sku, warehouse);
  state.edit = { sku, warehouse, etag, version: item.version, mine: null };
  $("edit-heading").textContent = `Edit ${sku} in ${warehouse} (version ${item.version})`;
  $("edit-on-hand").value = item.on_hand;
  $("edit-threshold").value = item.low_stock_threshold;
  $("conflict").hidden = true;
  $("edit-form").hidden = false;
  $("edit-on-hand").focus();
  $("edit-on-hand").select();
}

function closeEdit() {
  state.edit = null;
  $("edit-form").hidden = true;
  $("conflict").hidden = true;
}

async function saveEdit() {
  const edit = state.edit;
  if (!edit) return;
  edit.mine = {
    on_hand: Number($("edit-on-hand").value),
    low_stock_threshold: Number($("edit-threshold").value),
  };
  await putEdit(edit);
}

async function putEdit(edit) {
  try {
    const { item } = await state.client.putItem(edit.sku, edit.warehouse, edit.mine, { ifMatch: edit.etag });
    closeEdit();
    notice(`Saved ${edit.sku} in ${edit.warehouse}: on hand ${number(item.on_hand)}, low at ${number(item.low_stock_threshold)} (version ${item.version}).`);
    await reloadSku();
  } catch (error) {
    if (error instanceof TallyError && error.code === "version_mismatch") {
      await showConflict(edit);
      return;
    }
    throw error;
  }
}

/** The item moved on: show its newer values beside the user's, and let them choose. */
async function showConflict(edit) {
  const { item, etag } = await state.client.getItem(edit.sku, edit.warehouse);
  edit.etag = etag;
  edit.version = item.version;
  $("edit-heading").textContent = `Edit ${edit.sku} in ${edit.warehouse} (now version ${item.version})`;
  $("conflict-detail").textContent =
    `It is now at version ${item.version}: on hand ${number(item.on_hand)}, low at ${number(item.low_stock_threshold)}, ` +
    `${number(item.reserved)} reserved. Your values: on hand ${number(edit.mine.on_hand)}, low at ${number(edit.mine.low_stock_threshold)}.`;
  $("conflict").hidden = false;
  $("conflict").dataset.version = String(item.version);
  $("conflict").dataset.onHand = String(item.on_hand);
  $("conflict-reapply").focus();
  await reloadSku();
}

// Adjustments and transfers --------------------------------------------------------

async function adjust(form) {
  const warehouse = $("adjust-warehouse").value;
  const delta = Number($("adjust-delta").value);
  const reason = $("adjust-reason").value;
  const { item } = await state.client.adjust(state.sku.sku, warehouse, delta, reason);
  form.reset();
  $("adjust-warehouse").value = warehouse;
  notice(`Adjusted ${warehouse} by ${delta > 0 ? "+" : ""}${delta} (${reason}): on hand now ${number(item.on_hand)}.`);
  await reloadSku();
}

// Quantity states -------------------------------------------------------------------

/** Shopify's quantity states; `incoming` is not on hand and only a source. */
const QUANTITY_STATES = ["available", "safety_stock", "damaged", "quality_control", "incoming"];

/** The units kept back and on the way, in one short line ("—" when none). */
function statesText(item) {
  const parts = [];
  if (item.safety_stock) parts.push(`safety ${number(item.safety_stock)}`);
  if (item.damaged) parts.push(`damaged ${number(item.damaged)}`);
  if (item.quality_control) parts.push(`QC ${number(item.quality_control)}`);
  if (item.backordered) parts.push(`backordered ${number(item.backordered)}`);
  if (item.backorder_limit) parts.push(`backorder limit ${number(item.backorder_limit)}`);
  if (item.incoming) {
    const when = item.incoming_expected_at ? ` by ${item.incoming_expected_at.slice(0, 10)}` : "";
    parts.push(`incoming ${number(item.incoming)}${when}`);
  }
  return parts.length ? parts.join(" · ") : "—";
}

async function moveQuantity(form) {
  const warehouse = $("move-warehouse").value;
  const from = $("move-from").value;
  const to = $("move-to").value;
  const quantity = Number($("move-quantity").value);
  const note = $("move-note").value.trim();
  const { item } = await state.client.moveQuantity(state.sku.sku, warehouse, { from, to, quantity, note });
  form.reset();
  $("move-warehouse").value = warehouse;
  notice(`Moved ${number(quantity)} in ${warehouse} from ${from} to ${to}: available now ${number(item.available)}.`);
  await reloadSku();
}

async function setLevels(form) {
  const warehouse = $("levels-warehouse").value;
  const fields = {};
  const safety = $("levels-safety").value.trim();
  const incoming = $("levels-incoming").value.trim();
  const expected = $("levels-expected").value;
  const backorder = $("levels-backorder").value.trim();
  if (backorder) fields.backorder_limit = Number(backorder);
  if (safety) fields.safety_stock = Number(safety);
  if (incoming) fields.incoming = Number(incoming);
  if (expected) fields.incoming_expected_at = `${expected}T00:00:00Z`;
  if (!Object.keys(fields).length) {
    notice("Give a safety stock, an incoming quantity, a date or a backorder limit.");
    return;
  }
  const { item } = await state.client.putItem(state.sku.sku, warehouse, fields);
  form.reset();
  $("levels-warehouse").value = warehouse;
  notice(
    `Set ${warehouse}: safety stock ${number(item.safety_stock)}, incoming ${number(item.incoming)}, ` +
      `backorder limit ${number(item.backorder_limit)}, available ${number(item.available)}.`,
  );
  await reloadSku({ history: false });
}

// Limit per customer ----------------------------------------------------------------

function renderLimit(view) {
  const units = view.limit_per_customer;
  const hours = view.limit_window_seconds == null ? null : view.limit_window_seconds / 3600;
  $("limit-now").textContent =
    units == null
      ? "No limit: any customer may hold and buy all of it."
      : `${number(units)} per customer, ${hours == null ? "for as long as the limit is set" : `within ${number(hours)} h`}.`;
  $("limit-remove").disabled = units == null;
}

async function setLimit(form) {
  const units = $("limit-units").value.trim();
  const hours = $("limit-window").value.trim();
  if (!units) {
    notice("Give the units per customer, or remove the limit.");
    return;
  }
  const answer = await state.client.putSku(state.sku.sku, {
    limit_per_customer: Number(units),
    limit_window_seconds: hours ? Math.round(Number(hours) * 3600) : null,
  });
  form.reset();
  notice(`Limit set: ${number(answer.limit_per_customer)} per customer (${number(answer.customers)} customers counted).`);
  await reloadSku({ history: false });
}

async function removeLimit() {
  await state.client.putSku(state.sku.sku, { limit_per_customer: null });
  notice("Limit removed.");
  await reloadSku({ history: false });
}

// Product and deletes -----------------------------------------------------------------

function renderProduct(view) {
  const product = view.product;
  $("product-now").textContent = product
    ? `Version ${product.version}, updated ${product.updated_at}.`
    : "No product record yet.";
  const fields = {
    "product-name": product?.name,
    "product-category": product?.category,
    "product-price": product?.price,
    "product-currency": product?.currency,
    "product-image": product?.image_url,
    "product-description": product?.description,
  };
  // Fill the form only when the record changed: a re-read for a stock
  // event must not wipe what someone is typing.
  const shown = `${view.sku}@${product ? product.version : 0}`;
  if (state.productShown === shown) return;
  state.productShown = shown;
  for (const [id, value] of Object.entries(fields)) $(id).value = value ?? "";
}

async function saveProduct() {
  const value = (id) => $(id).value.trim() || null;
  const currency = value("product-currency");
  const answer = await state.client.putProduct(state.sku.sku, {
    name: value("product-name"),
    category: value("product-category"),
    price: value("product-price"),
    currency: currency && currency.toUpperCase(),
    image_url: value("product-image"),
    description: $("product-description").value.trim() || null,
  });
  notice(`Product saved (version ${answer.product.version}).`);
  await reloadSku({ history: false });
}

async function deleteWarehouse(warehouse, version) {
  await state.client.deleteItem(state.sku.sku, warehouse, { ifMatch: `"${version}"` });
  notice(`Deleted ${state.sku.sku} in ${warehouse}.`);
  await reloadSku({ history: false });
}

async function deleteSku() {
  const sku = state.sku.sku;
  await state.client.deleteSku(sku);
  state.sku = null;
  renderSku();
  $("sku-heading").textContent = `Deleted ${sku}`;
}

// Warehouse priority ---------------------------------------------------------------

function renderPriority(view) {
  const list = view.warehouse_priority ?? [];
  $("priority-now").textContent =
    list.length === 0
      ? "No priority: allocation \"priority\" takes the most available warehouse first."
      : `Allocation "priority" takes ${list.join(", ")} first, then the rest, most available first.`;
  $("priority-remove").disabled = list.length === 0;
}

async function setPriority(form) {
  const list = $("priority-list")
    .value.split(",")
    .map((name) => name.trim())
    .filter((name) => name !== "");
  if (list.length === 0) {
    notice("Name the warehouses, most preferred first, or remove the priority.");
    return;
  }
  const answer = await state.client.putSkuPriority(state.sku.sku, list);
  form.reset();
  notice(`Warehouse priority set: ${answer.warehouse_priority.join(", ")}.`);
  await reloadSku({ history: false });
}

async function removePriority() {
  await state.client.putSkuPriority(state.sku.sku, null);
  notice("Warehouse priority removed.");
  await reloadSku({ history: false });
}

async function transfer(form) {
  const from = $("transfer-from").value;
  const to = $("transfer-to").value.trim();
  const quantity = Number($("transfer-quantity").value);
  const reason = $("transfer-reason").value.trim();
  await state.client.transfer({ sku: state.sku.sku, from, to, quantity, reason });
  form.reset();
  notice(`Moved ${number(quantity)} from ${from} to ${to}.`);
  await reloadSku();
}

// Movements -------------------------------------------------------------------------

async function loadHistory() {
  const view = state.sku;
  if (!view) return;
  const histories = await Promise.all(
    view.warehouses.map((item) =>
      state.client.history(view.sku, item.warehouse, { limit: HISTORY_PER_WAREHOUSE }).catch((error) => {
        if (error instanceof TallyError && error.code === "item_not_found") return { warehouse: item.warehouse, movements: [] };
        throw error;
      }),
    ),
  );
  if (state.sku !== view) return;
  const movements = histories
    .flatMap((history) => history.movements.map((movement) => ({ ...movement, warehouse: history.warehouse })))
    .sort((a, b) => b.at_ms - a.at_ms)
    .slice(0, HISTORY_ROWS_MAX);
  const rows = movements.map((m) =>
    h(
      "tr",
      {},
      h("td", { class: "mono" }, dateTime(m.at_ms)),
      h("td", {}, m.warehouse),
      h("td", {}, m.reason.replaceAll("_", " ")),
      h("td", { class: "num" }, `${m.delta > 0 ? "+" : ""}${number(m.delta)}`),
      h("td", { class: "num" }, `${number(m.on_hand_before)} → ${number(m.on_hand_after)}`),
      h("td", {}, m.by || "system"),
    ),
  );
  if (rows.length === 0) rows.push(h("tr", {}, h("td", { colSpan: 6, class: "muted" }, "No movements yet.")));
  $("history").tBodies[0].replaceChildren(...rows);
  await loadLedger(view);
}

/** The SKU's newest ledger entries: every movement, holds included, with who, why and the references. */
async function loadLedger(view) {
  let page;
  try {
    page = await state.client.ledgerNewest({ sku: view.sku, limit: LEDGER_ROWS_MAX });
  } catch (error) {
    if (error instanceof TallyError && error.code === "ledger_disabled") {
      $("ledger").tBodies[0].replaceChildren(h("tr", {}, h("td", { colSpan: 8, class: "muted" }, "The ledger is off on this node.")));
      return;
    }
    throw error;
  }
  if (state.sku !== view) return;
  const signed = (n) => `${n > 0 ? "+" : ""}${number(n)}`;
  const rows = page.map((e) => {
    const reference = [e.reference.order_id && `order ${e.reference.order_id}`, e.reference.reservation_id && shortId(e.reference.reservation_id), e.reference.document]
      .filter(Boolean).join(" · ");
    return h(
      "tr",
      { dataset: { id: e.id, kind: e.kind } },
      h("td", { class: "mono" }, dateTime(e.at_ms)),
      h("td", {}, e.warehouse || "—"),
      h("td", {}, e.kind.replaceAll("_", " ") + (e.reason ? ` (${e.reason})` : "")),
      h("td", { class: "num" }, e.kind === "gap" ? "—" : signed(e.quantity)),
      h("td", { class: "num" }, `${number(e.on_hand_before)} → ${number(e.on_hand_after)}`),
      h("td", { class: "num" }, `${number(e.reserved_before)} → ${number(e.reserved_after)}`),
      h("td", {}, e.principal || "system"),
      h("td", {}, [e.note, reference].filter(Boolean).join(" — ")),
    );
  });
  if (rows.length === 0) rows.push(h("tr", {}, h("td", { colSpan: 8, class: "muted" }, "No ledger entries yet.")));
  $("ledger").tBodies[0].replaceChildren(...rows);
}

// Live holds --------------------------------------------------------------------------

/** Follows holds of the open SKU from its stock_changed events. */
function trackHold(event) {
  const data = event.data;
  if (event.type !== "stock_changed" || !data.reservation || !state.sku || data.sku !== state.sku.sku) return;
  const units = data.reserved_after - data.reserved_before;
  if (data.cause === "hold") {
    if (!state.holds.has(data.reservation) && state.holds.size >= HOLDS_TRACKED_MAX) return;
    const hold = state.holds.get(data.reservation) || { lines: new Map(), at_ms: data.at_ms };
    hold.lines.set(data.warehouse, (hold.lines.get(data.warehouse) || 0) + units);
    state.holds.set(data.reservation, hold);
  } else {
    const hold = state.holds.get(data.reservation);
    if (!hold) return;
    hold.lines.delete(data.warehouse);
    if (hold.lines.size === 0) state.holds.delete(data.reservation);
  }
  renderHolds();
}

function renderHolds() {
  const rows = [];
  let tracked = 0;
  for (const [id, hold] of state.holds) {
    for (const [warehouse, units] of hold.lines) {
      tracked += units;
      rows.push(
        h(
          "tr",
          { dataset: { reservation: id } },
          h("td", { class: "mono", title: id }, shortId(id)),
          h("td", {}, warehouse),
          h("td", { class: "num" }, number(units)),
          h("td", { class: "mono" }, clock(hold.at_ms)),
          h(
            "td",
            {},
            h(
              "button",
              {
                type: "button",
                class: "danger",
                "aria-label": `Release reservation ${id}`,
                onclick: (e) =>
                  act(e.currentTarget, async () => {
                    await state.client.release(id);
                    notice(`Released reservation ${shortId(id)}.`);
                  }),
              },
              "Release",
            ),
          ),
        ),
      );
    }
  }
  if (rows.length === 0) rows.push(h("tr", {}, h("td", { colSpan: 5, class: "muted" }, "No holds seen since this page opened.")));
  $("holds").tBodies[0].replaceChildren(...rows);
  const reserved = state.sku ? state.sku.reserved : 0;
  $("holds-note").textContent =
    reserved > tracked
      ? `Holds made since this page opened. ${number(reserved - tracked)} of the ${number(reserved)} reserved units are held by earlier reservations; find one by its id or order below.`
      : "Holds made since this page opened, from the live event stream.";
}

/** Finds a reservation by id, or else by order id, and shows it with what may be done to it. */
async function lookUp(text) {
  const key = text.trim();
  let reservation;
  try {
    reservation = await state.client.getReservation(key);
  } catch (error) {
    // Not an id (400) or no such id (404): it may be an order id.
    if (!(error instanceof TallyError && (error.status === 400 || error.status === 404))) throw error;
    reservation = await state.client.getOrder(key);
  }
  renderReservation(reservation);
}

function renderReservation(reservation) {
  const box = $("lookup-result");
  const lines = reservation.lines.map((line) => `${line.sku} · ${line.warehouse} × ${number(line.quantity)}`).join(", ");
  const held = reservation.state === "HELD";
  const end = (verb, call) =>
    h(
      "button",
      {
        type: "button",
        class: verb === "Release" ? "danger" : "",
        onclick: (event) =>
          act(event.currentTarget, async () => {
            renderReservation(await call(reservation.id));
            notice(`${verb === "Release" ? "Released" : "Confirmed"} reservation ${shortId(reservation.id)}.`);
          }),
      },
      verb,
    );
  box.replaceChildren(
    h(
      "dl",
      { class: "kv" },
      h("dt", {}, "Reservation"),
      h("dd", { class: "mono" }, reservation.id),
      h("dt", {}, "State"),
      h("dd", { dataset: { state: reservation.state } }, reservation.state),
      h("dt", {}, "Lines"),
      h("dd", {}, lines),
      reservation.order_id ? [h("dt", {}, "Order"), h("dd", {}, reservation.order_id)] : null,
      h("dt", {}, held ? "Expires" : "Ended"),
      h("dd", { class: "mono" }, dateTime(held ? reservation.expires_at_ms : reservation.ended_at_ms || reservation.expires_at_ms)),
    ),
    held
      ? h("div", { class: "actions" }, end("Release", (id) => state.client.release(id)), end("Confirm", (id) => state.client.confirm(id)))
      : null,
  );
  box.hidden = false;
}

// ---------------------------------------------------------------------------
// Stock alert lists

async function loadAlerts() {
  const [out, low] = await Promise.all([listByStatus("OUT_OF_STOCK"), listByStatus("LOW_STOCK")]);
  renderAlertList($("out-list"), $("out-count"), out);
  renderAlertList($("low-list"), $("low-count"), low);
}

async function listByStatus(status) {
  const items = [];
  let cursor = null;
  let more = false;
  for (let page = 0; page < ALERT_PAGES_MAX; page++) {
    const answer = await state.client.listItems({ status, limit: ALERT_ITEMS_MAX, cursor, consistency: "stale" });
    items.push(...answer.items);
    cursor = answer.next_cursor;
    more = Boolean(cursor);
    if (!cursor || items.length >= ALERT_ITEMS_MAX) break;
  }
  return { items: items.slice(0, ALERT_ITEMS_MAX), more: more || items.length > ALERT_ITEMS_MAX };
}

function renderAlertList(list, count, { items, more }) {
  count.textContent = `(${items.length}${more ? "+" : ""})`;
  if (items.length === 0) {
    list.replaceChildren(h("li", { class: "muted" }, "None."));
    return;
  }
  list.replaceChildren(
    ...items.map((item) =>
      h(
        "li",
        { dataset: { sku: item.sku, warehouse: item.warehouse } },
        h("button", { type: "button", class: "link grow", onclick: () => act(null, () => openSku(item.sku)) }, `${item.sku} · ${item.warehouse}`),
        h("span", { class: "muted", title: "available / low at" }, `${number(item.available)} / ${number(item.low_stock_threshold)}`),
      ),
    ),
  );
}

function scheduleAlertsReload() {
  clearTimeout(state.alertsTimer);
  state.alertsTimer = setTimeout(() => loadAlerts().catch(report), ALERTS_RELOAD_DELAY_MS);
}

// ---------------------------------------------------------------------------
// Live events

function startStream() {
  if (state.stream) state.stream.close();
  state.stream = state.client.events({
    onEvent: onEvent,
    onStatus: (status, error) => {
      for (const pill of [$("stream-state"), $("feed-state")]) {
        pill.hidden = false;
        pill.dataset.state = status;
        pill.textContent = status;
      }
      if (error && (status === "stopped" || error.status === 0 || error.status >= 500)) report(error);
      else if (status === "live" && $("banner-code").textContent === "network_error") banner.hide();
    },
    onReset: () => {
      // Events were missed: what is on screen may be behind.
      reloadSku().catch(report);
      loadAlerts().catch(report);
    },
  });
}

function onEvent(event) {
  const data = event.data || {};
  trackHold(event);
  if (state.sku && data.sku === state.sku.sku) scheduleSkuReload(data.on_hand_before !== data.on_hand_after);
  if (event.type === "threshold_crossed") scheduleAlertsReload();
  if (state.feedPaused) return;
  state.feedQueue.push(event);
  if (state.feedQueue.length > FEED_ROWS_MAX) state.feedQueue.splice(0, state.feedQueue.length - FEED_ROWS_MAX);
  // Under a burst, render at most a few times a second.
  if (!state.feedTimer) state.feedTimer = setTimeout(flushFeed, 50);
}

function flushFeed() {
  state.feedTimer = null;
  const feed = $("feed");
  const skuOnly = $("feed-sku-only").checked && state.sku ? state.sku.sku : null;
  const rows = state.feedQueue
    .splice(0)
    .filter((event) => !skuOnly || (event.data && event.data.sku === skuOnly))
    .reverse()
    .map(feedRow);
  feed.prepend(...rows);
  while (feed.children.length > FEED_ROWS_MAX) feed.lastElementChild.remove();
  $("feed-empty").hidden = feed.children.length > 0;
}

function feedRow(event) {
  const data = event.data || {};
  const where = data.sku ? `${data.sku} · ${data.warehouse}` : "";
  let kind;
  let detail;
  switch (event.type) {
    case "stock_changed":
      kind = data.cause ? data.cause.replaceAll("_", " ") : "stock changed";
      detail = `available ${number(data.available_before)} → ${number(data.available_after)}` +
        (data.on_hand_before !== data.on_hand_after ? `, on hand ${number(data.on_hand_before)} → ${number(data.on_hand_after)}` : "");
      break;
    case "threshold_crossed":
      kind = `${data.from} → ${data.to}`.replaceAll("_", " ");
      detail = `available ${number(data.available)}, low at ${number(data.low_stock_threshold)}`;
      break;
    case "reservation.held":
    case "reservation.refused":
    case "reservation.confirmed":
    case "reservation.released":
    case "reservation.expired":
      kind = event.type.replace(".", " ");
      detail = (data.order_id ? `order ${data.order_id} · ` : "") + shortId(data.reservation) +
        (data.lines || []).map((line) => ` · ${line.sku} ×${number(line.quantity)}` +
          (line.available !== undefined ? ` (${number(line.available)} available)` : "")).join("");
      break;
    default:
      kind = event.type;
      detail = "";
  }
  const skuButton = data.sku
    ? h("button", { type: "button", class: "link", onclick: () => act(null, () => openSku(data.sku)) }, where)
    : null;
  return h(
    "li",
    { dataset: { type: event.type, id: event.id || "", sku: data.sku || "", to: data.to || "" } },
    h("time", { dateTime: new Date(data.at_ms || Date.now()).toISOString() }, clock(data.at_ms || Date.now())),
    h("div", { class: "what" }, h("span", { class: "kind" }, kind), " ", skuButton, h("div", { class: "muted" }, detail)),
  );
}

// ---------------------------------------------------------------------------
// Cluster

async function refreshCluster() {
  if (!state.client) return;
  renderCluster(await state.client.cluster());
}

function renderCluster(cluster) {
  const nodes = Object.entries(cluster.nodes || {});
  const leaders = new Set(cluster.shards.map((shard) => shard.leader).filter((leader) => leader !== null));
  const leaderless = cluster.shards.filter((shard) => shard.leader === null).length;
  $("cluster-summary").replaceChildren(
    h("dt", {}, "This node"),
    h("dd", {}, String(cluster.node_id)),
    h("dt", {}, "Nodes"),
    h("dd", {}, nodes.length ? nodes.map(([id, addr]) => `${id} (${addr})`).join(", ") : "—"),
    h("dt", {}, "Shards"),
    h("dd", {}, `${cluster.shards.length}, led by node${leaders.size === 1 ? "" : "s"} ${[...leaders].join(", ") || "—"}` +
      (leaderless ? ` · ${leaderless} without a leader` : "")),
  );
  const rows = cluster.shards.map((shard) => {
    const lag = Object.entries(shard.lag || {});
    return h(
      "tr",
      { dataset: { shard: String(shard.shard) } },
      h("td", { class: "num" }, String(shard.shard)),
      h("td", {}, shard.leader === null ? h("span", { class: "status status-OUT_OF_STOCK" }, "none") : `node ${shard.leader}`),
      h("td", { class: "num" }, String(shard.term)),
      h("td", { class: "num", title: `committed ${shard.committed_index ?? "—"}` }, shard.applied_index ?? "—"),
      // Lag is known on the leader only: entries each follower is behind.
      h("td", {}, lag.length ? lag.map(([node, behind]) => `node ${node}: ${behind}`).join(", ") : "—"),
    );
  });
  $("shards").tBodies[0].replaceChildren(...rows);
}

// Adding and removing nodes ----------------------------------------------------

/** How often the page follows a running node addition or removal. */
const NODE_CHANGE_POLL_MS = 500;

function describeChange(change) {
  if (!change) return "";
  const what = `${change.operation === "add" ? "Adding" : "Removing"} node ${change.node}`;
  const shards = `${change.shards_done} of ${change.shards_total} shards done`;
  if (change.state === "running") {
    return `${what}: ${shards}${change.shard === null ? "" : `, moving shard ${change.shard}`}…`;
  }
  if (change.state === "done") return `${what}: done (${shards}).`;
  return `${what}: failed after ${shards}: ${change.error || "no reason given"}. Run it again to resume.`;
}

/** Shows the change's progress until it ends, then the cluster as it is now. */
async function followNodeChange(status) {
  let change = status.change;
  $("node-change").textContent = describeChange(change);
  while (change && change.state === "running") {
    await new Promise((resolve) => setTimeout(resolve, NODE_CHANGE_POLL_MS));
    change = (await state.client.nodes()).change;
    $("node-change").textContent = describeChange(change);
  }
  await refreshCluster();
}

async function addNode() {
  const id = Number($("node-add-id").value);
  await followNodeChange(await state.client.addNode(id, $("node-add-addr").value.trim()));
}

async function removeNode() {
  await followNodeChange(await state.client.removeNode(Number($("node-remove-id").value)));
}

// ---------------------------------------------------------------------------
// Bundles

/** Most bundles the card lists (one page). */
const BUNDLES_LISTED_MAX = 100;

async function loadBundles() {
  const page = await state.client.listBundles({ limit: BUNDLES_LISTED_MAX });
  const views = await Promise.all(page.bundles.map((bundle) => state.client.getBundle(bundle.sku)));
  const rows = views.map((view) =>
    h(
      "tr",
      { "data-bundle": view.sku },
      h("td", {}, view.sku),
      h("td", {}, view.components.map((c) => `${c.sku} × ${number(c.quantity)}`).join(", ")),
      h("td", { class: "num" }, number(view.available)),
      h("td", {}, h("button", { type: "button", onclick: (event) => act(event.currentTarget, () => removeBundle(view.sku)) }, "Remove")),
    ),
  );
  $("bundles").tBodies[0].replaceChildren(...rows);
  $("bundles-empty").hidden = rows.length > 0;
}

/** `SKU units` per line (units default to 1) as components. */
function parseComponents(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line)
    .map((line) => {
      const [sku, units = "1"] = line.split(/[\s×]+/).filter((part) => part);
      return { sku, quantity: Number(units) };
    });
}

async function saveBundle(form) {
  const sku = $("bundle-sku").value.trim();
  const answer = await state.client.putBundle(sku, parseComponents($("bundle-components").value));
  form.reset();
  $("bundle-notice").textContent = `Saved ${answer.sku}: ${answer.components.length} component${answer.components.length === 1 ? "" : "s"}.`;
  await loadBundles();
}

async function removeBundle(sku) {
  await state.client.deleteBundle(sku);
  $("bundle-notice").textContent = `Removed ${sku}.`;
  await loadBundles();
}

// ---------------------------------------------------------------------------
// Wiring

function onSubmit(id, handler) {
  $(id).addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    act(form.querySelector("button[type=submit]"), () => handler(form));
  });
}

function wire() {
  fillSelect($("adjust-reason"), ADJUST_REASONS);
  fillSelect($("move-from"), QUANTITY_STATES);
  fillSelect($("move-to"), QUANTITY_STATES.filter((name) => name !== "incoming"));
  onSubmit("signin-form", () => signIn($("key").value.trim()));
  onSubmit("search-form", () => search($("search-input").value));
  onSubmit("new-item-form", createItem);
  onSubmit("edit-form", saveEdit);
  onSubmit("adjust-form", adjust);
  onSubmit("transfer-form", transfer);
  onSubmit("limit-form", setLimit);
  onSubmit("bundle-form", saveBundle);
  $("bundles-refresh").addEventListener("click", (event) => act(event.currentTarget, loadBundles));
  onSubmit("product-form", saveProduct);
  $("sku-delete").addEventListener("click", (event) => act(event.currentTarget, deleteSku));
  onSubmit("move-form", moveQuantity);
  onSubmit("levels-form", setLevels);
  $("limit-remove").addEventListener("click", (event) => act(event.currentTarget, removeLimit));
  onSubmit("priority-form", setPriority);
  $("priority-remove").addEventListener("click", (event) => act(event.currentTarget, removePriority));
  onSubmit("lookup-form", () => lookUp($("lookup-id").value));
  $("edit-cancel").addEventListener("click", closeEdit);
  $("edit-form").addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeEdit();
  });
  $("conflict-reapply").addEventListener("click", (event) => act(event.currentTarget, () => putEdit(state.edit)));
  $("conflict-discard").addEventListener("click", () => {
    const edit = state.edit;
    if (!edit) return;
    const row = document.querySelector(`#warehouses tr[data-warehouse="${CSS.escape(edit.warehouse)}"]`);
    closeEdit();
    notice("Kept the newer values.");
    if (row) row.querySelector("button").focus();
  });
  $("sign-out").addEventListener("click", signOut);
  $("banner-close").addEventListener("click", banner.hide);
  $("banner-sign-in").addEventListener("click", signOut);
  $("sku-refresh").addEventListener("click", (event) => act(event.currentTarget, reloadSku));
  $("alerts-refresh").addEventListener("click", (event) => act(event.currentTarget, loadAlerts));
  $("cluster-refresh").addEventListener("click", (event) => act(event.currentTarget, refreshCluster));
  onSubmit("node-add-form", addNode);
  onSubmit("node-remove-form", removeNode);
  $("feed-pause").addEventListener("click", (event) => {
    state.feedPaused = !state.feedPaused;
    event.currentTarget.setAttribute("aria-pressed", String(state.feedPaused));
    event.currentTarget.textContent = state.feedPaused ? "Resume" : "Pause";
  });
  $("feed-clear").addEventListener("click", () => {
    $("feed").replaceChildren();
    $("feed-empty").hidden = false;
  });
}

async function boot() {
  wire();
  const key = storedKey();
  $("booting").hidden = true;
  if (key === null) {
    showSignIn();
    return;
  }
  try {
    await signIn(key);
  } catch (error) {
    showSignIn();
    report(error);
  }
}

boot().catch((error) => {
  $("booting").hidden = true;
  report(error);
});
