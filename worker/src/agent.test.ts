/**
 * The real Agent class in workerd, on the compatibility date and flags of the
 * rendered wrangler.toml, with only workerd's container runtime replaced
 * (test/container-double.ts): @cloudflare/containers starts the "container",
 * waits for its port and registers outbound interception through
 * `ctx.exports.ContainerProxy`, exactly as on Cloudflare.
 */
import { env, reset, runInDurableObject, SELF } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import { ContainerDouble, withContainer } from "../test/container-double";
import type { TestEnv } from "../test/doubles";
import { Agent, EGRESS_HOSTS } from "./agent";
import { SANDBOX_HOST } from "./agent-env";
import type { Env } from "./env";

const T = env as unknown as TestEnv & { Host: DurableObjectNamespace };
const E = env as unknown as Env;
const AUTH = { Authorization: "Bearer test-api-token" };

function api(path: string, init: RequestInit = {}): Promise<Response> {
  return SELF.fetch(`https://worker.test${path}`, { ...init, headers: { ...AUTH, ...(init.headers ?? {}) } });
}

async function startedToken(group: string): Promise<string> {
  const st = await T.Agent.getByName(group).probe();
  const token = st.envVars?.FLARE_CONTROL_TOKEN;
  if (!token) throw new Error(`group ${group}'s container was never started`);
  return token;
}

beforeEach(async () => {
  await reset();
});

describe("the real Agent in a Durable Object", () => {
  it("sets up its outbound interception (ctx.exports.ContainerProxy) and reaches flared", async () => {
    const res = await api("/api/status?group=default");
    const text = await res.text();
    expect(res.status, text).toBe(200);
    expect(JSON.parse(text)).toMatchObject({ flared: { method: "GET", path: "/status" } });
    const agent = T.Agent.getByName("default");
    expect(await agent.intercepted()).toEqual({ http: [...EGRESS_HOSTS, SANDBOX_HOST].sort(), https: [], all: false });

    // From inside the container, the sandbox host lands in the Worker's own
    // handler, which checks the token the container was started with.
    const token = await startedToken("default");
    const list = await agent.fromContainer(`http://${SANDBOX_HOST}/internal/sandboxes`, { headers: { Authorization: `Bearer ${token}` } });
    expect(list).toEqual({ status: 200, body: JSON.stringify({ sandboxes: [] }) });
    const wrong = await agent.fromContainer(`http://${SANDBOX_HOST}/internal/sandboxes`, { headers: { Authorization: "Bearer guess" } });
    expect(wrong.status).toBe(401);
  });
});

describe("a cold start", () => {
  it("is waited for past the library's 20 s port wait, not answered 503", { timeout: 60_000 }, async () => {
    await T.Agent.getByName("default").setListenAfter(21_000);
    const res = await api("/api/status?group=default");
    const text = await res.text();
    expect(res.status, text).toBe(200);
    expect(JSON.parse(text)).toMatchObject({ flared: { path: "/status" } });
    expect((await T.Agent.getByName("default").probe()).starts).toBe(1);
  });

  it("that fails answers the JSON 503 with Retry-After", async () => {
    await T.Agent.getByName("default").setStartFault("container failed to start (test fault)");
    const res = await api("/api/status?group=default");
    expect(res.status).toBe(503);
    expect(res.headers.get("Retry-After")).toBe("10");
    expect(await res.json()).toMatchObject({ container: true, error: expect.stringContaining("test fault") });
  });
});

describe("the internal token", () => {
  it("is minted just before a container start and survives a stop event handled late", async () => {
    const agent = T.Agent.getByName("default");
    expect((await api("/api/status?group=default")).status).toBe(200);
    const first = await startedToken("default");
    // The container exits while nobody is looking: the library handles the
    // pending stop (onStop) only when the next request starts a new one.
    await agent.exitContainer(0);
    for (let i = 0; i < 3; i++) {
      const res = await api("/api/status?group=default");
      expect(res.status, await res.clone().text()).toBe(200);
    }
    const st = await agent.probe();
    expect(st.starts).toBe(2);
    const second = await startedToken("default");
    expect(second).not.toBe(first);
    // flared accepted every request, and the sandbox handler checks the same token.
    expect((await agent.seen()).map((r) => r.authorization)).toEqual([first, second, second, second].map((t) => `Bearer ${t}`));
    expect(await agent.controlToken()).toBe(second);
    const list = await agent.fromContainer(`http://${SANDBOX_HOST}/internal/sandboxes`, { headers: { Authorization: `Bearer ${second}` } });
    expect(list.status).toBe(200);
  });

  it("concurrent first requests share one start and one token", async () => {
    const answers = await Promise.all([1, 2, 3, 4].map(() => api("/api/status?group=research")));
    expect(answers.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    const agent = T.Agent.getByName("research");
    expect((await agent.probe()).starts).toBe(1);
    const token = await startedToken("research");
    expect(new Set((await agent.seen()).map((r) => r.authorization))).toEqual(new Set([`Bearer ${token}`]));
  });
});

describe("interception settings", () => {
  it("are fixed at construction: an object restarted beside a running container intercepts HTTPS for egress secrets", async () => {
    await runInDurableObject(T.Host.getByName("restarted"), async (_host, state) => {
      const box = new ContainerDouble(async () => Response.json({}));
      box.start({ env: {} }); // the container outlived the previous object
      const withEgress = { ...E, EGRESS_SECRETS: "HERMES_FLARE_API_KEY" } as Env;
      const agent = new Agent(withContainer(state as unknown as ConstructorParameters<typeof Agent>[0], box), withEgress);
      await state.blockConcurrencyWhile(async () => {});
      await agent.applyOutboundInterceptionPromise;
      const hosts = [...EGRESS_HOSTS, SANDBOX_HOST].sort();
      expect([...box.http.keys()].sort()).toEqual(hosts);
      expect([...box.https.keys()].sort()).toEqual(hosts);
    });
  });

  it("intercept no HTTPS when no secret is injected at egress", async () => {
    await runInDurableObject(T.Host.getByName("plain"), async (_host, state) => {
      const box = new ContainerDouble(async () => Response.json({}));
      box.start({ env: {} });
      const agent = new Agent(withContainer(state as unknown as ConstructorParameters<typeof Agent>[0], box), { ...E, EGRESS_SECRETS: "" } as Env);
      await state.blockConcurrencyWhile(async () => {});
      await agent.applyOutboundInterceptionPromise;
      expect(box.https.size).toBe(0);
      expect(box.http.has(SANDBOX_HOST)).toBe(true);
    });
  });
});
