// An answer of POST /v1/query as a table, and as a chart when it has a time
// column (line or bar, switchable).
import { chart, chartPlan } from "./chart.js";
import { formatCount, formatMs, h, show, table } from "./dom.js";

const NUMERIC = /^(integer|bigint|bigint unsigned|double|decimal.*)$/;

export function results(answer, { chartKind = "line" } = {}) {
  const { columns, rows, stats } = answer;
  const section = h("section", { class: "results", "aria-label": "Results" });
  const summary = h("p", { class: "stats", role: "status" },
    `${formatCount(rows.length)} row${rows.length === 1 ? "" : "s"}`,
    ` · ${formatMs(stats.elapsed_ms)}`,
    ` · ${formatCount(stats.rows_scanned)} rows scanned`,
    stats.freshness_ms !== null && stats.freshness_ms !== undefined ? ` · fresh to ${formatMs(stats.freshness_ms)}` : null,
    ` · ${stats.shards_responded}/${stats.shards_queried} shards`,
    answer.query_id ? h("span", { class: "quiet" }, ` · query ${answer.query_id}`) : null);
  section.append(summary);
  if (stats.truncated) {
    section.append(h("p", { class: "warning", role: "note" },
      "The answer was cut at the aggregator's row or byte limit; add a LIMIT or an aggregate."));
  }
  const chartable = chartPlan(columns) && rows.length > 0;
  const chartArea = h("div", { class: "chart-area" });
  if (chartable) {
    let kind = chartKind;
    const draw = () => {
      const width = section.clientWidth || document.querySelector("main").clientWidth - 40;
      show(chartArea, chart(columns, rows, kind, width - 8));
    };
    const picker = h("div", { class: "segmented", role: "radiogroup", "aria-label": "Chart type" },
      ["line", "bar"].map((k) => h("label", {},
        h("input", {
          type: "radio", name: "chart-kind", value: k, checked: k === kind,
          onchange: () => { kind = k; draw(); },
        }), k === "line" ? "Line" : "Bar")));
    section.append(h("div", { class: "chart-head" }, h("h3", {}, "Chart"), picker), chartArea);
    requestAnimationFrame(draw);
  }
  section.append(table(
    columns.map((c) => h("span", {}, c.name, h("small", { class: "type" }, ` ${c.type}`))),
    rows,
    { numeric: columns.map((c) => NUMERIC.test(c.type)) },
  ));
  return section;
}
