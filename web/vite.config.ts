import { defineConfig } from "vitest/config";

export default defineConfig({
  // Relative asset URLs: the same build works when the gateway serves it at /
  // and when a second static server serves it for the cross-origin test.
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: true },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
