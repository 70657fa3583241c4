// The query page: the SQL editor, parameters, run and cancel, the answer as a
// table and a chart, and saving the SQL as a Query Lambda.
import { api, ApiError, query } from "./api.js";
import { createEditor } from "./editor.js";
import { errorBox, formatMs, h, show } from "./dom.js";
import { results } from "./results.js";
import { loadSchema } from "./schema.js";

const DRAFT = "altdb.querySql";
const TYPES = ["string", "int", "float", "bool", "timestamp", "date"];

// SQL another page asks the query page to open with.
export function openInEditor(sql) {
  sessionStorage.setItem(DRAFT, sql);
  location.hash = "#/query";
}

// The `:name` placeholders of `sql` (not `::type` casts, not inside quotes).
export function placeholders(sql) {
  const names = [];
  const unquoted = sql.replace(/'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*/g, " ");
  for (const m of unquoted.matchAll(/(^|[^:\w]):([A-Za-z_]\w*)/g)) {
    if (!names.includes(m[2])) names.push(m[2]);
  }
  return names;
}

// Parameter inputs for `names`; keeps what was typed for a name across edits.
export function parameterForm(names, state) {
  const rows = names.map((name) => {
    const value = state.get(name) ?? { type: "string", value: "" };
    state.set(name, value);
    const id = `param-${name}`;
    return h("div", { class: "param" },
      h("label", { for: id }, `:${name}`),
      h("select", {
        "aria-label": `type of :${name}`,
        onchange: (e) => { value.type = e.target.value; },
      }, TYPES.map((t) => h("option", { value: t, selected: t === value.type }, t))),
      h("input", {
        id, value: value.value, spellcheck: "false",
        oninput: (e) => { value.value = e.target.value; },
      }));
  });
  return rows.length ? h("fieldset", { class: "params" }, h("legend", {}, "Parameters"), rows) : null;
}

// Typed parameter values for the API from the form's text.
export function parameterValues(names, state) {
  return names.map((name) => {
    const { type, value } = state.get(name);
    let typed = value;
    if (type === "int" || type === "float") typed = Number(value);
    if (type === "bool") typed = value.trim().toLowerCase() === "true";
    return { name, type, value: typed };
  });
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function queryPage(main) {
  const params = new Map();
  const output = h("div", { class: "output", "aria-live": "polite" });
  const paramArea = h("div", {});
  const runButton = h("button", { type: "button", class: "primary", onclick: () => run() }, "Run");
  const cancelButton = h("button", { type: "button", disabled: true, onclick: () => cancel() }, "Cancel");
  const saveButton = h("button", { type: "button", onclick: () => saveDialog() }, "Save as lambda");
  const status = h("span", { class: "running", role: "status" });
  const editorHolder = h("div", { class: "editor" });
  show(main,
    h("h1", { class: "visually-hidden" }, "Query"),
    h("label", { class: "editor-label", id: "sql-label" }, "SQL"),
    editorHolder,
    paramArea,
    h("div", { class: "row toolbar" }, runButton, cancelButton, saveButton, status),
    output);

  let shownNames = "";
  const refreshParams = (sql) => {
    const names = placeholders(sql);
    if (names.join() === shownNames) return;
    shownNames = names.join();
    show(paramArea, parameterForm(names, params));
  };
  const editor = createEditor(editorHolder, {
    doc: sessionStorage.getItem(DRAFT) ?? "SELECT COUNT(*) FROM ",
    run: () => run(),
    label: "SQL statement",
    onChange: refreshParams,
  });
  shownNames = null;
  refreshParams(editor.text());
  loadSchema().then((schema) => editor.setSchema(schema)).catch(() => {});

  let running = null;

  async function run() {
    if (running) return;
    const sql = editor.text();
    sessionStorage.setItem(DRAFT, sql);
    editor.markError(null);
    const names = placeholders(sql);
    const id = randomId();
    const controller = new AbortController();
    const started = performance.now();
    running = { id, controller, cancelled: false };
    runButton.disabled = true;
    cancelButton.disabled = false;
    const tick = setInterval(() => {
      status.textContent = `Running… ${formatMs(performance.now() - started)}`;
    }, 100);
    status.textContent = "Running…";
    try {
      const answer = await query(sql, {
        parameters: parameterValues(names, params),
        queryId: id,
        signal: controller.signal,
      });
      show(output, results(answer));
      status.textContent = "";
    } catch (error) {
      if (error.name === "AbortError" || error.code === "cancelled") {
        status.textContent = "";
        show(output, h("p", { class: "warning", role: "alert" },
          `Cancelled after ${formatMs(performance.now() - started)}.`));
      } else {
        status.textContent = "";
        show(output, errorBox(error));
        editor.markError(error.position);
      }
    } finally {
      clearInterval(tick);
      running = null;
      runButton.disabled = false;
      cancelButton.disabled = true;
    }
  }

  // Asks the aggregator to stop the statement; the request then answers 499.
  async function cancel() {
    if (!running) return;
    const { id, controller } = running;
    cancelButton.disabled = true;
    status.textContent = "Cancelling…";
    try {
      await api("DELETE", `/v1/queries/${encodeURIComponent(id)}`);
    } catch (error) {
      // Finished meanwhile, or not listed yet: stop waiting either way.
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
      controller.abort();
    }
  }

  function saveDialog() {
    const sql = editor.text();
    const names = placeholders(sql);
    const nameInput = h("input", { id: "lambda-name", required: true, pattern: "[A-Za-z0-9_\\-]+", autocomplete: "off" });
    const description = h("input", { id: "lambda-description", autocomplete: "off" });
    const message = h("div", { "aria-live": "polite" });
    const dialog = h("dialog", { class: "save", "aria-labelledby": "save-title" },
      h("form", { method: "dialog", onsubmit: async (e) => {
        e.preventDefault();
        const name = nameInput.value.trim();
        const body = {
          sql,
          default_parameters: parameterValues(names, params),
          description: description.value.trim() || undefined,
        };
        try {
          const existing = (await api("GET", "/v1/lambdas")).some((l) => l.name === name);
          const saved = existing
            ? await api("POST", `/v1/lambdas/${encodeURIComponent(name)}/versions`, body)
            : await api("POST", "/v1/lambdas", { name, ...body });
          const version = saved.versions ? saved.versions[saved.versions.length - 1].version : saved.version;
          dialog.close();
          dialog.remove();
          show(status, h("a", { href: `#/lambdas/${encodeURIComponent(name)}` }, `Saved ${name} version ${version}`));
        } catch (error) {
          show(message, errorBox(error));
        }
      } },
        h("h2", { id: "save-title" }, "Save as Query Lambda"),
        h("p", {}, "A name that exists already gets a new version."),
        h("label", { for: "lambda-name" }, "Name"), nameInput,
        h("label", { for: "lambda-description" }, "Description (optional)"), description,
        names.length ? h("p", {}, `Default parameters: the values above for ${names.map((n) => ":" + n).join(", ")}.`) : null,
        message,
        h("div", { class: "row" },
          h("button", { type: "submit", class: "primary" }, "Save"),
          h("button", { type: "button", onclick: () => { dialog.close(); dialog.remove(); } }, "Close"))));
    document.body.append(dialog);
    dialog.showModal();
    nameInput.focus();
  }
}
