/**
 * Tally API client: the one way the admin page (`/admin`) and the storefront
 * widget (`/widget.js`) talk to Tally. An ES module with no dependencies;
 * served by every node at `/ui/api-client.js`.
 *
 *     import { TallyClient, TallyError } from "https://tally.example/ui/api-client.js";
 *     const tally = new TallyClient({ baseUrl: "https://tally.example/", key: "…" });
 *     const { item, etag } = await tally.getItem("SHOE-42", "berlin");
 *     try {
 *       await tally.putItem("SHOE-42", "berlin", { on_hand: 20 }, { ifMatch: etag });
 *     } catch (error) {
 *       if (error instanceof TallyError && error.code === "version_mismatch") { … }
 *     }
 *     const stream = tally.events({ sku: "SHOE-42", onEvent: (event) => console.log(event.type, event.data) });
 *     stream.close();
 *
 * Requests carry `Authorization: Bearer <key>` when a key is given (roles:
 * `read` < `reserve` < `admin`); without one they rely on the server being
 * open or on `auth.anonymous_read`. From a page on another origin, that
 * origin must be in the server's `server.cors_origins`.
 *
 * Every failure is thrown as a `TallyError` built from the API's
 * `application/problem+json` body: `status`, `code` (stable, see
 * `ERROR_CODES`), `title`, `detail`, the whole `problem`, and `retryAfterS`.
 * A request that got no answer throws a `TallyError` with status 0 and code
 * `network_error`; an answer that is not a problem gets code `http_<status>`.
 *
 * Live events (`GET /v1/events`, Server-Sent Events) are read with fetch()
 * and a stream reader rather than EventSource, because EventSource cannot
 * send the Authorization header. `events()` parses the `id:`, `event:` and
 * `data:` lines itself and reconnects after a dropped stream, a `lagged`
 * notice or a 503, resuming after the last id it saw (`last_event_id`, so
 * no CORS preflight is needed). Delivery is at least once; it drops ids it
 * has already delivered.
 */

/** Every route of the API: method, path template and the role it needs (null: none). */
export const ROUTES = Object.freeze({
  putItem: { method: "PUT", path: "/v1/items/{sku}/{warehouse}", role: "admin" },
  getItem: { method: "GET", path: "/v1/items/{sku}/{warehouse}", role: "read" },
  getSku: { method: "GET", path: "/v1/items/{sku}", role: "read" },
  putSku: { method: "PUT", path: "/v1/items/{sku}", role: "admin" },
  putProduct: { method: "PUT", path: "/v1/items/{sku}", role: "admin" },
  deleteItem: { method: "DELETE", path: "/v1/items/{sku}/{warehouse}", role: "admin" },
  deleteSku: { method: "DELETE", path: "/v1/items/{sku}", role: "admin" },
  listItems: { method: "GET", path: "/v1/items", role: "read" },
  adjust: { method: "POST", path: "/v1/items/{sku}/{warehouse}/adjustments", role: "admin" },
  history: { method: "GET", path: "/v1/items/{sku}/{warehouse}/history", role: "read" },
  transfer: { method: "POST", path: "/v1/transfers", role: "admin" },
  availability: { method: "POST", path: "/v1/availability", role: "read" },
  listBundles: { method: "GET", path: "/v1/bundles", role: "read" },
  getBundle: { method: "GET", path: "/v1/bundles/{sku}", role: "read" },
  putBundle: { method: "PUT", path: "/v1/bundles/{sku}", role: "admin" },
  deleteBundle: { method: "DELETE", path: "/v1/bundles/{sku}", role: "admin" },
  reserve: { method: "POST", path: "/v1/reservations", role: "reserve" },
  reserveBatch: { method: "POST", path: "/v1/reservations/batch", role: "reserve" },
  getReservation: { method: "GET", path: "/v1/reservations/{id}", role: "read" },
  confirm: { method: "POST", path: "/v1/reservations/{id}/confirm", role: "reserve" },
  release: { method: "POST", path: "/v1/reservations/{id}/release", role: "reserve" },
  extend: { method: "POST", path: "/v1/reservations/{id}/extend", role: "reserve" },
  getOrder: { method: "GET", path: "/v1/orders/{order_id}", role: "read" },
  confirmOrder: { method: "POST", path: "/v1/orders/{order_id}/confirm", role: "reserve" },
  releaseOrder: { method: "POST", path: "/v1/orders/{order_id}/release", role: "reserve" },
  extendOrder: { method: "POST", path: "/v1/orders/{order_id}/extend", role: "reserve" },
  events: { method: "GET", path: "/v1/events", role: "read" },
  alerts: { method: "GET", path: "/v1/alerts", role: "read" },
  ledger: { method: "GET", path: "/v1/ledger", role: "read" },
  cluster: { method: "GET", path: "/v1/cluster", role: "read" },
  digests: { method: "GET", path: "/v1/cluster/digests", role: "read" },
  nodes: { method: "GET", path: "/v1/admin/nodes", role: "admin" },
  addNode: { method: "POST", path: "/v1/admin/nodes", role: "admin" },
  removeNode: { method: "DELETE", path: "/v1/admin/nodes/{id}", role: "admin" },
  metrics: { method: "GET", path: "/metrics", role: "read" },
  openapi: { method: "GET", path: "/openapi.json", role: "read" },
  healthz: { method: "GET", path: "/healthz", role: null },
  readyz: { method: "GET", path: "/readyz", role: null },
});

/** The stable `code` of every problem the API answers, with what it means to a person. */
export const ERROR_CODES = Object.freeze({
  // 400
  invalid_json: "The body is not valid JSON.",
  invalid_body: "The body does not have the expected fields or types.",
  invalid_query: "A query parameter is unknown or malformed.",
  invalid_path: "A path segment is malformed.",
  field_empty: "A field is empty.",
  field_too_long: "A field is too long.",
  field_bad_character: "A field has a character it may not have.",
  field_bad_length: "A field has the wrong length.",
  quantity_zero: "A quantity or delta is 0.",
  quantity_too_large: "A quantity is over 10^15.",
  no_lines: "The reservation has no lines.",
  too_many_lines: "The reservation has too many lines.",
  same_warehouse: "A transfer must go to another warehouse.",
  ttl_out_of_range: "The TTL is out of the allowed range.",
  invalid_limit: "The limit is out of range.",
  invalid_cursor: "The cursor does not come from a previous page.",
  invalid_kind: "The ledger kind is not one it records.",
  invalid_time: "A time is not RFC 3339 (e.g. 2026-12-06T17:00:00Z).",
  ledger_disabled: "The ledger is off on this node.",
  ledger_unavailable: "The ledger could not be read on this node.",
  invalid_status: "The status is not IN_STOCK, LOW_STOCK or OUT_OF_STOCK.",
  invalid_reason: "The reason is not one the API knows.",
  invalid_lines: "The availability question has no lines or too many.",
  invalid_batch_size: "The batch has no requests or too many.",
  invalid_precondition: "If-Match / If-None-Match is malformed.",
  invalid_reservation_id: "The reservation id is malformed.",
  invalid_idempotency_key: "The Idempotency-Key is malformed.",
  invalid_event_id: "The Last-Event-ID is not an event id.",
  customer_id_required: "The SKU has a limit per customer: the reservation must name its customer_id.",
  window_without_limit: "A limit window needs a limit per customer.",
  invalid_price: "The price is not a decimal with at most two decimals, such as 19.99.",
  invalid_warehouse_priority:
    "The warehouse priority names a warehouse twice, one that does not stock the SKU, or too many.",
  invalid_header: "The CSV header names an unknown or repeated column, or lacks sku or warehouse.",
  invalid_import_id: "The Import-Id is malformed.",
  invalid_format: "The format is not ndjson or csv.",
  invalid_bundle: "The bundle has no components, too many, one twice, or itself.",
  // 401, 403
  unauthorized: "No API key, or an unknown one.",
  forbidden: "The API key's role does not allow this.",
  // 404
  item_not_found: "No such item.",
  reservation_not_found: "No such reservation.",
  order_not_found: "No reservation for this order.",
  import_not_found: "No such import among this node's recent ones.",
  bundle_not_found: "The SKU is not a bundle.",
  node_not_member: "The node is not a member of any shard.",
  not_found: "No such route.",
  // 405, 410, 413, 415
  method_not_allowed: "The route does not take this method.",
  event_id_not_retained: "The event is too old to resume after; reload and subscribe afresh.",
  body_too_large: "The body is too large.",
  unsupported_media_type: "The body must be application/json.",
  // 409
  insufficient_stock: "Not enough stock for some lines.",
  reservation_confirmed: "The reservation is already confirmed.",
  reservation_released: "The reservation is already released.",
  reservation_expired: "The reservation has expired.",
  below_reserved: "On hand would drop below the units reserved.",
  idempotency_key_reused: "This idempotency key or order was used for another reservation.",
  shard_full: "The shard has no room for more.",
  customer_limit: "The customer would pass the SKU's limit per customer.",
  confirm_over_held: "A confirm line names units the reservation does not hold there.",
  node_already_member: "The node is already a voter of every shard.",
  membership_change_in_progress: "A node addition or removal is running on this node; wait for it to end.",
  item_has_holds: "Live holds reserve units of the item; release or confirm them before deleting.",
  import_running: "An import with this Import-Id is running.",
  bundle_nested: "A bundle's component is a bundle; bundles do not nest.",
  sku_is_bundle: "The SKU is a bundle: it has no stock of its own.",
  sku_has_items: "The SKU has stock of its own, so it cannot be a bundle.",
  // 412
  version_mismatch: "The item changed since you read it.",
  item_exists: "The item exists already.",
  // 422
  quantity_overflow: "A level would exceed 10^15.",
  deadline_in_past: "The deadline is not in the future.",
  deadline_too_far: "The deadline is too far away.",
  deadline_earlier: "The new deadline would be earlier than the current one.",
  // 429
  rate_limited: "The API key is over its rate limit; retry later.",
  // 503
  unavailable: "The shard has no reachable leader; retry later.",
  overloaded: "The shard is overloaded; retry later.",
  outcome_unknown: "The write may or may not have applied; retrying with the same Idempotency-Key is safe.",
  timeout: "The request took too long.",
  not_ready: "Some shards have no leader yet.",
  shard_stopped: "The shard stopped on this node (its storage failed or its state broke a rule); another node may serve it.",
  too_many_subscribers: "Too many live event subscribers; retry later.",
  shutting_down: "The node is shutting down.",
  // Client side
  network_error: "No answer from Tally (network error, server down, or CORS refused).",
});

/** The reasons an adjustment may give. */
export const ADJUST_REASONS = Object.freeze(["receive", "return", "damage", "loss", "count", "sale", "correction"]);

/** A failed request: the API's problem, or a network failure (status 0). */
export class TallyError extends Error {
  constructor({ status, code, title, detail, problem = null, retryAfterS = null }) {
    super(`${title}: ${detail} (${code})`);
    this.name = "TallyError";
    this.status = status;
    this.code = code;
    this.title = title;
    this.detail = detail;
    this.problem = problem;
    this.retryAfterS = retryAfterS;
  }

  /** A sentence for people: the problem's detail, or what its code means. */
  get explanation() {
    return this.detail || ERROR_CODES[this.code] || this.title;
  }
}

/** Bounds of the event stream's reconnects. */
const RECONNECT_DELAY_MIN_MS = 500;
const RECONNECT_DELAY_MAX_MS = 15_000;
/** Event ids remembered to drop repeats after a resume (at least once delivery). */
const SEEN_IDS_MAX = 4096;
/** Longest SSE line kept while waiting for its end; a longer one is a broken stream. */
const SSE_LINE_BYTES_MAX = 1 << 20;

export class TallyClient {
  /**
   * @param {object} options
   * @param {string|URL} [options.baseUrl] where Tally is, e.g. "https://tally.example/"; default: this page's origin
   * @param {string|null} [options.key] an API key, sent as `Authorization: Bearer <key>`
   */
  constructor({ baseUrl = globalThis.location ? globalThis.location.origin + "/" : "http://127.0.0.1:8080/", key = null } = {}) {
    const base = String(baseUrl);
    this.baseUrl = base.endsWith("/") ? base : base + "/";
    this.key = key || null;
  }

  /** An absolute URL of an API path ("/v1/...") with query parameters (null/undefined ones left out). */
  url(path, query = {}) {
    const url = new URL(path.replace(/^\//, ""), this.baseUrl);
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
    }
    return url;
  }

  headers(extra = {}) {
    const headers = { Accept: "application/json", ...extra };
    if (this.key) headers.Authorization = `Bearer ${this.key}`;
    return headers;
  }

  /**
   * One request. Resolves `{ status, etag, body }` for 2xx and 304; throws a
   * `TallyError` for anything else.
   */
  async request(method, path, { query, body, headers, signal } = {}) {
    const init = { method, headers: this.headers(headers), signal, cache: "no-store" };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(this.url(path, query), init);
    } catch (error) {
      if (error && error.name === "AbortError") throw error;
      throw networkError(error);
    }
    const text = await response.text().catch(() => "");
    const parsed = parseJson(text);
    if (response.ok || response.status === 304) {
      return { status: response.status, etag: response.headers.get("ETag"), body: parsed ?? text };
    }
    throw problemError(response, parsed, text);
  }

  // Items -------------------------------------------------------------------

  /** One item and its ETag (`"<version>"`). */
  async getItem(sku, warehouse, { consistency } = {}) {
    const answer = await this.request("GET", itemPath(sku, warehouse), { query: { consistency } });
    return { item: answer.body, etag: answer.etag };
  }

  /** Every warehouse of a SKU, with totals (`warehouses`, `on_hand`, `reserved`, `available`). */
  async getSku(sku, { consistency } = {}) {
    return (await this.request("GET", `/v1/items/${enc(sku)}`, { query: { consistency } })).body;
  }

  /**
   * Sets a SKU's limit per customer (admin): `limit_per_customer` (null
   * removes it) and `limit_window_seconds` (null: sales count while the
   * limit is set).
   */
  async putSku(sku, { limit_per_customer, limit_window_seconds }) {
    const body = { limit_per_customer: limit_per_customer ?? null, limit_window_seconds: limit_window_seconds ?? null };
    return (await this.request("PUT", `/v1/items/${enc(sku)}`, { body })).body;
  }

  /** A page of bundle definitions: `{ bundles: [{ sku, components }], next_cursor }`. */
  async listBundles({ limit, cursor, consistency } = {}) {
    return (await this.request("GET", "/v1/bundles", { query: { limit, cursor, consistency } })).body;
  }

  /** A bundle and what its components allow: `{ sku, components, available, warehouses }`. */
  async getBundle(sku, { consistency } = {}) {
    return (await this.request("GET", `/v1/bundles/${enc(sku)}`, { query: { consistency } })).body;
  }

  /** Defines or changes a bundle (admin): `components` is `[{ sku, quantity }]`, units per bundle. */
  async putBundle(sku, components) {
    return (await this.request("PUT", `/v1/bundles/${enc(sku)}`, { body: { components } })).body;
  }

  /** Removes a bundle's definition (admin). */
  async deleteBundle(sku) {
    await this.request("DELETE", `/v1/bundles/${enc(sku)}`);
  }

  /**
   * Sets a SKU's product record (admin): any of name, description,
   * category, price ("19.99"), currency, image_url; null clears a field,
   * a field left out keeps its value. Answers `{ sku, product }`.
   */
  async putProduct(sku, fields) {
    return (await this.request("PUT", `/v1/items/${enc(sku)}`, { body: fields })).body;
  }

  /** Deletes an item no live hold reserves (admin); `ifMatch`: only at that ETag. */
  async deleteItem(sku, warehouse, { ifMatch } = {}) {
    const headers = {};
    if (ifMatch) headers["If-Match"] = ifMatch;
    await this.request("DELETE", itemPath(sku, warehouse), { headers });
  }

  /** Deletes a SKU's product and every item of it (admin), all or nothing. */
  async deleteSku(sku) {
    await this.request("DELETE", `/v1/items/${enc(sku)}`);
  }

  /**
   * Sets a SKU's warehouse priority for `priority` allocation (admin): the
   * warehouses most preferred first; null or [] removes it. The limit per
   * customer is left as it is.
   */
  async putSkuPriority(sku, warehouses) {
    const body = { warehouse_priority: warehouses ?? null };
    return (await this.request("PUT", `/v1/items/${enc(sku)}`, { body })).body;
  }

  /** A page of items: `{ items, next_cursor }`. Follow `next_cursor` until it is null. */
  async listItems({ status, warehouse, limit, cursor, consistency } = {}) {
    return (await this.request("GET", "/v1/items", { query: { status, warehouse, limit, cursor, consistency } })).body;
  }

  /**
   * Creates or sets an item (admin). `fields`: on_hand, low_stock_threshold,
   * name, unit_price_minor. `ifMatch`: an ETag (412 `version_mismatch` if the
   * item moved on); `createOnly`: 412 `item_exists` if it exists.
   */
  async putItem(sku, warehouse, fields, { ifMatch, createOnly } = {}) {
    const headers = {};
    if (ifMatch) headers["If-Match"] = ifMatch;
    if (createOnly) headers["If-None-Match"] = "*";
    const answer = await this.request("PUT", itemPath(sku, warehouse), { body: fields, headers });
    return { item: answer.body, etag: answer.etag, created: answer.status === 201 };
  }

  /** Adds (`delta` > 0) or takes (`delta` < 0) units with a reason (admin); the item after. */
  async adjust(sku, warehouse, delta, reason) {
    const answer = await this.request("POST", `${itemPath(sku, warehouse)}/adjustments`, { body: { delta, reason } });
    return { item: answer.body, etag: answer.etag };
  }

  /**
   * Moves `quantity` units between quantity states (admin): `from` and `to`
   * are `available`, `safety_stock`, `damaged`, `quality_control` or (from
   * only) `incoming`; `note` and `reference` go to the ledger. The item after.
   */
  async moveQuantity(sku, warehouse, { from, to, quantity, note, reference }) {
    const body = { from, to, quantity };
    if (note) body.note = note;
    if (reference) body.reference = reference;
    const answer = await this.request("POST", `${itemPath(sku, warehouse)}/moves`, { body });
    return { item: answer.body, etag: answer.etag };
  }

  /** Recent movements of an item, newest first. */
  async history(sku, warehouse, { limit } = {}) {
    return (await this.request("GET", `${itemPath(sku, warehouse)}/history`, { query: { limit } })).body;
  }

  /** One page of the movement ledger: `{ sku, warehouse, kind, since, until, cursor, limit }`. */
  async ledger(query = {}) {
    return (await this.request("GET", "/v1/ledger", { query })).body;
  }

  /**
   * The newest `limit` ledger entries that `query` keeps, newest first. The
   * ledger pages oldest first, so this walks its pages (bounded by
   * `pagesMax`) and keeps the tail.
   */
  async ledgerNewest({ limit = 50, pagesMax = 20, ...query } = {}) {
    let newest = [];
    let cursor;
    for (let page = 0; page < pagesMax; page += 1) {
      const answer = await this.ledger({ ...query, limit: 1000, cursor });
      newest = newest.concat(answer.entries).slice(-limit);
      if (!answer.next_cursor) break;
      cursor = answer.next_cursor;
    }
    return newest.reverse();
  }

  /** Moves `quantity` units of a SKU between warehouses, atomically (admin): `{ from, to, quantity, reason }`. */
  async transfer({ sku, from, to, quantity, reason }) {
    return (await this.request("POST", "/v1/transfers", { body: { sku, from, to, quantity, reason: reason || undefined } })).body;
  }

  /** Whether lines are available, without holding them. */
  async availability(lines, { consistency } = {}) {
    return (await this.request("POST", "/v1/availability", { body: { lines, consistency } })).body;
  }

  // Reservations --------------------------------------------------------------

  /** Holds lines (reserve role): `{ lines, ttl_seconds, order_id, commit }`; `idempotencyKey` makes a retry safe. */
  async reserve(body, { idempotencyKey } = {}) {
    const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    return (await this.request("POST", "/v1/reservations", { body, headers })).body;
  }

  async getReservation(id) {
    return (await this.request("GET", `/v1/reservations/${enc(id)}`)).body;
  }

  async confirm(id) {
    return (await this.request("POST", `/v1/reservations/${enc(id)}/confirm`)).body;
  }

  async release(id) {
    return (await this.request("POST", `/v1/reservations/${enc(id)}/release`)).body;
  }

  async extend(id, ttlSeconds) {
    return (await this.request("POST", `/v1/reservations/${enc(id)}/extend`, { body: { ttl_seconds: ttlSeconds } })).body;
  }

  async getOrder(orderId) {
    return (await this.request("GET", `/v1/orders/${enc(orderId)}`)).body;
  }

  // Events and operations -------------------------------------------------------

  /** Recent threshold crossings, newest first. */
  async alerts({ sku, limit } = {}) {
    return (await this.request("GET", "/v1/alerts", { query: { sku, limit } })).body;
  }

  /** Nodes, and per shard its leader, term, indexes and follower lag. */
  async cluster() {
    return (await this.request("GET", "/v1/cluster")).body;
  }

  /** The cluster's nodes and the last or running node addition or removal (admin role). */
  async nodes() {
    return (await this.request("GET", "/v1/admin/nodes")).body;
  }

  /** Starts adding node `id` (peer address `addr`) to every shard; answers at once, with its progress. */
  async addNode(id, addr) {
    return (await this.request("POST", "/v1/admin/nodes", { body: { id, addr } })).body;
  }

  /** Starts removing node `id` from every shard; answers at once, with its progress. */
  async removeNode(id) {
    return (await this.request("DELETE", `/v1/admin/nodes/${enc(String(id))}`)).body;
  }

  async readyz() {
    return (await this.request("GET", "/readyz")).body;
  }

  /**
   * Follows `GET /v1/events` until `close()`.
   *
   * @param {object} options
   * @param {string} [options.sku] only this SKU's events
   * @param {string} [options.lastEventId] resume after this id
   * @param {(event: {id: string, type: string, data: object}) => void} options.onEvent each event, once
   * @param {(state: "connecting"|"live"|"reconnecting"|"stopped", error?: TallyError) => void} [options.onStatus]
   *   "live" once the server holds the subscription (every later change is delivered);
   *   "stopped" after an error retrying cannot fix (401, 403, 400).
   * @param {() => void} [options.onReset] the resume point was no longer retained (410): events were
   *   missed, so re-read current state; the stream goes on from now.
   * @returns {{ close(): void, readonly lastEventId: string|null }}
   */
  events({ sku, lastEventId = null, onEvent, onStatus = () => {}, onReset = () => {} }) {
    const client = this;
    const seen = new Set();
    const seenOrder = [];
    let lastId = lastEventId;
    let closed = false;
    let controller = null;
    let delayMs = RECONNECT_DELAY_MIN_MS;
    let timer = null;

    const deliver = (frame) => {
      if (frame.id) {
        if (seen.has(frame.id)) return;
        seen.add(frame.id);
        seenOrder.push(frame.id);
        if (seenOrder.length > SEEN_IDS_MAX) seen.delete(seenOrder.shift());
        lastId = frame.id;
      }
      let data = frame.data;
      try {
        data = JSON.parse(frame.data);
      } catch {
        // Not JSON: hand the text over as it is.
      }
      onEvent({ id: frame.id, type: frame.event || "message", data });
    };

    const scheduleReconnect = (waitMs) => {
      if (closed) return;
      onStatus("reconnecting");
      const jitter = Math.random() * 0.2 * waitMs;
      timer = setTimeout(connect, waitMs + jitter);
      delayMs = Math.min(delayMs * 2, RECONNECT_DELAY_MAX_MS);
    };

    async function connect() {
      if (closed) return;
      onStatus("connecting");
      controller = new AbortController();
      let response;
      try {
        response = await fetch(client.url("/v1/events", { sku, last_event_id: lastId }), {
          headers: client.headers({ Accept: "text/event-stream" }),
          signal: controller.signal,
          cache: "no-store",
        });
      } catch (error) {
        if (closed) return;
        onStatus("reconnecting", networkError(error));
        scheduleReconnect(delayMs);
        return;
      }
      if (!response.ok) {
        const text = await response.text().catch(() => "");
        const error = problemError(response, parseJson(text), text);
        if (error.code === "event_id_not_retained") {
          lastId = null;
          onReset();
          scheduleReconnect(0);
        } else if (response.status >= 500 || response.status === 429) {
          onStatus("reconnecting", error);
          scheduleReconnect(Math.max(delayMs, (error.retryAfterS || 0) * 1000));
        } else {
          closed = true;
          onStatus("stopped", error);
        }
        return;
      }
      onStatus("live");
      delayMs = RECONNECT_DELAY_MIN_MS;
      try {
        await readFrames(response.body, (frame) => {
          if (frame.event === "lagged") return; // the stream ends next; resume after lastId
          deliver(frame);
        });
      } catch (error) {
        if (closed) return;
        onStatus("reconnecting", networkError(error));
      }
      scheduleReconnect(closed ? 0 : delayMs);
    }

    connect();
    return {
      close() {
        closed = true;
        clearTimeout(timer);
        if (controller) controller.abort();
        onStatus("stopped");
      },
      get lastEventId() {
        return lastId;
      },
    };
  }
}

/**
 * Reads a `text/event-stream` body and calls `onFrame({ id, event, data })`
 * for each message: fields per line, a blank line ends a message, lines
 * starting with `:` are comments (keep-alives).
 */
export async function readFrames(body, onFrame) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let frame = { id: null, event: null, data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A lone \r at the end of the buffer may be the first half of \r\n.
      if (buffer[end] === "\r" && end === buffer.length - 1) break;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (frame.data.length > 0 || frame.event) {
          onFrame({ id: frame.id, event: frame.event, data: frame.data.join("\n") });
        }
        frame = { id: null, event: null, data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") frame.data.push(value);
      else if (field === "event") frame.event = value;
      else if (field === "id") frame.id = value;
    }
    if (buffer.length > SSE_LINE_BYTES_MAX) throw new Error("an event-stream line is too long");
  }
}

function itemPath(sku, warehouse) {
  return `/v1/items/${enc(sku)}/${enc(warehouse)}`;
}

function enc(segment) {
  return encodeURIComponent(String(segment));
}

function parseJson(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function networkError(error) {
  const message = error && error.message ? error.message : String(error);
  return new TallyError({
    status: 0,
    code: "network_error",
    title: "No answer from Tally",
    detail: `${message}. Is the server running and reachable from this page?`,
  });
}

function problemError(response, parsed, text) {
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  const retryAfterS = Number.isFinite(retryAfter) ? retryAfter : null;
  if (parsed && typeof parsed === "object" && typeof parsed.code === "string") {
    return new TallyError({
      status: response.status,
      code: parsed.code,
      title: parsed.title || response.statusText || `HTTP ${response.status}`,
      detail: parsed.detail || ERROR_CODES[parsed.code] || "",
      problem: parsed,
      retryAfterS,
    });
  }
  return new TallyError({
    status: response.status,
    code: `http_${response.status}`,
    title: response.statusText || `HTTP ${response.status}`,
    detail: (text || "").slice(0, 200) || "The server answered without a problem description.",
    retryAfterS,
  });
}
