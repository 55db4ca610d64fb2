import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [
    cloudflareTest({
      main: "./test/main.ts",
      miniflare: {
        compatibilityDate: "2025-11-01",
        compatibilityFlags: ["nodejs_compat"],
        bindings: { BOT_GROUPS: '{"hermes":"default"}', R2_BUCKET_NAME: "test-bucket" },
      },
    }),
  ],
  test: { include: ["src/**/*.test.ts", "test/**/*.test.ts"] },
});
