// The live page of one run: its view (GET ../../runs/{id}), its graph drawn by mermaid (GET …/graph), and its
// events (GET …/events, Server-Sent Events), which keep the task table, the run's state and the graph current.
import { el, formatDuration, formatTime, pageData, post, request, say } from "./common.js";

const data = pageData("ckflow-run");
const runUrl = `../../runs/${encodeURIComponent(data.run_id)}`;
/** a run's end states: nothing can be controlled after them */
const RUN_ENDED = new Set(["SUCCESS", "REVERTED", "FAILURE"]);
/** task states in which its execute has ended */
const EXECUTE_ENDED = new Set(["SUCCESS", "FAILURE"]);
/** the event log keeps the newest rows only */
const MAX_EVENT_ROWS = 2000;
/** task name -> its table cells and the wall time its execute started */
const tasks = new Map();

function showState(node, state) {
  node.textContent = state;
  node.className = `state state-${state.toLowerCase()}`;
}

function showRunState(state) {
  showState(document.getElementById("run-state"), state);
  const ended = RUN_ENDED.has(state);
  for (const button of document.querySelectorAll("#controls button")) button.disabled = ended;
}

function taskRow(name) {
  let task = tasks.get(name);
  if (task === undefined) {
    const cells = { name: el("td", name), state: el("td"), attempts: el("td", "0") };
    Object.assign(cells, { started: el("td"), ended: el("td"), duration: el("td") });
    const tr = el("tr");
    tr.dataset.task = name;
    tr.append(...Object.values(cells));
    document.querySelector("#tasks tbody").append(tr);
    task = { cells, started: null };
    tasks.set(name, task);
  }
  return task;
}

/** The whole table and the run's state from a run view. */
function showView(view) {
  showRunState(view.state);
  for (const t of view.tasks) {
    const task = taskRow(t.name);
    showState(task.cells.state, t.state);
    task.cells.attempts.textContent = String(t.attempts);
    task.started = t.started_at ? Date.parse(t.started_at) / 1000 : null;
    task.cells.started.textContent = formatTime(t.started_at);
    task.cells.ended.textContent = formatTime(t.ended_at);
    task.cells.duration.textContent = formatDuration(t.duration);
  }
}

/** One task's row from its state change (the view fetched at the end has the last word). */
function showTaskEvent(event) {
  const task = taskRow(event.task);
  showState(task.cells.state, event.new);
  if (event.attempt) task.cells.attempts.textContent = String(event.attempt);
  if (event.new === "RUNNING") {
    task.started = event.wall;
    task.cells.started.textContent = formatTime(event.wall);
    task.cells.ended.textContent = "";
    task.cells.duration.textContent = "";
  } else if (EXECUTE_ENDED.has(event.new) && task.started !== null) {
    task.cells.ended.textContent = formatTime(event.wall);
    task.cells.duration.textContent = formatDuration(Math.max(0, event.wall - task.started));
  }
}

function eventDetails(event) {
  const parts = [];
  if (event.attempt) parts.push(`attempt ${event.attempt}`);
  if (event.checkpoint) parts.push(`checkpoint ${event.checkpoint}`);
  if (event.failure) parts.push(`${event.failure.exc_type}: ${event.failure.message}`);
  if (event.detail && Object.keys(event.detail).length) parts.push(JSON.stringify(event.detail));
  return parts.join(" · ");
}

function logEvent(event) {
  const tr = el("tr");
  const change = event.new ? `${event.old ?? ""} → ${event.new}` : "";
  for (const text of [event.seq ?? "", formatTime(event.wall), event.name, event.task ?? "", change]) {
    tr.append(el("td", String(text)));
  }
  tr.append(el("td", eventDetails(event)));
  const body = document.querySelector("#events tbody");
  body.append(tr);
  if (body.rows.length > MAX_EVENT_ROWS) body.rows[0].remove();
}

// The graph is the server's Mermaid text for the run's current states, drawn again after task events: one
// drawing at a time, and at most one more after it however many events came meanwhile.
let drawing = null;
let drawAgain = false;

function redraw() {
  if (drawing !== null) {
    drawAgain = true;
    return;
  }
  drawing = drawGraph().finally(() => {
    drawing = null;
    if (drawAgain) {
      drawAgain = false;
      redraw();
    }
  });
}

async function drawGraph() {
  const holder = document.getElementById("graph");
  try {
    const text = await request(`${runUrl}/graph`);
    // Drawn hidden beside the current drawing (mermaid measures text, so it must be in the page), then swapped.
    const next = el("pre", text, "mermaid drawing");
    holder.append(next);
    try {
      await mermaid.run({ nodes: [next] });
    } catch (error) {
      next.remove();
      throw error;
    }
    next.classList.remove("drawing");
    for (const old of [...holder.children]) if (old !== next) old.remove();
  } catch (error) {
    holder.replaceChildren(el("p", `The graph is not available: ${error.message}`, "error"));
  }
}

async function refresh() {
  try {
    showView(await request(runUrl));
  } catch (error) {
    say(`Could not read the run: ${error.message}`, true);
  }
  redraw();
}

function onEvent(event) {
  logEvent(event);
  if (!event.new) return;
  if (event.name.startsWith("ckflow.task.") && event.task) {
    showTaskEvent(event);
    redraw();
  } else if (event.name.startsWith("ckflow.run.")) {
    showRunState(event.new);
  }
}

function follow() {
  const live = document.getElementById("live");
  const source = new EventSource(`${runUrl}/events`);
  source.onopen = () => {
    live.textContent = "live";
  };
  source.onerror = () => {
    // EventSource reconnects by itself (sending Last-Event-ID) unless the server refused the stream.
    live.textContent = source.readyState === EventSource.CLOSED ? "no live updates" : "reconnecting…";
  };
  for (const name of data.events) source.addEventListener(name, (message) => onEvent(JSON.parse(message.data)));
  source.addEventListener("end", () => {
    source.close();
    live.textContent = "ended";
    refresh();
  });
}

async function control(action) {
  const checkpoint = document.getElementById("checkpoint").value;
  const bodies = { goto: { checkpoint }, revert_to: { checkpoint, retry: document.getElementById("retry").checked } };
  const buttons = document.querySelectorAll("#controls button");
  for (const button of buttons) button.disabled = true;
  say(`${action}…`);
  try {
    const view = await post(`${runUrl}/${action}`, bodies[action]);
    showView(view);
    say(`${action}: the run is ${view.state}.`);
  } catch (error) {
    say(`${action} failed: ${error.message}`, true);
    showRunState(document.getElementById("run-state").textContent);
  }
}

function setUp() {
  document.getElementById("run-id").textContent = data.run_id;
  document.getElementById("flow").textContent = data.flow;
  document.title = `ckflow run ${data.run_id}`;
  const picker = document.getElementById("checkpoint");
  for (const name of data.checkpoints) picker.append(new Option(name, name));
  document.getElementById("checkpoint-controls").hidden = data.checkpoints.length === 0;
  for (const button of document.querySelectorAll("#controls button")) {
    button.addEventListener("click", () => control(button.dataset.action));
  }
  mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });
}

setUp();
refresh().then(follow);
