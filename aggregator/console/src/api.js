// The console's one way to the aggregator: its public HTTP API, with the API
// key from this browser's local storage in the Authorization header.
const KEY = "altdb.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
    this.position = sqlPosition(message);
  }
}

// DataFusion's parser and planner say "Line: 3, Column: 9"; some errors
// say "line 3, column 9".
export function sqlPosition(message) {
  const found = /line:?\s*(\d+),\s*column:?\s*(\d+)/i.exec(message || "");
  return found ? { line: Number(found[1]), column: Number(found[2]) } : null;
}

let onUnauthenticated = () => {};

export function whenUnauthenticated(handler) {
  onUnauthenticated = handler;
}

export function storedKey() {
  return localStorage.getItem(KEY);
}

export function storeKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export async function api(method, path, body, { signal } = {}) {
  const headers = { Accept: "application/json" };
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", `the aggregator did not answer (${e.message}); is it running?`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const error = new ApiError(
      response.status,
      json?.error?.code ?? `http_${response.status}`,
      json?.error?.message ?? (text || response.statusText),
    );
    if (response.status === 401) onUnauthenticated(error);
    throw error;
  }
  return json;
}

// Runs SQL; `queryId` names it so that it can be cancelled.
export function query(sql, { parameters = [], queryId, signal } = {}) {
  const body = { sql };
  if (parameters.length) body.parameters = parameters;
  if (queryId) body.query_id = queryId;
  return api("POST", "/v1/query", body, { signal });
}

// SQL string literal.
export function quote(text) {
  return `'${String(text).replaceAll("'", "''")}'`;
}

// SQL identifier.
export function ident(name) {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replaceAll('"', '""')}"`;
}
