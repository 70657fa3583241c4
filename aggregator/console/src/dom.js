// A small element builder: h("td", {class: "num"}, "42").
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

// Replaces what `el` shows.
export function show(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

// A table of `rows` (arrays) under `headers`; `cell` renders one value.
export function table(headers, rows, { caption, cell = formatValue, numeric = [] } = {}) {
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((name, i) =>
        h("th", { scope: "col", class: numeric[i] ? "num" : null }, name)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, row.map((value, i) =>
        h("td", { class: numeric[i] ? "num" : null }, cell(value, i))))))));
}

// How a JSON value reads in a cell.
export function formatValue(value) {
  if (value === null || value === undefined) return h("span", { class: "null" }, "null");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 2 : 0)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}

export function formatCount(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

// An error as the API reported it: its code, its message, and where in the
// SQL it points when it says so.
export function errorBox(error) {
  const where = error.position ? ` (line ${error.position.line}, column ${error.position.column})` : "";
  return h("div", { class: "error", role: "alert" },
    h("strong", { class: "code" }, error.code || "error"), where,
    h("p", {}, error.message));
}
