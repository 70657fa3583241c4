// Collections and their columns, for completion in the editor.
import { api } from "./api.js";

export async function loadSchema() {
  const { collections } = await api("GET", "/v1/collections");
  const described = await Promise.all(collections.map((spec) =>
    api("GET", `/v1/collections/${encodeURIComponent(spec.name)}`).catch(() => null)));
  const schema = {};
  for (const [i, spec] of collections.entries()) {
    schema[spec.name] = (described[i]?.schema ?? []).map((c) => ({ label: c.name, detail: c.type, type: "property" }));
  }
  return schema;
}
