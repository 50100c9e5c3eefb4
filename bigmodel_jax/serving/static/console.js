// The console: a playground and a usage dashboard over the API's own routes.
// The key lives in sessionStorage and travels only in the Authorization
// header. Everything the server returns is shown as text, never as HTML.
"use strict";

const KEY_STORE = "bigmodel_jax.key";
const ENDPOINTS = {
  "/v1/completions": "completions", "/v1/chat/completions": "chat",
  "/v1/embeddings": "embeddings", "/v1/classify": "classify",
};
const $ = (id) => document.getElementById(id);
let models = [];      // GET /v1/models data.
let chat = [];        // The playground conversation: {role, content}.
let running = null;   // AbortController of the call in flight.
let isAdmin = false;

// -- Elements and text -----------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function option(text, value) {
  const node = el("option", text);
  node.value = value;
  return node;
}

function table(node, header, rows, numeric = []) {
  node.replaceChildren();
  const head = node.createTHead().insertRow();
  header.forEach((name, i) => {
    const th = el("th", name, numeric.includes(i) ? "number" : "");
    head.appendChild(th);
  });
  const body = node.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    row.forEach((value, i) => {
      const text = String(value ?? "-");
      tr.appendChild(el("td", text, numeric.includes(i) ? "number" :
                                    text.length > 24 ? "long" : ""));
    });
  }
  if (!rows.length) {
    const td = body.insertRow().appendChild(el("td", "Nothing yet."));
    td.colSpan = header.length;
  }
}

function dollars(usd) {  // "0.001500000" -> "$0.0015" (exact, trailing zeros cut).
  if (usd === null || usd === undefined) return "-";
  const [whole, fraction = ""] = String(usd).split(".");
  const cut = fraction.replace(/0+$/, "");
  return "$" + whole + "." + (cut.length < 2 ? cut.padEnd(2, "0") : cut);
}

function today() { return new Date().toISOString().slice(0, 10); }
function daysBefore(day, n) {
  const d = new Date(day + "T00:00:00Z");
  d.setUTCDate(d.getUTCDate() - n);
  return d.toISOString().slice(0, 10);
}

// -- The API ---------------------------------------------------------------

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  const headers = {"Authorization": "Bearer " + key};
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {...options, headers});
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch (_) { /* Not the API's JSON error: keep the status line. */ }
    if (response.status === 401 && path !== "/v1/models") signOut(message);
    throw new Error(message);
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();

// -- Signing in and out ----------------------------------------------------

async function signIn(key) {
  $("sign-in-error").textContent = "";
  sessionStorage.setItem(KEY_STORE, key);
  try {
    models = (await getJson("/v1/models")).data;
  } catch (e) {
    sessionStorage.removeItem(KEY_STORE);
    $("sign-in-error").textContent = e.message;
    return;
  }
  $("key").value = "";
  $("sign-in").hidden = true;
  $("tabs").hidden = $("who").hidden = false;
  $("who-name").textContent = key.slice(0, 12) + "...";
  fillModels();
  show("playground");
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORE);
  if (running) running.abort();
  for (const id of ["playground", "usage", "tabs", "who", "admin"]) $(id).hidden = true;
  for (const id of ["output", "key-state", "charts", "calls-table", "invoice-table",
                    "keys-table", "chat-log"]) $(id).replaceChildren();
  $("call-cost").hidden = true;
  chat = [];
  models = [];
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
}

function show(tab) {
  for (const name of ["playground", "usage"]) {
    $(name).hidden = name !== tab;
    $("tab-" + name).setAttribute("aria-pressed", String(name === tab));
  }
  if (tab === "usage") refreshUsage();
}

// -- Playground ------------------------------------------------------------

function fillModels() {
  const select = $("model");
  select.replaceChildren(...models.map((m) => option(m.id, m.id)));
  fillEndpoints();
}

function currentModel() { return models.find((m) => m.id === $("model").value); }

function fillEndpoints() {
  const model = currentModel();
  $("endpoint").replaceChildren(...(model ? model.endpoints : []).map(
      (path) => option(path, ENDPOINTS[path])));
  if (model && model.context_length) {  // Leave room for the prompt.
    const most = Math.max(1, Math.floor(model.context_length / 2));
    $("max-tokens").max = model.context_length - 1;
    $("max-tokens").value = Math.min(64, most);
  }
  chat = [];
  setMode();
}

function setMode() {
  const mode = $("endpoint").value;
  const model = currentModel();
  const images = mode === "classify" && model && model.input === "image";
  const generates = mode === "completions" || mode === "chat";
  $("chat-log").hidden = $("new-chat").hidden = mode !== "chat";
  $("prompt").hidden = $("prompt-label").hidden = images;
  $("image").hidden = !images;
  $("max-tokens-label").hidden = $("temperature-label").hidden = !generates;
  $("prompt-label").textContent = {
    completions: "Prompt", chat: "Message",
    embeddings: "Texts, one per line", classify: "Texts, one per line",
  }[mode] || "Input";
  renderChat();
  $("output").replaceChildren();
  $("call-cost").hidden = true;
  $("playground-error").textContent = "";
}

function renderChat() {
  $("chat-log").replaceChildren(...chat.map(
      (m) => el("div", m.content, "message " + m.role)));
}

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function generate(mode, model, text) {
  const body = {
    model: model.id, stream: true, stream_options: {include_usage: true},
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
  };
  if (mode === "chat") {
    chat.push({role: "user", content: text});
    body.messages = chat;
    renderChat();
  } else {
    body.prompt = text;
  }
  const response = await api(mode === "chat" ? "/v1/chat/completions" : "/v1/completions",
                             {method: "POST", body: JSON.stringify(body),
                              signal: running.signal});
  const output = $("output");
  let answer = "", usage = null;
  try {
    for await (const event of serverEvents(response)) {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        const piece = mode === "chat" ? (choice.delta || {}).content : choice.text;
        if (piece) {
          answer += piece;
          output.appendChild(el("span", piece, "piece"));
        }
      }
    }
  } finally {
    if (mode === "chat") {
      chat.push({role: "assistant", content: answer});
      renderChat();
    }
  }
  return {requestId: response.headers.get("x-request-id"), usage};
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",")[1]);
    reader.onerror = () => reject(new Error("Cannot read " + file.name));
    reader.readAsDataURL(file);
  });
}

async function encode(mode, model, text) {
  const body = {model: model.id};
  if (mode === "classify" && model.input === "image") {
    const files = Array.from($("image").files);
    if (!files.length) throw new Error("Choose an image first.");
    body.images = await Promise.all(files.map(readImage));
  } else {
    body.input = text.split("\n").filter((line) => line.trim());
    if (!body.input.length) throw new Error("Type at least one line.");
  }
  const response = await api("/v1/" + mode, {method: "POST", body: JSON.stringify(body),
                                             signal: running.signal});
  const answer = await response.json();
  const output = $("output");
  if (mode === "embeddings") {
    const vectors = answer.data.map((d) => d.embedding);
    const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    vectors.forEach((v, i) => output.appendChild(el("div",
        `#${i}  ${v.length} dimensions, norm ${norm(v).toFixed(4)}: ` +
        v.slice(0, 6).map((x) => x.toFixed(4)).join(", ") + ", ...")));
    if (vectors.length > 1) {
      const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / (norm(a) * norm(b));
      output.appendChild(el("div", "cosine(#0, #1) = " + cos(vectors[0], vectors[1]).toFixed(4)));
    }
  } else {
    for (const item of answer.data) {
      output.appendChild(el("div", `#${item.index}  ${item.label}`));
      const ranked = Object.entries(item.probabilities).sort((a, b) => b[1] - a[1]);
      output.appendChild(el("div", ranked.slice(0, 5).map(
          ([name, p]) => `${name} ${(100 * p).toFixed(1)}%`).join("   ")));
    }
  }
  return {requestId: response.headers.get("x-request-id"), usage: answer.usage};
}

async function run(event) {
  event.preventDefault();
  const model = currentModel(), mode = $("endpoint").value;
  if (!model || running) return;
  const text = $("prompt").value;
  $("output").replaceChildren();
  $("call-cost").hidden = true;
  $("playground-error").textContent = "";
  running = new AbortController();
  $("run").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  try {
    const call = await (mode === "completions" || mode === "chat" ?
                        generate(mode, model, text) : encode(mode, model, text));
    if (mode === "chat") $("prompt").value = "";
    await showCost(call, performance.now() - started);
  } catch (e) {
    $("playground-error").textContent =
        e.name === "AbortError" ? "Stopped; the tokens sent are billed." : e.message;
  } finally {
    running = null;
    $("run").disabled = false;
    $("stop").disabled = true;
  }
}

async function showCost(call, ms) {
  $("cost-request").textContent = call.requestId || "-";
  $("cost-time").textContent = (ms / 1000).toFixed(2) + " s";
  // The billed row is in the ledger before the answer's last bytes left.
  // Request ids are unique per key: look in this key's calls (even an admin's).
  const own = sessionStorage.getItem(KEY_STORE).slice(0, 12);
  const rows = call.requestId ? (await getJson(
      "/v1/usage/calls?request_id=" + encodeURIComponent(call.requestId) +
      "&key=" + encodeURIComponent(own))).data : [];
  const row = rows[0];
  const usage = call.usage || {};
  $("cost-input").textContent = row ? `${row.input_units} ${row.unit}` :
      String(usage.prompt_tokens ?? "-");
  $("cost-output").textContent = row ? `${row.output_units} ${row.unit}` :
      String(usage.completion_tokens ?? "-");
  $("cost-price").textContent = row ? dollars(row.amount_usd) : "-";
  $("cost-price").dataset.usd = row ? row.amount_usd : "";
  $("call-cost").hidden = false;
}

// -- Usage -----------------------------------------------------------------

function keyQuery() {
  const key = isAdmin ? $("key-filter").value : "";
  return key ? "&key=" + encodeURIComponent(key) : "";
}

async function refreshUsage() {
  $("usage-error").textContent = "";
  $("usage").setAttribute("aria-busy", "true");
  try {
    await showKeys();
    await Promise.all([showDaily(), showCalls(), showInvoices()]);
  } catch (e) {
    $("usage-error").textContent = e.message;
  } finally {
    $("usage").setAttribute("aria-busy", "false");
  }
}

function barOf(used, held, limit) {
  const bar = el("div", null, "bar");
  for (const [value, name] of [[used, "used"], [held, "held"]]) {
    const part = el("span", null, name);
    part.style.width = Math.min(100, 100 * value / limit) + "%";
    bar.appendChild(part);
  }
  return bar;
}

function keyCard(key) {
  const card = el("div", null, "card");
  card.appendChild(el("h3", `${key.name} (${key.prefix}...)${key.admin ? ", admin" : ""}`));
  const quota = key.quota_tokens
      ? `${key.used_tokens} of ${key.quota_tokens} tokens used, ${key.held_tokens} held`
      : `${key.used_tokens} tokens used, no quota`;
  card.appendChild(el("div", quota, "quota"));
  if (key.quota_tokens) card.appendChild(barOf(key.used_tokens, key.held_tokens, key.quota_tokens));
  const credit = key.credit_usd
      ? `${dollars(key.spent_usd)} of ${dollars(key.credit_usd)} credit spent, ${dollars(key.held_usd)} held`
      : `${dollars(key.spent_usd)} spent, invoiced`;
  card.appendChild(el("div", credit, "credit"));
  if (key.credit_usd) {
    card.appendChild(barOf(Number(key.spent_usd), Number(key.held_usd), Number(key.credit_usd)));
  }
  card.appendChild(el("div", key.rate_per_minute
      ? `Rate ${key.rate_per_minute}/min, ${Math.floor(key.rate_left)} requests left now`
      : "No rate limit", "rate"));
  return card;
}

async function showKeys() {
  const keys = (await getJson("/v1/usage/keys")).data;
  const prefix = sessionStorage.getItem(KEY_STORE).slice(0, 12);
  const mine = keys.find((k) => k.prefix === prefix) || keys[0];
  isAdmin = Boolean(mine && mine.admin);
  const cards = el("div", null, "cards");
  if (mine) cards.appendChild(keyCard(mine));
  $("key-state").replaceChildren(cards);
  $("admin").hidden = !isAdmin;
  if (!isAdmin) return;
  table($("keys-table"), ["name", "prefix", "status", "tokens used", "quota",
                          "spent", "credit", "rate/min"],
        keys.map((k) => [k.name, k.prefix, k.revoked ? "revoked" : k.admin ? "admin" : "active",
                         k.used_tokens, k.quota_tokens, dollars(k.spent_usd),
                         dollars(k.credit_usd), k.rate_per_minute]), [3, 4, 5, 6, 7]);
  const filter = $("key-filter"), chosen = filter.value;
  filter.replaceChildren(option("every key", ""), ...keys.map(
      (k) => option(`${k.name} (${k.prefix}...)`, k.prefix)));
  filter.value = chosen;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A bar chart of `series` ([name, values]) stacked per day.
function chart(title, days, series, format) {
  const width = 320, height = 150, left = 44, bottom = 18, top = 8;
  const totals = days.map((_, i) => series.reduce((s, [, v]) => s + v[i], 0));
  const most = Math.max(...totals, 0) || 1;
  const plot = svg("svg", {viewBox: `0 0 ${width} ${height}`, class: "chart",
                           role: "img", "aria-label": title});
  const step = (width - left) / days.length;
  const y = (v) => top + (height - top - bottom) * (1 - v / most);
  plot.appendChild(svg("line", {x1: left, x2: width, y1: y(0), y2: y(0)}));
  plot.appendChild(svg("text", {x: left - 4, y: y(most) + 8, "text-anchor": "end"}, format(most)));
  plot.appendChild(svg("text", {x: left - 4, y: y(0), "text-anchor": "end"}, format(0)));
  plot.appendChild(svg("text", {x: left, y: height - 4}, days[0]));
  plot.appendChild(svg("text", {x: width, y: height - 4, "text-anchor": "end"},
                       days[days.length - 1]));
  days.forEach((day, i) => {
    let base = 0;
    for (const [name, values] of series) {
      if (!values[i]) continue;
      const bar = svg("rect", {x: left + i * step + step * 0.1, width: Math.max(step * 0.8, 1),
                               y: y(base + values[i]), height: y(base) - y(base + values[i]),
                               class: "s-" + name});
      bar.appendChild(svg("title", {}, `${day}: ${format(values[i])} ${name}`));
      plot.appendChild(bar);
      base += values[i];
    }
  });
  const figure = el("figure");
  const total = totals.reduce((a, b) => a + b, 0);
  const caption = el("figcaption", `${title}: ${format(total)} in the period`);
  if (series.length > 1) {
    for (const [name] of series) {
      const legend = el("span", null, "legend");
      legend.append(el("span", null, "swatch s-" + name), name);
      caption.append(" ", legend);
    }
  }
  figure.appendChild(caption);
  figure.appendChild(plot);
  return figure;
}

async function showDaily() {
  const from = $("period-from").value, to = $("period-to").value;
  const answer = await getJson(`/v1/usage/daily?from=${from}&to=${to}` + keyQuery());
  const byDay = Object.fromEntries(answer.data.map((d) => [d.day, d]));
  const days = [];
  for (let day = answer.from; day <= answer.to; day = daysBefore(day, -1)) days.push(day);
  const of = (field) => days.map((d) => (byDay[d] ? Number(byDay[d][field]) : 0));
  const count = (v) => Math.round(v).toLocaleString("en-US");
  $("charts").replaceChildren(
      chart("Calls", days, [["calls", of("calls")]], count),
      chart("Units in and out", days, [["input", of("input_units")],
                                       ["output", of("output_units")]], count),
      chart("Spend", days, [["spend", of("amount_usd")]], (v) => "$" + v.toFixed(4)));
}

async function showCalls() {
  const calls = (await getJson("/v1/usage/calls?limit=20" + keyQuery())).data;
  const header = ["time (UTC)", "request id", "model", "endpoint", "in", "out",
                  "status", "ms", "price"];
  const rows = calls.map((c) => [c.created_at.slice(0, 19).replace("T", " "), c.request_id,
                                 c.model, c.endpoint, c.input_units, c.output_units, c.status,
                                 Math.round(c.latency_ms), dollars(c.amount_usd)]);
  if (isAdmin) {
    header.splice(1, 0, "key");
    calls.forEach((c, i) => rows[i].splice(1, 0, c.name));
  }
  const shift = isAdmin ? 1 : 0;
  table($("calls-table"), header, rows, [4, 5, 6, 7, 8].map((i) => i + shift));
}

function invoicePath(format) {
  return `/v1/usage/invoices?from=${$("invoice-from").value}&to=${$("invoice-to").value}` +
      `&format=${format}` + keyQuery();
}

async function showInvoices() {
  const lines = (await getJson(invoicePath("json"))).data;
  table($("invoice-table"), ["key", "model", "calls", "input", "output", "unit", "amount"],
        lines.map((l) => [l.name, l.model, l.calls, l.input_units, l.output_units, l.unit,
                          dollars(l.amount_usd)]), [2, 3, 4, 6]);
}

async function downloadCsv() {
  $("usage-error").textContent = "";
  try {
    const response = await api(invoicePath("csv"));
    const name = (response.headers.get("content-disposition") || "")
        .match(/filename="([^"]+)"/);
    const link = el("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = name ? name[1] : "invoice.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (e) {
    $("usage-error").textContent = e.message;
  }
}

// -- Wiring ----------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const day = today();
  $("period-from").value = daysBefore(day, 29);
  $("period-to").value = $("invoice-to").value = day;
  $("invoice-from").value = day.slice(0, 8) + "01";
  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("tab-playground").addEventListener("click", () => show("playground"));
  $("tab-usage").addEventListener("click", () => show("usage"));
  $("model").addEventListener("change", fillEndpoints);
  $("endpoint").addEventListener("change", setMode);
  $("call-form").addEventListener("submit", run);
  $("stop").addEventListener("click", () => running && running.abort());
  $("new-chat").addEventListener("click", () => { chat = []; renderChat(); });
  $("period-form").addEventListener("submit", (e) => { e.preventDefault(); refreshUsage(); });
  $("invoice-form").addEventListener("submit", (e) => { e.preventDefault(); refreshUsage(); });
  $("key-filter").addEventListener("change", refreshUsage);
  $("invoice-csv").addEventListener("click", downloadCsv);
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) signIn(key);
});
