// Builds the console into dist/ (committed, so that building the aggregator
// needs no Node): one bundled, minified script and style sheet, and the page.
//   npm ci && npm run build
import { build } from "esbuild";
import { copyFileSync, mkdirSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome109", "firefox115", "safari16"],
  outdir: "dist",
  legalComments: "eof",
  logLevel: "warning",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/icon.svg", "dist/icon.svg");

let total = 0;
for (const file of ["index.html", "app.js", "app.css", "icon.svg"]) {
  const bytes = readFileSync(`dist/${file}`);
  const gzip = gzipSync(bytes, { level: 9 }).length;
  total += gzip;
  console.log(`${file.padEnd(12)} ${String(statSync(`dist/${file}`).size).padStart(8)} B, gzip ${String(gzip).padStart(7)} B`);
}
console.log(`first load (gzip): ${total} B`);
