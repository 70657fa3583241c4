// Builds the console into dist/ (committed, so that building the aggregator
// needs no Node): one bundled, minified script and style sheet, the page and
// its icon. `--outdir DIR` builds elsewhere (scripts/console.sh --check
// compares such a build with dist/).
//   npm ci && npm run build
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";

const at = process.argv.indexOf("--outdir");
const outdir = at > 0 ? process.argv[at + 1] : "dist";
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome109", "firefox115", "safari16"],
  outdir,
  legalComments: "eof",
  logLevel: "warning",
});
copyFileSync("src/index.html", `${outdir}/index.html`);
copyFileSync("src/icon.svg", `${outdir}/icon.svg`);

let total = 0;
for (const file of ["index.html", "app.js", "app.css", "icon.svg"]) {
  const bytes = readFileSync(`${outdir}/${file}`);
  const gzip = gzipSync(bytes, { level: 9 }).length;
  total += gzip;
  console.log(`${file.padEnd(12)} ${String(statSync(`${outdir}/${file}`).size).padStart(8)} B, gzip ${String(gzip).padStart(7)} B`);
}
console.log(`first load (gzip): ${total} B`);
