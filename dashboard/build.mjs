// Builds the dashboard's script into ../server/assets/dashboard/app.js (or
// into the folder given as the first argument): one minified bundle.
// Deterministic for the versions pinned in package-lock.json, so CI can
// rebuild it and compare with what is committed. The page and its styles
// (static/) need no build: the server embeds them from here as they are.
import { build } from "esbuild";
import { mkdirSync } from "node:fs";
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
