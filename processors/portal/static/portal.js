// The partner portal: a page that talks to /graphql only, with the partner's key.
//
// The key is kept in sessionStorage (this tab only) and sent as `Authorization: Bearer ...`;
// signing out forgets it.  Everything shown comes from the API and is untrusted: it is put on
// the page with textContent and DOM nodes only, never parsed as HTML (the page's
// Content-Security-Policy also requires Trusted Types, so an HTML sink would throw).

import * as Q from "./queries.js";

const KEY_STORAGE = "portal.key";
const GRAPHQL_PATH = "/graphql";

// -- small DOM helpers ----------------------------------------------------------------------

const $ = (id) => {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`missing element #${id}`);
  return found;
};

/** An element with attributes (strings; `on...` functions become listeners) and children
 * (nodes, or anything else as text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) {
  node.replaceChildren();
  return node;
}

function text(value, empty = "—") {
  return value === null || value === undefined || value === "" ? empty : String(value);
}

function when(iso) {
  if (!iso) return "—";
  return String(iso).replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, " UTC");
}

function pretty(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

function facts(dl, pairs) {
  clear(dl);
  for (const [term, value] of pairs) {
    dl.append(el("dt", {}, term), el("dd", {}, value instanceof Node ? value : text(value)));
  }
}

// -- messages to the user -------------------------------------------------------------------

function say(message) {
  $("status").textContent = message;
}

function fail(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// -- the GraphQL client ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, { status = 0, codes = [] } = {}) {
    super(message);
    this.status = status;
    this.codes = codes;
  }

  get unauthenticated() {
    return this.status === 401 || this.codes.includes("UNAUTHENTICATED");
  }
}

function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

/** The `data` of a query or mutation; ApiError with the server's messages otherwise. */
async function gql(query, variables = {}, key = storedKey()) {
  if (!key) throw new ApiError("You are not signed in.", { status: 401 });
  let response;
  try {
    response = await fetch(GRAPHQL_PATH, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        Authorization: `Bearer ${key}`,
      },
      body: JSON.stringify({ query, variables }),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
  } catch {
    throw new ApiError("The portal's server cannot be reached. Check your connection and try again.");
  }
  let document = null;
  try {
    document = await response.json();
  } catch {
    document = null;
  }
  const errors = document && Array.isArray(document.errors) ? document.errors : [];
  if (errors.length > 0) {
    const messages = errors.map((e) => text(e && e.message, "error"));
    const codes = errors.map((e) => e && e.extensions && e.extensions.code).filter(Boolean);
    throw new ApiError(messages.join("; "), { status: response.status, codes });
  }
  if (!response.ok) {
    const message =
      document && typeof document.message === "string"
        ? document.message
        : `The server answered ${response.status}.`;
    throw new ApiError(message, { status: response.status });
  }
  if (!document || typeof document.data !== "object" || document.data === null) {
    throw new ApiError("The server's answer could not be read.", { status: response.status });
  }
  return document.data;
}

/** Run `action`; show its error (and sign out when the key is no longer accepted).  An answer
 * that arrives after the user signed out (or in again) is dropped: it belongs to that session. */
async function attempt(action) {
  const session = state.session;
  fail("");
  try {
    const result = await action();
    return session === state.session ? result : undefined;
  } catch (error) {
    if (session !== state.session) return undefined;
    if (error instanceof ApiError) {
      if (error.unauthenticated && storedKey()) {
        signOut(`Signed out: ${error.message}`);
      } else {
        fail(error.message);
      }
    } else {
      fail(`Something went wrong in this page: ${error && error.message ? error.message : error}`);
    }
    return undefined;
  }
}

async function copy(textValue, input = null) {
  try {
    await navigator.clipboard.writeText(textValue);
    say("Copied to the clipboard.");
    return;
  } catch {
    // no clipboard permission: fall back to the selection
  }
  if (input !== null) {
    input.focus();
    input.select();
    if (document.execCommand && document.execCommand("copy")) {
      say("Copied to the clipboard.");
      return;
    }
  }
  say("Copying is not allowed here: select the text and copy it yourself.");
}

// -- a confirmation dialog --------------------------------------------------------------------

function ask(title, message, { withReason = false, confirm = "Confirm" } = {}) {
  const dialog = $("ask");
  $("ask-title").textContent = title;
  $("ask-text").textContent = message;
  $("ask-ok").textContent = confirm;
  $("ask-reason-block").hidden = !withReason;
  $("ask-reason").value = "";
  return new Promise((resolve) => {
    const done = (ok) => {
      dialog.removeEventListener("cancel", onCancel);
      $("ask-ok").removeEventListener("click", onOk);
      $("ask-cancel").removeEventListener("click", onNo);
      if (dialog.open) dialog.close();
      resolve({ ok, reason: $("ask-reason").value.trim() });
    };
    const onOk = (event) => {
      event.preventDefault();
      done(true);
    };
    const onNo = (event) => {
      event.preventDefault();
      done(false);
    };
    const onCancel = (event) => {
      event.preventDefault();
      done(false);
    };
    dialog.addEventListener("cancel", onCancel);
    $("ask-ok").addEventListener("click", onOk);
    $("ask-cancel").addEventListener("click", onNo);
    dialog.showModal();
    (withReason ? $("ask-reason") : $("ask-cancel")).focus();
  });
}

// -- state ------------------------------------------------------------------------------------

const state = {
  session: 0, // counts sign-ins and sign-outs: an answer of an earlier session is dropped
  me: null,
  endpoints: [],
  eventTypes: null,
  deliveryFilter: {},
  deliveryStarts: [null], // the `after` cursor of each page seen, for "previous"
  deliveryNext: null,
  deliverySeq: 0,
  message: null,
  messageSeq: 0,
  bordereauxAfter: null,
  live: null, // the live feed's WebSocket
};

// -- sign in and out --------------------------------------------------------------------------

async function signIn(key) {
  const errorBox = $("signin-error");
  errorBox.hidden = true;
  errorBox.textContent = "";
  $("signin-submit").disabled = true;
  say("Signing in…");
  let me;
  try {
    me = (await gql(Q.ME, {}, key)).me;
  } catch (error) {
    sessionStorage.removeItem(KEY_STORAGE);
    errorBox.textContent =
      error instanceof ApiError ? `Sign-in refused: ${error.message}` : "Sign-in failed.";
    errorBox.hidden = false;
    say("");
    $("key").focus();
    return;
  } finally {
    $("signin-submit").disabled = false;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key").value = "";
  await enter(me);
}

function signOut(reason = "Signed out.") {
  state.session += 1;
  sessionStorage.removeItem(KEY_STORAGE);
  stopLive();
  clear($("live-items"));
  state.me = null;
  state.endpoints = [];
  state.eventTypes = null;
  state.message = null;
  $("app").hidden = true;
  $("session").hidden = true;
  $("signin").hidden = false;
  $("secret-panel").hidden = true;
  $("secret-value").value = "";
  for (const id of ["endpoints-table", "deliveries-table", "bordereaux-table", "message-headers"]) {
    clear(document.querySelector(`#${id} tbody`));
  }
  clear($("catalogue"));
  clear($("me"));
  // nothing of this partner stays on the page for the next one
  $("filter-form").reset();
  $("bordereaux-filter").reset();
  clear($("filter-endpoint")).append(el("option", { value: "" }, "All"));
  clear($("event-type-list"));
  for (const id of ["message-facts", "message-attempts", "message-body", "message-id", "session-name"]) clear($(id));
  $("page-info").textContent = "";
  $("message").hidden = true;
  fail("");
  say(reason);
  $("key").focus();
}

async function enter(me) {
  state.session += 1;
  state.me = me;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  $("session-name").textContent = me.name;
  $("tab-bordereaux-item").hidden = me.kind !== "REINSURER";
  facts($("me"), [
    ["Name", me.name],
    ["Partner id", me.id],
    ["Kind", me.kind],
    ["Status", me.status],
    ["Reinsurer code", me.reinsurerCode],
    ["Distributor code", me.distributorCode],
    ["Personal data granted", me.grants.length ? me.grants.join(", ") : "none"],
    ["Partner since", when(me.createdAt)],
  ]);
  say(`Signed in as ${me.name}.`);
  showTab("overview");
  await loadEndpoints();
}

// -- tabs -------------------------------------------------------------------------------------

const TABS = ["overview", "deliveries", "catalogue", "bordereaux"];

function visibleTabs() {
  return TABS.filter((name) => name !== "bordereaux" || !$("tab-bordereaux-item").hidden);
}

function showTab(name) {
  for (const tab of TABS) {
    const selected = tab === name;
    const button = $(`tab-${tab}`);
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`view-${tab}`).hidden = !selected;
  }
  if (name === "deliveries") void openDeliveries();
  if (name === "catalogue") void loadCatalogue();
  if (name === "bordereaux") void loadBordereaux(true);
}

function onTabKey(event) {
  const tabs = visibleTabs();
  const current = tabs.indexOf(event.currentTarget.id.slice(4));
  let next = null;
  if (event.key === "ArrowRight") next = tabs[(current + 1) % tabs.length];
  if (event.key === "ArrowLeft") next = tabs[(current - 1 + tabs.length) % tabs.length];
  if (event.key === "Home") next = tabs[0];
  if (event.key === "End") next = tabs[tabs.length - 1];
  if (next !== null) {
    event.preventDefault();
    showTab(next);
    $(`tab-${next}`).focus();
  }
}

// -- endpoints --------------------------------------------------------------------------------

function percent(rate) {
  return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1)} %`;
}

async function loadEndpoints() {
  const data = await attempt(() => gql(Q.ENDPOINTS));
  if (data === undefined) return;
  state.endpoints = data.endpoints;
  renderEndpoints();
  fillEndpointFilter();
}

function renderEndpoints() {
  const body = clear(document.querySelector("#endpoints-table tbody"));
  $("endpoints-empty").hidden = state.endpoints.length > 0;
  for (const endpoint of state.endpoints) {
    const health = endpoint.health;
    const reason = endpoint.disabledReason || health.disabledReason;
    const stateCell = el(
      "td",
      {},
      endpoint.active ? "active" : "disabled",
      reason ? el("div", { class: "hint" }, reason) : null,
      endpoint.failingSince ? el("div", { class: "hint" }, `failing since ${when(endpoint.failingSince)}`) : null,
    );
    const label = endpoint.description || endpoint.url;
    const actions = el(
      "td",
      { class: "actions" },
      el("button", { type: "button", "aria-label": `Send a test event to ${label}`, onclick: () => sendTest(endpoint) }, "Send test event"),
      el("button", { type: "button", "aria-label": `Rotate the secret of ${label}`, onclick: () => rotate(endpoint) }, "Rotate secret"),
      endpoint.active
        ? el("button", { type: "button", "aria-label": `Disable ${label}`, onclick: () => disable(endpoint) }, "Disable")
        : el("button", { type: "button", "aria-label": `Enable ${label}`, onclick: () => enable(endpoint) }, "Enable"),
      el("button", { type: "button", "aria-label": `Deliveries of ${label}`, onclick: () => deliveriesOf(endpoint) }, "Deliveries"),
    );
    body.append(
      el(
        "tr",
        { dataset: { endpointId: endpoint.id } },
        el("td", {}, el("code", {}, endpoint.url), endpoint.description ? el("div", { class: "hint" }, endpoint.description) : null, el("div", { class: "hint" }, endpoint.id)),
        el("td", {}, endpoint.events.join(", ")),
        stateCell,
        el("td", {}, percent(health.successRate)),
        el("td", {}, `${health.attempts} / ${health.failures}`, el("div", { class: "hint" }, `last ${health.windowHours} h`)),
        el("td", {}, health.breakerState),
        el("td", {}, when(health.lastAttemptAt), el("div", { class: "hint" }, `last success ${when(health.lastSuccessAt)}`)),
        actions,
      ),
    );
  }
}

function fillEndpointFilter() {
  const select = $("filter-endpoint");
  const chosen = select.value;
  clear(select).append(el("option", { value: "" }, "All"));
  for (const endpoint of state.endpoints) {
    select.append(el("option", { value: endpoint.id }, endpoint.description || endpoint.url));
  }
  select.value = state.endpoints.some((e) => e.id === chosen) ? chosen : "";
}

function showSecret(secret, context) {
  $("secret-context").textContent = context;
  $("secret-value").value = secret;
  $("secret-panel").hidden = false;
  $("secret-value").focus();
  $("secret-value").select();
}

async function sendTest(endpoint) {
  const data = await attempt(() => gql(Q.SEND_TEST_EVENT, { endpointId: endpoint.id }));
  if (data === undefined) return;
  const sent = data.sendTestEvent;
  say(`Test event sent to ${endpoint.url} as message ${sent.webhookId}; it shows in the delivery log once attempted.`);
}

async function rotate(endpoint) {
  const answer = await ask(
    "Rotate the signing secret?",
    `A new secret signs the deliveries to ${endpoint.url}; the current one keeps signing beside it for 24 hours. The new secret is shown once.`,
    { confirm: "Rotate" },
  );
  if (!answer.ok) return;
  const data = await attempt(() => gql(Q.ROTATE_SECRET, { id: endpoint.id }));
  if (data === undefined) return;
  const rotation = data.rotateSecret;
  showSecret(
    rotation.secret,
    `New secret of ${rotation.endpoint.url}. The previous secret stops signing at ${when(rotation.previousExpiresAt)}.`,
  );
  say("Secret rotated.");
  await loadEndpoints();
}

async function disable(endpoint) {
  const answer = await ask(
    "Disable this endpoint?",
    `Nothing is delivered to ${endpoint.url} while it is disabled.`,
    { withReason: true, confirm: "Disable" },
  );
  if (!answer.ok) return;
  const data = await attempt(() => gql(Q.DISABLE_ENDPOINT, { id: endpoint.id, reason: answer.reason || null }));
  if (data === undefined) return;
  say(`Endpoint ${endpoint.url} disabled.`);
  await loadEndpoints();
}

async function enable(endpoint) {
  const data = await attempt(() => gql(Q.ENABLE_ENDPOINT, { id: endpoint.id }));
  if (data === undefined) return;
  say(`Endpoint ${endpoint.url} enabled.`);
  await loadEndpoints();
}

function deliveriesOf(endpoint) {
  $("filter-endpoint").value = endpoint.id;
  showTab("deliveries");
  $("tab-deliveries").focus();
}

async function createEndpoint(event) {
  event.preventDefault();
  const form = $("create-form");
  const events = $("create-events")
    .value.split(",")
    .map((e) => e.trim())
    .filter(Boolean);
  const url = $("create-url").value.trim();
  if (!url || events.length === 0) {
    fail("A new endpoint needs a URL and at least one event type.");
    return;
  }
  const input = { url, events, ordered: $("create-ordered").checked };
  const description = $("create-description").value.trim();
  if (description) input.description = description;
  const concurrency = $("create-concurrency").value.trim();
  if (concurrency) input.maxConcurrency = Number.parseInt(concurrency, 10);
  const rate = $("create-rate").value.trim();
  if (rate) input.rateLimitPerS = Number.parseFloat(rate);
  const data = await attempt(() => gql(Q.CREATE_ENDPOINT, { input }));
  if (data === undefined) return;
  const created = data.createEndpoint;
  form.reset();
  showSecret(created.secret, `Secret of the new endpoint ${created.endpoint.url} (id ${created.endpoint.id}).`);
  say("Endpoint created.");
  await loadEndpoints();
}

// -- the delivery log -------------------------------------------------------------------------

function utc(value) {
  if (!value) return null;
  const seconds = value.length === 16 ? `${value}:00` : value;
  return `${seconds}+00:00`;
}

function readFilter() {
  const filter = {};
  const endpointId = $("filter-endpoint").value;
  const eventType = $("filter-event-type").value.trim();
  const status = $("filter-status").value;
  const since = utc($("filter-since").value);
  const until = utc($("filter-until").value);
  if (endpointId) filter.endpointId = endpointId;
  if (eventType) filter.eventType = eventType;
  if (status) filter.status = status;
  if (since) filter.since = since;
  if (until) filter.until = until;
  return filter;
}

async function openDeliveries() {
  if (state.eventTypes === null) void loadEventTypeNames();
  await searchDeliveries();
}

async function searchDeliveries() {
  state.deliveryFilter = readFilter();
  state.deliveryStarts = [null];
  await loadDeliveries();
}

async function loadDeliveries() {
  const after = state.deliveryStarts[state.deliveryStarts.length - 1];
  const variables = { after, filter: state.deliveryFilter };
  const table = $("deliveries-table");
  const seq = ++state.deliverySeq;
  table.setAttribute("aria-busy", "true");
  const data = await attempt(() => gql(Q.DELIVERIES, variables));
  if (seq !== state.deliverySeq) return; // a newer search was made meanwhile
  table.removeAttribute("aria-busy");
  if (data === undefined) return;
  const connection = data.deliveries;
  const body = clear(table.querySelector("tbody"));
  for (const { node } of connection.edges) {
    body.append(
      el(
        "tr",
        { dataset: { deliveryId: node.id, webhookId: node.webhookId, status: node.status } },
        el("td", {}, when(node.attemptedAt)),
        el("td", {}, node.eventType),
        el("td", {}, el("span", { class: `badge ${node.status.toLowerCase()}` }, node.status), node.nextStep ? el("div", { class: "hint" }, `next: ${node.nextStep}`) : null),
        el("td", {}, text(node.httpStatus)),
        el("td", {}, String(node.attempt)),
        el("td", {}, node.latencyMs === null ? "—" : `${Math.round(node.latencyMs)} ms`),
        el("td", {}, node.urlHost),
        el(
          "td",
          {},
          el(
            "button",
            { type: "button", class: "open-message", dataset: { webhookId: node.webhookId }, "aria-label": `Open message ${node.webhookId}`, onclick: () => openMessage(node.webhookId) },
            node.webhookId,
          ),
        ),
      ),
    );
  }
  $("deliveries-empty").hidden = connection.edges.length > 0;
  state.deliveryNext = connection.pageInfo.hasNextPage ? connection.pageInfo.endCursor : null;
  const page = state.deliveryStarts.length;
  $("page-next").disabled = state.deliveryNext === null;
  $("page-previous").disabled = page <= 1;
  $("page-first").disabled = page <= 1;
  $("page-info").textContent = `Page ${page}, ${connection.edges.length} attempt(s)`;
}

async function pageNext() {
  if (state.deliveryNext === null) return;
  state.deliveryStarts.push(state.deliveryNext);
  await loadDeliveries();
}

async function pagePrevious() {
  if (state.deliveryStarts.length <= 1) return;
  state.deliveryStarts.pop();
  await loadDeliveries();
}

async function pageFirst() {
  state.deliveryStarts = [null];
  await loadDeliveries();
}

function attemptItem(a) {
  return el(
    "li",
    { dataset: { deliveryId: a.id, status: a.status } },
    el("strong", {}, `Attempt ${a.attempt}: ${a.status}`),
    ` at ${when(a.attemptedAt)}`,
    a.httpStatus !== null ? `, HTTP ${a.httpStatus}` : "",
    a.latencyMs !== null ? `, ${Math.round(a.latencyMs)} ms` : "",
    `, to ${a.urlHost}`,
    a.nextStep ? `, next: ${a.nextStep}` : "",
    a.error ? el("div", {}, `Error: ${a.error}`) : null,
    a.responseBody ? el("div", {}, "Response:", el("pre", { class: "code", tabindex: "0" }, a.responseBody)) : null,
  );
}

async function openMessage(webhookId) {
  const seq = ++state.messageSeq;
  const data = await attempt(() => gql(Q.MESSAGE, { webhookId }));
  if (seq !== state.messageSeq || data === undefined) return;
  const message = data.message;
  if (message === null) {
    fail(`Message ${webhookId} was not found.`);
    return;
  }
  state.message = message;
  $("message-id").textContent = message.webhookId;
  const endpoint = state.endpoints.find((e) => e.id === message.endpointId);
  facts($("message-facts"), [
    ["Event type", message.eventType],
    ["Event id", message.eventId],
    ["Endpoint", endpoint ? `${endpoint.url} (${endpoint.id})` : message.endpointId],
  ]);
  const headers = clear(document.querySelector("#message-headers tbody"));
  const request = message.request;
  $("message-no-request").hidden = request !== null;
  $("message-headers").hidden = request === null;
  $("message-body").hidden = request === null;
  if (request !== null) {
    for (const header of request.headers) {
      headers.append(el("tr", {}, el("th", { scope: "row" }, header.name), el("td", {}, el("code", {}, header.value))));
    }
    $("message-body").textContent = pretty(request.body);
  } else {
    $("message-body").textContent = "";
  }
  clear($("message-attempts")).append(...message.attempts.map(attemptItem));
  $("message").hidden = false;
  $("message").focus();
}

async function redeliver() {
  const message = state.message;
  if (message === null) return;
  const button = $("redeliver");
  button.disabled = true;
  try {
    const data = await attempt(() =>
      gql(Q.REDELIVER, { endpointId: message.endpointId, webhookId: message.webhookId }),
    );
    if (data === undefined) return;
    const result = data.redeliver;
    say(
      result.queued > 0
        ? `Queued ${result.queued} message(s) for delivery again: ${result.webhookIds.join(", ")}.`
        : "Nothing was queued: the message was not found in the delivery log yet.",
    );
  } finally {
    button.disabled = false;
  }
}

// -- the live feed (graphql-transport-ws) -----------------------------------------------------

const LIVE_PROTOCOL = "graphql-transport-ws";
const LIVE_KEEP = 100;

function liveState(message) {
  $("live-state").textContent = message;
}

function liveItem(item) {
  if (item.__typename === "FeedOutcome") {
    const a = item.attempt;
    return el(
      "li",
      { dataset: { webhookId: a.webhookId, status: a.status } },
      `${when(a.attemptedAt)} ${a.eventType} → ${a.urlHost}: ${a.status}`,
      a.httpStatus !== null ? ` (HTTP ${a.httpStatus})` : "",
      " ",
      el("button", { type: "button", "aria-label": `Open message ${a.webhookId}`, onclick: () => openMessage(a.webhookId) }, a.webhookId),
    );
  }
  return el("li", { dataset: { webhookId: item.webhookId } }, `${when(item.at)} ${item.eventType} event ${item.eventId} for delivery as ${item.webhookId}`);
}

function stopLive(message = "Stopped.") {
  const socket = state.live;
  state.live = null;
  if (socket !== null && socket.readyState <= WebSocket.OPEN) socket.close(1000, "stopped");
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
  liveState(message);
}

function startLive() {
  const key = storedKey();
  if (!key || state.live !== null) return;
  const filter = readFilter();
  const variables = {};
  if (filter.endpointId) variables.endpointId = filter.endpointId;
  if (filter.eventType) variables.eventTypes = [filter.eventType];
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${GRAPHQL_PATH}`, LIVE_PROTOCOL);
  state.live = socket;
  $("live-start").disabled = true;
  $("live-stop").disabled = false;
  liveState("Connecting…");
  const send = (message) => socket.send(JSON.stringify(message));
  socket.addEventListener("open", () => send({ type: "connection_init", payload: { authorization: `Bearer ${key}` } }));
  socket.addEventListener("message", (event) => {
    if (state.live !== socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "connection_ack") {
      send({ id: "feed", type: "subscribe", payload: { query: Q.FEED, variables } });
      liveState("Live.");
    } else if (message.type === "ping") {
      send({ type: "pong" });
    } else if (message.type === "next" && message.payload) {
      const errors = Array.isArray(message.payload.errors) ? message.payload.errors : [];
      if (errors.length) {
        stopLive(`Stopped: ${errors.map((e) => text(e && e.message, "error")).join("; ")}`);
        return;
      }
      const list = $("live-items");
      list.prepend(liveItem(message.payload.data.feed));
      while (list.children.length > LIVE_KEEP) list.lastElementChild.remove();
    } else if (message.type === "error") {
      const errors = Array.isArray(message.payload) ? message.payload : [];
      stopLive(`Stopped: ${errors.map((e) => text(e && e.message, "error")).join("; ") || "refused"}`);
    } else if (message.type === "complete") {
      stopLive("The feed ended.");
    }
  });
  socket.addEventListener("close", (event) => {
    if (state.live !== socket) return;
    stopLive(event.code === 1000 ? "Stopped." : `Disconnected (${event.code}${event.reason ? `: ${event.reason}` : ""}).`);
  });
}

// -- the event catalogue ----------------------------------------------------------------------

async function loadEventTypeNames() {
  const types = await eventTypes();
  if (types === undefined) return;
  const list = clear($("event-type-list"));
  for (const t of types) list.append(el("option", { value: t.eventType }));
}

async function eventTypes() {
  if (state.eventTypes !== null) return state.eventTypes;
  const data = await attempt(() => gql(Q.EVENT_TYPES));
  if (data === undefined) return undefined;
  state.eventTypes = data.eventTypes;
  return state.eventTypes;
}

function codeBlock(title, value) {
  const pre = el("pre", { class: "code", tabindex: "0" }, pretty(value));
  return el(
    "div",
    { class: "block" },
    el("div", { class: "row" }, el("h4", {}, title), el("button", { type: "button", onclick: () => copy(pre.textContent) }, `Copy ${title.toLowerCase()}`)),
    pre,
  );
}

function withheldList(withheld) {
  const entries = Object.entries(withheld || {}).filter(([, fields]) => Array.isArray(fields) && fields.length);
  if (entries.length === 0) return el("p", {}, "Nothing is withheld from you for this event type.");
  return el(
    "div",
    {},
    el("p", {}, "Withheld from you (by data class):"),
    el("ul", {}, entries.map(([cls, fields]) => el("li", {}, el("strong", {}, cls), `: ${fields.join(", ")}`))),
  );
}

async function loadCatalogue() {
  void loadSnippet();
  const types = await eventTypes();
  if (types === undefined) return;
  const box = clear($("catalogue"));
  for (const t of types) {
    box.append(
      el(
        "details",
        { class: "event-type", dataset: { eventType: t.eventType } },
        el("summary", {}, t.eventType),
        withheldList(t.withheld),
        codeBlock("Example", t.example),
        codeBlock("Schema", t.schema),
      ),
    );
  }
}

async function loadSnippet() {
  const pre = $("snippet");
  if (pre.textContent) return;
  try {
    const response = await fetch("/portal/verify_signature.py", { credentials: "omit", cache: "no-cache" });
    if (!response.ok) throw new Error(String(response.status));
    pre.textContent = await response.text();
  } catch {
    pre.textContent = "The snippet could not be loaded; see the partner guide.";
  }
}

// -- bordereaux (reinsurers) ------------------------------------------------------------------

function readBordereauFilter() {
  const filter = {};
  const treatyNumber = $("bx-treaty").value.trim();
  const periodId = $("bx-period").value.trim();
  const reportType = $("bx-type").value;
  if (treatyNumber) filter.treatyNumber = treatyNumber;
  if (periodId) filter.periodId = periodId;
  if (reportType) filter.reportType = reportType;
  return filter;
}

async function loadBordereaux(fresh) {
  if (fresh) state.bordereauxAfter = null;
  const variables = { after: state.bordereauxAfter, filter: readBordereauFilter() };
  const data = await attempt(() => gql(Q.BORDEREAUX, variables));
  if (data === undefined) return;
  const connection = data.bordereaux;
  const body = document.querySelector("#bordereaux-table tbody");
  if (fresh) clear(body);
  for (const { node } of connection.edges) {
    const delivery = node.deliveries.length ? node.deliveries[node.deliveries.length - 1] : null;
    body.append(
      el(
        "tr",
        { dataset: { reportId: node.reportId } },
        el("td", {}, el("code", {}, node.reportId)),
        el("td", {}, node.reportType),
        el("td", {}, node.treatyNumber, node.treatyType ? el("div", { class: "hint" }, node.treatyType) : null),
        el("td", {}, node.periodId, el("div", { class: "hint" }, `${node.periodFrom} – ${node.periodTo}`)),
        el("td", {}, String(node.rowCount)),
        el("td", {}, String(node.adjustmentCount)),
        el("td", {}, node.cededTotal === null ? "—" : `${node.cededTotal} ${text(node.settlementCurrency, "")}`.trim()),
        el("td", {}, delivery ? `${delivery.status}${delivery.acknowledgedAt ? ` ${when(delivery.acknowledgedAt)}` : ""}` : "not delivered", delivery && delivery.error ? el("div", { class: "hint" }, delivery.error) : null),
        el(
          "td",
          { class: "actions" },
          el("button", { type: "button", "aria-label": `Download ${node.reportId} as JSON`, onclick: () => download(node.reportId, "JSON") }, "JSON"),
          el("button", { type: "button", "aria-label": `Download ${node.reportId} as CSV`, onclick: () => download(node.reportId, "CSV") }, "CSV"),
        ),
      ),
    );
  }
  $("bordereaux-empty").hidden = body.children.length > 0;
  state.bordereauxAfter = connection.pageInfo.hasNextPage ? connection.pageInfo.endCursor : null;
  $("bx-more").disabled = state.bordereauxAfter === null;
}

async function download(reportId, format) {
  const data = await attempt(() => gql(Q.DOWNLOAD, { reportId, format }));
  if (data === undefined) return;
  if (data.bordereau === null) {
    fail(`Bordereau ${reportId} was not found.`);
    return;
  }
  const type = format === "CSV" ? "text/csv" : "application/json";
  const blob = new Blob([data.bordereau.download], { type: `${type};charset=utf-8` });
  const url = URL.createObjectURL(blob);
  const safeName = reportId.replace(/[^A-Za-z0-9._-]/g, "_");
  const link = el("a", { href: url, download: `${safeName}.${format.toLowerCase()}` });
  document.body.append(link);
  link.click();
  link.remove();
  URL.revokeObjectURL(url);
  say(`Bordereau ${reportId} downloaded as ${format}.`);
}

// -- wiring -----------------------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) {
      const errorBox = $("signin-error");
      errorBox.textContent = "Enter your partner API key.";
      errorBox.hidden = false;
      return;
    }
    void signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut());
  for (const tab of TABS) {
    $(`tab-${tab}`).addEventListener("click", () => showTab(tab));
    $(`tab-${tab}`).addEventListener("keydown", onTabKey);
  }
  $("endpoints-refresh").addEventListener("click", () => void loadEndpoints());
  $("create-form").addEventListener("submit", (event) => void createEndpoint(event));
  $("secret-copy").addEventListener("click", () => void copy($("secret-value").value, $("secret-value")));
  $("secret-hide").addEventListener("click", () => {
    $("secret-value").value = "";
    $("secret-panel").hidden = true;
    say("The secret is no longer shown.");
  });
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    void searchDeliveries();
  });
  $("filter-clear").addEventListener("click", () => {
    $("filter-form").reset();
    void searchDeliveries();
  });
  $("page-next").addEventListener("click", () => void pageNext());
  $("page-previous").addEventListener("click", () => void pagePrevious());
  $("page-first").addEventListener("click", () => void pageFirst());
  $("redeliver").addEventListener("click", () => void redeliver());
  $("live-start").addEventListener("click", () => startLive());
  $("live-stop").addEventListener("click", () => stopLive());
  $("message-close").addEventListener("click", () => {
    $("message").hidden = true;
    state.message = null;
  });
  $("snippet-copy").addEventListener("click", () => void copy($("snippet").textContent));
  $("bordereaux-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    void loadBordereaux(true);
  });
  $("bx-more").addEventListener("click", () => void loadBordereaux(false));
}

async function start() {
  wire();
  const key = storedKey();
  if (key) {
    await signIn(key);
  } else {
    $("key").focus();
  }
  document.body.dataset.ready = "true";
}

void start();
