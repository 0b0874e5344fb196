// Bundles src/main.ts into dist/app.js for the browser.
//
// The generated contracts live outside this package (../gen/ts) and import
// @bufbuild/protobuf; nodePaths makes those imports resolve to this
// package's node_modules, so the bundle holds one copy of the runtime.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

await build({
  entryPoints: [here("./src/main.ts")],
  outfile: here("./dist/app.js"),
  bundle: true,
  format: "iife",
  target: "es2022",
  platform: "browser",
  nodePaths: [here("./node_modules")],
  sourcemap: true,
  logLevel: "warning",
});
