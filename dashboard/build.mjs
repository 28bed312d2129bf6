// Builds the dashboard into ../server/assets/dashboard (or the folder given
// as the first argument): one minified bundle, the page and its styles.
// Deterministic for the versions pinned in package-lock.json, so CI can
// rebuild it and compare with what is committed.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, "..", "server", "assets", "dashboard");
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, "src", "main.ts")],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
});
for (const file of ["index.html", "app.css"]) copyFileSync(join(here, "static", file), join(out, file));
