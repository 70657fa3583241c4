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
    const healthy = status.leaves.filter((l) => l.healthy).length;
    const placement = (status.collections ?? []).map((c) => h("details", {},
      h("summary", {}, `${c.name}: ${c.shards.length} shards × ${c.replication} copies`),
      table(["shard", "copies (first is preferred)"], c.shards.map((copies, shard) => [shard, copies.join(", ")]))));
    show(section, heading,
      h("p", {}, `${healthy} of ${status.leaves.length} leaves healthy.`),
      table(["leaf", "health", "error"], status.leaves.map((l) => [
        l.url,
        h("span", { class: l.healthy ? "ok" : "bad" }, l.healthy ? "healthy" : "down"),
        l.error ?? "–",
      ]), { cell: (v) => (v instanceof Node ? v : String(v)) }),
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
