import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig, type Plugin } from "vitest/config";
import { ACCESS_AUD, TEAM_DOMAIN, makeKeySet } from "./test/access-keys.ts";
import { EXEC_HELPER_HOST, execHelper } from "./test/exec-helper.ts";

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
        miniflare: {
          compatibilityDate: "2025-11-01",
          compatibilityFlags: ["nodejs_compat"],
          durableObjects: {
            Agent: { className: "Agent", useSQLite: true },
            Exec: { className: "Exec", useSQLite: true },
            Registry: { className: "SandboxRegistry", useSQLite: true },
          },
          bindings: {
            BOT_GROUPS: JSON.stringify({ hermes: "default", scout: "research" }),
            SANDBOX_PROFILES: "default",
            SANDBOX_MAX_IDLE_MS: String(3 * 3600_000),
            R2_BUCKET_NAME: "test-bucket",
            CF_ACCOUNT_ID: "0123456789abcdef0123456789abcdef",
            R2_ACCESS_KEY_ID: "test-r2-key-id",
            R2_SECRET_ACCESS_KEY: "test-r2-secret",
            HERMES_FLARE_API_KEY: "sk-test-provider-key",
            API_TOKEN: "test-api-token",
            ACCESS_TEAM_DOMAIN: TEAM_DOMAIN,
            ACCESS_AUD,
            ACCESS_ALLOWED_EMAILS: "",
            TEST_ACCESS_PRIVATE_JWK: JSON.stringify(keys.privateJwk),
          },
          outboundService: outbound(keys.jwks),
        },
      };
    }),
  ],
  test: { include: ["src/**/*.test.ts", "test/**/*.test.ts"], testTimeout: 20_000 },
});
