// Bundles src/ into an output folder (default dist/, committed) reproducibly: the same sources, lock file
// and esbuild version give byte-identical files, which tests/web/test_build.py checks by rebuilding into a
// temporary folder. Asset names carry a content hash so the gateway can cache them forever; index.html,
// the manifest and the icon keep fixed names and are revalidated.
import { build } from "esbuild";
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const argIndex = process.argv.indexOf("--outdir");
const outdir = resolve(argIndex > 0 ? process.argv[argIndex + 1] : join(here, "dist"));

rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });

const result = await build({
  absWorkingDir: here,
  entryPoints: { app: "src/main.tsx" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020", "chrome90", "firefox90", "safari15"],
  entryNames: "[name]-[hash]",
  outdir,
  metafile: true,
  legalComments: "eof",
  jsx: "automatic",
  jsxImportSource: "preact",
  charset: "utf8",
  logLevel: "warning",
  // Leaflet's stylesheet names marker and layer-control images the app never shows (sites are circle
  // markers, there is no layer control): left out rather than shipped.
  loader: { ".png": "empty" },
});

const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
const js = outputs.find((n) => n.endsWith(".js"));
const css = outputs.find((n) => n.endsWith(".css"));
if (!js || !css) throw new Error(`esbuild wrote no app bundle and stylesheet: ${outputs.join(", ")}`);

const html = readFileSync(join(here, "src/index.html"), "utf8").replace("%CSS%", css).replace("%JS%", js);
writeFileSync(join(outdir, "index.html"), html);
cpSync(join(here, "public"), outdir, { recursive: true });
// The fleet map's offline base layer: Natural Earth 1:110m country outlines (public domain) as TopoJSON
// from the pinned world-atlas package, fetched by the map when it first opens (not in the bundle).
cpSync(join(here, "node_modules/world-atlas/countries-110m.json"), join(outdir, "countries-110m.json"));
console.log(`web: ${outdir}: ${[...outputs, "index.html", "countries-110m.json"].sort().join(", ")}`);
