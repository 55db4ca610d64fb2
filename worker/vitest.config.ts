import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";
import { ACCESS_AUD, TEAM_DOMAIN, makeKeySet } from "./test/access-keys.ts";

/** Outbound requests the Worker under test makes, answered on the Node side. */
function outbound(jwks: object): (request: Request) => Promise<Response> {
  return async (request) => {
    const url = new URL(request.url);
    if (url.hostname === TEAM_DOMAIN && url.pathname === "/cdn-cgi/access/certs") {
      return Response.json(jwks);
    }
    return new Response(`no test route for ${request.method} ${url}`, { status: 502 });
  };
}

export default defineConfig({
  plugins: [
    cloudflareTest(async () => {
      const keys = await makeKeySet();
      return {
        main: "./test/main.ts",
        miniflare: {
          compatibilityDate: "2025-11-01",
          compatibilityFlags: ["nodejs_compat"],
          bindings: {
            BOT_GROUPS: '{"hermes":"default"}',
            R2_BUCKET_NAME: "test-bucket",
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
  test: { include: ["src/**/*.test.ts", "test/**/*.test.ts"] },
});
