import { existsSync } from "node:fs";
import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig, type Plugin } from "vitest/config";
import { ACCESS_AUD, TEAM_DOMAIN, makeKeySet } from "./test/access-keys.ts";
import { EXEC_HELPER_HOST, execHelper } from "./test/exec-helper.ts";

/** The wrangler.toml the tests run on: scripts/worker-test renders it from the shipped YAML. */
const WRANGLER_TOML = process.env.FLARE_WRANGLER_TOML ?? "../wrangler.test.toml";
if (!existsSync(new URL(WRANGLER_TOML, new URL(".", import.meta.url)))) {
  throw new Error(`${WRANGLER_TOML} is missing: run ./scripts/worker-test (it renders it with \`flared render wrangler\`)`);
}

/** Outbound requests the Worker under test makes, answered on the Node side. */
function outbound(jwks: object): (request: Request) => Promise<Response> {
  return async (request) => {
    const url = new URL(request.url);
    if (url.hostname === TEAM_DOMAIN && url.pathname === "/cdn-cgi/access/certs") {
      return Response.json(jwks);
    }
    if (url.hostname === EXEC_HELPER_HOST) return execHelper(request);
    return new Response(`no test route for ${request.method} ${url}`, { status: 502 });
  };
}

/** hermes-flare.yaml as a text module, as wrangler's `Text` rule bundles it. */
const yamlAsText: Plugin = {
  name: "yaml-as-text",
  transform(code, id) {
    return id.endsWith(".yaml") ? { code: `export default ${JSON.stringify(code)};`, map: null } : undefined;
  },
};

export default defineConfig({
  plugins: [
    yamlAsText,
    cloudflareTest(async () => {
      const keys = await makeKeySet();
      return {
        main: "./test/main.ts",
        // Compatibility date and flags, Durable Object bindings and migrations,
        // containers, module rules and [vars]: all from the rendered wrangler.toml.
        wrangler: { configPath: WRANGLER_TOML },
        miniflare: {
          durableObjects: {
            // Lends its real state to tests that construct an Agent themselves.
            Host: { className: "Host", useSQLite: true },
          },
          bindings: {
            // Secrets (never in wrangler.toml).
            R2_ACCESS_KEY_ID: "test-r2-key-id",
            R2_SECRET_ACCESS_KEY: "test-r2-secret",
            HERMES_FLARE_API_KEY: "sk-test-provider-key",
            API_TOKEN: "test-api-token",
            TEST_ACCESS_PRIVATE_JWK: JSON.stringify(keys.privateJwk),
            // Two bot groups, for the fan-out tests (the shipped YAML has one),
            // and Access for the test team, whose JWKS the outbound service serves.
            BOT_GROUPS: JSON.stringify({ hermes: "default", scout: "research" }),
            ACCESS_TEAM_DOMAIN: TEAM_DOMAIN,
            ACCESS_AUD,
          },
          outboundService: outbound(keys.jwks),
        },
      };
    }),
  ],
  test: { include: ["src/**/*.test.ts", "test/**/*.test.ts"], testTimeout: 20_000 },
});
