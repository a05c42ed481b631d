// What both pages use. Text from the server only ever reaches the page through textContent.

/** An element with its text (and optionally a class), built without parsing any markup. */
export function el(tag, text = "", className = "") {
  const node = document.createElement(tag);
  if (text !== "") node.textContent = text;
  if (className !== "") node.className = className;
  return node;
}

/** The JSON data island the server put in the page. */
export function pageData(id) {
  return JSON.parse(document.getElementById(id).textContent);
}

/** A readable message for a failed response: its status and FastAPI's `detail` (text, or a list of errors). */
async function failure(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) detail = body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  } catch {
    // not JSON: keep the status text
  }
  return new Error(`${response.status} ${detail}`);
}

/** Fetch a URL (relative to the page) and return its JSON, or throw an Error naming the status and detail. */
export async function request(url, options = {}) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, ...options });
  if (!response.ok) throw await failure(response);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** POST a JSON body. */
export function post(url, body) {
  return request(url, {
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
}

/** An ISO time or epoch seconds as the browser's local time, with the date unless it is today ("" for none). */
export function formatTime(value) {
  if (value === null || value === undefined) return "";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  const time = `${date.toLocaleTimeString(undefined, { hour12: false })}.${String(date.getMilliseconds()).padStart(3, "0")}`;
  return date.toDateString() === new Date().toDateString() ? time : `${date.toLocaleDateString()} ${time}`;
}

/** Seconds as "12 ms", "1.250 s" ("" for none). */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(3)} s`;
}

/** A cell showing a state, styled by it. */
export function stateCell(state) {
  return el("td", state, `state state-${String(state).toLowerCase()}`);
}

/** Show `text` in the page's status line; `isError` styles it as an error. */
export function say(text, isError = false) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}
