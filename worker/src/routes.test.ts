import { env, listDurableObjectIds, reset, SELF } from "cloudflare:test";
import { importJWK, SignJWT } from "jose";
import { beforeEach, describe, expect, it } from "vitest";
import { ACCESS_AUD, TEAM_DOMAIN } from "../test/access-keys";
import type { SeenRequest, TestEnv } from "../test/doubles";
import {
  agentEnvVars,
  CONFIG_YAML,
  EGRESS_PLACEHOLDER_PREFIX,
  injectEgressSecrets,
  referencedVars,
  toControlRequest,
} from "./agent";
import type { Env } from "./env";

const T = env as unknown as TestEnv;
const E = env as unknown as Env;
const AUTH = { Authorization: "Bearer test-api-token" };

function api(path: string, init: RequestInit = {}): Promise<Response> {
  return SELF.fetch(`https://worker.test${path}`, { ...init, headers: { ...AUTH, ...(init.headers ?? {}) } });
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

describe("GET /health", () => {
  it("answers without auth and wakes no container", async () => {
    const res = await SELF.fetch("https://worker.test/health");
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
    expect(await listDurableObjectIds(T.Agent)).toEqual([]);
  });
});

describe("/api auth at the edge of the Worker", () => {
  it("refuses a missing token without touching a container", async () => {
    const res = await SELF.fetch("https://worker.test/api/status");
    expect(res.status).toBe(401);
    expect(res.headers.get("WWW-Authenticate")).toContain("Bearer");
    expect(await listDurableObjectIds(T.Agent)).toEqual([]);
  });
  it("refuses a query token and says to use the header", async () => {
    const res = await SELF.fetch("https://worker.test/api/status?token=test-api-token");
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toContain("Authorization: Bearer <token>");
  });
  it("hides unknown /api routes behind auth", async () => {
    expect((await SELF.fetch("https://worker.test/api/nope")).status).toBe(401);
    expect((await api("/api/nope")).status).toBe(404);
  });
  it("admits an Access JWT and never forwards it to flared", async () => {
    const key = await importJWK(JSON.parse(T.TEST_ACCESS_PRIVATE_JWK), "RS256");
    const jwt = await new SignJWT({ email: "ops@example.com" })
      .setProtectedHeader({ alg: "RS256", kid: "test-kid-1" })
      .setIssuer(`https://${TEAM_DOMAIN}`)
      .setAudience(ACCESS_AUD)
      .setExpirationTime("5m")
      .sign(key);
    const res = await SELF.fetch("https://worker.test/api/status?group=default", {
      headers: { "Cf-Access-Jwt-Assertion": jwt, Cookie: "CF_Authorization=x" },
    });
    expect(res.status).toBe(200);
    const seen = await lastSeen("default");
    expect(seen.headers["cf-access-jwt-assertion"]).toBeUndefined();
    expect(seen.headers.cookie).toBeUndefined();
  });
});

describe("proxied routes", () => {
  it("GET /api/status fans out to every group with each group's internal token", async () => {
    const res = await api("/api/status");
    expect(res.status).toBe(200);
    const body = (await res.json()) as { groups: Record<string, { flared: SeenRequest }> };
    expect(Object.keys(body.groups).sort()).toEqual(["default", "research"]);
    for (const g of ["default", "research"]) {
      const seen = body.groups[g]!.flared;
      expect(seen).toMatchObject({ method: "GET", path: "/status" });
      const token = await T.Agent.getByName(g).controlToken();
      expect(seen.authorization).toBe(`Bearer ${token}`);
      expect(seen.authorization).not.toContain("test-api-token");
    }
    const [a, b] = await Promise.all(["default", "research"].map((g) => T.Agent.getByName(g).controlToken()));
    expect(a).not.toBe(b);
  });

  it("GET /api/status flags a group whose flared is not the version this Worker was rendered with", async () => {
    expect(E.FLARED_VERSION).toMatch(/^\d+\.\d+/);
    await T.Agent.getByName("research").setFlaredVersion("0.0.1-old");
    await T.Agent.getByName("default").setFlaredVersion(E.FLARED_VERSION!);
    const body = (await (await api("/api/status")).json()) as { groups: Record<string, { version_mismatch: unknown }> };
    expect(body.groups.default!.version_mismatch).toBeNull();
    expect(body.groups.research!.version_mismatch).toEqual({ worker_expects: E.FLARED_VERSION, container_runs: "0.0.1-old" });
    const one = (await (await api("/api/status?group=research")).json()) as { version_mismatch: unknown };
    expect(one.version_mismatch).toEqual({ worker_expects: E.FLARED_VERSION, container_runs: "0.0.1-old" });
  });

  it("?group= picks one group and relays its answer as is", async () => {
    const res = await api("/api/config?group=research");
    expect(res.status).toBe(200);
    expect(((await res.json()) as { flared: SeenRequest }).flared).toMatchObject({ method: "GET", path: "/config", search: "?group=research" });
    expect((await api("/api/config?group=nope")).status).toBe(404);
  });

  it("GET /api/snapshots?bot= goes to the bot's group", async () => {
    await api("/api/snapshots?bot=scout");
    expect(await lastSeen("research")).toMatchObject({ method: "GET", path: "/snapshots", search: "?bot=scout" });
    expect(await T.Agent.getByName("default").seen()).toEqual([]);
  });

  it("POST /api/snapshots with a bot, and with none (every group)", async () => {
    await api("/api/snapshots", { method: "POST", body: JSON.stringify({ bot: "hermes" }) });
    expect(await lastSeen("default")).toMatchObject({ method: "POST", path: "/snapshots", body: '{"bot":"hermes"}' });
    const res = await api("/api/snapshots", { method: "POST", body: "" });
    expect(res.status).toBe(200);
    for (const g of ["default", "research"]) {
      expect(await lastSeen(g)).toMatchObject({ method: "POST", path: "/snapshots", body: '{"bot":null}' });
    }
  });

  it("POST /api/restore passes bot and id to the bot's group", async () => {
    await api("/api/restore", { method: "POST", body: JSON.stringify({ bot: "scout", id: "20260101T000000Z-abc" }) });
    const seen = await lastSeen("research");
    expect(seen).toMatchObject({ method: "POST", path: "/restore" });
    expect(JSON.parse(seen.body)).toEqual({ bot: "scout", id: "20260101T000000Z-abc" });
    expect((await api("/api/restore", { method: "POST", body: "{}" })).status).toBe(400);
    expect((await api("/api/restore", { method: "POST", body: "[1]" })).status).toBe(400);
  });

  it("GET /api/logs keeps the query", async () => {
    await api("/api/logs?bot=hermes&lines=50");
    expect(await lastSeen("default")).toMatchObject({ method: "GET", path: "/logs", search: "?bot=hermes&lines=50" });
    expect((await api("/api/logs")).status).toBe(400);
  });

  it("POST /api/bots/:name/restart goes to that bot's group; unknown bots are 404 without a container", async () => {
    const res = await api("/api/bots/hermes/restart", { method: "POST" });
    expect(res.status).toBe(200);
    expect(await lastSeen("default")).toMatchObject({ method: "POST", path: "/bots/hermes/restart" });
    const nobody = await api("/api/bots/nobody/restart", { method: "POST" });
    expect(nobody.status).toBe(404);
    expect(await T.Agent.getByName("research").seen()).toEqual([]);
  });

  it("POST /api/containers/:group/restart stops that group's container; the next request starts a new one", async () => {
    await api("/api/status?group=research");
    const res = await api("/api/containers/research/restart", { method: "POST" });
    expect(await res.json()).toEqual({ group: "research", restarting: true });
    expect((await T.Agent.getByName("research").probe()).starts).toBe(1);
    await api("/api/status?group=research");
    expect((await T.Agent.getByName("research").probe()).starts).toBe(2);
    expect((await api("/api/containers/nope/restart", { method: "POST" })).status).toBe(404);
    expect((await SELF.fetch("https://worker.test/api/containers/research/restart", { method: "POST" })).status).toBe(401);
  });

  it("an Agent that cannot start answers with the container's own error text, and other groups still answer", async () => {
    const fault = "image pull failed: manifest unknown (test fault)";
    await T.Agent.getByName("research").setStartFault(fault);
    const res = await api("/api/status");
    expect(res.status).toBe(502);
    const body = (await res.json()) as { groups: Record<string, { error?: string; flared?: unknown }> };
    expect(body.groups.research!.error).toContain(fault);
    expect(body.groups.research!.error).not.toContain("non-JSON");
    expect(body.groups.default!.flared).toBeDefined();
    const logs = await api("/api/logs?bot=scout");
    expect(logs.status).toBe(503);
    expect(logs.headers.get("Content-Type")).toContain("application/json");
    expect(((await logs.json()) as { error: string }).error).toContain(fault);
  });
});

describe("errors keep their text", () => {
  it("a non-JSON answer from one group is reported with its text", async () => {
    await T.Agent.getByName("research").setPlainError("Traceback: flared exploded (test fault)");
    const res = await api("/api/status");
    expect(res.status).toBe(502);
    const body = (await res.json()) as { groups: Record<string, { error?: string }> };
    expect(body.groups.research!.error).toContain("Traceback: flared exploded (test fault)");
    expect(body.groups.research!.error).not.toContain("non-JSON");
  });
});

describe("the Worker's configuration", () => {
  it("is the rendered wrangler.toml's: vars and the R2 binding of the shipped YAML", async () => {
    expect(E).toMatchObject({
      R2_BUCKET_NAME: "hermes-flare-data",
      CF_ACCOUNT_ID: "0123456789abcdef0123456789abcdef",
      SANDBOX_PROFILES: "default",
      SANDBOX_MAX_IDLE_MS: "7800000",
      EGRESS_SECRETS: "",
      R2_ENDPOINT: "",
      ACCESS_ALLOWED_EMAILS: "",
      ACCESS_ALLOWED_SERVICE_TOKENS: "",
    });
    expect(E.SNAPSHOTS).toBeDefined();
    await E.SNAPSHOTS!.put("probe", "x");
    expect(await (await E.SNAPSHOTS!.get("probe"))!.text()).toBe("x");
  });
});

describe("the Agent container's environment", () => {
  it("carries the YAML, group, token, Cloudflare overrides and the YAML's secrets, and not the API token", async () => {
    await api("/api/status?group=default");
    const st = await T.Agent.getByName("default").probe();
    const vars = st.envVars!;
    expect(atob(vars.FLARE_CONFIG_B64!)).toBe(CONFIG_YAML);
    expect(vars).toMatchObject({
      FLARE_GROUP: "default",
      FLARE_CONTROL_TOKEN: await T.Agent.getByName("default").controlToken(),
      FLARE_CONTROL__HOST: "0.0.0.0",
      FLARE_CONTROL__PORT: "7979",
      FLARE_STATE_DIR: "/var/lib/hermes-flare",
      FLARE_STORE__URL: "s3://hermes-flare-data/snapshots",
      FLARE_STORE__ENDPOINT: "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",
      FLARE_STORE__ACCESS_KEY_ID: "test-r2-key-id",
      FLARE_STORE__SECRET_ACCESS_KEY: "test-r2-secret",
      FLARE_SANDBOXES__DEFAULT__PROVIDER: "cloudflare",
      FLARE_SANDBOXES__DEFAULT__ENDPOINT: "http://sandboxes.flare.internal",
      HERMES_FLARE_API_KEY: "sk-test-provider-key",
    });
    expect(Object.values(vars)).not.toContain("test-api-token");
    expect(st.starts).toBe(1);
  });

  it("points the store at R2_ENDPOINT when set (a local S3 server), at R2 when it is empty", () => {
    const local = agentEnvVars({ ...E, R2_ENDPOINT: "http://10.88.0.1:9000" } as Env, "default", "t", CONFIG_YAML);
    expect(local.FLARE_STORE__ENDPOINT).toBe("http://10.88.0.1:9000");
    const deployed = agentEnvVars({ ...E, R2_ENDPOINT: "" } as Env, "default", "t", CONFIG_YAML);
    expect(deployed.FLARE_STORE__ENDPOINT).toBe("https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com");
  });

  it("lists the variables the YAML interpolates", () => {
    expect(referencedVars("a: ${A}\nb: ${B_2:-x}\nc: $C\nd: ${A}")).toEqual(["A", "B_2"]);
    expect(referencedVars(CONFIG_YAML)).toContain("HERMES_FLARE_API_KEY");
  });

  it("injects a secret at egress instead of giving it to the container", () => {
    const e = { ...E, EGRESS_SECRETS: "HERMES_FLARE_API_KEY" } as Env;
    const vars = agentEnvVars(e, "default", "t", "model: {api_key: ${HERMES_FLARE_API_KEY}}");
    expect(vars.HERMES_FLARE_API_KEY).toBe(`${EGRESS_PLACEHOLDER_PREFIX}HERMES_FLARE_API_KEY`);
    expect(Object.values(vars)).not.toContain("sk-test-provider-key");
    const out = injectEgressSecrets(
      new Request("https://api.anthropic.com/v1/messages", { headers: { "x-api-key": vars.HERMES_FLARE_API_KEY!, "x-other": "keep" } }),
      e,
    );
    expect(out.headers.get("x-api-key")).toBe("sk-test-provider-key");
    expect(out.headers.get("x-other")).toBe("keep");
    const bearer = injectEgressSecrets(new Request("https://api.openai.com/v1", { headers: { Authorization: `Bearer ${vars.HERMES_FLARE_API_KEY}` } }), e);
    expect(bearer.headers.get("Authorization")).toBe("Bearer sk-test-provider-key");
  });

  it("strips the caller's credentials from control requests", () => {
    const r = toControlRequest(
      new Request("http://agent/status?x=1", { headers: { Authorization: "Bearer caller", "X-Flare-Group": "g", "X-Keep": "1" } }),
      "internal",
    );
    expect(r.url).toBe("http://127.0.0.1:7979/status?x=1");
    expect(r.headers.get("Authorization")).toBe("Bearer internal");
    expect(r.headers.get("X-Flare-Group")).toBeNull();
    expect(r.headers.get("X-Keep")).toBe("1");
  });
});
