// Charts of query answers with uPlot: a line or bar chart over time when the
// answer has a time column and something to plot.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom.js";

const NUMERIC = /^(integer|bigint|bigint unsigned|double|decimal.*|float.*|real|smallint)$/;
const MAX_SERIES = 8;
const PALETTE = ["#2f6fdf", "#e4572e", "#29a35a", "#a05cd6", "#d9a400", "#17a2b8", "#d63384", "#6c757d"];

// What of `columns` can be charted: the time column, and either numeric
// measures, or one measure split by one text dimension (GROUP BY minute, kind).
export function chartPlan(columns) {
  const time = columns.findIndex((c) => c.type === "timestamp" || c.type === "date");
  if (time < 0) return null;
  const measures = columns.map((c, i) => i).filter((i) => i !== time && NUMERIC.test(columns[i].type));
  if (measures.length === 0) return null;
  const dimensions = columns.map((c, i) => i).filter((i) => i !== time && columns[i].type === "varchar");
  if (measures.length === 1 && dimensions.length === 1) {
    return { time, measures, split: dimensions[0] };
  }
  return { time, measures: measures.slice(0, MAX_SERIES), split: null };
}

// uPlot's columnar data for `plan`: x in seconds, sorted, one array per series.
export function chartData(plan, columns, rows) {
  const seconds = (value) => {
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : ms / 1000;
  };
  if (plan.split === null) {
    const sorted = rows
      .map((row) => [seconds(row[plan.time]), row])
      .filter(([x]) => x !== null)
      .sort((a, b) => a[0] - b[0]);
    return {
      names: plan.measures.map((i) => columns[i].name),
      data: [sorted.map(([x]) => x), ...plan.measures.map((i) => sorted.map(([, row]) => toNumber(row[i])))],
    };
  }
  // Split: the largest MAX_SERIES values of the dimension, each a series.
  const measure = plan.measures[0];
  const totals = new Map();
  for (const row of rows) {
    const key = String(row[plan.split]);
    totals.set(key, (totals.get(key) ?? 0) + Math.abs(toNumber(row[measure]) ?? 0));
  }
  const keys = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, MAX_SERIES).map(([k]) => k);
  const xs = [...new Set(rows.map((row) => seconds(row[plan.time])).filter((x) => x !== null))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const series = keys.map(() => xs.map(() => null));
  for (const row of rows) {
    const s = keys.indexOf(String(row[plan.split]));
    const x = seconds(row[plan.time]);
    if (s >= 0 && x !== null) series[s][at.get(x)] = toNumber(row[measure]);
  }
  return { names: keys.map((k) => `${columns[measure].name} · ${k}`), data: [xs, ...series] };
}

function toNumber(value) {
  if (value === null || value === undefined) return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

// A chart element for `columns`/`rows` of kind "line" or "bar" (null when the
// answer has nothing to chart). `data-points` says how many x values it drew.
export function chart(columns, rows, kind, width) {
  const plan = chartPlan(columns);
  if (!plan || rows.length === 0) return null;
  const { names, data } = chartData(plan, columns, rows);
  const holder = h("figure", {
    class: "chart",
    dataset: { points: String(data[0].length), series: String(names.length), kind },
    "aria-label": `${kind} chart of ${names.join(", ")} over ${columns[plan.time].name}`,
    role: "img",
  });
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  const axis = { stroke: dark ? "#c9d1d9" : "#333", grid: { stroke: dark ? "#30363d" : "#e5e5e5" } };
  const bars = uPlot.paths.bars({ size: [0.8, 64] });
  const options = {
    // Times as the answer gives them: UTC.
    tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"),
    width: Math.max(320, width),
    height: 280,
    axes: [axis, axis],
    legend: { live: true },
    series: [
      { label: columns[plan.time].name },
      ...names.map((name, i) => ({
        label: name,
        stroke: PALETTE[i % PALETTE.length],
        fill: kind === "bar" ? PALETTE[i % PALETTE.length] + "99" : undefined,
        paths: kind === "bar" ? bars : undefined,
        points: { show: kind === "line" && data[0].length <= 60 },
        spanGaps: true,
      })),
    ],
  };
  new uPlot(options, data, holder);
  return holder;
}
