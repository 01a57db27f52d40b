// The live view's script: polls GET events and GET stats on this origin and shows what arrived.
//
// Event data comes from the internet, so it reaches the page through textContent, attribute
// values and JSON.stringify only: never innerHTML. The receiver's Content-Security-Policy
// would refuse inline script anyway.
//
// Paging. A receiver whose answer carries `next` pages by cursor: the first request asks
// for the latest PAGE events, each later one for those after the cursor. An older receiver
// answers only "the latest PAGE events"; then every poll asks for that and rows are
// de-duplicated by event_id. Either way at most MAX_ROWS rows are kept, newest on top.
"use strict";

(() => {
  const MAX_ROWS = 300;
  const PAGE = 200; // at most MAX_ROWS, so that de-duplicating by the rows shown is exact
  const TOKEN_KEY = "campaign-cart-analytics.receiver-token";
  const REQUEST_TIMEOUT_MS = 10000; // a receiver that accepts and never answers stalls nothing
  const MAX_SHOWN_CHARS = 200; // of one value in a row's summary; the JSON view has all of it
  const MAX_TITLE_CHARS = 1000;
  const MAX_NAME_BUTTONS = 100;
  const INTERVAL_MS = clamp(Number(new URLSearchParams(location.search).get("interval_ms")) || 1000, 100, 60000);
  const MAX_RETRY_MS = Math.min(10 * INTERVAL_MS, Math.max(10000, INTERVAL_MS)); // 10 s at 1 s

  const $ = (id) => document.getElementById(id);
  const statusLine = $("status");
  const list = $("events");
  const shown = new Set(); // event_ids of the rows in the list

  let filter = filterInLocation();
  let cursor = null; // the receiver's `next`; null until it gives one, or if it never does
  let resync = true; // ask for the latest events rather than those after the cursor
  let generation = 0; // bumped when the filter changes: answers to older requests are ignored
  let timer = null;
  let inFlight = false;
  let again = false; // a poll was asked for while one was in flight
  let failures = 0;
  let lastNames = "";
  let lastTotal = 0; // the receiver's count of stored events at the last poll
  let statsDue = 0; // performance.now() from which GET stats is asked again
  let statsTrouble = ""; // why the last ask for the counters failed; "" once they answer
  let resyncDue = 0; // performance.now() from which the latest events are asked for, not those after the cursor

  class StatsFailure {
    constructor(error) {
      this.error = error;
    }
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  // ------------------------------------------------------------------ talking to the receiver

  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const response = await fetch(path, {
        headers, cache: "no-store", credentials: "omit", redirect: "error", signal: controller.signal,
      });
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null; // not JSON: a proxy's error page, say
      }
      if (!response.ok) {
        const reason = body && typeof body.error === "string" ? body.error : response.statusText;
        throw new HttpError(response.status, reason);
      }
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        throw new HttpError(response.status, "the answer is not a JSON object");
      }
      return body;
    } finally {
      clearTimeout(timeout);
    }
  }

  function eventsPath(paged) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (filter) query.set("event", filter);
    if (paged) query.set("after", cursor);
    return "events?" + query; // relative: the receiver may be mounted under a prefix
  }

  // ------------------------------------------------------------------ the polling loop

  function schedule(delay) {
    clearTimeout(timer);
    timer = null;
    if (document.hidden) setStatus("paused", "Paused while this tab is hidden.");
    else timer = setTimeout(poll, delay);
  }

  function pollSoon() {
    statsDue = 0; // a new filter, token or look at the tab: counters as of now
    resyncDue = 0; // and the latest events: the receiver may have restarted since, and refilled
    if (inFlight) again = true;
    else schedule(0);
  }

  async function poll() {
    timer = null;
    if (document.hidden) return;
    inFlight = true;
    const mine = generation;
    const started = performance.now();
    const resyncAsked = resyncDue;
    // Every 30 polls the latest events are asked for again (the rows shown de-duplicate them):
    // a receiver restarted on an empty store that refilled to its old count before the counters
    // looked is not seen by them, and its cursors may stay behind the page's for ever.
    const paged = cursor !== null && !resync && started < resyncDue;
    let delay = INTERVAL_MS;
    try {
      const [page, stats] = await Promise.all([getJSON(eventsPath(paged)), statsIfDue()]);
      if (mine === generation) {
        delay = takeEvents(page, paged);
        if (!paged && resyncDue === resyncAsked) resyncDue = started + 30 * INTERVAL_MS;
        const counted = stats !== null && !(stats instanceof StatsFailure);
        if (counted && storeWasReset(stats)) delay = 0;
        if (counted) showStats(stats);
        if (stats !== null) statsTrouble = counted ? "" : reason(stats.error);
        failures = 0;
        setStatus("live", statsTrouble
          ? `Live: polling every ${INTERVAL_MS / 1000} s; the counters failed (${statsTrouble}) and are shown as they were.`
          : `Live: polling every ${INTERVAL_MS / 1000} s.`);
        $("updated").textContent = `Updated ${clock(new Date())}.`;
      }
    } catch (error) {
      failures += 1;
      statsDue = 0;
      resync = true; // the receiver may have restarted, with another store: the cursor may be stale
      delay = Math.min(MAX_RETRY_MS, INTERVAL_MS * 2 ** Math.min(failures - 1, 6));
      showTrouble(error, delay);
    } finally {
      inFlight = false;
    }
    if (again || mine !== generation) {
      again = false;
      delay = 0;
    }
    schedule(delay);
  }

  // Counting is a full scan of the receiver's store, so the counters are asked for at most
  // once in twenty times as long as they last took (a big store spends 5% on this page), and
  // at least every 30 polls (30 s at the default), so that they never go stale for long.
  // An answer that a failure or a new filter overtook (they ask for the counters now) leaves
  // the next ask where they put it: else the count the page compares with, to see a receiver
  // restarted on an empty store, could be one from before the failure.
  async function statsIfDue() {
    const started = performance.now();
    if (started < statsDue) return null;
    const asked = (statsDue = started + 30 * INTERVAL_MS);
    try {
      const stats = await getJSON("stats");
      if (statsDue === asked) statsDue = started + Math.min(20 * (performance.now() - started), 30 * INTERVAL_MS);
      return stats;
    } catch (error) {
      // The counters alone failed (a count past the store's statement timeout, or past
      // REQUEST_TIMEOUT_MS): the events are still shown, and the counters asked in 30 polls.
      return new StatsFailure(error);
    }
  }

  // Adds a page of events; returns how long to wait before the next poll.
  function takeEvents(page, paged) {
    if (!Array.isArray(page.events)) throw new HttpError(200, "the answer to GET events has no list of events");
    const next = page.next;
    cursor = typeof next === "string" || typeof next === "number" ? String(next) : null;
    resync = false;
    addRows(page.events);
    if (paged && page.events.length >= PAGE) {
      // More arrived in one interval than a page holds: jump to the latest, as rows are capped.
      resync = true;
      showNote(`Events arrive faster than this page shows them; it skipped to the latest ${PAGE}.`);
      return 0;
    }
    return INTERVAL_MS;
  }

  // A receiver restarted on an empty store counts its cursors from the start again. When it
  // came back between two polls no error said so, but its count of events went down.
  function storeWasReset(stats) {
    const total = Number(stats.events);
    const reset = total < lastTotal;
    lastTotal = Number.isFinite(total) ? total : 0;
    if (reset) resync = true;
    return reset;
  }

  // ------------------------------------------------------------------ rows

  function addRows(events) {
    for (const event of events) {
      if (event === null || typeof event !== "object") continue;
      const id = text(event.event_id);
      if (shown.has(id)) continue;
      shown.add(id);
      list.prepend(row(event, id));
    }
    while (list.childElementCount > MAX_ROWS) {
      shown.delete(list.lastElementChild.dataset.eventId);
      list.lastElementChild.remove();
    }
    $("empty").hidden = list.childElementCount > 0;
  }

  function row(event, id) {
    const item = document.createElement("li");
    item.dataset.eventId = id;
    item.className = "fresh";
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    const seen = new Date();
    summary.append(
      cell("time", when(event.event_time), `event_time ${text(event.event_time)}; seen here at ${seen.toISOString()}`),
      cell("name", text(event.event)),
      cell("id", id),
      cell("who", who(event)),
    );
    const json = document.createElement("pre");
    details.addEventListener("toggle", () => {
      if (details.open && !json.textContent) json.textContent = JSON.stringify(event, null, 2);
    });
    details.append(summary, json);
    item.append(details);
    return item;
  }

  function cell(kind, value, title) {
    const span = document.createElement("span");
    span.className = kind;
    span.textContent = value.length > MAX_SHOWN_CHARS ? value.slice(0, MAX_SHOWN_CHARS) + "\u2026" : value;
    span.title = (title === undefined ? value : title).slice(0, MAX_TITLE_CHARS);
    return span;
  }

  function text(value) {
    if (typeof value === "string") return value;
    if (value === undefined || value === null) return "";
    return JSON.stringify(value);
  }

  function when(value) {
    const date = typeof value === "string" ? new Date(value) : null;
    if (!date || Number.isNaN(date.getTime())) return text(value);
    const day = [date.getFullYear(), date.getMonth() + 1, date.getDate()];
    return day.map((part) => String(part).padStart(2, "0")).join("-") + " " + clock(date); // local time
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour12: false }) + "." + String(date.getMilliseconds()).padStart(3, "0");
  }

  function who(event) {
    const user = event.user_properties !== null && typeof event.user_properties === "object" ? event.user_properties : {};
    const parts = [user.user_id ?? event.user_id, user.session_id ?? event.session_id];
    return parts.filter((part) => part !== undefined && part !== null && part !== "").map(text).join(" \u00b7 ");
  }

  // ------------------------------------------------------------------ counters

  function showStats(stats) {
    for (const name of ["events", "batches", "duplicates", "rejected_requests"]) {
      const value = stats[name];
      $("stat-" + name).textContent = Number.isFinite(value) ? value.toLocaleString() : "\u2013";
    }
    const byEvent = stats.by_event !== null && typeof stats.by_event === "object" ? stats.by_event : {};
    const names = JSON.stringify([byEvent, filter]);
    if (names !== lastNames) {
      lastNames = names; // rebuilt only on change, so that a click is never lost to a rebuild
      $("by-event").replaceChildren(...nameButtons(byEvent));
    }
  }

  function nameButtons(byEvent) {
    const counts = Object.entries(byEvent).sort((a, b) => Number(b[1]) - Number(a[1]));
    const buttons = counts.slice(0, MAX_NAME_BUTTONS).map(([name, count]) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `${name} ${text(count)}`;
      button.title = name;
      button.setAttribute("aria-pressed", String(name === filter));
      button.addEventListener("click", () => setFilter(name === filter ? "" : name));
      return button;
    });
    if (counts.length > MAX_NAME_BUTTONS) {
      const more = document.createElement("span");
      more.textContent = `and ${counts.length - MAX_NAME_BUTTONS} more names`;
      buttons.push(more);
    }
    return buttons;
  }

  // ------------------------------------------------------------------ status and notes

  function setStatus(state, message) {
    statusLine.dataset.state = state;
    if (statusLine.textContent !== message) statusLine.textContent = message; // a live region: said aloud
    $("token-form").hidden = state !== "unauthorized" && !sessionStorage.getItem(TOKEN_KEY);
  }

  function showTrouble(error, delay) {
    const retry = `Retrying in ${Math.round(delay / 100) / 10} s; the events shown are kept.`;
    if (error instanceof HttpError && error.status === 401) {
      const token = sessionStorage.getItem(TOKEN_KEY);
      const first = statusLine.dataset.state !== "unauthorized";
      setStatus("unauthorized", token
        ? "The receiver refused this token (401). Enter the one given to its --token."
        : "The receiver wants a bearer token (401): enter the one given to its --token.");
      if (first && !token) $("token").focus();
    } else if (error instanceof HttpError) {
      setStatus("error", `The receiver answered ${error.status}: ${error.message}. ${retry}`);
    } else {
      setStatus("unreachable", `The receiver is unreachable (${reason(error)}). ${retry}`);
    }
  }

  function reason(error) {
    if (error instanceof HttpError) return `${error.status}: ${error.message}`;
    return error && error.name === "AbortError" ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : "no connection";
  }

  function showNote(message) {
    $("note").textContent = message;
    $("note").hidden = false;
  }

  // ------------------------------------------------------------------ filter and token

  function filterInLocation() {
    return new URLSearchParams(location.hash.slice(1)).get("event") || "";
  }

  function setFilter(name) {
    $("filter").value = name;
    if (name !== filterInLocation()) {
      const hash = name ? "#" + new URLSearchParams({ event: name }) : "";
      history.replaceState(null, "", location.pathname + location.search + hash);
    }
    if (name === filter) return;
    filter = name;
    generation += 1;
    cursor = null;
    resync = true;
    shown.clear();
    list.replaceChildren();
    $("empty").hidden = false;
    $("note").hidden = true;
    lastNames = "";
    pollSoon();
  }

  $("filter-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    setFilter($("filter").value.trim());
  });
  $("clear-filter").addEventListener("click", () => setFilter(""));
  window.addEventListener("hashchange", () => setFilter(filterInLocation()));

  $("token-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (!/^[\x21-\x7e]+$/.test(token)) {
      setStatus("unauthorized", "A token is visible ASCII characters without spaces; that one cannot be sent.");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    setStatus("connecting", "Trying the token\u2026");
    pollSoon();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    setStatus("connecting", "Token forgotten.");
    pollSoon();
  });

  // ------------------------------------------------------------------ a hidden tab does not poll

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) schedule(0); // cancels the timer and says so
    else pollSoon();
  });

  $("filter").value = filter;
  pollSoon();
})();
