import { env, listDurableObjectIds, reset, SELF } from "cloudflare:test";
import { importJWK, SignJWT } from "jose";
import { beforeEach, describe, expect, it } from "vitest";
import { ACCESS_AUD, TEAM_DOMAIN } from "../test/access-keys";
import type { SeenRequest, TestEnv } from "../test/doubles";
import { ADMIN_CSP, adminAsset } from "./admin";

const T = env as unknown as TestEnv;
const AUTH = { Authorization: "Bearer test-api-token" };

async function accessJwt(claims: Record<string, unknown>): Promise<string> {
  const key = await importJWK(JSON.parse(T.TEST_ACCESS_PRIVATE_JWK), "RS256");
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "RS256", kid: "test-kid-1" })
    .setIssuer(`https://${TEAM_DOMAIN}`)
    .setAudience(ACCESS_AUD)
    .setExpirationTime("5m")
    .sign(key);
}

async function lastSeen(group: string): Promise<SeenRequest> {
  const seen = await T.Agent.getByName(group).seen();
  const last = seen.at(-1);
  if (!last) throw new Error(`group ${group} saw no request`);
  return last;
}

beforeEach(async () => {
  await reset();
});

describe("/admin: the page's files behind the same auth as /api/*", () => {
  it("maps only the page's own files", () => {
    expect(adminAsset("/admin/")).toBe("/index.html");
    expect(adminAsset("/admin/admin.js")).toBe("/admin.js");
    expect(adminAsset("/admin/admin.css")).toBe("/admin.css");
    expect(adminAsset("/admin/../wrangler.toml")).toBeNull();
    expect(adminAsset("/admin/other.js")).toBeNull();
  });

  it("redirects /admin to /admin/", async () => {
    const res = await SELF.fetch("https://worker.test/admin", { redirect: "manual" });
    expect(res.status).toBe(301);
    expect(res.headers.get("Location")).toContain("/admin/");
  });

  it("refuses the page without Access when Access is configured, and wakes no container", async () => {
    const res = await SELF.fetch("https://worker.test/admin/");
    expect(res.status).toBe(401);
    expect(await res.text()).not.toContain("<html");
    expect(await listDurableObjectIds(T.Agent)).toEqual([]);
  });

  it("serves the page, its script and its style to an Access user, with a strict CSP", async () => {
    const jwt = await accessJwt({ email: "ops@example.com" });
    const page = await SELF.fetch("https://worker.test/admin/", { headers: { "Cf-Access-Jwt-Assertion": jwt } });
    expect(page.status).toBe(200);
    expect(page.headers.get("Content-Security-Policy")).toBe(ADMIN_CSP);
    expect(ADMIN_CSP).toContain("script-src 'self'");
    expect(ADMIN_CSP).not.toContain("unsafe-inline");
    expect(page.headers.get("X-Frame-Options")).toBe("DENY");
    const html = await page.text();
    expect(html).toContain('<script type="module" src="admin.js"></script>');
    const js = await SELF.fetch("https://worker.test/admin/admin.js", { headers: { "Cf-Access-Jwt-Assertion": jwt } });
    expect(js.status).toBe(200);
    expect(js.headers.get("Content-Type")).toContain("javascript");
    expect(await js.text()).toContain('const API = "/api"');
    const css = await SELF.fetch("https://worker.test/admin/admin.css", { headers: { "Cf-Access-Jwt-Assertion": jwt } });
    expect(css.headers.get("Content-Type")).toContain("text/css");
    expect((await SELF.fetch("https://worker.test/admin/nope.js", { headers: { "Cf-Access-Jwt-Assertion": jwt } })).status).toBe(404);
  });
});

describe("/api/*: state changes only from this origin, with who asked", () => {
  it("refuses a POST that a browser made from another site", async () => {
    const fromElsewhere: Record<string, string>[] = [
      { Origin: "https://evil.example" },
      { "Sec-Fetch-Site": "cross-site" },
      { Origin: "null" },
    ];
    for (const headers of fromElsewhere) {
      const res = await SELF.fetch("https://worker.test/api/snapshots", {
        method: "POST",
        headers: { ...AUTH, ...headers },
        body: JSON.stringify({ bot: "hermes" }),
      });
      expect(res.status).toBe(403);
      expect(((await res.json()) as { error: string }).error).toMatch(/refused/);
    }
    expect(await listDurableObjectIds(T.Agent)).toEqual([]);
  });

  it("lets the page's own POSTs and any GET through", async () => {
    const post = await SELF.fetch("https://worker.test/api/snapshots", {
      method: "POST",
      headers: { ...AUTH, Origin: "https://worker.test", "Sec-Fetch-Site": "same-origin" },
      body: JSON.stringify({ bot: "hermes" }),
    });
    expect(post.status).toBe(200);
    const get = await SELF.fetch("https://worker.test/api/status?group=default", {
      headers: { ...AUTH, "Sec-Fetch-Site": "cross-site" },
    });
    expect(get.status).toBe(200);
  });

  it("tells flared who asked: the Access email, or the API token", async () => {
    const jwt = await accessJwt({ email: "Ops@Example.com" });
    await SELF.fetch("https://worker.test/api/bots/hermes/restart", {
      method: "POST",
      headers: { "Cf-Access-Jwt-Assertion": jwt },
    });
    expect((await lastSeen("default")).headers["x-flare-actor"]).toBe("Ops@Example.com");
    await SELF.fetch("https://worker.test/api/reload", { method: "POST", headers: AUTH });
    expect((await lastSeen("default")).headers["x-flare-actor"]).toBe("api-token");
    expect((await lastSeen("default")).path).toBe("/reload");
  });

  it("routes the page's other calls: leases, history, progress, logs by source", async () => {
    await SELF.fetch("https://worker.test/api/leases", { headers: AUTH });
    expect(await lastSeen("research")).toMatchObject({ path: "/leases" });
    await SELF.fetch("https://worker.test/api/snapshots/history?bot=scout", { headers: AUTH });
    expect(await lastSeen("research")).toMatchObject({ path: "/snapshots/history", search: "?bot=scout" });
    await SELF.fetch("https://worker.test/api/progress?bot=hermes", { headers: AUTH });
    expect(await lastSeen("default")).toMatchObject({ path: "/progress" });
    await SELF.fetch("https://worker.test/api/logs?source=flared&group=research", { headers: AUTH });
    expect(await lastSeen("research")).toMatchObject({ path: "/logs", search: "?source=flared&group=research" });
    expect((await SELF.fetch("https://worker.test/api/logs", { headers: AUTH })).status).toBe(400);
  });
});
