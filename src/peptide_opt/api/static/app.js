// The peptide-opt web page: sign in with a key, submit tasks, follow them, and show a
// finished task's results. Every request goes to this server's /v1 API.
"use strict";

const KEY_STORAGE = "peptideOptKey";
const POLL_MS = 3000;
const PAGE_SIZE = 20;
const TERMINAL = new Set(["finished", "failed", "cancelled"]);
// result.json keys of the platform's columns, in the platform's order.
const RESULT_COLUMNS = [
  ["Original sequence", "originalSequence"],
  ["Original sequence affinity score", "originalSequenceAffinityScore"],
  ["Original sequence global score", "originalSequenceGlobalScore"],
  ["Optimal sequence", "optimalSequence"],
  ["Global score", "globalScore"],
  ["Molecular weight", "molecularWeight"],
  ["Isoelectric point", "isoelectricPoint"],
  ["Aromaticity", "aromaticity"],
  ["Instability index", "instabilityIndex"],
  ["Hydrophobicity", "hydrophobicity"],
  ["Hydrophilicity", "hydrophilicity"],
  ["Secondary structure fraction (Helix, Turn, Sheet)", "secondaryStructureFraction"],
];

const state = { key: sessionStorage.getItem(KEY_STORAGE), offset: 0, timer: null,
  viewer: null, shownResult: null };

const $ = (selector) => document.querySelector(selector);

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function showMessage(text, isError = true) {
  const box = $("#message");
  box.textContent = text || "";
  box.className = isError ? "error" : "info";
  box.hidden = !text;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    signOut("The key is invalid, revoked or expired. Sign in again.");
    throw new ApiError(401, "not signed in");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (body.detail) detail = JSON.stringify(body.detail);
    } catch (error) { /* a body that is not JSON keeps the status line */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// -- sign in -------------------------------------------------------------------------

async function signIn(key) {
  state.key = key.trim();
  try {
    const me = await apiJson("/v1/me");
    sessionStorage.setItem(KEY_STORAGE, state.key);
    showMessage("");
    $("#who").textContent = `${me.username}${me.is_admin ? " (admin)" : ""}`;
    $("#sign-out").hidden = false;
    route();
  } catch (error) {
    if (error.status !== 401) showMessage(error.message);
  }
}

function signOut(reason) {
  state.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  $("#who").textContent = "";
  $("#sign-out").hidden = true;
  stopPolling();
  showView("#sign-in-view");
  showMessage(reason || "");
}

// -- views ---------------------------------------------------------------------------

function showView(id) {
  for (const view of ["#sign-in-view", "#tasks-view", "#task-view"]) {
    $(view).hidden = view !== id;
  }
}

function stopPolling() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

function route() {
  stopPolling();
  if (!state.key) {
    showView("#sign-in-view");
    return;
  }
  const match = location.hash.match(/^#\/tasks\/([^/]+)$/);
  if (match) {
    showView("#task-view");
    showTask(decodeURIComponent(match[1]));
  } else {
    showView("#tasks-view");
    refreshTasks();
  }
}

// -- submit --------------------------------------------------------------------------

async function submitTask(event) {
  event.preventDefault();
  const form = event.target;
  const data = new FormData();
  for (const [name, value] of new FormData(form).entries()) {
    // Empty fields keep the server's defaults.
    if (value instanceof File || String(value).trim() !== "") data.append(name, value);
  }
  $("#submit-button").disabled = true;
  try {
    const task = await apiJson("/v1/tasks", { method: "POST", body: data });
    const warnings = (task.warnings || []).join("; ");
    showMessage(`Task ${task.id} submitted.${warnings ? " Warnings: " + warnings : ""}`,
      false);
    form.reset();
    state.offset = 0;
    refreshTasks();
  } catch (error) {
    if (error.status !== 401) showMessage(`Submission failed: ${error.message}`);
  } finally {
    $("#submit-button").disabled = false;
  }
}

// -- task list -----------------------------------------------------------------------

function progressBar(task) {
  const fraction = Math.max(0, Math.min(1, (Number(task.progress) || 0) / 100));
  const bar = element("progress", null, { max: "1", value: String(fraction) });
  bar.title = `${Math.round(fraction * 100)} %`;
  return bar;
}

function formatTime(text) {
  return text ? text.replace("T", " ").replace(/\.\d+/, "").replace(/Z$/, "") : "";
}

async function refreshTasks() {
  stopPolling();
  const status = $("#status-filter").value;
  const query = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset });
  if (status) query.set("status", status);
  try {
    const page = await apiJson(`/v1/tasks?${query}`);
    renderTasks(page);
  } catch (error) {
    if (error.status === 401) return;
    showMessage(`Could not load tasks: ${error.message}`);
  }
  if (!$("#tasks-view").hidden) state.timer = setTimeout(refreshTasks, POLL_MS);
}

function renderTasks(page) {
  const body = $("#tasks-table tbody");
  body.replaceChildren();
  for (const task of page.tasks) {
    const row = element("tr", null, { "data-task-id": task.id, class: task.status });
    const link = element("a", task.id.slice(0, 8), { href: `#/tasks/${task.id}` });
    const idCell = element("td");
    idCell.append(link);
    const progressCell = element("td");
    progressCell.append(progressBar(task));
    row.append(idCell, element("td", task.status, { class: "status" }), progressCell,
      element("td", task.current_step || ""), element("td", formatTime(task.created_at)));
    const actions = element("td");
    addActions(actions, task, refreshTasks);
    row.append(actions);
    body.append(row);
  }
  const last = Math.min(page.offset + page.tasks.length, page.total);
  $("#page-label").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}`
    : "no tasks";
  $("#previous-page").disabled = page.offset === 0;
  $("#next-page").disabled = last >= page.total;
}

function addActions(container, task, after) {
  if (task.status === "pending" || task.status === "processing") {
    const button = element("button", task.cancel_requested ? "Cancelling" : "Cancel",
      { type: "button" });
    button.disabled = Boolean(task.cancel_requested);
    button.addEventListener("click", () => act(`/v1/tasks/${task.id}/cancel`, "POST", after));
    container.append(button);
  } else {
    const button = element("button", "Delete", { type: "button" });
    button.addEventListener("click", () => {
      if (confirm(`Delete task ${task.id} and its files?`)) {
        act(`/v1/tasks/${task.id}`, "DELETE", after);
      }
    });
    container.append(button);
  }
}

async function act(path, method, after) {
  try {
    await api(path, { method });
    showMessage("");
  } catch (error) {
    if (error.status !== 401) showMessage(error.message);
  }
  after();
}

// -- one task ------------------------------------------------------------------------

async function showTask(taskId) {
  stopPolling();
  let task;
  try {
    task = await apiJson(`/v1/tasks/${encodeURIComponent(taskId)}`);
  } catch (error) {
    if (error.status !== 401) showMessage(`Task ${taskId}: ${error.message}`);
    return;
  }
  renderTaskDetails(task);
  if (task.status === "finished") {
    if (state.shownResult !== task.id) await showResult(task);
  } else {
    $("#result").hidden = true;
    state.shownResult = null;
  }
  if (!TERMINAL.has(task.status) && !$("#task-view").hidden) {
    state.timer = setTimeout(() => showTask(taskId), POLL_MS);
  }
}

function renderTaskDetails(task) {
  $("#task-id").textContent = task.id;
  const list = $("#task-details");
  list.replaceChildren();
  const add = (term, value) => {
    if (value === null || value === undefined || value === "") return;
    list.append(element("dt", term));
    const definition = element("dd");
    if (value instanceof Node) definition.append(value);
    else definition.textContent = String(value);
    list.append(definition);
  };
  add("Status", task.status);
  add("Progress", progressBar(task));
  add("Current step", task.current_step);
  add("Attempts", task.attempts);
  add("Priority", task.priority);
  add("Created (UTC)", formatTime(task.created_at));
  add("Started (UTC)", formatTime(task.started_at));
  add("Finished (UTC)", formatTime(task.finished_at));
  add("Error", task.error);
  const timings = Object.entries(task.step_timings || {});
  if (timings.length) {
    add("Step timings", timings.map(([step, seconds]) =>
      `${step} ${Number(seconds).toFixed(1)} s`).join(", "));
  }
  const actions = $("#task-actions");
  actions.replaceChildren();
  addActions(actions, task, () => {
    if (location.hash === `#/tasks/${task.id}`) showTask(task.id);
  });
}

async function showResult(task) {
  let result;
  try {
    result = await apiJson(`/v1/tasks/${task.id}/result`);
  } catch (error) {
    if (error.status !== 401) showMessage(`Result of ${task.id}: ${error.message}`);
    return;
  }
  state.shownResult = task.id;
  $("#result").hidden = false;
  renderResultTable(result.results || []);
  renderScorePlot(collectScorePoints(result));
  renderFiles(task);
  await renderComplexes(task);
}

function renderResultTable(rows) {
  const table = $("#result-table");
  table.replaceChildren();
  const head = element("tr");
  head.append(element("th", "Pose"));
  for (const [title] of RESULT_COLUMNS) head.append(element("th", title));
  table.append(head);
  rows.forEach((row, index) => {
    const line = element("tr");
    line.append(element("td", `Docking result rank ${row.rank ?? index + 1}`));
    for (const [, key] of RESULT_COLUMNS) line.append(element("td", formatValue(row[key])));
    table.append(line);
  });
}

function formatValue(value) {
  if (typeof value === "number") return Number.isInteger(value) ? value : value.toFixed(3);
  if (Array.isArray(value)) return `(${value.map(formatValue).join(", ")})`;
  // The secondary structure fractions arrive as the text of a (helix, turn, sheet) tuple.
  const tuple = typeof value === "string" && value.match(/^\((.*)\)$/);
  if (tuple) {
    const parts = tuple[1].split(",").map(Number);
    if (parts.every(Number.isFinite)) return formatValue(parts);
  }
  return value === null || value === undefined ? "-" : value;
}

// Points (pose affinity in kcal/mol, design score) of every design of every pose.
function collectScorePoints(result) {
  const points = [];
  const poses = Array.isArray(result.poses) ? result.poses : [];
  poses.forEach((pose, index) => {
    const affinity = Number(pose.affinity ?? pose.affinity_kcal_mol);
    for (const design of pose.designs || []) {
      const score = Number(design.score);
      if (Number.isFinite(affinity) && Number.isFinite(score)) {
        points.push({ pose: pose.rank ?? index + 1, affinity, score,
          sequence: design.sequence || "" });
      }
    }
  });
  return points;
}

function renderScorePlot(points) {
  const container = $("#score-plot");
  container.replaceChildren();
  if (!points.length) {
    container.append(element("p", "This result lists no designs with scores."));
    return;
  }
  const width = 560, height = 340, margin = { left: 64, right: 16, top: 16, bottom: 48 };
  const xs = points.map((p) => p.affinity), ys = points.map((p) => p.score);
  const span = (values) => {
    let low = Math.min(...values), high = Math.max(...values);
    if (low === high) { low -= 0.5; high += 0.5; }
    const pad = (high - low) * 0.05;
    return [low - pad, high + pad];
  };
  const [x0, x1] = span(xs), [y0, y1] = span(ys);
  const px = (x) => margin.left + (x - x0) / (x1 - x0) * (width - margin.left - margin.right);
  const py = (y) => height - margin.bottom - (y - y0) / (y1 - y0)
    * (height - margin.top - margin.bottom);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("id", "score-plot-svg");
  const line = (xa, ya, xb, yb) => {
    const node = document.createElementNS(ns, "line");
    Object.entries({ x1: xa, y1: ya, x2: xb, y2: yb }).forEach(([k, v]) =>
      node.setAttribute(k, v));
    node.setAttribute("class", "axis");
    svg.append(node);
  };
  const text = (x, y, content, anchor, rotate) => {
    const node = document.createElementNS(ns, "text");
    node.setAttribute("x", x);
    node.setAttribute("y", y);
    node.setAttribute("text-anchor", anchor);
    if (rotate) node.setAttribute("transform", `rotate(-90 ${x} ${y})`);
    node.textContent = content;
    svg.append(node);
  };
  line(margin.left, height - margin.bottom, width - margin.right, height - margin.bottom);
  line(margin.left, margin.top, margin.left, height - margin.bottom);
  for (let i = 0; i <= 4; i++) {
    const xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    text(px(xv), height - margin.bottom + 16, xv.toFixed(2), "middle");
    text(margin.left - 6, py(yv) + 4, yv.toFixed(2), "end");
  }
  text((margin.left + width - margin.right) / 2, height - 8,
    "Pose affinity (Vina, kcal/mol)", "middle");
  text(16, (margin.top + height - margin.bottom) / 2,
    "Design score (ProteinMPNN, lower is better)", "middle", true);
  for (const point of points) {
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", px(point.affinity));
    dot.setAttribute("cy", py(point.score));
    dot.setAttribute("r", 4);
    dot.setAttribute("class", "point");
    const title = document.createElementNS(ns, "title");
    title.textContent = `pose ${point.pose}: ${point.sequence} score ` +
      `${point.score.toFixed(3)}, affinity ${point.affinity.toFixed(2)} kcal/mol`;
    dot.append(title);
    svg.append(dot);
  }
  container.append(svg);
}

function renderFiles(task) {
  const list = $("#file-list");
  list.replaceChildren();
  for (const name of task.files || []) {
    const item = element("li");
    const link = element("a", name, { href: "#", "data-file": name });
    link.addEventListener("click", (event) => {
      event.preventDefault();
      downloadFile(task.id, name);
    });
    item.append(link);
    list.append(item);
  }
}

async function downloadFile(taskId, name) {
  try {
    const response = await api(`/v1/tasks/${taskId}/files/${encodeURIComponent(name)}`);
    const url = URL.createObjectURL(await response.blob());
    const link = element("a", null, { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    if (error.status !== 401) showMessage(`${name}: ${error.message}`);
  }
}

async function renderComplexes(task) {
  // A pose whose chain IDs or atom numbers do not fit PDB has complex<i>.cif instead.
  const names = (task.files || []).filter((name) => /^complex\d+\.(pdb|cif)$/.test(name))
    .sort((a, b) => parseInt(a.slice(7)) - parseInt(b.slice(7)));
  const select = $("#complex-select");
  select.replaceChildren(...names.map((name) => element("option", name, { value: name })));
  select.onchange = () => showComplex(task.id, select.value);
  if (names.length) await showComplex(task.id, names[0]);
}

async function showComplex(taskId, name) {
  const container = $("#viewer");
  if (typeof $3Dmol === "undefined") {
    container.textContent = "The 3D viewer (3Dmol.js) did not load.";
    return;
  }
  let text;
  try {
    text = await (await api(`/v1/tasks/${taskId}/files/${encodeURIComponent(name)}`)).text();
  } catch (error) {
    if (error.status !== 401) showMessage(`${name}: ${error.message}`);
    return;
  }
  if (!state.viewer) {
    state.viewer = $3Dmol.createViewer(container, { backgroundColor: "white" });
  }
  const viewer = state.viewer;
  viewer.clear();
  viewer.addModel(text, name.endsWith(".cif") ? "cif" : "pdb");
  // In the complexes the docked peptide is chain A and the receptor chains follow.
  viewer.setStyle({}, { cartoon: { color: "lightgray" } });
  viewer.setStyle({ chain: "A" }, { stick: { colorscheme: "greenCarbon" } });
  viewer.zoomTo({ chain: "A" });
  viewer.render();
  container.setAttribute("data-model", name);
}

// -- start ---------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#key").value);
  });
  $("#sign-out").addEventListener("click", () => signOut(""));
  $("#submit-form").addEventListener("submit", submitTask);
  $("#status-filter").addEventListener("change", () => { state.offset = 0; refreshTasks(); });
  $("#previous-page").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    refreshTasks();
  });
  $("#next-page").addEventListener("click", () => {
    state.offset += PAGE_SIZE;
    refreshTasks();
  });
  window.addEventListener("hashchange", route);
  if (state.key) signIn(state.key);
  else route();
});
