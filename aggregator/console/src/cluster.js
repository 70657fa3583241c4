// The cluster: leaves and their health, where each shard's copies live, and
// the statements running now (with a cancel button).
import { api } from "./api.js";
import { errorBox, formatMs, h, show, table } from "./dom.js";

export async function clusterPage(main) {
  const leaves = h("section", { "aria-labelledby": "leaves-title" });
  const running = h("section", { "aria-labelledby": "running-title" });
  show(main, h("h1", {}, "Cluster"), leaves, running);
  await Promise.all([showLeaves(leaves), showRunning(running)]);
  return setInterval(() => {
    showLeaves(leaves);
    showRunning(running);
  }, 5000);
}

async function showLeaves(section) {
  const heading = h("h2", { id: "leaves-title" }, "Leaves");
  try {
    const status = await api("GET", "/v1/cluster");
    const collections = status.collections ?? [];
    const healthy = status.leaves.filter((l) => l.healthy).length;
    // How many shard copies each leaf holds, over every collection.
    const held = new Map(status.leaves.map((l) => [l.url, 0]));
    for (const c of collections) for (const copies of c.shards) for (const url of copies) held.set(url, (held.get(url) ?? 0) + 1);
    const health = (l) => (!l.healthy ? ["bad", "down"] : l.suspect ? ["bad", "slow (read last)"] : ["ok", "healthy"]);
    const placement = collections.map((c) => h("details", { open: c.shards.length <= 16 },
      h("summary", {}, `${c.name}: ${c.shards.length} shard${c.shards.length === 1 ? "" : "s"} × ${c.replication} cop${c.replication === 1 ? "y" : "ies"}`),
      table(["shard", "copies (first is preferred)"], c.shards.map((copies, shard) => [shard, copies.join(", ")]), { numeric: [true] })));
    show(section, heading,
      h("p", {}, `${healthy} of ${status.leaves.length} leaves healthy.`),
      table(["leaf", "health", "shard copies", "error"], status.leaves.map((l) => [
        l.url,
        h("span", { class: health(l)[0] }, health(l)[1]),
        held.get(l.url),
        l.error ?? "–",
      ]), { cell: (v) => (v instanceof Node ? v : String(v)), numeric: [false, false, true] }),
      placement.length ? h("h2", {}, "Shard copies") : null,
      placement);
  } catch (error) {
    show(section, heading, errorBox(error));
  }
}

async function showRunning(section) {
  const heading = h("h2", { id: "running-title" }, "Running statements");
  try {
    const { queries } = await api("GET", "/v1/queries");
    show(section, heading, queries.length === 0
      ? h("p", {}, "None right now.")
      : table(["id", "key", "elapsed", "sql", ""], queries.map((q) => [
        q.id, q.key, formatMs(q.elapsed_ms), h("code", {}, q.sql),
        h("button", {
          type: "button",
          "aria-label": `Cancel ${q.id}`,
          onclick: async (e) => {
            e.target.disabled = true;
            try {
              await api("DELETE", `/v1/queries/${encodeURIComponent(q.id)}`);
            } catch (error) {
              section.append(errorBox(error));
            }
            showRunning(section);
          },
        }, "Cancel"),
      ]), { cell: (v) => (v instanceof Node ? v : String(v)) }));
  } catch (error) {
    show(section, heading, errorBox(error));
  }
}
