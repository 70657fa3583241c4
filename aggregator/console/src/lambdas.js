// Query Lambdas: the list, and one lambda's versions and tags, run with
// parameters over its defaults.
import { api } from "./api.js";
import { errorBox, h, show, table } from "./dom.js";
import { openInEditor, parameterForm, parameterValues, placeholders } from "./query.js";
import { results } from "./results.js";

export async function lambdasPage(main) {
  show(main, h("h1", {}, "Query Lambdas"), h("p", { role: "status" }, "Loading…"));
  const lambdas = await api("GET", "/v1/lambdas");
  show(main,
    h("h1", {}, "Query Lambdas"),
    lambdas.length === 0
      ? h("p", {}, "None yet: write a query and press “Save as lambda”.")
      : table(["name", "latest version", "versions", "tags"], lambdas.map((l) => [
        h("a", { href: `#/lambdas/${encodeURIComponent(l.name)}` }, l.name),
        l.latest_version,
        l.versions,
        Object.entries(l.tags).map(([t, v]) => `${t} → ${v}`).join(", "),
      ]), { cell: (v) => (v instanceof Node ? v : String(v)), numeric: [false, true, true] }));
}

export async function lambdaPage(main, name) {
  const path = `/v1/lambdas/${encodeURIComponent(name)}`;
  const lambda = await api("GET", path);
  const newest = lambda.versions[lambda.versions.length - 1];
  const select = h("select", { id: "lambda-version" }, lambda.versions.slice().reverse().map((v) =>
    h("option", { value: v.version }, `version ${v.version}${tagsOf(lambda, v.version)}`)));
  const sqlView = h("pre", { class: "sql" });
  const paramArea = h("div", {});
  const output = h("div", { class: "output", "aria-live": "polite" });
  const params = new Map();
  const current = () => lambda.versions.find((v) => v.version === Number(select.value)) ?? newest;
  const pick = () => {
    const version = current();
    sqlView.textContent = version.sql;
    params.clear();
    for (const p of version.default_parameters ?? []) params.set(p.name.replace(/^:/, ""), { type: p.type, value: String(p.value) });
    show(paramArea, parameterForm(placeholders(version.sql), params));
  };
  select.addEventListener("change", pick);
  const run = async () => {
    const version = current();
    show(output, h("p", { role: "status" }, "Running…"));
    try {
      const answer = await api("POST", `${path}/versions/${version.version}`, {
        parameters: parameterValues(placeholders(version.sql), params),
      });
      show(output, results(answer));
    } catch (error) {
      show(output, errorBox(error));
    }
  };
  show(main,
    h("h1", {}, name),
    newest.description ? h("p", {}, newest.description) : null,
    h("div", { class: "row" },
      h("label", { for: "lambda-version" }, "Version"), select,
      h("button", { type: "button", class: "primary", onclick: run }, "Run"),
      h("button", { type: "button", onclick: () => openInEditor(current().sql) }, "Open in editor")),
    sqlView,
    paramArea,
    h("p", { class: "quiet" }, `HTTP: POST ${path}/versions/{version} or ${path}/tags/{tag} with {"parameters": [...]}`),
    output,
    h("h2", {}, "Versions"),
    table(["version", "created", "by", "tags", "description"], lambda.versions.slice().reverse().map((v) => [
      v.version, v.created_at, v.created_by, tagsOf(lambda, v.version).replace(/^ · /, ""), v.description ?? "",
    ])));
  pick();
}

function tagsOf(lambda, version) {
  const tags = Object.entries(lambda.tags).filter(([, v]) => v === version).map(([t]) => t);
  return tags.length ? ` · ${tags.join(", ")}` : "";
}
