/*
 * Tally stock badge: "In stock", "Only N left" or "Out of stock" for one
 * SKU, kept live from Tally's event stream. Served by every Tally node at
 * /widget.js; it loads /ui/api-client.js from the same place.
 *
 * Embed it where the badge should appear:
 *
 *   <script src="https://tally.example/widget.js" data-sku="SHOE-42"
 *           data-warehouse="berlin" data-low="5" async></script>
 *
 * or mark any number of elements and include the script once:
 *
 *   <span data-tally-sku="SHOE-42" data-tally-warehouse="berlin"></span>
 *   <span data-tally-sku="HAT-7"></span>
 *   <script src="https://tally.example/widget.js" data-key="…" async></script>
 *
 * Attributes, on the script tag or as data-tally-* on an element (data-tally-sku,
 * data-tally-warehouse, data-tally-low, data-tally-key). An element without its
 * own data-tally-key uses the script's data-key; the script's data-sku,
 * data-warehouse and data-low are its own badge's only; data-api is the script's:
 *   data-sku        the SKU (required on the script form)
 *   data-warehouse  one warehouse; without it, the SKU's total over all its warehouses
 *   data-low        show "Only N left" when N = available units is at or below this number;
 *                   without it, when the item is LOW_STOCK (available at or below the item's
 *                   low_stock_threshold) or, for a whole SKU, when none of its warehouses is IN_STOCK
 *   data-key        an API key with the `read` role; leave it out when the server sets
 *                   auth.anonymous_read = true (or has no keys). The key is visible to every
 *                   shopper: never give a widget more than a read key.
 *   data-api        where Tally is, if not where widget.js came from
 *
 * The badge (the marked element, or a <span> right after the script) gets
 * class="tally-stock" data-state="in|low|out|loading|error" data-available="N"
 * data-live="true|false": style it with those. It is a polite live region, so
 * screen readers hear the change. An item no warehouse stocks reads "Out of
 * stock" (data-error="item_not_found"). When Tally cannot be asked (network,
 * 401, 403) it reads "Stock unavailable", with the code on data-error and the
 * problem in the console: a shopper never sees a raw error.
 *
 * Live: it subscribes to GET /v1/events?sku=, reads the levels once, then
 * applies each stock change as it arrives (pushed; it never polls), and
 * reconnects with last_event_id when the stream drops. Badges of one SKU
 * and key on a page share one stream.
 *
 * On another origin than Tally, add the shop's origin to Tally's
 * server.cors_origins (e.g. cors_origins = ["https://shop.example"]); the
 * scripts themselves are served with Access-Control-Allow-Origin: *.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script || !script.src) return;
  var scriptData = script.dataset;
  var apiBase = new URL(scriptData.api || "./", script.src).href;
  var clientUrl = new URL("ui/api-client.js", new URL("./", script.src)).href;

  var STYLE_ID = "tally-stock-style";
  /** Events kept while the first read is under way; past it, read again. */
  var QUEUED_EVENTS_MAX = 1000;
  var CSS =
    ".tally-stock{display:inline-flex;align-items:center;gap:.4em;font:inherit;font-weight:600}" +
    ".tally-stock::before{content:'';width:.6em;height:.6em;border-radius:50%;background:currentColor}" +
    ".tally-stock[data-state=in]{color:#16794c}.tally-stock[data-state=low]{color:#b35900}" +
    ".tally-stock[data-state=out]{color:#b42318}" +
    ".tally-stock[data-state=loading],.tally-stock[data-state=error]{color:#667085;font-weight:400}";

  function badges() {
    var found = [];
    if (scriptData.sku) {
      var span = document.createElement("span");
      script.insertAdjacentElement("afterend", span);
      found.push({ element: span, sku: scriptData.sku, warehouse: scriptData.warehouse || null, low: scriptData.low });
    }
    // Elements another copy of this script already took are left to it.
    var marked = document.querySelectorAll("[data-tally-sku]:not([data-tally-bound])");
    for (var i = 0; i < marked.length; i++) {
      marked[i].setAttribute("data-tally-bound", "");
      var own = marked[i].dataset;
      found.push({
        element: marked[i],
        sku: own.tallySku,
        warehouse: own.tallyWarehouse || null,
        low: own.tallyLow,
        key: own.tallyKey,
      });
    }
    return found;
  }

  function start() {
    var list = badges();
    if (list.length === 0) return;
    if (!document.getElementById(STYLE_ID)) {
      var style = document.createElement("style");
      style.id = STYLE_ID;
      style.textContent = CSS;
      document.head.appendChild(style);
    }
    list.forEach(function (badge) {
      var element = badge.element;
      element.classList.add("tally-stock");
      element.setAttribute("role", "status");
      element.setAttribute("aria-live", "polite");
      element.dataset.state = "loading";
      element.dataset.live = "false";
      element.textContent = "Checking stock\u2026";
    });
    import(clientUrl).then(
      function (api) {
        var streams = {};
        list.forEach(function (badge) {
          var key = badge.key || scriptData.key || null;
          var group = JSON.stringify([badge.sku, key]);
          if (!streams[group]) streams[group] = new SkuFeed(api, badge.sku, key);
          streams[group].add(new Badge(badge));
        });
        Object.keys(streams).forEach(function (group) {
          streams[group].start();
        });
      },
      function (error) {
        list.forEach(function (badge) {
          showError(badge.element, "network_error", "cannot load " + clientUrl + ": " + error);
        });
      },
    );
  }

  /** One badge: what it shows follows the levels of its warehouses. */
  function Badge(options) {
    this.element = options.element;
    this.warehouse = options.warehouse;
    var low = Number.parseInt(options.low, 10);
    this.low = Number.isFinite(low) && low >= 0 ? low : null;
  }

  /** levels: warehouse -> { available, threshold }. */
  Badge.prototype.render = function (levels) {
    var names = this.warehouse ? [this.warehouse] : Object.keys(levels);
    var available = 0;
    var anyInStock = false;
    var known = false;
    for (var i = 0; i < names.length; i++) {
      var level = levels[names[i]];
      if (!level) continue;
      known = true;
      available += level.available;
      if (level.available > level.threshold) anyInStock = true;
    }
    if (!known) {
      // Not stocked there (or a mistyped SKU): nothing to sell.
      this.element.dataset.error = "item_not_found";
      this.show("out", 0, "Out of stock");
      return;
    }
    var state;
    if (available === 0) state = "out";
    else if (this.low !== null) state = available <= this.low ? "low" : "in";
    else state = anyInStock ? "in" : "low";
    var text = state === "out" ? "Out of stock" : state === "low" ? "Only " + available + " left" : "In stock";
    delete this.element.dataset.error;
    this.show(state, available, text);
  };

  Badge.prototype.show = function (state, available, text) {
    var element = this.element;
    element.dataset.state = state;
    element.dataset.available = String(available);
    if (element.textContent !== text) element.textContent = text;
  };

  /** Levels of one SKU (as one key sees them), read once and then followed live. */
  function SkuFeed(api, sku, key) {
    this.api = api;
    this.sku = sku;
    this.client = new api.TallyClient({ baseUrl: apiBase, key: key });
    this.badges = [];
    this.levels = {};
    this.loaded = false;
    this.queued = [];
  }

  SkuFeed.prototype.add = function (badge) {
    this.badges.push(badge);
  };

  SkuFeed.prototype.render = function () {
    var levels = this.levels;
    this.badges.forEach(function (badge) {
      badge.render(levels);
    });
  };

  SkuFeed.prototype.setLive = function (live) {
    this.badges.forEach(function (badge) {
      badge.element.dataset.live = live ? "true" : "false";
    });
  };

  SkuFeed.prototype.fail = function (error) {
    this.badges.forEach(function (badge) {
      showError(badge.element, error.code || "error", error.explanation || String(error));
    });
  };

  /**
   * Reads every warehouse of the SKU, then applies the events that arrived
   * meanwhile, in order. Each event carries absolute levels, so whatever
   * the read already included, the newest event decides.
   */
  SkuFeed.prototype.load = function () {
    var feed = this;
    this.loaded = false;
    this.queued = [];
    var done = function (levels) {
      if (feed.overflowed) {
        // Too many changes to keep while reading: read again.
        feed.overflowed = false;
        feed.load();
        return;
      }
      feed.levels = levels;
      feed.loaded = true;
      var queued = feed.queued;
      feed.queued = [];
      queued.forEach(function (event) {
        feed.apply(event);
      });
      feed.render();
    };
    return this.client.getSku(this.sku).then(
      function (view) {
        var levels = {};
        view.warehouses.forEach(function (item) {
          levels[item.warehouse] = { available: item.available, threshold: item.low_stock_threshold };
        });
        done(levels);
      },
      function (error) {
        // A SKU no warehouse stocks yet shows out of stock; stock that
        // arrives later comes on the stream.
        if (error.code === "item_not_found") done({});
        else feed.fail(error);
      },
    );
  };

  SkuFeed.prototype.apply = function (event) {
    if (!this.loaded) {
      if (this.queued.length < QUEUED_EVENTS_MAX) this.queued.push(event);
      else this.overflowed = true;
      return;
    }
    var data = event.data;
    if (!data || !data.warehouse) return;
    var level = this.levels[data.warehouse] || { available: 0, threshold: 0 };
    if (event.type === "stock_changed") {
      level.available = data.available_after;
    } else if (event.type === "threshold_crossed") {
      level.available = data.available;
      level.threshold = data.low_stock_threshold;
    } else {
      return;
    }
    this.levels[data.warehouse] = level;
    this.render();
  };

  SkuFeed.prototype.start = function () {
    var feed = this;
    // Subscribe first, then read: a change between the two is then both in
    // the read and on the stream, never in neither.
    // A stream that cannot open yet still gets one read, so the badge shows
    // the stock (not live) instead of waiting.
    var subscribed = false;
    var readWithoutStream = false;
    this.stream = this.client.events({
      sku: this.sku,
      onEvent: function (event) {
        feed.apply(event);
      },
      onStatus: function (state, error) {
        if (state === "live") {
          feed.setLive(true);
          if (!subscribed) {
            subscribed = true;
            feed.load();
          }
        } else {
          feed.setLive(false);
          if (state === "stopped" && error) feed.fail(error);
          if (state === "reconnecting" && !subscribed && !readWithoutStream) {
            readWithoutStream = true;
            feed.load();
          }
          if (error && typeof console !== "undefined") {
            console.warn("tally widget: " + feed.sku + ": " + error.title + ": " + error.explanation + " (" + error.code + ")");
          }
        }
      },
      onReset: function () {
        feed.load();
      },
    });
  };

  function showError(element, code, detail) {
    element.dataset.state = "error";
    element.dataset.error = code;
    element.textContent = "Stock unavailable";
    if (typeof console !== "undefined") console.warn("tally widget: " + detail + " (" + code + ")");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
