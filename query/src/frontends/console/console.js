// The sluice query console: tables and their schemas, a SQL editor, the
// answer as a table with its timing and segment/document counts, and a
// line chart when the answer is a time series. Talks to the node's own
// Pinot-compatible endpoints (same origin, so HTTP basic credentials the
// browser holds are sent). Every value from the data is shown as text
// (textContent), never as markup.
"use strict";

const NUMERIC = new Set(["INT", "LONG", "FLOAT", "DOUBLE", "BIG_DECIMAL"]);
const COLORS = ["#1f6fd1", "#d1551f", "#2a9d4b", "#8e44ad", "#c0392b", "#16a085"];
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function getJson(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  return { status: response.status, body };
}

async function loadTables() {
  const list = $("tables");
  const { status, body } = await getJson("/tables");
  list.replaceChildren();
  const tables = (body && body.tables) || [];
  if (status !== 200 || tables.length === 0) {
    list.append(el("li", status === 200 ? "no tables served yet" : "tables unavailable (" + status + ")", "muted"));
    return;
  }
  tables.sort();
  for (const name of tables) {
    const item = el("li", name);
    item.dataset.table = name;
    item.addEventListener("click", () => selectTable(name, item));
    list.append(item);
  }
  if (!$("sql").value) {
    $("sql").value = "SELECT * FROM " + tables[0] + " LIMIT 10";
  }
}

async function selectTable(name, item) {
  for (const li of $("tables").children) li.classList.remove("selected");
  item.classList.add("selected");
  $("sql").value = "SELECT * FROM " + name + " LIMIT 10";
  const { status, body } = await getJson("/tables/" + encodeURIComponent(name) + "/schema");
  const schema = $("schema");
  schema.replaceChildren(el("h2", name));
  if (status !== 200 || !body) {
    schema.append(el("p", "schema unavailable (" + status + ")", "muted"));
    return;
  }
  const table = el("table");
  const fields = [].concat(body.dateTimeFieldSpecs || [], body.dimensionFieldSpecs || [], body.metricFieldSpecs || []);
  for (const field of fields) {
    const row = el("tr");
    row.append(el("td", field.name), el("td", field.dataType));
    table.append(row);
  }
  schema.append(table);
}

async function run() {
  const sql = $("sql").value.trim();
  if (!sql) return;
  const button = $("run");
  button.disabled = true;
  $("stats").textContent = "running…";
  $("error").hidden = true;
  const started = performance.now();
  try {
    const { status, body } = await getJson("/query/sql", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql }),
    });
    show(status, body, performance.now() - started);
  } catch (e) {
    showError("the node did not answer: " + e);
  } finally {
    button.disabled = false;
  }
}

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = false;
  $("stats").textContent = "";
  $("results").querySelector("thead").replaceChildren();
  $("results").querySelector("tbody").replaceChildren();
  $("chart-box").hidden = true;
}

function show(status, body, elapsedMs) {
  const exceptions = (body && body.exceptions) || [];
  const resultTable = body && body.resultTable;
  if (!resultTable) {
    const reasons = exceptions.map((e) => "[" + e.errorCode + "] " + e.message);
    showError(reasons.join("\n") || "HTTP " + status);
    return;
  }
  if (exceptions.length) {
    const error = $("error");
    error.textContent = "partial answer: " + exceptions.map((e) => e.message).join("; ");
    error.hidden = false;
  }
  const names = resultTable.dataSchema.columnNames;
  const types = resultTable.dataSchema.columnDataTypes;
  const rows = resultTable.rows;
  $("stats").textContent =
    rows.length + " rows in " + body.timeUsedMs + " ms (" + Math.round(elapsedMs) + " ms round trip) · segments " +
    body.numSegmentsQueried + " queried, " + body.numSegmentsProcessed + " processed, " + body.numSegmentsMatched +
    " matched · docs " + body.numDocsScanned + " scanned of " + body.totalDocs +
    (body.numConsumingSegmentsQueried ? " · consuming segments " + body.numConsumingSegmentsQueried : "");
  const head = el("tr");
  names.forEach((name, i) => {
    const th = el("th", name);
    th.append(el("small", types[i]));
    head.append(th);
  });
  $("results").querySelector("thead").replaceChildren(head);
  const body_ = document.createDocumentFragment();
  for (const row of rows) {
    const tr = el("tr");
    row.forEach((value, i) => {
      const cls = value === null ? "null" : NUMERIC.has(types[i]) ? "num" : undefined;
      tr.append(el("td", value === null ? "NULL" : value, cls));
    });
    body_.append(tr);
  }
  $("results").querySelector("tbody").replaceChildren(body_);
  chart(names, types, rows);
}

// A time series: a timestamp first column, numbers in every other one,
// two rows or more.
function chart(names, types, rows) {
  const box = $("chart-box");
  const svg = $("chart");
  const legend = $("legend");
  const series = types.slice(1).every((t) => NUMERIC.has(t)) && types.length > 1;
  if (types[0] !== "TIMESTAMP" || !series || rows.length < 2) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const time = (v) => (typeof v === "number" ? v : Date.parse(String(v).replace(" ", "T") + "Z"));
  const points = rows.map((r) => [time(r[0]), r.slice(1).map(Number)]).filter((p) => !isNaN(p[0]));
  points.sort((a, b) => a[0] - b[0]);
  const width = svg.clientWidth || 800, height = 260, pad = 40;
  const xs = points.map((p) => p[0]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const ys = points.flatMap((p) => p[1]).filter((v) => isFinite(v));
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (width - 2 * pad);
  const sy = (y) => height - pad + ((y0 - y) / (y1 - y0 || 1)) * (height - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.replaceChildren();
  const axis = document.createElementNS(ns, "path");
  axis.setAttribute("d", "M" + pad + " " + (height - pad) + "H" + (width - pad) + "M" + pad + " " + pad + "V" + (height - pad));
  axis.setAttribute("stroke", "#9aa6b2");
  svg.append(axis);
  const label = (x, y, text, anchor) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x);
    t.setAttribute("y", y);
    t.setAttribute("font-size", "11");
    t.setAttribute("fill", "#5b6b7c");
    t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.append(t);
  };
  label(pad, height - pad + 16, new Date(x0).toISOString().replace(".000Z", "Z"), "start");
  label(width - pad, height - pad + 16, new Date(x1).toISOString().replace(".000Z", "Z"), "end");
  label(pad - 4, sy(y1) + 4, String(y1), "end");
  label(pad - 4, sy(y0) + 4, String(y0), "end");
  legend.replaceChildren();
  names.slice(1).forEach((name, i) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("points", points.filter((p) => isFinite(p[1][i])).map((p) => sx(p[0]) + "," + sy(p[1][i])).join(" "));
    line.dataset.series = name;
    svg.append(line);
    const key = el("span", name);
    const swatch = el("i");
    swatch.style.background = COLORS[i % COLORS.length];
    key.prepend(swatch);
    legend.append(key);
  });
}

$("run").addEventListener("click", run);
$("sql").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    run();
  }
});
loadTables();
