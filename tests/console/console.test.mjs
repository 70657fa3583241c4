// Browser tests of the web console: Debian's Chromium, headless, driven by
// playwright-core, against a real cluster that tests/tests/console.rs starts
// and fills. Each page's screenshot goes to $ALTDB_SCREENSHOTS.
//
//   ALTDB_URL=http://127.0.0.1:PORT ALTDB_KEY=<admin key> node --test console.test.mjs
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const base = process.env.ALTDB_URL;
const key = process.env.ALTDB_KEY;
const kafkaCollection = process.env.ALTDB_KAFKA_COLLECTION ?? "clicks";
const eventsCollection = process.env.ALTDB_EVENTS_COLLECTION ?? "events";
const shots = process.env.ALTDB_SCREENSHOTS ?? "screenshots";
const budget = 300 * 1024;
assert.ok(base && key, "set ALTDB_URL and ALTDB_KEY");
mkdirSync(shots, { recursive: true });

let browser;
let page;
// Everything the page logged as an error (a CSP violation, an exception).
const pageErrors = [];

async function http(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text.startsWith("{") || text.startsWith("[") ? JSON.parse(text) : text };
}

async function screenshot(name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

// Types SQL into the editor (replacing what it holds) and runs it.
async function runSql(sql) {
  const editor = page.locator(".cm-content");
  await editor.fill(sql);
  await page.getByRole("button", { name: "Run", exact: true }).click();
}

async function metric(line) {
  const { body } = await http("GET", "/metrics");
  const found = body.split("\n").find((l) => l.startsWith(line + " "));
  return found ? Number(found.split(" ").pop()) : 0;
}

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") pageErrors.push(message.text());
  });
  page.on("pageerror", (error) => pageErrors.push(String(error)));
});

after(async () => {
  await browser?.close();
});

test("first load stays within its budget, compressed, under a content security policy", async () => {
  const sizes = [];
  page.on("response", async (response) => {
    if (!response.url().startsWith(base)) return;
    const path = new URL(response.url()).pathname;
    if (path === "/" || path.startsWith("/console/")) {
      const { responseBodySize, responseHeadersSize } = await response.request().sizes();
      sizes.push({ path, bytes: responseBodySize + responseHeadersSize, encoding: response.headers()["content-encoding"] });
    }
  });
  const response = await page.goto(base + "/");
  assert.match(response.headers()["content-security-policy"], /script-src 'self'/);
  await page.waitForLoadState("networkidle");
  page.removeAllListeners("response");
  const total = sizes.reduce((sum, s) => sum + s.bytes, 0);
  const loaded = await page.evaluate(() => performance.getEntriesByType("navigation")[0].loadEventEnd);
  console.log(`first load: ${sizes.map((s) => `${s.path} ${s.bytes} B (${s.encoding ?? "identity"})`).join(", ")}; total ${total} B; load event after ${loaded.toFixed(0)} ms`);
  for (const path of ["/", "/console/app.js", "/console/app.css"]) {
    assert.ok(sizes.some((s) => s.path === path), `${path} not loaded: ${JSON.stringify(sizes)}`);
  }
  for (const s of sizes) assert.equal(s.encoding, "gzip", s.path);
  assert.ok(total <= budget, `first load is ${total} B, over the ${budget} B budget`);
});

test("an invalid key shows the login prompt, a valid one lets the console in", async () => {
  await page.evaluate(() => localStorage.setItem("altdb.apiKey", "not-a-key"));
  await page.goto(base + "/#/collections");
  const dialog = page.getByRole("dialog", { name: "API key" });
  await dialog.waitFor({ state: "visible" });
  assert.match(await page.locator("#login-reason").textContent(), /not valid/);
  await screenshot("login");
  await page.getByLabel(/Paste an API key/).fill(key);
  await page.getByRole("button", { name: "Use this key" }).click();
  await page.getByRole("heading", { name: "Collections" }).waitFor();
  await page.getByRole("link", { name: kafkaCollection }).waitFor();
  // The key is in the browser's storage, never in the URL.
  assert.equal(await page.evaluate(() => localStorage.getItem("altdb.apiKey")), key);
  assert.ok(!page.url().includes(key));
  await screenshot("collections");
});

test("a query's table holds the HTTP answer's cells", async () => {
  const sql = `SELECT kind, COUNT(*) AS n, MIN(amount) AS least FROM ${eventsCollection} GROUP BY kind ORDER BY kind`;
  const expected = await http("POST", "/v1/query", { sql });
  assert.equal(expected.status, 200, JSON.stringify(expected.body));
  await page.goto(base + "/#/query");
  await runSql(sql);
  await page.locator(".results table").waitFor();
  const headers = await page.locator(".results thead th").allTextContents();
  assert.deepEqual(headers.map((h) => h.split(" ")[0]), expected.body.columns.map((c) => c.name));
  const cells = await page.locator(".results tbody tr").evaluateAll((rows) =>
    rows.map((row) => Array.from(row.cells, (cell) => cell.textContent)));
  assert.deepEqual(cells, expected.body.rows.map((row) => row.map((v) => (v === null ? "null" : String(v)))));
  assert.match(await page.locator(".stats").textContent(), new RegExp(`${expected.body.rows.length} rows`));
  await screenshot("query-table");
});

test("the editor completes collection and column names and runs from the keyboard", async () => {
  const editor = page.locator(".cm-content");
  await editor.fill("SELECT * FROM ev");
  await editor.press("End");
  await editor.press("Control+Space");
  const options = page.locator(".cm-tooltip-autocomplete li");
  await options.filter({ hasText: eventsCollection }).first().waitFor();
  await editor.press("Escape");
  await editor.fill(`SELECT ${eventsCollection}.am`);
  await editor.press("End");
  await editor.press("Control+Space");
  await options.filter({ hasText: "amount" }).first().waitFor();
  await editor.press("Escape");
  // Ctrl+Enter runs; Tab leaves the editor (focus is never trapped).
  await editor.fill(`SELECT COUNT(*) AS n FROM ${eventsCollection}`);
  await editor.press("Control+Enter");
  await page.locator(".results tbody td", { hasText: /^\d+$/ }).first().waitFor();
  await editor.focus();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.classList.contains("cm-content")), false);
});

test("a time series renders a chart with one point per row, as lines or bars", async () => {
  const sql = `SELECT date_trunc('minute', _event_time) AS minute, COUNT(*) AS n FROM ${eventsCollection} GROUP BY 1 ORDER BY 1`;
  const expected = await http("POST", "/v1/query", { sql });
  assert.equal(expected.status, 200, JSON.stringify(expected.body));
  assert.ok(expected.body.rows.length > 5, "the data spans several minutes");
  await runSql(sql);
  const figure = page.locator("figure.chart");
  await figure.waitFor();
  assert.equal(await figure.getAttribute("data-points"), String(expected.body.rows.length));
  assert.equal(await figure.getAttribute("data-kind"), "line");
  // The canvas holds drawn pixels, not a blank area.
  const drawn = await figure.locator("canvas").evaluate((canvas) => {
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
    return { width: canvas.width, painted };
  });
  assert.ok(drawn.width > 300 && drawn.painted > 500, JSON.stringify(drawn));
  await screenshot("query-chart-line");
  await page.getByRole("radio", { name: "Bar" }).check();
  await page.locator('figure.chart[data-kind="bar"]').waitFor();
  assert.equal(await page.locator("figure.chart").getAttribute("data-points"), String(expected.body.rows.length));
  await screenshot("query-chart-bar");
});

test("a bad query shows the error's code and message, and where it points", async () => {
  const sql = `SELECT no_such_column FROM ${eventsCollection}`;
  const expected = await http("POST", "/v1/query", { sql });
  assert.equal(expected.status, 400);
  await runSql(sql);
  const error = page.locator(".output .error");
  await error.waitFor();
  assert.equal(await error.locator(".code").textContent(), expected.body.error.code);
  assert.ok((await error.textContent()).includes(expected.body.error.message));
  await runSql(`SELECT kind\nFROM ${eventsCollection}\nWHERE amount > > 3`);
  await page.locator(".output .error").waitFor();
  assert.match(await page.locator(".output .error").textContent(), /line 3, column \d+/);
  assert.equal(await page.locator(".cm-error-line").count(), 1);
  await screenshot("query-error");
});

test("a long query shows its elapsed time and cancel stops it on the aggregator", async () => {
  const cancelledBefore = await metric('altdb_aggregator_queries_total{door="http",outcome="cancelled"}');
  // Three-way cross join of the events: billions of combinations.
  await runSql(
    `SELECT COUNT(*) FROM ${eventsCollection} a, ${eventsCollection} b, ${eventsCollection} c WHERE a.amount + b.amount + c.amount = -1`,
  );
  await page.locator(".running", { hasText: /Running… \d/ }).waitFor();
  // The aggregator lists it as running.
  let listed = [];
  for (let i = 0; i < 50 && listed.length === 0; i++) {
    listed = (await http("GET", "/v1/queries")).body.queries.filter((q) => q.sql.includes("a.amount + b.amount"));
    if (listed.length === 0) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(listed.length, 1);
  assert.match(listed[0].id, /^console-/);
  await screenshot("query-running");
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.getByText(/Cancelled after/).waitFor();
  const cancelledAfter = await metric('altdb_aggregator_queries_total{door="http",outcome="cancelled"}');
  assert.equal(cancelledAfter, cancelledBefore + 1);
  const running = (await http("GET", "/v1/queries")).body.queries.filter((q) => q.id === listed[0].id);
  assert.deepEqual(running, []);
  await screenshot("query-cancelled");
});

test("the collection page shows the schema, the Kafka source's lag per partition and dead letters", async () => {
  const described = await http("GET", `/v1/collections/${kafkaCollection}`);
  assert.equal(described.status, 200);
  await page.goto(base + `/#/collections/${kafkaCollection}`);
  await page.getByRole("heading", { name: "Schema" }).waitFor();
  const schema = await page.locator("section", { has: page.getByRole("heading", { name: "Schema" }) })
    .locator("tbody tr").evaluateAll((rows) => rows.map((r) => [r.cells[0].textContent, r.cells[1].textContent]));
  assert.deepEqual(schema, described.body.schema.map((c) => [c.name, c.type]));
  const source = described.body.sources[0];
  assert.equal(await page.locator(".lag").first().textContent(), String(source.lag));
  const partitions = page.locator("table", { has: page.locator("caption", { hasText: "Per partition" }) }).locator("tbody tr");
  assert.equal(await partitions.count(), source.partitions.length);
  await page.locator(".dlq-count").waitFor();
  const letters = await http("POST", "/v1/query", { sql: `SELECT COUNT(*) FROM _dlq WHERE collection = '${kafkaCollection}'` });
  assert.equal(await page.locator(".dlq-count").textContent(), String(letters.body.rows[0][0]));
  assert.ok(letters.body.rows[0][0] > 0, "the test produced bad records");
  await screenshot("collection");
});

test("a query saved as a lambda is listed and runs with its parameters", async () => {
  const name = `console_lambda_${Date.now()}`;
  await page.goto(base + "/#/query");
  await runSql(`SELECT COUNT(*) AS n FROM ${eventsCollection} WHERE kind = :kind`);
  await page.getByLabel(":kind", { exact: true }).fill("view");
  await page.getByRole("button", { name: "Save as lambda" }).click();
  await page.getByLabel("Name").fill(name);
  await page.getByRole("button", { name: "Save", exact: true }).click();
  await page.getByRole("link", { name: `Saved ${name} version 1` }).click();
  await page.getByRole("heading", { name }).waitFor();
  await page.getByRole("button", { name: "Run", exact: true }).click();
  await page.locator(".results table").waitFor();
  const expected = await http("POST", `/v1/lambdas/${name}/versions/1`, {});
  assert.equal(expected.status, 200, JSON.stringify(expected.body));
  assert.equal(await page.locator(".results tbody td").first().textContent(), String(expected.body.rows[0][0]));
  await screenshot("lambda");
  await page.goto(base + "/#/lambdas");
  await page.getByRole("link", { name }).waitFor();
  await screenshot("lambdas");
});

test("the cluster page shows every leaf's health and where shard copies live", async () => {
  const status = await http("GET", "/v1/cluster");
  await page.goto(base + "/#/cluster");
  await page.getByText(`${status.body.leaves.length} of ${status.body.leaves.length} leaves healthy.`).waitFor();
  const shown = await page.locator("table", { has: page.getByRole("columnheader", { name: "health" }) })
    .locator("tbody tr").evaluateAll((rows) => rows.map((r) => Array.from(r.cells, (c) => c.textContent).slice(0, 3)));
  assert.deepEqual(shown, status.body.leaves.map((leaf) => {
    const copies = status.body.collections.flatMap((c) => c.shards.flat()).filter((url) => url === leaf.url).length;
    return [leaf.url, "healthy", String(copies)];
  }));
  await page.getByText(new RegExp(`^${eventsCollection}: \\d+ shards`)).waitFor();
  await screenshot("cluster");
});

test("dark or light follows the operating system", async () => {
  const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(base + "/#/query");
  await page.locator(".cm-content").waitFor();
  const dark = await background();
  await runSql(`SELECT date_trunc('minute', _event_time) AS minute, kind, COUNT(*) AS n FROM ${eventsCollection} GROUP BY 1, 2 ORDER BY 1`);
  // The chart, or whatever the page shows instead (an error says which).
  await page.locator(".output figure.chart, .output .error").first().waitFor();
  assert.equal(await page.locator(".output .error").count(), 0, await page.locator(".output").textContent());
  // One measure split by one text column: a series per kind.
  assert.equal(await page.locator("figure.chart").getAttribute("data-series"), "3");
  await screenshot("query-dark");
  await page.emulateMedia({ colorScheme: "light" });
  const light = await background();
  assert.notEqual(dark, light);
  assert.equal(light, "rgb(255, 255, 255)");
});

test("the page logged no error (no CSP violation, no exception)", () => {
  // 401s and the 400/499 answers the tests asked for are logged by the browser
  // as failed resources; anything else is a fault of the console.
  const faults = pageErrors.filter((e) => !/Failed to load resource: the server responded with a status of (400|401|499)/.test(e));
  assert.deepEqual(faults, []);
});
