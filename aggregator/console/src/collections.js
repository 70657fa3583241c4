// Collections: the list, and one collection's schema, documents, sources with
// per-partition lag and freshness, shards, and dead letters.
import { api, ident, query, quote } from "./api.js";
import { errorBox, formatCount, formatMs, formatValue, h, show, table } from "./dom.js";
import { openInEditor } from "./query.js";

export async function collectionsPage(main) {
  show(main, h("h1", {}, "Collections"), h("p", { role: "status" }, "Loading…"));
  const { collections } = await api("GET", "/v1/collections");
  show(main,
    h("h1", {}, "Collections"),
    collections.length === 0
      ? h("p", {}, "No collections yet: create one with POST /v1/collections.")
      : table(["name", "shards", "replication", "sources", "transform"], collections.map((c) => [
        h("a", { href: `#/collections/${encodeURIComponent(c.name)}` }, c.name),
        c.num_shards,
        c.replication,
        (c.sources ?? []).map((s) => s.type ?? Object.keys(s)[0]).join(", ") || "–",
        c.transform ? "yes" : "–",
      ]), { cell: (v) => (v instanceof Node ? v : formatValue(v)), numeric: [false, true, true] }));
}

export async function collectionPage(main, name) {
  show(main, h("h1", {}, name), h("p", { role: "status" }, "Loading…"));
  const described = await api("GET", `/v1/collections/${encodeURIComponent(name)}`);
  const dlq = h("section", { "aria-labelledby": "dlq-title" }, h("h2", { id: "dlq-title" }, "Dead letters"), h("p", {}, "Loading…"));
  show(main,
    h("h1", {}, name),
    h("p", { class: "row" },
      h("span", { class: "big" }, formatCount(described.documents)), " documents",
      h("button", { type: "button", onclick: () => openInEditor(`SELECT *\nFROM ${ident(name)}\nORDER BY _event_time DESC\nLIMIT 100`) }, "Query it")),
    h("section", { "aria-labelledby": "schema-title" },
      h("h2", { id: "schema-title" }, "Schema"),
      table(["column", "type"], described.schema.map((c) => [c.name, c.type]), { caption: `${described.schema.length} columns` })),
    sourcesSection(described.sources ?? []),
    shardsSection(described.shards),
    dlq);
  deadLetters(dlq, name);
}

function sourcesSection(sources) {
  const section = h("section", { "aria-labelledby": "sources-title" }, h("h2", { id: "sources-title" }, "Sources"));
  if (sources.length === 0) {
    section.append(h("p", {}, "No sources: documents arrive by POST /v1/collections/{name}/docs."));
    return section;
  }
  for (const source of sources) {
    section.append(h("h3", {}, `${source.source} (${source.type}${source.topic ? `, topic ${source.topic}` : ""})`));
    if (source.error) section.append(h("p", { class: "warning" }, source.error));
    if (source.lag !== undefined) section.append(h("p", {}, "Total lag: ", h("strong", { class: "lag" }, formatCount(source.lag)), " records"));
    if (source.partitions?.length) {
      section.append(table(
        ["partition", "stored offset", "end offset", "lag", "freshness", "fresh as of", "stalled since"],
        source.partitions.map((p) => [p.partition, p.stored_offset, p.end_offset, p.lag, formatMs(p.freshness_ms), p.fresh_as_of, p.stalled_since ?? "–"]),
        { caption: "Per partition", numeric: [true, true, true, true, true] }));
    }
    const rest = Object.entries(source).filter(([k]) => !["source", "type", "topic", "error", "partitions", "lag"].includes(k));
    if (rest.length) {
      section.append(h("dl", { class: "facts" }, rest.map(([k, v]) => [
        h("dt", {}, k.replaceAll("_", " ")),
        h("dd", {}, k.endsWith("_ms") ? formatMs(v) : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? "–")),
      ])));
    }
  }
  return section;
}

function shardsSection(shards) {
  const section = h("section", { "aria-labelledby": "shards-title" }, h("h2", { id: "shards-title" }, "Shards"));
  if (!Array.isArray(shards)) {
    section.append(h("p", {}, "Not shown to this key."));
    return section;
  }
  section.append(table(
    ["shard", "documents", "sealed segments", "mutable rows", "newest _event_time"],
    shards.map((s) => [s.shard, formatCount(s.docs), s.sealed_segments, formatCount(s.mutable_rows),
      s.max_event_time_us ? new Date(s.max_event_time_us / 1000).toISOString() : "–"]),
    { numeric: [true, true, true, true] }));
  return section;
}

async function deadLetters(section, name) {
  const heading = section.firstChild;
  try {
    const counted = await query(`SELECT COUNT(*) AS letters FROM _dlq WHERE collection = ${quote(name)}`);
    const count = counted.rows[0][0];
    const parts = [heading, h("p", {}, h("strong", { class: "dlq-count" }, formatCount(count)), " records of this collection's sources could not be stored.")];
    if (count > 0) {
      const last = await query(`SELECT * FROM _dlq WHERE collection = ${quote(name)} ORDER BY _event_time DESC LIMIT 10`);
      parts.push(table(last.columns.map((c) => c.name), last.rows, { caption: "The last 10" }));
    }
    show(section, ...parts);
  } catch (error) {
    // No dead letter at all yet: `_dlq` has no `collection` column.
    if (error.code === "unknown_column" || error.code === "invalid_sql") {
      show(section, heading, h("p", {}, h("strong", { class: "dlq-count" }, "0"), " dead letters."));
    } else {
      show(section, heading, errorBox(error));
    }
  }
}
