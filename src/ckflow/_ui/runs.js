// The runs list: GET ../runs with the page's own query (state, flow, cursor), each run linking to its page.
import { el, formatTime, pageData, request, say, stateCell } from "./common.js";

const { states } = pageData("ckflow-runs");
const query = new URLSearchParams(location.search);

function fillFilter() {
  const select = document.getElementById("state");
  for (const state of states) select.append(new Option(state, state, false, query.get("state") === state));
  document.getElementById("flow-filter").value = query.get("flow") || "";
}

function row(run) {
  const link = el("a", run.run_id);
  link.href = `runs/${encodeURIComponent(run.run_id)}`;
  const first = el("td");
  first.append(link);
  const tr = el("tr");
  tr.dataset.run = run.run_id;
  tr.append(first, el("td", run.flow), stateCell(run.state));
  for (const at of [run.created_at, run.updated_at, run.ended_at]) tr.append(el("td", formatTime(at)));
  return tr;
}

async function load() {
  const api = new URLSearchParams();
  for (const key of ["state", "flow", "cursor"]) if (query.get(key)) api.set(key, query.get(key));
  try {
    const page = await request(`../runs?${api}`);
    document.querySelector("#runs tbody").replaceChildren(...page.runs.map(row));
    say(page.runs.length ? "" : "No runs.");
    const next = document.getElementById("next");
    if (page.next_cursor) {
      const nextQuery = new URLSearchParams(query);
      nextQuery.set("cursor", page.next_cursor);
      next.href = `?${nextQuery}`;
      next.hidden = false;
    }
  } catch (error) {
    say(`Could not list the runs: ${error.message}`, true);
  }
}

fillFilter();
load();
